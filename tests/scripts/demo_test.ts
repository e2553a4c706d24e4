/**
 * scripts/demo.ts end to end on a tiny configuration (every run's flags shrunk with --set): the
 * table on stdout and the JSON line, report.md with its figures (PNGs that decode), the study's
 * run directories; a rerun reuses every finished stage; bad flags exit 2 before anything runs.
 */
import assert from "node:assert/strict";
import { decodePng } from "../../lib/data/png.ts";
import { runScript, scriptPath, type ScriptRun } from "./_run.ts";

const SCRIPT = scriptPath("demo.ts");

const TINY = [
  "train.arch=vit_micro",
  "train.patchSize=8",
  "train.outDim=256",
  "train.headHiddenDim=128",
  "train.headBottleneckDim=64",
  "train.batchSize=8",
  "train.scenes=32",
  "train.globalSize=32",
  "train.localCrops=2",
  "train.localSize=16",
  "train.numRef=2",
  "train.epochs=1",
  "train.warmupEpochs=0",
  "train.workers=0",
  "train.threads=1",
  "evals.knn.scenes=48",
  "evals.knn.valScenes=24",
  "evals.knn_items.limitTrain=48",
  "evals.knn_items.limitVal=24",
  "evals.seg.scenes=24",
  "evals.seg.valScenes=12",
  "evals.seg.epochs=2",
].flatMap((s) => ["--set", s]);

function demo(args: string[], cache: string): Promise<ScriptRun> {
  return runScript(SCRIPT, args, { DENSEDINO_CACHE: cache });
}

Deno.test("scripts/demo.ts", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "dd-demo-" });
  const cache = `${dir}/cache`;
  const out = `${dir}/demo`;
  try {
    await t.step("--help names the budget and the output", async () => {
      const r = await demo(["--help"], cache);
      assert.equal(r.code, 0, r.stderr);
      for (const f of ["--budget", "--out", "--seed", "--set"]) {
        assert.match(r.stdout, new RegExp(f));
      }
    });

    await t.step("bad flags exit 2 before anything runs", async () => {
      for (
        const args of [
          ["--budget", "0"],
          ["--budget", "x"],
          ["--seed", "-1"],
          ["--bogus"],
          ["--set", "train.noSuchFlag=1"],
          ["--set", "train.method=dino"], // the runs set the method: a conflicting override
        ]
      ) {
        const r = await demo([...args, "--out", `${dir}/bad`], cache);
        assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      }
      assert.equal(await Deno.stat(`${dir}/bad/study`).then(() => true, () => false), false);
    });

    let first: Record<string, unknown>;
    await t.step("a tiny demo: table, report, figures, study", async () => {
      const r = await demo(["--out", out, ...TINY], cache);
      assert.equal(r.code, 0, r.stderr.slice(-3000));
      const lines = r.stdout.trim().split("\n");
      first = JSON.parse(lines[lines.length - 1]);
      const table = lines.slice(0, -1).join("\n");
      assert.match(table, /items k-NN/);
      for (const row of ["random init", "DINO", "DenseDINO"]) {
        assert.match(table, new RegExp(`\\| ${row} \\|`));
      }
      const rows = first.table as Record<string, number>[];
      assert.deepEqual(rows.map((x) => x.run), ["random", "dino", "densedino"]);
      for (const x of rows) {
        assert.ok(x["knn.top1"] >= 0 && x["knn.top1"] <= 100);
        assert.ok(x["knn_items.top1"] >= 0 && x["knn_items.top1"] <= 100);
        assert.ok(x["seg.miou"] >= 0 && x["seg.miou"] <= 100);
      }
      assert.equal(first.failed, 0);
      const report = await Deno.readTextFile(`${out}/report.md`);
      assert.match(report, /DINO vs DenseDINO/);
      assert.ok(report.includes(table.split("\n")[2]), "the report holds the printed table");
      const figures = first.figures as Record<string, string>;
      for (const k of ["loss", "attention", "views"]) {
        assert.ok(figures[k], `figure ${k}`);
        const png = await decodePng(await Deno.readFile(figures[k]));
        assert.ok(png.width > 32 && png.height > 32, `${k}: ${png.width}×${png.height}`);
        const rel = figures[k].slice(out.length + 1);
        assert.ok(report.includes(`](${rel})`), `the report shows ${rel}`);
      }
      for (const run of ["dino", "densedino"]) {
        await Deno.stat(`${out}/study/${run}/seed0/train/teacher_backbone.safetensors`);
      }
    });

    await t.step("a rerun reuses every finished stage", async () => {
      const r = await demo(["--out", out, ...TINY], cache);
      assert.equal(r.code, 0, r.stderr.slice(-3000));
      const lines = r.stdout.trim().split("\n");
      const again = JSON.parse(lines[lines.length - 1]);
      assert.deepEqual(again.table, first.table);
      assert.match(r.stderr, /11 done, 0 to run/);
      const times = JSON.parse(
        await Deno.readTextFile(`${out}/study/dino/seed0/times.json`),
      );
      assert.ok(times, "times.json of the finished run");
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
