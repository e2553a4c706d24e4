/**
 * lib/study: flag conversion, overrides, mean ± std formatting (against hand computations), the
 * study file's structural checks, flag checks against the scripts' `--help`, run identities, the
 * report table, and the runner with small fake scripts: an interrupted training continues with
 * `--resume`, a failure keeps other runs going, `jobs` runs units at once, an abort ends the
 * running step without marking it complete, and shipped studies load against the real scripts.
 */
import assert from "node:assert/strict";
import {
  applyReuse,
  camelCase,
  collectResults,
  displayPath,
  findReuse,
  flagArgs,
  formatMeanStd,
  kebabCase,
  loadStudy,
  markdownTable,
  mergeFlags,
  metricValue,
  parseHelpFlags,
  parseOverride,
  parseSeeds,
  parseStudy,
  planStudy,
  type RunResult,
  runStudy,
  type Study,
  StudyError,
  studyEta,
  StudyInterrupted,
  summarize,
  tableRows,
  toArgs,
} from "../../lib/study/study.ts";
import { FASHION_SCENES_VERSION } from "../../lib/data/fashion_scenes.ts";
import { parseDuration } from "../../lib/data/progress.ts";
import { decodePng } from "../../lib/data/png.ts";
import { pathExists as exists } from "../../lib/torch/files.ts";

// ---- fakes --------------------------------------------------------------------------------

/**
 * A fake training script: `--help` lists its flags; a run appends its arguments to
 * OUT/args.jsonl and writes OUT/pid, sleeps `--sleep` seconds, and — when the file
 * `<--crash-once>-seed<seed>` exists — writes OUT/checkpoint.safetensors, removes the marker and exits 1 (an interrupted
 * training). Otherwise it writes OUT/teacher_backbone.safetensors and prints a summary.
 */
const FAKE_TRAIN = `
import { parseArgs } from "node:util";
const flags = ["epochs", "seed", "out", "num-ref", "lr", "threads", "sleep", "method", "arch",
  "patch-size", "img-size", "crash-once"];
const options = { help: { type: "boolean" }, resume: { type: "boolean" } };
for (const f of flags) options[f] = { type: "string" };
const { values: v } = parseArgs({ args: Deno.args, options, strict: true });
if (v.help) {
  console.log("Usage: fake train\\n" + [...flags, "resume", "help"].map((f) => "  --" + f + " X  a flag (default 0)").join("\\n"));
  Deno.exit(0);
}
const out = v.out;
Deno.mkdirSync(out, { recursive: true });
Deno.writeTextFileSync(out + "/args.jsonl", JSON.stringify(Deno.args) + "\\n", { append: true });
Deno.writeTextFileSync(out + "/pid", String(Deno.pid));
console.error("fake train: starting");
if (v.sleep) await new Promise((r) => setTimeout(r, Number(v.sleep) * 1000));
const marker = v["crash-once"] + "-seed" + v.seed;
if (v["crash-once"]) try {
  Deno.statSync(marker);
  Deno.writeTextFileSync(out + "/checkpoint.safetensors", "x");
  Deno.removeSync(marker);
  console.error("fake train: crashing");
  Deno.exit(1);
} catch (e) {
  if (!(e instanceof Deno.errors.NotFound)) throw e;
}
Deno.writeTextFileSync(out + "/teacher_backbone.safetensors", "x");
console.log("not json");
console.log(JSON.stringify({ final: { loss: 1 + Number(v.seed) }, resumed: !!v.resume, seconds: 0.01 }));
`;

/**
 * A fake evaluation: `--help` lists --weights, --seed, --k, --arch, --patch-size, --img-size,
 * --quiet; prints {"top1": 10·seed + (trained ? 50 : 0) + k/100, …}. With --weights it needs the
 * run's teacher_backbone.safetensors.
 */
const FAKE_EVAL = `
import { parseArgs } from "node:util";
const flags = ["weights", "seed", "k", "arch", "patch-size", "img-size"];
const options = { help: { type: "boolean" }, quiet: { type: "boolean" } };
for (const f of flags) options[f] = { type: "string" };
const { values: v } = parseArgs({ args: Deno.args, options, strict: true });
if (v.help) {
  console.log("Usage: fake eval\\n\\nFlags:\\n" + [...flags.map((f) => "  --" + f + " X\\n      a flag"), "  --quiet\\n      no progress", "  --help"].join("\\n"));
  Deno.exit(0);
}
if (v.weights) Deno.statSync(v.weights + "/teacher_backbone.safetensors");
const seed = Number(v.seed ?? 0);
console.log(JSON.stringify({ top1: 10 * seed + (v.weights ? 50 : 0) + Number(v.k ?? 0) / 100,
  nested: { value: seed }, args: Deno.args, seconds: 0.01 }));
`;

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dd-study-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function fakes(dir: string): Promise<Record<string, string>> {
  await Deno.writeTextFile(`${dir}/fake_train.ts`, FAKE_TRAIN);
  await Deno.writeTextFile(`${dir}/fake_eval.ts`, FAKE_EVAL);
  return { train: `${dir}/fake_train.ts`, knn: `${dir}/fake_eval.ts`, seg: `${dir}/fake_eval.ts` };
}

function baseStudy(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: "t",
    version: 1,
    title: "T",
    seeds: [0],
    base: { train: { epochs: 1 }, evals: { knn: {} } },
    runs: [{ name: "a", train: { numRef: 1 } }, { name: "b", train: { "num-ref": 2 } }],
    table: { columns: [{ metric: "knn.top1" }] },
    ...extra,
  };
}

async function writeStudy(dir: string, study: unknown, name = "study.json"): Promise<string> {
  const path = `${dir}/${name}`;
  await Deno.writeTextFile(path, JSON.stringify(study, null, 2));
  return path;
}

const quiet = { log: () => {}, heartbeatMs: 0 };

function throwsStudy(fn: () => unknown, ...parts: (string | RegExp)[]) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof StudyError, `a StudyError, got ${e}`);
    for (const p of parts) {
      if (typeof p === "string") assert.ok(e.message.includes(p), `"${p}" in: ${e.message}`);
      else assert.match(e.message, p);
    }
    return true;
  });
}

async function rejectsStudy(p: Promise<unknown>, ...parts: string[]) {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof StudyError, `a StudyError, got ${e}`);
    for (const s of parts) assert.ok(e.message.includes(s), `"${s}" in: ${e.message}`);
    return true;
  });
}

// ---- pure parts ---------------------------------------------------------------------------

Deno.test("flags: camelCase / kebab-case keys, values, booleans, lists, null", () => {
  assert.equal(kebabCase("numRef"), "num-ref");
  assert.equal(kebabCase("num-ref"), "num-ref");
  assert.equal(kebabCase("warmupTeacherTempEpochs"), "warmup-teacher-temp-epochs");
  assert.equal(camelCase("warmup-teacher-temp-epochs"), "warmupTeacherTempEpochs");
  assert.deepEqual(
    toArgs({
      numRef: 4,
      "global-scale": [0.4, 1],
      resume: true,
      normLastLayer: false,
      lr: null,
      minLr: 1e-7,
      data: "imagefolder:/x y",
    }),
    [
      "--num-ref",
      "4",
      "--global-scale",
      "0.4,1",
      "--resume",
      "--no-norm-last-layer",
      "--min-lr",
      "1e-7",
      "--data",
      "imagefolder:/x y",
    ],
  );
  assert.deepEqual(flagArgs("quiet", false, { negatable: false }), []);
  assert.deepEqual(flagArgs("quiet", true, { negatable: false }), ["--quiet"]);
  // the same flag in both spellings is one key; later sets win, null removes
  assert.deepEqual(mergeFlags({ numRef: 1, epochs: 2 }, { "num-ref": 4 }, { epochs: null }), {
    "num-ref": 4,
    epochs: null,
  });
});

Deno.test("--set overrides and --seeds", () => {
  assert.deepEqual(parseOverride("train.epochs=2"), {
    target: "train",
    flag: "epochs",
    value: 2,
    text: "train.epochs=2",
  });
  assert.equal(parseOverride("train.globalScale=0.4,1").value, "0.4,1");
  assert.deepEqual(parseOverride("train.globalScale=[0.4,1]").value, [0.4, 1]);
  assert.equal(parseOverride("train.lr=null").value, null);
  assert.equal(parseOverride("train.allCropsCls=false").value, false);
  assert.equal(parseOverride("train.method=dino").value, "dino");
  const e = parseOverride("evals.knn.k=20");
  assert.deepEqual([e.target, e.flag, e.value], ["knn", "k", 20]);
  throwsStudy(() => parseOverride("train.epochs"), "--set train.epochs", "no '='");
  throwsStudy(() => parseOverride("epochs=2"), "--set epochs=2", "not a flag path");
  throwsStudy(() => parseOverride("evals.knn=2"), "not a flag path");
  assert.deepEqual(parseSeeds("0, 1,2"), [0, 1, 2]);
  throwsStudy(() => parseSeeds("0,0"), "--seeds");
  throwsStudy(() => parseSeeds("a"), "--seeds");
  throwsStudy(() => parseSeeds("-1"), "--seeds");
});

Deno.test("mean ± sample std over seeds, formatted", () => {
  // [1, 2, 4]: mean 7/3, sample variance ((4/3)² + (1/3)² + (5/3)²) / 2 = 7/3
  const s = summarize([1, 2, 4]);
  assert.equal(s.n, 3);
  assert.ok(Math.abs(s.mean - 7 / 3) < 1e-12);
  assert.ok(Math.abs(s.std - Math.sqrt(7 / 3)) < 1e-12);
  assert.equal(formatMeanStd(s, 2), "2.33 ± 1.53");
  assert.equal(formatMeanStd(s), "2.3 ± 1.5");
  assert.equal(formatMeanStd(summarize([5])), "5.0 ± —");
  assert.equal(formatMeanStd(summarize([])), "n/a");
  assert.equal(formatMeanStd(summarize([NaN, 3, 5]), 0, 3), "4 ± 1 (n=2)");
  assert.equal(formatMeanStd(summarize([3, 5]), 0, 2), "4 ± 1");
  // [10, 20]: std = √50 = 7.0711
  assert.equal(formatMeanStd(summarize([10, 20]), 3), "15.000 ± 7.071");
});

Deno.test("studyEta: running steps' own ETA, finished steps' means, the longest unit, unknown kinds", () => {
  const durations = new Map([["knn", [60, 120]], ["train", [600]]]);
  const p = (step: string, unit: string) => ({ step, unit });
  const none = { step: "train", unit: "a", seconds: 100, lastLine: "" };
  // unit a: a training 100 s in (500 left) + knn (90); unit b: train + knn (690); c: knn (90)
  const pending = [p("knn", "a"), p("train", "b"), p("knn", "b"), p("knn", "c")];
  assert.equal(studyEta({ pending, active: [none], durations, jobs: 1 }), "22m50s");
  // with 2 at a time: total / 2 = 11m25s, but unit b alone needs 11m30s
  assert.equal(studyEta({ pending, active: [none], durations, jobs: 2 }), "11m30s");
  // with 4 at a time the longest unit is the floor, not total / 4
  assert.equal(studyEta({ pending, active: [none], durations, jobs: 4 }), "11m30s");
  // the step's own progress line wins over the mean
  const own = { ...none, lastLine: "densedino  599/2496 it  24%  ETA 34m17s  epoch=1" };
  assert.equal(studyEta({ pending: [], active: [own], durations, jobs: 1 }), "34m17s");
  // a step kind never finished: a lower bound, or "?" when nothing is known
  const fresh = new Map([["knn", [60]]]);
  assert.equal(
    studyEta({ pending: [p("train", "a"), p("knn", "a")], active: [], durations: fresh, jobs: 1 }),
    "> 1m00s",
  );
  assert.equal(
    studyEta({ pending: [p("train", "a")], active: [none], durations: new Map(), jobs: 1 }),
    "?",
  );
  assert.equal(studyEta({ pending: [], active: [], durations, jobs: 1 }), "0.0s");
});

Deno.test("study files: structural errors name the file, the run and the field", () => {
  const f = "studies/x.json";
  const ok = parseStudy(f, baseStudy());
  assert.equal(ok.runs.length, 2);
  assert.equal(ok.runs[0].evalOnly, false);
  throwsStudy(() => parseStudy(f, [1]), f, "JSON object");
  throwsStudy(
    () => parseStudy(f, { ...baseStudy(), sedes: [1] }),
    f,
    'unknown field "sedes"',
    'did you mean "seeds"',
  );
  for (const k of ["name", "version", "title", "seeds", "runs", "table"]) {
    const s = baseStudy();
    delete s[k];
    throwsStudy(() => parseStudy(f, s), f, `missing field "${k}"`);
  }
  throwsStudy(() => parseStudy(f, baseStudy({ version: 0 })), '"version"');
  throwsStudy(() => parseStudy(f, baseStudy({ seeds: [0, 0] })), "repeats a seed");
  throwsStudy(() => parseStudy(f, baseStudy({ name: "a b" })), '"name"');
  throwsStudy(
    () => parseStudy(f, baseStudy({ runs: [{ name: "a" }, { name: "a" }] })),
    'runs[1] ("a")',
    "repeated",
  );
  throwsStudy(
    () => parseStudy(f, baseStudy({ runs: [{ name: "a", trian: {} }] })),
    'runs[0] ("a")',
    'unknown field "trian"',
    'did you mean "train"',
  );
  throwsStudy(() => parseStudy(f, baseStudy({ runs: [{ label: "x" }] })), "runs[0]", '"name"');
  throwsStudy(
    () => parseStudy(f, baseStudy({ runs: [{ name: "r", evalOnly: true }] })),
    'runs[0] ("r")',
    '"random"',
  );
  throwsStudy(
    () => parseStudy(f, baseStudy({ runs: [{ name: "r", random: true }] })),
    '"evalOnly"',
  );
  throwsStudy(
    () => parseStudy(f, baseStudy({ runs: [{ name: "a", train: { lr: { x: 1 } } }] })),
    'runs[0] ("a").train.lr',
  );
  throwsStudy(
    () => parseStudy(f, baseStudy({ table: { columns: [{ metric: "top1" }] } })),
    "table.columns[0]",
    '"metric"',
  );
  throwsStudy(
    () => parseStudy(f, baseStudy({ plot: { kind: "line" } })),
    "plot",
    '"x": "train.FLAG"',
  );
  throwsStudy(
    () => parseStudy(f, baseStudy({ plot: { metrics: ["seg.miou"] } })),
    "plot.metrics",
    "not a table column",
  );
  throwsStudy(() => parseStudy(f, baseStudy({ plot: { file: "../x.png" } })), "plot.file");
});

Deno.test("flag names from --help text", () => {
  const help = [
    "Usage: x [--weights PATH] [flags]",
    "",
    "  --weights PATH",
    "      a run; see also --which",
    "  --k LIST   neighbours",
    "  --no-cache",
    "  --help                         this text",
  ].join("\n");
  assert.deepEqual([...parseHelpFlags(help)].sort(), ["help", "k", "no-cache", "weights"]);
});

Deno.test("report table: metric paths, mean ± std per run, Markdown", () => {
  const steps = { knn: { top1: 50, results: [{ k: 20, top1: 51 }] }, seg: { miou: "x" } };
  assert.equal(metricValue(steps, "knn.top1"), 50);
  assert.equal(metricValue(steps, "knn.results.0.top1"), 51);
  assert.ok(Number.isNaN(metricValue(steps, "seg.miou")));
  assert.ok(Number.isNaN(metricValue(steps, "train.final.loss")));
  const results: RunResult[] = [
    {
      name: "a",
      label: "A | pipe",
      evalOnly: false,
      x: 1,
      seeds: [0, 1, 2].map((s) => ({
        seed: s,
        steps: { knn: { top1: [1, 2, 4][s], frac: 0.5 }, ...(s < 2 ? { seg: { miou: 10 } } : {}) },
      })),
    },
    {
      name: "b",
      label: "B",
      evalOnly: true,
      x: null,
      seeds: [{ seed: 0, steps: { knn: { top1: 7, frac: 0.25 } } }],
    },
    { name: "c", label: "C", evalOnly: false, x: 2, seeds: [] },
  ];
  const columns = [
    { metric: "knn.top1", label: "top-1", digits: 2 },
    { metric: "seg.miou", label: "mIoU" },
    { metric: "knn.frac", label: "%", scale: 100, digits: 0 },
  ];
  const rows = tableRows(columns, results);
  assert.equal(rows[0].n, 3);
  assert.deepEqual(rows[0].metrics["seg.miou"].values, [
    { seed: 0, value: 10 },
    { seed: 1, value: 10 },
  ]);
  assert.equal(rows[1].metrics["knn.frac"].mean, 25);
  assert.equal(
    markdownTable(columns, rows),
    [
      "| run | n | top-1 | mIoU | % |",
      "| --- | --: | --: | --: | --: |",
      "| A \\| pipe | 3 | 2.33 ± 1.53 | 10.0 ± 0.0 (n=2) | 50 ± 0 |",
      "| B | 1 | 7.00 ± — | n/a | 25 ± — |",
      "| C | 0 | n/a | n/a | n/a |",
    ].join("\n"),
  );
});

// ---- against scripts --------------------------------------------------------------------------

Deno.test("loadStudy: flags checked against the scripts before anything runs", async () => {
  await withDir(async (dir) => {
    const scripts = await fakes(dir);
    const load = async (study: unknown, extra: Record<string, unknown> = {}) =>
      await loadStudy(await writeStudy(dir, study), { scripts, out: `${dir}/out`, ...extra });
    const s = await load(baseStudy({ seeds: [0, 1] }), {
      sets: [parseOverride("train.lr=0.1"), parseOverride("evals.knn.k=20")],
    });
    assert.deepEqual(s.runs[1].train, { epochs: 1, "num-ref": 2, lr: 0.1 });
    assert.deepEqual(s.runs[1].evals, { knn: { k: 20 } });
    const units = planStudy(s);
    assert.equal(units.length, 4);
    assert.equal(units[3].dir, `${dir}/out/b/seed1`);
    assert.deepEqual(units[3].steps.map((x) => [x.name, x.args]), [
      [
        "train",
        [
          "--epochs",
          "1",
          "--num-ref",
          "2",
          "--lr",
          "0.1",
          "--seed",
          "1",
          "--out",
          `${dir}/out/b/seed1/train`,
        ],
      ],
      ["knn", ["--k", "20", "--weights", `${dir}/out/b/seed1/train`]],
    ]);
    const path = `${dir}/study.json`;
    // an unknown flag: the file, the run, the flag and the script
    await rejectsStudy(
      load(baseStudy({ runs: [{ name: "a", train: { numRefs: 2 } }] })),
      path,
      'runs[0] ("a").train',
      '"numRefs" (--num-refs)',
      "fake_train.ts",
      'did you mean "num-ref"',
    );
    await rejectsStudy(
      load(baseStudy({ base: { train: {}, evals: { knn: { kk: 1 } } } })),
      `${path}: base.evals.knn`,
      "--kk",
    );
    await rejectsStudy(
      load(baseStudy({ runs: [{ name: "a", evals: { knn: { topk: 1 } } }] })),
      'runs[0] ("a").evals.knn',
      "--topk",
    );
    await rejectsStudy(
      load(baseStudy({ base: { evals: { knnn: {} } } })),
      'unknown evaluation "knnn"',
      'did you mean "knn"',
    );
    await rejectsStudy(
      load(baseStudy({ base: { evals: { knn_items: { kk: 1 } } } })),
      `${path}: base.evals.knn_items`,
      "--kk",
    );
    await rejectsStudy(load(baseStudy({ base: { evals: { train_x: {} } } })), "train_x");
    // flags the runner sets itself
    await rejectsStudy(
      load(baseStudy({ runs: [{ name: "a", train: { out: "x" } }] })),
      'runs[0] ("a").train',
      "--out is set by the runner",
    );
    await rejectsStudy(
      load(baseStudy({ runs: [{ name: "a", evals: { knn: { weights: "x" } } }] })),
      "--weights is set by the runner",
    );
    await rejectsStudy(
      load(baseStudy(), { sets: [parseOverride("evals.seg.k=1")] }),
      "--set evals.seg.k=1",
      'runs the evaluation "seg"',
    );
    await rejectsStudy(
      load(baseStudy(), { sets: [parseOverride("train.epoch=1")] }),
      "--set train.epoch=1",
      "--epoch",
    );
    await rejectsStudy(
      load(baseStudy({ table: { columns: [{ metric: "seg.miou" }] } })),
      'metric "seg.miou"',
      'reads step "seg"',
    );
    await rejectsStudy(load(baseStudy(), { only: ["c"] }), "--only c", 'no run "c"');
    // the training resolver sees every run's flags; its errors name the run
    await rejectsStudy(
      load(baseStudy(), {
        resolveTrain: (args: string[]) => {
          if (args.includes("2")) throw new Error("--num-ref 2 is not allowed");
          return {};
        },
      }),
      'runs[1] ("b").train: --num-ref 2 is not allowed',
    );
    // random init: the architecture of the base training configuration, and the seed
    const r = await load(
      baseStudy({
        base: { train: { epochs: 1 }, evals: { knn: { quiet: false, k: 5 } } },
        runs: [{ name: "rnd", evalOnly: true, random: true }],
      }),
      {
        resolveTrain: (args: string[]) => {
          assert.deepEqual(args.slice(0, 2), ["--epochs", "1"]);
          return { arch: "vit_micro", patchSize: 8, imgSize: 32 };
        },
      },
    );
    assert.deepEqual(planStudy(r)[0].steps.map((x) => x.args), [
      ["--arch", "vit_micro", "--patch-size", "8", "--img-size", "32", "--k", "5", "--seed", "0"],
    ]);
    await rejectsStudy(
      load(baseStudy({ runs: [{ name: "rnd", evalOnly: true, random: true }] })),
      '"random": true needs the training configuration',
    );
    // a TS study file
    await Deno.writeTextFile(`${dir}/s.ts`, `export default ${JSON.stringify(baseStudy())};`);
    const ts = await loadStudy(`${dir}/s.ts`, { scripts });
    assert.equal(ts.out, "runs/studies/t");
    await rejectsStudy(
      loadStudy(`${dir}/nope.json`, { scripts }),
      `${dir}/nope.json`,
      "cannot read",
    );
    await Deno.writeTextFile(`${dir}/bad.json`, "{");
    await rejectsStudy(loadStudy(`${dir}/bad.json`, { scripts }), "not valid JSON");
  });
});

Deno.test("run identity: a hash of the resolved flags, volatile flags left out", async () => {
  await withDir(async (dir) => {
    const scripts = await fakes(dir);
    const hash = async (study: unknown, sets: string[] = []) => {
      const s = await loadStudy(await writeStudy(dir, study), {
        scripts,
        sets: sets.map(parseOverride),
      });
      return planStudy(s)[0].identity.hash;
    };
    const h = await hash(baseStudy());
    assert.match(h, /^[0-9a-f]{16}$/);
    assert.equal(await hash(baseStudy(), ["train.threads=2"]), h);
    assert.equal(await hash(baseStudy(), ["evals.knn.quiet=true"]), h);
    assert.equal(await hash(baseStudy({ version: 2, title: "other" })), h); // version is checked apart
    assert.equal(
      await hash(baseStudy({ runs: [{ name: "a", train: { "num-ref": 1 } }] })),
      h,
      "spelling",
    );
    assert.notEqual(await hash(baseStudy(), ["train.epochs=2"]), h);
    assert.notEqual(await hash(baseStudy(), ["evals.knn.k=2"]), h);
    assert.notEqual(await hash(baseStudy({ seeds: [1] })), h);
    // the embedded data set's generator is part of the identity (no --data: fashion-scenes)
    const s = await loadStudy(await writeStudy(dir, baseStudy()), { scripts });
    assert.equal(planStudy(s)[0].identity.data, `fashion-scenes/v${FASHION_SCENES_VERSION}`);
  });
});

Deno.test("an evaluation variant NAME_SUFFIX runs NAME's script with its own flags", async () => {
  await withDir(async (dir) => {
    const scripts = await fakes(dir);
    const spec = baseStudy({
      base: { train: { epochs: 1 }, evals: { knn: { k: 20 }, knn_items: { k: 200 } } },
      table: { columns: [{ metric: "knn.top1" }, { metric: "knn_items.top1", label: "items" }] },
    });
    const study = await loadStudy(await writeStudy(dir, spec), { scripts, out: `${dir}/out` });
    assert.equal(study.scripts.knn_items, scripts.knn);
    const r = await runStudy(study, quiet);
    assert.equal(r.failed.length, 0);
    const a = JSON.parse(await Deno.readTextFile(`${dir}/out/a/seed0/eval_knn.json`));
    const b = JSON.parse(await Deno.readTextFile(`${dir}/out/a/seed0/eval_knn_items.json`));
    assert.equal(a.top1, 50.2);
    assert.equal(b.top1, 52);
    assert.equal(r.table[0].metrics["knn_items.top1"].mean, 52);
    assert.match(await Deno.readTextFile(r.report), /\| items/);
  });
});

Deno.test("reuse: a run not started takes over a finished one of another study", async (t) => {
  await withDir(async (dir) => {
    const scripts = await fakes(dir);
    const random = {
      name: "r",
      evalOnly: true,
      random: { arch: "vit", patchSize: 8, imgSize: 16 },
    };
    const a = await loadStudy(
      await writeStudy(
        dir,
        baseStudy({ runs: [...baseStudy().runs as unknown[], random] }),
        "a.json",
      ),
      { scripts, out: `${dir}/a` },
    );
    assert.equal((await runStudy(a, quiet)).failed.length, 0);
    // another study: x = a's "b" (other threads: not a result-changing flag), y = new, r = a's
    // random run; its seg evaluation is new and runs on the reused weights
    const spec = baseStudy({
      name: "u",
      base: { train: { epochs: 1, threads: 2 }, evals: { knn: {}, seg: { k: 5 } } },
      runs: [{ name: "x", train: { numRef: 2 } }, { name: "y", train: { numRef: 3 } }, random],
      table: { columns: [{ metric: "knn.top1" }, { metric: "seg.top1" }] },
    });
    const file = await writeStudy(dir, spec, "u.json");
    const u = await loadStudy(file, { scripts, out: `${dir}/u` });

    await t.step("what matches: same flags up to volatile ones, same seed, finished", async () => {
      const m = await findReuse(u, planStudy(u), [`${dir}/a`]);
      assert.deepEqual(
        m.map((x) => [x.unit.run.name, x.source, x.steps]),
        [["x", `${dir}/a/b/seed0`, ["train", "knn"]], ["r", `${dir}/a/r/seed0`, ["knn"]]],
      );
      // another seed has nothing to take over
      const u1 = await loadStudy(file, { scripts, out: `${dir}/u`, seeds: [1] });
      assert.deepEqual(await findReuse(u1, planStudy(u1), [`${dir}/a`]), []);
      // an unfinished training is not taken over
      await Deno.rename(`${dir}/a/b/seed0/train.json`, `${dir}/train.json.bak`);
      const m2 = await findReuse(u, planStudy(u), [`${dir}/a`]);
      assert.deepEqual(m2.map((x) => x.unit.run.name), ["r"]);
      await Deno.rename(`${dir}/train.json.bak`, `${dir}/a/b/seed0/train.json`);
    });

    await t.step("a resolver compares resolved configurations (defaults included)", async () => {
      // a toy resolver: --num-ref defaults to 2; out / threads do not change results
      const resolveTrain = (args: string[]) => {
        const v = Object.fromEntries(
          [...args.keys()].filter((i) => args[i].startsWith("--"))
            .map((i) => [args[i].slice(2), args[i + 1]]),
        );
        return { numRef: Number(v["num-ref"] ?? 2), seed: Number(v.seed), out: v.out, threads: 9 };
      };
      const cfg = `${dir}/a/b/seed0/train/config.json`;
      await Deno.writeTextFile(cfg, JSON.stringify({ threads: 1, numRef: 2, out: "x", seed: 0 }));
      const d = await writeStudy(dir, baseStudy({ name: "d", runs: [{ name: "z" }] }), "d.json");
      const ds = await loadStudy(d, { scripts, out: `${dir}/d` });
      const m = await findReuse(ds, planStudy(ds), [`${dir}/a`], { resolveTrain });
      assert.deepEqual(m.map((x) => [x.source, x.steps]), [[`${dir}/a/b/seed0`, ["train", "knn"]]]);
      // without config.json (or with another configuration) nothing matches
      await Deno.writeTextFile(cfg, JSON.stringify({ numRef: 2, seed: 0, lr: 1 }));
      assert.deepEqual(await findReuse(ds, planStudy(ds), [`${dir}/a`], { resolveTrain }), []);
      await Deno.remove(cfg);
      assert.deepEqual(await findReuse(ds, planStudy(ds), [`${dir}/a`], { resolveTrain }), []);
    });

    await t.step(
      "applied: the steps are not run again; the report says where they came from",
      async () => {
        const lines: string[] = [];
        await applyReuse(await findReuse(u, planStudy(u), [`${dir}/a`]), (l) => lines.push(l));
        assert.deepEqual(lines, [
          `x seed0: reused train, knn from ${displayPath(`${dir}/a/b/seed0`)}`,
          `r seed0: reused knn from ${displayPath(`${dir}/a/r/seed0`)}`,
        ]);
        const o = await runStudy(u, quiet);
        // y: train, knn, seg; x: seg; r: seg
        assert.deepEqual([o.ran, o.skipped, o.failed.length], [5, 3, 0]);
        const args = (await Deno.readTextFile(`${dir}/u/x/seed0/train/args.jsonl`)).trim().split(
          "\n",
        );
        assert.equal(args.length, 1, "not trained again");
        assert.ok(args[0].includes(`${dir}/a/b/seed0/train`));
        const seg = JSON.parse(await Deno.readTextFile(`${dir}/u/x/seed0/eval_seg.json`));
        assert.ok(seg.args.includes(`${dir}/u/x/seed0/train`), "seg ran on the reused weights");
        assert.equal(o.table[0].metrics["knn.top1"].mean, 50);
        const id = JSON.parse(await Deno.readTextFile(`${dir}/u/x/seed0/run.json`));
        assert.deepEqual([id.study, id.run, id.reusedSteps], ["u", "x", ["train", "knn"]]);
        const md = await Deno.readTextFile(o.report);
        assert.match(md, /> Note: x seed 0: train, knn reused from `[^`]*a\/b\/seed0`/);
        assert.match(
          md,
          /> Note: r seed 0: knn reused from `[^`]*` \(the same evaluation flags and seed\)/,
        );
        assert.match(md, /> Note: x seed 0: .* \(the same training configuration and seed\)/);
        assert.doesNotMatch(md, /> Note: y /);
        // no temporary folders left; started directories are never considered again
        assert.deepEqual((await Array.fromAsync(Deno.readDir(`${dir}/u/x`))).map((e) => e.name), [
          "seed0",
        ]);
        assert.deepEqual(await findReuse(u, planStudy(u), [`${dir}/a`]), []);
      },
    );

    await t.step("bad sources: a clear error", async () => {
      await rejectsStudy(
        findReuse(u, planStudy(u), [`${dir}/nope`]),
        `--reuse ${dir}/nope: no such`,
      );
      await rejectsStudy(findReuse(u, planStudy(u), [`${dir}/u`]), "this study's own output");
    });
  });
});

Deno.test("runStudy: resume with --resume, failures, reports, jobs, abort", async (t) => {
  await withDir(async (dir) => {
    const scripts = await fakes(dir);
    const out = `${dir}/out`;
    const spec = baseStudy({
      seeds: [0, 1],
      // the placeholder gives each repetition's evaluation its seed
      base: { train: { epochs: 1 }, evals: { knn: { seed: "{seed}" } } },
      runs: [{ name: "a", train: { numRef: 1, crashOnce: `${dir}/crash` } }, {
        name: "b",
        train: { "num-ref": 2 },
      }],
      table: { columns: [{ metric: "knn.top1" }, { metric: "train.final.loss" }] },
    });
    const file = await writeStudy(dir, spec);
    const load = (extra: Record<string, unknown> = {}) =>
      loadStudy(file, { scripts, out, ...extra });

    await t.step("an interrupted training continues with --resume", async () => {
      // a/seed1's training "crashes" after writing a checkpoint
      await Deno.writeTextFile(`${dir}/crash-seed1`, "");
      // an empty run directory is fine
      await Deno.mkdir(`${out}/a/seed0`, { recursive: true });
      const lines: string[] = [];
      const o1 = await runStudy(await load(), { log: (l) => lines.push(l), heartbeatMs: 0 });
      assert.equal(o1.failed.length, 1);
      assert.deepEqual([o1.failed[0].run, o1.failed[0].seed, o1.failed[0].step], ["a", 1, "train"]);
      assert.match(o1.failed[0].message, /exit code 1; see .*a\/seed1\/train\.log.*\n.*crashing/s);
      assert.ok(lines.some((l) => l.includes("a seed1 train FAILED")));
      assert.ok(!(await exists(`${out}/a/seed1/train.json`)));
      assert.ok(!(await exists(`${out}/a/seed1/eval_knn.json`)), "later steps skipped");
      // the other runs went on
      for (const u of ["a/seed0", "b/seed0", "b/seed1"]) {
        assert.ok(await exists(`${out}/${u}/eval_knn.json`), u);
      }
      assert.equal(o1.ran, 7); // 4 trainings (one failed) + 3 evaluations
      const o2 = await runStudy(await load(), quiet);
      assert.deepEqual([o2.ran, o2.skipped, o2.failed.length], [2, 6, 0]);
      const args = (await Deno.readTextFile(`${out}/a/seed1/train/args.jsonl`)).trim().split("\n")
        .map((l) => JSON.parse(l));
      assert.equal(args.length, 2);
      assert.ok(!args[0].includes("--resume"));
      assert.deepEqual(args[1], [...args[0], "--resume"]);
      const train = JSON.parse(await Deno.readTextFile(`${out}/a/seed1/train.json`));
      assert.equal(train.resumed, true);
      // the log holds both attempts; times.json the wall times
      const log = await Deno.readTextFile(`${out}/a/seed1/train.log`);
      assert.equal(log.match(/^=== \d{4}-/gm)?.length, 2);
      assert.match(log, /fake train: crashing/);
      const times = JSON.parse(await Deno.readTextFile(`${out}/a/seed1/times.json`));
      assert.ok(times.train > 0 && times.knn > 0);
      // the resumed training's time is its last attempt's only, and says so
      assert.deepEqual(times.resumed, ["train"]);
      const whole = JSON.parse(await Deno.readTextFile(`${out}/b/seed1/times.json`));
      assert.equal(whole.resumed, undefined);
      // run.json: the identity
      const id = JSON.parse(await Deno.readTextFile(`${out}/a/seed1/run.json`));
      assert.deepEqual([id.study, id.version, id.run, id.seed], ["t", 1, "a", 1]);
    });

    await t.step("report.md, results.json and the plot", async () => {
      const o = await runStudy(await load(), { ...quiet, invocation: "deno run -A x.ts" });
      assert.equal(o.ran, 0);
      // knn top1 = 10·seed + 50: mean 55, std √50; train loss 1 + seed
      const a = o.table.find((r) => r.run === "a")!;
      assert.equal(a.metrics["knn.top1"].mean, 55);
      assert.ok(Math.abs(a.metrics["knn.top1"].std - Math.sqrt(50)) < 1e-12);
      assert.equal(a.metrics["train.final.loss"].mean, 1.5);
      const md = await Deno.readTextFile(o.report);
      assert.match(md, /^# T$/m);
      assert.match(md, /^\| a \| 2 \| 55\.0 ± 7\.1 \| 1\.5 ± 0\.7 \|$/m);
      assert.match(md, /^\| b \| 2 \| 55\.0 ± 7\.1 \| 1\.5 ± 0\.7 \|$/m);
      assert.match(md, /deno run -A x\.ts/);
      // time per step: a's training (seed 1 resumed) is a lower bound, b's is not
      assert.match(md, /^\| a \| > [\d.]+s \| [\d.]+s \|$/m);
      assert.match(md, /^\| b \| [\d.]+s \| [\d.]+s \|$/m);
      assert.match(md, /fake_train\.ts --epochs 1 --num-ref 1 --crash-once \S+ --seed 0 --out /);
      assert.match(md, /!\[T\]\(t\.png\)/);
      // a bar panel per metric, one under the other (each with its own y axis)
      const png = await decodePng(await Deno.readFile(o.plot!));
      assert.ok(png.height >= 2 * 360 && png.width >= 800, `${png.width}×${png.height}`);
      const res = JSON.parse(await Deno.readTextFile(o.results));
      assert.equal(res.runs.length, 2);
      assert.deepEqual(res.runs[0].seeds.map((s: { metrics: unknown }) => s.metrics), [
        { "knn.top1": 50, "train.final.loss": 1 },
        { "knn.top1": 60, "train.final.loss": 2 },
      ]);
      assert.equal(res.runs[0].summary["knn.top1"].n, 2);
      assert.equal(res.runs[1].seeds[1].steps.knn.top1, 60);
      // --report-only writes the report without running; --only runs one run, reports all
      await Deno.remove(`${out}/b/seed1/eval_knn.json`);
      const r = await runStudy(await load(), { ...quiet, reportOnly: true });
      assert.equal(r.ran, 0);
      assert.equal(r.table[1].metrics["knn.top1"].n, 1);
      const only = await runStudy(await load({ only: ["a"] }), quiet);
      assert.equal(only.ran, 0);
      assert.equal(only.table.length, 2);
      assert.ok(!(await exists(`${out}/b/seed1/eval_knn.json`)));
    });

    await t.step("a run directory of another study version or other flags is refused", async () => {
      const v2 = await writeStudy(dir, { ...baseStudy({ seeds: [0, 1] }), version: 2 }, "v2.json");
      await rejectsStudy(
        runStudy(await loadStudy(v2, { scripts, out }), quiet),
        `${out}/a/seed0 was made by version 1 of the study "t"`,
        "is version 2",
        "delete it (rm -r",
      );
      await rejectsStudy(
        runStudy(await load({ sets: [parseOverride("train.epochs=3")] }), quiet),
        `${out}/a/seed0 was made by version 1 of "t" with other flags`,
        "train --epochs: was --epochs 1, now --epochs 3",
      );
      // a run made on an older generator of the embedded data set (run.json without `data`
      // predates the field: version 1)
      const idFile = `${out}/a/seed0/run.json`;
      const saved = await Deno.readTextFile(idFile);
      const { data: _, ...old } = JSON.parse(saved);
      await Deno.writeTextFile(idFile, JSON.stringify(old));
      await rejectsStudy(
        runStudy(await load(), quiet),
        `${out}/a/seed0 was trained and evaluated on the embedded data set fashion-scenes/v1`,
        `now fashion-scenes/v${FASHION_SCENES_VERSION}`,
        "rm -r",
      );
      await Deno.writeTextFile(idFile, saved);
      await Deno.mkdir(`${dir}/foreign/a/seed0`, { recursive: true });
      await Deno.writeTextFile(`${dir}/foreign/a/seed0/x`, "");
      await rejectsStudy(
        runStudy(await load({ out: `${dir}/foreign` }), quiet),
        `${dir}/foreign/a/seed0 exists but has no run.json`,
      );
      assert.ok(!(await exists(`${dir}/foreign/a/seed0/run.json`)));
      assert.ok(!(await exists(`${dir}/foreign/study.json`)));
      // --only: a changed run that is not selected does not stop the others; the report says so
      const changed = structuredClone(spec) as { runs: { train: Record<string, unknown> }[] };
      changed.runs[1].train = { "num-ref": 3 };
      const c = await writeStudy(dir, changed, "changed.json");
      const o = await runStudy(await loadStudy(c, { scripts, out, only: ["a"] }), quiet);
      assert.equal(o.ran, 0);
      assert.equal(o.table[1].n, 0);
      assert.match(await Deno.readTextFile(o.report), /> Note: b: seeds 0, 1 left out: made by/);
      await rejectsStudy(
        runStudy(await loadStudy(c, { scripts, out, only: ["b"] }), quiet),
        `${out}/b/seed0 was made by version 1 of "t" with other flags`,
        "train --num-ref: was --num-ref 2, now --num-ref 3",
      );
    });

    await t.step("jobs: units run at once", async () => {
      const j = await writeStudy(
        dir,
        baseStudy({ name: "j", base: { train: { sleep: 0.6 }, evals: { knn: {} } } }),
        "j.json",
      );
      const study = await loadStudy(j, { scripts, out: `${dir}/jobs` });
      const t0 = performance.now();
      const lines: string[] = [];
      const o = await runStudy(study, { log: (l) => lines.push(l), heartbeatMs: 0, jobs: 2 });
      const seconds = (performance.now() - t0) / 1000;
      assert.equal(o.failed.length, 0);
      // each step's ordinal once, although two start at the same moment
      const ordinals = lines.map((l) => /^\[(\d+)\/4\] /.exec(l)?.[1]).filter((x) => x);
      assert.deepEqual(ordinals.map(Number).sort(), [1, 2, 3, 4]);
      // two 0.6-s trainings (plus process start-up) side by side
      const starts = await Promise.all(["a", "b"].map(async (r) => {
        const st = await Deno.stat(`${dir}/jobs/${r}/seed0/train/pid`);
        return st.mtime!.getTime();
      }));
      const ends = await Promise.all(["a", "b"].map(async (r) => {
        const st = await Deno.stat(`${dir}/jobs/${r}/seed0/train.json`);
        return st.mtime!.getTime();
      }));
      assert.ok(Math.max(...starts) < Math.min(...ends), `overlap (${seconds.toFixed(1)} s)`);

      // two trainings starting at once both count in the ETA (a's took 0.6 s or more): before,
      // a step taken but not yet spawned was neither pending nor running
      const k = await writeStudy(
        dir,
        baseStudy({
          name: "k",
          base: { train: { sleep: 0.6 }, evals: { knn: {} } },
          runs: ["a", "b", "c"].map((name, i) => ({ name, train: { numRef: i + 1 } })),
        }),
        "k.json",
      );
      await runStudy(await loadStudy(k, { scripts, out: `${dir}/eta`, only: ["a"] }), quiet);
      const trained = JSON.parse(await Deno.readTextFile(`${dir}/eta/a/seed0/times.json`)).train;
      const started: string[] = [];
      await runStudy(await loadStudy(k, { scripts, out: `${dir}/eta` }), {
        log: (l) => started.push(l),
        heartbeatMs: 0,
        jobs: 2,
      });
      const etas = started.filter((l) => / seed0 train · /.test(l))
        .map((l) => parseDuration(/ETA (\S+)$/.exec(l)![1]));
      assert.equal(etas.length, 2);
      for (const e of etas) assert.ok(e !== null && e >= trained, `${e} >= ${trained}`);
    });

    await t.step("an abort ends the running step; it is not marked complete", async () => {
      const s = await writeStudy(
        dir,
        baseStudy({ name: "s", base: { train: { sleep: 30 }, evals: { knn: {} } } }),
        "s.json",
      );
      const study = await loadStudy(s, { scripts, out: `${dir}/abort` });
      const ac = new AbortController();
      const running = runStudy(study, { ...quiet, signal: ac.signal });
      const pidFile = `${dir}/abort/a/seed0/train/pid`;
      while (!(await exists(pidFile))) await new Promise((r) => setTimeout(r, 50));
      const pid = Number(await Deno.readTextFile(pidFile));
      const t0 = performance.now();
      ac.abort("SIGTERM");
      await assert.rejects(running, (e: unknown) => {
        assert.ok(e instanceof StudyInterrupted);
        assert.equal(e.signal, "SIGTERM");
        return true;
      });
      assert.ok(performance.now() - t0 < 10_000);
      assert.ok(!(await exists(`${dir}/abort/a/seed0/train.json`)));
      assert.ok(!(await exists(`${dir}/abort/b`)), "the next run did not start");
      assert.ok(!(await exists(`${dir}/abort/.ablate.lock`)), "the lock is released");
      if (Deno.build.os === "linux") assert.ok(!(await exists(`/proc/${pid}`)), "step ended");
      const results = await collectResults(study);
      assert.deepEqual(results[0].seeds, [{ seed: 0, steps: {}, times: {} }]);
    });
  });
});

Deno.test("the shipped studies load against the real scripts", async () => {
  const root = new URL("../../", import.meta.url).pathname;
  const have = async (p: string) => await exists(`${root}${p}`);
  if (!(await have("scripts/eval_seg.ts")) || !(await have("scripts/eval_knn.ts"))) return;
  const { parseTrainArgs } = await import("../../scripts/train.ts");
  const { resolveTrainConfig } = await import("../../lib/densedino/config.ts");
  const resolveTrain = (args: string[]) => {
    const p = parseTrainArgs(args);
    if (p === "help") throw new Error("help");
    return resolveTrainConfig(p) as unknown as Record<string, unknown>;
  };
  const studies = [["main", 4], ["table2", 9], ["table3", 4], ["fig5", 6]] as const;
  const loaded = new Map<string, Study>();
  for (const [name, runs] of studies) {
    const s = await loadStudy(`${root}studies/${name}.json`, { resolveTrain });
    loaded.set(name, s);
    assert.equal(s.runs.length, runs, name);
    assert.equal(s.out, `runs/studies/${name}`);
    const rnd = s.runs.find((r) => r.evalOnly)!;
    assert.ok(rnd, `${name}: a random-init baseline`);
    const trained = s.runs.find((r) => !r.evalOnly)!;
    assert.equal(rnd.evals.knn.arch, trained.config!.arch);
    assert.equal(rnd.evals.knn["img-size"], trained.config!.imgSize);
    assert.deepEqual(Object.keys(trained.evals).sort(), ["knn", "knn_items", "seg"]);
    // the object-centric k-NN: Fashion-MNIST items, random init at the trained input size
    assert.equal(trained.evals.knn_items.data, "fashion-mnist");
    assert.equal(rnd.evals.knn_items["img-size"], trained.config!.imgSize);
  }
  const fig5 = loaded.get("fig5")!;
  assert.deepEqual(
    fig5.runs.filter((r) => !r.evalOnly).map((r) => (r.config!.views as { numRef: number }).numRef),
    [1, 2, 4, 8, 16],
  );
  const t2 = loaded.get("table2")!;
  const views = (n: string) =>
    t2.runs.find((r) => r.name === n)!.config!.views as Record<string, unknown>;
  assert.deepEqual(
    [views("dino-2g").localCrops, views("dino-2g4l").localScale, views("densedino-6g").localSize],
    [0, [0.05, 0.4], 48],
  );
  assert.equal(t2.runs.find((r) => r.name === "dino-6g")!.config!.method, "dino");
  // main: the class-loss-on-all-views row differs from DenseDINO's in that flag alone
  const main = loaded.get("main")!;
  const cfg = (n: string) => main.runs.find((r) => r.name === n)!.config!;
  assert.deepEqual([cfg("densedino").allCropsCls, cfg("densedino_allcls").allCropsCls], [
    false,
    true,
  ]);
  assert.deepEqual({ ...cfg("densedino_allcls"), allCropsCls: false }, cfg("densedino"));
});
