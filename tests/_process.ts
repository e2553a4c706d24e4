/**
 * Helpers of the tests that start processes (distributed training, the launcher): a free TCP
 * port, whether a process is still running, and a Deno child whose output is collected.
 *
 * @module
 */

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** True while process `pid` runs; a zombie (exited, not yet reaped by its parent) counts as gone. */
export function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(Deno.readTextFileSync(`/proc/${pid}/stat`));
  } catch {
    return false;
  }
}

/** A started Deno child and its outcome (exit code, decoded output, seconds since the start). */
export interface DenoChild {
  child: Deno.ChildProcess;
  done: Promise<{ code: number; stdout: string; stderr: string; seconds: number }>;
}

/**
 * The command `deno run -A script …args` with this process's environment plus `env` and
 * `NO_COLOR=1`, stdin closed, stderr piped and stdout piped (or discarded with `stdout: "null"`,
 * for children killed mid-run whose output nobody reads).
 */
export function denoCommand(
  script: string,
  args: string[],
  env: Record<string, string> = {},
  opts: { stdout?: "piped" | "null" } = {},
): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    env: { ...env, NO_COLOR: "1" },
    stdin: "null",
    stdout: opts.stdout ?? "piped",
    stderr: "piped",
  });
}

/** Starts {@link denoCommand}`(script, args, env)`, collecting its output. */
export function spawnDeno(script: string, args: string[], env: Record<string, string>): DenoChild {
  const t0 = performance.now();
  const child = denoCommand(script, args, env).spawn();
  const done = child.output().then((o) => ({
    code: o.code,
    stdout: new TextDecoder().decode(o.stdout),
    stderr: new TextDecoder().decode(o.stderr),
    seconds: (performance.now() - t0) / 1e3,
  }));
  return { child, done };
}
