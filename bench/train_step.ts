/**
 * One training iteration of the real trainer (`Trainer.step`: forward passes, the DINO /
 * DenseDINO loss with its centres and teacher temperature, backward, per-parameter clipping,
 * AdamW with the iteration's lr / weight decay, EMA) on a batch of the configuration's shapes,
 * timed per call, for named configurations. Its comparator is `bench/train_step.py`, the same
 * iteration the way the official PyTorch training loop computes it; `bench/run.ts` passes both
 * sides the same shapes ({@link pythonArgs}).
 *
 * Configurations ({@link CONFIGS}):
 * - `tiny`: the model issue's benchmark workload: vit_tiny/16 (positional grid trained at 224),
 *   batch 16, 2 global + 2 local views all 96 px, 4 points per pair, out_dim 4096;
 * - `demo`: the trainer's `demo` preset ({@link TRAIN_PRESETS}), the configuration
 *   `deno task demo` trains on this CPU;
 * - `vits16`: the GPU workload of the CUDA issue: ViT-S/16 at 224 px, 2 global views and no local
 *   views, 4 points per pair, batch 64, out_dim 65536 (`bench/gpu/`).
 *
 * `--device cuda` runs the step on the GPU (views and points start in pinned host memory, as the
 * trainer's loader gives them; each timed step ends with a device synchronisation) and reports
 * the allocator's peak; the trainer then opens a small generated ImageFolder instead of
 * fashion-scenes (the step's inputs are synthetic either way). `--precision` and `--attention`
 * select the trainer's mixed precision and attention path.
 *
 * The timed steps run at schedule iteration `--iteration` (default: the first iteration after the
 * warm-up's first epoch), after the frozen-last-layer epoch, on both sides. Inputs are random
 * views and points of the batch's shapes: data loading is not part of the step on either side.
 * With `--e2e-iters N` the process then also runs `Trainer.run` for N iterations on the real
 * fashion-scenes data through the loader (workers as configured) and reports end-to-end images/s
 * (informational: the comparator has no data pipeline of its own).
 *
 * Usage: `deno run -A bench/train_step.ts --help`. Progress on stderr, one JSON line
 * ({@link BenchReport}) on stdout.
 *
 * @module
 */
import { parseArgs } from "node:util";
import * as dd from "../mod.ts";
import {
  type BenchReport,
  emit,
  fmt,
  loadedLibraries,
  parseThreads,
  peakRssMiB,
  positiveInt,
  resetPeakRss,
  rssMiB,
  summarize,
  threadInfo,
} from "./common.ts";

/** The named configurations. */
export const CONFIGS: Readonly<Record<string, Partial<dd.TrainConfig>>> = {
  tiny: {
    arch: "vit_tiny",
    patchSize: 16,
    imgSize: 224,
    outDim: 4096,
    batchSize: 16,
    views: { globalSize: 96, localCrops: 2, localSize: 96, numRef: 4 },
  },
  demo: dd.TRAIN_PRESETS.demo,
  vits16: {
    arch: "vit_small",
    patchSize: 16,
    imgSize: 224,
    outDim: 65536,
    batchSize: 64,
    views: { globalCrops: 2, globalSize: 224, localCrops: 0, numRef: 4 },
  },
};

/** What a run adds to a named configuration: device, precision, attention path. */
export interface RunOptions {
  device?: "cpu" | "cuda";
  precision?: dd.Precision;
  attention?: dd.AttentionPath;
}

/** The schedule iteration the timed steps use: the second epoch's first iteration. */
function timedIteration(perEpoch: number): number {
  return perEpoch;
}

/** The resolved trainer configuration of a named benchmark configuration. */
export function benchConfig(name: string, out: string, run: RunOptions = {}): dd.TrainConfig {
  const c = CONFIGS[name];
  if (!c) throw new Error(`unknown configuration ${name}; known: ${Object.keys(CONFIGS)}`);
  // enough scenes for a few iterations per epoch; the frozen last layer is over by the timed
  // iteration (epoch 1) on both sides
  const batch = c.batchSize ?? dd.DEFAULT_TRAIN_CONFIG.batchSize;
  return dd.resolveTrainConfig({
    ...c,
    ...run,
    scenes: batch * 4,
    epochs: 10,
    out,
  });
}

/** The comparator's flags for the same shapes and schedules. */
export function pythonArgs(name: string, run: RunOptions = {}): string[] {
  const c = benchConfig(name, "/nonexistent", run);
  const v = c.views;
  const perEpoch = Math.floor(c.scenes / c.batchSize);
  return [
    "--config",
    name,
    "--method",
    c.method,
    "--arch",
    c.arch,
    "--patch-size",
    String(c.patchSize),
    "--img-size",
    String(c.imgSize),
    "--global-size",
    String(v.globalSize),
    "--local-size",
    String(v.localSize),
    "--global-crops",
    String(v.globalCrops),
    "--local-crops",
    String(v.localCrops),
    "--batch",
    String(c.batchSize),
    "--num-ref",
    String(v.numRef),
    "--out-dim",
    String(c.outDim),
    "--head-hidden-dim",
    String(c.headHiddenDim),
    "--head-bottleneck-dim",
    String(c.headBottleneckDim),
    "--drop-path",
    String(c.dropPathRate),
    "--lr",
    String(c.lr),
    "--epochs",
    String(c.epochs),
    "--warmup-epochs",
    String(c.warmupEpochs),
    "--iters-per-epoch",
    String(perEpoch),
    "--iteration",
    String(timedIteration(perEpoch)),
    "--freeze-last-layer",
    String(c.freezeLastLayer),
    "--device",
    c.device,
  ];
}

/**
 * A small ImageFolder of random RGB images (2 classes), the data set the trainer opens when the
 * bench must not depend on Fashion-MNIST (GPU machines): `Trainer.create` needs one, the timed
 * steps do not read it.
 */
async function syntheticImageFolder(dir: string, n: number): Promise<string> {
  dd.manualSeed(1);
  for (let i = 0; i < n; i++) {
    const cls = `${dir}/class${i % 2}`;
    await Deno.mkdir(cls, { recursive: true });
    using img = dd.rand([3, 32, 32]);
    await dd.savePng(`${cls}/${i}.png`, img);
  }
  return dir;
}

/** A batch of random views and points with the shapes `Trainer.step` expects. */
function syntheticBatch(cfg: dd.TrainConfig): dd.MultiCropBatch {
  const v = cfg.views;
  const G = v.globalCrops!, L = v.localCrops!, M = v.numRef!, B = cfg.batchSize;
  const views: dd.Tensor[] = [], tp: dd.Tensor[] = [], sp: dd.Tensor[] = [];
  dd.manualSeed(0);
  // on CUDA the loader collates into pinned memory (collateMultiCropPinned): so do these
  const host = (t: dd.Tensor) => cfg.device === "cuda" ? t.pinMemory() : t;
  for (let k = 0; k < G + L; k++) {
    const s = k < G ? v.globalSize! : v.localSize!;
    views.push(dd.keep(dd.scope(() => host(dd.randn([B, 3, s, s])))));
  }
  for (let i = 0; i < G; i++) {
    tp.push(dd.keep(dd.scope(() => host(dd.rand([B, (G + L) * M, 2]).mul(2).sub(1)))));
  }
  for (let j = 0; j < G + L; j++) {
    sp.push(dd.keep(dd.scope(() => host(dd.rand([B, G * M, 2]).mul(2).sub(1)))));
  }
  const all = [...views, ...tp, ...sp];
  const free = () => dd.freeAll(all);
  return {
    views,
    teacherPoints: tp,
    studentPoints: sp,
    labels: null,
    plans: [],
    indices: [],
    free,
    [Symbol.dispose]: free,
  };
}

const FLAGS = {
  config: { type: "string", default: "tiny" },
  variants: { type: "string" },
  reps: { type: "string", default: "5" },
  warmup: { type: "string", default: "2" },
  threads: { type: "string", default: "auto" },
  "e2e-iters": { type: "string", default: "0" },
  device: { type: "string", default: "cpu" },
  precision: { type: "string" },
  attention: { type: "string", default: "auto" },
  "python-args": { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

const HELP = `Usage: deno run -A bench/train_step.ts [flags]

Times Trainer.step (one full DINO / DenseDINO iteration) for a named configuration.

  --config NAME        ${Object.keys(CONFIGS).join(" | ")} (default ${FLAGS.config.default})
  --variants NAME      the same as --config (the name bench/run.ts uses)
  --reps N             timed iterations (default ${FLAGS.reps.default})
  --warmup N           untimed iterations first (default ${FLAGS.warmup.default})
  --threads N|auto     libtorch intra-op threads (default ${FLAGS.threads.default}: the library's)
  --device cpu|cuda    where the step runs (default cpu)
  --precision P        fp32 | bf16 | fp16 (default: the trainer's, fp32 on cpu / bf16 on cuda)
  --attention A        auto | split | explicit (default auto; see the trainer's --attention)
  --e2e-iters N        then Trainer.run for N iterations on fashion-scenes through the loader and
                       report end-to-end images/s (default 0: off)
  --python-args        print the comparator's flags for --config and exit
  -h, --help           this text`;

async function main(): Promise<void> {
  const { values } = parseArgs({ args: Deno.args, options: FLAGS });
  if (values.help) {
    console.log(HELP);
    return;
  }
  const name = values.variants ?? values.config;
  const run: RunOptions = {
    device: values.device as RunOptions["device"],
    precision: values.precision as dd.Precision | undefined,
    attention: values.attention as dd.AttentionPath,
  };
  if (values["python-args"]) {
    console.log(pythonArgs(name, run).join(" "));
    return;
  }
  const onCuda = run.device === "cuda";
  const reps = positiveInt(values.reps, "reps");
  const warmup = Number(values.warmup);
  if (!Number.isInteger(warmup) || warmup < 0) throw new Error("--warmup must be >= 0");
  const e2eIters = Number(values["e2e-iters"]);
  const threads = parseThreads(values.threads);
  if (threads !== null) dd.setNumThreads(threads);
  const dir = await Deno.makeTempDir({ prefix: "dd-bench-train-" });
  try {
    const cfg = benchConfig(name, `${dir}/step`, run);
    const quiet: dd.TrainerHooks = { progress: false, log: () => {} };
    const data = onCuda
      ? { data: `imagefolder:${await syntheticImageFolder(`${dir}/images`, cfg.batchSize * 2)}` }
      : {};
    const trainer = await dd.Trainer.create({ ...cfg, ...data, threads: threads ?? 0 }, quiet);
    await trainer.loader.close();
    const perEpoch = trainer.itersPerEpoch;
    trainer.iteration = timedIteration(perEpoch);
    trainer.epoch = Math.floor(trainer.iteration / perEpoch);
    const batch = syntheticBatch(cfg);
    const live0 = dd.liveTensors();
    resetPeakRss();
    const startRss = rssMiB();
    const sync = () => onCuda && dd.cuda.synchronize();
    for (let i = 0; i < warmup; i++) trainer.step(batch);
    sync();
    if (onCuda) dd.cuda.resetPeakMemoryStats();
    const xs: number[] = [];
    let loss = NaN;
    for (let i = 0; i < reps; i++) {
      const t0 = performance.now();
      loss = trainer.step(batch).loss;
      sync();
      xs.push(performance.now() - t0);
    }
    const peak = peakRssMiB();
    const peakDevice = onCuda ? dd.cuda.memoryStats().peakAllocated / 2 ** 20 : null;
    const leaked = dd.liveTensors() - live0;
    batch.free();
    trainer.free();
    const s = summarize(xs);
    console.error(
      `[train_step densedino] ${name}: median ${fmt(s.median, 1)} ms (min ${fmt(s.min, 1)}, ` +
        `max ${fmt(s.max, 1)}, n ${s.n}), ${fmt(cfg.batchSize * 1e3 / s.median, 3)} images/s, ` +
        `peak RSS ${fmt(peak ?? NaN, 0)} MiB (${fmt(startRss ?? NaN, 0)} at the start), ` +
        (peakDevice !== null ? `peak CUDA allocated ${fmt(peakDevice, 0)} MiB, ` : "") +
        `${cfg.device} ${cfg.precision} attention ${cfg.attention}, ` +
        `loss ${fmt(loss, 4)}` + (leaked ? `, WARNING ${leaked} tensors leaked` : ""),
    );
    let e2e: Record<string, number> = {};
    if (e2eIters > 0) {
      const t = await dd.Trainer.create({
        ...cfg,
        out: `${dir}/e2e`,
        scenes: dd.TRAIN_PRESETS.demo.scenes ?? cfg.scenes,
        maxIters: e2eIters,
        threads: threads ?? 0,
      }, quiet);
      try {
        const sum = await t.run();
        e2e = {
          e2eIterations: sum.iterations,
          e2eImagesPerSecond: sum.iterations * cfg.batchSize / sum.seconds,
          e2eDataWaitShare: sum.dataWaitShare ?? NaN,
        };
        console.error(
          `[train_step densedino] ${name} end to end: ${sum.iterations} iterations, ` +
            `${fmt(e2e.e2eImagesPerSecond, 3)} images/s (loader included)`,
        );
      } finally {
        t.free();
      }
    }
    const report: BenchReport = {
      bench: "train_step",
      side: "densedino",
      unit: "ms",
      versions: { deno: Deno.version.deno, v8: Deno.version.v8, libtorch: dd.torchVersion() },
      threads: threadInfo(dd.getNumThreads()),
      libraries: loadedLibraries(),
      params: {
        config: name,
        trainConfig: JSON.stringify(cfg),
        reps,
        warmup,
        iteration: timedIteration(perEpoch),
        leakedTensors: leaked,
        device: cfg.device,
        precision: cfg.precision,
        attention: cfg.attention,
        ...e2e,
      },
      samples: { [name]: xs },
      peakRssMiB: { [name]: peak },
      ...(peakDevice !== null ? { peakDeviceMiB: { [name]: peakDevice } } : {}),
      startRssMiB: { [name]: startRss },
      primary: name,
    };
    emit(report);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) await main();
