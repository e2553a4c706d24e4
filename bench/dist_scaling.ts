/**
 * Data-parallel CPU scaling (issue 8): training images/s of one process against two processes
 * (`scripts/launch.ts --nproc 2`, Gloo on 127.0.0.1), each process on one core (one libtorch
 * intra-op thread, `OMP_NUM_THREADS=1`, `OPENBLAS_NUM_THREADS=1`, data loaded in the main
 * thread), with the same per-process batch — so two processes train a global batch twice as
 * large — and the share of the two-process step time spent in the gradient all-reduce
 * (`commSeconds / seconds` of rank 0: the bucketed all-reduce itself plus any wait for the
 * slower rank).
 *
 *   deno run -A bench/dist_scaling.ts [--iters 30] [--batch-size 16] [--rounds 1]
 *
 * The model is the `demo` preset (vit_mini, patch 8, 48-px global / 24-px local views, heads of
 * width 256) on generated fashion-scenes. Prints a table on stderr and one JSON line on stdout.
 * Timings depend on whatever else runs on the machine: the load average is reported with them.
 *
 * @module
 */
import { parseArgs } from "node:util";

const ROOT = new URL("..", import.meta.url).pathname;

interface RunResult {
  imagesPerSec: number;
  seconds: number;
  iterations: number;
  commSeconds: number;
  /** CPU seconds of all the run's processes (start-up and data generation included) */
  cpuSeconds: number;
}

/** CPU seconds of this process's waited-for descendants (utime + stime of /proc/self/stat). */
function childCpuSeconds(): number {
  try {
    const stat = Deno.readTextFileSync("/proc/self/stat");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[13]) + Number(f[14])) / 100; // cutime, cstime (fields 16, 17) in ticks
  } catch {
    return NaN;
  }
}

function loadAvg(): string {
  try {
    return Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  } catch {
    return "?";
  }
}

async function run(
  nproc: number,
  args: string[],
  env: Record<string, string>,
): Promise<RunResult> {
  const cmd = nproc === 1 ? ["run", "-A", `${ROOT}scripts/train.ts`, ...args] : [
    "run",
    "-A",
    `${ROOT}scripts/launch.ts`,
    "--nproc",
    String(nproc),
    `${ROOT}scripts/train.ts`,
    ...args,
  ];
  const cpu0 = childCpuSeconds();
  const out = await new Deno.Command(Deno.execPath(), {
    args: cmd,
    env: { ...env, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${nproc} process(es) failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  const s = JSON.parse(stdout.trim().split("\n").pop()!);
  return {
    imagesPerSec: s.imagesPerSec,
    seconds: s.seconds,
    iterations: s.iterations,
    commSeconds: s.commSeconds ?? 0,
    cpuSeconds: childCpuSeconds() - cpu0,
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      iters: { type: "string", default: "30" },
      "batch-size": { type: "string", default: "16" },
      rounds: { type: "string", default: "1" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(
      "Usage: deno run -A bench/dist_scaling.ts [--iters N (30)] [--batch-size B per process (16)] " +
        "[--rounds R (1)]",
    );
    Deno.exit(0);
  }
  const iters = Number(values.iters), batch = Number(values["batch-size"]);
  const rounds = Number(values.rounds);
  for (const [k, v] of [["iters", iters], ["batch-size", batch], ["rounds", rounds]] as const) {
    if (!(Number.isSafeInteger(v) && v >= 1)) {
      console.error(`dist_scaling: --${k} must be an integer ≥ 1, got ${v}`);
      Deno.exit(2);
    }
  }
  const dir = await Deno.makeTempDir({ prefix: "dd-dist-bench-" });
  const env: Record<string, string> = {
    DENSEDINO_CACHE: Deno.env.get("DENSEDINO_CACHE") ?? `${dir}/cache`,
    OMP_NUM_THREADS: "1",
    OPENBLAS_NUM_THREADS: "1",
  };
  // enough scenes that neither run wraps an epoch: 2 processes × batch × iterations
  const scenes = 2 * batch * iters;
  const common = [
    "--preset",
    "demo",
    "--scenes",
    String(scenes),
    "--epochs",
    "1",
    "--warmup-epochs",
    "1",
    "--max-iters",
    String(iters),
    "--batch-size",
    String(batch),
    "--workers",
    "0",
    "--threads",
    "1",
    "--log-every",
    "1000",
  ];
  const load0 = loadAvg();
  const results: { one: RunResult[]; two: RunResult[] } = { one: [], two: [] };
  try {
    // generate the scenes once, outside the timings
    await run(1, [...common, "--max-iters", "1", "--out", `${dir}/warm`], env);
    for (let r = 0; r < rounds; r++) {
      console.error(`[dist_scaling] round ${r + 1}/${rounds}: 1 process…`);
      results.one.push(await run(1, [...common, "--out", `${dir}/one-${r}`], env));
      console.error(`[dist_scaling] round ${r + 1}/${rounds}: 2 processes…`);
      results.two.push(await run(2, [...common, "--out", `${dir}/two-${r}`], env));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const med = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const ips1 = med(results.one.map((x) => x.imagesPerSec));
  const ips2 = med(results.two.map((x) => x.imagesPerSec));
  const share = med(results.two.map((x) => x.commSeconds / x.seconds));
  const stepMs1 = med(results.one.map((x) => (x.seconds / x.iterations) * 1e3));
  const stepMs2 = med(results.two.map((x) => (x.seconds / x.iterations) * 1e3));
  const commMs = med(results.two.map((x) => (x.commSeconds / x.iterations) * 1e3));
  const load1 = loadAvg();
  // CPU time per image (whole runs, start-up included): equal for 1 and 2 processes means the
  // second process adds no work, i.e. ~2× on two otherwise idle cores
  const cpuPerImage = (xs: RunResult[], n: number) =>
    med(xs.map((x) => x.cpuSeconds / (x.iterations * batch * n)));
  const cpu1 = cpuPerImage(results.one, 1) * 1e3, cpu2 = cpuPerImage(results.two, 2) * 1e3;
  console.error(
    [
      `processes  batch/process  images/s  step ms  all_reduce ms (share)`,
      `1          ${String(batch).padEnd(15)}${ips1.toFixed(1).padEnd(10)}${
        stepMs1.toFixed(0).padEnd(9)
      }-`,
      `2          ${String(batch).padEnd(15)}${ips2.toFixed(1).padEnd(10)}${
        stepMs2.toFixed(0).padEnd(9)
      }${commMs.toFixed(1)} (${(share * 100).toFixed(1)}%)`,
      `scaling 2/1: ${
        (ips2 / ips1).toFixed(2)
      }× (ideal 2×); load average before ${load0}, after ${load1}`,
      `CPU ms per image (whole runs): 1 process ${cpu1.toFixed(1)}, 2 processes ${cpu2.toFixed(1)}`,
    ].join("\n"),
  );
  console.log(JSON.stringify({
    batchPerProcess: batch,
    iterations: iters,
    rounds,
    imagesPerSec: { one: ips1, two: ips2 },
    scaling: ips2 / ips1,
    stepMs: { one: stepMs1, two: stepMs2 },
    allReduceMsPerStep: commMs,
    allReduceShare: share,
    cpuMsPerImage: { one: cpu1, two: cpu2 },
    loadAverage: { before: load0, after: load1 },
    samples: results,
  }));
}
