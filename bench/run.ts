/**
 * Runs each benchmark next to its PyTorch comparator and reports ratios (ours / PyTorch,
 * lower is better) against the targets of the foundation issue:
 *
 * - `op_overhead`: per-op time of add on a 4-element tensor, result freed — ratio ≤ 0.75;
 * - `matmul`: 1024×1024 float32 matmul — ratio ≤ 1.05 (within 5%);
 * - `vit_step`: a DenseDINO training step of vit_tiny (and its forward alone) — ratio ≤ 1.0;
 * - `train_step`: one iteration of the real trainer (`Trainer.step`) for the `demo` preset and
 *   the vit_tiny workload, against the official training loop's iteration — ratio ≤ 1.0.
 *
 * Optional, Deno-only benchmarks (no comparator; not in the default `--only` list, run once,
 * not in rounds): `views` (`bench/views.ts`) — DenseDINO views + augmentation throughput and
 * the training step's wait for data with the loader feeding a real step — target: wait ≤ 5%
 * of the step time.
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
import { pythonArgs as trainStepPythonArgs } from "./train_step.ts";
import { loaderSummary, loaderTable, throughputTable, type ViewsReport } from "./_views_report.ts";
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
  /** further comparisons: our variant against a PyTorch variant, targeted when `target` is set */
  compare?: { densedino: string; pytorch: string; target?: number }[];
  /**
   * the processes of one round, each side's given its variants (`--variants`); an empty list
   * starts no process on that side. Default: one process per side with the script's defaults.
   */
  processes?: { densedino: string[]; pytorch: string[] }[];
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
  {
    name: "vit_step",
    ts: "bench/vit_step.ts",
    py: "bench/vit_step.py",
    primary: { densedino: "step", pytorch: "step" },
    // ours with the library's default attention path; *_split / *_explicit force one path
    compare: [
      { densedino: "forward", pytorch: "forward", target: 1.0 },
      { densedino: "fwd_bwd", pytorch: "fwd_bwd" },
      { densedino: "forward_split", pytorch: "forward" },
      { densedino: "step_split", pytorch: "step" },
      { densedino: "forward_explicit", pytorch: "forward" },
      { densedino: "step_explicit", pytorch: "step" },
    ],
    // one process per variant, so that each peak RSS is that variant's alone
    processes: [
      { densedino: ["forward"], pytorch: ["forward"] },
      { densedino: ["fwd_bwd"], pytorch: ["fwd_bwd"] },
      { densedino: ["step"], pytorch: ["step"] },
      { densedino: ["forward_split"], pytorch: [] },
      { densedino: ["step_split"], pytorch: [] },
      { densedino: ["forward_explicit"], pytorch: [] },
      { densedino: ["step_explicit"], pytorch: [] },
    ],
    extras: [],
    pyExtras: [],
    target: 1.0,
    unit: "ms",
    targetText: "≤ 1.00",
  },
  {
    name: "train_step",
    ts: "bench/train_step.ts",
    py: "bench/train_step.py",
    // one full Trainer.step (real loss, schedules, clipping, AdamW, EMA) of the demo preset, and
    // of the model issue's vit_tiny workload
    primary: { densedino: "demo", pytorch: "demo" },
    compare: [{ densedino: "tiny", pytorch: "tiny", target: 1.0 }],
    processes: [
      { densedino: ["demo"], pytorch: ["demo"] },
      { densedino: ["tiny"], pytorch: ["tiny"] },
    ],
    extras: [],
    pyExtras: [],
    target: 1.0,
    unit: "ms",
    targetText: "≤ 1.00",
  },
];

/** A Deno-only benchmark without a comparator: run once, its own report and table. */
export interface StandaloneSpec {
  name: string;
  /** Deno script, relative to the repository root */
  ts: string;
  /** what the target means, for the help */
  targetText: string;
}

/** The optional Deno-only benchmarks (`--only` names them; none runs by default). */
export const STANDALONE: readonly StandaloneSpec[] = [
  { name: "views", ts: "bench/views.ts", targetText: "loader wait ≤ 5% of the step" },
];

const FLAGS = {
  only: { type: "string", default: BENCHES.map((b) => b.name).join(",") },
  "views-args": { type: "string", default: "" },
  rounds: { type: "string", default: "5" },
  reps: { type: "string", default: "5" },
  ops: { type: "string", default: "200000" },
  "matmul-reps": { type: "string", default: "40" },
  size: { type: "string", default: "1024" },
  "vit-reps": { type: "string", default: "5" },
  "vit-warmup": { type: "string", default: "2" },
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

  --only LIST          benchmarks to run, comma-separated (default ${FLAGS.only.default});
                       optional, Deno-only (no comparator, run once whatever --rounds):
                       views (DenseDINO views throughput + the loader's wait share of a
                       real DenseDINO step; about 3 minutes), e.g. --only views
  --rounds N           process pairs per benchmark, run ours, PyTorch, ours, … (default ${FLAGS.rounds.default})
  --reps N             op_overhead: timed loops per process (default ${FLAGS.reps.default})
  --ops N              op_overhead: adds per timed loop (default ${FLAGS.ops.default})
  --matmul-reps N      matmul: timed calls per process, after 5 warm-up calls (default ${MATMUL_REPS})
  --size N             matmul: matrix side (default ${FLAGS.size.default})
  --vit-reps N         vit_step: timed calls per variant and process (default ${
  FLAGS["vit-reps"].default
})
  --vit-warmup N       vit_step: untimed calls first (default ${FLAGS["vit-warmup"].default})
  --views-args=ARGS    views: further flags for bench/views.ts, space-separated; write it with
                       "=", e.g. --views-args="--workers 0,1 --rounds 2" (default none; see
                       deno run -A bench/views.ts --help)
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
  /** median over processes of each side's peak RSS in MiB, where measured */
  oursPeakRssMiB: number | null;
  pytorchPeakRssMiB: number | null;
  unit: string;
  target: number | null;
  pass: boolean | null;
}

/** Builds one result row from our pool and PyTorch's pool of the same benchmark. */
function compare(
  b: BenchSpec,
  variant: string,
  ours: Pool,
  theirs: Pool,
  target: number | null,
  rss: [number[], number[]] = [[], []],
): Row {
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
    oursPeakRssMiB: rss[0].length ? median(rss[0]) : null,
    pytorchPeakRssMiB: rss[1].length ? median(rss[1]) : null,
    unit: b.unit,
    target,
    pass: target === null ? null : ratio <= target,
  };
}

/**
 * The commit and the uncommitted changes to the code under test (lib/, native/, mod.ts, bench/)
 * when the run started, for the results file; null outside a git checkout.
 */
async function gitState(): Promise<{ head: string; dirty: string[] } | null> {
  try {
    const run = async (args: string[]) => {
      const out = await new Deno.Command("git", {
        args,
        cwd: ROOT,
        stdout: "piped",
        stderr: "null",
      })
        .output();
      if (!out.success) throw new Error(`git ${args[0]} failed`);
      return new TextDecoder().decode(out.stdout);
    };
    const head = (await run(["rev-parse", "HEAD"])).trim();
    const dirty =
      (await run(["status", "--porcelain", "--", "lib", "native/src", "mod.ts", "bench"]))
        .split("\n").filter((l) => l.trim() !== "");
    return { head, dirty };
  } catch {
    return null;
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({ args: Deno.args, options: FLAGS });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const only = values.only.split(",").map((s) => s.trim()).filter((s) => s);
  const known = [...BENCHES, ...STANDALONE].map((x) => x.name);
  for (const name of only) {
    if (!known.includes(name)) {
      throw new Error(`--only: unknown benchmark ${name}; known: ${known}`);
    }
  }
  const benches = BENCHES.filter((b) => only.includes(b.name));
  const standalone = STANDALONE.filter((b) => only.includes(b.name));
  const viewsArgs = values["views-args"].split(/\s+/).filter((a) => a !== "");
  const rounds = positiveInt(values.rounds, "rounds");
  const retries = Number(values.retries);
  if (!Number.isInteger(retries) || retries < 0) throw new Error("--retries must be >= 0");
  const reps = positiveInt(values.reps, "reps");
  const ops = positiveInt(values.ops, "ops");
  const matmulReps = positiveInt(values["matmul-reps"], "matmul-reps");
  const size = positiveInt(values.size, "size");
  const vitReps = positiveInt(values["vit-reps"], "vit-reps");
  const vitWarmup = Number(values["vit-warmup"]);
  if (!Number.isInteger(vitWarmup) || vitWarmup < 0) throw new Error("--vit-warmup must be >= 0");
  let threads = parseThreads(values.threads);
  const blasThreads = values["blas-threads"] === "inherit"
    ? null
    : positiveInt(values["blas-threads"], "blas-threads");
  const python = values.python;

  // the comparator is needed only by the benchmarks that have one
  const py = benches.length > 0 ? await checkPython(python) : null;
  if (py !== null && !py.ok) {
    console.error(missingTorchMessage(python, py.reason));
    return 2;
  }
  const started = new Date();
  const git = await gitState();
  const loadStart = Deno.loadavg();
  log(
    `comparator: ${py === null ? "not needed" : `${python} (torch ${py.torch})`}; ` +
      `${navigator.hardwareConcurrency} CPUs; ` +
      `load average ${loadStart.map((x) => x.toFixed(2)).join(" ")}`,
  );

  const rows: Row[] = [];
  const warnings: string[] = [];
  const reports: BenchReport[] = [];
  const commands: string[] = [];
  let threadsSeen: BenchReport["threads"] | null = null;

  for (const b of benches) {
    const pools = new Pools();
    // peak RSS per process, by side/variant
    const rss = new Map<string, number[]>();
    const argsFor = (variants: string[] | null): string[] => {
      const t = ["--threads", threads === null ? "auto" : String(threads)];
      const v = variants === null ? [] : ["--variants", variants.join(",")];
      if (b.name === "op_overhead") return ["--ops", String(ops), "--reps", String(reps), ...t];
      if (b.name === "matmul") return ["--size", String(size), "--reps", String(matmulReps), ...t];
      return ["--reps", String(vitReps), "--warmup", String(vitWarmup), ...t, ...v];
    };
    // train_step's comparator gets the configuration's shapes and schedules as flags
    const pyArgsFor = (variants: string[] | null): string[] =>
      b.name === "train_step" && variants !== null
        ? [
          ...trainStepPythonArgs(variants[0]),
          ...argsFor(null),
        ]
        : argsFor(variants);
    const procs = b.processes ?? [{ densedino: null, pytorch: null }];
    for (let r = 0; r < rounds; r++) {
      for (const proc of procs) {
        for (const side of ["densedino", "pytorch"] as const) {
          const variants = proc[side];
          if (variants !== null && variants.length === 0) continue;
          const spec: ChildSpec = {
            side,
            script: side === "densedino" ? b.ts : b.py,
            args: side === "densedino" ? argsFor(variants) : pyArgsFor(variants),
            python,
            blasThreads,
          };
          log(
            `${b.name} round ${r + 1}/${rounds}: ${side}` +
              (variants === null ? "" : ` ${variants.join(",")}`),
          );
          if (r === 0) commands.push(commandLine(spec).join(" "));
          const rep = await runChildRetrying(spec, retries, (err, n) => {
            warnings.push(`retried after failure ${n}: ${err.message.split("\n")[0]}`);
            console.error(`[bench] ${err.message}\n[bench] retrying (${n}/${retries})`);
          });
          reports.push(rep);
          pools.addReport(rep);
          for (const [v, mib] of Object.entries(rep.peakRssMiB ?? {})) {
            if (mib === null) continue;
            const k = `${side}/${v}`;
            rss.set(k, [...(rss.get(k) ?? []), mib]);
          }
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
    const rssOf = (o: string, t: string): [number[], number[]] => [
      rss.get(`densedino/${o}`) ?? [],
      rss.get(`pytorch/${t}`) ?? [],
    ];
    const { densedino: p0, pytorch: p1 } = b.primary;
    rows.push(compare(b, p0, ours(p0), theirs(p1), b.target, rssOf(p0, p1)));
    for (const c of b.compare ?? []) {
      if (ours(c.densedino).all.length === 0 || theirs(c.pytorch).all.length === 0) continue;
      const label = c.densedino === c.pytorch
        ? c.densedino
        : `${c.densedino} vs ${c.pytorch} (PyTorch)`;
      rows.push(
        compare(
          b,
          label,
          ours(c.densedino),
          theirs(c.pytorch),
          c.target ?? null,
          rssOf(c.densedino, c.pytorch),
        ),
      );
    }
    for (const v of b.extras) {
      if (ours(v).all.length > 0) {
        rows.push(compare(b, v, ours(v), theirs(b.primary.pytorch), null));
      }
    }
    for (const v of b.pyExtras) {
      if (theirs(v).all.length === 0) continue;
      // An informational PyTorch variant is compared with our variant of the same name where
      // there is one (matmul_add), else with our primary.
      const mine = ours(b.extras.includes(v) ? v : b.primary.densedino);
      rows.push(compare(b, `${v} (PyTorch)`, mine, theirs(v), null));
    }
  }

  // the Deno-only benchmarks: one process each
  const standaloneReports: Record<string, ViewsReport> = {};
  for (const b of standalone) {
    const spec: ChildSpec = {
      side: "densedino",
      script: b.ts,
      args: ["--threads", threads === null ? "auto" : String(threads), ...viewsArgs],
      python,
      blasThreads,
    };
    log(`${b.name}: ${commandLine(spec).join(" ")}`);
    commands.push(commandLine(spec).join(" "));
    const rep = await runChildRetrying(spec, retries, (err, n) => {
      warnings.push(`${b.name} retried after failure ${n}: ${err.message.split("\n")[0]}`);
      console.error(`[bench] ${err.message}\n[bench] retrying (${n}/${retries})`);
    }) as unknown as ViewsReport;
    standaloneReports[b.name] = rep;
    if (threads === null) threads = rep.threads.intraOp;
    if (threadsSeen === null) threadsSeen = rep.threads;
    if (rep.threads.intraOp !== threads || rep.threads.blas !== threadsSeen.blas) {
      warnings.push(
        `${b.name}: threads intra-op ${rep.threads.intraOp}, OpenBLAS ${rep.threads.blas}, ` +
          `expected ${threads} / ${threadsSeen.blas}`,
      );
    }
  }

  const loadEnd = Deno.loadavg();
  const unit = (u: string): string => u === "us" ? "µs" : u;
  const withRss = rows.some((r) => r.oursPeakRssMiB !== null || r.pytorchPeakRssMiB !== null);
  const mib = (x: number | null): string => x === null ? "–" : x.toFixed(0);
  const table = formatTable([
    [
      "benchmark",
      "variant",
      "ours",
      "PyTorch",
      "ratio",
      "paired",
      "target",
      "result",
      ...(withRss ? ["peak RSS MiB ours / PyTorch"] : []),
    ],
    ...rows.map((r) => [
      r.bench,
      r.variant,
      `${fmt(r.ours)} ${unit(r.unit)}`,
      `${fmt(r.pytorch)} ${unit(r.unit)}`,
      fmt(r.ratio),
      fmt(r.pairedRatio),
      r.target === null ? "(info)" : `≤ ${r.target.toFixed(2)}`,
      r.pass === null ? "" : r.pass ? "PASS" : "MISS",
      ...(withRss
        ? [
          r.oursPeakRssMiB === null && r.pytorchPeakRssMiB === null
            ? ""
            : `${mib(r.oursPeakRssMiB)} / ${mib(r.pytorchPeakRssMiB)}`,
        ]
        : []),
    ]),
  ], 2);
  const th = threadsSeen!;
  const threadLine =
    `threads: libtorch intra-op ${threads}${
      benches.length > 0 ? " on both sides" : ""
    }; OpenBLAS ${th.blas} ` +
    `(OPENBLAS_NUM_THREADS=${blasThreads ?? th.env.OPENBLAS_NUM_THREADS ?? "unset"}); ` +
    `${th.blasConfig ?? "no OpenBLAS"}`;
  const loadLine = `load average: start ${loadStart.map((x) => x.toFixed(2)).join(" ")}, end ${
    loadEnd.map((x) => x.toFixed(2)).join(" ")
  }`;
  if (rows.length > 0) {
    console.log(
      `\n${table}\n\nratio = ours / PyTorch, medians over ${rounds} alternating process pairs; ` +
        `lower is better.\npaired = median over those pairs of the per-pair ratio (informational).`,
    );
  }
  const views = standaloneReports.views;
  if (views !== undefined) {
    if (views.throughput.length > 0) {
      console.log(
        `\nviews: views + augmentation in the main thread, per image (get = read + decode)\n` +
          throughputTable(views.throughput),
      );
    }
    if (views.loader.length > 0) {
      console.log(
        `\nviews: the loader feeding a DenseDINO step (wait/step = mean wait for a batch / mean ` +
          `step; * = above ${100 * views.target.waitShare}%)\n${
            loaderTable(loaderSummary(views.loader))
          }\n` +
          views.verdicts.map((v) =>
            `${v.data}/${v.config}: ${
              v.minWorkers === null
                ? "MISS (no measured worker count meets the target)"
                : `PASS with ${v.minWorkers} worker(s)`
            }`
          ).join("\n"),
      );
      if (views.loader.some((r) => (r.otherCores ?? 0) > 0.25)) {
        const msg = "views: other processes kept more than a quarter of a core busy during some " +
          "rows (column 'other cores'): their step times, wait shares and loop/alone are not " +
          "comparable";
        warnings.push(msg);
      }
    }
  }
  console.log(`\n${threadLine}\n${loadLine}\n`);
  for (const w of warnings) console.log(`WARNING: ${w}`);

  const primary = rows.filter((r) => r.target !== null);
  const outPath = resolve(ROOT, values.out);
  const full = {
    date: started.toISOString(),
    durationS: (Date.now() - started.getTime()) / 1000,
    command: ["deno", "run", "-A", "bench/run.ts", ...Deno.args].join(" "),
    childCommands: commands,
    git,
    machine: {
      cpus: navigator.hardwareConcurrency,
      os: `${Deno.build.os} ${Deno.osRelease()}`,
      loadavgStart: loadStart,
      loadavgEnd: loadEnd,
    },
    settings: {
      viewsArgs,
      rounds,
      reps,
      ops,
      matmulReps,
      size,
      vitReps,
      vitWarmup,
      threads,
      blasThreads,
      python,
    },
    threads: th,
    rows,
    warnings,
    reports,
    standalone: standaloneReports,
  };
  await Deno.mkdir(dirname(outPath), { recursive: true });
  await Deno.writeTextFile(outPath, JSON.stringify(full, null, 2) + "\n");
  log(`wrote ${outPath}`);

  const summary: Record<string, unknown> = {};
  for (const r of primary) {
    // the primary row under the benchmark's name, other targeted rows as bench.variant
    const key = r.variant === BENCHES.find((b) => b.name === r.bench)!.primary.densedino
      ? r.bench
      : `${r.bench}.${r.variant}`;
    summary[key] = {
      ours: r.ours,
      pytorch: r.pytorch,
      unit: r.unit,
      ratio: r.ratio,
      target: r.target,
      pass: r.pass,
      ...(r.oursPeakRssMiB !== null || r.pytorchPeakRssMiB !== null
        ? { peakRssMiB: { ours: r.oursPeakRssMiB, pytorch: r.pytorchPeakRssMiB } }
        : {}),
    };
  }
  if (views !== undefined) {
    summary.views = {
      waitShare: Object.fromEntries(
        views.verdicts.map((v) => [`${v.data}/${v.config}`, v.waitShare]),
      ),
      minWorkers: Object.fromEntries(
        views.verdicts.map((v) => [`${v.data}/${v.config}`, v.minWorkers]),
      ),
      target: views.target.waitShare,
      pass: views.pass,
    };
  }
  const pass = primary.every((r) => r.pass) && (views === undefined || views.pass);
  console.log(JSON.stringify({
    ...summary,
    threads: { intraOp: threads, blas: th.blas },
    pass,
    results: relative(ROOT, outPath),
  }));
  return values.strict && !pass ? 1 : 0;
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
