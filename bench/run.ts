/**
 * Runs each benchmark next to its PyTorch comparator and reports ratios (ours / PyTorch,
 * lower is better) against the targets of the foundation issue:
 *
 * - `op_overhead`: per-op time of add on a 4-element tensor, result freed — ratio ≤ 0.75;
 * - `matmul`: 1024×1024 float32 matmul — ratio ≤ 1.05 (within 5%).
 *
 * The Deno and Python processes alternate (ours, PyTorch, ours, PyTorch, …) so both sides see
 * the same machine conditions, and run with the same libtorch intra-op thread count and the
 * same OPENBLAS_NUM_THREADS. Prints a table and, last, one JSON line on stdout; progress on
 * stderr; writes the full results (every sample) to `bench/results/latest.json`.
 *
 * Usage: `deno task bench` or `deno run -A bench/run.ts --help`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, relative, resolve } from "node:path";
import { type BenchReport, fmt, median, parseThreads, positiveInt } from "./common.ts";
import {
  checkPython,
  type ChildSpec,
  commandLine,
  coreLibraries,
  formatTable,
  missingTorchMessage,
  type Pool,
  Pools,
  ROOT,
  runChildRetrying,
} from "./driver.ts";

/** A benchmark and its comparator. */
export interface BenchSpec {
  name: string;
  /** Deno script, relative to the repository root */
  ts: string;
  /** Python comparator, relative to the repository root */
  py: string;
  /** the variant compared on each side */
  primary: { densedino: string; pytorch: string };
  /** informational Deno variants, each compared against the PyTorch primary */
  extras: string[];
  /** informational PyTorch variants */
  pyExtras: string[];
  /** ratio ours / PyTorch must be at or below this */
  target: number;
  unit: "us" | "ms";
  /** what the target means, for the table */
  targetText: string;
}

/** The benchmarks `run.ts` knows, in run order. */
export const BENCHES: readonly BenchSpec[] = [
  {
    name: "op_overhead",
    ts: "bench/op_overhead.ts",
    py: "bench/op_overhead.py",
    primary: { densedino: "free", pytorch: "add" },
    extras: ["using", "scope", "scope100"],
    pyExtras: ["add_fn"],
    target: 0.75,
    unit: "us",
    targetText: "≤ 0.75",
  },
  {
    name: "matmul",
    ts: "bench/matmul.ts",
    py: "bench/matmul.py",
    primary: { densedino: "matmul", pytorch: "matmul" },
    extras: [],
    pyExtras: [],
    target: 1.05,
    unit: "ms",
    targetText: "≤ 1.05",
  },
];

const FLAGS = {
  only: { type: "string", default: BENCHES.map((b) => b.name).join(",") },
  rounds: { type: "string", default: "5" },
  reps: { type: "string", default: "5" },
  ops: { type: "string", default: "200000" },
  "matmul-reps": { type: "string", default: "40" },
  size: { type: "string", default: "1024" },
  threads: { type: "string", default: "auto" },
  "blas-threads": { type: "string", default: "inherit" },
  python: { type: "string", default: "/usr/bin/python3" },
  retries: { type: "string", default: "1" },
  out: { type: "string", default: "bench/results/latest.json" },
  strict: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

const MATMUL_REPS = FLAGS["matmul-reps"].default;
const BLAS_THREADS = FLAGS["blas-threads"].default;

const HELP = `Usage: deno run -A bench/run.ts [flags]     (or: deno task bench)

Runs each benchmark and its PyTorch comparator alternately and prints ours / PyTorch ratios.

  --only LIST          benchmarks to run, comma-separated (default ${FLAGS.only.default})
  --rounds N           process pairs per benchmark, run ours, PyTorch, ours, … (default ${FLAGS.rounds.default})
  --reps N             op_overhead: timed loops per process (default ${FLAGS.reps.default})
  --ops N              op_overhead: adds per timed loop (default ${FLAGS.ops.default})
  --matmul-reps N      matmul: timed calls per process, after 5 warm-up calls (default ${MATMUL_REPS})
  --size N             matmul: matrix side (default ${FLAGS.size.default})
  --threads N|auto     libtorch intra-op threads on both sides; auto = our library's default,
                       read from the first Deno process and then set on both (default ${FLAGS.threads.default})
  --blas-threads N|inherit
                       OPENBLAS_NUM_THREADS for both sides; inherit = leave the environment
                       as it is (default ${BLAS_THREADS})
  --python PATH        interpreter with Debian's python3-torch (default ${FLAGS.python.default})
  --retries N          reruns of a benchmark process that fails, e.g. while the shim is being
                       rebuilt; each retry is reported (default ${FLAGS.retries.default})
  --out PATH           full results JSON (default ${FLAGS.out.default})
  --strict             exit 1 when a target is missed (default off: benchmarks report)
  -h, --help           this text

Output: a table, then one JSON line on stdout; progress on stderr.`;

function log(msg: string): void {
  console.error(`[bench] ${msg}`);
}

/** One line of the results table / JSON. */
interface Row {
  bench: string;
  variant: string;
  /** our median over all pooled samples */
  ours: number;
  /** PyTorch's median over all pooled samples */
  pytorch: number;
  /** ours / pytorch: the number compared with the target */
  ratio: number;
  /** median over rounds of (our median / PyTorch's median) in the same round (informational) */
  pairedRatio: number;
  /** fastest single sample on each side (informational) */
  oursMin: number;
  pytorchMin: number;
  unit: string;
  target: number | null;
  pass: boolean | null;
}

/** Builds one result row from our pool and PyTorch's pool of the same benchmark. */
function compare(b: BenchSpec, variant: string, ours: Pool, theirs: Pool, primary: boolean): Row {
  const o = ours.summary();
  const t = theirs.summary();
  const ratio = o.median / t.median;
  const n = Math.min(ours.perRun.length, theirs.perRun.length);
  const paired = Array.from({ length: n }, (_, i) => ours.perRun[i] / theirs.perRun[i]);
  return {
    bench: b.name,
    variant,
    ours: o.median,
    pytorch: t.median,
    ratio,
    pairedRatio: median(paired),
    oursMin: o.min,
    pytorchMin: t.min,
    unit: b.unit,
    target: primary ? b.target : null,
    pass: primary ? ratio <= b.target : null,
  };
}

async function main(): Promise<number> {
  const { values } = parseArgs({ args: Deno.args, options: FLAGS });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const only = values.only.split(",").map((s) => s.trim()).filter((s) => s);
  const benches = only.map((name) => {
    const b = BENCHES.find((x) => x.name === name);
    if (!b) {
      throw new Error(`--only: unknown benchmark ${name}; known: ${BENCHES.map((x) => x.name)}`);
    }
    return b;
  });
  const rounds = positiveInt(values.rounds, "rounds");
  const retries = Number(values.retries);
  if (!Number.isInteger(retries) || retries < 0) throw new Error("--retries must be >= 0");
  const reps = positiveInt(values.reps, "reps");
  const ops = positiveInt(values.ops, "ops");
  const matmulReps = positiveInt(values["matmul-reps"], "matmul-reps");
  const size = positiveInt(values.size, "size");
  let threads = parseThreads(values.threads);
  const blasThreads = values["blas-threads"] === "inherit"
    ? null
    : positiveInt(values["blas-threads"], "blas-threads");
  const python = values.python;

  const py = await checkPython(python);
  if (!py.ok) {
    console.error(missingTorchMessage(python, py.reason));
    return 2;
  }
  const started = new Date();
  const loadStart = Deno.loadavg();
  log(
    `comparator: ${python} (torch ${py.torch}); ${navigator.hardwareConcurrency} CPUs; ` +
      `load average ${loadStart.map((x) => x.toFixed(2)).join(" ")}`,
  );

  const rows: Row[] = [];
  const warnings: string[] = [];
  const reports: BenchReport[] = [];
  const commands: string[] = [];
  let threadsSeen: BenchReport["threads"] | null = null;

  for (const b of benches) {
    const pools = new Pools();
    const argsFor = (): string[] => {
      const t = ["--threads", threads === null ? "auto" : String(threads)];
      return b.name === "op_overhead"
        ? ["--ops", String(ops), "--reps", String(reps), ...t]
        : ["--size", String(size), "--reps", String(matmulReps), ...t];
    };
    for (let r = 0; r < rounds; r++) {
      for (const side of ["densedino", "pytorch"] as const) {
        const spec: ChildSpec = {
          side,
          script: side === "densedino" ? b.ts : b.py,
          args: argsFor(),
          python,
          blasThreads,
        };
        log(`${b.name} round ${r + 1}/${rounds}: ${side}`);
        if (r === 0) commands.push(commandLine(spec).join(" "));
        const rep = await runChildRetrying(spec, retries, (err, n) => {
          warnings.push(`retried after failure ${n}: ${err.message.split("\n")[0]}`);
          console.error(`[bench] ${err.message}\n[bench] retrying (${n}/${retries})`);
        });
        reports.push(rep);
        pools.addReport(rep);
        // "auto" resolves to whatever our library chose; from here on both sides get it.
        if (threads === null && side === "densedino") threads = rep.threads.intraOp;
        if (threadsSeen === null) threadsSeen = rep.threads;
        if (rep.threads.intraOp !== threads || rep.threads.blas !== threadsSeen.blas) {
          warnings.push(
            `${b.name} ${side}: threads intra-op ${rep.threads.intraOp}, OpenBLAS ` +
              `${rep.threads.blas}, expected ${threads} / ${threadsSeen.blas}`,
          );
        }
      }
    }
    const ourLibs = coreLibraries(
      reports.find((x) => x.bench === b.name && x.side === "densedino")!,
    );
    const pyLibs = coreLibraries(reports.find((x) => x.bench === b.name && x.side === "pytorch")!);
    if (ourLibs.join() !== pyLibs.join()) {
      warnings.push(`${b.name}: libraries differ: ours ${ourLibs}, PyTorch ${pyLibs}`);
    }

    const ours = (v: string): Pool => pools.get("densedino", v);
    const theirs = (v: string): Pool => pools.get("pytorch", v);
    rows.push(
      compare(b, b.primary.densedino, ours(b.primary.densedino), theirs(b.primary.pytorch), true),
    );
    for (const v of b.extras) {
      if (ours(v).all.length > 0) {
        rows.push(compare(b, v, ours(v), theirs(b.primary.pytorch), false));
      }
    }
    for (const v of b.pyExtras) {
      if (theirs(v).all.length === 0) continue;
      // An informational PyTorch variant is compared with our variant of the same name where
      // there is one (matmul_add), else with our primary.
      const mine = ours(b.extras.includes(v) ? v : b.primary.densedino);
      rows.push(compare(b, `${v} (PyTorch)`, mine, theirs(v), false));
    }
  }

  const loadEnd = Deno.loadavg();
  const unit = (u: string): string => u === "us" ? "µs" : u;
  const table = formatTable([
    ["benchmark", "variant", "ours", "PyTorch", "ratio", "paired", "target", "result"],
    ...rows.map((r) => [
      r.bench,
      r.variant,
      `${fmt(r.ours)} ${unit(r.unit)}`,
      `${fmt(r.pytorch)} ${unit(r.unit)}`,
      fmt(r.ratio),
      fmt(r.pairedRatio),
      r.target === null ? "(info)" : `≤ ${r.target.toFixed(2)}`,
      r.pass === null ? "" : r.pass ? "PASS" : "MISS",
    ]),
  ], 2);
  const th = threadsSeen!;
  const threadLine = `threads: libtorch intra-op ${threads} on both sides; OpenBLAS ${th.blas} ` +
    `(OPENBLAS_NUM_THREADS=${blasThreads ?? th.env.OPENBLAS_NUM_THREADS ?? "unset"}); ` +
    `${th.blasConfig ?? "no OpenBLAS"}`;
  console.log(
    `\n${table}\n\nratio = ours / PyTorch, medians over ${rounds} alternating process pairs; ` +
      `lower is better.\npaired = median over those pairs of the per-pair ratio (informational).\n${threadLine}\nload average: start ${
        loadStart.map((x) => x.toFixed(2)).join(" ")
      }, end ${loadEnd.map((x) => x.toFixed(2)).join(" ")}\n`,
  );
  for (const w of warnings) console.log(`WARNING: ${w}`);

  const primary = rows.filter((r) => r.target !== null);
  const outPath = resolve(ROOT, values.out);
  const full = {
    date: started.toISOString(),
    durationS: (Date.now() - started.getTime()) / 1000,
    command: ["deno", "run", "-A", "bench/run.ts", ...Deno.args].join(" "),
    childCommands: commands,
    machine: {
      cpus: navigator.hardwareConcurrency,
      os: `${Deno.build.os} ${Deno.osRelease()}`,
      loadavgStart: loadStart,
      loadavgEnd: loadEnd,
    },
    settings: { rounds, reps, ops, matmulReps, size, threads, blasThreads, python },
    threads: th,
    rows,
    warnings,
    reports,
  };
  await Deno.mkdir(dirname(outPath), { recursive: true });
  await Deno.writeTextFile(outPath, JSON.stringify(full, null, 2) + "\n");
  log(`wrote ${outPath}`);

  const summary: Record<string, unknown> = {};
  for (const r of primary) {
    summary[r.bench] = {
      ours: r.ours,
      pytorch: r.pytorch,
      unit: r.unit,
      ratio: r.ratio,
      target: r.target,
      pass: r.pass,
    };
  }
  console.log(JSON.stringify({
    ...summary,
    threads: { intraOp: threads, blas: th.blas },
    pass: primary.every((r) => r.pass),
    results: relative(ROOT, outPath),
  }));
  return values.strict && !primary.every((r) => r.pass) ? 1 : 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    // Bad flags and failed benchmark processes: a message, not a stack trace.
    console.error(`bench: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(1);
  }
}
