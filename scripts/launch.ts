/**
 * `scripts/launch.ts` — start a script as N data-parallel processes on this machine (torchrun's
 * conventions), e.g.
 *
 *   deno run -A scripts/launch.ts --nproc 2 scripts/train.ts --batch-size 32 --out runs/x
 *
 * Each process gets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
 * `MASTER_PORT` (and `OMP_NUM_THREADS=1` unless set, with more than one process per machine);
 * the script joins the c10d process group from them. Several machines: run it once per machine
 * with the same `--nnodes`, `--master-addr` (rank 0's machine) and `--master-port`, and each
 * machine's `--node-rank`.
 *
 * Rank 0's stdout passes through unchanged (its last line is the script's JSON result); every
 * other output line is prefixed `[rank i]` on stderr. SIGINT / SIGTERM / SIGHUP are forwarded
 * to every rank. When a rank fails (non-zero exit or a signal) the launcher says which, stops
 * the others (SIGTERM, SIGKILL after a grace period) and exits with that rank's code (2 stays
 * 2: bad flags; otherwise 1). Each rank runs under `lib/study/guard.ts`, so the ranks end even
 * when the launcher itself is killed (no orphan keeps training).
 *
 * @module
 */
import { runMain, UsageError } from "./_cli.ts";

const NAME = "launch";
const SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
const SIGNUM: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

const HELP = `Usage: deno run -A scripts/launch.ts --nproc N [flags] SCRIPT [SCRIPT ARGS…]

Starts SCRIPT (e.g. scripts/train.ts) as N processes of a data-parallel group on this machine,
each with torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT (and OMP_NUM_THREADS=1 unless set, when N > 1).

Flags (before SCRIPT):
  --nproc N             processes on this machine (required)
  --nnodes M            machines taking part (default 1)
  --node-rank R         this machine's index, 0 … M−1; ranks R·N … R·N+N−1 run here (default 0)
  --master-addr A       address of the machine of node rank 0 (default 127.0.0.1; required
                        when M > 1)
  --master-port P       its rendezvous port (default: a free port when M = 1, else 29500)
  --dist-timeout MS     rendezvous and per-collective timeout in ms, passed on as
                        DENSEDINO_DIST_TIMEOUT_MS (default: the script's, 300000)
  --grace-ms MS         after a failure, how long the other ranks get to exit after SIGTERM
                        before SIGKILL (default 5000)
  --help                this text

Rank 0's stdout passes through unchanged; other output is prefixed "[rank i]" on stderr.
Exit codes: 0 when every rank succeeded; the failing rank's code 2 (bad flags or input) as 2;
1 for any other failure; 128+n when the launcher received signal n.
Several machines: set GLOO_SOCKET_IFNAME to the network interface the ranks should use (on
Debian the host name often resolves to 127.0.1.1), and open MASTER_PORT and Gloo's ports
between the machines.`;

/** The launcher's settings. */
export interface LaunchOptions {
  /** processes on this machine */
  nproc: number;
  /** machines */
  nnodes: number;
  /** this machine's index */
  nodeRank: number;
  /** rank 0's machine */
  masterAddr: string;
  /** rendezvous port (null: pick a free one, one machine only) */
  masterPort: number | null;
  /** DENSEDINO_DIST_TIMEOUT_MS for the ranks (null: leave as is) */
  distTimeoutMs: number | null;
  /** SIGTERM → SIGKILL grace period after a failure (ms) */
  graceMs: number;
  /** the script to run */
  script: string;
  /** its arguments */
  args: string[];
}

const VALUE_FLAGS = [
  "nproc",
  "nnodes",
  "node-rank",
  "master-addr",
  "master-port",
  "dist-timeout",
  "grace-ms",
];

function int(flag: string, value: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(
      `--${flag} must be an integer${
        max === Number.MAX_SAFE_INTEGER ? ` ≥ ${min}` : ` in ${min}…${max}`
      }, got "${value}"`,
    );
  }
  return n;
}

/** Parses the launcher's flags (up to the script) and the script's command line; null: --help. */
export function parseLaunchArgs(argv: string[]): LaunchOptions | null {
  const v: Record<string, string> = {};
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) break;
    if (a === "--help") return null;
    const eq = a.indexOf("=");
    const name = a.slice(2, eq < 0 ? undefined : eq);
    if (!VALUE_FLAGS.includes(name)) {
      throw new UsageError(
        `unknown flag ${a} (launcher flags come before the script; the script's after it)`,
      );
    }
    let value: string;
    if (eq >= 0) value = a.slice(eq + 1);
    else {
      if (i + 1 >= argv.length) throw new UsageError(`--${name} needs a value`);
      value = argv[++i];
    }
    if (name in v) throw new UsageError(`--${name} is given twice`);
    v[name] = value;
  }
  const script = argv[i];
  if (script === undefined) {
    throw new UsageError("no script given: launch.ts [flags] SCRIPT [SCRIPT ARGS…]");
  }
  if (v.nproc === undefined) throw new UsageError("--nproc is required (processes per machine)");
  const nproc = int("nproc", v.nproc, 1);
  const nnodes = int("nnodes", v.nnodes ?? "1", 1);
  const nodeRank = int("node-rank", v["node-rank"] ?? "0", 0);
  if (nodeRank >= nnodes) {
    throw new UsageError(`--node-rank ${nodeRank} is outside 0…${nnodes - 1} (--nnodes ${nnodes})`);
  }
  if (nnodes > 1 && v["master-addr"] === undefined) {
    throw new UsageError(
      `--master-addr is required with --nnodes ${nnodes}: the address of node rank 0's machine`,
    );
  }
  const masterAddr = (v["master-addr"] ?? "127.0.0.1").trim();
  if (masterAddr === "") throw new UsageError("--master-addr is empty");
  const masterPort = v["master-port"] !== undefined
    ? int("master-port", v["master-port"], 1, 65535)
    : nnodes > 1
    ? 29500
    : null;
  const distTimeoutMs = v["dist-timeout"] !== undefined
    ? int("dist-timeout", v["dist-timeout"], 1)
    : null;
  const graceMs = int("grace-ms", v["grace-ms"] ?? "5000", 0);
  if (/^[a-z]+:\/\//i.test(script) === false) {
    try {
      if (!Deno.statSync(script).isFile) throw new Error();
    } catch {
      throw new UsageError(`the script ${script} does not exist or is not a file`);
    }
  }
  return {
    nproc,
    nnodes,
    nodeRank,
    masterAddr,
    masterPort,
    distTimeoutMs,
    graceMs,
    script,
    args: argv.slice(i + 1),
  };
}

/** A port that was free a moment ago. */
function freePort(host: string): number {
  const l = Deno.listen({ hostname: host === "localhost" ? "127.0.0.1" : host, port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Copies `from` to `to`, starting every line (after \n or \r) with `prefix`. */
async function pipePrefixed(
  from: ReadableStream<Uint8Array>,
  to: { write(p: Uint8Array): Promise<number> },
  prefix: string,
): Promise<void> {
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  let atStart = true;
  for await (const chunk of from) {
    const text = dec.decode(chunk, { stream: true });
    let out = "";
    for (const ch of text) {
      if (atStart && ch !== "\n" && ch !== "\r") out += prefix;
      atStart = false;
      out += ch;
      if (ch === "\n" || ch === "\r") atStart = true;
    }
    const bytes = enc.encode(out);
    for (let off = 0; off < bytes.length;) off += await to.write(bytes.subarray(off));
  }
}

async function pipeRaw(
  from: ReadableStream<Uint8Array>,
  to: { write(p: Uint8Array): Promise<number> },
): Promise<void> {
  for await (const chunk of from) {
    for (let off = 0; off < chunk.length;) off += await to.write(chunk.subarray(off));
  }
}

interface RankProc {
  rank: number;
  child: Deno.ChildProcess;
  status: Promise<Deno.CommandStatus>;
  exited: boolean;
  io: Promise<void>;
}

function describeExit(s: Deno.CommandStatus): string {
  return s.signal ? `was killed by ${s.signal}` : `exited with code ${s.code}`;
}

/** Runs the ranks of this machine to the end; returns the launcher's exit code. */
export async function launch(o: LaunchOptions): Promise<number> {
  const world = o.nproc * o.nnodes;
  const port = o.masterPort ?? freePort(o.masterAddr);
  const guard = new URL("../lib/study/guard.ts", import.meta.url).href;
  const base: Record<string, string> = {
    WORLD_SIZE: String(world),
    LOCAL_WORLD_SIZE: String(o.nproc),
    MASTER_ADDR: o.masterAddr,
    MASTER_PORT: String(port),
  };
  if (o.distTimeoutMs !== null) base.DENSEDINO_DIST_TIMEOUT_MS = String(o.distTimeoutMs);
  if (o.nproc > 1 && Deno.env.get("OMP_NUM_THREADS") === undefined) base.OMP_NUM_THREADS = "1";
  const first = o.nodeRank * o.nproc;
  console.error(
    `${NAME}: starting ranks ${first}…${first + o.nproc - 1} of ${world} (rendezvous ` +
      `${o.masterAddr}:${port}): ${o.script}`,
  );
  const procs: RankProc[] = [];
  for (let i = 0; i < o.nproc; i++) {
    const rank = first + i;
    // the guard ends the rank when this launcher goes away, even by SIGKILL (its stdin closes)
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-run",
        "--allow-read",
        guard,
        Deno.execPath(),
        "run",
        "-A",
        o.script,
        ...o.args,
      ],
      env: { ...base, RANK: String(rank), LOCAL_RANK: String(i) },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const p: RankProc = {
      rank,
      child,
      status: child.status,
      exited: false,
      io: Promise.all([
        rank === 0
          ? pipeRaw(child.stdout, Deno.stdout)
          : pipePrefixed(child.stdout, Deno.stderr, `[rank ${rank}] `),
        pipePrefixed(child.stderr, Deno.stderr, `[rank ${rank}] `),
      ]).then(() => {}, () => {}),
    };
    p.status.then(() => p.exited = true);
    procs.push(p);
  }
  console.error(
    `${NAME}: pids ${procs.map((p) => `rank ${p.rank}: ${p.child.pid}`).join(", ")}`,
  );
  const send = (p: RankProc, sig: Deno.Signal) => {
    if (p.exited) return;
    try {
      p.child.kill(sig);
    } catch {
      // already gone
    }
  };
  let received: string | null = null;
  const listeners = SIGNALS.map((s) => {
    const fn = () => {
      received ??= s;
      for (const p of procs) send(p, s);
    };
    Deno.addSignalListener(s, fn);
    return [s, fn] as const;
  });
  let failure: { rank: number; status: Deno.CommandStatus } | null = null;
  let killTimer: ReturnType<typeof setTimeout> | undefined;
  const watchers = procs.map(async (p) => {
    const s = await p.status;
    if ((s.success && !s.signal) || failure !== null || received !== null) return;
    failure = { rank: p.rank, status: s };
    const others = procs.filter((q) => q !== p && !q.exited);
    console.error(
      `${NAME}: rank ${p.rank} (pid ${p.child.pid}) ${describeExit(s)}` +
        (others.length
          ? `; stopping rank${others.length > 1 ? "s" : ""} ${others.map((q) => q.rank).join(", ")}`
          : ""),
    );
    for (const q of others) send(q, "SIGTERM");
    killTimer = setTimeout(() => {
      for (const q of procs) send(q, "SIGKILL");
    }, o.graceMs);
  });
  await Promise.all(watchers);
  clearTimeout(killTimer);
  await Promise.all(procs.map((p) => p.io));
  for (const p of procs) {
    try {
      await p.child.stdin.close();
    } catch {
      // already closed
    }
  }
  for (const [s, fn] of listeners) Deno.removeSignalListener(s, fn);
  if (received !== null) return 128 + (SIGNUM[received] ?? 0);
  if (failure !== null) {
    const f = failure as { rank: number; status: Deno.CommandStatus };
    return f.status.code === 2 && !f.status.signal ? 2 : 1;
  }
  return 0;
}

async function main(args: string[]): Promise<number> {
  const o = parseLaunchArgs(args);
  if (o === null) {
    console.log(HELP);
    return 0;
  }
  return await launch(o);
}

if (import.meta.main) await runMain(NAME, main);
