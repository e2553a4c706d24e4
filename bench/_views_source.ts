/**
 * The data side of `bench/views.ts`: the two data sources (the fashion-scenes set and a folder
 * of JPEGs read through `ImageFolder`), the view configurations it measures, and the loader
 * source its `DataLoader` workers import ({@link viewsSource}).
 *
 * @module
 */
import {
  DEFAULT_VIEW_OPTIONS,
  encodeJpeg,
  FashionScenes,
  type FashionScenesSplit,
  ImageFolder,
  interpolate,
  type LoaderSource,
  type MultiCropItem,
  type MultiCropOptions,
  multiCropTransform,
  rand,
  scope,
  type Tensor,
} from "../mod.ts";
import type { Dataset } from "../lib/data/mod.ts";
import type { DataKind } from "./_views_report.ts";

export type { DataKind };

/** The view configurations the benchmark knows. */
export const VIEW_CONFIGS: Readonly<Record<string, MultiCropOptions>> = Object.freeze({
  /** DenseDINO's default: 2 global views at 224 px + 8 local views at 96 px, M = 4 */
  default: { ...DEFAULT_VIEW_OPTIONS },
  /**
   * A CPU-sized configuration for 96-px fashion scenes: 2 global views at 64 px (scale
   * [0.4, 1]) + 4 local views at 32 px (scale [0.1, 0.4]), M = 4, the DINO photometric
   * augmentations unchanged. Issue 7 fixes the demo's real configuration.
   */
  cpu: {
    globalCrops: 2,
    globalSize: 64,
    globalScale: [0.4, 1],
    localCrops: 4,
    localSize: 32,
    localScale: [0.1, 0.4],
    numRef: 4,
  },
});

/** A view configuration's name. */
export type ViewConfigName = keyof typeof VIEW_CONFIGS;

/** Options of {@link viewsSource} (structured-cloneable: they are posted to each worker). */
export interface ViewsSourceOptions {
  /** "scenes": the fashion-scenes set; "jpeg": an ImageFolder of JPEG files */
  data: DataKind;
  /** scenes: which generated set (it is read from the on-disk cache when there) */
  scenes?: { split: FashionScenesSplit; count?: number; seed?: number };
  /** jpeg: the ImageFolder root */
  root?: string;
  /** the multi-crop options */
  views: MultiCropOptions;
}

/** Opens the data set of `o` (scenes quietly; the JPEG folder without a file-list cache). */
export async function openDataset(o: ViewsSourceOptions): Promise<Dataset> {
  if (o.data === "scenes") return await FashionScenes.open({ ...o.scenes, quiet: true });
  if (o.root === undefined) throw new Error("viewsSource: data 'jpeg' needs a root");
  return await ImageFolder.open(o.root, { cacheDir: false });
}

/** The loader source of `bench/views.ts` (imported by the loader's workers). */
export async function viewsSource(o: ViewsSourceOptions): Promise<LoaderSource<MultiCropItem>> {
  return { dataset: await openDataset(o), transform: multiCropTransform(o.views) };
}

/**
 * One smooth random "natural-looking" RGB image [3, h, w] in [0, 1]: noise at four scales
 * (blobs of about a third of the image down to a few pixels), each upsampled bicubically, with
 * decreasing weight, plus a little pixel noise, so that it has edges and texture at every scale
 * and a JPEG of it costs what a photograph's does to decode.
 */
export function naturalImage(h: number, w: number): Tensor {
  return scope(() => {
    let sum: Tensor | null = null;
    let weight = 1, total = 0;
    for (const cell of [128, 48, 16, 4]) {
      const n = rand([1, 3, Math.max(2, Math.ceil(h / cell)), Math.max(2, Math.ceil(w / cell))]);
      const up = interpolate(n, { size: [h, w], mode: "bicubic" }).mul(weight);
      sum = sum === null ? up : sum.add(up);
      total += weight;
      weight *= 0.5;
    }
    const noise = rand([1, 3, h, w]).sub(0.5).mul(0.06);
    return sum!.div(total).add(noise).clamp(0, 1).squeeze(0);
  });
}

/**
 * Writes `count` JPEGs of `w`×`h` ({@link naturalImage}, quality 90) into `root` in the
 * ImageFolder layout (`classes` class folders, images dealt round-robin).
 */
export async function writeJpegFolder(
  root: string,
  count: number,
  w: number,
  h: number,
  classes = 4,
): Promise<void> {
  for (let c = 0; c < classes; c++) await Deno.mkdir(`${root}/class_${c}`, { recursive: true });
  for (let i = 0; i < count; i++) {
    const img = naturalImage(h, w);
    try {
      const bytes = await encodeJpeg(img, 90);
      await Deno.writeFile(
        `${root}/class_${i % classes}/img_${String(i).padStart(5, "0")}.jpg`,
        bytes,
      );
    } finally {
      img.free();
    }
  }
}
