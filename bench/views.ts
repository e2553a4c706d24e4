/**
 * DenseDINO's views + augmentation: how fast they are, and whether the loader keeps a real
 * training step fed (issue 4's performance target: the step's wait for data ≤ 5% of its time).
 *
 * For each data source — `scenes` (the fashion-scenes set, 96-px images from its on-disk
 * cache; the 224-px global views of the default config upsample them) and `jpeg` (synthetic
 * natural-looking 500×375 JPEGs written to a temporary ImageFolder, so every example reads and
 * decodes a file) — and each view configuration of `_views_source.ts` (`default`: DenseDINO's
 * 2×224 + 8×96, M 4; `cpu`: 2×64 + 4×32, M 4):
 *
 * 1. **throughput**: in the main thread, one image after another, the time of `dataset.get`
 *    (file read + decode for `jpeg`, a copy for `scenes`) and of `multiCropTransform` (geometry,
 *    crops + bicubic antialiased resizes, flips, the DINO photometric augmentations): images/s
 *    of the transform alone and of get + transform;
 * 2. **loader**: the same pipeline through `DataLoader` (`collateMultiCrop`, `workers` 0 / 1 /
 *    …, the workers importing `_views_source.ts`) feeding a real DenseDINO step on each batch
 *    (`_views_step.ts`: vit_tiny/16 teacher no-grad forward on the global views with the teacher
 *    points, student forward on the global and on the local views, `DINOHead(192, 4096)` on
 *    class and reference outputs, the stand-in DINO loss, backward, clipping, AdamW, EMA); per
 *    step, the wait in the loader's `next()` and the step's compute time; the wait share = mean
 *    wait / mean step, warm-up steps excluded, against the 5% target.
 *
 * Thread settings are the library's defaults (libtorch intra-op threads as the library starts,
 * OpenBLAS from the environment); both are reported. `--threads N` sets the intra-op count.
 *
 * Usage: `deno run -A bench/views.ts [--help]`. Progress and tables on stderr; one JSON line
 * on stdout (`bench/run.ts --only views` runs it and prints its table).
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  collateMultiCrop,
  DataLoader,
  epochSeed,
  exampleSeed,
  Generator,
  getNumThreads,
  type MultiCropBatch,
  type MultiCropItem,
  multiCropTransform,
  resolveViewOptions,
  setNumThreads,
  torchVersion,
} from "../mod.ts";
import {
  fmt,
  loadedLibraries,
  parseThreads,
  positiveInt,
  summarize,
  threadInfo,
} from "./common.ts";
import {
  type LoaderRow,
  loaderSummary,
  loaderTable,
  type ThroughputRow,
  throughputTable,
  type Verdict,
  type ViewsReport,
  WAIT_TARGET,
} from "./_views_report.ts";
import {
  type DataKind,
  openDataset,
  VIEW_CONFIGS,
  type ViewConfigName,
  type ViewsSourceOptions,
  writeJpegFolder,
} from "./_views_source.ts";
import { DenseDinoStep } from "./_views_step.ts";

/** The loader source module the workers import. */
const SOURCE = new URL("./_views_source.ts", import.meta.url);

const FLAGS = {
  parts: { type: "string", default: "throughput,loader" },
  data: { type: "string", default: "scenes,jpeg" },
  configs: { type: "string", default: "default,cpu" },
  workers: { type: "string", default: "0,1,2" },
  images: { type: "string", default: "48" },
  "batch-default": { type: "string", default: "2" },
  "batch-cpu": { type: "string", default: "8" },
  steps: { type: "string", default: "16" },
  warmup: { type: "string", default: "3" },
  rounds: { type: "string", default: "1" },
  arch: { type: "string", default: "vit_tiny" },
  patch: { type: "string", default: "16" },
  "out-dim": { type: "string", default: "4096" },
  split: { type: "string", default: "train" },
  "scene-count": { type: "string", default: "default" },
  jpegs: { type: "string", default: "256" },
  "jpeg-size": { type: "string", default: "500x375" },
  "jpeg-dir": { type: "string" },
  seed: { type: "string", default: "0" },
  threads: { type: "string", default: "auto" },
  help: { type: "boolean", short: "h", default: false },
} as const;

const HELP = `Usage: deno run -A bench/views.ts [flags]

DenseDINO views + augmentation throughput (main thread), and the training step's wait for data
with the DataLoader feeding a real DenseDINO step (issue 4's target: wait <= 5% of the step).

  --parts LIST       throughput,loader (default ${FLAGS.parts.default})
  --data LIST        scenes (fashion-scenes, 96 px, from the cache) and/or jpeg (synthetic
                     JPEGs through ImageFolder) (default ${FLAGS.data.default})
  --configs LIST     view configurations: default (2x224 + 8x96, M 4) and/or cpu (2x64 scale
                     0.4-1 + 4x32 scale 0.1-0.4, M 4) (default ${FLAGS.configs.default})
  --workers LIST     loader worker counts to compare (default ${FLAGS.workers.default})
  --images N         throughput: images timed per (data, config), after 4 warm-up images
                     (default ${FLAGS.images.default})
  --batch-default N  loader: batch of the default config (default ${FLAGS["batch-default"].default})
  --batch-cpu N      loader: batch of the cpu config (default ${FLAGS["batch-cpu"].default})
  --steps N          loader: timed steps per row (default ${FLAGS.steps.default})
  --warmup N         loader: steps first whose waits are reported apart (default ${FLAGS.warmup.default})
  --rounds N         loader: repeat the worker list N times; medians per count (default ${FLAGS.rounds.default})
  --arch A           backbone of the step (default ${FLAGS.arch.default})
  --patch N          patch size (default ${FLAGS.patch.default})
  --out-dim N        DINO head output dimension (default ${FLAGS["out-dim"].default})
  --split S          fashion-scenes split (default ${FLAGS.split.default})
  --scene-count N    fashion-scenes count (default: the set's default, so the cached set is reused)
  --jpegs N          synthetic JPEGs to write (default ${FLAGS.jpegs.default})
  --jpeg-size WxH    their size (default ${FLAGS["jpeg-size"].default})
  --jpeg-dir DIR     use this ImageFolder instead of writing synthetic JPEGs
  --seed N           loader seed (default ${FLAGS.seed.default})
  --threads N|auto   libtorch intra-op threads (default auto: the library's default)
  -h, --help         this text

Progress and tables on stderr; one JSON line on stdout.`;

function log(msg: string): void {
  console.error(`[views] ${msg}`);
}

function list(v: string): string[] {
  return v.split(",").map((s) => s.trim()).filter((s) => s !== "");
}

/** Busy CPU ticks of the whole machine and of this process (Linux), or null. */
function cpuTicks(): { total: number; self: number } | null {
  try {
    const f = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/).map(Number);
    const total = f[1] + f[2] + f[3] + f[6] + f[7] + f[8];
    const st = Deno.readTextFileSync("/proc/self/stat");
    const rest = st.slice(st.lastIndexOf(")") + 2).split(" ");
    return { total, self: Number(rest[11]) + Number(rest[12]) };
  } catch {
    return null;
  }
}

/** Cores other processes kept busy between two {@link cpuTicks} readings `ms` apart. */
function otherCores(
  a: ReturnType<typeof cpuTicks>,
  b: ReturnType<typeof cpuTicks>,
  ms: number,
): number | null {
  if (a === null || b === null) return null;
  return ((b.total - a.total) - (b.self - a.self)) / (ms * 0.1); // USER_HZ 100
}

function freeItem(item: MultiCropItem): void {
  for (const v of item.views) v.free();
}

/** Part 1: get + transform per image in the main thread. */
async function throughput(
  o: ViewsSourceOptions,
  config: string,
  images: number,
  seed: number,
): Promise<ThroughputRow> {
  const ds = await openDataset(o);
  const transform = multiCropTransform(o.views);
  const es = epochSeed(seed, 0);
  const get: number[] = [], tr: number[] = [];
  const warm = 4;
  for (let k = 0; k < warm + images; k++) {
    const i = (k * 7919) % ds.length;
    const t0 = performance.now();
    const s = await ds.get(i);
    const t1 = performance.now();
    const gen = new Generator(exampleSeed(es, i));
    const item = await transform(s, i, { epoch: 0, seed: exampleSeed(es, i), generator: gen });
    const t2 = performance.now();
    freeItem(item);
    s.image.free();
    s.mask?.free();
    gen.free();
    if (k >= warm) {
      get.push(t1 - t0);
      tr.push(t2 - t1);
    }
  }
  const g = summarize(get).mean, t = summarize(tr).mean;
  return {
    data: o.data,
    config,
    images,
    getMs: g,
    transformMs: t,
    transformPerSecond: 1000 / t,
    perSecond: 1000 / (g + t),
  };
}

interface LoaderRun {
  o: ViewsSourceOptions;
  config: string;
  batch: number;
  steps: number;
  warmup: number;
  seed: number;
}

/** One loader batch, taken in the main thread (for the step-alone timing). */
async function oneBatch(r: LoaderRun): Promise<MultiCropBatch> {
  await using loader = new DataLoader({
    source: { module: SOURCE, factory: "viewsSource", options: r.o },
    batchSize: r.batch,
    seed: r.seed + 1,
    workers: 0,
    collate: collateMultiCrop,
  });
  for await (const b of loader.epoch(0)) return b;
  throw new Error(`${r.o.data}: the data set has fewer than ${r.batch} examples`);
}

/** Part 2: one row — the loader with `workers` feeding the step. */
async function loaderRow(
  r: LoaderRun,
  step: DenseDinoStep,
  workers: number,
  stepAloneMs: number,
  round: number,
): Promise<LoaderRow> {
  const s0 = performance.now();
  await using loader = new DataLoader({
    source: { module: SOURCE, factory: "viewsSource", options: r.o },
    batchSize: r.batch,
    seed: r.seed,
    workers,
    collate: collateMultiCrop,
  });
  await loader.ready();
  const startMs = performance.now() - s0;
  const need = r.warmup + r.steps + loader.prefetch;
  if (loader.batchesPerEpoch < need) {
    throw new Error(
      `${r.o.data}: ${loader.batchesPerEpoch} batches of ${r.batch} per epoch, ${need} needed ` +
        `(raise --jpegs or lower --steps)`,
    );
  }
  const it = loader.epoch(0);
  const waits: number[] = [], steps: number[] = [], warm: number[] = [];
  let loopStart = 0;
  let cpu0: ReturnType<typeof cpuTicks> = null;
  try {
    for (let s = 0; s < r.warmup + r.steps; s++) {
      if (s === r.warmup) {
        loopStart = performance.now();
        cpu0 = cpuTicks();
      }
      const w0 = performance.now();
      const next = await it.next();
      const w = performance.now() - w0;
      if (next.done) throw new Error("the epoch ended early");
      const st0 = performance.now();
      try {
        step.step(next.value);
      } finally {
        next.value.free();
      }
      const st = performance.now() - st0;
      if (s < r.warmup) warm.push(w);
      else {
        waits.push(w);
        steps.push(st);
      }
    }
  } finally {
    await it.return();
  }
  const loopMs = performance.now() - loopStart;
  const ws = summarize(waits), ss = summarize(steps);
  return {
    data: r.o.data,
    config: r.config,
    batch: r.batch,
    workers,
    prefetch: loader.prefetch,
    round,
    stepMs: ss.mean,
    stepAloneMs,
    waitMs: ws.mean,
    waitMedianMs: ws.median,
    waitMaxMs: ws.max,
    waitShare: ws.mean / ss.mean,
    warmupWaitMs: warm,
    startMs,
    imagesPerSecond: (r.steps * r.batch) / (loopMs / 1e3),
    otherCores: otherCores(cpu0, cpuTicks(), loopMs),
  };
}

async function main(): Promise<number> {
  const loadStart = Deno.loadavg();
  const { values } = parseArgs({ args: Deno.args, options: FLAGS });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const parts = list(values.parts);
  for (const p of parts) {
    if (p !== "throughput" && p !== "loader") throw new Error(`--parts: unknown part ${p}`);
  }
  const datas = list(values.data) as DataKind[];
  for (const d of datas) if (d !== "scenes" && d !== "jpeg") throw new Error(`--data: ${d}?`);
  const configs = list(values.configs) as ViewConfigName[];
  for (const c of configs) {
    if (!(c in VIEW_CONFIGS)) {
      throw new Error(`--configs: unknown ${c}; known: ${Object.keys(VIEW_CONFIGS)}`);
    }
  }
  const workersList = list(values.workers).map((w) => {
    const n = Number(w);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--workers: bad count "${w}"`);
    return n;
  });
  const images = positiveInt(values.images, "images");
  const batchOf: Record<string, number> = {
    default: positiveInt(values["batch-default"], "batch-default"),
    cpu: positiveInt(values["batch-cpu"], "batch-cpu"),
  };
  const steps = positiveInt(values.steps, "steps");
  const warmup = Number(values.warmup);
  if (!Number.isInteger(warmup) || warmup < 0) throw new Error("--warmup must be >= 0");
  const rounds = positiveInt(values.rounds, "rounds");
  const patch = positiveInt(values.patch, "patch");
  const outDim = positiveInt(values["out-dim"], "out-dim");
  const split = values.split;
  if (split !== "train" && split !== "val") throw new Error("--split: train|val");
  const sceneCount = values["scene-count"] === "default"
    ? undefined
    : positiveInt(values["scene-count"], "scene-count");
  const seed = Number(values.seed);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Error("--seed must be >= 0");
  const threads = parseThreads(values.threads);
  if (threads !== null) setNumThreads(threads);
  const m = /^(\d+)x(\d+)$/.exec(values["jpeg-size"]);
  if (m === null) throw new Error(`--jpeg-size must be WxH, got ${values["jpeg-size"]}`);
  const [jw, jh] = [Number(m[1]), Number(m[2])];

  const th = threadInfo(getNumThreads());
  log(
    `${navigator.hardwareConcurrency} CPUs; libtorch ${torchVersion()} intra-op ${th.intraOp}; ` +
      `OpenBLAS ${th.blas} (OPENBLAS_NUM_THREADS=${th.env.OPENBLAS_NUM_THREADS ?? "unset"}); ` +
      `load average ${loadStart.map((x) => x.toFixed(2)).join(" ")}`,
  );

  // the JPEG folder
  let jpegRoot: string | null = null;
  let tempDir: string | null = null;
  if (datas.includes("jpeg")) {
    if (values["jpeg-dir"] !== undefined) jpegRoot = values["jpeg-dir"];
    else {
      tempDir = await Deno.makeTempDir({ prefix: "dd-bench-views-" });
      jpegRoot = `${tempDir}/images`;
      const n = positiveInt(values.jpegs, "jpegs");
      const t0 = performance.now();
      await writeJpegFolder(jpegRoot, n, jw, jh);
      log(
        `wrote ${n} ${jw}x${jh} JPEGs to ${jpegRoot} in ${
          fmt((performance.now() - t0) / 1e3, 1)
        } s`,
      );
    }
  }
  const optionsFor = (data: DataKind, config: ViewConfigName): ViewsSourceOptions =>
    data === "scenes"
      ? { data, scenes: { split, count: sceneCount }, views: VIEW_CONFIGS[config] }
      : { data, root: jpegRoot!, views: VIEW_CONFIGS[config] };

  const tput: ThroughputRow[] = [];
  const rows: LoaderRow[] = [];
  try {
    if (datas.includes("scenes")) {
      // generate (or find) the cached set once, before anything is timed
      const t0 = performance.now();
      await openDataset(optionsFor("scenes", configs[0]));
      log(`fashion-scenes ${split} ready in ${fmt((performance.now() - t0) / 1e3, 1)} s`);
    }
    if (parts.includes("throughput")) {
      for (const data of datas) {
        for (const config of configs) {
          const r = await throughput(optionsFor(data, config), config, images, seed);
          tput.push(r);
          log(
            `throughput ${data}/${config}: get ${fmt(r.getMs, 2)} + views ${
              fmt(r.transformMs, 2)
            } ms/img = ${fmt(r.perSecond, 1)} img/s (views alone ${fmt(r.transformPerSecond, 1)})`,
          );
        }
      }
      console.error(`\n${throughputTable(tput)}\n`);
    }
    if (parts.includes("loader")) {
      for (const config of configs) {
        const v = resolveViewOptions(VIEW_CONFIGS[config]);
        const batch = batchOf[config];
        using step = new DenseDinoStep({
          arch: values.arch,
          patchSize: patch,
          imgSize: v.globalSize,
          globalCrops: v.globalCrops,
          localCrops: v.localCrops,
          numRef: v.numRef,
          batch,
          outDim,
          dropPath: 0.1,
        });
        for (const data of datas) {
          const run: LoaderRun = {
            o: optionsFor(data, config),
            config,
            batch,
            steps,
            warmup,
            seed,
          };
          // the step alone, on one held batch
          const held = await oneBatch(run);
          let stepAloneMs: number;
          try {
            step.step(held);
            const alone: number[] = [];
            for (let i = 0; i < 3; i++) {
              const t0 = performance.now();
              step.step(held);
              alone.push(performance.now() - t0);
            }
            stepAloneMs = summarize(alone).mean;
          } finally {
            held.free();
          }
          log(`${data}/${config}: batch ${batch}, step alone ${fmt(stepAloneMs, 0)} ms`);
          for (let round = 0; round < rounds; round++) {
            for (const workers of workersList) {
              const r = await loaderRow(run, step, workers, stepAloneMs, round);
              rows.push(r);
              log(
                `${data}/${config} workers ${workers}: step ${fmt(r.stepMs, 0)} ms, wait ` +
                  `${fmt(r.waitMs, 1)} ms (median ${fmt(r.waitMedianMs, 1)}, max ` +
                  `${fmt(r.waitMaxMs, 0)}) = ${fmt(100 * r.waitShare, 1)}% of the step; ` +
                  `${fmt(r.imagesPerSecond, 1)} img/s; start ${fmt(r.startMs, 0)} ms; other ` +
                  `processes ${r.otherCores === null ? "?" : fmt(r.otherCores, 2)} cores`,
              );
            }
          }
        }
      }
    }
  } finally {
    if (tempDir !== null) await Deno.remove(tempDir, { recursive: true });
  }

  const summary = loaderSummary(rows);
  const verdicts: Verdict[] = [];
  for (const data of datas) {
    for (const config of configs) {
      const mine = summary.filter((r) => r.data === data && r.config === config);
      if (mine.length === 0) continue;
      const ok = mine.filter((r) => r.waitShare <= WAIT_TARGET).map((r) => r.workers);
      verdicts.push({
        data,
        config,
        waitShare: Object.fromEntries(mine.map((r) => [String(r.workers), r.waitShare])),
        minWorkers: ok.length ? Math.min(...ok) : null,
      });
    }
  }
  if (summary.length > 0) {
    console.error(
      `\nloader feeding the step${rounds > 1 ? ` (medians over ${rounds} rounds)` : ""}; ` +
        `* = wait above ${100 * WAIT_TARGET}% of the step:\n${loaderTable(summary)}\n`,
    );
    for (const v of verdicts) {
      console.error(
        `${v.data}/${v.config}: ${
          v.minWorkers === null
            ? "no measured worker count meets the target"
            : `meets the target with ${v.minWorkers} worker(s)`
        }`,
      );
    }
    if (rows.some((r) => (r.otherCores ?? 0) > 0.25)) {
      console.error(
        "note: other processes kept more than a quarter of a core busy during some rows; " +
          "their step times are not comparable",
      );
    }
  }
  const report: ViewsReport = {
    bench: "views",
    side: "densedino",
    versions: { deno: Deno.version.deno, libtorch: torchVersion() },
    threads: th,
    libraries: loadedLibraries(),
    cores: navigator.hardwareConcurrency,
    loadAverage: { start: loadStart, end: Deno.loadavg() },
    params: {
      parts,
      data: datas,
      configs: Object.fromEntries(configs.map((c) => [c, resolveViewOptions(VIEW_CONFIGS[c])])),
      workers: workersList,
      images,
      batch: Object.fromEntries(configs.map((c) => [c, batchOf[c]])),
      steps,
      warmup,
      rounds,
      arch: values.arch,
      patch,
      outDim,
      split,
      sceneCount: sceneCount ?? "default",
      jpeg: datas.includes("jpeg")
        ? (values["jpeg-dir"] ?? `${values.jpegs} synthetic ${jw}x${jh}, quality 90`)
        : null,
      seed,
    },
    throughput: tput,
    loader: rows,
    verdicts,
    target: { waitShare: WAIT_TARGET },
    pass: verdicts.every((v) => v.minWorkers !== null),
  };
  console.log(JSON.stringify(report));
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`views: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    Deno.exit(1);
  }
}
