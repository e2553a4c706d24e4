/**
 * Checkpoint interchange: modules to and from safetensors under the official state-dict names,
 * key prefixes (e.g. `teacher.backbone.` inside a training checkpoint), and import of official
 * DINO checkpoints whose single `pos_embed` [1, 1+N, D] is split into `cls_pos_embed` and
 * `patch_pos_embed`.
 *
 * @module
 */
import {
  freeAll,
  loadSafetensors,
  saveSafetensors,
  type Tensor,
  TorchError,
} from "../torch/mod.ts";
import type { LoadResult, Module } from "./module.ts";
import { StateDictError } from "./module.ts";
import { ARCHS } from "./vit.ts";

/** Options of {@link loadModule}. */
export interface LoadModuleOptions {
  /** only keys starting with this prefix are used, with the prefix removed (e.g. "teacher.backbone.") */
  keyPrefix?: string;
  /** strict key matching (default true) */
  strict?: boolean;
}

/**
 * The keys of `sd` that start with `prefix`, with it removed. Official DINO / DenseDINO
 * training checkpoints wrap the model as `module.` (DistributedDataParallel); a plain
 * `module.` prefix is also accepted when `prefix` itself finds nothing.
 */
export function selectPrefix(sd: Record<string, Tensor>, prefix: string): Record<string, Tensor> {
  if (!prefix) return { ...sd };
  for (const p of [prefix, `module.${prefix}`]) {
    const out: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(sd)) if (k.startsWith(p)) out[k.slice(p.length)] = v;
    if (Object.keys(out).length > 0) return out;
  }
  const roots = [...new Set(Object.keys(sd).map((k) => k.split(".").slice(0, 2).join(".") + "."))]
    .slice(0, 8);
  throw new TorchError(
    "loadModule",
    `no key starts with "${prefix}"; the file's keys start with ${roots.join(", ")}`,
  );
}

/**
 * Splits an official DINO `pos_embed` [1, 1+N, D] into `cls_pos_embed` [1, 1, D] and
 * `patch_pos_embed` [1, N, D] (in place on `sd`; the new tensors are views of it).
 * Returns true when it did.
 */
export function splitPosEmbed(sd: Record<string, Tensor>): boolean {
  const pe = sd["pos_embed"];
  if (!pe || "patch_pos_embed" in sd) return false;
  const s = pe.shape;
  if (s.length !== 3 || s[0] !== 1 || s[1] < 2) {
    throw new TorchError("loadModule", `pos_embed must be [1, 1+N, D], got [${s.join(", ")}]`);
  }
  sd["cls_pos_embed"] = pe.narrow(1, 0, 1);
  sd["patch_pos_embed"] = pe.narrow(1, 1, s[1] - 1);
  delete sd["pos_embed"];
  pe.free();
  return true;
}

/**
 * A one-line description of a ViT state dict (width, depth, patch, grid) and the named
 * architecture it matches, for error messages.
 */
export function describeViTStateDict(sd: Record<string, Tensor>): string {
  const w = sd["patch_embed.proj.weight"];
  const pos = sd["patch_pos_embed"] ?? sd["pos_embed"];
  const depth =
    new Set(Object.keys(sd).map((k) => /^blocks\.(\d+)\./.exec(k)?.[1]).filter(Boolean)).size;
  if (!w) return "not a ViT state dict (no patch_embed.proj.weight)";
  const [D, , p] = w.shape;
  const n = pos ? pos.size(1) - (sd["pos_embed"] && !sd["patch_pos_embed"] ? 1 : 0) : NaN;
  const arch = Object.entries(ARCHS).find(([, a]) => a.embedDim === D && a.depth === depth)?.[0];
  const grid = Number.isFinite(n)
    ? `, ${Math.round(Math.sqrt(n))}×${Math.round(Math.sqrt(n))} patch grid`
    : "";
  return `embed dim ${D}, depth ${depth}, patch ${p}${grid}${arch ? ` (${arch}/${p})` : ""}`;
}

/** Saves a module's parameters as safetensors (atomically), keys optionally prefixed. */
export async function saveModule(
  path: string,
  module: Module,
  opts: { prefix?: string; metadata?: Record<string, string> } = {},
): Promise<void> {
  const sd = module.stateDict();
  const prefixed: Record<string, Tensor> = {};
  for (const [k, v] of Object.entries(sd)) prefixed[(opts.prefix ?? "") + k] = v;
  await saveSafetensors(path, prefixed, opts.metadata);
}

/**
 * Loads safetensors weights into `module` (strict by default). Handles a key prefix and the
 * official single `pos_embed`. On a mismatch the error lists the offending keys and, for ViTs,
 * what the file and the model look like (width, depth, patch, grid).
 */
export async function loadModule(
  path: string,
  module: Module,
  opts: LoadModuleOptions = {},
): Promise<LoadResult> {
  const { tensors } = await loadSafetensors(path);
  try {
    const sd = selectPrefix(tensors, opts.keyPrefix ?? "");
    splitPosEmbed(sd);
    try {
      return module.loadStateDict(sd, { strict: opts.strict ?? true });
    } catch (e) {
      if (e instanceof StateDictError && "patch_embed.proj.weight" in sd) {
        const theirs = describeViTStateDict(sd);
        const ours = describeViTStateDict(module.stateDict());
        throw new StateDictError(
          `${path}: the checkpoint (${theirs}) does not fit this model (${ours}).\n${e.message}`,
          e.missing,
          e.unexpected,
          e.mismatched,
        );
      }
      if (e instanceof Error) e.message = `${path}: ${e.message}`;
      throw e;
    } finally {
      freeAll(sd);
    }
  } finally {
    freeAll(tensors);
  }
}
