/**
 * A small synthetic data set for the loader tests, importable by the loader's workers: every
 * example's pixels encode its index, chosen indices fail like corrupt files, and the factories
 * below are what a `SourceSpec` names.
 */
import { fromTypedArray, rand, type Tensor } from "../../mod.ts";
import type { Dataset, LoaderSource, Sample } from "../../lib/data/mod.ts";
import { ImageError } from "../../lib/data/error.ts";

/** Options of {@link SyntheticDataset} (structured-cloneable: they travel to workers). */
export interface SyntheticOptions {
  /** number of examples */
  n: number;
  /** image side (default 4) */
  size?: number;
  /** indices whose get() rejects like a corrupt file */
  bad?: number[];
  /** indices whose image has another size (to break the default collate) */
  odd?: number[];
  /** a transform that throws on this index */
  throwAt?: number;
  /** milliseconds each get() waits (asynchronously) */
  delayMs?: number;
  /** an index whose get() never settles */
  hangAt?: number;
  /** hold a tensor for the data set's lifetime, freed by [Symbol.dispose] */
  holdTensor?: boolean;
}

/** Pixel (c, y, x) of example i. */
export function pixel(i: number, c: number, y: number, x: number): number {
  return i * 1000 + c * 100 + y * 10 + x;
}

/** Examples whose pixels encode their index; labels i % 10 and a uint8 mask. */
export class SyntheticDataset implements Dataset, Disposable {
  readonly length: number;
  readonly classes: readonly string[] = Array.from({ length: 10 }, (_, k) => `c${k}`);
  readonly #o: SyntheticOptions;
  held: Tensor | null = null;

  constructor(o: SyntheticOptions) {
    this.#o = o;
    this.length = o.n;
    if (o.holdTensor) this.held = fromTypedArray(new Float32Array(16), [16]);
  }

  nameOf(i: number): string {
    return `synthetic/${i}.png`;
  }

  async get(i: number): Promise<Sample> {
    if (this.#o.delayMs) await new Promise((r) => setTimeout(r, this.#o.delayMs));
    else await Promise.resolve();
    if (i === this.#o.hangAt) await new Promise(() => {});
    if (this.#o.bad?.includes(i)) {
      throw new ImageError(this.nameOf(i), "corrupt or truncated PNG (synthetic)");
    }
    const s = this.#o.odd?.includes(i) ? (this.#o.size ?? 4) + 1 : this.#o.size ?? 4;
    const px = new Float32Array(3 * s * s);
    const m = new Uint8Array(s * s);
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < s; y++) {
        for (let x = 0; x < s; x++) {
          px[(c * s + y) * s + x] = pixel(i, c, y, x);
          m[y * s + x] = (i + y + x) % 3;
        }
      }
    }
    return {
      image: fromTypedArray(px, [3, s, s]),
      mask: fromTypedArray(m, [s, s]),
      label: i % 10,
      name: this.nameOf(i),
    };
  }

  [Symbol.dispose](): void {
    this.held?.free();
    this.held = null;
  }
}

/** The bare data set (samples as they are). */
export function datasetOnly(o: SyntheticOptions): Dataset {
  return new SyntheticDataset(o);
}

/**
 * The data set with a random, seeded transform: noise from the example's generator and a
 * flip decided by its seed, so any thread gives the same bytes.
 */
export function noisySource(o: SyntheticOptions): LoaderSource<Sample> {
  return {
    dataset: new SyntheticDataset(o),
    transform: (s, index, rng) => {
      if (index === o.throwAt) throw new Error(`synthetic transform failure at ${index}`);
      // noise from the example's own generator (created lazily by the loader)
      const n = rand(s.image.shape, { generator: rng.generator });
      let image = s.image.add(n);
      n.free();
      if (rng.seed % 2 === 1) {
        const f = image.flip([2]);
        image.free();
        image = f;
      }
      return { ...s, image }; // the loader frees the old image, keeps the mask
    },
  };
}
