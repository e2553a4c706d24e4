/**
 * Per-op overhead of the public Tensor API: a loop of tiny ops (`add` of two 4-element float32
 * tensors, result freed), timed per op. Its comparator is `bench/op_overhead.py`.
 *
 * Variants (the first is the one compared against PyTorch; the others are informational):
 * - `free`: `const c = a.add(b); c.free();`
 * - `using`: `{ using c = a.add(b); }`
 * - `scope`: `scope(() => { a.add(b); })` — one scope per op (the worst case for scopes)
 * - `scope100`: one `scope` around every 100 ops, each result left for the scope to free
 *
 * Usage: `deno run -A bench/op_overhead.ts [--ops N] [--reps N] [--threads N|auto]`.
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
export const VARIANTS = ["free", "using", "scope", "scope100"] as const;
/** One timed variant. */
export type Variant = typeof VARIANTS[number];

/**
 * Runs `ops` iterations of one variant and returns the time per op in microseconds.
 *
 * @param variant which form of freeing the result to use
 * @param a left operand (4-element float32)
 * @param b right operand (4-element float32)
 * @param ops number of adds (a multiple of 100 keeps `scope100` exact)
 */
export function timeVariant(variant: Variant, a: dd.Tensor, b: dd.Tensor, ops: number): number {
  let t0: number;
  switch (variant) {
    case "free": {
      t0 = performance.now();
      for (let i = 0; i < ops; i++) {
        const c = a.add(b);
        c.free();
      }
      break;
    }
    case "using": {
      t0 = performance.now();
      for (let i = 0; i < ops; i++) {
        using _c = a.add(b);
      }
      break;
    }
    case "scope": {
      const body = (): void => {
        a.add(b);
      };
      t0 = performance.now();
      for (let i = 0; i < ops; i++) dd.scope(body);
      break;
    }
    case "scope100": {
      const body = (): void => {
        for (let j = 0; j < 100; j++) a.add(b);
      };
      const blocks = Math.ceil(ops / 100);
      t0 = performance.now();
      for (let i = 0; i < blocks; i++) dd.scope(body);
      ops = blocks * 100;
      break;
    }
  }
  return (performance.now() - t0) * 1000 / ops;
}

function main(): void {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      ops: { type: "string", default: "200000" },
      reps: { type: "string", default: "5" },
      warmup: { type: "string", default: "20000" },
      threads: { type: "string", default: "auto" },
      variants: { type: "string", default: VARIANTS.join(",") },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(`Usage: deno run -A bench/op_overhead.ts [flags]

Times add of two 4-element float32 tensors with the result freed, per op (µs).

  --ops N          adds per timed loop (default 200000)
  --reps N         timed loops per variant; the median is reported (default 5)
  --warmup N       untimed adds per variant before timing (default 20000)
  --threads N|auto libtorch intra-op threads; auto keeps the library default (default auto)
  --variants LIST  comma-separated subset of ${VARIANTS.join(",")} (default all)
  -h, --help       this text`);
    return;
  }
  const ops = positiveInt(values.ops, "ops");
  const reps = positiveInt(values.reps, "reps");
  const warmup = positiveInt(values.warmup, "warmup");
  const threads = parseThreads(values.threads);
  const variants = parseVariants(values.variants, VARIANTS);

  if (threads !== null) dd.setNumThreads(threads);
  const a = dd.full([4], 1);
  const b = dd.full([4], 2);
  const live0 = dd.liveTensors();

  for (const v of variants) timeVariant(v, a, b, warmup);
  const samples: Record<string, number[]> = {};
  for (const v of variants) samples[v] = [];
  for (let r = 0; r < reps; r++) {
    for (const v of variants) samples[v].push(timeVariant(v, a, b, ops));
    console.error(
      `[op_overhead densedino] rep ${r + 1}/${reps}: ` +
        variants.map((v) => `${v} ${fmt(samples[v][r])} µs`).join(", "),
    );
  }
  const leaked = dd.liveTensors() - live0;
  if (leaked !== 0) console.error(`[op_overhead densedino] WARNING: ${leaked} tensors leaked`);
  a.free();
  b.free();

  const report: BenchReport = {
    bench: "op_overhead",
    side: "densedino",
    unit: "us",
    versions: { deno: Deno.version.deno, v8: Deno.version.v8, libtorch: dd.torchVersion() },
    threads: threadInfo(dd.getNumThreads()),
    libraries: loadedLibraries(),
    params: { ops, reps, warmup, numel: 4, dtype: "float32", leaked },
    samples,
    primary: "free",
  };
  for (const v of variants) {
    console.error(
      `[op_overhead densedino] ${v}: median ${fmt(summarize(samples[v]).median)} µs/op`,
    );
  }
  emit(report);
}

if (import.meta.main) main();
