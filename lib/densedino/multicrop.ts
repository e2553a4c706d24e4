/**
 * DenseDINO's multi-crop input pipeline for the data loader: per example, the view geometry
 * (crops overlapping by the rule, flips, reference points; {@link sampleViews}) and each view's
 * photometric augmentations ({@link dinoPhotometric}); per batch, the views stacked by view
 * index and the reference points in the layout the ViT takes.
 *
 * Randomness: the geometry comes from a {@link GeometryRng} seeded with the loader's
 * per-example seed, the photometric draws from the loader's per-example libtorch generator, so
 * an example's views depend only on (seed, epoch, index) — not on workers, prefetch or order.
 *
 * View kinds: view 0 gets the `global1` photometric settings (blur p 1.0), view 1 `global2`
 * (blur p 0.1, solarisation p 0.2), every other view — local views, and any global view beyond
 * the second — the `local` ones (blur p 0.5), as the official code, whose extra views all use
 * its local transform.
 *
 * @module
 */
import { type Generator, scope, stack, type Tensor, tensor, TorchError } from "../torch/mod.ts";
import type { Sample } from "../data/dataset.ts";
import type { ExampleRandom, Transform } from "../data/loader.ts";
import {
  applyViews,
  batchPoints,
  GeometryRng,
  type ResolvedViewOptions,
  resolveViewOptions,
  sampleViews,
  type ViewPlan,
  type ViewSamplerOptions,
} from "./views.ts";
import { dinoPhotometric, type DinoPhotometricOptions, type DinoViewKind } from "./augment.ts";

/** Options of {@link multiCropTransform}: the view sampler's, plus photometric overrides. */
export interface MultiCropOptions extends ViewSamplerOptions {
  /** per view kind, overrides of the DINO photometric settings (e.g. `{ local: { blurP: 0 } }`) */
  photometric?: Partial<Record<DinoViewKind, DinoPhotometricOptions>>;
}

/** One example's views. The loader owns and frees its tensors. */
export interface MultiCropItem {
  /** the views in plan order (globals, then locals), each [3, s, s], normalised */
  views: Tensor[];
  /** the geometry: crop boxes, flips and reference points */
  plan: ViewPlan;
  /** the example's image label, when the data set has one */
  label?: number;
}

/** A batch of {@link MultiCropItem}s. */
export interface MultiCropBatch extends Disposable {
  /** per view index, [B, 3, s, s] */
  views: Tensor[];
  /** per global view i, [B, (G+L)·M, 2]: the points of every pair (i, j), j-major */
  teacherPoints: Tensor[];
  /** per view j, [B, G·M, 2]: the points of every pair (i, j), i-major */
  studentPoints: Tensor[];
  /** image labels [B] (int64), when every example has one */
  labels: Tensor | null;
  /** the plans, one per example */
  plans: ViewPlan[];
  /** the data-set indices of the examples */
  indices: number[];
  /** frees every tensor of the batch */
  free(): void;
}

/** The photometric kind of view k (see the module documentation). */
export function viewKind(k: number): DinoViewKind {
  return k === 0 ? "global1" : k === 1 ? "global2" : "local";
}

/**
 * The multi-crop augmentation of one image [3, H, W] in [0, 1]: geometry from `geometry`,
 * photometric draws from `gen`.
 */
export function multiCrop(
  image: Tensor,
  opts: ResolvedViewOptions,
  geometry: GeometryRng,
  gen: Generator,
  photometric: MultiCropOptions["photometric"] = {},
): { views: Tensor[]; plan: ViewPlan } {
  const s = image.shape;
  if (s.length !== 3 || s[0] !== 3) {
    throw new TorchError("multiCrop", `expected an RGB image [3, H, W], got [${s.join(", ")}]`);
  }
  const plan = sampleViews(s[2], s[1], opts, geometry);
  const views = scope(() =>
    applyViews(image, plan).map((v, k) => {
      const kind = viewKind(k);
      return dinoPhotometric(v.unsqueeze(0), kind, gen, photometric[kind]).squeeze(0);
    })
  );
  return { views, plan };
}

/**
 * The loader transform of DenseDINO's multi-crop pipeline (use with {@link collateMultiCrop}).
 * Options are checked once, here.
 */
export function multiCropTransform(opts: MultiCropOptions = {}): Transform<MultiCropItem> {
  const resolved = resolveViewOptions(opts);
  const photometric = opts.photometric ?? {};
  return (sample: Sample, _index: number, rng: ExampleRandom): MultiCropItem => {
    const { views, plan } = multiCrop(
      sample.image,
      resolved,
      new GeometryRng(rng.seed),
      rng.generator,
      photometric,
    );
    return sample.label === undefined ? { views, plan } : { views, plan, label: sample.label };
  };
}

/** Stacks {@link MultiCropItem}s into a {@link MultiCropBatch}. */
export function collateMultiCrop(items: MultiCropItem[], indices: number[]): MultiCropBatch {
  return collate(items, indices, false);
}

/**
 * {@link collateMultiCrop} with the views and points in pinned (page-locked) host memory, so
 * that their copies to a CUDA device run asynchronously (PyTorch's `DataLoader(pin_memory=True)`).
 * Needs a CUDA build of the shim.
 */
export function collateMultiCropPinned(items: MultiCropItem[], indices: number[]): MultiCropBatch {
  return collate(items, indices, true);
}

function collate(items: MultiCropItem[], indices: number[], pin: boolean): MultiCropBatch {
  if (items.length === 0) throw new TorchError("collateMultiCrop", "an empty batch");
  const plans = items.map((it) => it.plan);
  const out = scope(() => {
    const nViews = items[0].views.length;
    const pinned = (t: Tensor) => pin ? t.pinMemory() : t;
    const views = Array.from(
      { length: nViews },
      (_, k) => pinned(stack(items.map((it) => it.views[k]))),
    );
    const raw = batchPoints(plans);
    const pts = { teacher: raw.teacher.map(pinned), student: raw.student.map(pinned) };
    const labels = items.every((it) => it.label !== undefined)
      ? stackLabels(items.map((it) => it.label!))
      : null;
    return { views, teacherPoints: pts.teacher, studentPoints: pts.student, labels };
  });
  const batch: MultiCropBatch = {
    ...out,
    plans,
    indices: [...indices],
    free() {
      for (const t of [...out.views, ...out.teacherPoints, ...out.studentPoints]) t.free();
      out.labels?.free();
    },
    [Symbol.dispose]() {
      batch.free();
    },
  };
  return batch;
}

function stackLabels(labels: number[]): Tensor {
  return tensor(labels, { dtype: "int64" });
}
