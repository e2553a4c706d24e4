/**
 * The student / teacher network of DINO and DenseDINO: a ViT backbone with a DINO head for the
 * class token and (DenseDINO) a head for the reference tokens — separate by default, as the
 * official code, or shared. Parameter names follow the official `MultiCropWrapper`:
 * `backbone.*`, `head.*`, `ref_head.*` (so a checkpoint's `student.*` / `teacher.*` keys load
 * into the official model).
 *
 * Like the official wrapper, views of the same resolution go through the backbone together
 * (one batched call per resolution); heads run once over all views' outputs.
 *
 * @module
 */
import { cat, scope, type Tensor, TorchError } from "../torch/mod.ts";
import {
  DINOHead,
  type DINOHeadOptions,
  type MaskMode,
  Module,
  type VisionTransformer,
} from "../nn/mod.ts";

/** Options of {@link DenseDinoModel}. */
export interface DenseDinoModelOptions extends DINOHeadOptions {
  /** the head's output width (DINO's out_dim; default 65536) */
  outDim?: number;
  /** build the reference-token head (DenseDINO; default true) */
  refHead?: boolean;
  /** use the class head for the reference tokens instead of a separate one (default false) */
  sharedRefHead?: boolean;
}

/** Outputs of {@link DenseDinoModel.forward}, one entry per view. */
export interface DenseDinoOutput {
  /** per view, head outputs of the class token [B, outDim] */
  cls: Tensor[];
  /** per view, head outputs of the reference tokens [B, K, outDim] (null without points) */
  ref: Tensor[] | null;
}

/** Backbone + heads. */
export class DenseDinoModel extends Module {
  /** the ViT */
  readonly backbone: VisionTransformer;
  /** the class-token head */
  readonly head: DINOHead;
  /** the reference-token head (the class head when shared; null for DINO) */
  readonly refHead: DINOHead | null;

  /** Heads on `backbone` (out_dim 65536 and the DINO head's defaults unless overridden). */
  constructor(backbone: VisionTransformer, opts: DenseDinoModelOptions = {}) {
    super();
    const outDim = opts.outDim ?? 65536;
    this.backbone = this.registerModule("backbone", backbone);
    this.head = this.registerModule("head", new DINOHead(backbone.embedDim, outDim, opts));
    if (opts.refHead === false) {
      this.refHead = null;
    } else if (opts.sharedRefHead) {
      this.refHead = this.head;
    } else {
      this.refHead = this.registerModule("ref_head", new DINOHead(backbone.embedDim, outDim, opts));
    }
  }

  /**
   * Runs views through the backbone (batched per resolution, consecutive views of one size
   * together) and the heads. `points[k]` are view k's reference points [B, K, 2] (the same K
   * for views batched together), or null for no reference tokens.
   */
  forward(
    views: readonly Tensor[],
    points: readonly Tensor[] | null,
    opts: { maskMode?: MaskMode; fastPath?: boolean } = {},
  ): DenseDinoOutput {
    if (views.length === 0) throw new TorchError("DenseDinoModel", "no views given");
    if (points && points.length !== views.length) {
      throw new TorchError(
        "DenseDinoModel",
        `${views.length} views but ${points.length} point sets`,
      );
    }
    if (points && this.refHead === null) {
      throw new TorchError(
        "DenseDinoModel",
        "reference points given to a model without a reference head",
      );
    }
    return scope(() => {
      const cls: Tensor[] = [];
      const ref: Tensor[] = [];
      const groups: number[][] = []; // per backbone call, the batch sizes of its views
      const same = (a: number, b: number) =>
        views[a].size(2) === views[b].size(2) && views[a].size(3) === views[b].size(3) &&
        (!points || points[a].size(1) === points[b].size(1));
      for (let start = 0; start < views.length;) {
        // consecutive views with one resolution (and point count) form one backbone call
        let end = start + 1;
        while (end < views.length && same(end, start)) end++;
        const x = end - start === 1 ? views[start] : cat(views.slice(start, end) as Tensor[], 0);
        const p = !points
          ? undefined
          : end - start === 1
          ? points[start]
          : cat(points.slice(start, end) as Tensor[], 0);
        const out = this.backbone.forward(x, {
          points: p,
          maskMode: opts.maskMode,
          fastPath: opts.fastPath,
          patchTokens: false,
        });
        cls.push(out.cls);
        if (out.ref) ref.push(out.ref);
        groups.push(views.slice(start, end).map((v) => v.size(0)));
        start = end;
      }
      const clsOut = this.head.forward(cls.length === 1 ? cls[0] : cat(cls, 0))
        .split(groups.flat(), 0);
      if (!points) return { cls: clsOut, ref: null };
      // one head call when every group has the same number of points, else one per group
      const refOut = ref.every((r) => r.size(1) === ref[0].size(1))
        ? this.refHead!.forward(cat(ref, 0)).split(groups.flat(), 0)
        : ref.flatMap((r, g) => this.refHead!.forward(r).split(groups[g], 0));
      return { cls: clsOut, ref: refOut };
    });
  }
}
