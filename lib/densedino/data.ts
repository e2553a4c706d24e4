/**
 * The training data of `scripts/train.ts`: a data-set spec (`fashion-scenes`,
 * `imagefolder:PATH`, `voc:PATH`) opened as a {@link Dataset} with the multi-crop transform —
 * as a loader source module, so Deno workers can open it themselves.
 *
 * @module
 */
import {
  type Dataset,
  FashionScenes,
  ImageFolder,
  type LoaderSource,
  PascalVOC,
  type SourceSpec,
} from "../data/mod.ts";
import { type MultiCropItem, type MultiCropOptions, multiCropTransform } from "./multicrop.ts";

/** What {@link trainSource} needs (structured-cloneable: it travels to workers). */
export interface TrainSourceOptions {
  /** `fashion-scenes`, `imagefolder:PATH` or `voc:PATH` (the VOC `trainaug` split, masks unused) */
  data: string;
  /** fashion-scenes: number of training scenes */
  scenes?: number;
  /** fashion-scenes: generation seed (default 0) */
  sceneSeed?: number;
  /** the view sampler and photometric options */
  views: MultiCropOptions;
  /** no progress output (workers) */
  quiet?: boolean;
}

/** Opens the data set a spec names. */
export async function openTrainDataset(o: TrainSourceOptions): Promise<Dataset> {
  if (o.data === "fashion-scenes") {
    return await FashionScenes.open({
      split: "train",
      count: o.scenes,
      seed: o.sceneSeed ?? 0,
      quiet: o.quiet,
    });
  }
  const m = /^(imagefolder|voc):(.+)$/.exec(o.data);
  if (!m) {
    throw new Error(`--data must be fashion-scenes, imagefolder:PATH or voc:PATH, got ${o.data}`);
  }
  if (m[1] === "imagefolder") return await ImageFolder.open(m[2]);
  return await PascalVOC.open(m[2], { split: "trainaug", masks: "none" });
}

/** The loader source factory (named in {@link trainSourceSpec}). */
export async function trainSource(o: TrainSourceOptions): Promise<LoaderSource<MultiCropItem>> {
  return { dataset: await openTrainDataset(o), transform: multiCropTransform(o.views) };
}

/** The {@link SourceSpec} of {@link trainSource}, for `DataLoader({ source, workers })`. */
export function trainSourceSpec(o: TrainSourceOptions): SourceSpec {
  return { module: new URL(import.meta.url), factory: "trainSource", options: o };
}
