/**
 * Command-line plumbing shared by the scripts (a private module of the scripts layer: the
 * leading underscore marks it as no entry point of its own).
 *
 * The conventions it implements, one place for all scripts:
 * - flags are a {@link FlagTable} in `--help` order; {@link readFlags} parses them strictly (no
 *   positionals, unknown flags are errors) and {@link helpText} renders them with defaults;
 * - bad flags or input throw {@link UsageError} with a message naming the flag or file (the
 *   value parsers here do: `--epochs must be a positive integer, got "0"`);
 * - {@link runMain} maps errors to exit codes: 2 for usage errors (`NAME: error: …` and a hint
 *   to run --help), 1 for other failures (`NAME: failed: ` and the stack);
 * - progress goes to stderr through {@link logger} (`NAME: …`); the last stdout line is the
 *   script's JSON result.
 *
 * It also holds the flag readers several scripts share: a frozen backbone
 * ({@link readBackboneFlags}, {@link loadBackboneFromFlags}), an input image or data-set example
 * ({@link readImageOrData}), a fashion-scenes set ({@link readSceneFlags}, {@link openScenes}),
 * and output paths ({@link checkOutputFile}, {@link checkOutputDir}).
 *
 * ```ts ignore
 * const NAME = "my_script";
 * const FLAGS = { "epochs": { arg: "N", type: "string", default: "3", help: "epochs" },
 *   "help": COMMON_FLAGS.help } satisfies FlagTable;
 * async function main(args: string[]): Promise<number> {
 *   const v = readFlags(FLAGS, args);
 *   if (v === null) return printHelp(FLAGS, [`Usage: deno run -A scripts/${NAME}.ts [flags]`]);
 *   const epochs = positiveInt("epochs", v.get("epochs"));
 *   // …
 *   return 0;
 * }
 * if (import.meta.main) await runMain(NAME, main);
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dirname } from "node:path";
import {
  ARCHS,
  checkMaskMode,
  cuda,
  DatasetError,
  type Device,
  FashionScenes,
  type FashionScenesOptions,
  type MaskMode,
} from "../mod.ts";
import { EvalError, loadBackbone, type LoadedBackbone } from "../lib/eval/backbone.ts";

/** Bad flags or input: {@link runMain} reports it with exit code 2. */
export class UsageError extends Error {}

/** One flag: how it parses and how `--help` shows it. */
export interface Flag {
  /** `"string"` flags take a value, `"boolean"` flags none */
  type: "string" | "boolean";
  /** the value's placeholder in `--help` (default `VALUE`) */
  arg?: string;
  /** the value when the flag is absent, as text (parsed as a given value would be) */
  default?: string;
  /** what the flag does */
  help: string;
  /** what `--help` shows as the default instead of {@link Flag.default} (e.g. `"required"`) */
  shown?: string;
}

/** A script's flags by name (without the leading `--`), in `--help` order. */
export type FlagTable = Record<string, Flag>;

/** The backbone a script builds without --weights (--img-size defaults per script). */
export const RANDOM_BACKBONE = { arch: "vit_small", patchSize: 16 } as const;

/** Flags that several scripts share word for word (pick them into a table). */
export const COMMON_FLAGS = {
  "which": {
    arg: "NAME",
    type: "string",
    default: "teacher",
    help: "teacher or student: which backbone of a run directory or checkpoint",
  },
  "arch": {
    arg: "NAME",
    type: "string",
    help: `architecture (${Object.keys(ARCHS).join(", ")}); with --weights it is read from the ` +
      "run / the weights and only checked",
    shown: `from the weights; ${RANDOM_BACKBONE.arch} for random init`,
  },
  "patch-size": {
    arg: "N",
    type: "string",
    help: "patch side in pixels (as --arch)",
    shown: `from the weights; ${RANDOM_BACKBONE.patchSize} for random init`,
  },
  "threads": {
    arg: "N",
    type: "string",
    default: "0",
    help: "libtorch intra-op threads (0: the library default)",
  },
  "limit-train": {
    arg: "N",
    type: "string",
    help: "use only the first N training examples (smoke tests)",
    shown: "all",
  },
  "limit-val": {
    arg: "N",
    type: "string",
    help: "use only the first N validation examples (smoke tests)",
    shown: "all",
  },
  "device": { arg: "DEVICE", type: "string", default: "cpu", help: "cpu, cuda or cuda:N" },
  "quiet": { type: "boolean", help: "no progress lines on stderr", shown: "false" },
  "help": { type: "boolean", help: "print this help and exit", shown: "false" },
} as const satisfies FlagTable;

/**
 * The `--help` text: `intro` (usage lines and a description), then every flag with its
 * placeholder, its help and its default (`shown`, else `default`; an empty default shows as
 * `""`), then the exit codes.
 */
export function helpText(flags: FlagTable, intro: readonly string[]): string {
  const lines = [...intro, "", "Flags:"];
  for (const [name, f] of Object.entries(flags)) {
    const value = f.type === "boolean" ? "" : ` ${f.arg ?? "VALUE"}`;
    const def = f.shown ?? (f.default === "" ? '""' : f.default);
    lines.push(`  --${name}${value}`, `      ${f.help} (default: ${def})`);
  }
  lines.push("", "Exit codes: 0 done, 2 bad flags or input, 1 other failures.");
  return lines.join("\n");
}

/** Prints the `--help` text ({@link helpText}) to stdout; returns exit code 0. */
export function printHelp(flags: FlagTable, intro: readonly string[]): number {
  console.log(helpText(flags, intro));
  return 0;
}

/** The parsed flags of a {@link FlagTable}, read by name (typos in names do not type-check). */
export class FlagValues<K extends string> {
  readonly #flags: Record<K, Flag>;
  readonly #values: Record<string, string | boolean | undefined>;

  /** Wraps `values` (as node:util's parseArgs returns them) of the flags `flags`. */
  constructor(flags: Record<K, Flag>, values: Record<string, string | boolean | undefined>) {
    this.#flags = flags;
    this.#values = values;
  }

  /** The value given for string flag `name`, or null when absent. */
  str(name: K): string | null {
    const v = this.#values[name];
    return typeof v === "string" ? v : null;
  }

  /** The value given for string flag `name`, else its default (a flag without one throws). */
  get(name: K): string {
    const v = this.str(name) ?? this.#flags[name].default;
    if (v === undefined) throw new Error(`--${name} has no default: check given() first`);
    return v;
  }

  /** Whether string flag `name` was given a value. */
  given(name: K): boolean {
    return this.str(name) !== null;
  }

  /** Whether boolean flag `name` was given. */
  bool(name: K): boolean {
    return this.#values[name] === true;
  }

  /**
   * The value of a path-like string flag, or null when absent; an empty value is a
   * {@link UsageError} `--NAME needs WHAT`.
   */
  path(name: K, what = "a path"): string | null {
    const v = this.str(name);
    if (v === "") throw new UsageError(`--${name} needs ${what}`);
    return v;
  }
}

/**
 * Parses `args` against `flags` (strict: unknown flags, values for boolean flags and
 * positionals are {@link UsageError}s). Returns null when `--help` was given.
 */
export function readFlags<K extends string>(
  flags: Record<K, Flag>,
  args: string[],
): FlagValues<K> | null {
  const options: Record<string, { type: "string" | "boolean" }> = {};
  for (const [name, f] of Object.entries<Flag>(flags)) options[name] = { type: f.type };
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args, options, strict: true, allowPositionals: false }));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (values.help === true) return null;
  return new FlagValues(flags, values);
}

// ---------------------------------------------------------------------------------------------
// Values: each parser names the flag in its error

/** `value` as an integer ≥ 1 (digits only), else `--FLAG must be a positive integer`. */
export function positiveInt(flag: string, value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) {
    throw new UsageError(`--${flag} must be a positive integer, got "${value}"`);
  }
  return Number(value);
}

/** `value` as an integer ≥ 0 (digits only), else `--FLAG must be a non-negative integer`. */
export function nonNegativeInt(flag: string, value: string): number {
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) {
    throw new UsageError(`--${flag} must be a non-negative integer, got "${value}"`);
  }
  return Number(value);
}

/**
 * `value` as an integer (an optional minus and digits) ≥ `min`, else `--FLAG must be an
 * integer` (with ` ≥ MIN` when `min` is finite).
 */
export function integer(flag: string, value: string, min = -Infinity): number {
  if (!/^-?\d+$/.test(value) || !Number.isSafeInteger(Number(value)) || Number(value) < min) {
    throw new UsageError(
      `--${flag} must be an integer${min > -Infinity ? ` ≥ ${min}` : ""}, got "${value}"`,
    );
  }
  return Number(value);
}

/**
 * `value` as a finite number for which `ok` holds, else `--FLAG must be WHAT` (e.g.
 * `number("lr", v, (x) => x > 0, "a positive number")`).
 */
export function number(
  flag: string,
  value: string,
  ok: (v: number) => boolean = () => true,
  what = "a number",
): number {
  const v = Number(value);
  if (value.trim() === "" || !Number.isFinite(v) || !ok(v)) {
    throw new UsageError(`--${flag} must be ${what}, got "${value}"`);
  }
  return v;
}

/** `--arch`: one of {@link ARCHS}. */
export function checkArch(arch: string): string {
  if (!ARCHS[arch]) {
    throw new UsageError(
      `--arch: unknown architecture "${arch}"; expected one of ${Object.keys(ARCHS).join(", ")}`,
    );
  }
  return arch;
}

/** `--device`: cpu, cuda or cuda:N (whether CUDA is there is {@link checkDeviceAvailable}). */
export function checkDevice(device: string): Device {
  if (!/^(cpu|cuda(:\d+)?)$/.test(device)) {
    throw new UsageError(`--device must be cpu, cuda or cuda:N, got "${device}"`);
  }
  return device as Device;
}

/** `--mask-mode`: one of the reference-token attention masks (MASK_MODES). */
export function checkMaskModeFlag(mode: string): MaskMode {
  return usageOn([Error], "", () => checkMaskMode(mode, "--mask-mode"));
}

/** `--which`: the teacher or the student backbone of a run. */
export function checkWhich(which: string): "teacher" | "student" {
  if (which !== "teacher" && which !== "student") {
    throw new UsageError(`--which must be teacher or student, got "${which}"`);
  }
  return which;
}

/** A CUDA `--device` needs a libtorch with CUDA. */
export function checkDeviceAvailable(device: Device): void {
  if (device !== "cpu" && !cuda.isAvailable()) {
    throw new UsageError(`--device ${device}: CUDA is not available in this libtorch`);
  }
}

// ---------------------------------------------------------------------------------------------
// A frozen backbone: --weights, --which, --arch, --patch-size, --img-size, --seed

/** The backbone flags' values (null: not given). */
export interface BackboneFlags {
  /** a run directory, a bare ViT file or a checkpoint; null: random init */
  weights: string | null;
  /** which backbone of a run directory or checkpoint */
  which: "teacher" | "student";
  /** the architecture; with weights only checked against them */
  arch: string | null;
  /** the patch side; with weights only checked against them */
  patchSize: number | null;
  /** the trained image side (positional grid × patch); with weights only checked */
  imgSize: number | null;
  /** random init: a learnable reference token */
  learnableRefToken: boolean;
  /** the random initialisation's seed */
  seed: number;
}

/**
 * Reads the backbone flags (`--weights`, `--which`, `--arch`, `--patch-size`, `--img-size`,
 * `--learnable-ref-token`, `--seed`), checking each and that `--which student` has weights and
 * `--img-size` is a multiple of `--patch-size`.
 */
export function readBackboneFlags(
  v: FlagValues<
    "weights" | "which" | "arch" | "patch-size" | "img-size" | "learnable-ref-token" | "seed"
  >,
): BackboneFlags {
  const weights = v.path("weights");
  const which = checkWhich(v.get("which"));
  if (weights === null && which === "student") {
    throw new UsageError("--which student needs --weights (a run directory or checkpoint)");
  }
  const arch = v.given("arch") ? checkArch(v.get("arch")) : null;
  const patchSize = v.given("patch-size") ? positiveInt("patch-size", v.get("patch-size")) : null;
  const imgSize = v.given("img-size") ? positiveInt("img-size", v.get("img-size")) : null;
  if (patchSize !== null && imgSize !== null && imgSize % patchSize !== 0) {
    throw new UsageError(`--img-size ${imgSize} is not a multiple of --patch-size ${patchSize}`);
  }
  const seed = integer("seed", v.get("seed"));
  return {
    weights,
    which,
    arch,
    patchSize,
    imgSize,
    learnableRefToken: v.bool("learnable-ref-token"),
    seed,
  };
}

/**
 * The backbone the flags choose, frozen on `device`: from `weights` (its shape read from them;
 * the shape flags given must fit: an EvalError becomes a {@link UsageError} naming --weights),
 * or randomly initialised from `seed` with {@link RANDOM_BACKBONE}'s arch and patch size and
 * `randomImgSize` where the flags give none.
 */
export function loadBackboneFromFlags(
  b: {
    weights?: string | null;
    which: "teacher" | "student";
    arch?: string | null;
    patchSize?: number | null;
    imgSize?: number | null;
    learnableRefToken?: boolean;
    seed: number;
  },
  randomImgSize: number,
  device: Device,
): Promise<LoadedBackbone> {
  const random = b.weights == null;
  return usageOn([EvalError], random ? "" : "--weights: ", () =>
    loadBackbone({
      weights: b.weights ?? undefined,
      which: b.which,
      arch: b.arch ?? (random ? RANDOM_BACKBONE.arch : undefined),
      patchSize: b.patchSize ?? (random ? RANDOM_BACKBONE.patchSize : undefined),
      imgSize: b.imgSize ?? (random ? randomImgSize : undefined),
      learnableRefToken: random ? b.learnableRefToken : undefined,
      seed: b.seed,
      device,
    }));
}

// ---------------------------------------------------------------------------------------------
// An input image: --image PATH, or an example of a data set (--data NAME and its flags)

/**
 * Which input the flags name: `--image PATH` or `--data NAME`, exactly one of them; the flags
 * `dataFlags` (--index, --split, …) are errors without --data.
 */
export function readImageOrData<K extends string>(
  v: FlagValues<"image" | "data" | K>,
  dataFlags: readonly K[],
): { image: string; data?: undefined } | { data: string; image?: undefined } {
  const image = v.str("image");
  const data = v.str("data");
  if (data === null) {
    if (image === null || image === "") {
      throw new UsageError("--image PATH (or --data fashion-scenes --index I) is required");
    }
    const stray = dataFlags.find((k) => v.given(k));
    if (stray !== undefined) throw new UsageError(`--${stray} needs --data`);
    return { image };
  }
  if (image !== null) throw new UsageError("give --image or --data, not both");
  return { data };
}

// ---------------------------------------------------------------------------------------------
// Scenes of the generated fashion-scenes set: --split, --scene-seed, --scene-size, --count

/** The flags that name a fashion-scenes set (read by {@link readSceneFlags}). */
export const SCENE_FLAGS = ["split", "count", "scene-seed", "scene-size"] as const;

/** The fashion-scenes set the flags {@link SCENE_FLAGS} name. */
export function readSceneFlags(
  v: FlagValues<typeof SCENE_FLAGS[number]>,
): FashionScenesOptions {
  const split = v.get("split");
  if (split !== "train" && split !== "val") {
    throw new UsageError(`--split must be train or val, got "${split}"`);
  }
  const scenes: FashionScenesOptions = {
    split,
    seed: integer("scene-seed", v.get("scene-seed"), 0),
    size: integer("scene-size", v.get("scene-size"), 8),
  };
  if (v.given("count")) scenes.count = integer("count", v.get("count"), 1);
  return scenes;
}

/**
 * Opens the fashion-scenes set (generating it once if it is not cached) and checks that every
 * `--index` is in it.
 */
export async function openScenes(
  options: FashionScenesOptions,
  indices: readonly number[],
): Promise<FashionScenes> {
  const ds = await usageOn(
    [RangeError, DatasetError],
    "--data fashion-scenes: ",
    () => FashionScenes.open(options),
  );
  const bad = indices.find((i) => i >= ds.length);
  if (bad !== undefined) {
    throw new UsageError(
      `--index ${bad} is out of range: the ${ds.options.split} set has ${ds.length} scenes ` +
        `(0..${ds.length - 1}; --count sets its size)`,
    );
  }
  return ds;
}

// ---------------------------------------------------------------------------------------------
// Paths

/** `Deno.stat(path)`, or null when nothing is there. */
export async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** A file that flag `--FLAG` will write: not a directory, in a directory that exists. */
export async function checkOutputFile(flag: string, path: string): Promise<void> {
  const st = await statOrNull(path);
  if (st?.isDirectory) throw new UsageError(`--${flag}: ${path} is a directory`);
  const dir = dirname(path);
  const d = await statOrNull(dir);
  if (d === null || !d.isDirectory) {
    throw new UsageError(`--${flag}: directory ${dir} does not exist`);
  }
}

/** A directory that flag `--FLAG` may create: absent, or a directory. */
export async function checkOutputDir(flag: string, path: string): Promise<void> {
  const st = await statOrNull(path);
  if (st !== null && !st.isDirectory) {
    throw new UsageError(`--${flag}: ${path} exists and is not a directory`);
  }
}

// ---------------------------------------------------------------------------------------------
// Errors, logging, the entry point

/** An error class, for {@link usageOn}. */
export type ErrorClass = abstract new (...args: never[]) => Error;

/**
 * Runs `fn`; an error of one of `kinds` it throws (or its promise rejects with) becomes a
 * {@link UsageError} with message `prefix + message` (e.g. `usageOn([EvalError], "--weights: ",
 * () => loadBackbone(…))`). Other errors pass unchanged.
 */
export function usageOn<T>(kinds: readonly ErrorClass[], prefix: string, fn: () => T): T {
  const map = (e: unknown): never => {
    if (kinds.some((k) => e instanceof k)) throw new UsageError(prefix + (e as Error).message);
    throw e;
  };
  try {
    const r = fn();
    return (r instanceof Promise ? r.catch(map) : r) as T;
  } catch (e) {
    return map(e);
  }
}

/** A progress logger: `log(msg)` writes `NAME: msg` to stderr. */
export function logger(name: string): (msg: string) => void {
  return (msg) => console.error(`${name}: ${msg}`);
}

/**
 * Runs `main(args)` and returns the exit code: main's own, 2 for a {@link UsageError} or an
 * error `isUsage` accepts (printed as `NAME: error: MESSAGE` and a hint to run --help), 1 for
 * anything else (`NAME: failed: ` and the stack).
 */
export async function exitCode(
  name: string,
  main: (args: string[]) => Promise<number>,
  args: string[],
  isUsage: (e: unknown) => boolean = () => false,
): Promise<number> {
  try {
    return await main(args);
  } catch (e) {
    if (e instanceof UsageError || isUsage(e)) {
      console.error(`${name}: error: ${(e as Error).message}\nRun with --help to list the flags.`);
      return 2;
    }
    console.error(`${name}: failed: ${e instanceof Error ? (e.stack ?? e.message) : e}`);
    return 1;
  }
}

/**
 * A script's entry point: {@link exitCode} of `main(Deno.args)`, then exits with it
 * (`if (import.meta.main) await runMain(NAME, main);`).
 */
export async function runMain(
  name: string,
  main: (args: string[]) => Promise<number>,
  isUsage?: (e: unknown) => boolean,
): Promise<never> {
  Deno.exit(await exitCode(name, main, Deno.args, isUsage));
}
