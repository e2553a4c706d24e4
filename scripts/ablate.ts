/**
 * `scripts/ablate.ts` — run an ablation study: every run of a study file × its seeds, each
 * trained with `scripts/train.ts` and evaluated with `scripts/eval_knn.ts` /
 * `scripts/eval_seg.ts` in its own directory, then a Markdown table (mean ± std over seeds), a
 * PNG and `results.json`.
 *
 * ```sh
 * deno run -A scripts/ablate.ts studies/table3.json
 * deno run -A scripts/ablate.ts studies/fig5.json --seeds 0 --set train.epochs=2 --dry-run
 * ```
 *
 * Killed, it resumes where it stopped when rerun with the same arguments: finished steps are
 * skipped, an interrupted training continues from its checkpoint. Progress on stderr; the last
 * stdout line is JSON with the report's paths and the table's numbers. Exit code 2 on a bad
 * study file, flag or run directory (before anything runs), 1 when a step failed (the report
 * is still written), 130 / 143 when interrupted by SIGINT / SIGTERM.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { resolveTrainConfig } from "../lib/densedino/config.ts";
import {
  applyReuse,
  checkRunDirs,
  commandLine,
  DEFAULT_SCRIPTS,
  displayPath,
  findReuse,
  loadStudy,
  parseOverride,
  parseSeeds,
  planStudy,
  type ReuseMatch,
  runStudy,
  shellQuote,
  StudyError,
  StudyInterrupted,
  type TrainResolver,
} from "../lib/study/study.ts";
import { pathExists } from "../lib/torch/files.ts";
import { parseTrainArgs } from "./train.ts";

const NAME = "ablate";

const FLAGS: Record<string, { arg?: string; multiple?: boolean; help: string; def: string }> = {
  out: { arg: "DIR", help: "output directory", def: "runs/studies/<study name>" },
  jobs: {
    arg: "N",
    help: "(run, seed) pairs run at once, each in its own processes",
    def: "1",
  },
  seeds: { arg: "LIST", help: "comma-separated seeds, replacing the study's", def: "the study's" },
  only: {
    arg: "LIST",
    help: "comma-separated run names to execute (the report shows all)",
    def: "all",
  },
  set: {
    arg: "PATH=VALUE",
    multiple: true,
    help: "override a flag of every run: train.FLAG=VALUE or evals.NAME.FLAG=VALUE " +
      "(repeatable; VALUE null removes the flag), e.g. --set train.epochs=2",
    def: "none",
  },
  reuse: {
    arg: "DIR",
    multiple: true,
    help: "another study's output folder: a run not started here takes over a finished run " +
      "there with the same training configuration and seed (and its evaluations with the " +
      "same flags) instead of repeating it (repeatable)",
    def: "none",
  },
  script: {
    arg: "NAME=PATH",
    multiple: true,
    help: "the script of a step: train, knn or seg (repeatable)",
    def: "scripts/train.ts, scripts/eval_knn.ts, scripts/eval_seg.ts",
  },
  "dry-run": {
    help: "check everything and print the commands (and which steps are done) without running",
    def: "false",
  },
  "report-only": {
    help: "write the report from the finished steps without running anything",
    def: "false",
  },
  heartbeat: {
    arg: "S",
    help: "show each running step's last progress line every S seconds (0: never)",
    def: "60",
  },
  help: { help: "print this help and exit", def: "false" },
};

function helpText(): string {
  const lines = Object.entries(FLAGS).map(([k, f]) =>
    `  --${k}${f.arg ? " " + f.arg : ""}\n      ${f.help} (default: ${f.def})`
  );
  return [
    "Usage: deno run -A scripts/ablate.ts STUDY.json [flags]",
    "",
    "Runs every run of a study × its seeds (train, then each evaluation) in OUT/<run>/seed<k>/,",
    "skipping finished steps (rerun the same command to resume a killed study), and writes",
    "OUT/report.md (mean ± std over seeds), OUT/results.json and the study's PNG.",
    "The study file format: studies/README.md.",
    "",
    "Flags:",
    ...lines,
    "",
    "Exit codes: 0 done, 2 bad study / flags / run directory (nothing ran), 1 a step failed",
    "(report written), 130 / 143 interrupted by SIGINT / SIGTERM.",
  ].join("\n");
}

/** Training flags → the resolved training configuration (throws ConfigError). */
const resolveTrain: TrainResolver = (args) => {
  const parsed = parseTrainArgs(args);
  if (parsed === "help") throw new StudyError("--help is not a training flag");
  return resolveTrainConfig(parsed) as unknown as Record<string, unknown>;
};

function positiveInt(flag: string, v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0 || v.trim() === "") {
    throw new StudyError(`--${flag} must be an integer ≥ 0, got "${v}"`);
  }
  return n;
}

async function main(args: string[]): Promise<number> {
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean }> = {};
  for (const [k, f] of Object.entries(FLAGS)) {
    options[k] = { type: f.arg ? "string" : "boolean", ...(f.multiple ? { multiple: true } : {}) };
  }
  let parsed;
  try {
    parsed = parseArgs({ args, options, strict: true, allowPositionals: true });
  } catch (e) {
    throw new StudyError(`${(e as Error).message} (see --help)`);
  }
  const v = parsed.values as Record<string, string | boolean | string[] | undefined>;
  if (v.help) {
    console.log(helpText());
    return 0;
  }
  if (parsed.positionals.length !== 1) {
    throw new StudyError(
      parsed.positionals.length === 0
        ? "give the study file, e.g. deno run -A scripts/ablate.ts studies/table3.json"
        : `give one study file, got ${parsed.positionals.join(", ")}`,
    );
  }
  const file = parsed.positionals[0];
  const scripts: Record<string, string> = {};
  for (const s of (v.script as string[] | undefined) ?? []) {
    const eq = s.indexOf("=");
    if (eq <= 0 || eq === s.length - 1) {
      throw new StudyError(`--script ${s}: expected NAME=PATH, e.g. --script seg=my_eval_seg.ts`);
    }
    scripts[s.slice(0, eq)] = s.slice(eq + 1);
  }
  const jobs = v.jobs !== undefined ? positiveInt("jobs", v.jobs as string) : 1;
  if (jobs < 1) throw new StudyError("--jobs must be at least 1");
  const heartbeat = v.heartbeat !== undefined
    ? positiveInt("heartbeat", v.heartbeat as string)
    : 60;
  // another training script has its own configuration rules
  const trainResolver =
    scripts.train === undefined || resolve(scripts.train) === DEFAULT_SCRIPTS.train
      ? resolveTrain
      : undefined;
  const study = await loadStudy(file, {
    out: v.out as string | undefined,
    seeds: v.seeds !== undefined ? parseSeeds(v.seeds as string) : undefined,
    only: v.only !== undefined
      ? (v.only as string).split(",").map((s) => s.trim()).filter((s) => s)
      : undefined,
    sets: ((v.set as string[] | undefined) ?? []).map(parseOverride),
    scripts,
    resolveTrain: trainResolver,
  });
  const reuseDirs = (v.reuse as string[] | undefined) ?? [];
  const units = planStudy(study);
  const reusing = reuseDirs.length > 0 && !v["report-only"];
  // runStudy checks the directories itself; reuse and the dry run need them checked first
  if (reusing || v["dry-run"]) await checkRunDirs(study, units);
  const reuse: ReuseMatch[] = reusing
    ? await findReuse(study, units, reuseDirs, { resolveTrain: trainResolver })
    : [];
  if (v["dry-run"]) {
    const steps = [];
    for (const u of units) {
      const taken = reuse.find((m) => m.unit.dir === u.dir);
      console.log(
        `# ${u.run.name} seed ${u.seed} (${displayPath(u.dir)})` +
          (taken ? ` reuses ${taken.steps.join(", ")} of ${displayPath(taken.source)}` : ""),
      );
      for (const s of u.steps) {
        const done = await pathExists(s.result);
        const resume = !done && s.checkpoint !== undefined && await pathExists(s.checkpoint);
        const args = resume ? [...s.args, "--resume"] : s.args;
        const reused = taken?.steps.includes(s.name) ?? false;
        const status = done ? "done" : reused ? "reuse" : resume ? "resume" : "run";
        const command = commandLine(s.script, args);
        console.log(done || reused ? `# ${status}: ${command}` : command);
        steps.push({ run: u.run.name, seed: u.seed, step: s.name, status, command });
      }
    }
    console.log(JSON.stringify({ dryRun: true, study: study.spec.name, out: study.out, steps }));
    return 0;
  }
  const ac = new AbortController();
  const handlers: [Deno.Signal, () => void][] = [];
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    const h = () => {
      if (ac.signal.aborted) Deno.exit(sig === "SIGINT" ? 130 : 143); // a second signal: now
      console.error(`${NAME}: ${sig}: stopping the running steps (they resume on the next run)`);
      ac.abort(sig);
    };
    Deno.addSignalListener(sig, h);
    handlers.push([sig, h]);
  }
  try {
    await applyReuse(reuse, (l) => console.error(`${NAME}: ${l}`));
    const outcome = await runStudy(study, {
      jobs,
      signal: ac.signal,
      heartbeatMs: heartbeat * 1000,
      invocation: ["deno", "run", "-A", "scripts/ablate.ts", ...args].map(shellQuote).join(" "),
      reportOnly: v["report-only"] === true,
    });
    console.error(`${NAME}: report ${displayPath(outcome.report)}`);
    console.log(JSON.stringify({
      study: study.spec.name,
      version: study.spec.version,
      out: study.out,
      report: outcome.report,
      results: outcome.results,
      plot: outcome.plot,
      table: outcome.table.map((r) => ({
        run: r.run,
        label: r.label,
        n: r.n,
        metrics: Object.fromEntries(
          Object.entries(r.metrics).map(([m, s]) => [m, {
            mean: Number.isFinite(s.mean) ? s.mean : null,
            std: Number.isFinite(s.std) ? s.std : null,
            n: s.n,
          }]),
        ),
      })),
      ran: outcome.ran,
      skipped: outcome.skipped,
      failed: outcome.failed.map((f) => ({ run: f.run, seed: f.seed, step: f.step, log: f.log })),
      seconds: outcome.seconds,
    }));
    return outcome.failed.length ? 1 : 0;
  } finally {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  }
}

if (import.meta.main) {
  let code: number;
  try {
    code = await main(Deno.args);
  } catch (e) {
    if (e instanceof StudyError) {
      console.error(`${NAME}: ${e.message}`);
      code = 2;
    } else if (e instanceof StudyInterrupted) {
      console.error(`${NAME}: ${e.message}`);
      code = e.signal === "SIGINT" ? 130 : 143;
    } else {
      console.error(`${NAME}: ${(e as Error)?.stack ?? e}`);
      code = 1;
    }
  }
  Deno.exit(code);
}
