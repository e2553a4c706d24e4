/**
 * The study runner: loads a study file, checks every flag against the scripts themselves
 * (their `--help`) and the training configuration before anything runs, then executes each
 * (run, seed) in its own directory `OUT/<run>/seed<k>/` — training, then each evaluation — as
 * subprocesses, one after another or `jobs` at a time.
 *
 * A step is complete when its result file exists (`train.json`, `eval_<name>.json`: the JSON
 * object the script printed as its last stdout line, written atomically), so a killed study
 * resumes where it stopped: finished steps are skipped and an interrupted training continues
 * with `--resume` from its checkpoint. Every run directory records the study's identity (name,
 * version and a hash of the run's resolved flags) in `run.json`; a directory made by another
 * version of the study is refused before anything runs. Each step's stdout and stderr go to
 * `<step>.log` in the run directory; progress (step, elapsed, ETA) goes to the `log` callback.
 *
 * Steps run under `guard.ts`, which ends the step when the runner dies, even by SIGKILL; an
 * abort signal (SIGINT / SIGTERM in `scripts/ablate.ts`) is forwarded to the running steps and
 * no result is written for them.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { relative, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { pathExists, writeFileAtomic } from "../torch/files.ts";
import { formatDuration, parseDuration } from "../data/progress.ts";
import { FASHION_SCENES_VERSION } from "../data/fashion_scenes.ts";
import {
  camelCase,
  type FlagOverride,
  type Flags,
  kebabCase,
  mergeFlags,
  parseStudy,
  selectRuns,
  shellQuote,
  StudyError,
  type StudyFile,
  type StudyOverrides,
  suggest,
  toArgs,
} from "./format.ts";
import { type RunResult, type StudyReport, writeReport } from "./report.ts";

/**
 * Resolves training arguments into the full training configuration (and throws, with a message
 * naming the flag, when they are inconsistent). `scripts/ablate.ts` passes
 * `resolveTrainConfig(parseTrainArgs(args))`.
 */
export type TrainResolver = (args: string[]) => Record<string, unknown>;

function scriptPath(name: string): string {
  const u = new URL(`../../scripts/${name}`, import.meta.url);
  return u.protocol === "file:" ? fileURLToPath(u) : u.href;
}

/**
 * The scripts of each step: `train` and one per evaluation name (override them in tests). An
 * evaluation named `NAME_SUFFIX` (e.g. `knn_items`) runs the script of `NAME`.
 */
export const DEFAULT_SCRIPTS: Readonly<Record<string, string>> = Object.freeze({
  train: scriptPath("train.ts"),
  knn: scriptPath("eval_knn.ts"),
  seg: scriptPath("eval_seg.ts"),
});

const GUARD = (() => {
  const u = new URL("./guard.ts", import.meta.url);
  return u.protocol === "file:" ? fileURLToPath(u) : u.href;
})();

/**
 * In a flag value, `{seed}` is replaced by the repetition's seed, e.g. `"seg": {"seed": "{seed}"}`
 * gives the probe of repetition k the seed k.
 */
export const SEED_PLACEHOLDER = "{seed}";

/** Flags the runner sets itself (per step kind). */
const RESERVED = {
  train: ["out", "seed", "resume", "help"],
  eval: ["weights", "help"],
};

/**
 * Flags that do not change results (threads, logging, caches): left out of a run's identity
 * hash, so they may differ when a study is resumed (e.g. `--set train.threads=2`).
 */
export const VOLATILE_FLAGS: Readonly<{ train: readonly string[]; eval: readonly string[] }> =
  Object.freeze({
    train: ["threads", "workers", "log-every", "save-every"],
    eval: ["threads", "quiet", "cache", "chunk", "report"],
  });

/** One run of a loaded study, its flags merged (base, run, `--set`) and checked. */
export interface ResolvedRun {
  /** the run's name (its directory) */
  name: string;
  /** its table label */
  label: string;
  /** its description, if any */
  description?: string;
  /** no training: the evaluations see a random-init model */
  evalOnly: boolean;
  /** merged training flags in kebab-case (without --out / --seed / --resume); null: evalOnly */
  train: Flags | null;
  /** the resolved training configuration (from the {@link TrainResolver}), if any */
  config: Record<string, unknown> | null;
  /** merged flags of each evaluation (without --weights; evalOnly: with the random model's) */
  evals: Record<string, Flags>;
}

/** A study loaded, validated and ready to run. */
export interface Study {
  /** the study file (as given) */
  file: string;
  /** the parsed file */
  spec: StudyFile;
  /** the seeds (the file's, or `--seeds`) */
  seeds: number[];
  /** every run of the file, resolved */
  runs: ResolvedRun[];
  /** the names of the runs to execute (`--only`, default all) */
  selected: string[];
  /** the script of each step */
  scripts: Record<string, string>;
  /** the output directory */
  out: string;
  /** the `--set` overrides applied */
  sets: FlagOverride[];
}

/** Options of {@link loadStudy}. */
export interface LoadStudyOptions extends StudyOverrides {
  /** the output directory (default `runs/studies/<name>`) */
  out?: string;
  /** scripts per step, merged over {@link DEFAULT_SCRIPTS} */
  scripts?: Record<string, string>;
  /** resolves training flags (validation and `"random": true`); none: names are checked only */
  resolveTrain?: TrainResolver;
}

// ---- the scripts' flags -------------------------------------------------------------------

/**
 * The flag names a script's `--help` lists: every line that starts (after blanks) with
 * `--name`. `--help` itself is included.
 */
export function parseHelpFlags(help: string): Set<string> {
  const names = new Set<string>();
  for (const line of help.split("\n")) {
    const m = /^\s*--([A-Za-z0-9][A-Za-z0-9-]*)/.exec(line);
    if (m) names.add(m[1]);
  }
  return names;
}

const helpCache = new Map<string, Promise<Set<string>>>();

/**
 * The flags of `script` from `deno run -A script --help` (cached per script and process).
 * Throws a {@link StudyError} when the script does not run or lists no flags.
 */
export function scriptFlags(script: string): Promise<Set<string>> {
  let p = helpCache.get(script);
  if (!p) {
    p = (async () => {
      let out: Deno.CommandOutput;
      try {
        out = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", script, "--help"],
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
          signal: AbortSignal.timeout(120_000),
        }).output();
      } catch (e) {
        throw new StudyError(`cannot run ${script} --help: ${(e as Error).message}`);
      }
      const dec = new TextDecoder();
      const flags = parseHelpFlags(dec.decode(out.stdout));
      if (out.code !== 0 || flags.size === 0) {
        const err = dec.decode(out.stderr).trim().split("\n").slice(-3).join("\n  ");
        throw new StudyError(
          `cannot read the flags of ${displayPath(script)}: \`${displayPath(script)} --help\` ` +
            `exited with code ${out.code}${flags.size === 0 ? " and listed no flags" : ""}` +
            (err ? `:\n  ${err}` : ""),
        );
      }
      return flags;
    })();
    p.catch(() => helpCache.delete(script));
    helpCache.set(script, p);
  }
  return p;
}

/** A path relative to the working directory when it lies under it (for messages, commands). */
export function displayPath(p: string): string {
  if (/^[a-z]+:\/\//.test(p)) return p;
  const r = relative(Deno.cwd(), p);
  return r === "" ? "." : r.startsWith("..") ? resolve(p) : r;
}

// ---- loading ------------------------------------------------------------------------------

/** Reads a study file: JSON, or a TS/JS module whose default export is the study. */
export async function readStudyFile(path: string): Promise<unknown> {
  if (/\.(ts|js|mts|mjs)$/.test(path)) {
    try {
      const mod = await import(pathToFileURL(resolve(path)).href);
      if (mod.default === undefined) {
        throw new StudyError(`${path}: a TS/JS study must \`export default\` the study object`);
      }
      return mod.default;
    } catch (e) {
      if (e instanceof StudyError) throw e;
      throw new StudyError(`${path}: cannot load it: ${(e as Error).message}`);
    }
  }
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new StudyError(`${path}: cannot read the study file: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new StudyError(`${path}: not valid JSON: ${(e as Error).message}`);
  }
}

function dropNulls(f: Flags): Flags {
  return Object.fromEntries(Object.entries(f).filter(([, v]) => v !== null));
}

/** Checks flag names of one source against a script's flags. */
function checkNames(where: string, flags: Flags | undefined, known: Set<string>, script: string) {
  for (const key of Object.keys(flags ?? {})) {
    const k = kebabCase(key);
    const base = k.startsWith("no-") && !known.has(k) ? k.slice(3) : k;
    if (!known.has(k) && !known.has(base)) {
      const names = [...known].filter((n) => n !== "help");
      throw new StudyError(
        `${where}: "${key}" (--${k}) is not a flag of ${displayPath(script)}` +
          `${suggest(k, names)}; see \`deno run -A ${displayPath(script)} --help\``,
      );
    }
  }
}

function checkReserved(where: string, flags: Flags, reserved: string[], why: string) {
  for (const k of Object.keys(flags)) {
    if (reserved.includes(k)) {
      throw new StudyError(`${where}: --${k} is set by the runner (${why}); remove it`);
    }
  }
}

/**
 * Loads a study file and resolves it: the structure ({@link parseStudy}), the overrides, every
 * flag name against the script's `--help`, every training configuration through
 * `resolveTrain`, the table's metrics against the steps that produce them. Throws a
 * {@link StudyError} naming the file, the run and the field or flag; nothing is written.
 */
export async function loadStudy(path: string, opts: LoadStudyOptions = {}): Promise<Study> {
  const spec = parseStudy(path, await readStudyFile(path));
  const seeds = opts.seeds ?? spec.seeds;
  const selected = selectRuns(path, spec, opts.only).map((r) => r.name);
  const scripts = { ...DEFAULT_SCRIPTS, ...(opts.scripts ?? {}) };
  const sets = opts.sets ?? [];
  const setsOf = (target: string) =>
    Object.fromEntries(sets.filter((s) => s.target === target).map((s) => [s.flag, s.value]));
  const base = spec.base ?? {};
  const usesTrain = spec.runs.some((r) => !r.evalOnly);
  const evalNames = new Set<string>();
  for (const r of spec.runs) {
    for (const e of Object.keys(base.evals ?? {})) if (r.evals?.[e] !== null) evalNames.add(e);
    for (const [e, f] of Object.entries(r.evals ?? {})) if (f !== null) evalNames.add(e);
  }
  // a variant `NAME_SUFFIX` of an evaluation runs NAME's script with its own flags, e.g.
  // "knn_items": {"data": "fashion-mnist"} next to "knn" (its results: eval_knn_items.json)
  for (const e of [...evalNames, ...Object.keys(base.evals ?? {})]) {
    const m = /^([a-z]+)_[a-z0-9_]+$/.exec(e);
    if (!scripts[e] && m && m[1] !== "train" && scripts[m[1]]) scripts[e] = scripts[m[1]];
  }
  const scriptOf = (e: string, where: string) => {
    const s = scripts[e];
    if (!s || e === "train") {
      const known = Object.keys(scripts).filter((k) => k !== "train");
      throw new StudyError(
        `${where}: unknown evaluation "${e}"${suggest(e, known)}; known: ${known.join(", ")}`,
      );
    }
    return s;
  };
  // the scripts' flags (one --help each, in parallel)
  const needed = new Set<string>();
  if (usesTrain || base.train) needed.add(scripts.train);
  for (const e of evalNames) needed.add(scriptOf(e, `${path}: evals`));
  for (const e of Object.keys(base.evals ?? {})) scriptOf(e, `${path}: base.evals`);
  const known = new Map<string, Set<string>>();
  await Promise.all([...needed].map(async (s) => known.set(s, await scriptFlags(s))));
  const flagsOf = (s: string) => known.get(s)!;
  // overrides
  for (const s of sets) {
    if (s.target === "train") {
      if (!usesTrain) throw new StudyError(`--set ${s.text}: no run of ${path} trains`);
      checkNames(`--set ${s.text}`, { [s.flag]: s.value }, flagsOf(scripts.train), scripts.train);
    } else {
      if (!evalNames.has(s.target)) {
        throw new StudyError(
          `--set ${s.text}: no run of ${path} runs the evaluation "${s.target}"` +
            suggest(s.target, evalNames) + `; evaluations: ${[...evalNames].join(", ")}`,
        );
      }
      const script = scriptOf(s.target, `--set ${s.text}`);
      checkNames(`--set ${s.text}`, { [s.flag]: s.value }, flagsOf(script), script);
    }
  }
  if (base.train && usesTrain) {
    checkNames(`${path}: base.train`, base.train, flagsOf(scripts.train), scripts.train);
  }
  for (const [e, f] of Object.entries(base.evals ?? {})) {
    if (evalNames.has(e)) {
      checkNames(`${path}: base.evals.${e}`, f, flagsOf(scripts[e]), scripts[e]);
    }
  }
  const resolveTrain = (where: string, flags: Flags) => {
    const args = [
      ...toArgs(flags).map((a) => a.replaceAll(SEED_PLACEHOLDER, "0")),
      "--seed",
      "0",
      "--out",
      "runs/study-check",
    ];
    if (!opts.resolveTrain) return null;
    try {
      return opts.resolveTrain(args);
    } catch (e) {
      throw new StudyError(`${where}: ${(e as Error).message}`);
    }
  };
  let baseConfig: Record<string, unknown> | null | undefined;
  const runs = spec.runs.map((r, i): ResolvedRun => {
    const where = `${path}: runs[${i}] ("${r.name}")`;
    let train: Flags | null = null, config: Record<string, unknown> | null = null;
    if (!r.evalOnly) {
      checkNames(`${where}.train`, r.train, flagsOf(scripts.train), scripts.train);
      train = dropNulls(mergeFlags(base.train, r.train, setsOf("train")));
      checkReserved(
        `${where}.train`,
        train,
        RESERVED.train,
        "OUT/<run>/seed<k>/train, the study's seeds, resuming",
      );
      config = resolveTrain(`${where}.train`, train);
    }
    const evals: Record<string, Flags> = {};
    const names = [
      ...new Set([...Object.keys(base.evals ?? {}), ...Object.keys(r.evals ?? {})]),
    ].filter((e) => r.evals?.[e] !== null);
    let random: Flags = {};
    if (r.evalOnly) {
      if (r.random === true) {
        if (baseConfig === undefined) {
          baseConfig = resolveTrain(
            `${where}: "random": true (the base training configuration)`,
            dropNulls(mergeFlags(base.train, setsOf("train"))),
          );
        }
        if (!baseConfig) {
          throw new StudyError(
            `${where}: "random": true needs the training configuration; give the model ` +
              `explicitly, e.g. "random": {"arch": "vit_mini", "patchSize": 8, "imgSize": 64}`,
          );
        }
        random = {
          arch: baseConfig.arch as string,
          "patch-size": baseConfig.patchSize as number,
          "img-size": baseConfig.imgSize as number,
        };
      } else if (typeof r.random === "object") {
        random = mergeFlags(r.random);
      }
      if (names.length === 0) throw new StudyError(`${where}: an "evalOnly" run needs evaluations`);
    }
    for (const e of names) {
      const script = scriptOf(e, `${where}.evals`);
      const k = flagsOf(script);
      checkNames(`${where}.evals.${e}`, r.evals?.[e] ?? undefined, k, script);
      if (r.evalOnly && typeof r.random === "object") {
        checkNames(`${where}.random`, r.random, k, script);
      } else if (r.evalOnly) checkNames(`${where}: "random": true`, random, k, script);
      const f = dropNulls(mergeFlags(random, base.evals?.[e], r.evals?.[e] ?? {}, setsOf(e)));
      // a random-init run gets the repetition's seed anyway
      if (r.evalOnly && f.seed === SEED_PLACEHOLDER) delete f.seed;
      checkReserved(
        `${where}.evals.${e}`,
        f,
        r.evalOnly ? [...RESERVED.eval, "seed"] : RESERVED.eval,
        r.evalOnly ? "the study's seeds" : "the run's training directory",
      );
      if (r.evalOnly && !k.has("seed")) {
        throw new StudyError(
          `${where}: ${displayPath(script)} has no --seed flag, which a random-init run needs`,
        );
      }
      // scripts without --no-X forms: false leaves the flag out
      for (const [key, v] of Object.entries(f)) {
        if (v === false) {
          delete f[key];
          if (k.has(`no-${key}`)) f[`no-${key}`] = true;
        }
      }
      evals[e] = f;
    }
    return {
      name: r.name,
      label: r.label ?? r.name,
      ...(r.description ? { description: r.description } : {}),
      evalOnly: r.evalOnly === true,
      train,
      config,
      evals,
    };
  });
  // the table's metrics must come from a step some run has
  const steps = new Set(["train", ...evalNames]);
  spec.table.columns.forEach((c, i) => {
    const step = c.metric.split(".")[0];
    if (!steps.has(step)) {
      throw new StudyError(
        `${path}: table.columns[${i}]: metric "${c.metric}" reads step "${step}", which no run ` +
          `has${suggest(step, steps)}; steps: ${[...steps].join(", ")}`,
      );
    }
  });
  return {
    file: path,
    spec,
    seeds,
    runs,
    selected,
    scripts,
    out: opts.out ?? `runs/studies/${spec.name}`,
    sets,
  };
}

// ---- plan ---------------------------------------------------------------------------------

/** What a run directory records about the study that made it (`run.json`). */
export interface RunIdentity {
  /** the study's name */
  study: string;
  /** the study's version */
  version: number;
  /** the run's name */
  run: string;
  /** the seed */
  seed: number;
  /** hash of the resolved flags of every step (volatile flags left out) and of `data` */
  hash: string;
  /**
   * the embedded data set's generator (`fashion-scenes/vN`) when a step reads it (no `--data`,
   * or `--data fashion-scenes`), else null: a new generator version makes old runs foreign
   */
  data: string | null;
  /** the training arguments (without --out), null for evalOnly */
  train: string[] | null;
  /** each evaluation's arguments (without --weights) */
  evals: Record<string, string[]>;
}

/** One step of one (run, seed). */
export interface StepPlan {
  /** "train" or the evaluation name */
  name: string;
  /** the script */
  script: string;
  /** its complete arguments (without `--resume`, added when a checkpoint exists) */
  args: string[];
  /** the result file: the step is complete when it exists */
  result: string;
  /** where its stdout and stderr go */
  log: string;
  /** train: the checkpoint whose presence means "continue with --resume" */
  checkpoint?: string;
}

/** One (run, seed): its directory and steps. */
export interface UnitPlan {
  /** the run */
  run: ResolvedRun;
  /** the seed */
  seed: number;
  /** `OUT/<run>/seed<k>` */
  dir: string;
  /** what `run.json` holds */
  identity: RunIdentity;
  /** the steps in order */
  steps: StepPlan[];
}

function sortedArgs(flags: Flags, volatile: readonly string[]): string[] {
  const kept = Object.entries(flags)
    .filter(([k]) => !volatile.includes(k))
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return toArgs(Object.fromEntries(kept));
}

/** The identity of (run, seed): its resolved flags and their hash. */
export function runIdentity(study: Study, run: ResolvedRun, seed: number): RunIdentity {
  const sub = (args: string[]) => args.map((a) => a.replaceAll(SEED_PLACEHOLDER, String(seed)));
  const train = run.train ? [...sub(toArgs(run.train)), "--seed", String(seed)] : null;
  const evals: Record<string, string[]> = {};
  for (const [e, f] of Object.entries(run.evals)) {
    evals[e] = run.evalOnly ? [...sub(toArgs(f)), "--seed", String(seed)] : sub(toArgs(f));
  }
  const embedded = [run.train, ...Object.values(run.evals)].some((f) =>
    f !== null && f !== undefined && (f.data === undefined || f.data === "fashion-scenes")
  );
  const data = embedded ? `fashion-scenes/v${FASHION_SCENES_VERSION}` : null;
  const canon = {
    ...(data === null ? {} : { data }),
    train: run.train ? sortedArgs(run.train, VOLATILE_FLAGS.train) : null,
    evals: Object.fromEntries(
      Object.keys(run.evals).sort().map((e) => [e, sortedArgs(run.evals[e], VOLATILE_FLAGS.eval)]),
    ),
    seed,
  };
  const hash = createHash("sha256").update(JSON.stringify(canon)).digest("hex").slice(0, 16);
  return {
    study: study.spec.name,
    version: study.spec.version,
    run: run.name,
    seed,
    hash,
    data,
    train,
    evals,
  };
}

/** Every (run, seed) of the study, in order (runs of `selected` only unless `all`). */
export function planStudy(study: Study, all = false): UnitPlan[] {
  const units: UnitPlan[] = [];
  for (const run of study.runs) {
    if (!all && !study.selected.includes(run.name)) continue;
    for (const seed of study.seeds) {
      const dir = `${study.out}/${run.name}/seed${seed}`;
      const identity = runIdentity(study, run, seed);
      const steps: StepPlan[] = [];
      if (identity.train) {
        steps.push({
          name: "train",
          script: study.scripts.train,
          args: [...identity.train, "--out", `${dir}/train`],
          result: `${dir}/train.json`,
          log: `${dir}/train.log`,
          checkpoint: `${dir}/train/checkpoint.safetensors`,
        });
      }
      for (const [e, args] of Object.entries(identity.evals)) {
        steps.push({
          name: e,
          script: study.scripts[e],
          args: run.evalOnly ? args : [...args, "--weights", `${dir}/train`],
          result: `${dir}/eval_${e}.json`,
          log: `${dir}/eval_${e}.log`,
        });
      }
      units.push({ run, seed, dir, identity, steps });
    }
  }
  return units;
}

/**
 * Deno flags of every step process. V8 grows its young generation up to 16 MiB per semi-space
 * under a high allocation rate (the tensor layer's many short-lived handle objects, the loader's
 * worker): a training process's RSS then climbs for the first ~1,000 iterations before it levels
 * off. Capping the semi-spaces at 2 MiB keeps it flat after the first ~100 iterations at the
 * same speed (`bench/train_memory.ts`; bench/README.md).
 */
export const STEP_DENO_FLAGS: readonly string[] = Object.freeze([
  "-A",
  "--v8-flags=--max-semi-space-size=2",
]);

/** A step as a shell command (`deno run -A … script args…`), paths relative to the cwd. */
export function commandLine(script: string, args: string[]): string {
  return ["deno", "run", ...STEP_DENO_FLAGS, displayPath(script), ...args].map(shellQuote).join(
    " ",
  );
}

// ---- pre-flight checks ----------------------------------------------------------------------

/** Wall time of each finished step in a run directory (seconds, for the ETA and the report). */
export const TIMES = "times.json";

/**
 * The steps of a `times.json` whose time covers only their last attempt: they were resumed from a
 * checkpoint, and the attempts before (ended by a crash or a kill) were not timed. Kept in the
 * file as `"resumed": [step, …]`.
 */
export function resumedSteps(times: Record<string, unknown>): Set<string> {
  return new Set(Array.isArray(times.resumed) ? times.resumed.map(String) : []);
}

/** Flag → value map of an argument list (for "what differs" messages and comparisons). */
export function argMap(args: string[] | null | undefined): Map<string, string> {
  const m = new Map<string, string>();
  if (!args) return m;
  for (let i = 0; i < args.length; i++) {
    if (!args[i].startsWith("--")) continue;
    const next = args[i + 1];
    if (next !== undefined && !next.startsWith("--")) m.set(args[i], next), i++;
    else m.set(args[i], "");
  }
  return m;
}

function describeDiff(saved: Partial<RunIdentity>, now: RunIdentity): string {
  const diffs: string[] = [];
  const cmp = (what: string, a: string[] | null | undefined, b: string[] | null) => {
    const ma = argMap(a), mb = argMap(b);
    for (const k of new Set([...ma.keys(), ...mb.keys()])) {
      if (ma.get(k) !== mb.get(k)) {
        const show = (m: Map<string, string>) => (m.has(k) ? `${k} ${m.get(k)}`.trim() : "unset");
        diffs.push(`${what} ${k}: was ${show(ma)}, now ${show(mb)}`);
      }
    }
  };
  cmp("train", saved.train, now.train);
  for (const e of new Set([...Object.keys(saved.evals ?? {}), ...Object.keys(now.evals)])) {
    if (!(e in (saved.evals ?? {}))) diffs.push(`evaluation ${e}: new`);
    else if (!(e in now.evals)) diffs.push(`evaluation ${e}: dropped`);
    else cmp(e, saved.evals![e], now.evals[e]);
  }
  return diffs.length ? `; it differs on: ${diffs.slice(0, 6).join("; ")}` : "";
}

/** Reads `/proc/<pid>/cmdline` (Linux); null when the process is gone or unknown. */
async function cmdline(pid: number): Promise<string | null> {
  try {
    return (await Deno.readTextFile(`/proc/${pid}/cmdline`)).replaceAll("\0", " ");
  } catch {
    return null;
  }
}

/**
 * Checks each unit's directory before anything runs: a directory must be empty or made by this
 * study (same name, version and flag hash in `run.json`). Throws a {@link StudyError} naming the
 * directory and what to do. Returns the guard processes still running in them (left by a
 * study that was killed).
 */
export async function checkRunDirs(study: Study, units: UnitPlan[]): Promise<number[]> {
  const stale: number[] = [];
  const studyJson = `${study.out}/study.json`;
  if (await pathExists(studyJson)) {
    try {
      const s = JSON.parse(await Deno.readTextFile(studyJson));
      if (s.name !== study.spec.name) {
        throw new StudyError(
          `${displayPath(study.out)} holds the study "${s.name}", not "${study.spec.name}" ` +
            `(${study.file}); write this study elsewhere (--out DIR)`,
        );
      }
    } catch (e) {
      if (e instanceof StudyError) throw e;
    }
  }
  for (const u of units) {
    let names: string[];
    try {
      names = [];
      for await (const e of Deno.readDir(u.dir)) names.push(e.name);
    } catch {
      continue; // not there yet
    }
    const d = displayPath(u.dir);
    if (!names.includes("run.json")) {
      if (names.length === 0) continue;
      throw new StudyError(
        `${d} exists but has no run.json, so it was not made by this study (${study.file}); ` +
          `move it away or delete it (rm -r ${shellQuote(d)}), or use another --out`,
      );
    }
    let saved: Partial<RunIdentity>;
    try {
      saved = JSON.parse(await Deno.readTextFile(`${u.dir}/run.json`));
    } catch (e) {
      throw new StudyError(
        `${d}/run.json cannot be read (${(e as Error).message}); delete ${d} to redo the run`,
      );
    }
    const now = u.identity;
    const savedData = saved.data === undefined ? "fashion-scenes/v1" : saved.data;
    if (saved.study === now.study && now.data !== null && savedData !== now.data) {
      throw new StudyError(
        `${d} was trained and evaluated on the embedded data set ${savedData}, and the data ` +
          `set has changed since (now ${now.data}): its results do not belong to this study. ` +
          `Delete it (rm -r ${shellQuote(d)}) to redo the run, or write this study elsewhere ` +
          `(--out DIR)`,
      );
    }
    if (saved.study !== now.study || saved.version !== now.version || saved.hash !== now.hash) {
      const what = saved.study !== now.study
        ? `the study "${saved.study}"`
        : saved.version !== now.version
        ? `version ${saved.version} of the study "${saved.study}" (${study.file} is version ${now.version})`
        : `version ${saved.version} of "${saved.study}" with other flags (hash ${saved.hash}, now ${now.hash})`;
      throw new StudyError(
        `${d} was made by ${what}${describeDiff(saved, now)}. Its results do not belong to this ` +
          `study: delete it (rm -r ${shellQuote(d)}) to redo the run, restore the study file ` +
          `(and --set overrides) that made it, or write this study elsewhere (--out DIR)`,
      );
    }
    if (names.includes("running.json")) {
      try {
        const r = JSON.parse(await Deno.readTextFile(`${u.dir}/running.json`));
        const cl = await cmdline(r.pid);
        if (cl && cl.includes("guard.ts") && cl.includes(u.dir)) stale.push(r.pid);
      } catch {
        // a stale record: overwritten by the next step
      }
    }
  }
  return stale;
}

// ---- execution ----------------------------------------------------------------------------

/** A study stopped by a signal: the running steps were ended and are not complete. */
export class StudyInterrupted extends Error {
  /** the signal that stopped it */
  readonly signal: string;
  /** A study stopped by `signal`. */
  constructor(signal: string) {
    super(`interrupted by ${signal}; rerun the same command to resume`);
    this.name = "StudyInterrupted";
    this.signal = signal;
  }
}

/** A step that failed. */
export interface StepFailure {
  /** the run */
  run: string;
  /** the seed */
  seed: number;
  /** the step */
  step: string;
  /** exit code (or -1) */
  code: number;
  /** what happened, with the log's last lines */
  message: string;
  /** the step's log file */
  log: string;
}

/** Options of {@link runStudy}. */
export interface RunStudyOptions {
  /** (run, seed) pairs run at once, each in its own processes (default 1) */
  jobs?: number;
  /** aborting it ends the running steps (the abort reason, e.g. "SIGTERM", is forwarded) */
  signal?: AbortSignal;
  /** progress lines (default: stderr with the prefix "ablate: ") */
  log?: (line: string) => void;
  /** how often a running step's last progress line is shown, in ms (default 60000; 0: never) */
  heartbeatMs?: number;
  /** the command that ran the study (for the report) */
  invocation?: string;
  /** write the report from the finished steps without running anything */
  reportOnly?: boolean;
}

/** What {@link runStudy} did. */
export interface StudyOutcome extends StudyReport {
  /** steps run in this call */
  ran: number;
  /** steps found complete and skipped */
  skipped: number;
  /** steps that failed (their results are missing from the report) */
  failed: StepFailure[];
  /** wall time in seconds */
  seconds: number;
}

interface Active {
  child: Deno.ChildProcess;
  step: string;
  unit: string;
  label: string;
  started: number;
  lastLine: string;
}

async function writeAll(f: Deno.FsFile, b: Uint8Array): Promise<void> {
  let off = 0;
  while (off < b.length) off += await f.write(b.subarray(off));
}

function lastJsonLine(stdout: string): Record<string, unknown> | null {
  const lines = stdout.split("\n").map((l) => l.trim()).filter((l) => l !== "");
  if (lines.length === 0) return null;
  try {
    const v = JSON.parse(lines[lines.length - 1]);
    return typeof v === "object" && v !== null && !Array.isArray(v) ? v : null;
  } catch {
    return null;
  }
}

/** A JSON file's object; null when it is missing or unreadable. */
export async function readJson(path: string): Promise<Record<string, unknown> | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch {
    return null;
  }
}

/**
 * Runs (or resumes) the study: checks the run directories, takes the output directory's lock,
 * runs every incomplete step, then writes `report.md`, `results.json` and the plot. A failed
 * step is reported and the other runs go on (its later steps are skipped); an abort ends the
 * running steps and throws {@link StudyInterrupted}. Throws {@link StudyError} (before anything
 * runs) for a run directory of another study version or a study already running in OUT.
 */
export async function runStudy(study: Study, opts: RunStudyOptions = {}): Promise<StudyOutcome> {
  const t0 = performance.now();
  const log = opts.log ?? ((l: string) => console.error(`ablate: ${l}`));
  const jobs = Math.max(1, Math.floor(opts.jobs ?? 1));
  const units = planStudy(study);
  const stale = await checkRunDirs(study, units);
  await Deno.mkdir(study.out, { recursive: true });
  const release = await acquireLock(study.out, study.file);
  try {
    await waitForStale(stale, log);
    await writeFileAtomic(
      `${study.out}/study.json`,
      JSON.stringify(
        {
          name: study.spec.name,
          version: study.spec.version,
          title: study.spec.title,
          file: study.file,
          seeds: study.seeds,
          sets: study.sets.map((s) => s.text),
          scripts: study.scripts,
          runs: study.runs,
        },
        null,
        2,
      ) + "\n",
    );
    const failed: StepFailure[] = [];
    let ran = 0, skipped = 0;
    if (!opts.reportOnly) {
      ({ ran, skipped } = await execute(study, units, jobs, opts, log, failed));
    }
    const results = await collectResults(study);
    const report = await writeReport(study, results, {
      invocation: opts.invocation,
      commands: planStudy(study, true),
      failed,
    });
    return { ...report, ran, skipped, failed, seconds: (performance.now() - t0) / 1000 };
  } finally {
    await release();
  }
}

/** What {@link studyEta} estimates from. */
export interface EtaInput {
  /** the steps not started: name and (run, seed) directory */
  pending: readonly { step: string; unit: string }[];
  /** the running steps: name, (run, seed), seconds since they started, last progress line */
  active: readonly { step: string; unit: string; seconds: number; lastLine: string }[];
  /** wall times (s) of finished steps, by step name */
  durations: ReadonlyMap<string, readonly number[]>;
  /** steps run at once */
  jobs: number;
}

/**
 * The study's remaining time: a running step's own estimate when its progress line has one
 * ("… ETA 34m17s …", as the scripts print), else the mean time of finished steps of its name
 * minus its elapsed time; a pending step's mean time of finished steps of its name. The total
 * divided by `jobs`, but no less than the longest (run, seed)'s own remaining steps, which run
 * one after another (near a study's end fewer units than `jobs` are left). Steps of a name that
 * has not finished yet (a training, at the start of a study) are not guessed from other steps:
 * the result is then a lower bound, "> 12m00s", or "?" when nothing is known.
 */
export function studyEta(input: EtaInput): string {
  const mean = (name: string) => {
    const xs = input.durations.get(name);
    return xs?.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;
  };
  let left = 0, unknown = 0;
  const perUnit = new Map<string, number>();
  const add = (unit: string, t: number) => {
    left += t;
    perUnit.set(unit, (perUnit.get(unit) ?? 0) + t);
  };
  for (const p of input.pending) {
    const m = mean(p.step);
    if (m === null) unknown++;
    else add(p.unit, m);
  }
  for (const a of input.active) {
    const own = /\bETA (\S+)/.exec(a.lastLine);
    const parsed = own ? parseDuration(own[1]) : null;
    const m = mean(a.step);
    if (parsed !== null) add(a.unit, parsed);
    else if (m !== null) add(a.unit, Math.max(0, m - a.seconds));
    else unknown++;
  }
  const t = Math.max(left / Math.max(1, input.jobs), ...perUnit.values());
  if (unknown === 0) return formatDuration(t);
  return left > 0 ? `> ${formatDuration(t)}` : "?";
}

async function execute(
  study: Study,
  units: UnitPlan[],
  jobs: number,
  opts: RunStudyOptions,
  log: (l: string) => void,
  failed: StepFailure[],
): Promise<{ ran: number; skipped: number }> {
  const signal = opts.signal;
  // what is left, and timings for the ETA
  const pending = new Map<StepPlan, UnitPlan>();
  const durations = new Map<string, number[]>();
  const timed = (name: string, seconds: number) =>
    durations.set(name, [...(durations.get(name) ?? []), seconds]);
  let skipped = 0, ran = 0, begun = 0;
  for (const u of units) {
    const times = (await readJson(`${u.dir}/${TIMES}`)) ?? {};
    const partial = resumedSteps(times);
    for (const s of u.steps) {
      if (await pathExists(s.result)) {
        skipped++;
        const t = times[s.name];
        if (typeof t === "number" && !partial.has(s.name)) timed(s.name, t);
      } else pending.set(s, u);
    }
  }
  const total = skipped + pending.size;
  log(
    `study ${study.spec.name} v${study.spec.version}: ${units.length} run director${
      units.length === 1 ? "y" : "ies"
    } (${study.selected.length} runs × ${study.seeds.length} seeds), ${total} steps: ` +
      `${skipped} done, ${pending.size} to run; out ${displayPath(study.out)}` +
      (jobs > 1 ? `, ${jobs} at a time` : ""),
  );
  const active = new Set<Active>();
  // steps taken from `pending` whose process is not running yet: still to do for the ETA
  const starting = new Set<{ step: string; unit: string }>();
  const started = performance.now();
  const eta = () =>
    studyEta({
      pending: [...[...pending].map(([s, u]) => ({ step: s.name, unit: u.dir })), ...starting],
      active: [...active].map((a) => ({
        step: a.step,
        unit: a.unit,
        seconds: (performance.now() - a.started) / 1000,
        lastLine: a.lastLine,
      })),
      durations,
      jobs,
    });
  const elapsed = () => formatDuration((performance.now() - started) / 1000);
  let heartbeat: ReturnType<typeof setInterval> | undefined;
  const hb = opts.heartbeatMs ?? 60_000;
  if (hb > 0) {
    heartbeat = setInterval(() => {
      for (const a of active) {
        log(
          `${a.label} running ${formatDuration((performance.now() - a.started) / 1000)}` +
            (a.lastLine ? `: ${a.lastLine}` : ""),
        );
      }
    }, hb);
  }
  const onAbort = () => {
    const sig = (typeof signal?.reason === "string" ? signal.reason : "SIGTERM") as Deno.Signal;
    for (const a of active) {
      try {
        a.child.kill(sig);
      } catch {
        // already gone
      }
    }
  };
  signal?.addEventListener("abort", onAbort);
  const queue = [...units];
  const worker = async () => {
    while (queue.length && !signal?.aborted) {
      const u = queue.shift()!;
      if (!u.steps.some((s) => pending.has(s))) continue;
      await Deno.mkdir(u.dir, { recursive: true });
      if (!(await pathExists(`${u.dir}/run.json`))) {
        await writeFileAtomic(`${u.dir}/run.json`, JSON.stringify(u.identity, null, 2) + "\n");
      }
      for (const s of u.steps) {
        if (!pending.has(s)) continue;
        if (signal?.aborted) return;
        pending.delete(s);
        const claim = { step: s.name, unit: u.dir };
        starting.add(claim);
        const n = skipped + ++begun; // this step's ordinal, counted before any await
        const resume = s.checkpoint !== undefined && (await pathExists(s.checkpoint));
        const args = resume ? [...s.args, "--resume"] : s.args;
        const label = `${u.run.name} seed${u.seed} ${s.name}`;
        log(
          `[${n}/${total}] ${label}${resume ? " (resuming from its checkpoint)" : ""} · ` +
            `elapsed ${elapsed()} · ETA ${eta()}`,
        );
        const a: Active = {
          child: null as unknown as Deno.ChildProcess,
          step: s.name,
          unit: u.dir,
          label,
          started: 0,
          lastLine: "",
        };
        const r = await runStep(s, u, args, a, active, signal, () => starting.delete(claim));
        ran++;
        if (signal?.aborted && !r.json) return;
        if (r.json) {
          await writeFileAtomic(s.result, JSON.stringify(r.json, null, 2) + "\n");
          const times = (await readJson(`${u.dir}/${TIMES}`)) ?? {};
          times[s.name] = r.seconds;
          const partial = resumedSteps(times);
          if (resume) partial.add(s.name);
          else partial.delete(s.name);
          if (partial.size) times.resumed = [...partial];
          else delete times.resumed;
          await writeFileAtomic(`${u.dir}/${TIMES}`, JSON.stringify(times, null, 2) + "\n");
          // a resumed step's time is not a whole step's: no guide for the ETA
          if (!resume) timed(s.name, r.seconds);
          log(`${label} done in ${formatDuration(r.seconds)} · ETA ${eta()}`);
        } else {
          const f: StepFailure = {
            run: u.run.name,
            seed: u.seed,
            step: s.name,
            code: r.code,
            message: r.message,
            log: s.log,
          };
          failed.push(f);
          log(`${label} FAILED: ${r.message}`);
          // the unit's later steps need this one
          for (const later of u.steps) pending.delete(later);
          break;
        }
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(jobs, units.length) }, worker));
  } finally {
    clearInterval(heartbeat);
    signal?.removeEventListener("abort", onAbort);
  }
  if (signal?.aborted) {
    throw new StudyInterrupted(typeof signal.reason === "string" ? signal.reason : "abort");
  }
  log(`all steps finished in ${elapsed()}${failed.length ? `, ${failed.length} failed` : ""}`);
  return { ran, skipped };
}

async function runStep(
  s: StepPlan,
  u: UnitPlan,
  args: string[],
  a: Active,
  active: Set<Active>,
  signal: AbortSignal | undefined,
  onSpawn: () => void,
): Promise<
  { json: Record<string, unknown> | null; code: number; message: string; seconds: number }
> {
  const enc = new TextEncoder();
  const file = await Deno.open(s.log, { append: true, create: true, write: true });
  let chain = Promise.resolve();
  const write = (b: Uint8Array) => (chain = chain.then(() => writeAll(file, b)));
  write(enc.encode(`=== ${new Date().toISOString()} ${commandLine(s.script, args)}\n`));
  const t = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-run",
      GUARD,
      Deno.execPath(),
      "run",
      ...STEP_DENO_FLAGS,
      s.script,
      ...args,
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // the guard ends the step when this end of its stdin closes (this process exits)
  const stdin = child.stdin.getWriter();
  a.child = child;
  a.started = t;
  active.add(a);
  onSpawn();
  // an abort that came while this step was starting
  if (signal?.aborted) {
    child.kill((typeof signal.reason === "string" ? signal.reason : "SIGTERM") as Deno.Signal);
  }
  const running = `${u.dir}/running.json`;
  await writeFileAtomic(
    running,
    JSON.stringify({ pid: child.pid, step: s.name, started: new Date().toISOString() }) + "\n",
  );
  const outDec = new TextDecoder(), errDec = new TextDecoder();
  let stdout = "", errTail = "";
  const pumpOut = (async () => {
    for await (const chunk of child.stdout) {
      write(chunk);
      stdout += outDec.decode(chunk, { stream: true });
    }
  })();
  const pumpErr = (async () => {
    for await (const chunk of child.stderr) {
      write(chunk);
      errTail = (errTail + errDec.decode(chunk, { stream: true })).slice(-8192);
      const lines = errTail.split(/[\r\n]+/).map((l) => l.trim()).filter((l) => l !== "");
      if (lines.length) a.lastLine = lines[lines.length - 1].slice(0, 200);
    }
  })();
  const status = await child.status;
  await Promise.all([pumpOut, pumpErr]);
  await stdin.close().catch(() => {});
  const seconds = (performance.now() - t) / 1000;
  write(enc.encode(`=== exit code ${status.code} after ${formatDuration(seconds)}\n`));
  await chain;
  file.close();
  active.delete(a);
  await Deno.remove(running).catch(() => {});
  const tail = errTail.split(/[\r\n]+/).filter((l) => l.trim() !== "").slice(-4)
    .map((l) => `    ${l}`).join("\n");
  const see = `see ${displayPath(s.log)}${tail ? `; its last lines:\n${tail}` : ""}`;
  if (status.code !== 0) {
    const how = status.signal ? `ended by ${status.signal}` : `exit code ${status.code}`;
    return { json: null, code: status.code, message: `${how}; ${see}`, seconds };
  }
  const json = lastJsonLine(stdout);
  if (!json) {
    return {
      json: null,
      code: 0,
      message: `it printed no JSON object as its last stdout line; ${see}`,
      seconds,
    };
  }
  return { json, code: 0, message: "", seconds };
}

async function acquireLock(out: string, file: string): Promise<() => Promise<void>> {
  const path = `${out}/.ablate.lock`;
  const me = (await cmdline(Deno.pid)) ?? "";
  try {
    const held = JSON.parse(await Deno.readTextFile(path));
    if (held.pid !== Deno.pid) {
      const cl = await cmdline(held.pid);
      if (cl !== null && cl === held.cmdline) {
        throw new StudyError(
          `${displayPath(out)} is in use by another study runner (pid ${held.pid}, since ` +
            `${held.started}); wait for it to finish or stop it (kill ${held.pid}), then rerun ${file}`,
        );
      }
    }
  } catch (e) {
    if (e instanceof StudyError) throw e;
  }
  await writeFileAtomic(
    path,
    JSON.stringify({ pid: Deno.pid, cmdline: me, started: new Date().toISOString() }) + "\n",
  );
  return async () => {
    await Deno.remove(path).catch(() => {});
  };
}

async function waitForStale(pids: number[], log: (l: string) => void): Promise<void> {
  if (pids.length === 0) return;
  log(
    `waiting for ${pids.length} step(s) left by an interrupted study to stop (pid ${
      pids.join(", ")
    })`,
  );
  const until = Date.now() + 30_000;
  let alive = pids;
  while (alive.length && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 200));
    alive = (await Promise.all(alive.map(async (p) => ((await cmdline(p)) ? p : -1)))).filter(
      (p) => p >= 0,
    );
  }
  if (alive.length) {
    throw new StudyError(
      `step process(es) ${alive.join(", ")} left by an interrupted study are still running in ` +
        `its run directories; wait for them to end or stop them (kill ${
          alive.join(" ")
        }), then rerun`,
    );
  }
}

// ---- results ------------------------------------------------------------------------------

/** The value of `train.<flag>` for a run: its flags, else its resolved configuration. */
export function runFlagValue(run: ResolvedRun, path: string): number | null {
  const flag = path.replace(/^train\./, "");
  const v = run.train?.[kebabCase(flag)];
  const c = run.config;
  const fromConfig = c?.[camelCase(flag)] ??
    (c?.views as Record<string, unknown> | undefined)?.[camelCase(flag)];
  const x = v ?? fromConfig;
  return typeof x === "number"
    ? x
    : typeof x === "string" && x !== "" && Number.isFinite(Number(x))
    ? Number(x)
    : null;
}

/**
 * Reads the finished steps of every run and seed from OUT (every run of the study, also those
 * left out by `--only`); directories of another study version are skipped (listed in
 * `foreign`).
 */
export async function collectResults(study: Study): Promise<RunResult[]> {
  const units = planStudy(study, true);
  const out: RunResult[] = study.runs.map((run) => ({
    name: run.name,
    label: run.label,
    evalOnly: run.evalOnly,
    x: study.spec.plot?.x ? runFlagValue(run, study.spec.plot.x) : null,
    seeds: [],
  }));
  for (const u of units) {
    const saved = await readJson(`${u.dir}/run.json`);
    if (!saved) continue;
    const result = out.find((r) => r.name === u.run.name)!;
    if (
      saved.study !== u.identity.study || saved.hash !== u.identity.hash ||
      saved.version !== u.identity.version
    ) {
      (result.foreign ??= []).push(u.seed);
      continue;
    }
    const steps: Record<string, Record<string, unknown>> = {};
    for (const s of u.steps) {
      const r = await readJson(s.result);
      if (r) steps[s.name] = r;
    }
    const savedTimes = (await readJson(`${u.dir}/${TIMES}`)) ?? {};
    const times: Record<string, number> = {};
    for (const [k, v] of Object.entries(savedTimes)) {
      if (k in steps && typeof v === "number") times[k] = v;
    }
    const partial = [...resumedSteps(savedTimes)].filter((k) => k in times);
    const reused = typeof saved.reusedFrom === "string" && Array.isArray(saved.reusedSteps)
      ? { from: saved.reusedFrom, steps: saved.reusedSteps.map(String) }
      : undefined;
    result.seeds.push({
      seed: u.seed,
      steps,
      times,
      ...(partial.length ? { resumed: partial } : {}),
      ...(reused ? { reused } : {}),
    });
  }
  return out;
}
