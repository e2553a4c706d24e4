/**
 * The GPU benchmark of the CUDA issue: one DenseDINO training iteration of ViT-S/16 (2 global
 * views of 224 px, 4 reference points per pair, batch 64, out_dim 65536; the `vits16`
 * configuration of `bench/train_step.ts`) in this toolkit (`Trainer.step`) and in the PyTorch
 * comparator (`bench/train_step.py`, the official loop's computation: fp16 autocast with a
 * GradScaler and the explicit additive mask), on the same card in the same call.
 *
 * Variants, run as separate processes, alternating between the two sides for `--rounds` rounds:
 * - ours `bf16` (the trainer's default on CUDA: bf16 autocast; attention `auto`, which on CUDA is
 *   the official code's one masked attention, run by the fused kernel), ours `fp16` (fp16
 *   autocast + loss scaling) and ours `bf16 split` (class/patch tokens through the mask-free
 *   fused kernel, reference queries through a small attention of their own);
 * - PyTorch `fp16` (the comparator: the official computation) and PyTorch `bf16`
 *   (informational).
 *
 * Prints a table (median ms per iteration, images/s, peak CUDA memory allocated, ratios against
 * the comparator) and, last, one JSON line; writes every sample to `--out` (default
 * `bench/results/gpu.json`). Targets: images/s of ours `bf16` ≥ 1.3× the comparator's, peak
 * memory ≤ the comparator's.
 *
 * Usage: `deno run -A bench/gpu/compare.ts [--rounds N] [--reps N] [--warmup N] [--python P]`
 * (on a machine with a CUDA build of the shim; `bench/gpu/run.sh` prepares one).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dirname } from "node:path";
import { type BenchReport, fmt, median, positiveInt } from "../common.ts";
import { formatTable, runChild, type Side } from "../driver.ts";
import { pythonArgs, type RunOptions } from "../train_step.ts";
import { writeFileAtomic } from "../../mod.ts";

const CONFIG = "vits16";

interface Variant {
  name: string;
  side: Side;
  run: RunOptions;
  /** the comparator's autocast (PyTorch side) */
  amp?: "fp16" | "bf16";
}

const VARIANTS: Variant[] = [
  { name: "ours bf16", side: "densedino", run: { precision: "bf16" } },
  { name: "PyTorch fp16 (official)", side: "pytorch", run: {}, amp: "fp16" },
  { name: "ours fp16", side: "densedino", run: { precision: "fp16" } },
  { name: "ours bf16 split", side: "densedino", run: { precision: "bf16", attention: "split" } },
  { name: "PyTorch bf16", side: "pytorch", run: {}, amp: "bf16" },
];
const PRIMARY = "ours bf16";
const COMPARATOR = "PyTorch fp16 (official)";

const HELP = `Usage: deno run -A bench/gpu/compare.ts [flags]

Times one DenseDINO iteration of ViT-S/16 (batch 64, 2×224 global views, 4 points per pair,
out_dim 65536) in this toolkit and in the PyTorch comparator on the same GPU.

  --rounds N     alternating rounds of every variant (default 2)
  --reps N       timed iterations per process (default 10)
  --warmup N     untimed iterations first (default 3)
  --python P     the Python with a CUDA PyTorch (default python3)
  --out FILE     every sample as JSON (default bench/results/gpu.json)
  -h, --help     this text`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      rounds: { type: "string", default: "2" },
      reps: { type: "string", default: "10" },
      warmup: { type: "string", default: "3" },
      python: { type: "string", default: "python3" },
      out: { type: "string", default: "bench/results/gpu.json" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  const rounds = positiveInt(values.rounds, "rounds");
  const timing = ["--reps", String(positiveInt(values.reps, "reps")), "--warmup", values.warmup];
  const samples = new Map<string, number[]>();
  const peaks = new Map<string, number[]>();
  const reports: Record<string, BenchReport[]> = {};
  for (let r = 0; r < rounds; r++) {
    for (const v of VARIANTS) {
      console.error(`[gpu] round ${r + 1}/${rounds}: ${v.name}`);
      const run = { ...v.run, device: "cuda" as const };
      const args = v.side === "densedino"
        ? [
          "--config",
          CONFIG,
          "--device",
          "cuda",
          "--attention",
          run.attention ?? "auto",
          ...(run.precision ? ["--precision", run.precision] : []),
          ...timing,
        ]
        : [...pythonArgs(CONFIG, run), "--amp", v.amp!, ...timing];
      const rep = await runChild({
        side: v.side,
        script: v.side === "densedino" ? "bench/train_step.ts" : "bench/train_step.py",
        args,
        python: values.python,
        blasThreads: null,
      });
      (reports[v.name] ??= []).push(rep);
      samples.set(v.name, [...(samples.get(v.name) ?? []), ...rep.samples[CONFIG]]);
      const peak = rep.peakDeviceMiB?.[CONFIG];
      if (typeof peak === "number") peaks.set(v.name, [...(peaks.get(v.name) ?? []), peak]);
    }
  }
  const batch = 64;
  const base = median(samples.get(COMPARATOR)!);
  const basePeak = Math.max(...(peaks.get(COMPARATOR) ?? [NaN]));
  const rows = [["variant", "ms / iteration", "images/s", "× comparator", "peak MiB", "× peak"]];
  const summary: Record<string, Record<string, number>> = {};
  for (const v of VARIANTS) {
    const ms = median(samples.get(v.name)!);
    const peak = Math.max(...(peaks.get(v.name) ?? [NaN]));
    summary[v.name] = {
      msPerIteration: ms,
      imagesPerSecond: batch * 1e3 / ms,
      speedup: base / ms,
      peakMiB: peak,
      peakRatio: peak / basePeak,
    };
    rows.push([
      v.name,
      fmt(ms, 1),
      fmt(batch * 1e3 / ms, 1),
      fmt(base / ms, 3),
      fmt(peak, 0),
      fmt(peak / basePeak, 3),
    ]);
  }
  const gpu = String(reports[COMPARATOR][0].params.gpu ?? "unknown GPU");
  const versions = {
    ...reports[PRIMARY][0].versions,
    torch: reports[COMPARATOR][0].versions.torch,
  };
  console.error(`\n${gpu}; ${JSON.stringify(versions)}\n${formatTable(rows)}`);
  const speedup = summary[PRIMARY].speedup, peakRatio = summary[PRIMARY].peakRatio;
  const verdict = {
    bench: "gpu_train_step",
    gpu,
    versions,
    config: CONFIG,
    primary: PRIMARY,
    comparator: COMPARATOR,
    speedup,
    peakRatio,
    throughputTargetMet: speedup >= 1.3,
    memoryTargetMet: peakRatio <= 1.0,
    summary,
  };
  await Deno.mkdir(dirname(values.out), { recursive: true });
  await writeFileAtomic(
    values.out,
    new TextEncoder().encode(
      JSON.stringify({ ...verdict, samples: Object.fromEntries(samples), reports }, null, 1),
    ),
  );
  console.log(JSON.stringify(verdict));
}

if (import.meta.main) await main();
