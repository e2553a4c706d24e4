/**
 * Semantic-segmentation metrics: a confusion matrix accumulated over a whole validation set,
 * per-class IoU, mIoU and pixel accuracy, as the linear-probe protocols report them (Leopart,
 * DenseDINO §4.1).
 *
 * - Counts are accumulated exactly: each update is one `bincount` over `target·K + pred` on the
 *   inputs' device (int64), added into an int64 (`BigInt64Array`) matrix in JS.
 * - Pixels whose target is the ignore index (255) count nowhere. Any other target outside
 *   `[0, K)` is a {@link LabelError} naming the value and, when given, the file.
 * - IoU of class k = TP / (TP + FP + FN). A class absent from both the targets and the
 *   predictions has no IoU: NaN in {@link ConfusionMatrix.iou}, `null` in the per-class
 *   report, and left out of the mean. mIoU averages over every other class, background
 *   included.
 * - Pixel accuracy = Σ TP / (non-ignored pixels).
 *
 * ```ts
 * const cm = new ConfusionMatrix(21);
 * cm.update(pred, target, "2007_000033.png"); // int tensors of the same number of elements
 * const { miou, pixelAccuracy, perClass } = cm.compute(VOC_CLASSES);
 * ```
 *
 * @module
 */
import { scope, type Tensor, TorchError } from "../torch/mod.ts";
import { EvalError } from "./backbone.ts";

/** The mask value ignored by losses and metrics (VOC's border / unlabelled pixels). */
export const IGNORE_INDEX = 255;

/**
 * A target label outside the class range (other than the ignore index): bad input, an
 * {@link EvalError}. `value` is the first offending label, `source` the file or sample it came
 * from (when known).
 */
export class LabelError extends EvalError {
  /** the first offending label value */
  readonly value: number;
  /** the file or sample at fault, when known */
  readonly source: string | null;

  /** An error about label `value` of `source`. */
  constructor(message: string, value: number, source: string | null) {
    super(message);
    this.name = "LabelError";
    this.value = value;
    this.source = source;
  }
}

/** Options of {@link ConfusionMatrix}. */
export interface ConfusionMatrixOptions {
  /** target value that is not counted (default 255) */
  ignoreIndex?: number;
}

/** One row of {@link SegmentationMetrics.perClass}. */
export interface ClassIoU {
  /** class name (or its index as a string when no names were given) */
  class: string;
  /** TP / (TP + FP + FN), or null when the class is absent from targets and predictions */
  iou: number | null;
  /** pixels of this class in the targets */
  pixels: number;
}

/** What {@link ConfusionMatrix.compute} reports. */
export interface SegmentationMetrics {
  /** mean IoU over the classes that have one (background included); NaN with no pixels */
  miou: number;
  /** correctly labelled pixels / counted pixels; NaN with no pixels */
  pixelAccuracy: number;
  /** per-class IoU in class order */
  perClass: ClassIoU[];
  /** classes whose IoU entered the mean */
  classesInMean: number;
  /** counted (non-ignored) pixels */
  pixels: number;
  /** ignored pixels seen */
  ignored: number;
}

/** Ensures an integer in a range, for the constructor's and the checks' arguments. */
function checkInt(v: number, lo: number, hi: number, what: string): void {
  if (!Number.isSafeInteger(v) || v < lo || v > hi) {
    throw new RangeError(`ConfusionMatrix: ${what} must be an integer in ${lo}..${hi}, got ${v}`);
  }
}

const INTEGER: readonly string[] = ["uint8", "int8", "int16", "int32", "int64"];

/**
 * Throws a {@link LabelError} when `target` (an integer tensor of class indices) holds a value
 * outside `[0, numClasses)` other than `ignoreIndex`; the message names the value, how many
 * pixels hold bad values, and `source` (a file name) when given.
 */
export function checkLabels(
  target: Tensor,
  numClasses: number,
  ignoreIndex: number = IGNORE_INDEX,
  source?: string,
): void {
  if (!INTEGER.includes(target.dtype)) {
    throw new TorchError(
      "checkLabels",
      `labels must be an integer tensor, got ${target.dtype}${source ? ` (${source})` : ""}`,
    );
  }
  const bad = scope(() => {
    const t = target.long();
    const outside = t.lt(0).logicalOr(t.ge(numClasses)).logicalAnd(t.ne(ignoreIndex));
    const n = outside.sum().item();
    if (n === 0) return null;
    return { n, first: t.maskedSelect(outside).narrow(0, 0, 1).item() };
  });
  if (bad !== null) {
    const where = source ? `${source}: ` : "";
    throw new LabelError(
      `${where}label ${bad.first} is outside the class range 0..${numClasses - 1} and is not ` +
        `the ignore index ${ignoreIndex} (${bad.n} pixel${bad.n === 1 ? "" : "s"} with ` +
        `out-of-range labels)`,
      bad.first,
      source ?? null,
    );
  }
}

/**
 * A K×K confusion matrix (rows: target class, columns: predicted class) accumulated over
 * any number of batches; see the module notes for the definitions.
 */
export class ConfusionMatrix {
  /** number of classes K */
  readonly numClasses: number;
  /** target value that is not counted */
  readonly ignoreIndex: number;
  #counts: BigInt64Array;
  #ignored = 0n;

  /** An empty matrix over `numClasses` classes. */
  constructor(numClasses: number, opts: ConfusionMatrixOptions = {}) {
    checkInt(numClasses, 1, 65536, "numClasses");
    this.numClasses = numClasses;
    this.ignoreIndex = opts.ignoreIndex ?? IGNORE_INDEX;
    if (!Number.isSafeInteger(this.ignoreIndex)) {
      throw new RangeError(
        `ConfusionMatrix: ignoreIndex must be an integer, got ${this.ignoreIndex}`,
      );
    }
    this.#counts = new BigInt64Array(numClasses * numClasses);
  }

  /** A matrix holding given counts (`counts[target][pred]`, non-negative integers). */
  static fromCounts(
    counts: readonly (readonly number[])[],
    opts: ConfusionMatrixOptions = {},
  ): ConfusionMatrix {
    const K = counts.length;
    const cm = new ConfusionMatrix(K, opts);
    counts.forEach((row, t) => {
      if (row.length !== K) {
        throw new RangeError(
          `ConfusionMatrix.fromCounts: row ${t} has ${row.length} entries, not ${K}`,
        );
      }
      row.forEach((v, p) => {
        checkInt(v, 0, Number.MAX_SAFE_INTEGER, `count [${t}][${p}]`);
        cm.#counts[t * K + p] = BigInt(v);
      });
    });
    return cm;
  }

  /**
   * Adds a batch: `pred` and `target` are integer tensors with the same number of elements
   * (any shapes, e.g. [B, H, W] each; on any one device). Target pixels equal to the ignore
   * index are skipped. A target outside `[0, K)` throws a {@link LabelError} naming `source`
   * (e.g. the mask's file); a prediction outside `[0, K)` throws a `TorchError`. Nothing is
   * counted when either throws.
   */
  update(pred: Tensor, target: Tensor, source?: string): void {
    const K = this.numClasses;
    if (pred.numel !== target.numel) {
      throw new TorchError(
        "ConfusionMatrix.update",
        `pred has ${pred.numel} elements [${pred.shape.join(", ")}] but target ${target.numel} ` +
          `[${target.shape.join(", ")}]`,
      );
    }
    if (!INTEGER.includes(pred.dtype)) {
      throw new TorchError(
        "ConfusionMatrix.update",
        `pred must hold integer class indices, got ${pred.dtype} (take argmax over the logits)`,
      );
    }
    checkLabels(target, K, this.ignoreIndex, source);
    const res = scope(() => {
      const t = target.long().flatten();
      const p = pred.long().flatten();
      const valid = t.ne(this.ignoreIndex);
      const vp = p.maskedSelect(valid);
      const n = vp.numel;
      if (n > 0) {
        const lo = vp.amin().item(), hi = vp.amax().item();
        if (lo < 0 || hi >= K) {
          throw new TorchError(
            "ConfusionMatrix.update",
            `predicted class ${lo < 0 ? lo : hi} is outside 0..${K - 1}`,
          );
        }
      }
      const counts = n === 0
        ? null
        : t.maskedSelect(valid).mul(K).add(vp).bincount({ minlength: K * K }).to("cpu")
          .toTypedArray() as BigInt64Array;
      return { counts, ignored: t.numel - n };
    });
    if (res.counts !== null) {
      const c = this.#counts;
      for (let i = 0; i < c.length; i++) c[i] += res.counts[i];
    }
    this.#ignored += BigInt(res.ignored);
  }

  /** Adds another matrix's counts (same K and ignore index). */
  merge(other: ConfusionMatrix): this {
    if (other.numClasses !== this.numClasses) {
      throw new RangeError(
        `ConfusionMatrix.merge: ${other.numClasses} classes vs ${this.numClasses}`,
      );
    }
    for (let i = 0; i < this.#counts.length; i++) this.#counts[i] += other.#counts[i];
    this.#ignored += other.#ignored;
    return this;
  }

  /** Clears the counts. */
  reset(): void {
    this.#counts.fill(0n);
    this.#ignored = 0n;
  }

  /** The counts as numbers, `[target][pred]`. */
  counts(): number[][] {
    const K = this.numClasses;
    return Array.from(
      { length: K },
      (_, t) => Array.from({ length: K }, (_, p) => Number(this.#counts[t * K + p])),
    );
  }

  /** Counted (non-ignored) pixels. */
  get pixels(): number {
    let s = 0n;
    for (const v of this.#counts) s += v;
    return Number(s);
  }

  /** Ignored pixels seen by {@link update}. */
  get ignored(): number {
    return Number(this.#ignored);
  }

  /** Per-class IoU, NaN for a class absent from both targets and predictions. */
  iou(): number[] {
    const K = this.numClasses;
    const c = this.counts();
    return Array.from({ length: K }, (_, k) => {
      const tp = c[k][k];
      let rowSum = 0, colSum = 0;
      for (let j = 0; j < K; j++) {
        rowSum += c[k][j];
        colSum += c[j][k];
      }
      const denom = rowSum + colSum - tp; // TP + FN + FP
      return denom === 0 ? NaN : tp / denom;
    });
  }

  /** Correct pixels over counted pixels (NaN when nothing was counted). */
  pixelAccuracy(): number {
    const K = this.numClasses;
    let tp = 0n;
    for (let k = 0; k < K; k++) tp += this.#counts[k * K + k];
    const n = this.pixels;
    return n === 0 ? NaN : Number(tp) / n;
  }

  /**
   * mIoU, pixel accuracy and the per-class table. `classes` names the classes (default their
   * indices); it must have K entries.
   */
  compute(classes?: readonly string[]): SegmentationMetrics {
    const K = this.numClasses;
    if (classes !== undefined && classes.length !== K) {
      throw new RangeError(
        `ConfusionMatrix.compute: ${classes.length} class names for ${K} classes`,
      );
    }
    const ious = this.iou();
    const c = this.counts();
    const present = ious.filter((v) => !Number.isNaN(v));
    return {
      miou: present.length === 0 ? NaN : present.reduce((a, b) => a + b, 0) / present.length,
      pixelAccuracy: this.pixelAccuracy(),
      perClass: ious.map((v, k) => ({
        class: classes?.[k] ?? String(k),
        iou: Number.isNaN(v) ? null : v,
        pixels: c[k].reduce((a, b) => a + b, 0),
      })),
      classesInMean: present.length,
      pixels: this.pixels,
      ignored: this.ignored,
    };
  }
}
