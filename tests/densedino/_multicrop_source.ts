/**
 * A loader source for the multi-crop tests (workers import it): random-but-seeded 40×48
 * images with labels, and the DenseDINO multi-crop transform.
 */
import { fromTypedArray, type Tensor } from "../../mod.ts";
import type { Dataset, LoaderSource, Sample } from "../../lib/data/mod.ts";
import {
  type MultiCropItem,
  type MultiCropOptions,
  multiCropTransform,
} from "../../lib/densedino/mod.ts";

/** Images whose pixels are a fixed function of their index. */
export class PatternDataset implements Dataset {
  readonly classes: readonly string[] = ["even", "odd"];
  constructor(readonly length: number, readonly h = 40, readonly w = 48) {}
  nameOf(i: number): string {
    return `pattern/${i}`;
  }
  get(i: number): Promise<Sample> {
    const { h, w } = this;
    const px = new Float32Array(3 * h * w);
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          px[(c * h + y) * w + x] = (Math.sin(0.3 * x + 0.7 * y + 1.3 * c + i) + 1) / 2;
        }
      }
    }
    const image: Tensor = fromTypedArray(px, [3, h, w]);
    return Promise.resolve({ image, label: i % 2, name: this.nameOf(i) });
  }
}

/** The factory a SourceSpec names. */
export function multiCropSource(
  o: { n: number; views: MultiCropOptions },
): LoaderSource<MultiCropItem> {
  return { dataset: new PatternDataset(o.n), transform: multiCropTransform(o.views) };
}
