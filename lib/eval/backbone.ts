/**
 * The frozen backbone of every evaluation: a ViT loaded from a training run directory, a bare
 * ViT weights file or a training checkpoint (teacher by default), or randomly initialised from
 * a seed (the random-init baseline). The backbone is in eval mode, requires no gradients, and
 * carries a fingerprint of its exact weights for feature caches.
 *
 * ```ts
 * const b = await loadBackbone({ weights: "runs/x" }); // runs/x/teacher_backbone.safetensors
 * const r = await loadBackbone({ arch: "vit_small", patchSize: 16, imgSize: 224 }); // random init
 * ```
 *
 * @module
 */
import { createHash } from "node:crypto";
import { type Device, freeAll, Generator, loadSafetensors, type Tensor } from "../torch/mod.ts";
import {
  ARCHS,
  createViT,
  describeViTStateDict,
  selectPrefix,
  splitPosEmbed,
  StateDictError,
  type VisionTransformer,
} from "../nn/mod.ts";

/**
 * Bad input of an evaluation (a missing or unreadable file, weights that do not fit, a cache
 * of another model, labels out of range, …). The message names the file or option at fault
 * and what to do; scripts report it with exit code 2.
 */
export class EvalError extends Error {
  /** An evaluation input error. */
  constructor(message: string) {
    super(message);
    this.name = "EvalError";
  }
}

/** Options of {@link loadBackbone}. */
export interface BackboneOptions {
  /**
   * Where the weights come from:
   * - a training run directory: `OUT/teacher_backbone.safetensors` (or
   *   `OUT/checkpoint.safetensors` for `which: "student"`), with arch / patchSize / imgSize /
   *   learnableRefToken read from `OUT/config.json`;
   * - a bare ViT file (`teacher_backbone.safetensors`, or any file with plain ViT keys,
   *   including official DINO weights with one `pos_embed`);
   * - a training `checkpoint.safetensors` (keys `teacher.backbone.*`, or `student.backbone.*`
   *   with `which: "student"`).
   *
   * Absent: a randomly initialised ViT from `seed` (the random-init baseline; with the same
   * seed it equals the initial student backbone of a training run).
   */
  weights?: string;
  /** which backbone of a run directory or training checkpoint (default "teacher") */
  which?: "teacher" | "student";
  /**
   * architecture name (see ARCHS). Required for random init; for a file it is read from the
   * run's config.json, the checkpoint's metadata, or the weights themselves — when given as
   * well and they disagree, loading fails with both named.
   */
  arch?: string;
  /** patch side (as `arch`: required for random init, else checked against the weights) */
  patchSize?: number;
  /** trained image side, i.e. positional grid × patch (as `arch`) */
  imgSize?: number;
  /** a learnable reference content token (as `arch`; default false for random init) */
  learnableRefToken?: boolean;
  /**
   * use exactly the keys under this prefix ("" = bare ViT keys) instead of choosing by file
   * layout and `which` (for tools with a `--key-prefix` flag)
   */
  keyPrefix?: string;
  /** seed of the random initialisation (default 0) */
  seed?: number;
  /** where the model lives (default "cpu") */
  device?: Device;
}

/** A loaded, frozen backbone. Free it with {@link LoadedBackbone.free} (or `vit.free()`). */
export interface LoadedBackbone {
  /** the ViT, in eval mode, its parameters requiring no gradients */
  vit: VisionTransformer;
  /** architecture name */
  arch: string;
  /** patch side */
  patchSize: number;
  /** trained image side */
  imgSize: number;
  /** whether the ViT has a learnable reference content token */
  learnableRefToken: boolean;
  /** the device the ViT lives on */
  device: Device;
  /** human description: "random init vit_small/16 (seed 0)" or the weights file and which */
  source: string;
  /**
   * stable id of exactly these weights, for feature caches: sha-256 (hex) over the sorted
   * state-dict names, shapes, dtypes and bytes, or `random-init:<arch>/<patch>/<imgSize>:seed<seed>`
   */
  fingerprint: string;
  /** the weights file read (null for random init) */
  file: string | null;
  /** the key prefix used inside that file ("" for a bare ViT file) */
  keyPrefix: string;
  /** frees the ViT's parameters */
  free(): void;
}

const TEACHER_BACKBONE = "teacher_backbone.safetensors";
const CHECKPOINT = "checkpoint.safetensors";
const CONFIG = "config.json";
const MARKER = "patch_embed.proj.weight";

interface Shape {
  arch?: string;
  patchSize?: number;
  imgSize?: number;
  learnableRefToken?: boolean;
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new EvalError(`${path}: cannot read it: ${(e as Error).message}`);
  }
}

function checkOptions(opts: BackboneOptions): void {
  if (opts.which !== undefined && opts.which !== "teacher" && opts.which !== "student") {
    throw new EvalError(`which must be "teacher" or "student", got "${opts.which}"`);
  }
  if (opts.arch !== undefined && !ARCHS[opts.arch]) {
    throw new EvalError(
      `arch: unknown architecture "${opts.arch}"; expected one of ${Object.keys(ARCHS).join(", ")}`,
    );
  }
  for (const k of ["patchSize", "imgSize"] as const) {
    const v = opts[k];
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) {
      throw new EvalError(`${k} must be a positive integer, got ${v}`);
    }
  }
  if (
    opts.patchSize !== undefined && opts.imgSize !== undefined &&
    opts.imgSize % opts.patchSize !== 0
  ) {
    throw new EvalError(`imgSize ${opts.imgSize} is not a multiple of patchSize ${opts.patchSize}`);
  }
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed)) throw new EvalError(`seed must be an integer, got ${seed}`);
}

/** Reads a run's config.json: the fields that shape the ViT. */
async function readRunConfig(path: string): Promise<Shape> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new EvalError(
        `${path}: not found; a training run directory holds config.json next to ` +
          `${TEACHER_BACKBONE} — give the weights file itself (and --arch, --patch-size, ` +
          `--img-size if needed)`,
      );
    }
    throw new EvalError(`${path}: cannot read it: ${(e as Error).message}`);
  }
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(text);
  } catch (e) {
    throw new EvalError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  return shapeFromConfig(cfg, path);
}

function shapeFromConfig(cfg: unknown, where: string): Shape {
  if (cfg === null || typeof cfg !== "object") {
    throw new EvalError(`${where}: expected a training configuration object`);
  }
  const c = cfg as Record<string, unknown>;
  const out: Shape = {};
  if (typeof c.arch === "string") out.arch = c.arch;
  if (typeof c.patchSize === "number") out.patchSize = c.patchSize;
  if (typeof c.imgSize === "number" && c.imgSize > 0) out.imgSize = c.imgSize;
  if (typeof c.learnableRefToken === "boolean") out.learnableRefToken = c.learnableRefToken;
  if (out.arch === undefined || out.patchSize === undefined || out.imgSize === undefined) {
    throw new EvalError(
      `${where}: the training configuration lacks arch, patchSize or imgSize`,
    );
  }
  return out;
}

/** What a bare ViT state dict says about its shape (undefined where it cannot tell). */
function shapeFromStateDict(sd: Record<string, Tensor>): Shape {
  const w = sd[MARKER];
  if (!w || w.ndim !== 4) return {};
  const [D, , p] = w.shape;
  const depth = new Set(
    Object.keys(sd).map((k) => /^blocks\.(\d+)\./.exec(k)?.[1]).filter((x) => x !== undefined),
  ).size;
  const arch = Object.entries(ARCHS).find(([, a]) => a.embedDim === D && a.depth === depth)?.[0];
  const pos = sd["patch_pos_embed"];
  let imgSize: number | undefined;
  if (pos && pos.ndim === 3) {
    const g = Math.round(Math.sqrt(pos.size(1)));
    if (g * g === pos.size(1)) imgSize = g * p;
  }
  return { arch, patchSize: p, imgSize, learnableRefToken: "ref_learn_token" in sd };
}

const OPTION_FLAG: Record<keyof Shape, string> = {
  arch: "arch (--arch)",
  patchSize: "patchSize (--patch-size)",
  imgSize: "imgSize (--img-size)",
  learnableRefToken: "learnableRefToken (--learnable-ref-token)",
};

/** Merges the given options with what the run says; a disagreement is an error. */
function reconcile(given: Shape, found: Shape, where: string): Shape {
  const out: Shape = { ...found };
  for (const k of Object.keys(OPTION_FLAG) as (keyof Shape)[]) {
    const g = given[k];
    if (g === undefined) continue;
    const f = found[k];
    if (f !== undefined && f !== g) {
      throw new EvalError(
        `${OPTION_FLAG[k]} is ${g} but ${where} says ${f}: leave the option out (it is read ` +
          `from there) or give the weights the option describes`,
      );
    }
    (out as Record<string, unknown>)[k] = g;
  }
  return out;
}

/** sha-256 over the sorted names, dtypes, shapes and bytes of a state dict. */
export function stateDictFingerprint(sd: Record<string, Tensor>): string {
  const h = createHash("sha256");
  const enc = new TextEncoder();
  for (const name of Object.keys(sd).sort()) {
    const t = sd[name];
    h.update(enc.encode(`${name}\u0000${t.dtype}\u0000${t.shape.join(",")}\u0000`));
    const cpu = t.device === "cpu" ? t.contiguous() : t.to("cpu").contiguous();
    try {
      h.update(cpu.toBytes());
    } finally {
      cpu.free();
    }
  }
  return h.digest("hex");
}

function freeze(vit: VisionTransformer, device: Device): VisionTransformer {
  if (device !== "cpu") vit.to(device);
  for (const p of vit.parameters()) if (p.requiresGrad) p.requiresGrad_(false);
  return vit.eval();
}

/** The first `n` lines of `text`, and how many were left out. */
function clip(text: string, n: number): string {
  const lines = text.split("\n");
  if (lines.length <= n) return text;
  return [...lines.slice(0, n), `  … ${lines.length - n} more lines`].join("\n");
}

/** A hint naming the prefixes under which a file holds ViT weights (or ""). */
function prefixHint(tensors: Record<string, Tensor>): string {
  const prefixes = Object.keys(tensors).filter((k) => k.endsWith(MARKER) && k !== MARKER)
    .map((k) => k.slice(0, -MARKER.length));
  if (prefixes.length === 0) return "";
  return `\nhint: the file holds ViT weights under ${
    prefixes.map((p) => `"${p}"`).join(", ")
  }: pick one (which: teacher / student, or e.g. --key-prefix ${prefixes[0]})`;
}

function describe(s: Shape): string {
  return `${s.arch ?? "?"}/${s.patchSize ?? "?"} at ${s.imgSize ?? "?"} px`;
}

/**
 * Loads the frozen backbone an evaluation uses (see {@link BackboneOptions}). Errors are
 * {@link EvalError}s naming the file: not found, not a safetensors file, no ViT under the
 * expected keys, weights of another architecture than asked for (both named), a run
 * configuration that disagrees with the options.
 */
export async function loadBackbone(opts: BackboneOptions = {}): Promise<LoadedBackbone> {
  checkOptions(opts);
  const which = opts.which ?? "teacher";
  const device = opts.device ?? "cpu";
  const given: Shape = {
    arch: opts.arch,
    patchSize: opts.patchSize,
    imgSize: opts.imgSize,
    learnableRefToken: opts.learnableRefToken,
  };

  if (opts.weights === undefined) {
    const seed = opts.seed ?? 0;
    const missing = (["arch", "patchSize", "imgSize"] as const).filter((k) =>
      given[k] === undefined
    );
    if (missing.length) {
      throw new EvalError(
        `a randomly initialised backbone needs ${missing.map((k) => OPTION_FLAG[k]).join(", ")}` +
          ` (or give weights)`,
      );
    }
    const g = new Generator(seed);
    let vit: VisionTransformer;
    try {
      vit = createViT(given.arch!, {
        patchSize: given.patchSize,
        imgSize: given.imgSize,
        learnableRefToken: given.learnableRefToken ?? false,
        generator: g,
      });
    } finally {
      g[Symbol.dispose]();
    }
    freeze(vit, device);
    return {
      vit,
      arch: given.arch!,
      patchSize: given.patchSize!,
      imgSize: given.imgSize!,
      learnableRefToken: given.learnableRefToken ?? false,
      device,
      source: `random init ${given.arch}/${given.patchSize} (seed ${seed})`,
      fingerprint: `random-init:${given.arch}/${given.patchSize}/${given.imgSize}:seed${seed}` +
        (given.learnableRefToken ? ":learnable-ref" : ""),
      file: null,
      keyPrefix: "",
      free: () => vit.free(),
    };
  }

  const weights = opts.weights;
  if (weights === "") throw new EvalError("weights: an empty path was given");
  const st = await statOrNull(weights);
  if (st === null) {
    throw new EvalError(
      `${weights}: not found; give a training run directory, its ${TEACHER_BACKBONE}, a ` +
        `${CHECKPOINT}, or no weights for a random-init baseline`,
    );
  }
  let file = weights;
  let runShape: Shape | null = null;
  let runWhere = "";
  if (st.isDirectory) {
    file = `${weights}/${which === "teacher" ? TEACHER_BACKBONE : CHECKPOINT}`;
    runWhere = `${weights}/${CONFIG}`;
    runShape = await readRunConfig(runWhere);
    if ((await statOrNull(file)) === null) {
      throw new EvalError(
        `${file}: not found in the run directory ${weights}` +
          (which === "teacher"
            ? ` (a run writes it with its first checkpoint); pass ${weights}/${CHECKPOINT} ` +
              `to read the teacher from the checkpoint instead`
            : ` (the student backbone is read from the training checkpoint)`),
      );
    }
  }

  let tensors: Record<string, Tensor>;
  let metadata: Record<string, string>;
  try {
    ({ tensors, metadata } = await loadSafetensors(file));
  } catch (e) {
    throw new EvalError(
      `${file} is not a readable safetensors file (${(e as Error).message}); expected a ` +
        `training run directory, ${TEACHER_BACKBONE} or ${CHECKPOINT}`,
    );
  }
  // views made by splitPosEmbed live in sd only: both are freed at the end (freeing is idempotent)
  let sd: Record<string, Tensor> = {};
  try {
    // a bare ViT, or a training checkpoint holding student./teacher. backbones
    const bare = MARKER in tensors ||
      ("pos_embed" in tensors && "blocks.0.attn.qkv.weight" in tensors);
    let keyPrefix = "";
    if (opts.keyPrefix !== undefined) {
      keyPrefix = opts.keyPrefix;
      try {
        sd = selectPrefix(tensors, keyPrefix);
      } catch (e) {
        throw new EvalError(`${file}: ${(e as Error).message}${prefixHint(tensors)}`);
      }
    } else if (bare) {
      if (which === "student") {
        throw new EvalError(
          `${file} holds one bare ViT, not a training checkpoint: which "student" needs ` +
            `${CHECKPOINT} (or the run directory)`,
        );
      }
      sd = { ...tensors };
    } else {
      keyPrefix = `${which}.backbone.`;
      try {
        sd = selectPrefix(tensors, keyPrefix);
      } catch {
        const roots = [
          ...new Set(Object.keys(tensors).map((k) => k.split(".").slice(0, 2).join(".") + ".")),
        ].slice(0, 6);
        throw new EvalError(
          `${file}: no ViT weights found — neither bare ViT keys (${MARKER}) nor ` +
            `"${keyPrefix}*" (the file's keys start with ${roots.join(", ") || "nothing"})`,
        );
      }
    }
    if (keyPrefix !== "" || !bare) {
      if (!(MARKER in sd) && !("pos_embed" in sd)) {
        throw new EvalError(
          `${file}: ${
            keyPrefix === "" ? "no bare ViT keys" : `the keys under "${keyPrefix}" are not a ViT`
          } (no ${MARKER})${prefixHint(tensors)}`,
        );
      }
      // a training checkpoint carries its configuration in the metadata
      if (runShape === null && metadata.densedino) {
        try {
          runShape = shapeFromConfig(JSON.parse(metadata.densedino).config, `${file} (metadata)`);
          runWhere = `the metadata of ${file}`;
        } catch {
          runShape = null;
        }
      }
    }
    splitPosEmbed(sd);
    const inferred = shapeFromStateDict(sd);
    let shape: Shape;
    if (runShape) {
      shape = reconcile(given, runShape, runWhere);
    } else {
      shape = { ...inferred };
      for (const k of Object.keys(OPTION_FLAG) as (keyof Shape)[]) {
        if (given[k] !== undefined) (shape as Record<string, unknown>)[k] = given[k];
      }
    }
    if (shape.arch === undefined || !ARCHS[shape.arch]) {
      throw new EvalError(
        `${file}: the weights (${describeViTStateDict(sd)}) match no named architecture; ` +
          `give --arch (one of ${Object.keys(ARCHS).join(", ")})`,
      );
    }
    if (shape.patchSize === undefined || shape.imgSize === undefined) {
      throw new EvalError(
        `${file}: cannot tell the patch size / image size from the weights; give --patch-size ` +
          `and --img-size`,
      );
    }
    if (shape.imgSize % shape.patchSize !== 0) {
      throw new EvalError(
        `imgSize ${shape.imgSize} is not a multiple of patchSize ${shape.patchSize}`,
      );
    }
    const vit = createViT(shape.arch, {
      patchSize: shape.patchSize,
      imgSize: shape.imgSize,
      learnableRefToken: shape.learnableRefToken ?? ("ref_learn_token" in sd),
    });
    try {
      vit.loadStateDict(sd);
    } catch (e) {
      const ours = describeViTStateDict(vit.stateDict());
      vit.free();
      if (e instanceof StateDictError) {
        const theirs = describeViTStateDict(sd);
        throw new EvalError(
          `${file}${keyPrefix ? ` (keys "${keyPrefix}*")` : ""}: the checkpoint (${theirs}) ` +
            `does not fit this model (${ours}): a ${describe(shape)} ViT, as ${
              runShape ? runWhere : "the options"
            } say; give the options that match the weights (or leave them out to read them ` +
            `from the file).\n${clip(e.message, 8)}${prefixHint(tensors)}`,
        );
      }
      throw e;
    }
    freeze(vit, device);
    const fingerprint = stateDictFingerprint(vit.stateDict());
    const learnableRefToken = vit.refLearnToken !== null;
    return {
      vit,
      arch: shape.arch,
      patchSize: shape.patchSize,
      imgSize: shape.imgSize,
      learnableRefToken,
      device,
      source: keyPrefix ? `${file} (${which} backbone, keys ${keyPrefix}*)` : file,
      fingerprint,
      file,
      keyPrefix,
      free: () => vit.free(),
    };
  } finally {
    freeAll(sd);
    freeAll(tensors);
  }
}
