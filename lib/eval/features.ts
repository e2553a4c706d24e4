/**
 * Frozen-feature passes over a data set and the feature cache of the evaluations.
 *
 * - {@link evalTransform}: the ImageNet-style evaluation preprocessing (resize the shorter side
 *   bicubically with antialiasing, centre-crop, ImageNet-normalise).
 * - {@link forEachBatch}: the examples of a data set in order, transformed and stacked into
 *   batches, with their samples (labels, masks) — nothing skipped silently.
 * - {@link extractClassFeatures}: class-token features and labels of a frozen backbone.
 * - {@link loadFeatureCache} / {@link saveFeatureCache}: safetensors files whose metadata names
 *   the model (weights fingerprint), data set, transform and kind of features; a file whose
 *   metadata disagrees is an error, never silently reused.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { dirname } from "node:path";
import {
  cat,
  type Device,
  freeAll,
  loadSafetensors,
  noGrad,
  saveSafetensors,
  scope,
  stack,
  type Tensor,
  tensor,
} from "../torch/mod.ts";
import {
  type Dataset,
  imagenetNormalize,
  Progress,
  resizeImage,
  type Sample,
} from "../data/mod.ts";
import { EvalError, type LoadedBackbone } from "./backbone.ts";

/**
 * ImageNet-style evaluation transform of an image [3, H, W] in [0, 1]: resize the shorter side
 * to `resize` (bicubic, antialiased, clamped to [0, 1]; torchvision's `Resize`), centre-crop
 * `crop` (torchvision's `CenterCrop`), ImageNet-normalise. Returns [3, crop, crop]. Use
 * `evalTransform(256, 224)` for the DINO k-NN protocol; with `resize === crop` on a square
 * image of that size it only normalises. The returned function also works on batches
 * [B, 3, H, W] of equal-sized images.
 */
export function evalTransform(resize: number, crop: number): (image: Tensor) => Tensor {
  for (const [name, v] of [["resize", resize], ["crop", crop]] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new EvalError(`evalTransform: ${name} must be a positive integer, got ${v}`);
    }
  }
  if (resize < crop) {
    throw new EvalError(`evalTransform: resize ${resize} is smaller than the crop ${crop}`);
  }
  return (image: Tensor) => scope(() => imagenetNormalize(resizeImage(image, resize, crop)));
}

/** A stable description of {@link evalTransform}`(resize, crop)` for feature-cache keys. */
export function evalTransformId(resize: number, crop: number): string {
  return `resize${resize}-bicubic-aa/centercrop${crop}/imagenet-norm`;
}

/** Options of {@link forEachBatch} and the feature extractors. */
export interface FeaturePassOptions {
  /** examples per batch (default 64) */
  batchSize?: number;
  /** image [3, H, W] in [0, 1] → model input [3, S, S] (e.g. {@link evalTransform}) */
  transform: (image: Tensor) => Tensor;
  /** progress label (default "features") */
  label?: string;
  /** show a progress line on stderr (default true) */
  progress?: boolean;
  /** only the first `limit` examples (default: all) */
  limit?: number;
  /** where the batched images go (default "cpu"; the extractors use the backbone's device) */
  device?: Device;
}

/** One batch of {@link forEachBatch}. */
export interface FeatureBatch {
  /** transformed images [B, 3, S, S] (normalised), on `opts.device` */
  images: Tensor;
  /**
   * the samples as the data set gave them (untransformed image, mask, label, name); their
   * tensors and `images` are freed when the callback returns
   */
  samples: Sample[];
  /** the example indices */
  indices: number[];
}

function checkPass(ds: Dataset, opts: FeaturePassOptions): { n: number; batchSize: number } {
  const batchSize = opts.batchSize ?? 64;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new EvalError(`batch size must be a positive integer, got ${batchSize}`);
  }
  if (typeof opts.transform !== "function") {
    throw new EvalError("a feature pass needs a transform (e.g. evalTransform(256, 224))");
  }
  let n = ds.length;
  if (opts.limit !== undefined) {
    if (!Number.isInteger(opts.limit) || opts.limit < 1) {
      throw new EvalError(`limit must be a positive integer, got ${opts.limit}`);
    }
    n = Math.min(n, opts.limit);
  }
  if (n === 0) throw new EvalError("the data set is empty: nothing to evaluate");
  return { n, batchSize };
}

function freeSample(s: Sample): void {
  s.image.free();
  s.mask?.free();
}

/**
 * Runs over the first `limit` (default all) examples of `ds` in order, in batches: loads each
 * example, applies `opts.transform`, stacks the results into `images` [B, 3, S, S] and calls
 * `fn` with the batch, its samples and indices (awaited before the next batch). The batch's
 * tensors are freed after `fn` returns: keep copies of what you need. Nothing is skipped: an
 * example that fails to load or transform throws an {@link EvalError} naming it. Shows a
 * progress line (images/s, ETA) on stderr unless `progress: false`.
 *
 * It does not run a model; run it inside `fn` under `noGrad` (see {@link extractClassFeatures}).
 */
export async function forEachBatch(
  ds: Dataset,
  opts: FeaturePassOptions,
  fn: (batch: FeatureBatch) => void | Promise<void>,
): Promise<void> {
  const { n, batchSize } = checkPass(ds, opts);
  const progress = new Progress({
    label: opts.label ?? "features",
    total: n,
    unit: "img",
    enabled: opts.progress ?? true,
  });
  for (let start = 0; start < n; start += batchSize) {
    const indices: number[] = [];
    for (let i = start; i < Math.min(n, start + batchSize); i++) indices.push(i);
    const samples: Sample[] = [];
    const xs: Tensor[] = [];
    let images: Tensor | null = null;
    try {
      for (const i of indices) {
        let s: Sample;
        try {
          s = await ds.get(i);
        } catch (e) {
          throw new EvalError(
            `cannot load example ${i} (${safeName(ds, i)}): ${(e as Error).message}`,
          );
        }
        samples.push(s);
        try {
          const x = opts.transform(s.image);
          xs.push(x);
          if (x.ndim !== 3 || (xs.length > 1 && !sameShape(x.shape, xs[0].shape))) {
            throw new Error(
              `the transform gave [${x.shape.join(", ")}]` +
                (xs.length > 1
                  ? ` but the batch's first image is [${xs[0].shape.join(", ")}]`
                  : "") +
                `; it must give [3, S, S] of one size for every image`,
            );
          }
        } catch (e) {
          throw new EvalError(
            `cannot transform example ${i} (${s.name}, [${s.image.shape.join(", ")}]): ${
              (e as Error).message
            }`,
          );
        }
      }
      const device = opts.device ?? "cpu";
      images = scope(() => device === "cpu" ? stack(xs, 0) : stack(xs, 0).to(device));
      freeAll(xs);
      await fn({ images, samples, indices });
    } finally {
      freeAll(xs);
      images?.free();
      for (const s of samples) freeSample(s);
    }
    progress.tick(indices.length);
  }
  progress.done();
}

function safeName(ds: Dataset, i: number): string {
  try {
    return ds.nameOf(i);
  } catch {
    return `#${i}`;
  }
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * Class-token features [N, D] (float32, on the CPU) of the frozen backbone over the first
 * `limit` examples of `ds`, and their labels [N] int64 (−1 where an example has none).
 */
export async function extractClassFeatures(
  b: LoadedBackbone,
  ds: Dataset,
  opts: FeaturePassOptions,
): Promise<{ features: Tensor; labels: Tensor }> {
  const parts: Tensor[] = [];
  const labels: number[] = [];
  try {
    await forEachBatch(ds, { ...opts, device: opts.device ?? b.device }, ({ images, samples }) => {
      const f = noGrad(() =>
        scope(() => {
          const out = b.vit.forward(images, { patchTokens: false });
          return out.cls.to({ dtype: "float32", device: "cpu" }).contiguous();
        })
      );
      parts.push(f);
      for (const s of samples) labels.push(s.label ?? -1);
    });
    return scope(() => ({
      features: cat(parts, 0),
      labels: tensor(Int32Array.from(labels)).long(),
    }));
  } finally {
    freeAll(parts);
  }
}

// ---- the feature cache ----------------------------------------------------------------------

/** What identifies cached features: the model, the data, the preprocessing and the kind. */
export interface FeatureCacheKey {
  /** the backbone's {@link LoadedBackbone.fingerprint} */
  fingerprint: string;
  /** the data set, split and subset (e.g. "fashion-scenes:train:count=10000:seed=0:limit=all") */
  dataset: string;
  /** the preprocessing (e.g. {@link evalTransformId}) */
  transform: string;
  /** what the tensors are (e.g. "cls", "patch") */
  kind: string;
}

/** Format tag and version written into every cache file; a different version is a mismatch. */
export const FEATURE_CACHE_FORMAT = "densedino-feature-cache";
/** The cache format version (bump when the meaning of cached tensors changes). */
export const FEATURE_CACHE_VERSION = "1";

const KEY_FIELDS = ["fingerprint", "dataset", "transform", "kind"] as const;

/**
 * A file name for `key` inside `dir`: `<kind>-<sha-256 of the key, 16 hex>.safetensors`, so
 * different models, data and transforms share a directory without clashing.
 */
export function featureCacheFile(dir: string, key: FeatureCacheKey): string {
  const h = createHash("sha256").update(
    JSON.stringify([FEATURE_CACHE_VERSION, ...KEY_FIELDS.map((k) => key[k])]),
  ).digest("hex").slice(0, 16);
  const kind = key.kind.replace(/[^A-Za-z0-9_.-]+/g, "_").slice(0, 40);
  return `${dir}/${kind}-${h}.safetensors`;
}

/**
 * Loads a feature cache file: null when it does not exist; the tensors when its metadata
 * matches `key` exactly. A file written for another model, data set, transform, kind or cache
 * version, or one that is not a feature cache (or not safetensors), throws an
 * {@link EvalError} naming the file and the fields that differ — it is never silently reused.
 * The caller frees the tensors.
 */
export async function loadFeatureCache(
  path: string,
  key: FeatureCacheKey,
): Promise<Record<string, Tensor> | null> {
  try {
    await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new EvalError(`feature cache ${path}: cannot read it: ${(e as Error).message}`);
  }
  let tensors: Record<string, Tensor>;
  let metadata: Record<string, string>;
  try {
    ({ tensors, metadata } = await loadSafetensors(path));
  } catch (e) {
    throw new EvalError(
      `feature cache ${path} is unreadable (${(e as Error).message}); delete it to recompute`,
    );
  }
  const diffs: string[] = [];
  if (metadata.format !== FEATURE_CACHE_FORMAT) {
    diffs.push(`format: "${metadata.format ?? "none"}", expected "${FEATURE_CACHE_FORMAT}"`);
  } else if (metadata.version !== FEATURE_CACHE_VERSION) {
    diffs.push(`version: ${metadata.version ?? "none"}, expected ${FEATURE_CACHE_VERSION}`);
  }
  for (const k of KEY_FIELDS) {
    if (metadata[k] !== key[k]) {
      diffs.push(`${k}: the file has "${metadata[k] ?? "none"}", this run "${key[k]}"`);
    }
  }
  if (diffs.length > 0) {
    freeAll(tensors);
    throw new EvalError(
      `feature cache ${path} was written for other features (${
        diffs.join("; ")
      }); it is not reused: delete it or choose another cache directory`,
    );
  }
  return tensors;
}

/**
 * Writes `tensors` as a feature cache file for `key` (atomically: a temporary file, then a
 * rename), creating the directory if needed.
 */
export async function saveFeatureCache(
  path: string,
  key: FeatureCacheKey,
  tensors: Record<string, Tensor>,
): Promise<void> {
  for (const k of KEY_FIELDS) {
    if (typeof key[k] !== "string" || key[k] === "") {
      throw new EvalError(`feature cache key: ${k} must be a non-empty string`);
    }
  }
  try {
    await Deno.mkdir(dirname(path), { recursive: true });
    await saveSafetensors(path, tensors, {
      format: FEATURE_CACHE_FORMAT,
      version: FEATURE_CACHE_VERSION,
      fingerprint: key.fingerprint,
      dataset: key.dataset,
      transform: key.transform,
      kind: key.kind,
    });
  } catch (e) {
    if (e instanceof EvalError) throw e;
    throw new EvalError(`feature cache ${path}: cannot write it: ${(e as Error).message}`);
  }
}

/**
 * {@link extractClassFeatures} through a cache: with `cacheDir` the features are read from
 * {@link featureCacheFile}(cacheDir, key) when present (and matching), else computed and
 * written there. `key` is completed with the backbone's fingerprint and kind "cls".
 */
export async function cachedClassFeatures(
  b: LoadedBackbone,
  ds: Dataset,
  opts: FeaturePassOptions & {
    cacheDir?: string | null;
    dataset: string;
    transformId: string;
    log?: (message: string) => void;
  },
): Promise<{ features: Tensor; labels: Tensor; cached: boolean; cacheFile: string | null }> {
  const key: FeatureCacheKey = {
    fingerprint: b.fingerprint,
    dataset: opts.dataset,
    transform: opts.transformId,
    kind: "cls",
  };
  const file = opts.cacheDir ? featureCacheFile(opts.cacheDir, key) : null;
  if (file) {
    const t = await loadFeatureCache(file, key);
    if (t) {
      const { features, labels } = t;
      if (!features || !labels) {
        freeAll(t);
        throw new EvalError(
          `feature cache ${file} lacks "features" or "labels"; delete it to recompute`,
        );
      }
      for (const [k, v] of Object.entries(t)) if (k !== "features" && k !== "labels") v.free();
      opts.log?.(`${opts.label ?? "features"}: ${features.size(0)} from the cache ${file}`);
      return { features, labels, cached: true, cacheFile: file };
    }
  }
  const r = await extractClassFeatures(b, ds, opts);
  if (file) {
    try {
      await saveFeatureCache(file, key, r);
    } catch (e) {
      freeAll(r);
      throw e;
    }
    opts.log?.(`${opts.label ?? "features"}: cached in ${file}`);
  }
  return { ...r, cached: false, cacheFile: file };
}
