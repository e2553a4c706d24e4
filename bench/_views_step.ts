/**
 * The training step of `bench/views.ts`: a DenseDINO step of a ViT on one real
 * {@link MultiCropBatch}, through the public API — teacher forward (no grad) on the global views
 * with their teacher points, student forward on every view (the views of one size batched
 * together: one call for the global views, one for the local views) with their student points,
 * `patchTokens: false`, `DINOHead`s on the class and reference outputs of both networks, the
 * stand-in DINO loss of `bench/vit_step.ts` (generalised to G global and L local views),
 * zeroGrad, backward, per-parameter gradient clipping at 3.0, AdamW, `loss.item()` and the
 * teacher's EMA.
 *
 * `bench/vit_step.ts`'s `VitStep` owns fixed random inputs of 2 + 2 views of one size, so it is
 * not reused; the loss below is its `standInLoss` with the view counts as parameters.
 *
 * @module
 */
import * as dd from "../mod.ts";
import type { MultiCropBatch } from "../mod.ts";

const STUDENT_TEMP = 0.1;
const TEACHER_TEMP = 0.04;
const CENTER_MOMENTUM = 0.9;
const EMA_MOMENTUM = 0.996;
const CLIP = 3.0;

/** The shape of the step. */
export interface StepShape {
  /** backbone architecture (e.g. "vit_tiny") */
  arch: string;
  patchSize: number;
  /** side the positional-embedding grid is trained at (the global view size) */
  imgSize: number;
  /** global views G */
  globalCrops: number;
  /** local views L */
  localCrops: number;
  /** reference points per (global view, view) pair */
  numRef: number;
  /** examples per batch (the learning rate's scale) */
  batch: number;
  /** DINO head output dimension */
  outDim: number;
  /** the student's drop-path rate (0.1, DINO's default) */
  dropPath: number;
}

/** Backbone + class head + reference head. */
class Net extends dd.Module {
  readonly backbone: dd.VisionTransformer;
  readonly head: dd.DINOHead;
  readonly refHead: dd.DINOHead;

  constructor(s: StepShape, dropPath: number) {
    super();
    this.backbone = this.registerModule(
      "backbone",
      dd.createViT(s.arch, { patchSize: s.patchSize, imgSize: s.imgSize, dropPathRate: dropPath }),
    );
    const D = this.backbone.embedDim;
    this.head = this.registerModule("head", new dd.DINOHead(D, s.outDim));
    this.refHead = this.registerModule("ref_head", new dd.DINOHead(D, s.outDim));
  }
}

/** Student, teacher (EMA copy), optimiser and centres of the benchmark's training step. */
export class DenseDinoStep implements Disposable {
  readonly shape: StepShape;
  readonly student: Net;
  readonly teacher: Net;
  readonly opt: dd.AdamW;
  readonly centre: dd.Tensor;
  readonly refCentre: dd.Tensor;
  readonly #studentParams: dd.Tensor[];
  readonly #teacherParams: dd.Tensor[];
  readonly #trainable: dd.Tensor[];

  constructor(shape: StepShape) {
    if (shape.globalCrops + shape.localCrops < 2) {
      throw new Error("the step needs at least two views (one pair)");
    }
    this.shape = shape;
    dd.manualSeed(0);
    this.student = new Net(shape, shape.dropPath);
    this.teacher = new Net(shape, 0);
    this.teacher.loadStateDict(this.student.stateDict());
    for (const p of this.teacher.parameters()) p.requiresGrad_(false);
    this.student.train();
    this.teacher.train();
    this.#studentParams = this.student.parameters();
    this.#teacherParams = this.teacher.parameters();
    this.#trainable = this.student.parameters({ trainableOnly: true });
    const decay: dd.Tensor[] = [], noDecay: dd.Tensor[] = [];
    for (const [name, p] of this.student.namedParameters()) {
      if (!p.requiresGrad) continue;
      (name.endsWith(".bias") || p.ndim === 1 ? noDecay : decay).push(p);
    }
    this.opt = new dd.AdamW([
      { params: decay, weightDecay: 0.04, name: "decay" },
      { params: noDecay, weightDecay: 0, name: "no_decay" },
    ], { lr: 0.0005 * shape.batch / 256 });
    this.centre = dd.keep(dd.zeros([1, shape.outDim]));
    this.refCentre = dd.keep(dd.zeros([1, shape.outDim]));
  }

  /** One training step on `batch` (which the caller still owns); returns the loss. */
  step(batch: MultiCropBatch): number {
    const G = this.shape.globalCrops, L = this.shape.localCrops;
    if (batch.views.length !== G + L) {
      throw new Error(`expected ${G + L} views per example, got ${batch.views.length}`);
    }
    return dd.scope(() => {
      const fwd = (points: dd.Tensor) => ({ points, patchTokens: false as const });
      const globals = dd.cat(batch.views.slice(0, G), 0); // [G·B, 3, sg, sg]
      const t = dd.noGrad(() => {
        const o = this.teacher.backbone.forward(globals, fwd(dd.cat(batch.teacherPoints, 0)));
        return { cls: this.teacher.head.forward(o.cls), ref: this.teacher.refHead.forward(o.ref!) };
      });
      const outs = [
        this.student.backbone.forward(globals, fwd(dd.cat(batch.studentPoints.slice(0, G), 0))),
      ];
      if (L > 0) {
        outs.push(this.student.backbone.forward(
          dd.cat(batch.views.slice(G), 0),
          fwd(dd.cat(batch.studentPoints.slice(G), 0)),
        ));
      }
      const sCls = this.student.head.forward(dd.cat(outs.map((o) => o.cls), 0)); // [V·B, O]
      const sRef = this.student.refHead.forward(dd.cat(outs.map((o) => o.ref!), 0)); // [V·B, G·M, O]
      const loss = this.standInLoss(sCls, sRef, t.cls, t.ref);
      this.opt.zeroGrad();
      loss.backward();
      dd.clipGradNorms(this.#trainable, CLIP);
      this.opt.step();
      const value = loss.item();
      dd.emaUpdate(this.#teacherParams, this.#studentParams, EMA_MOMENTUM);
      return value;
    });
  }

  /**
   * `bench/vit_step.ts`'s stand-in DINO loss for G global and L local views: student outputs
   * sCls [V·B, O], sRef [V·B, G·M, O] (view-major), teacher outputs tCls [G·B, O], tRef
   * [G·B, V·M, O]; class tokens on the global views only, reference tokens on every view,
   * 0.5·class + 0.5·reference; updates the centres.
   */
  standInLoss(sCls: dd.Tensor, sRef: dd.Tensor, tCls: dd.Tensor, tRef: dd.Tensor): dd.Tensor {
    const G = this.shape.globalCrops, V = G + this.shape.localCrops;
    const M = this.shape.numRef, O = this.shape.outDim;
    const B = tCls.size(0) / G;
    return dd.scope(() => {
      const s = sCls.div(STUDENT_TEMP);
      const sr = sRef.div(STUDENT_TEMP).reshape([V * B, G, M, O]);
      const tru = tRef.reshape([G * B, V, M, O]);
      const [tc, tr] = dd.noGrad(() => [
        tCls.sub(this.centre).div(TEACHER_TEMP).softmax(-1),
        tru.sub(this.refCentre).div(TEACHER_TEMP).softmax(-1),
      ]);
      let cls: dd.Tensor | null = null, ref: dd.Tensor | null = null;
      let nCls = 0, nRef = 0;
      for (let iq = 0; iq < G; iq++) {
        for (let v = 0; v < V; v++) {
          if (v === iq) continue;
          if (v < G) {
            const term = tc.narrow(0, iq * B, B).neg()
              .mul(s.narrow(0, v * B, B).logSoftmax(-1)).sum(-1).mean();
            cls = cls === null ? term : cls.add(term);
            nCls++;
          }
          const term = tr.narrow(0, iq * B, B).select(1, v).neg()
            .mul(sr.narrow(0, v * B, B).select(1, iq).logSoftmax(-1)).sum(-1).mean();
          ref = ref === null ? term : ref.add(term);
          nRef++;
        }
      }
      // a single global view has no class pair: the reference loss alone
      const loss = cls === null
        ? ref!.div(nRef)
        : cls.div(nCls).mul(0.5).add(ref!.div(nRef).mul(0.5));
      dd.noGrad(() => {
        const n = G * B;
        const c = tCls.sum(0, { keepdim: true }).div(n);
        this.centre.mul_(CENTER_MOMENTUM).add_(c, 1 - CENTER_MOMENTUM);
        const g = tru.narrow(1, 0, G).reshape([n, G * M, O]);
        const rc = g.sum(0, { keepdim: true }).div(n).mean(1);
        this.refCentre.mul_(CENTER_MOMENTUM).add_(rc, 1 - CENTER_MOMENTUM);
      });
      return loss;
    });
  }

  /** Frees the models, the optimiser state and the centres. */
  [Symbol.dispose](): void {
    this.centre.free();
    this.refCentre.free();
    this.opt.free();
    this.student.free();
    this.teacher.free();
  }
}
