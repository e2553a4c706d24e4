/**
 * The study file: a small declarative description of an ablation study (which training runs,
 * which evaluations, over which seeds, and the table and plot to produce), its structural
 * validation, flag conversion (`{numRef: 4}` → `--num-ref 4`), command-line overrides
 * (`--set train.epochs=2`, `--seeds`, `--only`) and the mean ± std formatting of the report.
 *
 * Everything here is pure (no processes, no files): {@link parseStudy} checks the shape of a
 * parsed file and throws a {@link StudyError} naming the file and the field; the runner
 * (`runner.ts`) then checks the flags against the scripts themselves.
 *
 * @module
 */

/**
 * A flag value in a study file: a string, a number, a boolean, a list (joined with commas) or
 * null (leave the flag out, e.g. to drop a flag of `base` in one run). In a string, `{seed}`
 * stands for the repetition's seed.
 */
export type FlagValue = string | number | boolean | null | readonly (string | number)[];

/** Flags of one script, keyed camelCase (`numRef`) or kebab-case (`num-ref`). */
export type Flags = Record<string, FlagValue>;

/** A column of the study's table: a metric path and how to show it. */
export interface StudyColumn {
  /**
   * `<step>.<path>`: the step (`train` or an evaluation name such as `knn`, `seg`) and a dotted
   * path into the JSON that step printed, e.g. `knn.top1`, `seg.miou`, `train.final.loss`,
   * `knn.results.0.top1`
   */
  metric: string;
  /** the column header (default: the metric path) */
  label?: string;
  /** decimals shown (default 1) */
  digits?: number;
  /** a factor applied before averaging, e.g. 100 for a fraction shown in % (default 1) */
  scale?: number;
}

/** The study's figure. */
export interface StudyPlot {
  /** `bar`: one group per run, one bar per metric; `line`: metrics against `x` (default bar) */
  kind?: "bar" | "line";
  /** the metrics drawn (default: every table column); each must be a table column */
  metrics?: string[];
  /**
   * line plots: the x value of each run, `train.<flag>` (e.g. `train.numRef`) read from the
   * run's flags; runs without it (such as a random-init baseline) are drawn as flat lines
   */
  x?: string;
  /** the PNG file name inside the study's output directory (default `<name>.png`) */
  file?: string;
  /** the plot title (default: the study's title) */
  title?: string;
  /** the x axis label (default: the x flag, or "run") */
  xLabel?: string;
  /** the y axis label (default: none) */
  yLabel?: string;
  /** line plots: logarithmic x (drawn as log2 of x) */
  logX?: boolean;
}

/** One run (one table row) of a study. */
export interface StudyRun {
  /** a directory-safe identifier (`[A-Za-z0-9_.-]+`), unique in the study */
  name: string;
  /** the row label of the table and plot (default: the name) */
  label?: string;
  /** free text */
  description?: string;
  /** training flags, merged over `base.train` (null removes a base flag) */
  train?: Flags;
  /** evaluations, merged over `base.evals` per evaluation (null drops that evaluation) */
  evals?: Record<string, Flags | null>;
  /** no training: the evaluations see a randomly initialised model (needs `random`) */
  evalOnly?: boolean;
  /**
   * the random-init model of an `evalOnly` run: `true` takes the architecture of the base
   * training configuration (`--arch`, `--patch-size`, `--img-size`), or flags given to every
   * evaluation; the seed of each repetition is passed as `--seed`
   */
  random?: boolean | Flags;
}

/** A study file (format version 1, see studies/README.md). */
export interface StudyFile {
  /** identifier of the study, also its default output directory `runs/studies/<name>` */
  name: string;
  /** bump it when the runs change: results of another version are never mixed */
  version: number;
  /** the report's title */
  title: string;
  /** free text, shown under the title */
  description?: string;
  /** the seeds every run is repeated with (training `--seed`, random init `--seed`) */
  seeds: number[];
  /** flags shared by every run */
  base?: { train?: Flags; evals?: Record<string, Flags> };
  /** the runs, in table order */
  runs: StudyRun[];
  /** the report's table */
  table: { columns: StudyColumn[] };
  /** the report's figure (default: a bar plot of the table columns) */
  plot?: StudyPlot;
}

/** A bad study file or bad overrides: the message names the file, the run and the field. */
export class StudyError extends Error {
  /** A study error. */
  constructor(message: string) {
    super(message);
    this.name = "StudyError";
  }
}

const TOP_FIELDS = [
  "name",
  "version",
  "title",
  "description",
  "seeds",
  "base",
  "runs",
  "table",
  "plot",
] as const;
const REQUIRED_TOP = ["name", "version", "title", "seeds", "runs", "table"] as const;
const RUN_FIELDS = ["name", "label", "description", "train", "evals", "evalOnly", "random"];
const BASE_FIELDS = ["train", "evals"];
const TABLE_FIELDS = ["columns"];
const COLUMN_FIELDS = ["metric", "label", "digits", "scale"];
const PLOT_FIELDS = ["kind", "metrics", "x", "file", "title", "xLabel", "yLabel", "logX"];

const HINTS: Record<string, string> = {
  name: 'an identifier such as "table3"',
  version: "a positive integer, bumped whenever the runs change",
  title: "the report's title",
  seeds: "a list of integer seeds, e.g. [0, 1, 2]",
  runs: 'a list of runs, e.g. [{"name": "cls", "train": {"loss": "cls"}}]',
  table: 'the report table, e.g. {"columns": [{"metric": "knn.top1"}]}',
};

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** Edit distance with adjacent transpositions (for "did you mean" hints). */
function distance(a: string, b: string): number {
  const d: number[][] = Array.from(
    { length: a.length + 1 },
    (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/** ` (did you mean "x"?)` when one of `known` is close to `name`, else "". */
export function suggest(name: string, known: Iterable<string>): string {
  let best = "", bestD = Infinity;
  for (const k of known) {
    const dd = distance(name.toLowerCase(), k.toLowerCase());
    if (dd < bestD) [best, bestD] = [k, dd];
  }
  return bestD <= Math.max(1, Math.floor(name.length / 3)) ? ` (did you mean "${best}"?)` : "";
}

/** `numRef` → `num-ref`; kebab-case keys are returned as they are. */
export function kebabCase(key: string): string {
  return key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
}

/** `num-ref` → `numRef`. */
export function camelCase(key: string): string {
  return key.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** One flag as command-line arguments, or [] when the flag is left out. */
export function flagArgs(
  key: string,
  value: FlagValue,
  options: { negatable?: boolean } = {},
): string[] {
  const k = kebabCase(key);
  if (value === null) return [];
  if (value === true) return [`--${k}`];
  if (value === false) return options.negatable === false ? [] : [`--no-${k}`];
  if (Array.isArray(value)) return [`--${k}`, value.map(String).join(",")];
  return [`--${k}`, String(value)];
}

/**
 * Flags → command-line arguments, in key order: `{numRef: 4, "global-scale": [0.4, 1],
 * resume: true, normLastLayer: false}` → `--num-ref 4 --global-scale 0.4,1 --resume
 * --no-norm-last-layer`. A null value leaves the flag out; so does `false` when the script has
 * no `--no-X` form (`negatable: false`).
 */
export function toArgs(flags: Flags, options: { negatable?: boolean } = {}): string[] {
  return Object.entries(flags).flatMap(([k, v]) => flagArgs(k, v, options));
}

/**
 * Merges flag sets left to right; keys that name the same flag (`numRef` / `num-ref`) are one
 * key, written in kebab-case; a later value (including null) replaces an earlier one.
 */
export function mergeFlags(...sets: (Flags | undefined)[]): Flags {
  const out: Flags = {};
  for (const s of sets) {
    if (!s) continue;
    for (const [k, v] of Object.entries(s)) out[kebabCase(k)] = v;
  }
  return out;
}

/** A parsed `--set` override: which flags (train or one evaluation), which flag, what value. */
export interface FlagOverride {
  /** "train" or an evaluation name */
  target: string;
  /** the flag (as written) */
  flag: string;
  /** the value (JSON when it parses, else the string) */
  value: FlagValue;
  /** the original text, for messages */
  text: string;
}

/**
 * Parses `train.epochs=2`, `evals.knn.k=20`, `train.globalScale=0.4,1` (a string),
 * `train.lr=null` (removes the flag). The value is JSON when it parses as a number, boolean,
 * null or list, else the text itself.
 */
export function parseOverride(text: string): FlagOverride {
  const eq = text.indexOf("=");
  const bad = (why: string) =>
    new StudyError(
      `--set ${text}: ${why}; expected train.FLAG=VALUE or evals.NAME.FLAG=VALUE ` +
        `(e.g. --set train.epochs=2)`,
    );
  if (eq < 0) throw bad("no '='");
  const path = text.slice(0, eq).split(".");
  const raw = text.slice(eq + 1);
  let target: string, flag: string;
  if (path[0] === "train" && path.length === 2) [target, flag] = ["train", path[1]];
  else if (path[0] === "evals" && path.length === 3) [target, flag] = [path[1], path[2]];
  else throw bad(`"${path.join(".")}" is not a flag path`);
  if (!flag || !target) throw bad("empty name");
  let value: FlagValue = raw;
  try {
    const j = JSON.parse(raw);
    if (
      j === null || typeof j === "number" || typeof j === "boolean" ||
      (Array.isArray(j) && j.every((x) => typeof x === "number" || typeof x === "string"))
    ) value = j;
  } catch {
    // a plain string
  }
  return { target, flag, value, text };
}

/** Overrides of a study from the command line. */
export interface StudyOverrides {
  /** replace the study's seeds */
  seeds?: number[];
  /** run only these runs (names) */
  only?: string[];
  /** `--set` overrides, applied to every run after its own flags */
  sets?: FlagOverride[];
}

function checkFields(
  where: string,
  obj: Record<string, unknown>,
  allowed: readonly string[],
): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) {
      throw new StudyError(
        `${where}: unknown field "${k}"${suggest(k, allowed)}; allowed fields: ${
          allowed.join(", ")
        }`,
      );
    }
  }
}

function checkFlags(where: string, v: unknown): Flags {
  if (!isRecord(v)) throw new StudyError(`${where} must be an object of flags, got ${show(v)}`);
  for (const [k, x] of Object.entries(v)) {
    const ok = x === null || typeof x === "string" || typeof x === "boolean" ||
      (typeof x === "number" && Number.isFinite(x)) ||
      (Array.isArray(x) && x.length > 0 &&
        x.every((y) => typeof y === "string" || (typeof y === "number" && Number.isFinite(y))));
    if (!ok) {
      throw new StudyError(
        `${where}.${k}: a flag value must be a string, number, boolean, list or null, got ${
          show(x)
        }`,
      );
    }
    if (!/^[A-Za-z][A-Za-z0-9-]*$/.test(k)) {
      throw new StudyError(`${where}: "${k}" is not a flag name (camelCase or kebab-case)`);
    }
  }
  return v as Flags;
}

function show(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 60 ? s.slice(0, 57) + "..." : s;
}

/**
 * Checks the shape of a parsed study file and returns it typed: every field known, required
 * fields present, types right, run names unique and directory-safe, table metrics well formed.
 * `file` names the study in messages. Flags are checked later, against the scripts.
 */
export function parseStudy(file: string, data: unknown): StudyFile {
  if (!isRecord(data)) throw new StudyError(`${file}: a study is a JSON object, got ${show(data)}`);
  checkFields(file, data, TOP_FIELDS);
  for (const k of REQUIRED_TOP) {
    if (!(k in data)) throw new StudyError(`${file}: missing field "${k}" (${HINTS[k]})`);
  }
  const { name, version, title, description, seeds, base, runs, table, plot } = data;
  if (typeof name !== "string" || !NAME_RE.test(name)) {
    throw new StudyError(
      `${file}: "name" must be an identifier ([A-Za-z0-9_.-]), got ${show(name)}`,
    );
  }
  if (!Number.isSafeInteger(version) || (version as number) < 1) {
    throw new StudyError(`${file}: "version" must be a positive integer, got ${show(version)}`);
  }
  if (typeof title !== "string") {
    throw new StudyError(`${file}: "title" must be a string, got ${show(title)}`);
  }
  if (description !== undefined && typeof description !== "string") {
    throw new StudyError(`${file}: "description" must be a string, got ${show(description)}`);
  }
  checkSeeds(`${file}: "seeds"`, seeds);
  const baseOut: StudyFile["base"] = {};
  if (base !== undefined) {
    if (!isRecord(base)) throw new StudyError(`${file}: "base" must be an object`);
    checkFields(`${file}: base`, base, BASE_FIELDS);
    if (base.train !== undefined) baseOut.train = checkFlags(`${file}: base.train`, base.train);
    if (base.evals !== undefined) {
      if (!isRecord(base.evals)) {
        throw new StudyError(`${file}: base.evals must be an object {evaluation: flags}`);
      }
      baseOut.evals = {};
      for (const [e, f] of Object.entries(base.evals)) {
        baseOut.evals[e] = checkFlags(`${file}: base.evals.${e}`, f);
      }
    }
  }
  if (!Array.isArray(runs) || runs.length === 0) {
    throw new StudyError(`${file}: "runs" must be a non-empty list (${HINTS.runs})`);
  }
  const names = new Set<string>();
  const runsOut = runs.map((r, i): StudyRun => {
    let where = `${file}: runs[${i}]`;
    if (!isRecord(r)) throw new StudyError(`${where} must be an object, got ${show(r)}`);
    if (typeof r.name === "string") where += ` ("${r.name}")`;
    checkFields(where, r, RUN_FIELDS);
    if (!("name" in r)) throw new StudyError(`${where}: missing field "name"`);
    if (typeof r.name !== "string" || !NAME_RE.test(r.name)) {
      throw new StudyError(
        `${where}: "name" must be a directory-safe identifier ([A-Za-z0-9_.-]), got ${
          show(r.name)
        }`,
      );
    }
    if (names.has(r.name)) throw new StudyError(`${where}: the run name "${r.name}" is repeated`);
    names.add(r.name);
    const run: StudyRun = { name: r.name };
    for (const k of ["label", "description"] as const) {
      if (r[k] !== undefined) {
        if (typeof r[k] !== "string") throw new StudyError(`${where}: "${k}" must be a string`);
        run[k] = r[k] as string;
      }
    }
    if (r.train !== undefined) run.train = checkFlags(`${where}.train`, r.train);
    if (r.evals !== undefined) {
      if (!isRecord(r.evals)) {
        throw new StudyError(`${where}.evals must be an object {evaluation: flags | null}`);
      }
      run.evals = {};
      for (const [e, f] of Object.entries(r.evals)) {
        run.evals[e] = f === null ? null : checkFlags(`${where}.evals.${e}`, f);
      }
    }
    if (r.evalOnly !== undefined && typeof r.evalOnly !== "boolean") {
      throw new StudyError(`${where}: "evalOnly" must be true or false`);
    }
    run.evalOnly = r.evalOnly === true;
    if (r.random !== undefined) {
      if (typeof r.random === "boolean") run.random = r.random;
      else run.random = checkFlags(`${where}.random`, r.random);
    }
    if (run.evalOnly && (run.random === undefined || run.random === false)) {
      throw new StudyError(
        `${where}: an "evalOnly" run evaluates a random-init model: add "random": true ` +
          `(the base training architecture) or "random": {"arch": …, "patchSize": …, "imgSize": …}`,
      );
    }
    if (!run.evalOnly && run.random !== undefined && run.random !== false) {
      throw new StudyError(`${where}: "random" needs "evalOnly": true (no training)`);
    }
    if (run.evalOnly && run.train !== undefined) {
      throw new StudyError(`${where}: an "evalOnly" run has no training; remove "train"`);
    }
    return run;
  });
  if (!isRecord(table)) throw new StudyError(`${file}: "table" must be an object (${HINTS.table})`);
  checkFields(`${file}: table`, table, TABLE_FIELDS);
  if (!Array.isArray(table.columns) || table.columns.length === 0) {
    throw new StudyError(`${file}: table.columns must be a non-empty list (${HINTS.table})`);
  }
  const columns = table.columns.map((c, i): StudyColumn => {
    const where = `${file}: table.columns[${i}]`;
    if (!isRecord(c)) throw new StudyError(`${where} must be an object {"metric": "knn.top1"}`);
    checkFields(where, c, COLUMN_FIELDS);
    if (!("metric" in c)) throw new StudyError(`${where}: missing field "metric"`);
    checkMetric(where, c.metric);
    if (c.label !== undefined && typeof c.label !== "string") {
      throw new StudyError(`${where}: "label" must be a string`);
    }
    if (c.digits !== undefined && !(Number.isSafeInteger(c.digits) && (c.digits as number) >= 0)) {
      throw new StudyError(`${where}: "digits" must be an integer ≥ 0, got ${show(c.digits)}`);
    }
    if (c.scale !== undefined && !(typeof c.scale === "number" && Number.isFinite(c.scale))) {
      throw new StudyError(`${where}: "scale" must be a number, got ${show(c.scale)}`);
    }
    return c as unknown as StudyColumn;
  });
  const out: StudyFile = {
    name,
    version: version as number,
    title,
    seeds: seeds as number[],
    base: baseOut,
    runs: runsOut,
    table: { columns },
  };
  if (description !== undefined) out.description = description as string;
  if (plot !== undefined) out.plot = checkPlot(file, plot, columns);
  return out;
}

function checkSeeds(where: string, seeds: unknown): void {
  if (
    !Array.isArray(seeds) || seeds.length === 0 ||
    !seeds.every((s) => Number.isSafeInteger(s) && s >= 0)
  ) {
    throw new StudyError(`${where} must be a non-empty list of integers ≥ 0, got ${show(seeds)}`);
  }
  if (new Set(seeds).size !== seeds.length) {
    throw new StudyError(`${where} repeats a seed: ${show(seeds)}`);
  }
}

function checkMetric(where: string, m: unknown): void {
  if (typeof m !== "string" || !/^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)+$/.test(m)) {
    throw new StudyError(
      `${where}: "metric" must be a path STEP.FIELD such as "knn.top1", "seg.miou" or ` +
        `"train.final.loss", got ${show(m)}`,
    );
  }
}

function checkPlot(file: string, plot: unknown, columns: StudyColumn[]): StudyPlot {
  const where = `${file}: plot`;
  if (!isRecord(plot)) throw new StudyError(`${where} must be an object`);
  checkFields(where, plot, PLOT_FIELDS);
  const p = plot as StudyPlot;
  if (p.kind !== undefined && p.kind !== "bar" && p.kind !== "line") {
    throw new StudyError(`${where}.kind must be "bar" or "line", got ${show(p.kind)}`);
  }
  if (p.metrics !== undefined) {
    if (!Array.isArray(p.metrics) || p.metrics.length === 0) {
      throw new StudyError(`${where}.metrics must be a non-empty list of table metrics`);
    }
    const known = columns.map((c) => c.metric);
    for (const m of p.metrics) {
      if (!known.includes(m)) {
        throw new StudyError(
          `${where}.metrics: "${m}" is not a table column${suggest(String(m), known)}; columns: ${
            known.join(", ")
          }`,
        );
      }
    }
  }
  if (p.kind === "line") {
    if (typeof p.x !== "string" || !/^train\.[A-Za-z][A-Za-z0-9-]*$/.test(p.x)) {
      throw new StudyError(
        `${where}: a line plot needs "x": "train.FLAG" (e.g. "train.numRef"), got ${show(p.x)}`,
      );
    }
  } else if (p.x !== undefined) {
    throw new StudyError(`${where}: "x" belongs to line plots ("kind": "line")`);
  }
  if (
    p.file !== undefined && (typeof p.file !== "string" || !/^[A-Za-z0-9_.-]+\.png$/.test(p.file))
  ) {
    throw new StudyError(`${where}.file must be a file name ending in .png, got ${show(p.file)}`);
  }
  for (const k of ["title", "xLabel", "yLabel"] as const) {
    if (p[k] !== undefined && typeof p[k] !== "string") {
      throw new StudyError(`${where}.${k} must be a string`);
    }
  }
  if (p.logX !== undefined && typeof p.logX !== "boolean") {
    throw new StudyError(`${where}.logX must be true or false`);
  }
  return p;
}

/** Checks `--seeds` / `--only` against a study; returns the runs kept. */
export function selectRuns(file: string, study: StudyFile, only?: string[]): StudyRun[] {
  if (!only) return study.runs;
  const known = study.runs.map((r) => r.name);
  for (const n of only) {
    if (!known.includes(n)) {
      throw new StudyError(
        `--only ${n}: ${file} has no run "${n}"${suggest(n, known)}; runs: ${known.join(", ")}`,
      );
    }
  }
  return study.runs.filter((r) => only.includes(r.name));
}

/** Parses a `--seeds` value such as "0,1,2". */
export function parseSeeds(text: string): number[] {
  const seeds = text.split(",").map((s) => s.trim()).filter((s) => s !== "").map(Number);
  try {
    checkSeeds("--seeds", seeds);
  } catch {
    throw new StudyError(
      `--seeds must be a comma-separated list of distinct integers ≥ 0, got "${text}"`,
    );
  }
  return seeds;
}

/** Mean, sample standard deviation (n − 1; NaN for n < 2) and count of the finite values. */
export function summarize(values: readonly number[]): { mean: number; std: number; n: number } {
  const v = values.filter(Number.isFinite);
  const n = v.length;
  if (n === 0) return { mean: NaN, std: NaN, n: 0 };
  const mean = v.reduce((a, b) => a + b, 0) / n;
  const std = n > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1)) : NaN;
  return { mean, std, n };
}

/**
 * `mean ± std` with `digits` decimals: "54.3 ± 1.2"; one value: "54.3 ± —"; none: "n/a".
 * `n` is appended as " (n=2)" when it differs from `expected`.
 */
export function formatMeanStd(
  s: { mean: number; std: number; n: number },
  digits = 1,
  expected?: number,
): string {
  if (s.n === 0 || !Number.isFinite(s.mean)) return "n/a";
  const m = s.mean.toFixed(digits);
  const sd = s.n > 1 && Number.isFinite(s.std) ? s.std.toFixed(digits) : "—";
  const tail = expected !== undefined && s.n !== expected ? ` (n=${s.n})` : "";
  return `${m} ± ${sd}${tail}`;
}

/** Quotes an argument for a POSIX shell when it needs it (for printed commands). */
export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}
