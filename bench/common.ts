/**
 * Shared helpers for the Deno side of the benchmarks: statistics, the thread / library facts
 * each benchmark reports, and the one-JSON-line protocol between a benchmark process and
 * `bench/run.ts`.
 *
 * A benchmark script prints human-readable progress on stderr and exactly one JSON line
 * (a {@link BenchReport}) on stdout; the Python comparators print the same shape.
 *
 * @module
 */

/** Summary statistics of a list of samples. */
export interface Summary {
  /** number of samples */
  n: number;
  median: number;
  min: number;
  max: number;
  mean: number;
}

/** Median of `xs` (mean of the two middle values for an even count). NaN when empty. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median, min, max and mean of `xs`. */
export function summarize(xs: readonly number[]): Summary {
  let min = Infinity, max = -Infinity, sum = 0;
  for (const x of xs) {
    if (x < min) min = x;
    if (x > max) max = x;
    sum += x;
  }
  return { n: xs.length, median: median(xs), min, max, mean: xs.length ? sum / xs.length : NaN };
}

/** Thread settings as seen from inside a benchmark process. */
export interface ThreadInfo {
  /** libtorch intra-op threads (`at::get_num_threads`) */
  intraOp: number;
  /** OpenBLAS's thread count (`openblas_get_num_threads`), null when OpenBLAS is not loaded */
  blas: number | null;
  /** `openblas_get_config()`, null when OpenBLAS is not loaded */
  blasConfig: string | null;
  /** thread-related environment the process was started with (null = unset) */
  env: {
    OPENBLAS_NUM_THREADS: string | null;
    OMP_NUM_THREADS: string | null;
    OMP_WAIT_POLICY: string | null;
  };
}

/** What one benchmark process prints as its single stdout JSON line. */
export interface BenchReport {
  /** benchmark name, e.g. "op_overhead" */
  bench: string;
  /** "densedino" (this toolkit, Deno) or "pytorch" (the Python comparator) */
  side: "densedino" | "pytorch";
  /** unit of every sample: "us" (microseconds per op) or "ms" (milliseconds per op) */
  unit: "us" | "ms";
  /** runtime versions, e.g. { deno: "2.9.6", libtorch: "1.13.0" } */
  versions: Record<string, string>;
  threads: ThreadInfo;
  /** native libraries mapped into the process (libtorch_cpu, OpenBLAS), to show both sides match */
  libraries: string[];
  /** benchmark parameters (ops per loop, matrix size, …) */
  params: Record<string, number | string>;
  /** timed samples per variant; the variant named by `primary` is compared against PyTorch */
  samples: Record<string, number[]>;
  primary: string;
  /**
   * peak resident set size per variant in MiB (VmHWM, reset before the variant's phase where
   * the kernel allows; null where it cannot be read), for the benchmarks that measure it
   */
  peakRssMiB?: Record<string, number | null>;
  /** RSS in MiB when each variant's phase started (after setup), where measured */
  startRssMiB?: Record<string, number | null>;
  /** peak CUDA memory allocated to tensors per variant in MiB, for runs on a GPU */
  peakDeviceMiB?: Record<string, number | null>;
}

type BlasSymbols = {
  openblas_get_num_threads: { parameters: []; result: "i32" };
  openblas_get_config: { parameters: []; result: "pointer" };
};

let blasLib: Deno.DynamicLibrary<BlasSymbols> | null | undefined;

function openBlas(): Deno.DynamicLibrary<BlasSymbols> | null {
  if (blasLib !== undefined) return blasLib;
  blasLib = null;
  // The shim already has OpenBLAS loaded (through libtorch's BLAS); dlopen of the same soname
  // returns that copy, so these calls query the instance libtorch actually uses.
  for (const name of ["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"]) {
    try {
      blasLib = Deno.dlopen(
        name,
        {
          openblas_get_num_threads: { parameters: [], result: "i32" },
          openblas_get_config: { parameters: [], result: "pointer" },
        } as const,
      );
      break;
    } catch {
      // try the next name
    }
  }
  return blasLib;
}

/**
 * Reads the thread settings of this process. Call it after the shim is loaded (after any
 * tensor op) so that the OpenBLAS copy libtorch uses is the one queried.
 *
 * @param intraOp libtorch's intra-op thread count (`getNumThreads()` from mod.ts)
 */
export function threadInfo(intraOp: number): ThreadInfo {
  const lib = openBlas();
  let blas: number | null = null;
  let blasConfig: string | null = null;
  if (lib !== null) {
    blas = lib.symbols.openblas_get_num_threads();
    const p = lib.symbols.openblas_get_config();
    blasConfig = p === null ? null : Deno.UnsafePointerView.getCString(p);
  }
  return {
    intraOp,
    blas,
    blasConfig,
    env: {
      OPENBLAS_NUM_THREADS: Deno.env.get("OPENBLAS_NUM_THREADS") ?? null,
      OMP_NUM_THREADS: Deno.env.get("OMP_NUM_THREADS") ?? null,
      OMP_WAIT_POLICY: Deno.env.get("OMP_WAIT_POLICY") ?? null,
    },
  };
}

/**
 * The libtorch / BLAS / OpenMP shared objects mapped into this process (Linux only; an empty
 * list elsewhere), resolved to real paths.
 */
export function loadedLibraries(): string[] {
  let maps: string;
  try {
    maps = Deno.readTextFileSync("/proc/self/maps");
  } catch {
    return [];
  }
  const out = new Set<string>();
  for (const line of maps.split("\n")) {
    const path = line.split(/\s+/)[5];
    if (path && /\/lib(torch_cpu|c10|openblas|blas|gomp|mkl)[^/]*\.so/.test(path)) out.add(path);
  }
  return [...out].sort();
}

/** Parses a `--threads` value: a positive integer, or null for "auto" (keep the default). */
export function parseThreads(v: string | undefined): number | null {
  if (v === undefined || v === "auto") return null;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--threads must be "auto" or >= 1, got ${v}`);
  return n;
}

/** Parses a positive integer flag value, naming the flag in the error. */
export function positiveInt(v: string, flag: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${flag} must be an integer >= 1, got ${v}`);
  return n;
}

/** Parses a comma-separated `--variants` list, rejecting names not in `known`. */
export function parseVariants<V extends string>(v: string, known: readonly V[]): V[] {
  const out = v.split(",").map((x) => x.trim()) as V[];
  for (const x of out) {
    if (!known.includes(x)) throw new Error(`unknown variant ${x}; known: ${known}`);
  }
  return out;
}

/** Prints the report as the single stdout JSON line. */
export function emit(report: BenchReport): void {
  console.log(JSON.stringify(report));
}

/** Formats a number with `digits` significant decimals for tables and progress lines. */
export function fmt(x: number, digits = 3): string {
  if (!Number.isFinite(x)) return String(x);
  return x.toFixed(digits);
}

/**
 * Resets this process's peak RSS (VmHWM) to its current RSS (Linux: `5` into
 * /proc/self/clear_refs). Returns false where that is not possible; the peak then counts from
 * the start of the process.
 */
export function resetPeakRss(): boolean {
  try {
    Deno.writeTextFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}

/** This process's peak RSS (VmHWM from /proc/self/status) in MiB, or null (not Linux). */
export function peakRssMiB(): number | null {
  return statusMiB("VmHWM");
}

/** This process's current RSS (VmRSS from /proc/self/status) in MiB, or null (not Linux). */
export function rssMiB(): number | null {
  return statusMiB("VmRSS");
}

function statusMiB(field: string): number | null {
  try {
    const m = Deno.readTextFileSync("/proc/self/status").match(
      new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, "m"),
    );
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}
