/**
 * The dataset contract shared by every data source (ImageFolder, Pascal VOC, Fashion-MNIST,
 * fashion-scenes) and consumed by the loader and the evaluations.
 *
 * @module
 */
import type { Tensor } from "../torch/mod.ts";

/** One example. The caller owns (and frees) its tensors. */
export interface Sample {
  /** RGB image [3, H, W], float32 in [0, 1] (not normalised) */
  image: Tensor;
  /** image-level class index, when the data set has one */
  label?: number;
  /** segmentation mask [H, W], uint8 class indices, 255 = ignore, when the data set has one */
  mask?: Tensor;
  /** a name for messages and outputs (file path, or `split/index`) */
  name: string;
}

/** A random-access data set. */
export interface Dataset {
  /** number of examples */
  readonly length: number;
  /** class names by index (empty when unlabelled) */
  readonly classes: readonly string[];
  /**
   * Example `i` (0 ≤ i < length). Decoding failures reject with an error naming the file
   * (`ImageError`); the loader skips such examples with a warning.
   */
  get(i: number): Promise<Sample>;
  /** A name for example `i` without loading it (for warnings and outputs). */
  nameOf(i: number): string;
}

/** Throws a RangeError naming the data set when `i` is not a valid index. */
export function checkIndex(ds: { length: number }, i: number, what: string): void {
  if (!Number.isInteger(i) || i < 0 || i >= ds.length) {
    throw new RangeError(`${what}: index ${i} is out of range 0..${ds.length - 1}`);
  }
}
