/**
 * A process guard for the study runner's steps: `deno run --allow-run guard.ts PROGRAM ARGS…`
 * runs PROGRAM with ARGS (its stdout and stderr are the guard's) and ends it when the runner
 * goes away.
 *
 * The runner holds the write end of the guard's stdin and never writes to it. When the runner
 * dies — even by SIGKILL, which it cannot handle — the operating system closes that pipe, the
 * guard reads end-of-file and sends SIGTERM to the step (SIGKILL 20 s later if it is still
 * alive), so no orphaned training keeps writing into a run directory that a resumed study is
 * about to continue. SIGINT, SIGTERM and SIGHUP sent to the guard are forwarded to the step.
 * The guard exits with the step's exit code (128 + the signal number when a signal ended it).
 *
 * It imports nothing, so it starts in a few tens of milliseconds.
 *
 * @module
 */

const SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
const SIGNUM: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

if (import.meta.main) {
  const [program, ...args] = Deno.args;
  if (!program) {
    console.error("guard: usage: guard.ts PROGRAM [ARGS…]");
    Deno.exit(2);
  }
  const child = new Deno.Command(program, {
    args,
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  let done = false;
  const kill = (signal: Deno.Signal) => {
    if (done) return;
    try {
      child.kill(signal);
    } catch {
      // already gone
    }
  };
  for (const s of SIGNALS) Deno.addSignalListener(s, () => kill(s));
  // the runner's end of stdin closes when the runner exits, however it exits
  (async () => {
    try {
      const buf = new Uint8Array(256);
      while ((await Deno.stdin.read(buf)) !== null) {
        // nothing is ever written; keep reading until end-of-file
      }
    } catch {
      // a read error means the same: the runner is gone
    }
    if (done) return;
    kill("SIGTERM");
    setTimeout(() => kill("SIGKILL"), 20_000);
  })();
  const status = await child.status;
  done = true;
  const code = status.signal ? 128 + (SIGNUM[status.signal] ?? 0) : status.code;
  Deno.exit(code);
}
