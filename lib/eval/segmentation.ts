/**
 * The linear segmentation probe of a frozen ViT (Leopart's protocol, which DenseDINO §4.1
 * follows; DESIGN.md §4), with mIoU over the whole validation set.
 *
 * **Protocol** (every number is an option; {@link LEOPART_PROBE} holds the VOC values):
 * - input: the image resized to `inputSize`×`inputSize` (bilinear, antialiased, as torchvision's
 *   `Resize((448, 448))` on PIL images), ImageNet-normalised; the mask resized to the same size
 *   with PIL's nearest rule;
 * - features: the frozen patch tokens [B, N, D] reshaped to the grid [B, D, h, w];
 * - head: a 1×1 convolution D → K (weights normal, std 0.01; zero bias), trained in float32
 *   on logits bilinearly upsampled (align_corners false) to `maskSize`×`maskSize` against
 *   masks nearest-downsampled to that size, cross-entropy ignoring 255;
 * - optimiser: SGD lr 0.01, momentum 0.9, weight decay 1e-4 (on weight and bias), 25 epochs,
 *   lr × 0.1 every 20 epochs (StepLR: once in 25 epochs), batch 60;
 * - training augmentation: RandomResizedCrop (scale 0.8–1, ratio 3/4–4/3; torchvision's
 *   parameter sampler) and a horizontal flip (p 0.5), on image and mask together;
 * - evaluation: logits upsampled bilinearly to the input size, argmax, one confusion matrix over
 *   the whole validation set: per-class IoU, mIoU over all classes including background, pixel
 *   accuracy (see `metrics.ts`).
 *
 * The head is applied before the upsampling: a 1×1 convolution and a bilinear resize (or
 * sampling) commute exactly — both are linear and the interpolation weights sum to one — so
 * this is the same model as Leopart's "upsample the D-channel features, then convolve", at K/D
 * of the cost.
 *
 * **Two training modes** (`features`):
 * - `"cached"` (the default): the frozen features of the un-augmented training images are
 *   computed once and kept (in memory, and on disk with a cache directory); each epoch the
 *   crop and flip are applied to the cached feature maps and masks together: the logits of the
 *   whole feature map are bilinearly sampled at the centres of the crop's output pixels (a flip
 *   mirrors the sampling positions exactly), and the mask is cropped and resized with the same
 *   box by the nearest rule. Without a crop this is exactly the upsampling above. It
 *   approximates running the backbone on the cropped image (a ViT's features of a crop are not
 *   the crop of its features), and costs one backbone pass in all instead of one per epoch:
 *   on CPU the backbone is nearly all of the work, so this is the practical default.
 * - `"recompute"` (Leopart-exact): every epoch each training image is cropped and flipped, resized
 *   to the input size and passed through the backbone again.
 *
 * The probe reports its final-epoch training loss next to the **class-prior baseline**: the
 * cross-entropy of predicting the training pixels' class frequencies everywhere (the entropy
 * of the final epoch's target pixels, the best any constant prediction can do). A probe that
 * does not beat it clearly (`trainLoss > (1 − fitMargin) · priorLoss`) has not fitted: it is
 * flagged `fitted: false` with a warning, since its mIoU then measures nothing (a probe that
 * predicts background everywhere on a data set with 83% background pixels is such a case). A
 * probe that predicts one class for every validation pixel is flagged the same way, whatever
 * its loss.
 *
 * @module
 */
import {
  conv2d,
  crossEntropy,
  type Device,
  empty,
  freeAll,
  fromTypedArray,
  Generator,
  interpolate,
  keep,
  noGrad,
  scope,
  SGD,
  stack,
  type Tensor,
  zeros,
} from "../torch/mod.ts";
import { Module, type VisionTransformer } from "../nn/mod.ts";
import { type Dataset, imagenetNormalize, Progress, type Sample } from "../data/mod.ts";
import { GeometryRng, randomResizedCropParams } from "../densedino/views.ts";
import { EvalError, type LoadedBackbone } from "./backbone.ts";
import {
  featureCacheFile,
  type FeatureCacheKey,
  forEachBatch,
  loadFeatureCache,
  saveFeatureCache,
} from "./features.ts";
import {
  checkLabels,
  type ClassIoU,
  ConfusionMatrix,
  IGNORE_INDEX,
  type SegmentationMetrics,
} from "./metrics.ts";

// ---- options ---------------------------------------------------------------------------------

/** How the probe gets its training features (see the module notes). */
export type ProbeFeatureMode = "cached" | "recompute";

/** The probe's protocol: sizes, schedule, augmentation, fit check. */
export interface ProbeOptions {
  /** number of classes K, background included (required) */
  numClasses: number;
  /** class names for reports (default their indices) */
  classes?: readonly string[];
  /** mask value ignored by the loss and the metrics (default 255) */
  ignoreIndex?: number;
  /** side of the square backbone input in pixels (default 448) */
  inputSize?: number;
  /** side of the training masks and logits (default 100) */
  maskSize?: number;
  /** training epochs (default 25) */
  epochs?: number;
  /** SGD learning rate (default 0.01) */
  lr?: number;
  /** SGD momentum (default 0.9) */
  momentum?: number;
  /** SGD weight decay, on the weight and the bias (default 1e-4) */
  weightDecay?: number;
  /** the lr is multiplied by `gamma` every `milestone` epochs (StepLR; default 20; 0: never) */
  milestone?: number;
  /** lr factor at each milestone (default 0.1) */
  gamma?: number;
  /** images per step (default 60) */
  batchSize?: number;
  /** RandomResizedCrop area range (default [0.8, 1]) */
  scale?: readonly [number, number];
  /** RandomResizedCrop aspect-ratio range (default [3/4, 4/3]) */
  ratio?: readonly [number, number];
  /** probability of a horizontal flip (default 0.5) */
  flip?: number;
  /** standard deviation of the head's initial weights (default 0.01) */
  initStd?: number;
  /** seed of the head's initialisation, the batch order and the augmentation (default 0) */
  seed?: number;
  /** `fitted` requires trainLoss ≤ (1 − fitMargin) · priorLoss (default 0.1) */
  fitMargin?: number;
  /** where the head trains (default "cpu"; the backbone's device in {@link linearSegProbe}) */
  device?: Device;
  /** receives one line per epoch and other notes (default: nothing) */
  log?: (message: string) => void;
  /** progress lines on stderr for long passes (default false) */
  progress?: boolean;
}

/** Every {@link ProbeOptions} field with a value (classes, device and log stay optional). */
export type ResolvedProbeOptions =
  & Required<Omit<ProbeOptions, "classes" | "device" | "log">>
  & Pick<ProbeOptions, "classes" | "device" | "log">;

/** The protocol part of {@link ProbeOptions}: everything but the classes, device and log. */
export type ProbeProtocol = Omit<ResolvedProbeOptions, "numClasses" | "classes" | "device" | "log">;

/** Leopart's linear-probe protocol on Pascal VOC (448-px input, 100-px masks, 25 epochs). */
export const LEOPART_PROBE: Readonly<ProbeProtocol> = Object.freeze({
  ignoreIndex: IGNORE_INDEX,
  inputSize: 448,
  maskSize: 100,
  epochs: 25,
  lr: 0.01,
  momentum: 0.9,
  weightDecay: 1e-4,
  milestone: 20,
  gamma: 0.1,
  batchSize: 60,
  scale: Object.freeze([0.8, 1]) as readonly [number, number],
  ratio: Object.freeze([3 / 4, 4 / 3]) as readonly [number, number],
  flip: 0.5,
  initStd: 0.01,
  seed: 0,
  fitMargin: 0.1,
  progress: false,
});

/**
 * The probe on fashion-scenes: Leopart's protocol at the scenes' own scale, tuned so that the
 * probe fits in 25 epochs on about a thousand scenes (measured with random-init `vit_tiny/16`
 * at 96 px and `vit_mini/8` at 64 px, whose patch features separate items from background only
 * a little: with Leopart's lr 0.01 and batch 60 the probe barely moves from the class prior in
 * the ~400 steps such a set gives):
 * - the input is the scene size (96 px; set `inputSize` to the scenes' size);
 * - training masks at half the input size (48 px: 8 px per 16-px patch, where Leopart has
 *   100/448 · 16 ≈ 3.6) — the loss costs 4× less than at full size and fits as well;
 * - batches of 16 (about 60 SGD steps per epoch on 1,000 scenes) with lr 0.1: the final
 *   training loss is 0.74 / 0.81 against a class prior of 0.95 / 0.96 for the two backbones
 *   above (lr 0.01: 0.78 / 0.85, which barely passes the fit check; lr 0.3 is worse again).
 */
export const FASHION_SCENES_PROBE: Readonly<ProbeProtocol> = Object.freeze({
  ...LEOPART_PROBE,
  inputSize: 96,
  maskSize: 48,
  batchSize: 16,
  lr: 0.1,
});

function posInt(v: number, what: string): void {
  if (!Number.isSafeInteger(v) || v < 1) {
    throw new EvalError(`${what} must be a positive integer, got ${v}`);
  }
}

function nonNeg(v: number, what: string): void {
  if (!Number.isFinite(v) || v < 0) {
    throw new EvalError(`${what} must be a non-negative number, got ${v}`);
  }
}

/**
 * Fills in the defaults ({@link LEOPART_PROBE}, or `base`) and checks every value; a bad value
 * is an {@link EvalError} naming the option.
 */
export function resolveProbeOptions(
  opts: ProbeOptions,
  base: Readonly<ProbeProtocol> = LEOPART_PROBE,
): ResolvedProbeOptions {
  const o: ResolvedProbeOptions = { ...base, ...stripUndefined(opts) } as ResolvedProbeOptions;
  posInt(o.numClasses, "numClasses");
  if (o.classes !== undefined && o.classes.length !== o.numClasses) {
    throw new EvalError(`${o.classes.length} class names for ${o.numClasses} classes`);
  }
  if (!Number.isSafeInteger(o.ignoreIndex)) {
    throw new EvalError(`ignoreIndex must be an integer, got ${o.ignoreIndex}`);
  }
  if (o.ignoreIndex >= 0 && o.ignoreIndex < o.numClasses) {
    throw new EvalError(`ignoreIndex ${o.ignoreIndex} is one of the ${o.numClasses} classes`);
  }
  posInt(o.inputSize, "inputSize");
  posInt(o.maskSize, "maskSize");
  posInt(o.epochs, "epochs");
  posInt(o.batchSize, "batchSize");
  if (!Number.isSafeInteger(o.milestone) || o.milestone < 0) {
    throw new EvalError(`milestone must be a non-negative integer, got ${o.milestone}`);
  }
  if (!(Number.isFinite(o.lr) && o.lr > 0)) {
    throw new EvalError(`lr must be a positive number, got ${o.lr}`);
  }
  nonNeg(o.momentum, "momentum");
  nonNeg(o.weightDecay, "weightDecay");
  nonNeg(o.gamma, "gamma");
  if (!(Number.isFinite(o.initStd) && o.initStd >= 0)) {
    throw new EvalError(`initStd must be a non-negative number, got ${o.initStd}`);
  }
  if (!(o.flip >= 0 && o.flip <= 1)) throw new EvalError(`flip must be in [0, 1], got ${o.flip}`);
  if (!(o.fitMargin >= 0 && o.fitMargin < 1)) {
    throw new EvalError(`fitMargin must be in [0, 1), got ${o.fitMargin}`);
  }
  const range = (r: readonly number[] | undefined, name: string, max: number) => {
    if (
      !Array.isArray(r) || r.length !== 2 || !(r[0] > 0) || !(r[0] <= r[1]) || !(r[1] <= max)
    ) {
      throw new EvalError(
        `${name} must be a range [lo, hi] with 0 < lo ≤ hi${max < Infinity ? ` ≤ ${max}` : ""}` +
          `, got ${JSON.stringify(r)}`,
      );
    }
  };
  range(o.scale, "scale", 1);
  range(o.ratio, "ratio", Infinity);
  if (!Number.isSafeInteger(o.seed)) throw new EvalError(`seed must be an integer, got ${o.seed}`);
  return o;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** The learning rate of `epoch` (0-based): `lr · gamma^⌊epoch / milestone⌋` (StepLR). */
export function probeLrAt(
  epoch: number,
  o: Pick<ProbeOptions, "lr" | "milestone" | "gamma">,
): number {
  const lr = o.lr ?? LEOPART_PROBE.lr;
  const m = o.milestone ?? LEOPART_PROBE.milestone;
  const g = o.gamma ?? LEOPART_PROBE.gamma;
  return m > 0 ? lr * Math.pow(g, Math.floor(epoch / m)) : lr;
}

// ---- the head and the geometry ---------------------------------------------------------------

/** Patch tokens [B, N, D] as a feature grid [B, D, h, w] (N = h·w, row-major patches). */
export function tokensToGrid(patch: Tensor, h: number, w: number = h): Tensor {
  if (patch.ndim !== 3 || patch.size(1) !== h * w) {
    throw new EvalError(
      `tokensToGrid: expected patch tokens [B, ${h * w}, D] for a ${h}×${w} grid, got ` +
        `[${patch.shape.join(", ")}]`,
    );
  }
  return scope(() => patch.transpose(1, 2).reshape([patch.size(0), patch.size(2), h, w]));
}

/** Options of {@link LinearSegHead}. */
export interface LinearSegHeadOptions {
  /** standard deviation of the normal initial weights (default 0.01); the bias starts at 0 */
  std?: number;
  /** generator of the initial weights (default libtorch's) */
  generator?: Generator;
}

/**
 * The probe's head: a 1×1 convolution from D feature channels to K classes (parameters
 * `weight` [K, D, 1, 1] and `bias` [K], as PyTorch's `nn.Conv2d(D, K, 1)`), float32.
 */
export class LinearSegHead extends Module {
  /** [K, D, 1, 1] */
  readonly weight: Tensor;
  /** [K] */
  readonly bias: Tensor;
  /** input channels D */
  readonly inDim: number;
  /** classes K */
  readonly numClasses: number;

  /** A head D → K, weights normal(0, std), zero bias. */
  constructor(inDim: number, numClasses: number, opts: LinearSegHeadOptions = {}) {
    super();
    posInt(inDim, "LinearSegHead: inDim");
    posInt(numClasses, "LinearSegHead: numClasses");
    this.inDim = inDim;
    this.numClasses = numClasses;
    const std = opts.std ?? 0.01;
    this.weight = this.registerParameter(
      "weight",
      zeros([numClasses, inDim, 1, 1]).normal_(0, std, opts.generator),
    );
    this.bias = this.registerParameter("bias", zeros([numClasses]));
  }

  /** Logits [B, K, h, w] of features [B, D, h, w]. */
  forward(grid: Tensor): Tensor {
    if (grid.ndim !== 4 || grid.size(1) !== this.inDim) {
      throw new EvalError(
        `LinearSegHead: expected features [B, ${this.inDim}, h, w], got [${grid.shape.join(", ")}]`,
      );
    }
    return conv2d(grid, this.weight, this.bias);
  }
}

/** A training crop and flip: torchvision's `(top, left, height, width)` box in pixels. */
export interface CropFlip {
  /** first row */
  top: number;
  /** first column */
  left: number;
  /** rows */
  height: number;
  /** columns */
  width: number;
  /** mirrored horizontally after the crop */
  flip: boolean;
}

/** The whole image, not flipped. */
export function fullCrop(width: number, height: number): CropFlip {
  return { top: 0, left: 0, height, width, flip: false };
}

/**
 * Draws a RandomResizedCrop box (torchvision's sampler) for a width×height image, then a flip
 * with probability `flip`, from `rng`.
 */
export function sampleCropFlip(
  width: number,
  height: number,
  o: Pick<ResolvedProbeOptions, "scale" | "ratio" | "flip">,
  rng: GeometryRng,
): CropFlip {
  const c = randomResizedCropParams(width, height, { scale: o.scale, ratio: o.ratio }, rng);
  return { ...c, flip: rng.random() < o.flip };
}

/**
 * Row and column indices into a mask for a crop resized to `inputSize` (PIL's nearest rule:
 * source `⌊(i + ½)·len / inputSize⌋`), flipped, then nearest-downsampled to `outSize`
 * (PyTorch's `nearest`: source `⌊k · inputSize / outSize⌋`) — Leopart's mask pipeline.
 */
export function cropMaskIndices(
  c: CropFlip,
  inputSize: number,
  outSize: number,
): { rows: Int32Array; cols: Int32Array } {
  const rows = new Int32Array(outSize);
  const cols = new Int32Array(outSize);
  for (let k = 0; k < outSize; k++) {
    const r = Math.floor((k * inputSize) / outSize);
    let q = r;
    rows[k] = c.top + Math.min(c.height - 1, Math.floor(((r + 0.5) * c.height) / inputSize));
    if (c.flip) q = inputSize - 1 - q;
    cols[k] = c.left + Math.min(c.width - 1, Math.floor(((q + 0.5) * c.width) / inputSize));
  }
  return { rows, cols };
}

/**
 * The training targets of a batch: each mask [H_b, W_b] (uint8 or any integer type) cropped
 * by its box, resized and flipped as {@link cropMaskIndices}; returns int64 [B, outSize,
 * outSize].
 */
export function cropMasks(
  masks: readonly Tensor[],
  crops: readonly CropFlip[],
  inputSize: number,
  outSize: number,
): Tensor {
  return scope(() => {
    const out = masks.map((m, b) => {
      const { rows, cols } = cropMaskIndices(crops[b], inputSize, outSize);
      const r = fromTypedArray(rows, [outSize], { device: m.device }).long();
      const c = fromTypedArray(cols, [outSize], { device: m.device }).long();
      return m.indexSelect(0, r).indexSelect(1, c);
    });
    return stack(out, 0).long();
  });
}

/**
 * The `gridSample` grid [B, outSize, outSize, 2] that reads, from a feature (or logit) map
 * covering an `inputSize`×`inputSize` image, the values at the centres of the output pixels of
 * each crop resized to `outSize` and flipped (align_corners false). With the whole image and
 * no flip, bilinear sampling on this grid equals bilinear `interpolate` to `outSize`.
 */
export function cropSampleGrid(
  crops: readonly CropFlip[],
  inputSize: number,
  outSize: number,
  device: Device = "cpu",
): Tensor {
  const B = crops.length;
  const g = new Float32Array(B * outSize * outSize * 2);
  const xs = new Float64Array(outSize);
  const ys = new Float64Array(outSize);
  for (let b = 0; b < B; b++) {
    const c = crops[b];
    for (let k = 0; k < outSize; k++) {
      const a = ((k + 0.5) * c.width) / outSize;
      xs[k] = (2 * (c.left + (c.flip ? c.width - a : a))) / inputSize - 1;
      ys[k] = (2 * (c.top + ((k + 0.5) * c.height) / outSize)) / inputSize - 1;
    }
    let o = b * outSize * outSize * 2;
    for (let i = 0; i < outSize; i++) {
      for (let j = 0; j < outSize; j++) {
        g[o++] = xs[j];
        g[o++] = ys[i];
      }
    }
  }
  return fromTypedArray(g, [B, outSize, outSize, 2], { device });
}

/**
 * Bilinear resampling weights of each crop, separably: `rows` [B, outSize, h] and `cols`
 * [B, outSize, w] (float32), such that `rows_b · L_b · cols_bᵀ` reads a map L_b [h, w] covering
 * an `inputSize`×`inputSize` image at the centres of the output pixels of crop b resized to
 * `outSize` and flipped — the same values as bilinear `gridSample` on {@link cropSampleGrid}
 * with border padding (coordinates clamped to the map), as two small matrix products whose
 * backward pass is cheap.
 */
export function cropResampleWeights(
  crops: readonly CropFlip[],
  inputSize: number,
  h: number,
  w: number,
  outSize: number,
  device: Device = "cpu",
): { rows: Tensor; cols: Tensor } {
  const B = crops.length;
  const rows = new Float32Array(B * outSize * h);
  const cols = new Float32Array(B * outSize * w);
  const put = (dst: Float32Array, base: number, n: number, pos: number) => {
    // pos: continuous input-pixel coordinate (0 = left edge); map cell k's centre is at
    // (k + 0.5)·inputSize/n
    const u = Math.min(Math.max((pos * n) / inputSize - 0.5, 0), n - 1);
    const i0 = Math.floor(u);
    const i1 = Math.min(i0 + 1, n - 1);
    const t = u - i0;
    dst[base + i0] += 1 - t;
    dst[base + i1] += t;
  };
  for (let b = 0; b < B; b++) {
    const c = crops[b];
    for (let k = 0; k < outSize; k++) {
      const a = ((k + 0.5) * c.width) / outSize;
      put(cols, (b * outSize + k) * w, w, c.left + (c.flip ? c.width - a : a));
      put(rows, (b * outSize + k) * h, h, c.top + ((k + 0.5) * c.height) / outSize);
    }
  }
  return scope(() => ({
    rows: fromTypedArray(rows, [B, outSize, h], { device }),
    cols: fromTypedArray(cols, [B, outSize, w], { device }),
  }));
}

/**
 * Maps [B, C, h, w] covering an `inputSize`-px image, resampled for each crop to
 * [B, C, outSize, outSize] (bilinear; see {@link cropResampleWeights}).
 */
export function resampleCrops(
  maps: Tensor,
  crops: readonly CropFlip[],
  inputSize: number,
  outSize: number,
): Tensor {
  return scope(() => {
    const [, , h, w] = maps.shape;
    const { rows, cols } = cropResampleWeights(crops, inputSize, h, w, outSize, maps.device);
    // [B, 1, S, h] · [B, C, h, w] · [B, 1, w, S]
    return rows.unsqueeze(1).matmul(maps).matmul(cols.unsqueeze(1).transpose(2, 3));
  });
}

/**
 * The probe's input transform of an image [3, H, W] (or a batch) in [0, 1]: resized to
 * `size`×`size` (bilinear, antialiased, clamped to [0, 1]; Leopart's `Resize((S, S))`), then
 * ImageNet-normalised.
 */
export function probeImage(image: Tensor, size: number): Tensor {
  return scope(() => {
    const x = image.ndim === 3 ? image.unsqueeze(0) : image;
    const same = x.size(2) === size && x.size(3) === size;
    const r = same
      ? x
      : interpolate(x.float(), { size: [size, size], mode: "bilinear", antialias: true }).clamp(
        0,
        1,
      );
    const n = imagenetNormalize(r.float());
    return image.ndim === 3 ? n.squeeze(0) : n;
  });
}

/** A stable description of {@link probeImage} and {@link probeMask} for cache keys. */
export function probeTransformId(size: number): string {
  return `probe-resize${size}x${size}-bilinear-aa/imagenet-norm/mask-nearest-exact`;
}

/** A mask [H, W] resized to `size`×`size` with PIL's nearest rule (uint8). */
export function probeMask(mask: Tensor, size: number): Tensor {
  return scope(() => {
    if (mask.size(0) === size && mask.size(1) === size) return mask.to("uint8").clone();
    const m = mask.float().unsqueeze(0).unsqueeze(0);
    return interpolate(m, { size: [size, size], mode: "nearest-exact" }).squeeze(0).squeeze(0)
      .to("uint8");
  });
}

// ---- the class prior ------------------------------------------------------------------------

/**
 * The cross-entropy (nats) of predicting the class frequencies `counts` everywhere on pixels
 * with those counts: their entropy, the lowest loss any constant prediction reaches.
 */
export function priorCrossEntropy(counts: readonly number[]): number {
  const n = counts.reduce((a, b) => a + b, 0);
  if (n === 0) return NaN;
  let h = 0;
  for (const c of counts) if (c > 0) h -= (c / n) * Math.log(c / n);
  return h;
}

/** Whether a probe fitted: its loss beats the prior's by the relative `margin`. */
export function probeFitted(trainLoss: number, priorLoss: number, margin = 0.1): boolean {
  return Number.isFinite(trainLoss) && Number.isFinite(priorLoss) &&
    trainLoss <= (1 - margin) * priorLoss;
}

// ---- features ---------------------------------------------------------------------------------

/** Frozen grid features of a set of images with their masks (the cached mode's store). */
export interface SegFeatureSet {
  /** features [N, D, h, w] (float32, or float16 to halve the memory; CPU) */
  features: Tensor;
  /** masks at the input size [N, S, S] uint8 (class indices, 255 ignore) */
  masks: Tensor;
}

/** Frees a {@link SegFeatureSet}'s tensors. */
export function freeFeatureSet(s: SegFeatureSet): void {
  s.features.free();
  s.masks.free();
}

/** Something that turns normalised images [B, 3, S, S] into frozen features [B, D, h, w]. */
export interface GridExtractor {
  /** feature channels D */
  readonly dim: number;
  /** the device the images go to */
  readonly device: Device;
  /** features [B, D, h, w] float32 of images [B, 3, S, S], without gradients */
  extract(images: Tensor): Tensor;
}

/**
 * The patch-token grid of a frozen ViT as a {@link GridExtractor}: the last layer's patch tokens
 * (after the final LayerNorm), reshaped to [B, D, S/p, S/p].
 */
export function vitGridExtractor(
  b: Pick<LoadedBackbone, "vit" | "patchSize"> & { device?: Device },
  inputSize: number,
): GridExtractor {
  if (inputSize % b.patchSize !== 0) {
    throw new EvalError(
      `the probe's input size ${inputSize} is not a multiple of the patch size ${b.patchSize}`,
    );
  }
  const vit: VisionTransformer = b.vit;
  const h = inputSize / b.patchSize;
  return {
    dim: vit.config.embedDim,
    device: b.device ?? "cpu",
    extract: (images) =>
      noGrad(() => scope(() => tokensToGrid(vit.forward(images).patch.float(), h).contiguous())),
  };
}

interface MaskSource {
  maskPathOf?: (i: number) => string | null;
}

/** The name of example i's mask for messages: the mask file when the data set knows it. */
function maskName(ds: Dataset, i: number, s: Sample): string {
  try {
    const p = (ds as Dataset & MaskSource).maskPathOf?.(i);
    if (typeof p === "string") return p;
  } catch { /* fall back to the sample's name */ }
  return s.name;
}

/** Checks a sample's mask (present, same size as the image, labels in range). */
function checkSampleMask(ds: Dataset, i: number, s: Sample, K: number, ignore: number): Tensor {
  if (!s.mask) {
    throw new EvalError(
      `example ${i} (${s.name}) has no segmentation mask: the probe needs a data set with masks`,
    );
  }
  const m = s.mask;
  if (m.ndim !== 2 || m.size(0) !== s.image.size(1) || m.size(1) !== s.image.size(2)) {
    throw new EvalError(
      `${maskName(ds, i, s)}: the mask is [${m.shape.join(", ")}] but its image is ` +
        `[${s.image.shape.join(", ")}]`,
    );
  }
  checkLabels(m, K, ignore, maskName(ds, i, s));
  return m;
}

/** Options of {@link extractSegFeatures}. */
export interface SegExtractOptions {
  /** classes K (to check the labels) */
  numClasses: number;
  /** side of the square input (default 448) */
  inputSize?: number;
  /** ignored mask value (default 255) */
  ignoreIndex?: number;
  /** images per forward pass (default 32) */
  batchSize?: number;
  /** only the first `limit` examples */
  limit?: number;
  /** dtype of the stored features (default float32) */
  dtype?: "float32" | "float16";
  /** progress label (default "features") */
  label?: string;
  /** progress line on stderr (default false) */
  progress?: boolean;
}

/**
 * Frozen features [N, D, h, w] (on the CPU) and masks at the input size [N, S, S] of the first
 * `limit` examples of `ds`, in order. Masks are checked: a missing mask, a mask of another
 * size than its image, or a label outside the classes (other than the ignore index) is an
 * {@link EvalError} naming the file.
 */
export async function extractSegFeatures(
  ds: Dataset,
  extractor: GridExtractor,
  opts: SegExtractOptions,
): Promise<SegFeatureSet> {
  const S = opts.inputSize ?? LEOPART_PROBE.inputSize;
  const K = opts.numClasses;
  const ignore = opts.ignoreIndex ?? IGNORE_INDEX;
  const n = Math.min(ds.length, opts.limit ?? ds.length);
  let features: Tensor | null = null;
  let masks: Tensor | null = null;
  try {
    masks = keep(empty([n, S, S], { dtype: "uint8" }));
    const store = masks;
    await forEachBatch(ds, {
      batchSize: opts.batchSize ?? 32,
      transform: (img) => probeImage(img, S),
      label: opts.label ?? "features",
      progress: opts.progress ?? false,
      limit: opts.limit,
      device: extractor.device,
    }, ({ images, samples, indices }) => {
      samples.forEach((s, k) => checkSampleMask(ds, indices[k], s, K, ignore));
      const f = scope(() =>
        extractor.extract(images).to({ dtype: opts.dtype ?? "float32", device: "cpu" })
      );
      try {
        if (features === null) {
          features = keep(empty([n, f.size(1), f.size(2), f.size(3)], { dtype: f.dtype }));
        }
        const i0 = indices[0];
        scope(() => {
          features!.narrow(0, i0, f.size(0)).copy_(f);
          samples.forEach((s, k) => store.select(0, i0 + k).copy_(probeMask(s.mask!, S)));
        });
      } finally {
        f.free();
      }
    });
    if (features === null) throw new EvalError("the data set is empty: nothing to evaluate");
    const out: SegFeatureSet = { features, masks };
    features = null;
    masks = null;
    return out;
  } finally {
    (features as Tensor | null)?.free();
    masks?.free();
  }
}

/** Where {@link cachedSegFeatures} keeps features. */
export interface SegCacheOptions {
  /** the cache directory (null / absent: no disk cache) */
  cacheDir?: string | null;
  /** the backbone's weights fingerprint */
  fingerprint: string;
  /** the data set, split and subset, e.g. `fashion-scenes:train:count=1000:size=96:seed=0` */
  dataset: string;
  /** receives a line when the cache is read or written */
  log?: (message: string) => void;
}

/** The cache key of the probe's features (kind "seg-grid"). */
export function segCacheKey(
  fingerprint: string,
  dataset: string,
  inputSize: number,
  dtype: "float32" | "float16" = "float32",
): FeatureCacheKey {
  return {
    fingerprint,
    dataset,
    transform: probeTransformId(inputSize),
    kind: `seg-grid-${dtype}`,
  };
}

/**
 * {@link extractSegFeatures} through the feature cache of `features.ts`: read from
 * `featureCacheFile(cacheDir, key)` when present and written for exactly this model, data and
 * transform (a file written for another model is an {@link EvalError} naming it), else
 * computed and written there.
 */
export async function cachedSegFeatures(
  ds: Dataset,
  extractor: GridExtractor,
  opts: SegExtractOptions & SegCacheOptions,
): Promise<SegFeatureSet & { cacheFile: string | null; fromCache: boolean }> {
  const S = opts.inputSize ?? LEOPART_PROBE.inputSize;
  const key = segCacheKey(opts.fingerprint, opts.dataset, S, opts.dtype ?? "float32");
  const file = opts.cacheDir ? featureCacheFile(opts.cacheDir, key) : null;
  if (file) {
    const t = await loadFeatureCache(file, key);
    if (t) {
      const { features, masks } = t;
      const n = Math.min(ds.length, opts.limit ?? ds.length);
      const bad = !features || !masks || features.ndim !== 4 || masks.ndim !== 3 ||
        features.size(0) !== n || masks.size(0) !== n || masks.size(1) !== S ||
        features.size(1) !== extractor.dim;
      if (bad) {
        freeAll(t);
        throw new EvalError(
          `feature cache ${file} does not hold ${n} feature maps of ${extractor.dim} channels ` +
            `and ${S}-px masks; delete it to recompute`,
        );
      }
      for (const [k, v] of Object.entries(t)) if (k !== "features" && k !== "masks") v.free();
      opts.log?.(`${opts.label ?? "features"}: ${n} from the cache ${file}`);
      return { features, masks, cacheFile: file, fromCache: true };
    }
  }
  const set = await extractSegFeatures(ds, extractor, opts);
  if (file) {
    try {
      await saveFeatureCache(file, key, { features: set.features, masks: set.masks });
    } catch (e) {
      freeFeatureSet(set);
      throw e;
    }
    opts.log?.(`${opts.label ?? "features"}: cached in ${file}`);
  }
  return { ...set, cacheFile: file, fromCache: false };
}

// ---- training ---------------------------------------------------------------------------------

/** One epoch of {@link trainProbeOnFeatures} / {@link trainProbeRecompute}. */
export interface ProbeEpoch {
  /** 0-based epoch */
  epoch: number;
  /** mean cross-entropy over the epoch's target pixels (measured before each step) */
  loss: number;
  /** the class-prior baseline on the same pixels ({@link priorCrossEntropy}) */
  priorLoss: number;
  /** the epoch's learning rate */
  lr: number;
  /** wall time of the epoch in seconds */
  seconds: number;
  /** images seen */
  images: number;
}

/** What training returns. The caller frees `head`. */
export interface ProbeTrainResult {
  /** the trained head */
  head: LinearSegHead;
  /** one record per epoch */
  history: ProbeEpoch[];
  /** the final epoch's loss */
  trainLoss: number;
  /** the class-prior baseline of the final epoch */
  priorLoss: number;
  /** whether the probe beat the prior clearly ({@link probeFitted}) */
  fitted: boolean;
  /** human warnings (empty when all is well) */
  warnings: string[];
}

function orderOf(n: number, seed: number, epoch: number): number[] {
  const rng = GeometryRng.derive(seed, 0, epoch);
  const idx = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(0, i + 1);
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return idx;
}

function cropRng(seed: number, epoch: number, index: number): GeometryRng {
  return GeometryRng.derive(seed, 1, epoch, index);
}

/** The shared loop: a head, SGD, per-epoch schedule, loss and prior bookkeeping. */
class ProbeTrainer {
  readonly o: ResolvedProbeOptions;
  readonly head: LinearSegHead;
  readonly opt: SGD;
  readonly device: Device;
  history: ProbeEpoch[] = [];
  #lossSum = 0;
  #pixels = 0;
  #counts: number[];
  #t0 = 0;
  #images = 0;
  #epoch = 0;

  constructor(dim: number, o: ResolvedProbeOptions) {
    this.o = o;
    this.device = o.device ?? "cpu";
    const g = new Generator(o.seed);
    try {
      this.head = new LinearSegHead(dim, o.numClasses, { std: o.initStd, generator: g });
    } finally {
      g.free();
    }
    if (this.device !== "cpu") this.head.to(this.device);
    this.opt = new SGD(this.head.parameters(), {
      lr: o.lr,
      momentum: o.momentum,
      weightDecay: o.weightDecay,
    });
    this.#counts = new Array(o.numClasses).fill(0);
  }

  beginEpoch(epoch: number): void {
    this.#epoch = epoch;
    this.opt.groups[0].lr = probeLrAt(epoch, this.o);
    this.#lossSum = 0;
    this.#pixels = 0;
    this.#images = 0;
    this.#counts.fill(0);
    this.#t0 = performance.now();
  }

  /** One SGD step on logits [B, K, S, S] (a function of the head) against targets [B, S, S]. */
  step(logitsOf: () => Tensor, targetOf: () => Tensor, images: number): void {
    const K = this.o.numClasses;
    const r = scope(() => {
      const target = targetOf();
      const logits = logitsOf();
      const loss = crossEntropy(logits, target, { ignoreIndex: this.o.ignoreIndex });
      const valid = target.ne(this.o.ignoreIndex);
      const n = valid.sum().item();
      const counts = n === 0 ? null : Array.from(
        target.maskedSelect(valid).bincount({ minlength: K }).to("cpu").toTypedArray(),
        Number,
      );
      if (n > 0) {
        loss.backward();
        this.opt.step();
      }
      this.opt.zeroGrad();
      return { loss: n > 0 ? loss.item() : 0, n, counts };
    });
    if (r.n > 0 && !Number.isFinite(r.loss)) {
      throw new EvalError(
        `the probe's loss became ${r.loss} in epoch ${this.#epoch + 1} (lr ` +
          `${this.opt.groups[0].lr}): lower the learning rate`,
      );
    }
    this.#lossSum += r.loss * r.n;
    this.#pixels += r.n;
    this.#images += images;
    if (r.counts) r.counts.forEach((c, k) => (this.#counts[k] += c));
  }

  endEpoch(): ProbeEpoch {
    const e: ProbeEpoch = {
      epoch: this.#epoch,
      loss: this.#pixels > 0 ? this.#lossSum / this.#pixels : NaN,
      priorLoss: priorCrossEntropy(this.#counts),
      lr: this.opt.groups[0].lr,
      seconds: (performance.now() - this.#t0) / 1000,
      images: this.#images,
    };
    this.history.push(e);
    this.o.log?.(
      `epoch ${e.epoch + 1}/${this.o.epochs}: loss ${e.loss.toFixed(4)} (class prior ` +
        `${e.priorLoss.toFixed(4)}), lr ${fmtLr(e.lr)}, ${e.seconds.toFixed(2)} s, ` +
        `${(e.images / Math.max(e.seconds, 1e-9)).toFixed(1)} img/s`,
    );
    return e;
  }

  finish(): ProbeTrainResult {
    this.opt.free();
    const last = this.history[this.history.length - 1];
    const trainLoss = last?.loss ?? NaN;
    const priorLoss = last?.priorLoss ?? NaN;
    const fitted = probeFitted(trainLoss, priorLoss, this.o.fitMargin);
    const warnings: string[] = [];
    if (!Number.isFinite(priorLoss)) {
      warnings.push("no labelled training pixels: the probe learned nothing");
    } else if (priorLoss < 1e-6) {
      warnings.push(
        "every training pixel has the same class: there is nothing for a probe to separate",
      );
    } else if (!fitted) {
      warnings.push(
        `the probe did not fit: its final training loss ${trainLoss.toFixed(4)} does not beat ` +
          `the class-prior baseline ${priorLoss.toFixed(4)} by ${
            Math.round(this.o.fitMargin * 100)
          }% (it must be ≤ ${((1 - this.o.fitMargin) * priorLoss).toFixed(4)}); its mIoU ` +
          `measures nothing — train longer (epochs), with a larger lr, or smaller batches`,
      );
    }
    return { head: this.head, history: this.history, trainLoss, priorLoss, fitted, warnings };
  }

  abort(): void {
    this.opt.free();
    this.head.free();
  }
}

function fmtLr(v: number): string {
  return v >= 1e-3 ? String(Number(v.toPrecision(4))) : v.toExponential(2);
}

/**
 * Trains the probe on cached features (the `"cached"` mode): every epoch visits the set in a
 * seeded random order, in batches; each example gets a seeded crop and flip
 * ({@link sampleCropFlip} on the input-size image) applied to its logits by
 * {@link resampleCrops} and to its mask by {@link cropMasks}.
 */
export function trainProbeOnFeatures(
  train: SegFeatureSet,
  opts: ProbeOptions,
  base?: Readonly<ProbeProtocol>,
): ProbeTrainResult {
  const o = resolveProbeOptions(opts, base);
  const { features, masks } = train;
  if (features.ndim !== 4 || masks.ndim !== 3 || features.size(0) !== masks.size(0)) {
    throw new EvalError(
      `trainProbeOnFeatures: expected features [N, D, h, w] and masks [N, S, S] with the same ` +
        `N, got [${features.shape.join(", ")}] and [${masks.shape.join(", ")}]`,
    );
  }
  const S = masks.size(1);
  if (masks.size(2) !== S) {
    throw new EvalError(`trainProbeOnFeatures: masks must be square, got [${masks.shape}]`);
  }
  const N = features.size(0);
  const t = new ProbeTrainer(features.size(1), o);
  const dev = t.device;
  try {
    for (let epoch = 0; epoch < o.epochs; epoch++) {
      t.beginEpoch(epoch);
      const order = orderOf(N, o.seed, epoch);
      for (let s = 0; s < N; s += o.batchSize) {
        const idx = order.slice(s, s + o.batchSize);
        const crops = idx.map((i) => sampleCropFlip(S, S, o, cropRng(o.seed, epoch, i)));
        t.step(
          () => {
            const index = fromTypedArray(Int32Array.from(idx), [idx.length]).long();
            const f = features.indexSelect(0, index).to({ dtype: "float32", device: dev });
            return resampleCrops(t.head.forward(f), crops, S, o.maskSize);
          },
          () => {
            const ms = idx.map((i) => masks.select(0, i));
            return cropMasks(ms, crops, S, o.maskSize).to(dev);
          },
          idx.length,
        );
      }
      t.endEpoch();
    }
  } catch (e) {
    t.abort();
    throw e;
  }
  return t.finish();
}

async function loadExamples(
  ds: Dataset,
  indices: readonly number[],
  K: number,
  ignore: number,
): Promise<Sample[]> {
  const out: Sample[] = [];
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
      out.push(s);
      checkSampleMask(ds, i, s, K, ignore);
    }
    return out;
  } catch (e) {
    for (const s of out) freeSamp(s);
    throw e;
  }
}

function freeSamp(s: Sample): void {
  s.image.free();
  s.mask?.free();
}

function safeName(ds: Dataset, i: number): string {
  try {
    return ds.nameOf(i);
  } catch {
    return `#${i}`;
  }
}

/** Crops, resizes (bilinear, antialiased), flips and normalises one image for training. */
function augmentImage(image: Tensor, c: CropFlip, size: number): Tensor {
  return scope(() => {
    const crop = image.narrow(1, c.top, c.height).narrow(2, c.left, c.width).unsqueeze(0);
    let x = interpolate(crop.float(), { size: [size, size], mode: "bilinear", antialias: true })
      .clamp(0, 1);
    if (c.flip) x = x.flip([3]);
    return imagenetNormalize(x).squeeze(0);
  });
}

/** Options of the data-set passes of the probe. */
export interface ProbePassOptions {
  /** only the first `limit` examples of the data set */
  limit?: number;
}

/**
 * Trains the probe Leopart's way (the `"recompute"` mode): every epoch each training image is
 * cropped (RandomResizedCrop on the original image), resized to the input size, flipped,
 * normalised and passed through the frozen backbone again; masks follow the same crop and
 * flip ({@link cropMaskIndices}).
 */
export async function trainProbeRecompute(
  ds: Dataset,
  extractor: GridExtractor,
  opts: ProbeOptions & ProbePassOptions,
  base?: Readonly<ProbeProtocol>,
): Promise<ProbeTrainResult> {
  const o = resolveProbeOptions(opts, base);
  const N = Math.min(ds.length, opts.limit ?? ds.length);
  if (N === 0) throw new EvalError("the training set is empty");
  const t = new ProbeTrainer(extractor.dim, o);
  const dev = t.device;
  try {
    for (let epoch = 0; epoch < o.epochs; epoch++) {
      t.beginEpoch(epoch);
      const bar = new Progress({
        label: `probe epoch ${epoch + 1}/${o.epochs}`,
        total: N,
        unit: "img",
        enabled: o.progress,
      });
      const order = orderOf(N, o.seed, epoch);
      for (let s = 0; s < N; s += o.batchSize) {
        const idx = order.slice(s, s + o.batchSize);
        const samples = await loadExamples(ds, idx, o.numClasses, o.ignoreIndex);
        try {
          const crops = samples.map((smp, k) =>
            sampleCropFlip(smp.image.size(2), smp.image.size(1), o, cropRng(o.seed, epoch, idx[k]))
          );
          t.step(
            () => {
              const x = stack(
                samples.map((smp, k) => augmentImage(smp.image, crops[k], o.inputSize)),
              )
                .to(extractor.device);
              const f = extractor.extract(x).to(dev);
              return interpolate(t.head.forward(f), {
                size: [o.maskSize, o.maskSize],
                mode: "bilinear",
              });
            },
            () =>
              cropMasks(samples.map((smp) => smp.mask!), crops, o.inputSize, o.maskSize).to(dev),
            idx.length,
          );
        } finally {
          for (const smp of samples) freeSamp(smp);
        }
        bar.tick(idx.length);
      }
      bar.done();
      t.endEpoch();
    }
  } catch (e) {
    t.abort();
    throw e;
  }
  return t.finish();
}

// ---- evaluation -------------------------------------------------------------------------------

/** Predicted classes [B, S, S] (int64) of features [B, D, h, w] at the input size S. */
export function predictMasks(head: LinearSegHead, features: Tensor, size: number): Tensor {
  return noGrad(() =>
    scope(() => {
      const logits = head.forward(features.float());
      const up = interpolate(logits, { size: [size, size], mode: "bilinear" });
      return up.argmax(1);
    })
  );
}

/** Options of the evaluations. */
export interface ProbeEvalOptions {
  /** classes K */
  numClasses: number;
  /** ignored mask value (default 255) */
  ignoreIndex?: number;
  /** images per batch (default 32) */
  batchSize?: number;
}

/**
 * Evaluates a head on cached validation features: logits upsampled to the masks' size
 * (bilinear), argmax, accumulated into one {@link ConfusionMatrix}.
 */
export function evaluateProbeOnFeatures(
  head: LinearSegHead,
  val: SegFeatureSet,
  opts: ProbeEvalOptions,
): ConfusionMatrix {
  const cm = new ConfusionMatrix(opts.numClasses, { ignoreIndex: opts.ignoreIndex });
  const N = val.features.size(0);
  const S = val.masks.size(1);
  const bs = opts.batchSize ?? 32;
  const dev = head.weight.device;
  for (let s = 0; s < N; s += bs) {
    const n = Math.min(bs, N - s);
    scope(() => {
      const pred = predictMasks(head, val.features.narrow(0, s, n).to(dev), S);
      cm.update(pred, val.masks.narrow(0, s, n).to(dev));
    });
  }
  return cm;
}

/**
 * Evaluates a head over the first `limit` examples of a data set: each image resized to the
 * input size and passed through the backbone once, logits upsampled to the input size, masks
 * resized with the nearest rule; one {@link ConfusionMatrix} over everything. A label out of
 * range is an {@link EvalError} naming the mask file.
 */
export async function evaluateProbe(
  head: LinearSegHead,
  ds: Dataset,
  extractor: GridExtractor,
  opts: ProbeEvalOptions & ProbePassOptions & { inputSize?: number; progress?: boolean },
): Promise<ConfusionMatrix> {
  const S = opts.inputSize ?? LEOPART_PROBE.inputSize;
  const K = opts.numClasses;
  const ignore = opts.ignoreIndex ?? IGNORE_INDEX;
  const cm = new ConfusionMatrix(K, { ignoreIndex: ignore });
  const dev = head.weight.device;
  await forEachBatch(ds, {
    batchSize: opts.batchSize ?? 32,
    transform: (img) => probeImage(img, S),
    label: "probe eval",
    progress: opts.progress ?? false,
    limit: opts.limit,
    device: extractor.device,
  }, ({ images, samples, indices }) => {
    samples.forEach((s, k) => checkSampleMask(ds, indices[k], s, K, ignore));
    scope(() => {
      const pred = predictMasks(head, extractor.extract(images).to(dev), S);
      const target = stack(samples.map((s) => probeMask(s.mask!, S))).to(dev);
      cm.update(pred, target);
    });
  });
  return cm;
}

// ---- the whole probe ---------------------------------------------------------------------------

/** Options of {@link linearSegProbe}. */
export interface LinearSegProbeOptions extends ProbeOptions {
  /** training features: `"cached"` (default) or `"recompute"` (see the module notes) */
  features?: ProbeFeatureMode;
  /** directory of the feature cache (cached mode; default none: features kept in memory) */
  cacheDir?: string | null;
  /** names of the training and validation data for cache keys (required with `cacheDir`) */
  datasetIds?: { train: string; val: string };
  /** only the first N training examples */
  limitTrain?: number;
  /** only the first N validation examples */
  limitVal?: number;
  /** dtype of cached training features (default float32; float16 halves the memory) */
  featureDtype?: "float32" | "float16";
  /** images per backbone pass when extracting features (default 32) */
  extractBatchSize?: number;
  /** the protocol defaults to start from (default {@link LEOPART_PROBE}) */
  defaults?: Readonly<ProbeProtocol>;
}

/** The result of {@link linearSegProbe}. */
export interface SegProbeResult {
  /** mean IoU over the classes present in targets or predictions, background included */
  miou: number;
  /** pixel accuracy */
  pixelAccuracy: number;
  /** per-class IoU (null: class absent from targets and predictions) */
  perClass: ClassIoU[];
  /** the full metrics */
  metrics: SegmentationMetrics;
  /** the confusion counts `[target][pred]` */
  confusion: number[][];
  /** the final epoch's training loss */
  trainLoss: number;
  /** the class-prior baseline's loss on the same pixels */
  priorLoss: number;
  /**
   * whether the probe fitted: its training loss beat the prior clearly, and it does not
   * predict one class for every validation pixel (of a set holding several)
   */
  fitted: boolean;
  /** warnings (not fitted, one class predicted everywhere, …) */
  warnings: string[];
  /** per-epoch records */
  history: ProbeEpoch[];
  /** the training mode used */
  mode: ProbeFeatureMode;
  /** the resolved protocol */
  options: ResolvedProbeOptions;
  /** examples used */
  counts: { train: number; val: number };
  /** wall time: feature extraction (cached mode), training, evaluation, total (seconds) */
  seconds: { features: number; train: number; eval: number; total: number };
  /** cache files read or written (cached mode with a cache directory) */
  cacheFiles: string[];
}

/**
 * The whole linear probe of a frozen backbone: train on `train`, evaluate on `val` (see the
 * module notes for the protocol and the two modes). Bad input — an input size that is not a
 * multiple of the patch, examples without masks, labels out of range, a cache from another
 * model — is an {@link EvalError} naming the file or option.
 */
export async function linearSegProbe(
  backbone: Pick<LoadedBackbone, "vit" | "patchSize" | "fingerprint" | "device">,
  train: Dataset,
  val: Dataset,
  opts: LinearSegProbeOptions,
): Promise<SegProbeResult> {
  const t0 = performance.now();
  const o = resolveProbeOptions({ device: backbone.device, ...opts }, opts.defaults);
  const mode = opts.features ?? "cached";
  if (mode !== "cached" && mode !== "recompute") {
    throw new EvalError(`features must be "cached" or "recompute", got "${mode}"`);
  }
  if (opts.cacheDir && !opts.datasetIds) {
    throw new EvalError("a feature cache directory needs datasetIds (the cache key)");
  }
  const ex = vitGridExtractor(backbone, o.inputSize);
  const nTrain = Math.min(train.length, opts.limitTrain ?? train.length);
  const nVal = Math.min(val.length, opts.limitVal ?? val.length);
  if (nTrain === 0) throw new EvalError("the training set is empty");
  if (nVal === 0) throw new EvalError("the validation set is empty");
  const log = o.log;
  const cacheFiles: string[] = [];
  const common = {
    numClasses: o.numClasses,
    inputSize: o.inputSize,
    ignoreIndex: o.ignoreIndex,
    batchSize: opts.extractBatchSize ?? 32,
    progress: o.progress,
    cacheDir: opts.cacheDir ?? null,
    fingerprint: backbone.fingerprint,
    log,
  };
  let featureSeconds = 0;
  let trained: ProbeTrainResult;
  const tTrain0 = performance.now();
  if (mode === "cached") {
    const tf = performance.now();
    const set = await cachedSegFeatures(train, ex, {
      ...common,
      limit: opts.limitTrain,
      dtype: opts.featureDtype ?? "float32",
      dataset: opts.datasetIds?.train ?? "train",
      label: "probe train features",
    });
    featureSeconds = (performance.now() - tf) / 1000;
    if (set.cacheFile) cacheFiles.push(set.cacheFile);
    log?.(
      `train features [${set.features.shape.join(", ")}] ${set.features.dtype} in ` +
        `${featureSeconds.toFixed(2)} s${set.fromCache ? " (from the cache)" : ""}`,
    );
    try {
      trained = trainProbeOnFeatures(set, o);
    } finally {
      freeFeatureSet(set);
    }
  } else {
    trained = await trainProbeRecompute(train, ex, { ...o, limit: opts.limitTrain });
  }
  const trainSeconds = (performance.now() - tTrain0) / 1000 - featureSeconds;
  const tEval = performance.now();
  let cm: ConfusionMatrix;
  try {
    if (mode === "cached" && opts.cacheDir) {
      const set = await cachedSegFeatures(val, ex, {
        ...common,
        limit: opts.limitVal,
        dataset: opts.datasetIds!.val,
        label: "probe val features",
      });
      if (set.cacheFile) cacheFiles.push(set.cacheFile);
      try {
        cm = evaluateProbeOnFeatures(trained.head, set, common);
      } finally {
        freeFeatureSet(set);
      }
    } else {
      cm = await evaluateProbe(trained.head, val, ex, { ...common, limit: opts.limitVal });
    }
  } finally {
    trained.head.free();
  }
  const evalSeconds = (performance.now() - tEval) / 1000;
  const metrics = cm.compute(o.classes);
  const warnings = [...trained.warnings];
  const predicted = cm.counts().reduce(
    (acc, row) => acc.map((v, p) => v + row[p]),
    new Array(o.numClasses).fill(0),
  );
  const used = predicted.map((v, k) => [v, k]).filter(([v]) => v > 0);
  const targetClasses = metrics.perClass.filter((c) => c.pixels > 0).length;
  let fitted = trained.fitted;
  if (used.length === 1 && targetClasses > 1) {
    const k = used[0][1];
    fitted = false;
    warnings.push(
      `the probe predicts one class (${o.classes?.[k] ?? k}) for every validation pixel: it ` +
        `has not fitted, and its mIoU measures nothing`,
    );
  }
  for (const w of warnings) log?.(`warning: ${w}`);
  return {
    miou: metrics.miou,
    pixelAccuracy: metrics.pixelAccuracy,
    perClass: metrics.perClass,
    metrics,
    confusion: cm.counts(),
    trainLoss: trained.trainLoss,
    priorLoss: trained.priorLoss,
    fitted,
    warnings,
    history: trained.history,
    mode,
    options: o,
    counts: { train: nTrain, val: nVal },
    seconds: {
      features: featureSeconds,
      train: trainSeconds,
      eval: evalSeconds,
      total: (performance.now() - t0) / 1000,
    },
    cacheFiles,
  };
}

// ---- report ------------------------------------------------------------------------------------

function pct(v: number | null): string {
  return v === null || !Number.isFinite(v) ? "–" : (100 * v).toFixed(2);
}

/**
 * A Markdown summary of a probe: the headline numbers, the fit check, the per-class IoU table
 * and the per-epoch losses. `about` adds lines under the title (backbone, data, …).
 */
export function probeReportMarkdown(r: SegProbeResult, about: Record<string, string> = {}): string {
  const o = r.options;
  const lines = [
    "# Linear segmentation probe",
    "",
    ...Object.entries(about).map(([k, v]) => `- **${k}**: ${v}`),
    `- **protocol**: ${o.inputSize}-px input, ${o.maskSize}-px training masks, 1×1 conv ` +
    `(normal std ${o.initStd}), SGD lr ${o.lr} momentum ${o.momentum} weight decay ` +
    `${o.weightDecay}, ${o.epochs} epochs${
      o.milestone > 0 && o.milestone < o.epochs ? `, lr ×${o.gamma} every ${o.milestone}` : ""
    }, batch ${o.batchSize}, RandomResizedCrop ${o.scale[0]}–${o.scale[1]} + flip ${o.flip}`,
    `- **training features**: ${r.mode}`,
    `- **examples**: ${r.counts.train} train, ${r.counts.val} val`,
    "",
    "## Results",
    "",
    "| metric | value |",
    "| --- | --- |",
    `| mIoU (%) | ${pct(r.miou)} |`,
    `| pixel accuracy (%) | ${pct(r.pixelAccuracy)} |`,
    `| final train loss | ${r.trainLoss.toFixed(4)} |`,
    `| class-prior loss | ${r.priorLoss.toFixed(4)} |`,
    `| fitted | ${r.fitted ? "yes" : "**no**"} |`,
    `| classes in the mean | ${r.metrics.classesInMean} of ${o.numClasses} |`,
    `| seconds (features / train / eval / total) | ${
      [r.seconds.features, r.seconds.train, r.seconds.eval, r.seconds.total]
        .map((s) => s.toFixed(1)).join(" / ")
    } |`,
    "",
  ];
  if (r.warnings.length) {
    lines.push("## Warnings", "", ...r.warnings.map((w) => `- ${w}`), "");
  }
  lines.push(
    "## Per-class IoU",
    "",
    "| class | IoU (%) | pixels |",
    "| --- | ---: | ---: |",
    ...r.perClass.map((c) => `| ${c.class} | ${pct(c.iou)} | ${c.pixels} |`),
    "",
    "## Training",
    "",
    "| epoch | lr | loss | class prior | seconds |",
    "| ---: | ---: | ---: | ---: | ---: |",
    ...r.history.map((e) =>
      `| ${e.epoch + 1} | ${fmtLr(e.lr)} | ${e.loss.toFixed(4)} | ${e.priorLoss.toFixed(4)} | ${
        e.seconds.toFixed(2)
      } |`
    ),
    "",
  );
  return lines.join("\n");
}
