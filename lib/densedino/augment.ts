/**
 * DINO's photometric augmentations (DESIGN.md §4) as batched tensor ops on float image batches
 * [B, 3, H, W] with values in [0, 1], each image with its own random draws:
 *
 * - {@link colorJitter}: torchvision's `RandomApply(ColorJitter(0.4, 0.4, 0.2, 0.1), p=0.8)` —
 *   per image, brightness / contrast / saturation / hue factors and a random order of the four
 *   ops, with the arithmetic of torchvision's tensor implementation (`F.adjust_*`).
 * - {@link randomGrayscale}: ITU-R 601-2 luma replicated to 3 channels, per image with p.
 * - {@link gaussianBlur}: DINO's `GaussianBlur(p)` = PIL's `ImageFilter.GaussianBlur(radius)`
 *   with radius ~ U(0.1, 2.0). Pillow (9.4) does not convolve with a Gaussian: it runs an
 *   *extended box blur* (libImaging/BoxBlur.c) — 3 horizontal then 3 vertical passes of a box
 *   of radius R (from the Gaussian radius, Gwosdek et al. 2011) whose two outer taps carry the
 *   fractional part, the edge pixels replicated at every pass, 8-bit rounding after every pass.
 *   This module runs the same passes with PIL's own fixed-point weights in float, without the
 *   8-bit rounding; see {@link blurWithRadii} for the measured difference to PIL.
 * - {@link solarize}: PIL's `ImageOps.solarize` (pixels ≥ 128/255 inverted), per image with p.
 * - {@link dinoPhotometric}: the per-view pipeline (jitter → grayscale → blur → solarize →
 *   ImageNet normalisation) with the paper's probabilities per view kind.
 *
 * Every random draw comes from the given {@link Generator} (CPU generators: the draws are O(B)
 * numbers, read back to pick groups and factors; the image work runs on the images' device).
 * The same seed gives the same output bytes. The functions that take explicit factors
 * ({@link adjustBrightness}, {@link adjustHue}, {@link applyColorJitter}, {@link blurWithRadii},
 * …) draw nothing.
 *
 * The official DINO code runs these on 8-bit PIL images (each PIL op rounds to 8 bits, and PIL's
 * contrast uses the rounded mean of the grey image); here the images stay float throughout,
 * which is torchvision's behaviour on tensors.
 *
 * @module
 */
import {
  cat,
  conv2d,
  fromTypedArray,
  type Generator,
  rand,
  scope,
  type Tensor,
  TorchError,
  where,
} from "../torch/mod.ts";
import { imagenetNormalize } from "../data/image.ts";

// ---- input checks and per-image parameters ----------------------------------------------------

const FLOATING: readonly string[] = ["float32", "float64", "float16", "bfloat16"];

/** Checks `x` is a floating RGB batch [B, 3, H, W] and returns B. */
function checkBatch(x: Tensor, op: string): number {
  if (x.ndim !== 4 || x.size(1) !== 3) {
    throw new TorchError(op, `expected an RGB batch [B, 3, H, W], got [${x.shape.join(", ")}]`);
  }
  if (!FLOATING.includes(x.dtype)) {
    throw new TorchError(op, `expected a floating tensor, got ${x.dtype}`);
  }
  return x.size(0);
}

function checkProbability(p: number, op: string): void {
  if (!(p >= 0 && p <= 1)) throw new TorchError(op, `probability must be in [0, 1], got ${p}`);
}

/** `y`, or a copy of `x` when `y` is `x` itself: the public ops always return a new tensor. */
function fresh(x: Tensor, y: Tensor): Tensor {
  return y === x ? x.clone() : y;
}

/** One value per image from a number (all images) or an array of B numbers. */
function perImage(v: number | readonly number[], b: number, op: string, what: string): number[] {
  const out = typeof v === "number" ? new Array<number>(b).fill(v) : [...v];
  if (out.length !== b) {
    throw new TorchError(op, `${what}: expected ${b} values (one per image), got ${out.length}`);
  }
  for (const f of out) {
    if (!Number.isFinite(f)) throw new TorchError(op, `${what}: ${f} is not a finite number`);
  }
  return out;
}

/** A [n, 1, 1, 1] tensor of x's dtype and device holding `values` (rounded to that dtype). */
function column(values: readonly number[], x: Tensor): Tensor {
  return fromTypedArray(Float64Array.from(values), [values.length, 1, 1, 1], {
    dtype: x.dtype,
    device: x.device,
  });
}

/** U[0, 1) draws [rows, cols] from `gen` on the CPU, as JS numbers (float32 values). */
function draw(rows: number, cols: number, gen: Generator | undefined): Float32Array {
  return scope(() => {
    const u = rand([rows, cols], { generator: gen });
    return u.toTypedArray() as Float32Array;
  });
}

/**
 * Applies `fn(group, members, images)` to the images of each group at once (`group[i]` is image
 * i's group; `members` are the batch indices of the group, in order) and puts the results back
 * in batch order. One gather in, one out; a single group skips both.
 */
function applyGrouped(
  x: Tensor,
  group: readonly number[],
  fn: (g: number, members: number[], xs: Tensor) => Tensor,
): Tensor {
  const groups = new Map<number, number[]>();
  group.forEach((g, i) => {
    const m = groups.get(g);
    if (m) m.push(i);
    else groups.set(g, [i]);
  });
  const ids = [...groups.keys()].sort((a, b) => a - b);
  if (ids.length === 1) return fn(ids[0], groups.get(ids[0])!, x);
  return scope(() => {
    const order = ids.flatMap((g) => groups.get(g)!);
    const xs = x.indexSelect(0, indexTensor(order, x));
    const parts: Tensor[] = [];
    let at = 0;
    for (const g of ids) {
      const members = groups.get(g)!;
      parts.push(fn(g, members, xs.narrow(0, at, members.length)));
      at += members.length;
    }
    const inverse = new Array<number>(order.length);
    order.forEach((i, j) => (inverse[i] = j));
    return cat(parts).indexSelect(0, indexTensor(inverse, x));
  });
}

// ---- grayscale ------------------------------------------------------------------------------

/** ITU-R 601-2 luma weights (R, G, B): PIL's `convert("L")`, used by {@link randomGrayscale}. */
export const LUMA_ITU_R_601: readonly [number, number, number] = [0.299, 0.587, 0.114];
/**
 * The luma weights of torchvision's tensor `rgb_to_grayscale` (R, G, B), which its
 * `adjust_contrast` / `adjust_saturation` use: kept in the colour jitter for the same arithmetic.
 */
export const LUMA_TORCHVISION: readonly [number, number, number] = [0.2989, 0.587, 0.114];

/**
 * Grey levels [B, 1, H, W] of an RGB batch: `w₀·R + w₁·G + w₂·B`, summed in that order (as
 * torchvision does), weights {@link LUMA_ITU_R_601} by default.
 */
export function rgbToGrayscale(
  x: Tensor,
  weights: readonly [number, number, number] = LUMA_ITU_R_601,
): Tensor {
  checkBatch(x, "rgbToGrayscale");
  return scope(() =>
    x.narrow(1, 0, 1).mul(weights[0])
      .add(x.narrow(1, 1, 1).mul(weights[1]))
      .add(x.narrow(1, 2, 1).mul(weights[2]))
  );
}

/** Every image to grey (ITU-R 601-2 luma), replicated to 3 channels: [B, 3, H, W]. */
export function toGrayscale(x: Tensor): Tensor {
  checkBatch(x, "toGrayscale");
  return scope(() => rgbToGrayscale(x).expand(x.shape).contiguous());
}

/**
 * torchvision's `RandomGrayscale(p)` per image: each image independently, with probability `p`,
 * becomes its ITU-R 601-2 luma replicated to 3 channels. Draws B numbers from `gen`.
 */
export function randomGrayscale(x: Tensor, p = 0.2, gen?: Generator): Tensor {
  return fresh(x, grayscaleStep(x, p, gen));
}

/** {@link randomGrayscale}, returning `x` itself when no image is chosen. */
function grayscaleStep(x: Tensor, p: number, gen: Generator | undefined): Tensor {
  const b = checkBatch(x, "randomGrayscale");
  checkProbability(p, "randomGrayscale");
  const u = draw(b, 1, gen);
  const chosen = [...u].map((v) => v < p);
  if (!chosen.some((c) => c)) return x;
  if (chosen.every((c) => c)) return toGrayscale(x);
  return scope(() => {
    const mask = column(chosen.map(Number), x).gt(0);
    return where(mask, rgbToGrayscale(x), x);
  });
}

// ---- colour jitter: the four ops with explicit factors ----------------------------------------

/**
 * torchvision's `_blend` with per-image ratios: `(f·a + (1 − f)·b).clamp(0, 1)`, `1 − f` formed
 * in double then rounded to the images' dtype, as torchvision does with a Python float factor.
 */
function blend(a: Tensor, b: Tensor | null, f: readonly number[]): Tensor {
  return scope(() => {
    const fa = a.mul(column(f, a));
    const sum = b === null ? fa : fa.add(b.mul(column(f.map((v) => 1 - v), a)));
    return sum.clamp(0, 1);
  });
}

function checkNonNegative(f: readonly number[], op: string): void {
  for (const v of f) if (v < 0) throw new TorchError(op, `factor must be ≥ 0, got ${v}`);
}

/**
 * torchvision's `adjust_brightness` per image: `(f·x).clamp(0, 1)`; `factor` is one number for
 * every image or one per image.
 */
export function adjustBrightness(x: Tensor, factor: number | readonly number[]): Tensor {
  const b = checkBatch(x, "adjustBrightness");
  const f = perImage(factor, b, "adjustBrightness", "factor");
  checkNonNegative(f, "adjustBrightness");
  return blend(x, null, f);
}

/**
 * torchvision's `adjust_contrast` per image: blend with the mean of the image's grey levels
 * (torchvision's luma weights, mean over the whole image).
 */
export function adjustContrast(x: Tensor, factor: number | readonly number[]): Tensor {
  const b = checkBatch(x, "adjustContrast");
  const f = perImage(factor, b, "adjustContrast", "factor");
  checkNonNegative(f, "adjustContrast");
  return scope(() => {
    const mean = rgbToGrayscale(x, LUMA_TORCHVISION).mean([1, 2, 3], { keepdim: true });
    return blend(x, mean, f);
  });
}

/** torchvision's `adjust_saturation` per image: blend with the image's grey levels. */
export function adjustSaturation(x: Tensor, factor: number | readonly number[]): Tensor {
  const b = checkBatch(x, "adjustSaturation");
  const f = perImage(factor, b, "adjustSaturation", "factor");
  checkNonNegative(f, "adjustSaturation");
  return scope(() => blend(x, rgbToGrayscale(x, LUMA_TORCHVISION), f));
}

/**
 * RGB → HSV [B, 3, H, W] (H, S, V in [0, 1)), torchvision's tensor `_rgb2hsv` step for step
 * (same float arithmetic; hue and saturation 0 where R = G = B).
 */
export function rgbToHsv(x: Tensor): Tensor {
  checkBatch(x, "rgbToHsv");
  return scope(() => {
    const [r, g] = [x.narrow(1, 0, 1), x.narrow(1, 1, 1)];
    const maxc = x.amax(1, { keepdim: true });
    const minc = x.amin(1, { keepdim: true });
    const eqc = maxc.eq(minc);
    const cr = maxc.sub(minc);
    const s = cr.div(maxc.maskedFill(eqc, 1));
    const crDivisor = cr.maskedFill(eqc, 1);
    const c = maxc.sub(x).div(crDivisor); // rc, gc, bc at once
    const [rc, gc, bc] = [c.narrow(1, 0, 1), c.narrow(1, 1, 1), c.narrow(1, 2, 1)];
    // exactly one of torchvision's three masked terms is selected; the others are ±0
    const h = where(
      maxc.eq(r),
      bc.sub(gc),
      where(maxc.eq(g), rc.add(2).sub(bc), gc.add(4).sub(rc)),
    );
    return cat([h.div(6).add(1).remainder(1), s, maxc], 1);
  });
}

// For sector i = ⌊6h⌋ mod 6, which of [v, q, p, t] each of R, G, B takes (torchvision's a1..a3).
const HSV_SECTOR_PICK = Int32Array.from([
  // R  G  B
  0,
  3,
  2, // i = 0: (v, t, p)
  1,
  0,
  2, // i = 1: (q, v, p)
  2,
  0,
  3, // i = 2: (p, v, t)
  2,
  1,
  0, // i = 3: (p, q, v)
  3,
  2,
  0, // i = 4: (t, p, v)
  0,
  2,
  1, // i = 5: (v, p, q)
]);

/** HSV → RGB [B, 3, H, W], torchvision's tensor `_hsv2rgb` (the sector choice as a gather). */
export function hsvToRgb(hsv: Tensor): Tensor {
  checkBatch(hsv, "hsvToRgb");
  return scope(() => {
    const [h, s, v] = [hsv.narrow(1, 0, 1), hsv.narrow(1, 1, 1), hsv.narrow(1, 2, 1)];
    const h6 = h.mul(6);
    const i = h6.floor();
    const f = h6.sub(i);
    const p = v.mul(s.rsub(1)).clamp(0, 1);
    const q = v.mul(s.mul(f).rsub(1)).clamp(0, 1);
    const t = v.mul(s.mul(f.rsub(1)).rsub(1)).clamp(0, 1);
    const sector = i.to("int64").remainder(6);
    const dev = { device: hsv.device };
    const channel = fromTypedArray(Int32Array.from([0, 1, 2]), [1, 3, 1, 1], {
      dtype: "int64",
      ...dev,
    });
    const pick = fromTypedArray(HSV_SECTOR_PICK, [18], { dtype: "int64", ...dev });
    const which = pick.indexSelect(0, sector.mul(3).add(channel).flatten())
      .reshape([hsv.size(0), 3, hsv.size(2), hsv.size(3)]);
    return cat([v, q, p, t], 1).gather(1, which);
  });
}

/**
 * torchvision's `adjust_hue` per image: RGB → HSV, `H ← (H + h) mod 1`, HSV → RGB, with
 * h in [−0.5, 0.5] (one number for every image or one per image). Not an exact identity at
 * h = 0 (the HSV round trip rounds).
 */
export function adjustHue(x: Tensor, hueFactor: number | readonly number[]): Tensor {
  const b = checkBatch(x, "adjustHue");
  const hf = perImage(hueFactor, b, "adjustHue", "hue factor");
  for (const v of hf) {
    if (!(v >= -0.5 && v <= 0.5)) {
      throw new TorchError("adjustHue", `hue factor must be in [-0.5, 0.5], got ${v}`);
    }
  }
  return scope(() => {
    const hsv = rgbToHsv(x);
    const h = hsv.narrow(1, 0, 1).add(column(hf, x)).remainder(1);
    return hsvToRgb(cat([h, hsv.narrow(1, 1, 2)], 1));
  });
}

// ---- colour jitter: random factors and order ---------------------------------------------------

/** A jitter strength: `v` means torchvision's range (see {@link ColorJitterStrength}), or [lo, hi]. */
export type JitterRange = number | readonly [number, number];

/**
 * torchvision `ColorJitter` strengths. brightness / contrast / saturation `v` draw a factor in
 * [max(0, 1 − v), 1 + v], hue `h` (≤ 0.5) a shift in [−h, h]; a pair gives the range itself.
 * An omitted or zero strength (or the range [1, 1], [0, 0] for hue) leaves that op out.
 */
export interface ColorJitterStrength {
  /** brightness: factor in [max(0, 1 − v), 1 + v] (a blend with black) */
  brightness?: JitterRange;
  /** contrast: factor in [max(0, 1 − v), 1 + v] (a blend with the mean grey level) */
  contrast?: JitterRange;
  /** saturation: factor in [max(0, 1 − v), 1 + v] (a blend with the grey image) */
  saturation?: JitterRange;
  /** hue: shift in [−h, h], h ≤ 0.5 (in turns of the colour wheel) */
  hue?: JitterRange;
}

/** DINO's colour jitter strengths: ColorJitter(0.4, 0.4, 0.2, 0.1). */
export const DINO_COLOR_JITTER: Readonly<Required<ColorJitterStrength>> = Object.freeze({
  brightness: 0.4,
  contrast: 0.4,
  saturation: 0.2,
  hue: 0.1,
});

/** The op ids of {@link ColorJitterParams.order}, torchvision's `fn_idx` numbering. */
export const JITTER_OPS: readonly ["brightness", "contrast", "saturation", "hue"] = [
  "brightness",
  "contrast",
  "saturation",
  "hue",
];

/**
 * Per-image colour jitter parameters. `order[i]` is a permutation of 0..3 (0 brightness,
 * 1 contrast, 2 saturation, 3 hue: the order image i gets the ops); a factor array is null when
 * that op is left out; `apply[i]` false leaves image i unchanged (RandomApply not taken).
 */
export interface ColorJitterParams {
  /** per image: jitter it (true) or leave it unchanged */
  apply: boolean[];
  /** per image: the order of the ops, a permutation of 0..3 */
  order: number[][];
  /** per-image brightness factors, or null to leave brightness out */
  brightness: number[] | null;
  /** per-image contrast factors, or null to leave contrast out */
  contrast: number[] | null;
  /** per-image saturation factors, or null to leave saturation out */
  saturation: number[] | null;
  /** per-image hue shifts in [−0.5, 0.5], or null to leave hue out */
  hue: number[] | null;
}

function jitterRange(
  v: JitterRange | undefined,
  name: string,
  hue: boolean,
): [number, number] | null {
  if (v === undefined) return null;
  let lo: number, hi: number;
  if (typeof v === "number") {
    if (!(v >= 0)) throw new TorchError("colorJitter", `${name} must be ≥ 0, got ${v}`);
    [lo, hi] = hue ? [-v, v] : [Math.max(0, 1 - v), 1 + v];
  } else {
    [lo, hi] = v;
    if (!(lo <= hi)) {
      throw new TorchError("colorJitter", `${name} range [${lo}, ${hi}] is not ordered`);
    }
  }
  if (hue && !(lo >= -0.5 && hi <= 0.5)) {
    throw new TorchError("colorJitter", `hue range [${lo}, ${hi}] must lie in [-0.5, 0.5]`);
  }
  if (!hue && !(lo >= 0)) {
    throw new TorchError("colorJitter", `${name} range [${lo}, ${hi}] must be ≥ 0`);
  }
  const neutral = hue ? 0 : 1;
  return lo === neutral && hi === neutral ? null : [lo, hi];
}

/**
 * Draws colour jitter parameters for `batch` images: per image, whether to apply (u < p), a
 * uniformly random order of the four ops and the factors (uniform in each op's range, rounded
 * to float32 as torchvision's `uniform_` draws are). Draws 9·batch numbers from `gen`, whatever
 * the strengths.
 */
export function sampleColorJitter(
  batch: number,
  strength: ColorJitterStrength = DINO_COLOR_JITTER,
  p = 0.8,
  gen?: Generator,
): ColorJitterParams {
  if (!Number.isInteger(batch) || batch < 0) {
    throw new TorchError("colorJitter", `batch must be a non-negative integer, got ${batch}`);
  }
  checkProbability(p, "colorJitter");
  const ranges = [
    jitterRange(strength.brightness, "brightness", false),
    jitterRange(strength.contrast, "contrast", false),
    jitterRange(strength.saturation, "saturation", false),
    jitterRange(strength.hue, "hue", true),
  ];
  const u = batch > 0 ? draw(batch, 9, gen) : new Float32Array(0);
  const factors = ranges.map((r, k) =>
    r === null
      ? null
      : Array.from({ length: batch }, (_, i) =>
        Math.fround(r[0] + (r[1] - r[0]) * u[i * 9 + 5 + k]))
  );
  const order = Array.from({ length: batch }, (_, i) => {
    const keys = u.subarray(i * 9 + 1, i * 9 + 5);
    return [0, 1, 2, 3].sort((a, b) => keys[a] - keys[b] || a - b);
  });
  return {
    apply: Array.from({ length: batch }, (_, i) => u[i * 9] < p),
    order,
    brightness: factors[0],
    contrast: factors[1],
    saturation: factors[2],
    hue: factors[3],
  };
}

const JITTER_FNS: readonly ((x: Tensor, f: readonly number[]) => Tensor)[] = [
  adjustBrightness,
  adjustContrast,
  adjustSaturation,
  adjustHue,
];

/** Group id of the images an op slot leaves unchanged. */
const UNCHANGED = 4;

/**
 * How {@link applyColorJitter} batches the per-image orders (the result is the same):
 *
 * - `"orders"`: the images are grouped by their order of ops (up to 24 groups: one gather in,
 *   one out) and each group runs its 4 ops in turn. Fewest full-batch copies; many small ops.
 * - `"slots"`: for each of the 4 positions in the order, the batch is rearranged so that the
 *   images taking the same op there are contiguous, and each op runs once on its run. At most
 *   4 calls per op, but 2 full-batch copies per position.
 * - `"auto"` (default): `"orders"` when the groups are large (≥ 16384 pixels per group on
 *   average), else `"slots"`. Measured on CPU (1–2 threads, p = 0.8): orders is ~1.6× faster
 *   at B=32, 224 px and ~2.5× at B=640, 96 px; slots ~1.4–1.7× faster at B=64, 48 px and
 *   B=256, 32 px (2 threads); about even at B=64, 96 px.
 */
export type JitterGrouping = "auto" | "orders" | "slots";

/** Per-group pixel count above which {@link JitterGrouping} "auto" picks "orders". */
const ORDERS_MIN_PIXELS = 16384;

/**
 * Applies colour jitter with explicit per-image parameters: image i gets the ops of `order[i]`
 * in that order with its own factors (each op clamps to [0, 1], as torchvision's do), or stays
 * unchanged when `apply[i]` is false. Batched over images (see {@link JitterGrouping}).
 */
export function applyColorJitter(
  x: Tensor,
  params: ColorJitterParams,
  grouping: JitterGrouping = "auto",
): Tensor {
  const b = checkBatch(x, "applyColorJitter");
  const factors = [params.brightness, params.contrast, params.saturation, params.hue];
  if (params.apply.length !== b || params.order.length !== b) {
    throw new TorchError("applyColorJitter", `expected parameters for ${b} images`);
  }
  factors.forEach((f, k) => {
    if (f !== null && f.length !== b) {
      throw new TorchError("applyColorJitter", `${JITTER_OPS[k]}: expected ${b} factors`);
    }
  });
  for (const o of params.order) {
    if (o.length !== 4 || [...o].sort().join() !== "0,1,2,3") {
      throw new TorchError("applyColorJitter", `order [${o}] is not a permutation of 0..3`);
    }
  }
  if (!["auto", "orders", "slots"].includes(grouping)) {
    throw new TorchError("applyColorJitter", `unknown grouping "${grouping}"`);
  }
  return scope(() => fresh(x, jitterBatched(x, params.order, params.apply, factors, grouping)));
}

type Factors = readonly (readonly number[] | null)[];

/** The jitter with the grouping resolved; returns `x` itself when nothing applies. */
function jitterBatched(
  x: Tensor,
  order: readonly (readonly number[])[],
  apply: readonly boolean[],
  factors: Factors,
  grouping: JitterGrouping,
): Tensor {
  // per image, the ops it gets in order ("" = unchanged)
  const keys = order.map((o, i) => apply[i] ? o.filter((op) => factors[op] !== null).join("") : "");
  const ids = new Map<string, number>();
  for (const k of keys) if (k !== "" && !ids.has(k)) ids.set(k, ids.size);
  if (ids.size === 0) return x;
  if (grouping === "auto") {
    const applied = keys.filter((k) => k !== "").length;
    const perGroup = (applied * x.size(2) * x.size(3)) / ids.size;
    grouping = perGroup >= ORDERS_MIN_PIXELS ? "orders" : "slots";
  }
  if (grouping === "slots") return jitterSlots(x, order, apply, factors);
  const group = keys.map((k) => (k === "" ? -1 : ids.get(k)!));
  return applyGrouped(x, group, (g, members, xs) => {
    if (g < 0) return xs;
    return scope(() => {
      let y = xs;
      for (const op of order[members[0]]) {
        const f = factors[op];
        if (f !== null) y = JITTER_FNS[op](y, members.map((i) => f[i]));
      }
      return y;
    });
  });
}

/** int64 indices on x's device. */
function indexTensor(v: readonly number[], x: Tensor): Tensor {
  return fromTypedArray(Int32Array.from(v), [v.length], { dtype: "int64", device: x.device });
}

/**
 * The jitter by slots: for each of the 4 positions in the per-image order, the batch is
 * rearranged so that the images taking the same op there are contiguous (one gather from the
 * previous slot's arrangement), each op runs once on its run of images, and the runs are
 * concatenated; one last gather restores batch order. Returns `x` itself when nothing applies.
 */
function jitterSlots(
  x: Tensor,
  order: readonly (readonly number[])[],
  apply: readonly boolean[],
  factors: Factors,
): Tensor {
  const b = order.length;
  let cur = x;
  let arrangement = Array.from({ length: b }, (_, i) => i); // cur[j] holds image arrangement[j]
  for (let slot = 0; slot < 4; slot++) {
    const group = order.map((o, i) => apply[i] && factors[o[slot]] !== null ? o[slot] : UNCHANGED);
    if (group.every((g) => g === UNCHANGED)) continue;
    const next = Array.from({ length: b }, (_, i) => i).sort((i, j) =>
      group[i] - group[j] || i - j
    );
    const position = new Array<number>(b);
    arrangement.forEach((img, j) => (position[img] = j));
    const rel = next.map((img) => position[img]);
    const xs = rel.every((r, j) => r === j) ? cur : cur.indexSelect(0, indexTensor(rel, x));
    const parts: Tensor[] = [];
    for (let start = 0; start < b;) {
      const op = group[next[start]];
      let end = start + 1;
      while (end < b && group[next[end]] === op) end++;
      const run = xs.narrow(0, start, end - start);
      const f = factors[op];
      parts.push(
        op === UNCHANGED || f === null
          ? run
          : JITTER_FNS[op](run, next.slice(start, end).map((i) => f[i])),
      );
      start = end;
    }
    cur = parts.length === 1 ? parts[0] : cat(parts);
    arrangement = next;
  }
  if (arrangement.every((img, j) => img === j)) return cur;
  const inverse = new Array<number>(b);
  arrangement.forEach((img, j) => (inverse[img] = j));
  return cur.indexSelect(0, indexTensor(inverse, x));
}

/**
 * torchvision's `RandomApply([ColorJitter(strength)], p)` per image: each image draws whether
 * to jitter, its own factors and its own order of the four ops ({@link sampleColorJitter}),
 * then {@link applyColorJitter}. Defaults: DINO's strengths and p = 0.8.
 */
export function colorJitter(
  x: Tensor,
  strength: ColorJitterStrength = DINO_COLOR_JITTER,
  gen?: Generator,
  p = 0.8,
): Tensor {
  return fresh(x, jitterStep(x, strength, gen, p));
}

/** {@link colorJitter}, returning `x` itself when no image is jittered. */
function jitterStep(
  x: Tensor,
  strength: ColorJitterStrength,
  gen: Generator | undefined,
  p: number,
): Tensor {
  const b = checkBatch(x, "colorJitter");
  const jp = sampleColorJitter(b, strength, p, gen);
  const factors = [jp.brightness, jp.contrast, jp.saturation, jp.hue];
  return scope(() => jitterBatched(x, jp.order, jp.apply, factors, "auto"));
}

// ---- Gaussian blur (PIL's extended box blur) ----------------------------------------------------

/** PIL's box blur for one Gaussian radius (Pillow 9.4, libImaging/BoxBlur.c). */
export interface PilBoxBlur {
  /** the Gaussian radius, rounded to float32 as PIL receives it */
  radius: number;
  /** the extended box radius R of each of the 3 passes (float32, as PIL computes it) */
  boxRadius: number;
  /** ⌊R⌋: the box covers 2⌊R⌋ + 1 full taps plus one fractional tap on each side */
  taps: number;
  /** the weight of each full tap (PIL's 24-bit fixed-point `ww` / 2²⁴) */
  weight: number;
  /** the weight of each outer tap (PIL's `fw` / 2²⁴) */
  edgeWeight: number;
}

/**
 * The box PIL's `GaussianBlur(radius)` runs 3 times in each direction: R from σ² = radius²/3 by
 * Gwosdek et al.'s extended box formula, and PIL's fixed-point weights, with PIL's float32 and
 * integer arithmetic (so the weights are PIL's exactly).
 */
export function pilBoxBlur(radius: number): PilBoxBlur {
  if (!(radius >= 0) || !Number.isFinite(radius)) {
    throw new TorchError("gaussianBlur", `radius must be a finite number ≥ 0, got ${radius}`);
  }
  const f = Math.fround;
  const r = f(radius);
  const sigma2 = f(f(r * r) / 3);
  const L = f(Math.sqrt(12.0 * sigma2 + 1.0));
  const l = f(Math.floor((L - 1.0) / 2.0));
  let a = f(f(2 * l + 1) * f(f(l * f(l + 1)) - f(3 * sigma2)));
  a = f(a / f(6 * f(sigma2 - f(f(l + 1) * f(l + 1)))));
  const boxRadius = f(l + a);
  const taps = Math.trunc(boxRadius);
  const ww = Math.trunc(f(16777216 / f(f(boxRadius * 2) + 1)));
  const fw = Math.floor((16777216 - (taps * 2 + 1) * ww) / 2);
  return { radius: r, boxRadius, taps, weight: ww / 16777216, edgeWeight: fw / 16777216 };
}

/**
 * PIL's `ImageFilter.GaussianBlur(radii[i])` on each image i, in float: 3 horizontal then 3
 * vertical passes of PIL's extended box (edge pixels replicated at every pass, PIL's own
 * weights), as grouped separable convolutions over all B·3 channels at once with one kernel
 * length (the largest box; smaller boxes zero-padded), the replicated edges applied as a
 * correction of the first and last outputs of a zero-padded convolution. It differs from PIL only by PIL's 8-bit
 * rounding after each of its 6 passes: measured on 8-bit test images (48×64, values /255), at
 * most 3.0 levels of 255 and 0.3–0.8 on average at radii 0.1–2.0 (a true Gaussian of
 * std = radius differs from PIL by up to 40 levels at the edges). A radius of 0 leaves the
 * image unchanged.
 */
export function blurWithRadii(x: Tensor, radii: number | readonly number[]): Tensor {
  const b = checkBatch(x, "blurWithRadii");
  const boxes = perImage(radii, b, "blurWithRadii", "radius").map(pilBoxBlur);
  const [h, w] = [x.size(2), x.size(3)];
  if (b === 0 || h === 0 || w === 0) return x.clone();
  const reach = Math.max(...boxes.map((k) => k.taps)) + 1;
  const len = 2 * reach + 1;
  const rows = boxes.map((k) => {
    const row = new Float64Array(len);
    for (let d = -k.taps; d <= k.taps; d++) row[reach + d] = k.weight;
    row[reach - k.taps - 1] = k.edgeWeight;
    row[reach + k.taps + 1] = k.edgeWeight;
    return row;
  });
  /** Per channel, B·3 rows of `fn(row)`, as x's dtype [B·3, 1, 1, n]. */
  const table = (n: number, fn: (row: Float64Array) => number[]) => {
    const out = new Float64Array(b * 3 * n);
    rows.forEach((row, i) => {
      const v = fn(row);
      for (let c = 0; c < 3; c++) out.set(v, (i * 3 + c) * n);
    });
    return fromTypedArray(out, [b * 3, 1, 1, n], { dtype: x.dtype, device: x.device });
  };
  return scope(() => {
    const kernel = table(len, (row) => [...row]);
    const passes: [number, number, Tensor, Tensor, Tensor][] = [w, h].map((n, axis) => {
      // Replicated edges as a correction of a zero-padded convolution: output j near the start
      // gets the first pixel times the weight of the taps that fall before it, likewise at the
      // end (the taps are [-reach, reach]; sizes below 2·reach are fine).
      const m = Math.min(reach, n);
      const before = table(
        m,
        (row) =>
          Array.from({ length: m }, (_, j) => row.slice(0, Math.max(0, reach - j)).reduce(sum, 0)),
      );
      const after = table(m, (row) =>
        Array.from({ length: m }, (_, t) => {
          const j = n - m + t; // taps d > n − 1 − j fall after the end
          return row.slice(Math.max(0, reach + n - j)).reduce(sum, 0);
        }));
      const dim = 3 - axis;
      const kShape = axis === 0 ? [b * 3, 1, 1, -1] : [b * 3, 1, -1, 1];
      const cShape = axis === 0 ? [1, b * 3, 1, -1] : [1, b * 3, -1, 1];
      return [dim, m, kernel.reshape(kShape), before.reshape(cShape), after.reshape(cShape)];
    });
    let y = x.reshape([1, b * 3, h, w]);
    for (const [dim, m, k, before, after] of passes) {
      const n = dim === 3 ? w : h;
      const padding: [number, number] = dim === 3 ? [0, reach] : [reach, 0];
      for (let pass = 0; pass < 3; pass++) {
        const z = conv2d(y, k, null, { groups: b * 3, padding });
        scope(() => {
          z.narrow(dim, 0, m).add_(y.narrow(dim, 0, 1).mul(before));
          z.narrow(dim, n - m, m).add_(y.narrow(dim, n - 1, 1).mul(after));
        });
        y.free(); // the previous pass (or the reshaped view of x: its own handle only)
        y = z;
      }
    }
    return y.reshape([b, 3, h, w]);
  });
}

const sum = (a: number, v: number): number => a + v;

/** Options of {@link gaussianBlur}. */
export interface GaussianBlurOptions {
  /** smallest radius (default 0.1) */
  radiusMin?: number;
  /** largest radius (default 2.0) */
  radiusMax?: number;
}

/**
 * DINO's `GaussianBlur(p)` per image: with probability `p` a PIL Gaussian blur of radius
 * ~ U(radiusMin, radiusMax) ({@link blurWithRadii}); only the chosen images are convolved.
 * Draws 2·B numbers from `gen`.
 */
export function gaussianBlur(
  x: Tensor,
  p = 0.5,
  gen?: Generator,
  opts: GaussianBlurOptions = {},
): Tensor {
  return fresh(x, blurStep(x, p, gen, opts));
}

/** {@link gaussianBlur}, returning `x` itself when no image is chosen. */
function blurStep(
  x: Tensor,
  p: number,
  gen: Generator | undefined,
  opts: GaussianBlurOptions,
): Tensor {
  const b = checkBatch(x, "gaussianBlur");
  checkProbability(p, "gaussianBlur");
  const lo = opts.radiusMin ?? 0.1;
  const hi = opts.radiusMax ?? 2.0;
  if (!(lo >= 0 && lo <= hi && Number.isFinite(hi))) {
    throw new TorchError("gaussianBlur", `radius range [${lo}, ${hi}] must satisfy 0 ≤ min ≤ max`);
  }
  const u = draw(b, 2, gen);
  const radius = Array.from({ length: b }, (_, i) => lo + (hi - lo) * u[2 * i + 1]);
  const group = Array.from({ length: b }, (_, i) => (u[2 * i] < p ? 0 : 1));
  return scope(() =>
    applyGrouped(
      x,
      group,
      (g, members, xs) => g === 0 ? blurWithRadii(xs, members.map((i) => radius[i])) : xs,
    )
  );
}

// ---- solarisation ---------------------------------------------------------------------------

/** The default solarisation threshold: PIL's 128 on 8-bit images. */
export const SOLARIZE_THRESHOLD = 128 / 255;

/** PIL's `ImageOps.solarize` on every image: values ≥ `threshold` become 1 − value. */
export function solarizeAbove(x: Tensor, threshold: number = SOLARIZE_THRESHOLD): Tensor {
  checkBatch(x, "solarizeAbove");
  return scope(() => where(x.ge(threshold), x.rsub(1), x));
}

/**
 * DINO's `Solarization(p)` per image: with probability `p`, PIL's `ImageOps.solarize`
 * (values ≥ `threshold`, 128/255 by default, become 1 − value). Draws B numbers from `gen`.
 */
export function solarize(
  x: Tensor,
  p = 0.2,
  gen?: Generator,
  threshold: number = SOLARIZE_THRESHOLD,
): Tensor {
  return fresh(x, solarizeStep(x, p, gen, threshold));
}

/** {@link solarize}, returning `x` itself when no image is chosen. */
function solarizeStep(x: Tensor, p: number, gen: Generator | undefined, threshold: number): Tensor {
  const b = checkBatch(x, "solarize");
  checkProbability(p, "solarize");
  const u = draw(b, 1, gen);
  const chosen = [...u].map((v) => v < p);
  if (!chosen.some((c) => c)) return x;
  return scope(() => {
    const mask = column(chosen.map(Number), x).gt(0).logicalAnd(x.ge(threshold));
    return where(mask, x.rsub(1), x);
  });
}

// ---- the per-view pipeline ---------------------------------------------------------------------

/** The three kinds of DINO view, each with its own photometric probabilities. */
export type DinoViewKind = "global1" | "global2" | "local";

/** The strengths and probabilities of {@link dinoPhotometric}. */
export interface DinoPhotometricOptions {
  /** colour jitter strengths (default {@link DINO_COLOR_JITTER}) */
  jitter?: ColorJitterStrength;
  /** probability of the colour jitter (default 0.8) */
  jitterP?: number;
  /** probability of grayscale (default 0.2) */
  grayscaleP?: number;
  /** probability of the blur (default 1.0 / 0.1 / 0.5 for global1 / global2 / local) */
  blurP?: number;
  /** blur radius range (default [0.1, 2.0]) */
  blurRadius?: readonly [number, number];
  /** probability of solarisation (default 0.2 for global2, 0 otherwise) */
  solarizeP?: number;
  /** finish with ImageNet mean/std normalisation (default true) */
  normalize?: boolean;
}

/** The paper's photometric settings per view kind (DINO's DataAugmentationDINO). */
export const DINO_PHOTOMETRIC: Readonly<Record<DinoViewKind, Required<DinoPhotometricOptions>>> =
  Object.freeze({
    global1: {
      jitter: DINO_COLOR_JITTER,
      jitterP: 0.8,
      grayscaleP: 0.2,
      blurP: 1.0,
      blurRadius: [0.1, 2.0] as const,
      solarizeP: 0,
      normalize: true,
    },
    global2: {
      jitter: DINO_COLOR_JITTER,
      jitterP: 0.8,
      grayscaleP: 0.2,
      blurP: 0.1,
      blurRadius: [0.1, 2.0] as const,
      solarizeP: 0.2,
      normalize: true,
    },
    local: {
      jitter: DINO_COLOR_JITTER,
      jitterP: 0.8,
      grayscaleP: 0.2,
      blurP: 0.5,
      blurRadius: [0.1, 2.0] as const,
      solarizeP: 0,
      normalize: true,
    },
  });

/**
 * DINO's photometric pipeline for a batch of views of one kind, each image with its own draws:
 * colour jitter (p 0.8) → grayscale (p 0.2) → Gaussian blur (p 1.0 / 0.1 / 0.5 for global1 /
 * global2 / local) → solarisation (p 0.2, global2 only) → ImageNet normalisation. `opts`
 * overrides any setting. `x` is [B, 3, H, W] in [0, 1]. Every step draws its numbers from `gen`
 * whatever its probability (9B + B + 2B + B), so one seed gives the same bytes.
 */
export function dinoPhotometric(
  x: Tensor,
  viewKind: DinoViewKind,
  gen?: Generator,
  opts: DinoPhotometricOptions = {},
): Tensor {
  checkBatch(x, "dinoPhotometric");
  const base = DINO_PHOTOMETRIC[viewKind];
  if (base === undefined) {
    throw new TorchError(
      "dinoPhotometric",
      `view kind must be "global1", "global2" or "local", got "${viewKind}"`,
    );
  }
  const radius = opts.blurRadius ?? base.blurRadius;
  return scope(() => {
    let y = jitterStep(x, opts.jitter ?? base.jitter, gen, opts.jitterP ?? base.jitterP);
    y = grayscaleStep(y, opts.grayscaleP ?? base.grayscaleP, gen);
    y = blurStep(y, opts.blurP ?? base.blurP, gen, { radiusMin: radius[0], radiusMax: radius[1] });
    y = solarizeStep(y, opts.solarizeP ?? base.solarizeP, gen, SOLARIZE_THRESHOLD);
    return (opts.normalize ?? base.normalize) ? imagenetNormalize(y) : fresh(x, y);
  });
}
