/**
 * Memory over a long training run: `Trainer.run` for `--iters` iterations (default 500) on
 * fashion-scenes through the real loader (with its worker), checkpointing at every epoch end, while
 * the resident set size (VmRSS) and the number of live tensor handles are sampled after every
 * iteration. Reports the peak RSS during the warm-up (the first `--warmup` iterations, which
 * include the first checkpoint write) and after it, their ratio minus one as the growth (target
 * < 5%), and the live-handle count at every epoch end after the warm-up (target: constant; the
 * trainer logs it when no batch is in flight — after an iteration the count also holds the
 * loader's prefetched batches). Writes the
 * samples to `--out` (JSON) and a plot of RSS and live handles per iteration next to it (PNG).
 *
 * The model is small (vit_micro by default) so that 500 iterations take about a minute here; the
 * code path is the one every configuration runs (the step, the loader, logging, checkpoints).
 *
 * Usage: `deno run -A bench/train_memory.ts --help`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import * as dd from "../mod.ts";
import { fmt, peakRssMiB, positiveInt, resetPeakRss, rssMiB } from "./common.ts";

const FLAGS = {
  iters: { type: "string", default: "500" },
  warmup: { type: "string", default: "100" },
  arch: { type: "string", default: "vit_micro" },
  "global-size": { type: "string", default: "32" },
  "local-size": { type: "string", default: "16" },
  batch: { type: "string", default: "16" },
  "iters-per-epoch": { type: "string", default: "25" },
  workers: { type: "string", default: "1" },
  out: { type: "string", default: "bench/results/train_memory.json" },
  help: { type: "boolean", short: "h", default: false },
} as const;

const HELP = `Usage: deno run -A bench/train_memory.ts [flags]

Peak RSS growth after warm-up and live tensor handles over a long Trainer.run.

  --iters N            iterations (default ${FLAGS.iters.default})
  --warmup N           iterations counted as warm-up (default ${FLAGS.warmup.default})
  --arch NAME          ViT (default ${FLAGS.arch.default}), patch 8
  --global-size N      global view side (default ${FLAGS["global-size"].default})
  --local-size N       local view side (default ${FLAGS["local-size"].default})
  --batch N            batch size (default ${FLAGS.batch.default})
  --iters-per-epoch N  iterations per epoch, i.e. checkpoint writes every N (default ${
  FLAGS["iters-per-epoch"].default
})
  --workers N          loader workers (default ${FLAGS.workers.default})
  --out FILE           samples as JSON (default ${FLAGS.out.default}); the plot goes to FILE.png
  -h, --help           this text

Prints a summary on stderr and one JSON line on stdout.`;

async function main(): Promise<void> {
  const { values } = parseArgs({ args: Deno.args, options: FLAGS });
  if (values.help) {
    console.log(HELP);
    return;
  }
  const iters = positiveInt(values.iters, "iters");
  const warmup = positiveInt(values.warmup, "warmup");
  if (warmup >= iters) throw new Error("--warmup must be below --iters");
  const batch = positiveInt(values.batch, "batch");
  const perEpoch = positiveInt(values["iters-per-epoch"], "iters-per-epoch");
  const dir = await Deno.makeTempDir({ prefix: "dd-bench-memory-" });
  const rss: number[] = [], handles: number[] = [], heap: number[] = [];
  let warmPeak = NaN;
  try {
    const trainer = await dd.Trainer.create({
      preset: "demo",
      arch: values.arch,
      patchSize: 8,
      outDim: 1024,
      batchSize: batch,
      scenes: batch * perEpoch,
      epochs: Math.ceil(iters / perEpoch),
      maxIters: iters,
      views: {
        globalSize: positiveInt(values["global-size"], "global-size"),
        localSize: positiveInt(values["local-size"], "local-size"),
      },
      workers: Number(values.workers),
      out: `${dir}/run`,
    }, {
      progress: false,
      log: () => {},
      onStep: (it) => {
        rss.push(rssMiB() ?? NaN);
        heap.push(Deno.memoryUsage().heapTotal / 2 ** 20);
        handles.push(dd.liveTensors());
        if (it === warmup) {
          warmPeak = peakRssMiB() ?? NaN;
          resetPeakRss();
        }
      },
    });
    let seconds = 0;
    try {
      resetPeakRss();
      seconds = (await trainer.run()).seconds;
    } finally {
      trainer.free();
    }
    const afterPeak = peakRssMiB() ?? NaN;
    // live handles at each epoch end (the trainer logs them when no batch is in flight; after an
    // iteration the count also holds the loader's prefetched batches, which vary), after warm-up
    const epochs = (await dd.readJsonl(`${dir}/run/log.jsonl`))
      .filter((r) => r.type === "epoch") as { iteration: number; liveTensors: number }[];
    const after = epochs.filter((r) => r.iteration > warmup).map((r) => r.liveTensors);
    if (after.length < 2) throw new Error("fewer than two epoch ends after the warm-up");
    const summary = {
      bench: "train_memory",
      iterations: rss.length,
      warmup,
      seconds,
      warmupPeakRssMiB: warmPeak,
      peakRssAfterWarmupMiB: afterPeak,
      growth: afterPeak / warmPeak - 1,
      rssAtWarmupMiB: rss[warmup - 1],
      rssAtEndMiB: rss[rss.length - 1],
      epochEnds: after.length,
      liveHandlesAfterWarmup: { min: Math.min(...after), max: Math.max(...after) },
      liveHandlesConstant: Math.min(...after) === Math.max(...after),
    };
    console.error(
      `[train_memory] ${rss.length} iterations in ${fmt(seconds, 3)} s: peak RSS ` +
        `${fmt(warmPeak, 4)} MiB in the first ${warmup}, ${fmt(afterPeak, 4)} MiB after ` +
        `(growth ${fmt(100 * summary.growth, 2)}%; target < 5%); live handles at the ` +
        `${after.length} epoch ends after warm-up: ${summary.liveHandlesAfterWarmup.min}–` +
        `${summary.liveHandlesAfterWarmup.max}`,
    );
    const out = values.out;
    await Deno.mkdir(out.slice(0, out.lastIndexOf("/") + 1) || ".", { recursive: true });
    await dd.writeFileAtomic(out, JSON.stringify({ ...summary, rss, heap, handles }) + "\n");
    const x = rss.map((_, i) => i + 1);
    await dd.saveLinePlot(`${out}.png`, {
      title: `RSS over ${rss.length} training iterations (${values.arch})`,
      xLabel: "iteration",
      yLabel: "RSS (MiB)",
      series: [{ name: "RSS", x, y: rss }, { name: "V8 heap", x, y: heap }],
    });
    console.log(JSON.stringify(summary));
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) await main();
