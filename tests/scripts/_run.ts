/**
 * Running a script of scripts/ as a subprocess in tests (a helper module, no tests of its own):
 * `deno run -A SCRIPT …args` with `NO_COLOR=1`, its exit code and decoded output, the JSON
 * object of its last stdout line (the scripts' result contract), and the usage-error contract
 * (exit code 2, a message naming the flag or file, nothing on stdout).
 *
 * @module
 */
import assert from "node:assert/strict";
import { spawnDeno } from "../_process.ts";

/** What a script run left: its exit code and everything it printed. */
export interface ScriptRun {
  /** the exit code (0 done, 2 bad flags or input, 1 other failures) */
  code: number;
  /** everything written to stdout */
  stdout: string;
  /** everything written to stderr */
  stderr: string;
}

/** The absolute path of `scripts/<file>` (e.g. `scriptPath("eval_knn.ts")`). */
export function scriptPath(file: string): string {
  return new URL(`../../scripts/${file}`, import.meta.url).pathname;
}

/**
 * Runs `deno run -A script ...args` to the end, with this process's environment plus
 * `NO_COLOR=1` and `env` (e.g. `{ DENSEDINO_CACHE: dir }`), and decodes its output.
 */
export async function runScript(
  script: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<ScriptRun> {
  const { code, stdout, stderr } = await spawnDeno(script, args, env).done;
  return { code, stdout, stderr };
}

/** The last line of a script's stdout, parsed as the JSON object it must be. */
export function lastJson(stdout: string): Record<string, unknown> {
  const lines = stdout.trim().split("\n");
  const last = lines[lines.length - 1];
  try {
    return JSON.parse(last);
  } catch {
    throw new Error(`the last stdout line is not JSON: ${JSON.stringify(last)}`);
  }
}

/**
 * Asserts that a run failed as bad flags or input must: exit code 2, `pattern` in stderr (the
 * message naming the flag or file) with the hint to run --help, and nothing on stdout. `label`
 * (e.g. the arguments) names the case in failures.
 */
export function assertUsageError(r: ScriptRun, pattern: RegExp, label = ""): void {
  assert.equal(r.code, 2, `${label}\n${r.stderr}`);
  assert.match(r.stderr, pattern, label);
  assert.match(r.stderr, /Run with --help to list the flags\./, label);
  assert.equal(r.stdout, "", label);
}
