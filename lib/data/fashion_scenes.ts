/**
 * `fashion-scenes`, the embedded default data set: seeded multi-object scenes built from
 * Fashion-MNIST items, with segmentation masks and image labels, generated once with batched
 * tensor ops and cached on disk.
 *
 * A scene is an RGB canvas (default 96×96) over a smooth coloured background (a base colour
 * plus a low-frequency noise texture: a small random grid upsampled bicubically), one of a pool
 * of 8 shared by all scenes (so that a background does not identify its scene), holding 1–4
 * items of distinct classes. The first, salient item is large (default 40–64 px at 96 px),
 * the others small (16–32 px); all are placed at random, fully inside the canvas, possibly
 * mirrored, and later items occlude earlier ones. Each item keeps its Fashion-MNIST shading and
 * is tinted a colour whose hue and saturation are drawn independently of its class.
 *
 * Contrast: an item's mean luminance is set `contrast` (default 0.30–0.45) away from the mean
 * luminance of what lies under it (background and earlier items), lighter over dark ground and
 * darker over light ground. Luminance rather than hue carries the separation, so items stay
 * visible at a glance and also in the grayscale views of DINO's augmentations; no outline is
 * drawn, as an outline would be a class-agnostic drawing artefact with pixels of unclear
 * ownership.
 *
 * Items are composited with hard edges (an item owns a pixel where its resampled silhouette
 * alpha is ≥ 0.5), so the mask is exact: mask-0 pixels show the background texture, mask
 * `k` pixels (1–10, Fashion-MNIST class `k − 1`) show the item. With `ignoreBand: [lo, hi]`
 * pixels whose front-most item alpha ≥ lo lies below hi are marked 255 (ignore) in the mask:
 * item boundaries, and a few faint patches inside items. Off by default, since the hard
 * composite leaves nothing ambiguous to ignore. The image label is the class of the item with
 * the most visible (mask) pixels; items of a scene have distinct classes, so this is also the
 * class with the most mask pixels.
 *
 * Train scenes draw from the Fashion-MNIST train items, val scenes from the test items. Scene
 * `i` depends only on (seed, split, i, options), not on the count. The random draws come from
 * a platform-independent PRNG and the pixels from libtorch CPU ops, so the same options give
 * byte-identical data on a machine (and, bar rare last-bit rounding differences, across
 * machines). A generated set is cached under `userCacheDir()/fashion-scenes/` (see
 * {@link FashionScenes.open}); 10,000 96-px scenes take a few seconds to generate on two CPU
 * cores and 370 MB on disk.
 *
 * @module
 */
import { userCacheDir } from "../../native/paths.ts";
import {
  arange,
  fromTypedArray,
  gridSample,
  keep,
  matmul,
  scope,
  stack,
  type Tensor,
  TorchError,
  where,
  writeFileAtomic,
} from "../torch/mod.ts";
import { checkIndex, type Dataset, type Sample } from "./dataset.ts";
import {
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_DIR,
  type FashionMNISTArrays,
  loadFashionMNIST,
} from "./fashion_mnist.ts";
import { savePng } from "./image.ts";

/** Version of the generator and of the cache format; bumping it invalidates old caches. */
export const FASHION_SCENES_VERSION = 2;

/** A fashion-scenes split: train scenes use Fashion-MNIST train items, val scenes test items. */
export type FashionScenesSplit = "train" | "val";

/** Options of {@link FashionScenes.open} and {@link generateFashionScenes}. */
export interface FashionScenesOptions {
  /** "train" (default) or "val" */
  split?: FashionScenesSplit;
  /** number of scenes (default 10,000 for train, 2,000 for val) */
  count?: number;
  /** seed (a non-negative safe integer; default 0) */
  seed?: number;
  /** canvas side in pixels (default 96) */
  size?: number;
  /** inclusive range of items per scene, within 1–10 (default [1, 4]) */
  items?: readonly [number, number];
  /** side range in pixels of the salient item's 28×28 frame (default [40, 64] · size / 96) */
  salientSize?: readonly [number, number];
  /** side range in pixels of the other items' frames (default [16, 32] · size / 96) */
  itemSize?: readonly [number, number];
  /** background texture strength in [0, 1]: 0 = flat colour (default 0.5) */
  background?: number;
  /**
   * number of distinct backgrounds (base colour + texture) shared by all scenes of the seed,
   * each scene drawing one at random (default 8); null: every scene draws its own. Scene-own
   * backgrounds identify a scene in every view of it, a shortcut DINO learns instead of the
   * items (docs/RESULTS.md); a shared pool keeps backgrounds varied without that cue.
   */
  backgrounds?: number | null;
  /** range of the luminance separation between an item and what lies under it (default [0.3, 0.45]) */
  contrast?: readonly [number, number];
  /**
   * mark pixels whose front-most item alpha is in [lo, hi) as 255 (ignore) in the mask, with
   * 0 < lo ≤ 0.5 < hi ≤ 1; default null (no ignore pixels: edges are hard)
   */
  ignoreBand?: readonly [number, number] | null;
  /** directory of the Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist) */
  mnistDir?: string;
  /**
   * cache directory (default `userCacheDir()/fashion-scenes`, i.e. under $DENSEDINO_CACHE when
   * set); null: generate in memory, never read or write a cache
   */
  cacheDir?: string | null;
  /** no progress lines on stderr (default false) */
  quiet?: boolean;
}

/** The generator's options with every default filled in (they define a cached set). */
export interface ResolvedSceneOptions {
  /** split */
  split: FashionScenesSplit;
  /** number of scenes */
  count: number;
  /** seed */
  seed: number;
  /** canvas side */
  size: number;
  /** item count range */
  items: [number, number];
  /** salient item size range */
  salientSize: [number, number];
  /** other items' size range */
  itemSize: [number, number];
  /** background strength */
  background: number;
  /** size of the shared background pool, or null (one background per scene) */
  backgrounds: number | null;
  /** luminance separation range */
  contrast: [number, number];
  /** ignore band, or null */
  ignoreBand: [number, number] | null;
}

/** One item of a scene, in drawing order (later items occlude earlier ones). */
export interface SceneItem {
  /** Fashion-MNIST class 0–9 (the mask holds class + 1) */
  label: number;
  /** index of the item in its Fashion-MNIST split (train for train scenes, test for val) */
  source: number;
  /** side of the item's 28×28 frame in canvas pixels */
  size: number;
  /** frame centre x in canvas pixels (0 = left edge) */
  cx: number;
  /** frame centre y in canvas pixels (0 = top edge) */
  cy: number;
  /** mirrored horizontally */
  flip: boolean;
  /** tint, RGB in [0, 1] (the item's pixels are this colour times its shading in [0.6, 1]) */
  color: [number, number, number];
}

/** A generated set's raw arrays (what the cache file holds). */
export interface SceneArrays {
  /** the options that define the set */
  options: ResolvedSceneOptions;
  /** uint8 images [count, 3, size, size] */
  images: Uint8Array;
  /** uint8 masks [count, size, size] (0 background, 1–10 class + 1, 255 ignore) */
  masks: Uint8Array;
  /** uint8 labels [count] (class 0–9 of the largest visible item) */
  labels: Uint8Array;
  /** per scene and item slot: [present, label, source, size, cx, cy, flip, r, g, b] */
  items: Float32Array;
}

/** Floats per item slot in {@link SceneArrays.items}. */
const ITEM_FIELDS = 10;
/** Shading amplitude: an item pixel is its tint × (1 − A + A · normalised grey). */
const SHADING = 0.4;
/** Grey level (of 255) at and above which a Fashion-MNIST pixel is fully opaque. */
const OPAQUE_GREY = 24;
/** Side of the background noise grid (upsampled bicubically to the canvas). */
const NOISE_GRID = 4;
/** Per-channel amplitude of the background noise at strength 1. */
const NOISE_AMPLITUDE = 0.35;
/** Scenes rendered per batch. Fixed: part of what makes the bytes reproducible. */
const CHUNK = 64;
/** Rec. 601 luma weights (those of torchvision's rgb_to_grayscale). */
const LUMA = [0.299, 0.587, 0.114] as const;

// ---- options ------------------------------------------------------------------------------

function checkRange(
  name: string,
  r: readonly [number, number] | undefined,
  dflt: [number, number],
  lo: number,
  hi: number,
  integer = false,
): [number, number] {
  if (r === undefined) return dflt;
  if (
    !Array.isArray(r) || r.length !== 2 || !r.every((v) => Number.isFinite(v)) ||
    (integer && !r.every((v) => Number.isInteger(v)))
  ) {
    throw new RangeError(
      `fashion-scenes: ${name} must be a pair [min, max] of ${
        integer ? "integers" : "numbers"
      }, got ${JSON.stringify(r)}`,
    );
  }
  if (r[0] > r[1] || r[0] < lo || r[1] > hi) {
    throw new RangeError(
      `fashion-scenes: ${name} [${r[0]}, ${r[1]}] must satisfy ${lo} ≤ min ≤ max ≤ ${hi}`,
    );
  }
  return [r[0], r[1]];
}

/** Fills in the defaults and validates every option (RangeError naming the option). */
export function resolveSceneOptions(opts: FashionScenesOptions = {}): ResolvedSceneOptions {
  const split = opts.split ?? "train";
  if (split !== "train" && split !== "val") {
    throw new RangeError(`fashion-scenes: unknown split "${split}"; expected train or val`);
  }
  const count = opts.count ?? (split === "train" ? 10_000 : 2_000);
  if (!Number.isInteger(count) || count < 1 || count > 10_000_000) {
    throw new RangeError(`fashion-scenes: count must be an integer ≥ 1, got ${count}`);
  }
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new RangeError(`fashion-scenes: seed must be a non-negative integer, got ${seed}`);
  }
  const size = opts.size ?? 96;
  if (!Number.isInteger(size) || size < 8 || size > 1024) {
    throw new RangeError(`fashion-scenes: size must be an integer in 8..1024, got ${size}`);
  }
  const sc = (v: number) => Math.max(2, Math.round((v * size) / 96));
  const items = checkRange("items", opts.items, [1, 4], 1, 10, true);
  const salientSize = checkRange("salientSize", opts.salientSize, [sc(40), sc(64)], 2, size);
  const itemSize = checkRange("itemSize", opts.itemSize, [sc(16), sc(32)], 2, size);
  const background = opts.background ?? 0.5;
  if (!Number.isFinite(background) || background < 0 || background > 1) {
    throw new RangeError(`fashion-scenes: background must be in [0, 1], got ${background}`);
  }
  const backgrounds = opts.backgrounds === undefined ? 8 : opts.backgrounds;
  if (backgrounds !== null && !(Number.isSafeInteger(backgrounds) && backgrounds >= 1)) {
    throw new RangeError(
      `fashion-scenes: backgrounds must be an integer ≥ 1 or null, got ${backgrounds}`,
    );
  }
  const contrast = checkRange("contrast", opts.contrast, [0.3, 0.45], 0, 0.5);
  let ignoreBand: [number, number] | null = null;
  if (opts.ignoreBand !== undefined && opts.ignoreBand !== null) {
    ignoreBand = checkRange("ignoreBand", opts.ignoreBand, [0.25, 0.75], 0, 1);
    if (!(ignoreBand[0] > 0 && ignoreBand[0] <= 0.5 && ignoreBand[1] > 0.5)) {
      throw new RangeError(
        `fashion-scenes: ignoreBand [${ignoreBand}] must satisfy 0 < lo ≤ 0.5 < hi ≤ 1`,
      );
    }
  }
  return {
    split,
    count,
    seed,
    size,
    items,
    salientSize,
    itemSize,
    background,
    backgrounds,
    contrast,
    ignoreBand,
  };
}

// ---- random parameters ---------------------------------------------------------------------

/** A 32-bit mix (murmur3's finaliser). */
function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** sfc32, a small fast PRNG: uniform floats in [0, 1). Platform-independent. */
class Rng {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  constructor(...words: number[]) {
    let h = 0x9e3779b9;
    const s: number[] = [];
    for (let k = 0; k < 4; k++) {
      for (const w of words) h = fmix(h ^ Math.imul(w >>> 0, 0xcc9e2d51) ^ k);
      s.push(h);
    }
    [this.#a, this.#b, this.#c, this.#d] = s;
    for (let i = 0; i < 12; i++) this.next();
  }

  next(): number {
    const t = (((this.#a + this.#b) | 0) + this.#d) | 0;
    this.#d = (this.#d + 1) | 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) | 0;
    this.#c = (this.#c << 21) | (this.#c >>> 11);
    this.#c = (this.#c + t) | 0;
    return (t >>> 0) / 4294967296;
  }

  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
}

interface SceneParams {
  n: number;
  items: {
    label: number;
    source: number;
    size: number;
    cx: number;
    cy: number;
    flip: boolean;
    hue: number;
    sat: number;
    delta: number;
  }[];
  base: [number, number, number];
  noise: Float32Array; // [3, NOISE_GRID, NOISE_GRID] in [-1, 1]
}

/** The random draws of scene `i`: a function of (seed, split, i, options) only. */
function drawScene(o: ResolvedSceneOptions, byClass: Int32Array[], i: number): SceneParams {
  const rng = new Rng(
    o.seed % 4294967296,
    Math.floor(o.seed / 4294967296),
    o.split === "train" ? 1 : 2,
    i,
  );
  const n = rng.int(o.items[0], o.items[1]);
  const classes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
  const items: SceneParams["items"] = [];
  for (let k = 0; k < n; k++) {
    const j = rng.int(k, 9);
    [classes[k], classes[j]] = [classes[j], classes[k]];
    const label = classes[k];
    const pool = byClass[label];
    const source = pool[Math.min(pool.length - 1, Math.floor(rng.next() * pool.length))];
    const [lo, hi] = k === 0 ? o.salientSize : o.itemSize;
    const size = rng.uniform(lo, hi);
    const cx = rng.uniform(size / 2, o.size - size / 2);
    const cy = rng.uniform(size / 2, o.size - size / 2);
    const flip = rng.next() < 0.5;
    const hue = rng.next();
    const sat = rng.uniform(0.45, 1);
    const delta = rng.uniform(o.contrast[0], o.contrast[1]);
    items.push({ label, source, size, cx, cy, flip, hue, sat, delta });
  }
  // the background: the scene's own draws, or one of the seed's shared pool (split-independent)
  const bg = o.backgrounds === null ? rng : new Rng(
    o.seed % 4294967296,
    Math.floor(o.seed / 4294967296),
    3,
    Math.floor(rng.next() * o.backgrounds),
  );
  const base = hsv(bg.next(), bg.uniform(0.15, 0.7), bg.uniform(0.15, 0.85));
  const noise = new Float32Array(3 * NOISE_GRID * NOISE_GRID);
  for (let k = 0; k < noise.length; k++) noise[k] = bg.uniform(-1, 1);
  return { n, items, base, noise };
}

function hsv(h: number, s: number, v: number): [number, number, number] {
  const f = (k: number) => {
    const x = (k + h * 6) % 6;
    return v - v * s * Math.max(0, Math.min(x, 4 - x, 1));
  };
  return [f(5), f(3), f(1)];
}

const luma = (c: readonly number[]) => LUMA[0] * c[0] + LUMA[1] * c[1] + LUMA[2] * c[2];

/** A colour of hue `h`, saturation `s` and luma `y` (mixing towards white when needed). */
function colorWithLuma(h: number, s: number, y: number): [number, number, number] {
  const c0 = hsv(h, s, 1);
  const y0 = luma(c0);
  y = Math.min(1, Math.max(0, y));
  if (y <= y0) return c0.map((v) => (v * y) / y0) as [number, number, number];
  const t = (y - y0) / (1 - y0);
  return c0.map((v) => v + (1 - v) * t) as [number, number, number];
}

function classIndex(labels: Uint8Array): Int32Array[] {
  const counts = new Array(10).fill(0);
  for (const l of labels) counts[l]++;
  const out = counts.map((c) => new Int32Array(c));
  const fill = new Array(10).fill(0);
  labels.forEach((l, i) => (out[l][fill[l]++] = i));
  for (let c = 0; c < 10; c++) {
    if (out[c].length === 0) {
      throw new RangeError(`fashion-scenes: the Fashion-MNIST split has no item of class ${c}`);
    }
  }
  return out;
}

// ---- rendering ------------------------------------------------------------------------------

/**
 * The bicubic upsampling matrix U [out, in] (PyTorch's cubic convolution, A = −0.75,
 * align_corners=true, borders replicated): `U · X · Uᵀ` upsamples a grid X [in, in] to
 * [out, out] as `interpolate(mode: "bicubic", alignCorners: true)` does, as two small matmuls.
 */
function bicubicMatrix(out: number, inp: number): Float32Array {
  const A = -0.75;
  const c1 = (x: number) => ((A + 2) * x - (A + 3)) * x * x + 1;
  const c2 = (x: number) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
  const u = new Float32Array(out * inp);
  for (let i = 0; i < out; i++) {
    const src = out > 1 ? (i * (inp - 1)) / (out - 1) : 0;
    const f = Math.floor(src);
    const t = src - f;
    const w = [c2(t + 1), c1(t), c1(1 - t), c2(2 - t)];
    for (let k = 0; k < 4; k++) {
      const j = Math.min(inp - 1, Math.max(0, f - 1 + k));
      u[i * inp + j] += w[k];
    }
  }
  return u;
}

/** Background textures [b, 3, S, S] (float, clamped to [0, 1]) of the given scenes. */
function renderBackground(o: ResolvedSceneOptions, params: SceneParams[]): Tensor {
  const b = params.length;
  const g = NOISE_GRID;
  const noise = new Float32Array(b * 3 * g * g);
  const base = new Float32Array(b * 3);
  params.forEach((p, k) => {
    noise.set(p.noise, k * 3 * g * g);
    base.set(p.base, k * 3);
  });
  return scope(() => {
    // the cubic weights sum to 1, so the base colour is added to the grid before upsampling
    const grid = fromTypedArray(noise, [b, 3, g, g]).mul(o.background * NOISE_AMPLITUDE)
      .add(fromTypedArray(base, [b, 3, 1, 1]));
    const u = fromTypedArray(bicubicMatrix(o.size, g), [o.size, g]);
    return matmul(matmul(u, grid), u.transpose(0, 1)).clamp_(0, 1);
  });
}

/** Float [0, 1] → uint8, rounding to nearest. */
function toU8(x: Tensor): Tensor {
  return scope(() => x.mul(255).round().clamp(0, 255).to("uint8"));
}

interface Rendered {
  images: Uint8Array;
  masks: Uint8Array;
  labels: Uint8Array;
  items: Float32Array;
}

/**
 * Renders scenes `params` (one batch) with tensor ops. Per item layer, every scene that has
 * an item there is handled at once: the window of the canvas around its item (the item's
 * largest possible frame plus a margin, so it holds every pixel the item can touch) is
 * gathered, the item is placed in it with an affine sampling grid (gridSample), coloured from
 * the luminance of what lies under it, composited, and scattered back.
 */
function renderScenes(
  o: ResolvedSceneOptions,
  params: SceneParams[],
  source: Tensor, // uint8 [N, 28, 28]
): Rendered {
  const b = params.length;
  const S = o.size;
  const K = o.items[1];
  const itemInfo = new Float32Array(b * K * ITEM_FIELDS);
  const out = scope(() => {
    // pixels no item covers keep these values: once quantised they equal sceneBackground()
    let canvas = renderBackground(o, params).flatten();
    let mask = fromTypedArray(new Uint8Array(b * S * S), [b * S * S]);
    let ambiguous = o.ignoreBand ? fromTypedArray(new Uint8Array(b * S * S), [b * S * S]) : null;
    const lumaW = fromTypedArray(Float32Array.from(LUMA), [1, 3, 1, 1]);
    for (let k = 0; k < K; k++) {
      const rows = params.flatMap((p, i) => (p.n > k ? [i] : []));
      const m = rows.length;
      if (m === 0) break;
      // window side: the largest frame of this layer + a margin for the bilinear footprint
      const w = Math.min(S, Math.ceil((k === 0 ? o.salientSize : o.itemSize)[1]) + 4);
      const idx = new BigInt64Array(m);
      const cxn = new Float32Array(m), cyn = new Float32Array(m);
      const fx = new Float32Array(m), fy = new Float32Array(m);
      const ox = new BigInt64Array(m), oy = new BigInt64Array(m), base = new BigInt64Array(m);
      const cls = new Uint8Array(m);
      rows.forEach((row, i) => {
        const it = params[row].items[k];
        idx[i] = BigInt(it.source);
        cxn[i] = (it.cx / S) * 2 - 1;
        cyn[i] = (it.cy / S) * 2 - 1;
        fx[i] = (S / it.size) * (it.flip ? -1 : 1);
        fy[i] = S / it.size;
        ox[i] = BigInt(Math.max(0, Math.min(S - w, Math.floor(it.cx - w / 2))));
        oy[i] = BigInt(Math.max(0, Math.min(S - w, Math.floor(it.cy - w / 2))));
        base[i] = BigInt(row * S * S);
        cls[i] = it.label + 1;
      });
      const r = arange(0, w, 1, { dtype: "int64" });
      const oxT = fromTypedArray(ox, [m, 1, 1]), oyT = fromTypedArray(oy, [m, 1, 1]);
      const colsT = oxT.add(r.view([1, 1, w])); // [m, 1, w] canvas column of each window column
      const rowsT = oyT.add(r.view([1, w, 1])); // [m, w, 1]
      // flat positions in the mask [b·S·S] and in the canvas [b·3·S·S] (channel planes)
      const pos = rowsT.mul(S).add(colsT).add(fromTypedArray(base, [m, 1, 1])); // [m, w, w]
      const posM = pos.flatten();
      const posC = pos.unsqueeze(1).add(fromTypedArray(base, [m, 1, 1, 1]).mul(2))
        .add(arange(0, 3 * S * S, S * S, { dtype: "int64" }).view([1, 3, 1, 1])).flatten();
      const layer = scope(() => {
        const grey = source.indexSelect(0, fromTypedArray(idx, [m])).float().unsqueeze(1);
        const peak = grey.amax([1, 2, 3], { keepdim: true }).clamp(1);
        const shade = grey.div(peak);
        const alpha = grey.mul(1 / OPAQUE_GREY).clamp(0, 1);
        // pixel centres in [-1, 1] (align_corners=false), relative to the frame, in frame units
        const gx = colsT.float().add(0.5).mul(2 / S).sub(1).sub(fromTypedArray(cxn, [m, 1, 1]))
          .mul(fromTypedArray(fx, [m, 1, 1])).expand([m, w, w]);
        const gy = rowsT.float().add(0.5).mul(2 / S).sub(1).sub(fromTypedArray(cyn, [m, 1, 1]))
          .mul(fromTypedArray(fy, [m, 1, 1])).expand([m, w, w]);
        const placed = gridSample(stack([shade, alpha], 1).squeeze(2), stack([gx, gy], 3), {
          mode: "bilinear",
          paddingMode: "zeros",
          alignCorners: false,
        });
        return {
          shade: placed.narrow(1, 0, 1).contiguous(),
          alpha: placed.narrow(1, 1, 1).contiguous(),
        };
      });
      const cover = layer.alpha.ge(0.5); // [m, 1, w, w]
      const coverF = cover.float();
      const under = canvas.gather(0, posC).view([m, 3, w, w]);
      // luminance of what lies under the item, and its mean shading, per scene
      const lumSum = under.mul(lumaW).sum(1, { keepdim: true }).mul(coverF).to("float64")
        .sum([1, 2, 3]).toTypedArray() as Float64Array;
      const shadeSum = layer.shade.mul(coverF).to("float64").sum([1, 2, 3])
        .toTypedArray() as Float64Array;
      const area = coverF.to("float64").sum([1, 2, 3]).toTypedArray() as Float64Array;
      const colors = new Float32Array(m * 3);
      rows.forEach((row, i) => {
        const it = params[row].items[k];
        const a = area[i];
        const l = a > 0 ? lumSum[i] / a : 0.5;
        const ms = a > 0 ? shadeSum[i] / a : 1;
        const target = l < 0.5 ? l + it.delta : l - it.delta;
        const c = colorWithLuma(it.hue, it.sat, target / (1 - SHADING + SHADING * ms));
        colors.set(c, 3 * i);
        const f = itemInfo.subarray((row * K + k) * ITEM_FIELDS, (row * K + k + 1) * ITEM_FIELDS);
        f.set([1, it.label, it.source, it.size, it.cx, it.cy, it.flip ? 1 : 0, ...c]);
      });
      const item = fromTypedArray(colors, [m, 3, 1, 1])
        .mul(layer.shade.mul(SHADING).add(1 - SHADING));
      canvas = canvas.scatter(0, posC, where(cover, item, under).flatten());
      const maskWin = mask.gather(0, posM).view([m, 1, w, w]);
      mask = mask.scatter(
        0,
        posM,
        where(cover, fromTypedArray(cls, [m, 1, 1, 1]), maskWin).flatten(),
      );
      if (ambiguous && o.ignoreBand) {
        // the front-most item whose alpha reaches lo decides: ambiguous while its alpha < hi
        const reached = layer.alpha.ge(o.ignoreBand[0]);
        const amb = layer.alpha.lt(o.ignoreBand[1]).to("uint8");
        const ambWin = ambiguous.gather(0, posM).view([m, 1, w, w]);
        ambiguous = ambiguous.scatter(0, posM, where(reached, amb, ambWin).flatten());
      }
    }
    if (ambiguous) mask = mask.maskedFill(ambiguous.to("bool"), 255);
    // label: the class with the most mask pixels (ties: the lower class)
    const counts = mask.view([b, S * S]).long()
      .add(arange(0, b, 1, { dtype: "int64" }).view([b, 1]).mul(256))
      .flatten().bincount({ minlength: b * 256 }).view([b, 256]).narrow(1, 1, 10);
    const labels = counts.argmax(1).to("uint8");
    return {
      images: toU8(canvas).toTypedArray() as Uint8Array,
      masks: mask.toTypedArray() as Uint8Array,
      labels: labels.toTypedArray() as Uint8Array,
    };
  });
  return { ...out, items: itemInfo };
}

/** One progress line on stderr. */
function progress(quiet: boolean, msg: string): void {
  if (!quiet) console.error(`fashion-scenes: ${msg}`);
}

/**
 * Generates a fashion-scenes set in memory (no cache; see {@link FashionScenes.open} for the
 * cached path). Progress goes to stderr unless `quiet`.
 */
export async function generateFashionScenes(opts: FashionScenesOptions = {}): Promise<SceneArrays> {
  const o = resolveSceneOptions(opts);
  const quiet = opts.quiet ?? false;
  const src = await loadFashionMNIST(
    o.split === "train" ? "train" : "test",
    opts.mnistDir ?? FASHION_MNIST_DIR,
  );
  return generateFrom(o, src, quiet);
}

function generateFrom(
  o: ResolvedSceneOptions,
  src: FashionMNISTArrays,
  quiet: boolean,
): SceneArrays {
  const S = o.size;
  const K = o.items[1];
  const byClass = classIndex(src.labels);
  const images = new Uint8Array(o.count * 3 * S * S);
  const masks = new Uint8Array(o.count * S * S);
  const labels = new Uint8Array(o.count);
  const items = new Float32Array(o.count * K * ITEM_FIELDS);
  const t0 = performance.now();
  progress(quiet, `generating ${o.count} ${o.split} scenes of ${S}×${S} (seed ${o.seed})`);
  const source = keep(fromTypedArray(src.images, [src.count, src.height, src.width]));
  try {
    let next = 0.1;
    for (let start = 0; start < o.count; start += CHUNK) {
      const end = Math.min(o.count, start + CHUNK);
      const params: SceneParams[] = [];
      for (let i = start; i < end; i++) params.push(drawScene(o, byClass, i));
      const r = renderScenes(o, params, source);
      images.set(r.images, start * 3 * S * S);
      masks.set(r.masks, start * S * S);
      labels.set(r.labels, start);
      items.set(r.items, start * K * ITEM_FIELDS);
      if (end / o.count >= next && end < o.count) {
        progress(quiet, `  ${end}/${o.count} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
        while (next <= end / o.count) next += 0.1;
      }
    }
  } finally {
    source.free();
  }
  progress(
    quiet,
    `generated ${o.count} scenes in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  return { options: o, images, masks, labels, items };
}

/**
 * The background texture of scene `i` of a set with options `o`, as stored (uint8 [3, S, S],
 * quantised like the images): mask-0 pixels of the scene equal it exactly.
 */
export async function sceneBackground(
  opts: FashionScenesOptions,
  i: number,
): Promise<Tensor> {
  const o = resolveSceneOptions(opts);
  checkIndex({ length: o.count }, i, `fashion-scenes ${o.split}`);
  const src = await loadFashionMNIST(
    o.split === "train" ? "train" : "test",
    opts.mnistDir ?? FASHION_MNIST_DIR,
  );
  const p = drawScene(o, classIndex(src.labels), i);
  return scope(() => toU8(renderBackground(o, [p])).squeeze(0));
}

// ---- cache -------------------------------------------------------------------------------------

const MAGIC = "DDSCENES";

interface CacheHeader {
  format: "densedino-fashion-scenes";
  version: number;
  options: ResolvedSceneOptions;
  source: string;
  itemFields: number;
  layout: { labels: number; items: number; images: number; masks: number; end: number };
}

function layoutOf(o: ResolvedSceneOptions, headerEnd: number): CacheHeader["layout"] {
  const align = (v: number) => Math.ceil(v / 8) * 8;
  const labels = align(headerEnd);
  const items = align(labels + o.count);
  const images = align(items + o.count * o.items[1] * ITEM_FIELDS * 4);
  const masks = images + o.count * 3 * o.size * o.size;
  const end = masks + o.count * o.size * o.size;
  return { labels, items, images, masks, end };
}

/**
 * Serialises a set to the cache format: `DDSCENES`, a uint32 LE header length, the JSON header
 * (format, version, options, source, layout), then 8-byte aligned sections: labels (uint8
 * [N]), items (float32 LE [N, K, 10]), images (uint8 [N, 3, S, S]), masks (uint8 [N, S, S]).
 */
function serialize(a: SceneArrays, source: string): Uint8Array {
  const enc = new TextEncoder();
  // the offsets depend on the header's length, which depends on the offsets' digits: iterate
  // to the fixed point (the lengths only grow, so this ends within a few rounds)
  let layout = layoutOf(a.options, 0);
  let json: Uint8Array;
  for (;;) {
    const h: CacheHeader = {
      format: "densedino-fashion-scenes",
      version: FASHION_SCENES_VERSION,
      options: a.options,
      source,
      itemFields: ITEM_FIELDS,
      layout,
    };
    json = enc.encode(JSON.stringify(h));
    const next = layoutOf(a.options, 12 + json.length);
    if (JSON.stringify(next) === JSON.stringify(layout)) break;
    layout = next;
  }
  const out = new Uint8Array(layout.end);
  out.set(enc.encode(MAGIC), 0);
  new DataView(out.buffer).setUint32(8, json.length, true);
  out.set(json, 12);
  out.set(a.labels, layout.labels);
  out.set(new Uint8Array(a.items.buffer, a.items.byteOffset, a.items.byteLength), layout.items);
  out.set(a.images, layout.images);
  out.set(a.masks, layout.masks);
  return out;
}

/** Parses a cache file; a reason string when it is not a valid cache of `o` / `source`. */
function deserialize(
  bytes: Uint8Array,
  o: ResolvedSceneOptions,
  source: string,
): SceneArrays | string {
  if (bytes.length < 12 || new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) {
    return "not a fashion-scenes cache file";
  }
  const len = new DataView(bytes.buffer, bytes.byteOffset).getUint32(8, true);
  if (12 + len > bytes.length) return "truncated header";
  let h: CacheHeader;
  try {
    h = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + len)));
  } catch {
    return "unreadable header";
  }
  if (h.format !== "densedino-fashion-scenes" || h.version !== FASHION_SCENES_VERSION) {
    return `version ${h.version}, expected ${FASHION_SCENES_VERSION}`;
  }
  if (JSON.stringify(h.options) !== JSON.stringify(o) || h.source !== source) {
    return "generated with other options";
  }
  const l = layoutOf(o, 12 + len);
  if (JSON.stringify(l) !== JSON.stringify(h.layout)) return "inconsistent layout";
  if (bytes.length !== l.end) return `truncated (${bytes.length} bytes, expected ${l.end})`;
  const itemsBytes = bytes.slice(l.items, l.images);
  return {
    options: o,
    labels: bytes.subarray(l.labels, l.labels + o.count),
    items: new Float32Array(itemsBytes.buffer, 0, o.count * o.items[1] * ITEM_FIELDS),
    images: bytes.subarray(l.images, l.masks),
    masks: bytes.subarray(l.masks, l.end),
  };
}

async function cacheKey(o: ResolvedSceneOptions, source: string): Promise<string> {
  const text = JSON.stringify({ version: FASHION_SCENES_VERSION, options: o, source });
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(d).subarray(0, 8), (x) => x.toString(16).padStart(2, "0"))
    .join("");
}

// ---- the data set ---------------------------------------------------------------------------

/** Mask values: 0 background, k = 1–10 Fashion-MNIST class k − 1, 255 ignore. */
export const FASHION_SCENES_MASK_CLASSES: readonly string[] = Object.freeze([
  "background",
  ...FASHION_MNIST_CLASSES,
]);

/**
 * The fashion-scenes data set (see the module description). `get(i)` gives the image
 * ([3, S, S] float32 in [0, 1]), the mask ([S, S] uint8: 0 background, 1–10 class + 1, 255
 * ignore), the label (class 0–9 of the largest visible item) and the name `fashion-scenes/split/i`.
 * `classes` are the ten image-label classes; {@link FASHION_SCENES_MASK_CLASSES} names the
 * mask values.
 *
 * @example
 * const train = await FashionScenes.open({ split: "train" }); // generates once, then cached
 * const { image, mask, label } = await train.get(0);
 * image.free();
 * mask!.free();
 */
export class FashionScenes implements Dataset {
  /** the options that define the set */
  readonly options: ResolvedSceneOptions;
  /** the cache file (null when caching is off) */
  readonly cachePath: string | null;
  /** whether the set was read from the cache rather than generated */
  readonly fromCache: boolean;
  /** the ten Fashion-MNIST class names (the image labels) */
  readonly classes: readonly string[] = FASHION_MNIST_CLASSES;
  /**
   * A string naming exactly this set: the format version and every option (split, count, seed,
   * size, items, sizes, background, contrast, …). Caches of anything computed from the set (e.g.
   * the evaluations' feature caches) are keyed by it, so sets that differ in any option never
   * share an entry.
   */
  get id(): string {
    return `fashion-scenes/v${FASHION_SCENES_VERSION}:${JSON.stringify(this.options)}`;
  }
  readonly #a: SceneArrays;
  readonly #mnistDir: string;

  private constructor(
    a: SceneArrays,
    mnistDir: string,
    cachePath: string | null,
    fromCache: boolean,
  ) {
    this.options = a.options;
    this.#a = a;
    this.#mnistDir = mnistDir;
    this.cachePath = cachePath;
    this.fromCache = fromCache;
  }

  /**
   * Opens a set: loads it from the cache when a valid file for exactly these options exists,
   * otherwise generates it (progress on stderr) and writes the cache atomically (a temporary
   * file, then a rename). A corrupt or stale cache file is regenerated with a warning.
   *
   * The cache file is `<cacheDir>/<split>-<size>px-<count>-seed<seed>-<hash>.bin`, the hash
   * covering the version, every option and the source file: `DDSCENES`, a uint32 LE header
   * length, a JSON header (format, version, options, source, section offsets), then 8-byte
   * aligned sections: labels uint8 [N], items float32 [N, K, 10], images uint8 [N, 3, S, S],
   * masks uint8 [N, S, S].
   */
  static async open(opts: FashionScenesOptions = {}): Promise<FashionScenes> {
    const o = resolveSceneOptions(opts);
    const quiet = opts.quiet ?? false;
    const mnistDir = opts.mnistDir ?? FASHION_MNIST_DIR;
    const src = await loadFashionMNIST(o.split === "train" ? "train" : "test", mnistDir);
    const st = await Deno.stat(src.imagesPath);
    const source = `${src.imagesPath}:${st.size}`;
    const dir = opts.cacheDir === undefined ? `${userCacheDir()}/fashion-scenes` : opts.cacheDir;
    if (dir === null) return new FashionScenes(generateFrom(o, src, quiet), mnistDir, null, false);
    const file = `${dir}/${o.split}-${o.size}px-${o.count}-seed${o.seed}-${await cacheKey(
      o,
      source,
    )}.bin`;
    let bytes: Uint8Array | null = null;
    try {
      bytes = await Deno.readFile(file);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        progress(
          quiet,
          `warning: could not read the cache ${file} (${(e as Error).message}); regenerating`,
        );
      }
    }
    if (bytes !== null) {
      const r = deserialize(bytes, o, source);
      if (typeof r !== "string") {
        progress(quiet, `${o.count} ${o.split} scenes from the cache ${file}`);
        return new FashionScenes(r, mnistDir, file, true);
      }
      progress(quiet, `warning: ignoring the cache ${file} (${r}); regenerating`);
    }
    const a = generateFrom(o, src, quiet);
    try {
      await Deno.mkdir(dir, { recursive: true });
      await writeFileAtomic(file, serialize(a, source));
      progress(quiet, `cached in ${file}`);
    } catch (e) {
      progress(quiet, `warning: could not write the cache ${file}: ${(e as Error).message}`);
    }
    return new FashionScenes(a, mnistDir, file, false);
  }

  /** number of scenes */
  get length(): number {
    return this.options.count;
  }

  /** canvas side in pixels */
  get size(): number {
    return this.options.size;
  }

  /** the uint8 image labels (class 0–9 of the largest visible item), one per scene; read-only */
  get labels(): Uint8Array {
    return this.#a.labels;
  }

  /** The raw arrays (uint8 images [N, 3, S, S], masks [N, S, S], labels, items); read-only. */
  get arrays(): SceneArrays {
    return this.#a;
  }

  /** `fashion-scenes/split/i` */
  nameOf(i: number): string {
    return `fashion-scenes/${this.options.split}/${i}`;
  }

  /** The uint8 pixels of scene `i`, [3, S, S] row-major (a view; read-only). */
  imageBytes(i: number): Uint8Array {
    checkIndex(this, i, `FashionScenes ${this.options.split}`);
    const n = 3 * this.size * this.size;
    return this.#a.images.subarray(i * n, (i + 1) * n);
  }

  /** The uint8 mask of scene `i`, [S, S] row-major (a view; read-only). */
  maskBytes(i: number): Uint8Array {
    checkIndex(this, i, `FashionScenes ${this.options.split}`);
    const n = this.size * this.size;
    return this.#a.masks.subarray(i * n, (i + 1) * n);
  }

  /** The items of scene `i` in drawing order (later ones occlude earlier ones). */
  items(i: number): SceneItem[] {
    checkIndex(this, i, `FashionScenes ${this.options.split}`);
    const K = this.options.items[1];
    const out: SceneItem[] = [];
    for (let k = 0; k < K; k++) {
      const f = this.#a.items.subarray((i * K + k) * ITEM_FIELDS, (i * K + k + 1) * ITEM_FIELDS);
      if (f[0] !== 1) break;
      out.push({
        label: f[1],
        source: f[2],
        size: f[3],
        cx: f[4],
        cy: f[5],
        flip: f[6] === 1,
        color: [f[7], f[8], f[9]],
      });
    }
    return out;
  }

  /** The background texture of scene `i` (uint8 [3, S, S]; see {@link sceneBackground}). */
  background(i: number): Promise<Tensor> {
    return sceneBackground({ ...this.options, mnistDir: this.#mnistDir, quiet: true }, i);
  }

  /** Scene `i`: image, mask, label and name (the caller frees the tensors). */
  get(i: number): Promise<Sample> {
    try {
      const S = this.size;
      const img = this.imageBytes(i);
      const msk = this.maskBytes(i);
      const image = scope(() => fromTypedArray(img.slice(), [3, S, S]).float().div(255));
      const mask = fromTypedArray(msk.slice(), [S, S]);
      return Promise.resolve({ image, mask, label: this.#a.labels[i], name: this.nameOf(i) });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Scenes `indices` as batches: images float32 [B, 3, S, S] in [0, 1], masks uint8 [B, S, S],
   * labels (the fast path for loaders and evaluations; the caller frees the tensors).
   */
  batch(indices: readonly number[]): { images: Tensor; masks: Tensor; labels: number[] } {
    if (indices.length === 0) throw new TorchError("FashionScenes.batch", "no indices given");
    const S = this.size;
    const n = S * S;
    const img = new Uint8Array(indices.length * 3 * n);
    const msk = new Uint8Array(indices.length * n);
    indices.forEach((i, k) => {
      img.set(this.imageBytes(i), k * 3 * n);
      msk.set(this.maskBytes(i), k * n);
    });
    const images = scope(() => fromTypedArray(img, [indices.length, 3, S, S]).float().div(255));
    const masks = fromTypedArray(msk, [indices.length, S, S]);
    return { images, masks, labels: indices.map((i) => this.#a.labels[i]) };
  }
}

// ---- preview ---------------------------------------------------------------------------------

/** Mask colours for previews: background black, ten class colours, ignore (255) white. */
export const SCENE_MASK_COLORS: readonly (readonly [number, number, number])[] = Object.freeze([
  [0, 0, 0],
  [230, 25, 75],
  [60, 180, 75],
  [255, 225, 25],
  [0, 130, 200],
  [245, 130, 48],
  [145, 30, 180],
  [70, 240, 240],
  [240, 50, 230],
  [210, 245, 60],
  [250, 190, 212],
]);

/**
 * Writes a contact sheet of the first `n` scenes (default 16) of `ds` to
 * `dir/fashion-scenes-<split>.png`: rows of up to 8 scenes, each followed by a row of their
 * masks colour-coded with {@link SCENE_MASK_COLORS} (ignore pixels white). Returns the path.
 */
export async function saveScenePreview(ds: FashionScenes, dir: string, n = 16): Promise<string> {
  if (!Number.isInteger(n) || n < 1) {
    throw new RangeError(`saveScenePreview: n must be a positive integer, got ${n}`);
  }
  n = Math.min(n, ds.length);
  const S = ds.size;
  const cols = Math.min(8, n);
  const rows = Math.ceil(n / cols);
  const gap = 2;
  const W = cols * S + (cols + 1) * gap;
  const H = 2 * rows * S + (2 * rows + 1) * gap;
  const sheet = new Uint8Array(3 * H * W).fill(255);
  for (let i = 0; i < n; i++) {
    const r = Math.floor(i / cols), c = i % cols;
    const x0 = gap + c * (S + gap);
    const yImg = gap + 2 * r * (S + gap);
    const yMask = yImg + S + gap;
    const img = ds.imageBytes(i);
    const msk = ds.maskBytes(i);
    for (let ch = 0; ch < 3; ch++) {
      for (let y = 0; y < S; y++) {
        const dst = ch * H * W + (yImg + y) * W + x0;
        sheet.set(img.subarray(ch * S * S + y * S, ch * S * S + (y + 1) * S), dst);
        for (let x = 0; x < S; x++) {
          const v = msk[y * S + x];
          const col = v === 255 ? [255, 255, 255] : SCENE_MASK_COLORS[v] ?? [128, 128, 128];
          sheet[ch * H * W + (yMask + y) * W + x0 + x] = col[ch];
        }
      }
    }
  }
  await Deno.mkdir(dir, { recursive: true });
  const path = `${dir}/fashion-scenes-${ds.options.split}.png`;
  const t = fromTypedArray(sheet, [3, H, W]);
  try {
    await savePng(path, t);
  } finally {
    t.free();
  }
  return path;
}
