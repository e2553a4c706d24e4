/**
 * scripts/train.ts as a subprocess: `--help` lists every flag with its default; a smoke run
 * prints the JSON summary as its last stdout line; bad input exits with code 2 and a message
 * naming the flag before any training starts (nothing written); a non-finite loss exits with
 * code 1 and keeps the last good checkpoint; SIGKILL at random moments and during checkpoint
 * writes always leaves a loadable checkpoint that `--resume` continues.
 */
import assert from "node:assert/strict";
import {
  ConfigError,
  createViT,
  DEFAULT_TRAIN_CONFIG,
  freeAll,
  loadModule,
  loadSafetensors,
} from "../../mod.ts";
import { parseTrainArgs } from "../../scripts/train.ts";
import { denoCommand } from "../_process.ts";
import { lastJson, runScript, scriptPath } from "./_run.ts";
import { pathExists as exists } from "../../lib/torch/files.ts";

const SCRIPT = scriptPath("train.ts");

/** 32 scenes, batch 8: 4 iterations per epoch. */
const TINY = [
  "--arch",
  "vit_micro",
  "--patch-size",
  "8",
  "--out-dim",
  "256",
  "--batch-size",
  "8",
  "--scenes",
  "32",
  "--global-size",
  "32",
  "--local-crops",
  "2",
  "--local-size",
  "16",
  "--num-ref",
  "2",
  "--warmup-epochs",
  "0",
  "--workers",
  "0",
  "--threads",
  "1",
];

const kebab = (k: string) => k.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());

const env = (cache: string) => ({ DENSEDINO_CACHE: cache });
const run = (args: string[], cache: string) => runScript(SCRIPT, args, env(cache));

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

/** The checkpoint in `out` loads with its metadata, sidecar and teacher backbone; its iteration. */
async function checkCheckpoint(out: string): Promise<number> {
  const { tensors, metadata } = await loadSafetensors(`${out}/checkpoint.safetensors`);
  try {
    const meta = JSON.parse(metadata.densedino);
    assert.equal(meta.format, "densedino-checkpoint");
    assert.ok(
      "teacher.backbone.cls_token" in tensors && "optimizer.regularized.0.exp_avg" in tensors,
    );
    const sidecar = JSON.parse(await Deno.readTextFile(`${out}/checkpoint.json`));
    assert.equal(sidecar.format, "densedino-checkpoint");
    // the sidecar is renamed after the checkpoint: never newer than it
    assert.ok(sidecar.iteration <= meta.iteration);
    const vit = createViT("vit_micro", { patchSize: 8, imgSize: 32 });
    try {
      await loadModule(`${out}/teacher_backbone.safetensors`, vit);
    } finally {
      vit.free();
    }
    return meta.iteration;
  } finally {
    freeAll(tensors);
  }
}

Deno.test("scripts/train.ts", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "dd-train-script-" });
  const cache = `${dir}/cache`;
  try {
    await t.step("--help lists every flag with its default", async () => {
      const r = await run(["--help"], cache);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.split("\n").filter((l) => /^\s+--[a-z]/.test(l) && !/--help/.test(l));
      const flags = lines.map((l) => l.trim().split(/\s+/)[0]);
      const want = [
        ...Object.keys(DEFAULT_TRAIN_CONFIG).filter((k) => k !== "views").map(kebab),
        "global-crops",
        "global-size",
        "global-scale",
        "local-crops",
        "local-size",
        "local-scale",
        "num-ref",
        "sampling",
        "min-intersection",
      ].map((k) => `--${k}`);
      for (const f of want) assert.ok(flags.includes(f), `${f} in --help`);
      for (const l of lines) assert.match(l, /\(default .+\)\s*$/, `a default: ${l}`);
      // every listed flag is accepted
      for (const l of lines) {
        const [flag, value] = l.trim().split(/\s+/);
        const args = value === "X" ? [flag, flag.endsWith("scale") ? "0.1,0.5" : "1"] : [flag];
        assert.doesNotThrow(() => parseTrainArgs(args), flag);
      }
      assert.equal(parseTrainArgs(["--help"]), "help");
    });

    await t.step(
      "bad input: exit 2 and a message naming the flag, before any training",
      async () => {
        const file = `${dir}/a-file`;
        await Deno.writeTextFile(file, "");
        const cases: [string[], RegExp][] = [
          [["--method", "dino", "--loss", "ref"], /--method dino .*--loss ref/],
          [["--global-crops", "0"], /--global-crops/],
          [["--batch-size", "64"], /--batch-size 64 is larger than the data set \(32 images\)/],
          [["--out", `${file}/sub`], /--out .*a-file\/sub is not a writable directory/],
          [["--resume"], /--resume: cannot read .*checkpoint\.json/],
          [["--epochz", "3"], /Unknown option '--epochz'/],
          [["--epochs", "two"], /--epochs must be a number, got "two"/],
          [["--lr", ""], /--lr must be a number/],
          [["--global-scale", "0.4"], /--global-scale must be two numbers/],
          [["--patch-size", "5"], /--global-size|--img-size|--patch-size 5/],
          [["--precision", "fp16"], /--precision fp16 needs --device cuda/],
        ];
        for (const [args, re] of cases) {
          const out = `${dir}/bad-${cases.findIndex((c) => c[0] === args)}`;
          const hasOut = args.includes("--out");
          const r = await run([...TINY, ...(hasOut ? [] : ["--out", out]), ...args], cache);
          assert.equal(r.code, 2, `${args.join(" ")}: exit code (stderr: ${r.stderr})`);
          assert.match(r.stderr, re, args.join(" "));
          assert.equal(r.stdout, "", `${args.join(" ")}: nothing on stdout`);
          if (!hasOut && await exists(out)) {
            const files = await listDir(out);
            assert.ok(
              !files.includes("log.jsonl") && !files.includes("checkpoint.safetensors"),
              files.join(),
            );
          }
        }
        // in-process: the same errors are ConfigErrors
        assert.throws(() => parseTrainArgs(["--workers", "x"]), ConfigError);
      },
    );

    const out = `${dir}/smoke`;
    await t.step("a smoke run (--max-iters 2) ends with the JSON summary on stdout", async () => {
      const r = await run([...TINY, "--epochs", "2", "--max-iters", "2", "--out", out], cache);
      assert.equal(r.code, 0, r.stderr);
      const s = lastJson(r.stdout) as {
        epochs: number;
        iterations: number;
        final: { loss: number; cls: number; ref: number };
        imagesPerSec: number;
        outputs: Record<string, string>;
      };
      assert.equal(s.iterations, 2);
      assert.equal(s.epochs, 0);
      for (const v of Object.values(s.final)) assert.ok(Number.isFinite(v) && v > 0);
      assert.ok(s.imagesPerSec > 0);
      for (const p of Object.values(s.outputs)) assert.ok(await exists(p), p);
      assert.equal(await checkCheckpoint(out), 2);
    });

    await t.step("an existing checkpoint: --resume needed, and its config must agree", async () => {
      const before = await Deno.readFile(`${out}/checkpoint.safetensors`);
      let r = await run([...TINY, "--epochs", "2", "--out", out], cache);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /--out .* already holds a checkpoint: pass --resume/);
      r = await run([
        ...TINY,
        "--epochs",
        "2",
        "--out",
        out,
        "--resume",
        "--arch",
        "vit_mini",
        "--seed",
        "5",
      ], cache);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /cannot resume from .*: the run differs on/);
      assert.match(r.stderr, /--arch: checkpoint "vit_micro", now "vit_mini"/);
      assert.match(r.stderr, /--seed: checkpoint 0, now 5/);
      const after = await Deno.readFile(`${out}/checkpoint.safetensors`);
      assert.ok(before.length === after.length && before.every((v, i) => v === after[i]));
    });

    await t.step(
      "a non-finite loss: exit 1, a clear message, the last good checkpoint kept",
      async () => {
        const o = `${dir}/nan`;
        const r = await run([...TINY, "--lr", "1e35", "--save-every", "1", "--out", o], cache);
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stderr, /the loss is NaN at epoch 0, iteration 1 .*last good checkpoint/);
        assert.equal(await checkCheckpoint(o), 1);
      },
    );

    await t.step(
      "SIGKILL during checkpoint writes: the checkpoint stays loadable, --resume works",
      async () => {
        const o = `${dir}/killed`;
        const args = [...TINY, "--epochs", "40", "--save-every", "1", "--out", o];
        let iteration = 0, killedDuringWrite = 0;
        const rounds = ["during a write", "at a random moment", "during a write"];
        for (const [round, when] of rounds.entries()) {
          const child = denoCommand(
            SCRIPT,
            round === 0 ? args : [...args, "--resume"],
            env(cache),
            {
              stdout: "null",
            },
          ).spawn();
          const stderr = new Response(child.stderr).text();
          // wait for a checkpoint newer than the last one
          const deadline = Date.now() + 60_000;
          while (Date.now() < deadline) {
            const side = await Deno.readTextFile(`${o}/checkpoint.json`).then(
              JSON.parse,
              () => null,
            );
            if (side && side.iteration > iteration) {
              break;
            }
            await new Promise((r) => setTimeout(r, 10));
          }
          if (when === "during a write") {
            // poll for a temporary file: a checkpoint write is under way
            while (Date.now() < deadline) {
              const names = await listDir(o);
              if (names.some((n) => n.includes(".tmp-"))) break;
            }
          } else {
            await new Promise((r) => setTimeout(r, Math.random() * 400));
          }
          child.kill("SIGKILL");
          const status = await child.status;
          await stderr;
          assert.equal(status.signal, "SIGKILL", `round ${round}: killed, not finished`);
          if ((await listDir(o)).some((n) => n.includes(".tmp-"))) killedDuringWrite++;
          const it = await checkCheckpoint(o);
          assert.ok(it > iteration, `round ${round}: progress (${iteration} → ${it})`);
          iteration = it;
        }
        assert.ok(killedDuringWrite >= 1, "at least one kill interrupted a checkpoint write");
        // the run continues from the last checkpoint; leftovers of interrupted writes are removed
        const r = await run([...args, "--resume", "--max-iters", String(iteration + 1)], cache);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stderr, new RegExp(`resumed from .*iteration ${iteration}\\b`));
        assert.equal(lastJson(r.stdout).iterations, iteration + 1);
        assert.equal(await checkCheckpoint(o), iteration + 1);
        assert.deepEqual((await listDir(o)).filter((n) => n.includes(".tmp-")), []);
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
