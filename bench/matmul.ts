/**
 * A square float32 matmul (1024×1024 by default) through the public Tensor API, timed per call
 * (result freed) after a warm-up. Its comparator is `bench/matmul.py`; with the same libtorch
 * and the same BLAS the two should be within noise of each other.
 *
 * Variants (`matmul` is the one compared against PyTorch and the default; `matmul_add` is
 * informational, used by bench/threads.ts):
 * - `matmul`: `const c = a.matmul(b); c.free();`
 * - `matmul_add`: the matmul followed by `c.add(a)` on the result, both freed — an ATen
 *   elementwise op (OpenMP-parallel when intra-op threads > 1) right after a BLAS call, which
 *   shows whether OpenMP's and OpenBLAS's thread pools get in each other's way.
 *
 * Usage: `deno run -A bench/matmul.ts [--size N] [--reps N] [--threads N|auto]`.
 * Progress goes to stderr, one JSON line (see `BenchReport` in common.ts) to stdout.
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
  parseVariants,
  positiveInt,
  summarize,
  threadInfo,
} from "./common.ts";

/** Names of the timed variants, in the order they run inside each repetition. */
export const VARIANTS = ["matmul", "matmul_add"] as const;
/** One timed variant. */
export type Variant = typeof VARIANTS[number];

/**
 * Times one call of a variant and returns milliseconds.
 *
 * @param variant what to time
 * @param a left operand
 * @param b right operand
 */
export function timeOnce(variant: Variant, a: dd.Tensor, b: dd.Tensor): number {
  const t0 = performance.now();
  const c = a.matmul(b);
  if (variant === "matmul_add") {
    const d = c.add(a);
    d.free();
  }
  c.free();
  return performance.now() - t0;
}

function main(): void {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      size: { type: "string", default: "1024" },
      reps: { type: "string", default: "50" },
      warmup: { type: "string", default: "5" },
      threads: { type: "string", default: "auto" },
      variants: { type: "string", default: "matmul" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(`Usage: deno run -A bench/matmul.ts [flags]

Times a square float32 matmul (result freed), per call (ms).

  --size N         matrix side (default 1024)
  --reps N         timed calls per variant; the median is reported (default 50)
  --warmup N       untimed calls per variant first (default 5)
  --threads N|auto libtorch intra-op threads; auto keeps the library default (default auto)
  --variants LIST  comma-separated subset of ${VARIANTS.join(",")} (default matmul);
                   run matmul_add in its own process to keep its OpenMP work away from
                   the plain matmul's timings
  -h, --help       this text`);
    return;
  }
  const n = positiveInt(values.size, "size");
  const reps = positiveInt(values.reps, "reps");
  const warmup = positiveInt(values.warmup, "warmup");
  const threads = parseThreads(values.threads);
  const variants = parseVariants(values.variants, VARIANTS);

  if (threads !== null) dd.setNumThreads(threads);
  dd.manualSeed(0);
  const a = dd.randn([n, n]);
  const b = dd.randn([n, n]);

  for (let i = 0; i < warmup; i++) for (const v of variants) timeOnce(v, a, b);
  const samples: Record<string, number[]> = {};
  for (const v of variants) samples[v] = [];
  for (let r = 0; r < reps; r++) {
    for (const v of variants) samples[v].push(timeOnce(v, a, b));
  }
  a.free();
  b.free();

  const report: BenchReport = {
    bench: "matmul",
    side: "densedino",
    unit: "ms",
    versions: { deno: Deno.version.deno, v8: Deno.version.v8, libtorch: dd.torchVersion() },
    threads: threadInfo(dd.getNumThreads()),
    libraries: loadedLibraries(),
    params: { size: n, reps, warmup, dtype: "float32" },
    samples,
    primary: "matmul",
  };
  for (const v of variants) {
    const s = summarize(samples[v]);
    console.error(
      `[matmul densedino] ${v} ${n}x${n}: median ${fmt(s.median)} ms (min ${fmt(s.min)}, ` +
        `max ${fmt(s.max)}, n ${s.n}; intra-op ${report.threads.intraOp}, ` +
        `OpenBLAS ${report.threads.blas})`,
    );
  }
  emit(report);
}

if (import.meta.main) main();
