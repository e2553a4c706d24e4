/**
 * Thread-setting study: the 1024×1024 matmul benchmark (and, in separate processes, its
 * matmul-then-add variant) on both sides for every combination of libtorch intra-op threads and
 * OPENBLAS_NUM_THREADS. Configurations, variants and sides alternate inside each round so that
 * all of them share the machine's conditions. Informational: it changes no default, it only
 * measures.
 *
 * Usage: `deno run -A bench/threads.ts [--intra 1,2] [--blas 1,2] [--rounds 3]`.
 * Prints a table, then one JSON line on stdout; progress on stderr; writes
 * `bench/results/threads.json`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, relative, resolve } from "node:path";
import { type BenchReport, fmt, positiveInt } from "./common.ts";
import {
  checkPython,
  type ChildSpec,
  formatTable,
  missingTorchMessage,
  Pools,
  ROOT,
  runChildRetrying,
} from "./driver.ts";

const FLAGS = {
  intra: { type: "string", default: "1,2" },
  blas: { type: "string", default: "1,2" },
  "wait-policy": { type: "string", default: "default,passive" },
  rounds: { type: "string", default: "3" },
  reps: { type: "string", default: "20" },
  size: { type: "string", default: "1024" },
  python: { type: "string", default: "/usr/bin/python3" },
  retries: { type: "string", default: "1" },
  out: { type: "string", default: "bench/results/threads.json" },
  help: { type: "boolean", short: "h", default: false },
} as const;

const WAIT_DEFAULT = FLAGS["wait-policy"].default;

const HELP = `Usage: deno run -A bench/threads.ts [flags]

Measures the matmul benchmark on both sides for each combination of intra-op threads,
OpenBLAS threads and OpenMP wait policy.

  --intra LIST    libtorch intra-op thread counts (default ${FLAGS.intra.default})
  --blas LIST     OPENBLAS_NUM_THREADS values (default ${FLAGS.blas.default})
  --wait-policy LIST
                  OMP_WAIT_POLICY values; "default" leaves it unset; only combined with
                  intra-op > 1, where OpenMP has worker threads (default ${WAIT_DEFAULT})
  --rounds N      passes over all configurations and both sides (default ${FLAGS.rounds.default})
  --reps N        timed matmuls per process, after 5 warm-up calls (default ${FLAGS.reps.default})
  --size N        matrix side (default ${FLAGS.size.default})
  --python PATH   interpreter with Debian's python3-torch (default ${FLAGS.python.default})
  --retries N     reruns of a benchmark process that fails (default ${FLAGS.retries.default})
  --out PATH      full results JSON (default ${FLAGS.out.default})
  -h, --help      this text`;

function list(v: string, flag: string): number[] {
  return v.split(",").map((s) => positiveInt(s.trim(), flag));
}

async function main(): Promise<number> {
  const { values } = parseArgs({ args: Deno.args, options: FLAGS });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const intra = list(values.intra, "intra");
  const blas = list(values.blas, "blas");
  const rounds = positiveInt(values.rounds, "rounds");
  const retries = Number(values.retries);
  if (!Number.isInteger(retries) || retries < 0) throw new Error("--retries must be >= 0");
  const reps = positiveInt(values.reps, "reps");
  const size = positiveInt(values.size, "size");
  const py = await checkPython(values.python);
  if (!py.ok) {
    console.error(missingTorchMessage(values.python, py.reason));
    return 2;
  }
  const policies = values["wait-policy"].split(",").map((s) => s.trim());
  for (const p of policies) {
    if (!["default", "passive", "active"].includes(p.toLowerCase())) {
      throw new Error(`--wait-policy: expected default, passive or active, got ${p}`);
    }
  }
  /** One thread configuration; `wait` null = OMP_WAIT_POLICY unset. */
  type Config = { intra: number; blas: number; wait: string | null };
  const configs: Config[] = [];
  for (const i of intra) {
    for (const b of blas) {
      // With one intra-op thread OpenMP has no workers to wait, so the policy is moot.
      const ws = i === 1 ? [null] : policies.map((p) => p === "default" ? null : p.toUpperCase());
      for (const w of [...new Set(ws)]) configs.push({ intra: i, blas: b, wait: w });
    }
  }
  const pools = configs.map(() => new Pools());
  const reports: BenchReport[] = [];
  const warnings: string[] = [];
  const started = new Date();
  const loadStart = Deno.loadavg();

  for (let r = 0; r < rounds; r++) {
    for (const [k, c] of configs.entries()) {
      // Each variant runs in its own processes, so that matmul alone never follows an
      // OpenMP-parallel add (whose spinning workers would slow the next BLAS call).
      for (const variant of ["matmul", "matmul_add"]) {
        for (const side of ["densedino", "pytorch"] as const) {
          const spec: ChildSpec = {
            side,
            script: side === "densedino" ? "bench/matmul.ts" : "bench/matmul.py",
            args: [
              ...["--size", String(size), "--reps", String(reps)],
              ...["--threads", String(c.intra), "--variants", variant],
            ],
            python: values.python,
            blasThreads: c.blas,
            env: c.wait === null ? {} : { OMP_WAIT_POLICY: c.wait },
          };
          console.error(
            `[threads] round ${r + 1}/${rounds}: intra-op ${c.intra}, OpenBLAS ${c.blas}, ` +
              `OMP_WAIT_POLICY ${c.wait ?? "unset"}, ${variant}, ${side}`,
          );
          const rep = await runChildRetrying(spec, retries, (err, n) => {
            warnings.push(`retried after failure ${n}: ${err.message.split("\n")[0]}`);
            console.error(`[bench] ${err.message}\n[bench] retrying (${n}/${retries})`);
          });
          reports.push(rep);
          pools[k].addReport(rep);
          if (rep.threads.intraOp !== c.intra || rep.threads.blas !== c.blas) {
            warnings.push(
              `${side} asked for intra-op ${c.intra} / OpenBLAS ${c.blas}, ran with ` +
                `${rep.threads.intraOp} / ${rep.threads.blas}`,
            );
          }
        }
      }
    }
  }
  const loadEnd = Deno.loadavg();

  const rows = configs.map((c, k) => {
    const m = (side: "densedino" | "pytorch", v: string): number =>
      pools[k].get(side, v).summary().median;
    return {
      intraOp: c.intra,
      blasThreads: c.blas,
      ompWaitPolicy: c.wait,
      oursMs: m("densedino", "matmul"),
      pytorchMs: m("pytorch", "matmul"),
      ratio: m("densedino", "matmul") / m("pytorch", "matmul"),
      oursMatmulAddMs: m("densedino", "matmul_add"),
      pytorchMatmulAddMs: m("pytorch", "matmul_add"),
    };
  });
  console.log(
    "\n" + formatTable([
      [
        "intra-op",
        "OpenBLAS",
        "OMP_WAIT_POLICY",
        "ours matmul",
        "PyTorch matmul",
        "ratio",
        "ours mm+add",
        "PyTorch mm+add",
      ],
      ...rows.map((r) => [
        String(r.intraOp),
        String(r.blasThreads),
        r.ompWaitPolicy ?? (r.intraOp === 1 ? "-" : "unset"),
        `${fmt(r.oursMs, 2)} ms`,
        `${fmt(r.pytorchMs, 2)} ms`,
        fmt(r.ratio),
        `${fmt(r.oursMatmulAddMs, 2)} ms`,
        `${fmt(r.pytorchMatmulAddMs, 2)} ms`,
      ]),
    ], 3) +
      `\n\n${size}×${size} float32, median over ${rounds} rounds × ${reps} calls per side; ` +
      `${navigator.hardwareConcurrency} CPUs; load average start ${
        loadStart.map((x) => x.toFixed(2)).join(" ")
      }, end ${loadEnd.map((x) => x.toFixed(2)).join(" ")}\n`,
  );
  for (const w of warnings) console.log(`WARNING: ${w}`);

  const outPath = resolve(ROOT, values.out);
  await Deno.mkdir(dirname(outPath), { recursive: true });
  await Deno.writeTextFile(
    outPath,
    JSON.stringify(
      {
        date: started.toISOString(),
        command: ["deno", "run", "-A", "bench/threads.ts", ...Deno.args].join(" "),
        machine: {
          cpus: navigator.hardwareConcurrency,
          loadavgStart: loadStart,
          loadavgEnd: loadEnd,
        },
        settings: { intra, blas, policies, rounds, reps, size, python: values.python },
        rows,
        warnings,
        reports,
      },
      null,
      2,
    ) + "\n",
  );
  console.error(`[threads] wrote ${outPath}`);
  console.log(JSON.stringify({ rows, results: relative(ROOT, outPath) }));
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    // Bad flags and failed benchmark processes: a message, not a stack trace.
    console.error(`threads: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(1);
  }
}
