/**
 * `deno task demo` — the main job: DINO and DenseDINO trained on the embedded fashion-scenes
 * data set with the same budget and seed, both evaluated next to a randomly initialised ViT
 * (weighted k-NN top-1 on the class token, linear segmentation probe mIoU on the patch tokens),
 * and a report with the table, the loss curves, attention maps of the three models on the same
 * multi-object scenes, and one scene's views with their reference points.
 *
 * ```sh
 * deno task demo                      # about 20 minutes on a 2-core CPU
 * deno run -A scripts/demo.ts --budget 0.25 --out runs/quick
 * ```
 *
 * The runs go through the study runner (`lib/study`, as `scripts/ablate.ts`): OUT/study.json is
 * the study, OUT/study/<run>/seed<k>/ its run directories. Rerunning reuses every finished
 * stage and continues an interrupted training from its checkpoint. Progress on stderr; the table
 * on stdout, then one JSON line with the report's path and the numbers. Exit code 2 on bad flags,
 * 1 when a stage failed.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import {
  attentionMaps,
  contactSheet,
  FashionScenes,
  freeAll,
  imageCanvas,
  imagenetNormalize,
  iterationRecords,
  loadBackbone,
  type LoadedBackbone,
  readJsonl,
  renderHeatmap,
  resolveTrainConfig,
  type SheetTile,
  TRAIN_PRESETS,
  type TrainConfig,
  writeFileAtomic,
} from "../mod.ts";
import { saveLinePlot } from "../lib/data/plot.ts";
import {
  camelCase,
  loadStudy,
  parseOverride,
  runStudy,
  StudyError,
  type StudyOutcome,
} from "../lib/study/study.ts";
import { parseTrainArgs } from "./train.ts";
import { logger, runMain, UsageError } from "./_cli.ts";

const NAME = "demo";

/** The demo's defaults (the `demo` training preset decides the model, views and schedules). */
export const DEMO_DEFAULTS = Object.freeze({
  budget: 1,
  out: "runs/demo",
  seed: 0,
  /** scenes of the k-NN memory bank / queries (train / val sets) */
  knnTrain: 2000,
  knnVal: 500,
  /** Fashion-MNIST items of the object-centric k-NN's memory bank / queries (train / test) */
  itemsTrain: 10000,
  itemsVal: 2000,
  /** scenes the segmentation probe trains / is measured on */
  segTrain: 1000,
  segVal: 500,
  /** validation scenes in the attention figure */
  figureScenes: 4,
});

/** The columns of the demo's table. */
export const DEMO_COLUMNS = [
  { metric: "knn.top1", label: "k-NN top-1 (%)", digits: 1 },
  { metric: "knn_items.top1", label: "items k-NN (%)", digits: 1 },
  { metric: "seg.miou", label: "mIoU (%)", digits: 1 },
  { metric: "seg.pixel_acc", label: "pixel acc. (%)", digits: 1 },
  { metric: "train.final.loss", label: "final loss", digits: 3 },
  { metric: "train.imagesPerSec", label: "train img/s", digits: 1 },
] as const;

const FLAGS = {
  budget: { type: "string", default: String(DEMO_DEFAULTS.budget) },
  out: { type: "string", default: DEMO_DEFAULTS.out },
  seed: { type: "string", default: String(DEMO_DEFAULTS.seed) },
  threads: { type: "string", default: "0" },
  set: { type: "string", multiple: true },
  help: { type: "boolean", short: "h", default: false },
} as const;

function help(): string {
  const demo = TRAIN_PRESETS.demo;
  return `Usage: deno run -A scripts/demo.ts [flags]      (or: deno task demo)

Trains DINO and DenseDINO on fashion-scenes with the same budget and seed (the "demo" preset:
${demo.arch}/${demo.patchSize}, ${demo.epochs} epochs of ${demo.scenes} scenes at batch ${demo.batchSize}),
evaluates both and a random-init ViT (k-NN top-1 on ${DEMO_DEFAULTS.knnTrain}/${DEMO_DEFAULTS.knnVal} scenes and on
${DEMO_DEFAULTS.itemsTrain}/${DEMO_DEFAULTS.itemsVal} single Fashion-MNIST items, linear segmentation probe mIoU on
${DEMO_DEFAULTS.segTrain}/${DEMO_DEFAULTS.segVal} scenes), and writes OUT/report.md with the table,
loss curves, attention maps and views with reference points. Reruns reuse finished stages.

  --budget X       scales the training epochs (default ${FLAGS.budget.default}: about 20 minutes on 2 cores);
                   e.g. 0.25 for a quick look, 4 for a longer run
  --out DIR        output directory (default ${FLAGS.out.default})
  --seed N         training / initialisation / probe seed (default ${FLAGS.seed.default})
  --threads N      libtorch intra-op threads (0: the library's default) (default ${FLAGS.threads.default})
  --set PATH=VALUE override a flag of every run, as scripts/ablate.ts: train.FLAG=VALUE or
                   evals.knn.FLAG=VALUE / evals.knn_items.FLAG=VALUE / evals.seg.FLAG=VALUE
                   (e.g. --set train.arch=vit_micro);
                   repeatable (default none)
  -h, --help       this text`;
}

const log = logger(NAME);

/** The demo's study: DINO, DenseDINO and a random-init ViT, one seed. */
export function demoStudy(budget: number, seed: number, threads: number): Record<string, unknown> {
  const preset = TRAIN_PRESETS.demo;
  const epochs = Math.max(1, Math.round((preset.epochs ?? 1) * budget));
  const warmup = Math.min(preset.warmupEpochs ?? 0, epochs - 1);
  const train: Record<string, unknown> = { preset: "demo", epochs, warmupEpochs: warmup };
  if (threads > 0) train.threads = threads;
  const common = threads > 0 ? { threads } : {};
  return {
    name: "demo",
    version: 1,
    title: "DINO vs DenseDINO on fashion-scenes (the demo)",
    description:
      `The demo preset trained for ${epochs} epoch(s) (budget ${budget}), seed ${seed}; ` +
      "k-NN on the teacher's class token, linear probe on its patch tokens.",
    seeds: [seed],
    base: {
      train,
      evals: {
        knn: {
          ...common,
          scenes: DEMO_DEFAULTS.knnTrain,
          valScenes: DEMO_DEFAULTS.knnVal,
        },
        knn_items: {
          ...common,
          data: "fashion-mnist",
          limitTrain: DEMO_DEFAULTS.itemsTrain,
          limitVal: DEMO_DEFAULTS.itemsVal,
        },
        seg: {
          ...common,
          scenes: DEMO_DEFAULTS.segTrain,
          valScenes: DEMO_DEFAULTS.segVal,
          seed: "{seed}",
        },
      },
    },
    runs: [
      { name: "random", label: "random init", evalOnly: true, random: true },
      { name: "dino", label: "DINO", train: { method: "dino" } },
      { name: "densedino", label: "DenseDINO", train: { method: "densedino" } },
    ],
    table: { columns: DEMO_COLUMNS },
  };
}

/** The training run directory of a run of the study. */
function trainDir(studyOut: string, run: string, seed: number): string {
  return `${studyOut}/${run}/seed${seed}/train`;
}

/** Loss curves of DINO and DenseDINO (class and reference parts) in one PNG. */
async function lossCurves(studyOut: string, seed: number, path: string): Promise<string | null> {
  const series = [];
  for (const [run, label] of [["dino", "DINO"], ["densedino", "DenseDINO"]]) {
    const file = `${trainDir(studyOut, run, seed)}/log.jsonl`;
    let records: Record<string, unknown>[];
    try {
      records = await readJsonl(file);
    } catch {
      continue;
    }
    const its = iterationRecords(records);
    const x = its.map((r) => Number(r.iteration));
    series.push({ name: `${label} class loss`, x, y: its.map((r) => Number(r.cls)) });
    if (run === "densedino") {
      series.push({ name: `${label} reference loss`, x, y: its.map((r) => Number(r.ref)) });
    }
  }
  if (series.length === 0) return null;
  await saveLinePlot(path, {
    title: "Training loss",
    xLabel: "iteration",
    yLabel: "loss",
    series,
  });
  return path;
}

/**
 * Fig. 6 in miniature: for each validation scene, the image and the last block's class-token
 * attention (mean over heads) of each model, on the scene at its full size.
 */
async function attentionFigure(
  models: { label: string; backbone: LoadedBackbone }[],
  count: number,
  path: string,
): Promise<string> {
  const val = await FashionScenes.open({ split: "val", quiet: true });
  const rows: SheetTile[][] = [];
  const zoom = 2;
  for (let i = 0; i < count; i++) {
    const sample = await val.get(i);
    const image = sample.image;
    try {
      const input = imagenetNormalize(image);
      const row: SheetTile[] = [{ canvas: imageCanvas(image, zoom), title: `val scene ${i}` }];
      for (const m of models) {
        const maps = attentionMaps(m.backbone.vit, input);
        const mean = maps.cls.mean([0]);
        row.push({ canvas: renderHeatmap(image, mean, { zoom }), title: m.label });
        freeAll([mean, maps.cls, maps.ref]);
      }
      rows.push(row);
      input.free();
    } finally {
      freeAll([image, sample.mask ?? null]);
    }
  }
  await contactSheet(rows, { title: "last-block class-token attention (mean over heads)" }).save(
    path,
  );
  return path;
}

/**
 * One training scene's views with their reference points (scripts/visualize_views.ts with the
 * demo's view options): the contact sheet's path, or null when it failed.
 */
async function viewsFigure(out: string, run: string, seed: number): Promise<string | null> {
  let v = resolveTrainConfig({ preset: "demo" }).views;
  try {
    v = (JSON.parse(await Deno.readTextFile(`${run}/config.json`)) as TrainConfig).views;
  } catch {
    // the run's configuration is missing: the preset's views
  }
  const dir = `${out}/views`;
  const script = new URL("./visualize_views.ts", import.meta.url).pathname;
  const args = [
    "run",
    "-A",
    script,
    "--data",
    "fashion-scenes",
    "--index",
    "0",
    "--out",
    dir,
    "--seed",
    String(seed),
    "--global-crops",
    String(v.globalCrops),
    "--global-size",
    String(v.globalSize),
    "--local-crops",
    String(v.localCrops),
    "--local-size",
    String(v.localSize),
    "--num-ref",
    String(v.numRef),
  ];
  const r = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" })
    .output();
  if (!r.success) {
    log(`views figure failed: ${new TextDecoder().decode(r.stderr).trim().split("\n").pop()}`);
    return null;
  }
  const last = new TextDecoder().decode(r.stdout).trim().split("\n").pop() ?? "{}";
  const sheet = (JSON.parse(last) as { contact_sheet?: string }).contact_sheet;
  return sheet ? resolve(dir, sheet) : null;
}

/** The table of the study's numbers, as Markdown. */
function markdownTable(outcome: StudyOutcome): string {
  const cell = (r: StudyOutcome["table"][number], c: typeof DEMO_COLUMNS[number]) => {
    const m = r.metrics[c.metric];
    return m && Number.isFinite(m.mean) ? m.mean.toFixed(c.digits) : "—";
  };
  return [
    `| model | ${DEMO_COLUMNS.map((c) => c.label).join(" | ")} |`,
    `| --- | ${DEMO_COLUMNS.map(() => "---:").join(" | ")} |`,
    ...outcome.table.map((r) =>
      `| ${r.label} | ${DEMO_COLUMNS.map((c) => cell(r, c)).join(" | ")} |`
    ),
  ].join("\n");
}

function reportMarkdown(
  outcome: StudyOutcome,
  table: string,
  figures: Record<string, string | null>,
  about: { budget: number; seed: number; seconds: number; out: string },
): string {
  const rel = (p: string | null) =>
    p === null ? null : p.startsWith(about.out + "/") ? p.slice(about.out.length + 1) : p;
  const preset = resolveTrainConfig({ preset: "demo" });
  const lines = [
    "# DINO vs DenseDINO on fashion-scenes",
    "",
    `Budget ${about.budget}, seed ${about.seed}, ${
      (about.seconds / 60).toFixed(1)
    } minutes in this call ` +
    `(finished stages of earlier calls are reused). Model: ${preset.arch}/${preset.patchSize} at ` +
    `${preset.imgSize} px, out_dim ${preset.outDim}, batch ${preset.batchSize}; both methods share ` +
    "every setting but the reference tokens and their loss. k-NN: the teacher's class token, " +
    `k = 20, T = 0.07, ${DEMO_DEFAULTS.knnTrain} train / ${DEMO_DEFAULTS.knnVal} val scenes ` +
    "(label: the largest visible item's class); items k-NN: the same on single Fashion-MNIST " +
    `items (object-centric, as ImageNet is to the paper), the first ${DEMO_DEFAULTS.itemsTrain} ` +
    `train / ${DEMO_DEFAULTS.itemsVal} test items resized to the model's input. ` +
    "Segmentation: a linear probe on the frozen patch " +
    `tokens, ${DEMO_DEFAULTS.segTrain} train / ${DEMO_DEFAULTS.segVal} val scenes, 11 classes ` +
    "(background + 10), mIoU over all classes.",
    "",
    table,
    "",
    "Read the trained rows against random init first: at this budget, differences of a point or " +
    "two are within the variation between seeds, and the features have not yet been shown to " +
    "beat random init clearly (docs/RESULTS.md in the toolkit's repository).",
    "",
  ];
  if (outcome.failed.length) {
    lines.push(`**${outcome.failed.length} stage(s) failed**: see ${rel(outcome.report)}.`, "");
  }
  if (figures.loss) lines.push("## Loss curves", "", `![loss curves](${rel(figures.loss)})`, "");
  if (figures.attention) {
    lines.push(
      "## Attention maps",
      "",
      "The last block's class-token attention, mean over heads, on validation scenes.",
      "",
      `![attention](${rel(figures.attention)})`,
      "",
    );
  }
  if (figures.views) {
    lines.push(
      "## Views and reference points",
      "",
      "One training scene's views as the sampler draws them, with the reference points of each " +
        "(global view, view) pair.",
      "",
      `![views](${rel(figures.views)})`,
      "",
    );
  }
  lines.push(`The study's own report (commands, times per step): ${rel(outcome.report)}.`, "");
  return lines.join("\n");
}

async function main(args: string[]): Promise<number> {
  let values;
  try {
    values = parseArgs({ args, options: FLAGS, strict: true, allowPositionals: false }).values;
  } catch (e) {
    throw new UsageError(`${(e as Error).message} (see --help)`);
  }
  if (values.help) {
    console.log(help());
    return 0;
  }
  const budget = Number(values.budget);
  if (!(budget > 0) || !Number.isFinite(budget)) {
    throw new UsageError(`--budget must be a positive number, got "${values.budget}"`);
  }
  const seed = Number(values.seed);
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new UsageError(`--seed must be an integer ≥ 0, got "${values.seed}"`);
  }
  const threads = Number(values.threads);
  if (!Number.isSafeInteger(threads) || threads < 0) {
    throw new UsageError(`--threads must be an integer ≥ 0, got "${values.threads}"`);
  }
  const sets = (values.set ?? []).map(parseOverride);
  for (const o of sets) {
    if (o.target === "train" && ["method", "preset"].includes(camelCase(o.flag))) {
      throw new UsageError(
        `--set ${o.text}: the demo compares the methods on the demo preset; ` +
          "use scripts/ablate.ts for other comparisons",
      );
    }
  }
  const out = resolve(values.out);
  const t0 = performance.now();
  await Deno.mkdir(out, { recursive: true });

  // 1. the data (generated once, then read from the cache)
  log("fashion-scenes: train and val sets");
  await FashionScenes.open({ split: "train", count: TRAIN_PRESETS.demo.scenes });
  await FashionScenes.open({ split: "val" });

  // 2. training and evaluation, as a study (finished stages are reused)
  const studyFile = `${out}/study.json`;
  await writeFileAtomic(
    studyFile,
    JSON.stringify(demoStudy(budget, seed, threads), null, 2) + "\n",
  );
  const study = await loadStudy(studyFile, {
    out: `${out}/study`,
    sets,
    resolveTrain: (a) => {
      const parsed = parseTrainArgs(a);
      if (parsed === "help") throw new StudyError("--help is not a training flag");
      return resolveTrainConfig(parsed) as unknown as Record<string, unknown>;
    },
  });
  const outcome: StudyOutcome = await runStudy(study, {
    heartbeatMs: 20000,
    log: (l) => log(l),
    invocation: ["deno run -A scripts/demo.ts", ...args].join(" "),
  });

  // 3. figures
  const figures: Record<string, string | null> = {};
  figures.loss = await lossCurves(study.out, seed, `${out}/loss_curves.png`);
  const models: { label: string; backbone: LoadedBackbone }[] = [];
  try {
    for (const [run, label] of [["dino", "DINO"], ["densedino", "DenseDINO"]]) {
      const dir = trainDir(study.out, run, seed);
      try {
        models.push({ label, backbone: await loadBackbone({ weights: dir }) });
      } catch (e) {
        log(`no ${label} model for the figures (${(e as Error).message.split("\n")[0]})`);
      }
    }
    // the random-init model of the same architecture (the trained runs', else the preset's)
    const like = models[0]?.backbone ?? resolveTrainConfig({ preset: "demo" });
    models.unshift({
      label: "random init",
      backbone: await loadBackbone({
        arch: like.arch,
        patchSize: like.patchSize,
        imgSize: like.imgSize,
        seed,
      }),
    });
    log("attention maps");
    figures.attention = await attentionFigure(
      models,
      DEMO_DEFAULTS.figureScenes,
      `${out}/attention.png`,
    );
  } finally {
    for (const m of models) m.backbone.vit.free();
  }
  figures.views = await viewsFigure(out, trainDir(study.out, "densedino", seed), seed);

  // 4. the report
  const seconds = (performance.now() - t0) / 1e3;
  const table = markdownTable(outcome);
  await writeFileAtomic(
    `${out}/report.md`,
    reportMarkdown(outcome, table, figures, { budget, seed, seconds, out }),
  );
  console.log(table);
  console.log(JSON.stringify({
    report: `${out}/report.md`,
    study: outcome.report,
    figures,
    table: outcome.table.map((r) => ({
      run: r.run,
      ...Object.fromEntries(Object.entries(r.metrics).map(([k, v]) => [k, v.mean])),
    })),
    failed: outcome.failed.length,
    seconds,
  }));
  return outcome.failed.length > 0 ? 1 : 0;
}

if (import.meta.main) await runMain(NAME, main, (e) => e instanceof StudyError);
