/**
 * Operators over several tensors and the neural-network functions (torch.nn.functional).
 *
 * @module
 */
import { cString, native } from "./ffi.ts";
import { TorchError } from "./errors.ts";
import type { Generator } from "./random.ts";
import { genH, handlesBuf, optH, sizesBuf, type Tensor, wrap, wrapN } from "./tensor.ts";

/** Concatenates along `dim` (default 0). */
export function cat(ts: readonly Tensor[], dim = 0): Tensor {
  return wrapN(native().dd_cat(handlesBuf(ts, "cat"), ts.length, dim), "cat", ts);
}

/** Stacks along a new dimension `dim` (default 0). */
export function stack(ts: readonly Tensor[], dim = 0): Tensor {
  return wrapN(native().dd_stack(handlesBuf(ts, "stack"), ts.length, dim), "stack", ts);
}

/** Elementwise choice: `a` where `cond` is true, else `b` (broadcasting). */
export function where(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  return wrapN(native().dd_where(cond._h, a._h, b._h), "where", [cond, a, b]);
}

/** Einstein summation, e.g. `einsum("bhqd,bhkd->bhqk", q, k)`. */
export function einsum(equation: string, ...ts: Tensor[]): Tensor {
  return wrapN(
    native().dd_einsum(cString(equation), handlesBuf(ts, "einsum"), ts.length),
    "einsum",
    ts,
  );
}

/** Matrix product with broadcasting (torch.matmul). */
export function matmul(a: Tensor, b: Tensor): Tensor {
  return a.matmul(b);
}

/** y = x·Wᵀ + b with W [out, in] (PyTorch layout); `bias` optional. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  return wrapN(native().dd_linear(x._h, weight._h, optH(bias, "linear")), "linear", [
    x,
    weight,
    bias,
  ]);
}

/** Layer normalisation over the trailing `normalizedShape` dimensions. */
export function layerNorm(
  x: Tensor,
  normalizedShape: readonly number[],
  weight?: Tensor | null,
  bias?: Tensor | null,
  eps = 1e-5,
): Tensor {
  return wrapN(
    native().dd_layer_norm(
      x._h,
      sizesBuf(normalizedShape, "layerNorm"),
      normalizedShape.length,
      optH(weight, "layerNorm"),
      optH(bias, "layerNorm"),
      eps,
    ),
    "layerNorm",
    [x, weight, bias],
  );
}

/** GELU (exact by default). */
export function gelu(x: Tensor, approximate: "none" | "tanh" = "none"): Tensor {
  return x.gelu(approximate);
}

/** Softmax along `dim`. */
export function softmax(x: Tensor, dim: number): Tensor {
  return x.softmax(dim);
}

/** Log-softmax along `dim`. */
export function logSoftmax(x: Tensor, dim: number): Tensor {
  return x.logSoftmax(dim);
}

/** A 2-D size or step: one number for both dimensions, or [height, width]. */
export type Size2d = number | readonly [number, number];
const pair = (p: Size2d): [number, number] => (typeof p === "number" ? [p, p] : [p[0], p[1]]);

/** Options of {@link conv2d}. */
export interface Conv2dOptions {
  /** step of the kernel (default 1) */
  stride?: Size2d;
  /** zero padding added on each side (default 0) */
  padding?: Size2d;
  /** spacing between kernel elements (default 1) */
  dilation?: Size2d;
  /** number of blocked connections from input to output channels (default 1) */
  groups?: number;
}

/** 2-D convolution of x [N, C, H, W] with weight [out, C/groups, kh, kw]. */
export function conv2d(
  x: Tensor,
  weight: Tensor,
  bias?: Tensor | null,
  opts: Conv2dOptions = {},
): Tensor {
  const [sh, sw] = pair(opts.stride ?? 1);
  const [ph, pw] = pair(opts.padding ?? 0);
  const [dh, dw] = pair(opts.dilation ?? 1);
  return wrapN(
    native().dd_conv2d(
      x._h,
      weight._h,
      optH(bias, "conv2d"),
      sh,
      sw,
      ph,
      pw,
      dh,
      dw,
      opts.groups ?? 1,
    ),
    "conv2d",
    [x, weight, bias],
  );
}

/** Options of the 2-D pools. */
export interface Pool2dOptions {
  /** default: the kernel size */
  stride?: Size2d;
  /** implicit padding added on each side (default 0) */
  padding?: Size2d;
  /** round the output size up instead of down (default false) */
  ceilMode?: boolean;
}

function pool(op: number, name: string, x: Tensor, kernel: Size2d, o: Pool2dOptions): Tensor {
  const [kh, kw] = pair(kernel);
  const [sh, sw] = pair(o.stride ?? kernel);
  const [ph, pw] = pair(o.padding ?? 0);
  return wrap(native().dd_pool2d(op, x._h, kh, kw, sh, sw, ph, pw, o.ceilMode ? 1 : 0), name, x);
}

/** 2-D average pooling. */
export function avgPool2d(x: Tensor, kernel: Size2d, opts: Pool2dOptions = {}): Tensor {
  return pool(0, "avgPool2d", x, kernel, opts);
}

/** 2-D max pooling. */
export function maxPool2d(x: Tensor, kernel: Size2d, opts: Pool2dOptions = {}): Tensor {
  return pool(1, "maxPool2d", x, kernel, opts);
}

/** Adaptive average pooling to an output size. */
export function adaptiveAvgPool2d(x: Tensor, size: Size2d): Tensor {
  const [h, w] = pair(size);
  return wrap(native().dd_adaptive_avg_pool2d(x._h, h, w), "adaptiveAvgPool2d", x);
}

/** Interpolation modes of {@link interpolate}. */
export type InterpolateMode = "nearest" | "bilinear" | "bicubic" | "nearest-exact";
const MODES: Record<InterpolateMode, number> = {
  nearest: 0,
  bilinear: 1,
  bicubic: 2,
  "nearest-exact": 3,
};

/** Options of {@link interpolate}: give `size` or `scaleFactor`. */
export interface InterpolateOptions {
  /** output size [H, W] (or one number for both) */
  size?: Size2d;
  /** multiplier of the input size (one number for both dimensions, or [h, w]) */
  scaleFactor?: Size2d;
  /** sampling algorithm (default "nearest") */
  mode?: InterpolateMode;
  /** bilinear / bicubic only (default false) */
  alignCorners?: boolean;
  /** anti-aliased down-sampling, bilinear / bicubic only (default false) */
  antialias?: boolean;
}

/**
 * Resizes x [N, C, H, W] as torch.nn.functional.interpolate (with recompute_scale_factor
 * unset: a scale factor sets the output size ⌊H·s⌋ and is also used for the sampling grid).
 */
export function interpolate(x: Tensor, opts: InterpolateOptions): Tensor {
  const mode = opts.mode ?? "nearest";
  const m = MODES[mode];
  if (m === undefined) {
    throw new TorchError(
      "interpolate",
      `unknown mode "${mode}"; expected ${Object.keys(MODES).join(", ")}`,
    );
  }
  const [oh, ow] = opts.size === undefined ? [0, 0] : pair(opts.size);
  const [sh, sw] = opts.scaleFactor === undefined ? [0, 0] : pair(opts.scaleFactor);
  return wrap(
    native().dd_interpolate(
      x._h,
      m,
      oh,
      ow,
      sh,
      sw,
      opts.alignCorners ? 1 : 0,
      opts.antialias ? 1 : 0,
    ),
    "interpolate",
    x,
  );
}

/** Options of {@link gridSample}. */
export interface GridSampleOptions {
  /** interpolation of the sampled values (default "bilinear") */
  mode?: "bilinear" | "nearest" | "bicubic";
  /** value of grid points outside the input (default "zeros") */
  paddingMode?: "zeros" | "border" | "reflection";
  /** default false, as in PyTorch and in DenseDINO's point convention */
  alignCorners?: boolean;
}

/**
 * Samples x [N, C, H, W] at grid [N, Ho, Wo, 2] of (x, y) coordinates in [−1, 1]
 * (torch.nn.functional.grid_sample).
 */
export function gridSample(x: Tensor, grid: Tensor, opts: GridSampleOptions = {}): Tensor {
  const mode = { bilinear: 0, nearest: 1, bicubic: 2 }[opts.mode ?? "bilinear"];
  const pad = { zeros: 0, border: 1, reflection: 2 }[opts.paddingMode ?? "zeros"];
  if (mode === undefined) throw new TorchError("gridSample", `unknown mode "${opts.mode}"`);
  if (pad === undefined) {
    throw new TorchError("gridSample", `unknown padding mode "${opts.paddingMode}"`);
  }
  return wrap(
    native().dd_grid_sample(x._h, grid._h, mode, pad, opts.alignCorners ? 1 : 0),
    "gridSample",
    x,
    grid,
  );
}

/** Options of {@link crossEntropy}. */
export interface CrossEntropyOptions {
  /** per-class weights */
  weight?: Tensor;
  /** "mean" (default, over non-ignored targets), "sum" or "none" */
  reduction?: "mean" | "sum" | "none";
  /** target value that contributes nothing (default −100; segmentation uses 255) */
  ignoreIndex?: number;
  /** amount of smoothing in [0, 1] mixed into the targets (default 0: none) */
  labelSmoothing?: number;
}

/**
 * Cross-entropy of logits [N, C, …] against int64 class targets [N, …] (or class
 * probabilities of the logits' shape), as torch.nn.functional.cross_entropy.
 */
export function crossEntropy(
  logits: Tensor,
  target: Tensor,
  opts: CrossEntropyOptions = {},
): Tensor {
  const red = { none: 0, mean: 1, sum: 2 }[opts.reduction ?? "mean"];
  if (red === undefined) {
    throw new TorchError("crossEntropy", `unknown reduction "${opts.reduction}"`);
  }
  return wrapN(
    native().dd_cross_entropy(
      logits._h,
      target._h,
      optH(opts.weight, "crossEntropy"),
      red,
      opts.ignoreIndex ?? -100,
      opts.labelSmoothing ?? 0,
    ),
    "crossEntropy",
    [logits, target, opts.weight],
  );
}

/** x / max(‖x‖ₚ, eps) along `dim` (torch.nn.functional.normalize; default p 2, dim 1). */
export function normalize(
  x: Tensor,
  opts: { p?: number; dim?: number; eps?: number } = {},
): Tensor {
  return wrap(
    native().dd_normalize(x._h, opts.p ?? 2, opts.dim ?? 1, opts.eps ?? 1e-12),
    "normalize",
    x,
  );
}

/** Dropout: zeroes elements with probability p and rescales by 1/(1−p) when training. */
export function dropout(x: Tensor, p = 0.5, training = true, generator?: Generator): Tensor {
  return wrap(
    native().dd_dropout(x._h, p, training ? 1 : 0, genH(generator, "dropout")),
    "dropout",
    x,
  );
}

/** Weight normalisation: g·v/‖v‖ with the norm over every dimension except `dim`. */
export function weightNorm(v: Tensor, g: Tensor, dim = 0): Tensor {
  return wrap(native().dd_weight_norm(v._h, g._h, dim), "weightNorm", v, g);
}

/** Padding modes of {@link pad}. */
export type PadMode = "constant" | "reflect" | "replicate" | "circular";

/** Pads the trailing dimensions: `pads` = [left, right, top, bottom, …] (last dimension first). */
export function pad(
  x: Tensor,
  pads: readonly number[],
  mode: PadMode = "constant",
  value = 0,
): Tensor {
  const m = { constant: 0, reflect: 1, replicate: 2, circular: 3 }[mode];
  if (m === undefined) throw new TorchError("pad", `unknown mode "${mode}"`);
  return wrap(native().dd_pad(x._h, sizesBuf(pads, "pad"), pads.length, m, value), "pad", x);
}

/** True when the shim's libtorch has fused scaled_dot_product_attention (libtorch ≥ 2.0). */
export function hasScaledDotProductAttention(): boolean {
  return native().dd_has_sdpa() === 1;
}

/**
 * Fused attention softmax(q·kᵀ·scale + mask)·v over [..., L, E] inputs (libtorch ≥ 2.0; see
 * {@link hasScaledDotProductAttention}). A bool mask marks positions that may be attended.
 */
export function scaledDotProductAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: { mask?: Tensor; dropout?: number; isCausal?: boolean; scale?: number } = {},
): Tensor {
  return wrapN(
    native().dd_sdpa(
      q._h,
      k._h,
      v._h,
      optH(opts.mask, "scaledDotProductAttention"),
      opts.dropout ?? 0,
      opts.isCausal ? 1 : 0,
      opts.scale ?? 0,
    ),
    "scaledDotProductAttention",
    [q, k, v, opts.mask],
  );
}
