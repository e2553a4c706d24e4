/**
 * The DenseDINO view sampler: the geometry of the multi-crop views and their reference points
 * (paper §3.2–3.3, the official `DataAugmentationDINO`). The photometric augmentations live in
 * `augment.ts`; this module only crops, resizes, flips and places points.
 *
 * Per image the sampler draws G global and L local crops with torchvision's
 * `RandomResizedCrop.get_params` ({@link randomResizedCropParams}); every crop after the first
 * is redrawn until it overlaps every earlier global crop by more than
 * `⌊W·H·minIntersection⌋` pixels (twice that between global crops), each view is flipped
 * horizontally with probability 0.5, and for every global view i and every view j (j = i
 * included) M reference points are drawn in the intersection of the two crops and expressed in
 * both views' `grid_sample` coordinates: `(x, y)` in [−1, 1], x first, `align_corners=false`,
 * relative to the view after resize and flip (a flip negates x).
 *
 * Randomness comes from a {@link GeometryRng} — a small seeded JS generator of its own, so the
 * geometry is reproducible from a seed and independent of libtorch's generators (which the
 * photometric augmentations draw from).
 *
 * ```ts
 * const rng = new GeometryRng(0);
 * const plan = sampleViews(img.size(2), img.size(1), { localCrops: 2 }, rng);
 * const views = applyViews(img, plan); // [3, 224, 224] ×2, [3, 96, 96] ×2
 * const { teacher, student } = pointTensors(plan); // [2, 4, 4, 2], [4, 2, 4, 2]
 * ```
 *
 * @module
 */
import {
  fromTypedArray,
  interpolate,
  scope,
  stack,
  type Tensor,
  TorchError,
} from "../torch/mod.ts";

// ---------------------------------------------------------------------------------------------
// Random numbers

const MASK64 = (1n << 64n) - 1n;

function splitmix64(state: bigint): [bigint, bigint] {
  const next = (state + 0x9e3779b97f4a7c15n) & MASK64;
  let z = next;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return [next, z ^ (z >> 31n)];
}

function toSeed(seed: number | bigint, what: string): bigint {
  if (typeof seed === "bigint") return BigInt.asUintN(64, seed);
  if (!Number.isSafeInteger(seed)) {
    throw new RangeError(`${what}: a seed must be a safe integer or a bigint, got ${seed}`);
  }
  return BigInt.asUintN(64, BigInt(seed));
}

/** A source of uniform draws, as {@link randomResizedCropParams} consumes them. */
export interface CropRandom {
  /** A uniform draw in [lo, hi). */
  uniform(lo: number, hi: number): number;
  /** A uniform integer in [lo, hi) (hi > lo, both integers). */
  int(lo: number, hi: number): number;
}

/**
 * The seeded generator of the view geometry: xoshiro128** (32-bit words, fast in JS) seeded
 * through splitmix64. The same seed gives the same stream on every platform. It is independent
 * of libtorch's generators, so the photometric augmentations (drawn from a torch `Generator`)
 * can change without moving a single crop.
 */
export class GeometryRng implements CropRandom {
  #s = new Uint32Array(4);

  /** A generator seeded with `seed` (a safe integer or a bigint; taken modulo 2⁶⁴). */
  constructor(seed: number | bigint = 0) {
    this.#seed(toSeed(seed, "GeometryRng"));
  }

  /**
   * A generator for one item of a larger stream, e.g. `derive(seed, epoch, index)`: the keys
   * are hashed (splitmix64) with the seed, so each (seed, keys) gets its own independent stream
   * regardless of the order in which items are visited (workers, prefetching).
   */
  static derive(seed: number | bigint, ...keys: (number | bigint)[]): GeometryRng {
    let h = toSeed(seed, "GeometryRng.derive");
    let z: bigint;
    [h, z] = splitmix64(h);
    for (const k of keys) {
      [, z] = splitmix64(z ^ toSeed(k, "GeometryRng.derive"));
      [h, z] = splitmix64((z + h) & MASK64);
    }
    return new GeometryRng(z);
  }

  #seed(seed: bigint): void {
    let st = seed;
    let a: bigint, b: bigint;
    [st, a] = splitmix64(st);
    [st, b] = splitmix64(st);
    const s = this.#s;
    s[0] = Number(a & 0xffffffffn);
    s[1] = Number(a >> 32n);
    s[2] = Number(b & 0xffffffffn);
    s[3] = Number(b >> 32n);
    if ((s[0] | s[1] | s[2] | s[3]) === 0) s[0] = 1; // the one forbidden state
  }

  /** The next 32 random bits as an unsigned integer. */
  nextUint32(): number {
    const s = this.#s;
    const s1 = s[1];
    const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }

  /** A uniform double in [0, 1) with 53 random bits. */
  random(): number {
    const a = this.nextUint32() >>> 5;
    const b = this.nextUint32() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }

  /** A uniform draw in [lo, hi) (default [0, 1)). */
  uniform(lo = 0, hi = 1): number {
    return lo + (hi - lo) * this.random();
  }

  /** `exp(U[ln lo, ln hi))`: log-uniform in [lo, hi), 0 < lo ≤ hi. */
  logUniform(lo: number, hi: number): number {
    if (!(lo > 0 && hi >= lo)) {
      throw new RangeError(`GeometryRng.logUniform: need 0 < lo ≤ hi, got ${lo}, ${hi}`);
    }
    return Math.exp(this.uniform(Math.log(lo), Math.log(hi)));
  }

  /** A uniform integer in [lo, hi) (unbiased; lo, hi safe integers, hi > lo). */
  int(lo: number, hi: number): number {
    const n = hi - lo;
    if (!Number.isSafeInteger(lo) || !Number.isSafeInteger(hi) || !(n >= 1)) {
      throw new RangeError(`GeometryRng.int: need integers lo < hi, got ${lo}, ${hi}`);
    }
    if (n === 1) return lo;
    if (n <= 0x100000000) {
      const limit = 0x100000000 - (0x100000000 % n);
      let x = this.nextUint32();
      while (x >= limit) x = this.nextUint32();
      return lo + (x % n);
    }
    return lo + Math.floor(this.random() * n);
  }

  /** True with probability `p` (`random() < p`). */
  bernoulli(p: number): boolean {
    return this.random() < p;
  }

  /** The state: four unsigned 32-bit words (store it to resume the exact stream). */
  getState(): number[] {
    return Array.from(this.#s);
  }

  /** Restores a state from {@link getState}. */
  setState(state: readonly number[]): void {
    if (
      state.length !== 4 ||
      state.some((w) => !Number.isInteger(w) || w < 0 || w > 0xffffffff) ||
      state.every((w) => w === 0)
    ) {
      throw new RangeError(
        "GeometryRng.setState: expected four unsigned 32-bit words, not all zero",
      );
    }
    this.#s.set(state);
  }

  /** An independent copy at the same position of the stream. */
  clone(): GeometryRng {
    const g = new GeometryRng(0);
    g.setState(this.getState());
    return g;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

// ---------------------------------------------------------------------------------------------
// RandomResizedCrop

/** A crop in pixels: torchvision's `(i, j, h, w)` = (top, left, height, width). */
export interface CropParams {
  /** first row (torchvision's i) */
  top: number;
  /** first column (torchvision's j) */
  left: number;
  /** rows (h) */
  height: number;
  /** columns (w) */
  width: number;
}

/** The scale and aspect-ratio ranges of a RandomResizedCrop. */
export interface CropRange {
  /** range of the crop's area as a fraction of the image's, `0 < lo ≤ hi ≤ 1` */
  scale: readonly [number, number];
  /** range of the crop's aspect ratio w/h, `0 < lo ≤ hi` (default [3/4, 4/3]) */
  ratio?: readonly [number, number];
}

/** torchvision's default aspect-ratio range of RandomResizedCrop. */
export const DEFAULT_RATIO: readonly [number, number] = [3 / 4, 4 / 3];

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d < 0.5) return f;
  if (d > 0.5) return f + 1;
  return f % 2 === 0 ? f : f + 1;
}

function checkRange(
  r: readonly [number, number] | undefined,
  name: string,
  op: string,
  kind: "scale" | "ratio",
): void {
  const ok = Array.isArray(r) && r.length === 2 && Number.isFinite(r[0]) &&
    Number.isFinite(r[1]) && r[0] > 0 && r[0] <= r[1] && (kind === "ratio" || r[1] <= 1);
  if (!ok) {
    const want = kind === "scale" ? "0 < lo ≤ hi ≤ 1" : "0 < lo ≤ hi (finite)";
    const got = Array.isArray(r) ? `[${r.join(", ")}]` : String(r);
    throw new RangeError(`${op}: ${name} must be a range [lo, hi] with ${want}, got ${got}`);
  }
}

/**
 * torchvision's `RandomResizedCrop.get_params` (0.14) for a W×H image, drawing from `rng`:
 * up to 10 attempts, each drawing an area `W·H·U(scale)` then an aspect ratio
 * `exp(U(ln ratio))` (in that order), `w = round(√(area·r))`, `h = round(√(area/r))` with
 * Python's half-to-even rounding, accepted when `0 < w ≤ W` and `0 < h ≤ H`, after which the
 * top row is `int(0, H−h+1)` and then the left column `int(0, W−w+1)`. When all 10 attempts
 * fail: a centre crop of the whole image with its aspect ratio clamped into `ratio`
 * (`w = W, h = round(W / min ratio)` for images narrower than the range,
 * `h = H, w = round(H · max ratio)` for wider ones, top `⌊(H−h)/2⌋`, left `⌊(W−w)/2⌋`).
 *
 * The draws are doubles where torchvision's are float32 tensors; the logic, the draw order and
 * the rounding are the same (checked against torchvision fed the same draws).
 */
export function randomResizedCropParams(
  width: number,
  height: number,
  range: CropRange,
  rng: CropRandom,
): CropParams {
  const op = "randomResizedCropParams";
  checkImageSize(width, height, op);
  checkRange(range.scale, "scale", op, "scale");
  const ratio = range.ratio ?? DEFAULT_RATIO;
  checkRange(ratio, "ratio", op, "ratio");
  return rrc(width, height, range.scale, ratio, rng);
}

function rrc(
  W: number,
  H: number,
  scale: readonly [number, number],
  ratio: readonly [number, number],
  rng: CropRandom,
): CropParams {
  const area = W * H;
  const logLo = Math.log(ratio[0]);
  const logHi = Math.log(ratio[1]);
  for (let attempt = 0; attempt < 10; attempt++) {
    const targetArea = area * rng.uniform(scale[0], scale[1]);
    const aspect = Math.exp(rng.uniform(logLo, logHi));
    const w = roundHalfEven(Math.sqrt(targetArea * aspect));
    const h = roundHalfEven(Math.sqrt(targetArea / aspect));
    if (w > 0 && w <= W && h > 0 && h <= H) {
      const top = rng.int(0, H - h + 1);
      const left = rng.int(0, W - w + 1);
      return { top, left, height: h, width: w };
    }
  }
  const inRatio = W / H;
  let w: number, h: number;
  if (inRatio < ratio[0]) {
    w = W;
    h = roundHalfEven(w / ratio[0]);
  } else if (inRatio > ratio[1]) {
    h = H;
    w = roundHalfEven(h * ratio[1]);
  } else {
    w = W;
    h = H;
  }
  return { top: Math.floor((H - h) / 2), left: Math.floor((W - w) / 2), height: h, width: w };
}

function checkImageSize(width: number, height: number, op: string): void {
  for (const [name, v] of [["width", width], ["height", height]] as const) {
    if (!Number.isSafeInteger(v) || v < 1) {
      throw new RangeError(`${op}: image ${name} must be a positive integer (≥ 1 px), got ${v}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Options

/** How reference points are placed in the intersection of two crops. */
export type RefSampling = "random" | "grid";

/**
 * Options of {@link sampleViews}. Every field has a default (the official DenseDINO code's,
 * except `numRef`, see there); each maps to a `--kebab-case` flag of the scripts.
 */
export interface ViewSamplerOptions {
  /** G, global (teacher) views (`--global-crops`, default 2; at least 1) */
  globalCrops?: number;
  /** side of a global view in pixels (`--global-size`, default 224) */
  globalSize?: number;
  /** area range of a global crop (`--global-scale`, default [0.4, 1], DINO's) */
  globalScale?: readonly [number, number];
  /** L, local views (`--local-crops`, default 8 as the official main_dino; may be 0) */
  localCrops?: number;
  /** side of a local view in pixels (`--local-size`, default 96) */
  localSize?: number;
  /** area range of a local crop (`--local-scale`, default [0.05, 0.4]) */
  localScale?: readonly [number, number];
  /** aspect-ratio range w/h of every crop (`--ratio`, default [3/4, 4/3]) */
  ratio?: readonly [number, number];
  /**
   * M, reference points per (global view, view) pair (`--num-ref`, default 4: the paper's
   * setting — "4 reference points in each pair of views"; the official code's flag defaults to
   * 1). At most {@link MAX_NUM_REF}. In grid mode M must be a perfect square k×k (the official
   * `--num_reference` is k there, giving k² points).
   */
  numRef?: number;
  /**
   * `"random"` (default): uniform in the intersection, independently per pair and point;
   * `"grid"`: the centres of a k×k grid over the intersection, k = √M (`--sampling`).
   */
  sampling?: RefSampling;
  /**
   * The overlap rule: a crop must overlap every earlier global crop by more than
   * `⌊W·H·minIntersection⌋` pixels, twice that between global crops (`--min-intersection`,
   * default 0.01; 0 asks only for a positive overlap; below 1).
   */
  minIntersection?: number;
  /**
   * Redraws of a crop that breaks the overlap rule before the fallback (see
   * {@link sampleViews}) places it (`--max-redraws`, default 100; the official code redraws
   * without bound).
   */
  maxRedraws?: number;
  /** probability of a horizontal flip per view (`--flip-prob`, default 0.5) */
  flipProb?: number;
}

/** The options with every default filled in. */
export type ResolvedViewOptions = {
  readonly [K in keyof ViewSamplerOptions]-?: NonNullable<ViewSamplerOptions[K]>;
};

/** The defaults of {@link ViewSamplerOptions}. */
export const DEFAULT_VIEW_OPTIONS: ResolvedViewOptions = Object.freeze({
  globalCrops: 2,
  globalSize: 224,
  globalScale: [0.4, 1] as const,
  localCrops: 8,
  localSize: 96,
  localScale: [0.05, 0.4] as const,
  ratio: DEFAULT_RATIO,
  numRef: 4,
  sampling: "random" as const,
  minIntersection: 0.01,
  maxRedraws: 100,
  flipProb: 0.5,
});

/**
 * The largest M accepted. Each teacher (global) view carries (G+L)·M reference tokens and each
 * student view G·M: with the default 10 views, 1024 points already make 10,240 reference
 * tokens per teacher view — fifty times the 196 patch tokens of a 224-px view — so anything
 * larger is a typo rather than an experiment (the paper finds 4 sufficient).
 */
export const MAX_NUM_REF = 1024;

/** The largest number of views of either kind (a guard against typos, like MAX_NUM_REF). */
export const MAX_CROPS = 256;

/** The largest view side in pixels. */
export const MAX_VIEW_SIZE = 8192;

const FLAG: Record<keyof ViewSamplerOptions, string> = {
  globalCrops: "--global-crops",
  globalSize: "--global-size",
  globalScale: "--global-scale",
  localCrops: "--local-crops",
  localSize: "--local-size",
  localScale: "--local-scale",
  ratio: "--ratio",
  numRef: "--num-ref",
  sampling: "--sampling",
  minIntersection: "--min-intersection",
  maxRedraws: "--max-redraws",
  flipProb: "--flip-prob",
};

/**
 * Fills in the defaults and validates: throws a RangeError naming the option and its flag
 * (e.g. `globalScale (--global-scale)`) on a bad value.
 */
export function resolveViewOptions(opts: ViewSamplerOptions = {}): ResolvedViewOptions {
  const op = "view sampler";
  for (const k of Object.keys(opts)) {
    if (!(k in FLAG)) {
      throw new RangeError(
        `${op}: unknown option "${k}"; expected one of ${Object.keys(FLAG).join(", ")}`,
      );
    }
  }
  const o = { ...DEFAULT_VIEW_OPTIONS } as Record<string, unknown>;
  for (const [k, v] of Object.entries(opts)) if (v !== undefined) o[k] = v;
  const r = o as unknown as ResolvedViewOptions;
  const name = (k: keyof ViewSamplerOptions) => `${k} (${FLAG[k]})`;
  const int = (k: keyof ViewSamplerOptions, lo: number, hi: number) => {
    const v = r[k] as number;
    if (!Number.isInteger(v) || v < lo || v > hi) {
      throw new RangeError(`${op}: ${name(k)} must be an integer in ${lo}..${hi}, got ${v}`);
    }
  };
  int("globalCrops", 1, MAX_CROPS);
  int("localCrops", 0, MAX_CROPS);
  int("globalSize", 1, MAX_VIEW_SIZE);
  int("localSize", 1, MAX_VIEW_SIZE);
  checkRange(r.globalScale, name("globalScale"), op, "scale");
  checkRange(r.localScale, name("localScale"), op, "scale");
  checkRange(r.ratio, name("ratio"), op, "ratio");
  if (r.sampling !== "random" && r.sampling !== "grid") {
    throw new RangeError(
      `${op}: ${name("sampling")} must be "random" or "grid", got ${JSON.stringify(r.sampling)}`,
    );
  }
  const m = r.numRef;
  if (!Number.isInteger(m) || m < 1 || m > MAX_NUM_REF) {
    throw new RangeError(
      `${op}: ${name("numRef")} must be an integer in 1..${MAX_NUM_REF} (reference points per ` +
        `pair of views), got ${m}`,
    );
  }
  if (r.sampling === "grid" && Math.round(Math.sqrt(m)) ** 2 !== m) {
    throw new RangeError(
      `${op}: ${name("numRef")} must be a perfect square in grid mode (a k×k grid, k = √M), ` +
        `got ${m}`,
    );
  }
  const mi = r.minIntersection;
  if (typeof mi !== "number" || !(mi >= 0 && mi < 1)) {
    throw new RangeError(`${op}: ${name("minIntersection")} must be in [0, 1), got ${mi}`);
  }
  int("maxRedraws", 0, 1_000_000);
  const p = r.flipProb;
  if (typeof p !== "number" || !(p >= 0 && p <= 1)) {
    throw new RangeError(`${op}: ${name("flipProb")} must be in [0, 1], got ${p}`);
  }
  return Object.freeze({
    ...r,
    globalScale: [r.globalScale[0], r.globalScale[1]] as const,
    localScale: [r.localScale[0], r.localScale[1]] as const,
    ratio: [r.ratio[0], r.ratio[1]] as const,
  });
}

// ---------------------------------------------------------------------------------------------
// The plan

/** A crop box in original-image pixels: `[x1, y1, x2, y2]`, x2 = x1 + width (exclusive). */
export type Box = [number, number, number, number];

/** One view of a plan. */
export interface ViewSpec {
  /** "global" (a teacher view) or "local" */
  kind: "global" | "local";
  /** the crop in original-image pixels, `[x1, y1, x2, y2]` */
  box: Box;
  /** output [height, width] in pixels */
  size: [number, number];
  /** flipped horizontally (after the resize) */
  flip: boolean;
}

/** Counters of the overlap rule's redraws and fallback for one plan. */
export interface ViewStats {
  /** crops redrawn because they broke the overlap rule (summed over views) */
  redraws: number;
  /** crops that ran out of redraws and were placed by the fallback */
  fallbacks: number;
  /** fallback crops that still break the rule (no placement of any candidate size meets it) */
  unmet: number;
}

/**
 * The geometry of one image's views: what {@link applyViews} crops and the reference points.
 * Views are ordered globals first (0..G−1), then locals (G..G+L−1). Point values are float32
 * numbers (`Math.fround`), so this plan, its JSON and {@link pointTensors} hold the same values.
 */
export interface ViewPlan {
  /** the source image's size in pixels */
  image: { width: number; height: number };
  /** G */
  globalCrops: number;
  /** L */
  localCrops: number;
  /** M, points per (global view, view) pair */
  numRef: number;
  /** the G+L views */
  views: ViewSpec[];
  /**
   * `[G][G+L][M][2]`: `teacherPoints[i][j][m]` is point m of pair (global view i, view j) as
   * `(x, y)` in view i's grid_sample coordinates (after its flip).
   */
  teacherPoints: number[][][][];
  /**
   * `[G+L][G][M][2]`: `studentPoints[j][i][m]` is the same original-image point as
   * `teacherPoints[i][j][m]`, in view j's coordinates (after its flip).
   */
  studentPoints: number[][][][];
  /** redraw / fallback counters */
  stats: ViewStats;
}

/** `⌊W·H·minIntersection⌋`: the overlap (in pixels) a crop must exceed (×2 between globals). */
export function overlapThreshold(width: number, height: number, minIntersection: number): number {
  return Math.trunc(width * height * minIntersection);
}

/** The area of the intersection of two boxes (0 when they do not overlap). */
export function intersectionArea(a: readonly number[], b: readonly number[]): number {
  const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]);
  const h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
  return w > 0 && h > 0 ? w * h : 0;
}

/** Smallest overlap with the earlier global crops, minus the threshold (> 0: the rule holds). */
function margin(box: Box, globals: readonly Box[], thr: number): number {
  let worst = Infinity;
  for (const g of globals) worst = Math.min(worst, intersectionArea(box, g));
  return worst - thr;
}

// The placement search of the fallback evaluates at most this many positions per size.
const MAX_POSITIONS = 1 << 20;
// … and tries at most this many candidate sizes (the largest drawn).
const MAX_FALLBACK_SIZES = 8;

function positions(n: number, stride: number, extra: number): number[] {
  if (stride === 1) return Array.from({ length: n }, (_, i) => i);
  const out: number[] = [];
  for (let i = 0; i < n; i += stride) out.push(i);
  if (out[out.length - 1] !== n - 1) out.push(n - 1);
  if (!out.includes(extra)) out.push(extra);
  return out.sort((a, b) => a - b);
}

/**
 * The fallback placement of a crop that ran out of redraws (see {@link sampleViews}).
 * Returns the box and whether it meets the rule.
 */
function fallbackPlace(
  W: number,
  H: number,
  sizes: readonly [number, number][],
  globals: readonly Box[],
  thr: number,
  rng: CropRandom,
): { box: Box; met: boolean } {
  // distinct sizes, largest area first (stable: earlier draws first among equals)
  const seen = new Set<string>();
  const cand: [number, number][] = [];
  for (const s of sizes) {
    const key = `${s[0]}x${s[1]}`;
    if (!seen.has(key)) {
      seen.add(key);
      cand.push(s);
    }
  }
  cand.sort((a, b) => b[0] * b[1] - a[0] * a[1]);
  cand.length = Math.min(cand.length, MAX_FALLBACK_SIZES);
  // the intersection of the earlier globals (non-empty: they overlap pairwise, and boxes that
  // overlap pairwise share a common box)
  const I = [0, 0, W, H];
  for (const g of globals) {
    I[0] = Math.max(I[0], g[0]);
    I[1] = Math.max(I[1], g[1]);
    I[2] = Math.min(I[2], g[2]);
    I[3] = Math.min(I[3], g[3]);
  }
  let best: Box | null = null;
  let bestScore = -Infinity;
  const G = globals.length;
  for (const [w, h] of cand) {
    const nx = W - w + 1, ny = H - h + 1;
    const stride = nx * ny > MAX_POSITIONS ? Math.ceil(Math.sqrt((nx * ny) / MAX_POSITIONS)) : 1;
    // the position centred on the globals' intersection: it overlaps every global
    const cx = Math.min(Math.max(Math.round((I[0] + I[2] - w) / 2), 0), nx - 1);
    const cy = Math.min(Math.max(Math.round((I[1] + I[3] - h) / 2), 0), ny - 1);
    const xs = positions(nx, stride, cx);
    const ys = positions(ny, stride, cy);
    // per-axis overlaps with each global: ox[g][xi], oy[g][yi]
    const ox = globals.map((g) =>
      Float64Array.from(xs, (x) => Math.max(0, Math.min(x + w, g[2]) - Math.max(x, g[0])))
    );
    const oy = globals.map((g) =>
      Float64Array.from(ys, (y) => Math.max(0, Math.min(y + h, g[3]) - Math.max(y, g[1])))
    );
    const score = (xi: number, yi: number): number => {
      let worst = Infinity;
      for (let g = 0; g < G; g++) {
        const a = ox[g][xi] * oy[g][yi];
        if (a < worst) worst = a;
      }
      return worst;
    };
    let count = 0;
    for (let yi = 0; yi < ys.length; yi++) {
      for (let xi = 0; xi < xs.length; xi++) {
        const s = score(xi, yi);
        if (s > thr) count++;
        if (s > bestScore) {
          bestScore = s;
          best = [xs[xi], ys[yi], xs[xi] + w, ys[yi] + h];
        }
      }
    }
    if (count > 0) {
      // uniform over the positions of this size that meet the rule
      let r = rng.int(0, count);
      for (let yi = 0; yi < ys.length; yi++) {
        for (let xi = 0; xi < xs.length; xi++) {
          if (score(xi, yi) > thr && r-- === 0) {
            return { box: [xs[xi], ys[yi], xs[xi] + w, ys[yi] + h], met: true };
          }
        }
      }
    }
  }
  return { box: best!, met: false };
}

/**
 * Samples the views of one `width`×`height` image: G global then L local crops, their flips
 * and the reference points (see the module documentation for the conventions).
 *
 * Draw order (all from `rng`): for each view in order, its crop (redraws included) then its flip;
 * then the points, pair by pair (i, j) in row-major order, x before y. Random points use a
 * relative position `(u, v) ∈ [0, 1)²` of the intersection box; grid points the centres
 * `((2a+1)/2k, (2b+1)/2k)` with m = a·k + b (x index major, as the official code's meshgrid).
 *
 * **The overlap rule and its fallback.** As the official code: crop 0 is never checked; a
 * later crop must overlap every earlier global crop by more than `⌊W·H·minIntersection⌋`
 * pixels (`2·⌊W·H·minIntersection⌋` for a global crop against earlier globals) and is redrawn
 * (a fresh {@link randomResizedCropParams}) while it does not. After `maxRedraws` redraws the
 * fallback places it instead: of the sizes drawn for this crop (the 8 largest distinct ones,
 * largest area first), it takes the first for which some position meets the rule and picks a
 * position uniformly among those that do; so the crop meets the rule whenever some drawn size
 * can. When none can (e.g. a crop smaller than the threshold), it takes the position with the
 * largest smallest overlap, which is still positive (every crop overlaps every global crop, so
 * the reference points always exist). Positions are searched exhaustively up to 2²⁰ per size,
 * on a strided grid beyond. `stats.fallbacks` counts fallback crops, `stats.unmet` those that
 * still break the rule.
 */
export function sampleViews(
  width: number,
  height: number,
  opts: ViewSamplerOptions | ResolvedViewOptions,
  rng: CropRandom,
): ViewPlan {
  checkImageSize(width, height, "sampleViews");
  if (typeof rng?.uniform !== "function" || typeof rng?.int !== "function") {
    throw new TypeError("sampleViews: rng must be a GeometryRng (or another CropRandom)");
  }
  const o = resolveViewOptions(opts);
  const G = o.globalCrops, L = o.localCrops, N = G + L, M = o.numRef;
  const thr1 = overlapThreshold(width, height, o.minIntersection);
  const views: ViewSpec[] = [];
  const boxes: Box[] = [];
  const stats: ViewStats = { redraws: 0, fallbacks: 0, unmet: 0 };
  for (let v = 0; v < N; v++) {
    const global = v < G;
    const scale = global ? o.globalScale : o.localScale;
    const size = global ? o.globalSize : o.localSize;
    const draw = (): Box => {
      const c = rrc(width, height, scale, o.ratio, rng);
      return [c.left, c.top, c.left + c.width, c.top + c.height];
    };
    let box = draw();
    if (v > 0) {
      const earlier = boxes.slice(0, Math.min(v, G));
      const thr = global ? 2 * thr1 : thr1;
      const sizes: [number, number][] = [[box[2] - box[0], box[3] - box[1]]];
      let redraws = 0;
      while (margin(box, earlier, thr) <= 0) {
        if (redraws === o.maxRedraws) {
          const f = fallbackPlace(width, height, sizes, earlier, thr, rng);
          box = f.box;
          stats.fallbacks++;
          if (!f.met) stats.unmet++;
          break;
        }
        redraws++;
        box = draw();
        sizes.push([box[2] - box[0], box[3] - box[1]]);
      }
      stats.redraws += redraws;
    }
    boxes.push(box);
    const flip = rng.uniform(0, 1) < o.flipProb;
    views.push({ kind: global ? "global" : "local", box, size: [size, size], flip });
  }

  const k = o.sampling === "grid" ? Math.round(Math.sqrt(M)) : 0;
  const toView = (v: ViewSpec, X: number, Y: number): number[] => {
    const [x1, y1, x2, y2] = v.box;
    const x = (2 * (X - x1)) / (x2 - x1) - 1;
    const y = (2 * (Y - y1)) / (y2 - y1) - 1;
    return [Math.fround(v.flip ? -x : x), Math.fround(y)];
  };
  const teacher: number[][][][] = [];
  const student: number[][][][] = Array.from({ length: N }, () => new Array(G));
  for (let i = 0; i < G; i++) {
    const row: number[][][] = [];
    for (let j = 0; j < N; j++) {
      const a = boxes[i], b = boxes[j];
      const ix1 = Math.max(a[0], b[0]), iy1 = Math.max(a[1], b[1]);
      const ix2 = Math.min(a[2], b[2]), iy2 = Math.min(a[3], b[3]);
      if (!(ix2 > ix1 && iy2 > iy1)) {
        // unreachable: every crop overlaps every global crop (see the fallback)
        throw new Error(`sampleViews: views ${i} and ${j} do not overlap (internal error)`);
      }
      const tp: number[][] = [];
      const sp: number[][] = [];
      for (let m = 0; m < M; m++) {
        let u: number, w: number;
        if (k > 0) {
          u = (2 * Math.floor(m / k) + 1) / (2 * k);
          w = (2 * (m % k) + 1) / (2 * k);
        } else {
          u = rng.uniform(0, 1);
          w = rng.uniform(0, 1);
        }
        const X = ix1 + u * (ix2 - ix1);
        const Y = iy1 + w * (iy2 - iy1);
        tp.push(toView(views[i], X, Y));
        sp.push(toView(views[j], X, Y));
      }
      row.push(tp);
      student[j][i] = sp;
    }
    teacher.push(row);
  }
  return {
    image: { width, height },
    globalCrops: G,
    localCrops: L,
    numRef: M,
    views,
    teacherPoints: teacher,
    studentPoints: student,
    stats,
  };
}

/**
 * The plan in the JSON shape of `scripts/visualize_views.ts`' `views.json`:
 * `{image: {width, height}, views: [{kind, box, size: [h, w], flip}], teacher_points,
 * student_points, stats}`.
 */
export function viewPlanToJson(plan: ViewPlan): {
  image: { width: number; height: number };
  views: ViewSpec[];
  teacher_points: number[][][][];
  student_points: number[][][][];
  stats: ViewStats;
} {
  return {
    image: { ...plan.image },
    views: plan.views.map((v) => ({
      kind: v.kind,
      box: [...v.box] as Box,
      size: [...v.size] as [number, number],
      flip: v.flip,
    })),
    teacher_points: plan.teacherPoints,
    student_points: plan.studentPoints,
    stats: { ...plan.stats },
  };
}

// ---------------------------------------------------------------------------------------------
// Applying a plan

const FLOATING: readonly string[] = ["float32", "float64", "float16", "bfloat16"];

/** Options of {@link applyViews}. */
export interface ApplyViewsOptions {
  /** clamp the resized views to [0, 1], as PIL's 8-bit output is (default true) */
  clamp?: boolean;
}

function checkPlanImage(image: Tensor, plan: ViewPlan, op: string): void {
  const s = image.shape;
  if (s.length !== 3) {
    throw new TorchError(op, `expected an image [C, H, W], got [${s.join(", ")}]`);
  }
  if (!FLOATING.includes(image.dtype)) {
    throw new TorchError(op, `expected a floating image (values in [0, 1]), got ${image.dtype}`);
  }
  if (s[1] !== plan.image.height || s[2] !== plan.image.width) {
    throw new TorchError(
      op,
      `the plan is for a ${plan.image.width}×${plan.image.height} image, got ${s[2]}×${s[1]} ` +
        `(W×H)`,
    );
  }
}

function cropView(image: Tensor, v: ViewSpec, clamp: boolean): Tensor {
  const [x1, y1, x2, y2] = v.box;
  const crop = image.narrow(1, y1, y2 - y1).narrow(2, x1, x2 - x1).unsqueeze(0);
  let out = interpolate(crop, { size: v.size, mode: "bicubic", antialias: true });
  if (clamp) out = out.clamp(0, 1);
  if (v.flip) out = out.flip([3]);
  return out.squeeze(0);
}

/**
 * Crops, resizes and flips one image [C, H, W] (floating, in [0, 1]) per `plan`: one tensor
 * [C, h, w] per view, in plan order. The resize is bicubic with antialiasing (PIL's kernel, as
 * torchvision's RandomResizedCrop on PIL images), clamped to [0, 1] unless `clamp: false`.
 */
export function applyViews(
  image: Tensor,
  plan: ViewPlan,
  opts: ApplyViewsOptions = {},
): Tensor[] {
  checkPlanImage(image, plan, "applyViews");
  const clamp = opts.clamp ?? true;
  return scope(() => plan.views.map((v) => cropView(image, v, clamp)));
}

function checkCompatible(plans: readonly ViewPlan[], op: string): void {
  if (plans.length === 0) throw new TorchError(op, "no plans given");
  const p0 = plans[0];
  for (const [b, p] of plans.entries()) {
    if (
      p.globalCrops !== p0.globalCrops || p.localCrops !== p0.localCrops ||
      p.numRef !== p0.numRef ||
      p.views.some((v, k) => v.size[0] !== p0.views[k].size[0] || v.size[1] !== p0.views[k].size[1])
    ) {
      throw new TorchError(
        op,
        `plan ${b} has another layout (G, L, M or view sizes) than plan 0; a batch needs one`,
      );
    }
  }
}

/**
 * {@link applyViews} over a batch: `images` is [B, C, H, W] or B images [C, H_b, W_b] (sizes
 * may differ), `plans` one per image, all with the same G, L, M and view sizes. Returns one
 * tensor [B, C, h, w] per view index (plan order: globals, then locals).
 */
export function applyViewsBatch(
  images: Tensor | readonly Tensor[],
  plans: readonly ViewPlan[],
  opts: ApplyViewsOptions = {},
): Tensor[] {
  const op = "applyViewsBatch";
  checkCompatible(plans, op);
  const B = Array.isArray(images) ? images.length : (images as Tensor).size(0);
  if (!Array.isArray(images) && (images as Tensor).ndim !== 4) {
    throw new TorchError(op, `expected images [B, C, H, W] or a list of [C, H, W]`);
  }
  if (B !== plans.length) {
    throw new TorchError(op, `${B} images but ${plans.length} plans`);
  }
  const clamp = opts.clamp ?? true;
  return scope(() => {
    const per: Tensor[][] = [];
    for (let b = 0; b < B; b++) {
      const img = Array.isArray(images) ? images[b] : (images as Tensor).select(0, b);
      checkPlanImage(img, plans[b], op);
      per.push(plans[b].views.map((v) => cropView(img, v, clamp)));
    }
    return plans[0].views.map((_, k) => stack(per.map((vs) => vs[k])));
  });
}

function flatPoints(
  plans: readonly ViewPlan[],
  outer: number,
  inner: number,
  M: number,
  get: (p: ViewPlan) => number[][][][],
): Float32Array[] {
  const B = plans.length;
  const out = Array.from({ length: outer }, () => new Float32Array(B * inner * M * 2));
  for (let b = 0; b < B; b++) {
    const pts = get(plans[b]);
    for (let a = 0; a < outer; a++) {
      const dst = out[a];
      let o = b * inner * M * 2;
      for (let c = 0; c < inner; c++) {
        for (let m = 0; m < M; m++) {
          dst[o++] = pts[a][c][m][0];
          dst[o++] = pts[a][c][m][1];
        }
      }
    }
  }
  return out;
}

/**
 * One plan's points as float32 tensors: `teacher` [G, G+L, M, 2] and `student`
 * [G+L, G, M, 2] (see {@link ViewPlan}).
 */
export function pointTensors(plan: ViewPlan): { teacher: Tensor; student: Tensor } {
  const G = plan.globalCrops, N = G + plan.localCrops, M = plan.numRef;
  const t = flatPoints([plan], G, N, M, (p) => p.teacherPoints);
  const s = flatPoints([plan], N, G, M, (p) => p.studentPoints);
  const tf = new Float32Array(G * N * M * 2);
  t.forEach((a, i) => tf.set(a, i * N * M * 2));
  const sf = new Float32Array(N * G * M * 2);
  s.forEach((a, j) => sf.set(a, j * G * M * 2));
  return {
    teacher: fromTypedArray(tf, [G, N, M, 2]),
    student: fromTypedArray(sf, [N, G, M, 2]),
  };
}

/**
 * The points of a batch of plans in the layout the ViT's `forward(x, {points})` takes:
 * `teacher[i]` [B, (G+L)·M, 2] for global view i, row `j·M + m` = `teacherPoints[i][j][m]`
 * (j-major: all M points of pair (i, 0), then of (i, 1), …); `student[j]` [B, G·M, 2] for
 * view j, row `i·M + m` = `studentPoints[j][i][m]`. So teacher[i] row `j·M + m` and
 * student[j] row `i·M + m` are the same image point. Float32 on the CPU.
 */
export function batchPoints(plans: readonly ViewPlan[]): { teacher: Tensor[]; student: Tensor[] } {
  checkCompatible(plans, "batchPoints");
  const B = plans.length;
  const G = plans[0].globalCrops, N = G + plans[0].localCrops, M = plans[0].numRef;
  const t = flatPoints(plans, G, N, M, (p) => p.teacherPoints);
  const s = flatPoints(plans, N, G, M, (p) => p.studentPoints);
  return {
    teacher: t.map((a) => fromTypedArray(a, [B, N * M, 2])),
    student: s.map((a) => fromTypedArray(a, [B, G * M, 2])),
  };
}
