/**
 * Orchestration shared by `bench/run.ts` and `bench/threads.ts`: running one benchmark process
 * (the Deno side or its Python comparator), checking the comparator is usable, and pooling
 * samples into the numbers the tables print.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { type BenchReport, summarize, type Summary } from "./common.ts";

/** Repository root (the folder above bench/), where benchmark processes run. */
export const ROOT: string = fileURLToPath(new URL("../", import.meta.url));

/** Which side of a comparison a process runs. */
export type Side = "densedino" | "pytorch";

/** How to start one benchmark process. */
export interface ChildSpec {
  side: Side;
  /** script path relative to the repository root, e.g. "bench/matmul.ts" */
  script: string;
  /** flags passed to the script */
  args: string[];
  /** Python interpreter for the pytorch side */
  python: string;
  /** OPENBLAS_NUM_THREADS for the process; null leaves the inherited environment alone */
  blasThreads: number | null;
  /** further environment variables for the process (e.g. OMP_WAIT_POLICY) */
  env?: Record<string, string>;
}

/** The command line that {@link runChild} uses, for logs and the results file. */
export function commandLine(spec: ChildSpec): string[] {
  return spec.side === "densedino"
    ? [Deno.execPath(), "run", "-A", spec.script, ...spec.args]
    : [spec.python, "-B", spec.script, ...spec.args];
}

/**
 * Runs one benchmark process and returns its report (the last stdout line, parsed). Its
 * stderr (progress) is passed through to ours. Throws with the output when it fails.
 */
export async function runChild(spec: ChildSpec): Promise<BenchReport> {
  const [cmd, ...args] = commandLine(spec);
  const env: Record<string, string> = { PYTHONDONTWRITEBYTECODE: "1", ...spec.env };
  if (spec.blasThreads !== null) env.OPENBLAS_NUM_THREADS = String(spec.blasThreads);
  const out = await new Deno.Command(cmd, {
    args,
    cwd: ROOT,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) {
    throw new Error(`${commandLine(spec).join(" ")} exited with ${out.code}\n${text}`);
  }
  const last = text.split("\n").at(-1) ?? "";
  try {
    return JSON.parse(last) as BenchReport;
  } catch {
    throw new Error(`${commandLine(spec).join(" ")} printed no JSON report:\n${text}`);
  }
}

/**
 * {@link runChild} with retries: a failed process is rerun up to `retries` times (the shim or
 * the library may be mid-rebuild by someone else), each failure reported through `onRetry`.
 */
export async function runChildRetrying(
  spec: ChildSpec,
  retries: number,
  onRetry: (err: Error, attempt: number) => void,
): Promise<BenchReport> {
  for (let attempt = 1;; attempt++) {
    try {
      return await runChild(spec);
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      if (attempt > retries) throw err;
      onRetry(err, attempt);
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

/** What {@link checkPython} found. */
export interface PythonCheck {
  ok: boolean;
  /** torch.__version__ when ok */
  torch?: string;
  /** why not, when not ok */
  reason?: string;
}

/** Checks that `python` can import torch (the comparator). */
export async function checkPython(python: string): Promise<PythonCheck> {
  try {
    const out = await new Deno.Command(python, {
      args: ["-B", "-c", "import torch; print(torch.__version__)"],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    if (out.success) return { ok: true, torch: dec.decode(out.stdout).trim() };
    const err = dec.decode(out.stderr).trim().split("\n").at(-1) ?? "";
    return { ok: false, reason: err || `exit code ${out.code}` };
  } catch (e) {
    return { ok: false, reason: e instanceof Error ? e.message : String(e) };
  }
}

/** The message printed when the comparator is missing. */
export function missingTorchMessage(python: string, reason: string | undefined): string {
  return [
    `bench: PyTorch (the comparator) is not importable from ${python}: ${reason ?? "unknown"}`,
    "Install Debian's PyTorch, which uses the same libtorch and OpenBLAS as the shim:",
    "",
    "    apt-get install python3-torch",
    "",
    "then rerun (it installs into /usr/bin/python3), or pass --python PATH to an interpreter",
    "that has torch.",
  ].join("\n");
}

/** Samples of one variant of one side, pooled over every process run. */
export class Pool {
  /** every sample, in run order */
  readonly all: number[] = [];
  /** the median of each process run */
  readonly perRun: number[] = [];

  /** Adds one process's samples. */
  add(samples: readonly number[] | undefined): void {
    if (!samples || samples.length === 0) return;
    this.all.push(...samples);
    this.perRun.push(summarize(samples).median);
  }

  /** Statistics over all pooled samples. */
  summary(): Summary {
    return summarize(this.all);
  }
}

/** Pools keyed by side and variant. */
export class Pools {
  readonly #m = new Map<string, Pool>();

  /** The pool of `side` / `variant`, created on first use. */
  get(side: Side, variant: string): Pool {
    const k = `${side}/${variant}`;
    let p = this.#m.get(k);
    if (!p) this.#m.set(k, p = new Pool());
    return p;
  }

  /** Adds every variant of a report. */
  addReport(r: BenchReport): void {
    for (const [v, xs] of Object.entries(r.samples)) this.get(r.side, v).add(xs);
  }
}

/** The libtorch_cpu and OpenBLAS files a report's process mapped (for the same-library check). */
export function coreLibraries(r: BenchReport): string[] {
  return r.libraries.filter((p) => /libtorch_cpu|libopenblas/.test(p));
}

/**
 * Formats rows as a fixed-width text table: the first `leftColumns` columns left-aligned,
 * the rest right-aligned, a dashed line under the header row.
 */
export function formatTable(rows: string[][], leftColumns = 1): string {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((c, i) => widths[i] = Math.max(widths[i] ?? 0, c.length));
  }
  const line = (row: string[]): string =>
    row.map((c, i) => i < leftColumns ? c.padEnd(widths[i]) : c.padStart(widths[i])).join("  ")
      .trimEnd();
  const [head, ...body] = rows;
  return [line(head), widths.map((w) => "-".repeat(w)).join("  "), ...body.map(line)].join("\n");
}
