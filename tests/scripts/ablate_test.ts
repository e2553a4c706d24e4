/**
 * scripts/ablate.ts as a subprocess: `--help`; bad input (an unknown or inconsistent training
 * flag, a missing or unknown field, a run directory of another study version) exits with code 2
 * and a message naming the file before anything runs; `--dry-run` prints the commands and
 * creates nothing; a study of two tiny real training runs (fake evaluations) is killed with
 * SIGKILL while the second run trains — its training process ends with it — and the rerun
 * finishes without redoing the first run; SIGTERM ends the running step and exits 143.
 */
import assert from "node:assert/strict";
import { denoCommand } from "../_process.ts";
import { lastJson, runScript, scriptPath } from "./_run.ts";
import { pathExists as exists } from "../../lib/torch/files.ts";
import { decodePng } from "../../lib/data/png.ts";

const SCRIPT = scriptPath("ablate.ts");

/** train.ts flags of a tiny run: 32 scenes, batch 8, 4 iterations. */
const TINY = {
  arch: "vit_micro",
  patchSize: 8,
  outDim: 256,
  batchSize: 8,
  scenes: 32,
  globalSize: 32,
  localCrops: 2,
  localSize: 16,
  numRef: 2,
  warmupEpochs: 0,
  workers: 0,
  threads: 1,
  epochs: 1,
};

/**
 * A fake evaluation (k-NN or segmentation): needs the run's teacher backbone; prints
 * {"top1": 60 (run a) | 70 (run b), "miou": top1 / 2, …} (+ seed).
 */
const FAKE_EVAL = `
import { parseArgs } from "node:util";
const { values: v } = parseArgs({ args: Deno.args, strict: true, options: {
  help: { type: "boolean" }, weights: { type: "string" }, seed: { type: "string" } } });
if (v.help) {
  console.log("Usage: fake eval\\n\\nFlags:\\n  --weights PATH\\n      run\\n  --seed N\\n      seed\\n  --help");
  Deno.exit(0);
}
Deno.statSync(v.weights + "/teacher_backbone.safetensors");
const top1 = (v.weights.includes("/a/") ? 60 : 70) + Number(v.seed ?? 0);
console.error("fake eval: " + v.weights);
console.log(JSON.stringify({ top1, miou: top1 / 2, seconds: 0.01 }));
`;

/** A fake training that reports its pid and sleeps (for the SIGTERM test). */
const SLEEPY_TRAIN = `
import { parseArgs } from "node:util";
const { values: v } = parseArgs({ args: Deno.args, strict: true, options: {
  help: { type: "boolean" }, out: { type: "string" }, seed: { type: "string" },
  resume: { type: "boolean" }, epochs: { type: "string" } } });
if (v.help) {
  console.log("Usage: sleepy\\n  --out X\\n  --seed X\\n  --resume\\n  --epochs X\\n  --help");
  Deno.exit(0);
}
Deno.mkdirSync(v.out, { recursive: true });
Deno.writeTextFileSync(v.out + "/pid", String(Deno.pid));
console.error("sleepy: sleeping");
await new Promise((r) => setTimeout(r, 60000));
console.log("{}");
`;

const env = (cache: string) => ({ DENSEDINO_CACHE: cache });
const run = (args: string[], cache: string) => runScript(SCRIPT, args, env(cache));

async function waitFor(
  cond: () => Promise<boolean>,
  what: string,
  ms = 60_000,
  proc?: { exited: boolean; text: { stderr: string } },
): Promise<void> {
  const until = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    if (proc?.exited) throw new Error(`it exited before ${what}: ${proc.text.stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A process spawned with its stdout / stderr collected as they come. */
function spawn(args: string[], cache: string) {
  const child = denoCommand(SCRIPT, args, env(cache)).spawn();
  const text = { stdout: "", stderr: "" };
  const pump = async (s: ReadableStream<Uint8Array>, k: "stdout" | "stderr") => {
    const dec = new TextDecoder();
    for await (const c of s) text[k] += dec.decode(c, { stream: true });
  };
  const done = Promise.all([pump(child.stdout, "stdout"), pump(child.stderr, "stderr")]);
  const p = { child, text, done, exited: false };
  child.status.then(() => (p.exited = true));
  return p;
}

async function mtimes(dir: string, names: string[]): Promise<number[]> {
  return await Promise.all(
    names.map(async (n) => (await Deno.stat(`${dir}/${n}`)).mtime!.getTime()),
  );
}

function study(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: "tiny",
    version: 1,
    title: "Tiny study",
    seeds: [0],
    base: { train: TINY, evals: { knn: {}, seg: {} } },
    runs: [
      { name: "a", label: "run A", train: { numRef: 1 } },
      { name: "b", label: "run B", train: { numRef: 4 } },
    ],
    table: {
      columns: [
        { metric: "knn.top1", label: "k-NN top-1" },
        { metric: "seg.miou", label: "mIoU", digits: 2 },
      ],
    },
    plot: { kind: "line", x: "train.numRef", logX: true },
    ...extra,
  };
}

Deno.test("scripts/ablate.ts", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "dd-ablate-" });
  const cache = `${dir}/cache`;
  const fake = `${dir}/fake_eval.ts`;
  await Deno.writeTextFile(fake, FAKE_EVAL);
  const evalScripts = ["--script", `knn=${fake}`, "--script", `seg=${fake}`];
  const write = async (name: string, s: unknown) => {
    await Deno.writeTextFile(`${dir}/${name}`, JSON.stringify(s, null, 2));
    return `${dir}/${name}`;
  };
  try {
    await t.step("--help lists every flag with its default", async () => {
      const r = await run(["--help"], cache);
      assert.equal(r.code, 0, r.stderr);
      for (
        const f of [
          "out",
          "jobs",
          "seeds",
          "only",
          "set",
          "reuse",
          "script",
          "dry-run",
          "report-only",
          "heartbeat",
          "help",
        ]
      ) {
        assert.match(r.stdout, new RegExp(`^  --${f}\\b.*\\n.*\\(default: .+\\)$`, "m"), f);
      }
    });

    await t.step("bad input: exit 2 naming the file, before anything runs", async () => {
      const out = `${dir}/bad-out`;
      const bad = async (s: unknown, ...want: string[]) => {
        const path = await write("bad.json", s);
        const r = await run([path, "--out", out, ...evalScripts], cache);
        assert.equal(r.code, 2, r.stderr);
        for (const w of want) assert.ok(r.stderr.includes(w), `"${w}" in ${r.stderr}`);
        assert.equal(r.stdout, "");
        assert.ok(!(await exists(out)), "nothing created");
      };
      const path = `${dir}/bad.json`;
      // checked against the real scripts/train.ts
      await bad(
        study({ runs: [{ name: "a", train: { numRefs: 2 } }] }),
        `ablate: ${path}: runs[0] ("a").train: "numRefs" (--num-refs) is not a flag of scripts/train.ts`,
        'did you mean "num-ref"',
      );
      await bad(
        study({ runs: [{ name: "a", train: { method: "dino", loss: "ref" } }] }),
        `${path}: runs[0] ("a").train: --method dino trains the class loss only`,
      );
      await bad(
        study({ runs: [{ name: "a", train: { patchSize: 7 } }] }),
        `${path}: runs[0] ("a").train:`,
        "--patch-size 7",
      );
      const noSeeds = study();
      delete noSeeds.seeds;
      await bad(noSeeds, `${path}: missing field "seeds"`);
      await bad(
        { ...study(), tabel: {} },
        `${path}: unknown field "tabel"`,
        'did you mean "table"',
      );
    });

    await t.step("bad overrides and flags: exit 2", async () => {
      const path = await write("ok.json", study());
      const out = `${dir}/bad-out`;
      for (
        const [args, want] of [
          [["--set", "train.epoch=2"], '--set train.epoch=2: "epoch" (--epoch) is not a flag'],
          [["--set", "evals.knn.k=2"], '"k" (--k) is not a flag of'],
          [["--only", "c"], `--only c: ${path} has no run "c"`],
          [["--seeds", "x"], "--seeds must be"],
          [["--jobs", "0"], "--jobs must be at least 1"],
          [["--bogus"], "Unknown option '--bogus'"],
          [[], ""],
        ] as const
      ) {
        const r = await run(
          args.length ? [path, "--out", out, ...evalScripts, ...args] : [],
          cache,
        );
        assert.equal(r.code, 2, `${args}: ${r.stderr}`);
        assert.ok(r.stderr.includes(want), `"${want}" in ${r.stderr}`);
        assert.ok(!(await exists(out)));
      }
    });

    await t.step("--dry-run prints the commands and creates nothing", async () => {
      const path = await write("tiny.json", study({ seeds: [0, 1] }));
      const out = `${dir}/dry`;
      const r = await run([path, "--out", out, ...evalScripts, "--dry-run"], cache);
      assert.equal(r.code, 0, r.stderr);
      assert.ok(!(await exists(out)));
      const j = lastJson(r.stdout) as { steps: { run: string; step: string; command: string }[] };
      assert.equal(j.steps.length, 12);
      assert.match(
        r.stdout,
        /^deno run -A --v8-flags=--max-semi-space-size=2 scripts\/train\.ts --arch vit_micro .* --num-ref 4 .* --seed 1 --out \S+\/dry\/b\/seed1\/train$/m,
      );
      assert.match(r.stdout, /fake_eval\.ts --weights \S+\/dry\/b\/seed1\/train$/m);
    });

    await t.step(
      "killed mid-way (SIGKILL), it resumes without redoing the finished run",
      async () => {
        const path = await write("tiny.json", study());
        const out = `${dir}/tiny`;
        const args = [path, "--out", out, ...evalScripts, "--heartbeat", "0"];
        // first attempt: killed while run b trains
        const p = spawn(args, cache);
        const running = `${out}/b/seed0/running.json`;
        await waitFor(() => exists(running), "run b's training to start", 60_000, p);
        const guard = JSON.parse(await Deno.readTextFile(running)).pid as number;
        await new Promise((r) => setTimeout(r, 300));
        p.child.kill("SIGKILL");
        await p.child.status;
        await p.done;
        assert.ok(!(await exists(`${out}/b/seed0/train.json`)), "b's training was not complete");
        assert.match(p.text.stderr, /a seed0 seg done/);
        // the step's process tree ends with the runner
        if (Deno.build.os === "linux") {
          await waitFor(async () => !(await exists(`/proc/${guard}`)), "the step to end", 20_000);
        }
        const aDir = `${out}/a/seed0`;
        const aFiles = [
          "run.json",
          "train.json",
          "eval_knn.json",
          "eval_seg.json",
          "train/checkpoint.safetensors",
          "train/teacher_backbone.safetensors",
        ];
        const before = await mtimes(aDir, aFiles);
        // rerun: a is skipped, b is redone
        await new Promise((r) => setTimeout(r, 20)); // distinct mtimes if anything were rewritten
        const r = await run(args, cache);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stderr, /6 steps: 3 done, 3 to run/);
        assert.doesNotMatch(r.stderr, /a seed0 (train|knn|seg)/);
        assert.deepEqual(await mtimes(aDir, aFiles), before, "run a untouched");
        const aLog = await Deno.readTextFile(`${aDir}/train.log`);
        assert.equal(aLog.match(/^=== \d{4}-/gm)?.length, 1, "a trained once");
        const bLog = await Deno.readTextFile(`${out}/b/seed0/train.log`);
        assert.equal(bLog.match(/^=== \d{4}-/gm)?.length, 2, "b's training ran twice");
        assert.ok(await exists(`${out}/b/seed0/train/teacher_backbone.safetensors`));
        // the report lists both runs with their numbers
        const j = lastJson(r.stdout) as {
          report: string;
          plot: string;
          table: { run: string; n: number; metrics: Record<string, { mean: number }> }[];
        };
        assert.deepEqual(
          j.table.map((x) => [x.run, x.n, x.metrics["knn.top1"].mean, x.metrics["seg.miou"].mean]),
          [["a", 1, 60, 30], ["b", 1, 70, 35]],
        );
        const md = await Deno.readTextFile(j.report);
        assert.match(md, /^\| run A \| 1 \| 60\.0 ± — \| 30\.00 ± — \|$/m);
        assert.match(md, /^\| run B \| 1 \| 70\.0 ± — \| 35\.00 ± — \|$/m);
        assert.match(md, /scripts\/train\.ts --arch vit_micro .* --num-ref 1 .* --seed 0 --out /);
        // one 440-px panel per metric (each with its own y axis), side by side
        const png = await decodePng(await Deno.readFile(j.plot));
        assert.ok(png.width >= 2 * 440 && png.height < 500, `${png.width}×${png.height}`);
        const res = JSON.parse(await Deno.readTextFile(`${out}/results.json`));
        assert.deepEqual(res.runs.map((x: { x: number }) => x.x), [1, 4]);
        assert.equal(typeof res.runs[0].seeds[0].steps.train.final.loss, "number");
        assert.ok(!(await exists(`${out}/.ablate.lock`)));
      },
    );

    await t.step("a run directory of another study version: exit 2, nothing runs", async () => {
      const out = `${dir}/tiny`;
      const before = [];
      for await (const e of Deno.readDir(out)) before.push(e.name);
      const v2 = study({ version: 2 });
      (v2.runs as unknown[]).unshift({ name: "c", train: { numRef: 2 } });
      const path = await write("tiny-v2.json", v2);
      const r = await run([path, "--out", out, ...evalScripts], cache);
      assert.equal(r.code, 2, r.stderr);
      assert.ok(
        r.stderr.includes(
          `ablate: ${out}/a/seed0 was made by version 1 of the study "tiny" ` +
            `(${path} is version 2)`,
        ),
        r.stderr,
      );
      assert.match(r.stderr, /delete it \(rm -r .*\/a\/seed0\)/);
      const after = [];
      for await (const e of Deno.readDir(out)) after.push(e.name);
      assert.deepEqual(after.sort(), before.sort(), "no run directory created");
    });

    await t.step("--reuse takes over a finished training with the same configuration", async () => {
      // numRef left at its default (4): the same resolved configuration as run b's
      const { numRef: _, ...base } = TINY;
      const other = study({
        name: "other",
        base: { train: { ...base, threads: 2 }, evals: { knn: {}, seg: {} } },
        runs: [{ name: "m4", train: {} }, { name: "m3", train: { numRef: 3 } }],
        plot: undefined,
      });
      const path = await write("other.json", other);
      const out = `${dir}/other`;
      const args = [path, "--out", out, ...evalScripts, "--reuse", `${dir}/tiny`];
      const dry = await run([...args, "--dry-run"], cache);
      assert.equal(dry.code, 0, dry.stderr);
      assert.match(
        dry.stdout,
        /^# m4 seed 0 \(\S+\) reuses train, knn, seg of \S+tiny\/b\/seed0$/m,
      );
      const steps = (lastJson(dry.stdout) as { steps: { run: string; status: string }[] }).steps;
      assert.deepEqual(steps.map((s) => `${s.run} ${s.status}`), [
        "m4 reuse",
        "m4 reuse",
        "m4 reuse",
        "m3 run",
        "m3 run",
        "m3 run",
      ]);
      assert.ok(!(await exists(out)), "a dry run creates nothing");
      const r = await run([...args, "--only", "m4"], cache);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /m4 seed0: reused train, knn, seg from \S+tiny\/b\/seed0/);
      const j = lastJson(r.stdout) as {
        ran: number;
        table: { metrics: Record<string, { mean: number }> }[];
      };
      assert.equal(j.ran, 0);
      assert.equal(j.table[0].metrics["knn.top1"].mean, 70);
      assert.ok(await exists(`${out}/m4/seed0/train/teacher_backbone.safetensors`));
      const bad = await run([...args, "--reuse", `${dir}/missing`], cache);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /--reuse \S+missing: no such folder/);
    });

    await t.step("SIGTERM ends the running step and exits 143", async () => {
      const sleepy = `${dir}/sleepy.ts`;
      await Deno.writeTextFile(sleepy, SLEEPY_TRAIN);
      const path = await write(
        "sleepy.json",
        {
          ...study(),
          base: { train: { epochs: 1 }, evals: { knn: {}, seg: {} } },
          runs: [{ name: "a" }],
        },
      );
      const out = `${dir}/sleepy`;
      const p = spawn(
        [path, "--out", out, "--script", `train=${sleepy}`, ...evalScripts, "--heartbeat", "1"],
        cache,
      );
      // a heartbeat shows the step's last progress line
      await waitFor(
        () => Promise.resolve(/a seed0 train running .*: sleepy: sleeping/.test(p.text.stderr)),
        "a heartbeat",
        30_000,
        p,
      );
      const pid = Number(await Deno.readTextFile(`${out}/a/seed0/train/pid`));
      p.child.kill("SIGTERM");
      const status = await p.child.status;
      await p.done;
      assert.equal(status.code, 143, p.text.stderr);
      assert.match(p.text.stderr, /interrupted by SIGTERM; rerun the same command to resume/);
      assert.ok(!(await exists(`${out}/a/seed0/train.json`)));
      assert.ok(!(await exists(`${out}/report.md`)));
      if (Deno.build.os === "linux") assert.ok(!(await exists(`/proc/${pid}`)), "step ended");
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
