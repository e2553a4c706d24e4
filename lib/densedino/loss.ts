/**
 * The DINO / DenseDINO distillation loss (paper Eq. 2–4, the official `DINOLoss`): the
 * cross-entropy between the centred, sharpened teacher softmax and the student log-softmax,
 * over pairs of different views, for the class tokens and for matched reference tokens, with a
 * separate centre for each; plus the collapse check of DESIGN.md §4.
 *
 * @module
 */
import {
  cat,
  type Device,
  isFloating,
  keep,
  matmul,
  noGrad,
  scope,
  type Tensor,
  tensor,
  TorchError,
  zeros,
} from "../torch/mod.ts";
import type { TeacherTempSchedule } from "./schedules.ts";

/** Which terms enter the total loss (Table 3 of the paper): class, reference or both. */
export type LossKind = "cls" | "ref" | "both";

/** Options of {@link DinoLoss}; defaults are the official DenseDINO code's. */
export interface DinoLossOptions {
  /** head output width K (the number of prototypes) */
  outDim: number;
  /** number of views G + L (global and local crops) */
  numViews: number;
  /** number of global views G (default 2); the teacher sees these */
  globalCrops?: number;
  /**
   * reference points per (global view, view) pair M; inferred from the student reference
   * outputs when omitted (checked against every reference tensor when given)
   */
  numRef?: number;
  /** student temperature τs (default 0.1) */
  studentTemp?: number;
  /**
   * teacher temperature τt: a fixed value (default 0.04, the official `--teacher_temp` with no
   * warm-up) or a schedule from `teacherTempSchedule` looked up at the forward's epoch
   * (or iteration)
   */
  teacherTemp?: number | TeacherTempSchedule;
  /** momentum m of both centres (default 0.9) */
  centerMomentum?: number;
  /** weight of the class loss in `"both"`: `alpha·cls + (1 − alpha)·ref` (default 0.5) */
  alpha?: number;
  /** the terms of the total (default `"both"`) */
  loss?: LossKind;
  /**
   * class loss over every student view (true; DINO, and Eq. 2) or over the global views only
   * (false: the default, as the official DenseDINO code's `use_all_crop_global`). The trainer
   * sets it per method.
   */
  allCropsCls?: boolean;
  /** reference loss over every student view (default true, the official README command) */
  allCropsRef?: boolean;
  /** number of processes for distributed training (default 1); see {@link reduce} */
  worldSize?: number;
  /**
   * Distributed hook: sums the given tensor **in place** over all ranks (an all-reduce with
   * SUM). Called exactly once per forward, with a float32 tensor [2, K] on the outputs' device
   * holding this rank's batch sums of the teacher's class outputs (row 0) and of its
   * global-pair reference outputs summed over points (row 1). Every rank gets the same shape,
   * whatever the loss kind (a row of a disabled term is zeros). Default: identity (one
   * process).
   */
  reduce?: (sums: Tensor) => void;
}

/** The network outputs {@link DinoLoss.forward} takes. */
export interface DinoLossInputs {
  /** per global view i < G, the teacher's class-head outputs [B, K]; needed unless `"ref"` */
  teacherCls?: readonly Tensor[] | null;
  /** per view v < G + L, the student's class-head outputs [B, K]; needed unless `"ref"` */
  studentCls?: readonly Tensor[] | null;
  /**
   * per global view i < G, the teacher's reference-head outputs [B, (G+L)·M, K], row
   * `j·M + m` = point m of pair (i, j); needed unless `"cls"`
   */
  teacherRef?: readonly Tensor[] | null;
  /**
   * per view v < G + L, the student's reference-head outputs [B, G·M, K], row `i·M + m` =
   * point m of pair (i, v); needed unless `"cls"`
   */
  studentRef?: readonly Tensor[] | null;
}

/**
 * When the loss is evaluated: an epoch (a bare number, as the official `forward(…, epoch)`),
 * an epoch and global iteration (for a per-iteration temperature schedule), or an explicit
 * teacher temperature (which overrides the configured one).
 */
export type LossStep = number | { epoch?: number; iteration?: number; temperature?: number };

/** Options of one {@link DinoLoss.forward} call. */
export interface DinoLossForwardOptions {
  /**
   * also return the mean entropy (nats) of the teacher's centred, sharpened softmax: of the
   * class outputs, or of the reference outputs for `"ref"` (default false); see
   * {@link isCollapsed}
   */
  entropy?: boolean;
}

/** What {@link DinoLoss.forward} returns: float32 scalar tensors, owned by the caller. */
export interface DinoLossOutput {
  /** the training loss, differentiable w.r.t. the student outputs */
  total: Tensor;
  /** the class-token loss (0 for `"ref"`, whose class term is not computed) */
  cls: Tensor;
  /** the reference-token loss (0 for `"cls"`) */
  ref: Tensor;
  /** the teacher temperature used */
  temperature: number;
  /** mean teacher-softmax entropy (no grad) when asked for, else null */
  entropy: Tensor | null;
}

/** The checkpoint tensors of {@link DinoLoss}: the centres [1, K], named as the official. */
export interface DinoLossState {
  /** class-output centre [1, K] */
  center: Tensor;
  /** reference-output centre [1, K] */
  ref_center: Tensor;
}

const OP = "DinoLoss";

function checkNumber(name: string, v: number, ok: (v: number) => boolean, want: string): void {
  if (typeof v !== "number" || !Number.isFinite(v) || !ok(v)) {
    throw new RangeError(`${OP}: ${name} must be ${want}, got ${v}`);
  }
}

function checkInt(name: string, v: number, min: number): void {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
    throw new RangeError(`${OP}: ${name} must be an integer ≥ ${min}, got ${v}`);
  }
}

function fmtShape(s: readonly number[]): string {
  return `[${s.join(", ")}]`;
}

/**
 * The DINO / DenseDINO loss with its two centres (the official `DINOLoss`).
 *
 * For the teacher temperature τt and each enabled term, with teacher probabilities
 * `p_t = softmax((t − centre)/τt)` (no gradient) and student `log p_s = log_softmax(s/τs)`,
 * every pair (iq, v) with iq a global view, v any view, v ≠ iq, contributes the term
 * `mean(Σ_k −p_t·log p_s)` — the mean over the batch (and, for reference tokens, over the M
 * matched points: teacher view iq rows `v·M … v·M+M−1` against student view v rows
 * `iq·M … iq·M+M−1`). A class term is counted only when `v < G` unless `allCropsCls`, a
 * reference term only when `v < G` unless `allCropsRef`. Each loss is the sum of its terms
 * divided by `count + 1e-5`: the official code starts its term counters at 1e-5 to guard
 * against a division by zero, and this keeps that (so a loss is `(1 − 1e-5/(count+1e-5))`
 * times the mean of its terms, and 0 when there are no pairs, e.g. one global view alone).
 *
 * The sums are computed per student view against the summed teacher targets of its pairs,
 * the same value up to float32 rounding, so the student's log-softmax is computed once per
 * view and gradients need no per-pair slicing. Outputs of any floating dtype are computed in
 * float32 (as softmax under autocast).
 *
 * After the loss (which uses the centres as they were), the centres are updated without
 * gradient: `center ← m·center + (1−m)·mean` of the teacher's class outputs over the global
 * views and the batch (all ranks), and `ref_center` likewise from the teacher's reference
 * outputs of the pairs (iq, j) with j < G only (the official "only use global crop's ref token
 * for center updating"; j = iq included), averaged over batch and points. A disabled term's
 * centre is not updated.
 *
 * The centres live on the outputs' device (moved on the first forward there), float32; free
 * them with {@link free}.
 */
export class DinoLoss {
  /** head output width K */
  readonly outDim: number;
  /** number of global views G */
  readonly globalCrops: number;
  /** number of views G + L */
  readonly numViews: number;
  /** reference points per pair M, when fixed by the options */
  readonly numRef: number | undefined;
  /** student temperature τs */
  readonly studentTemp: number;
  /** the teacher temperature, fixed or scheduled */
  readonly teacherTemp: number | TeacherTempSchedule;
  /** centre momentum m */
  readonly centerMomentum: number;
  /** class-loss weight in `"both"` */
  readonly alpha: number;
  /** which terms enter the total */
  readonly loss: LossKind;
  /** class loss over every student view */
  readonly allCropsCls: boolean;
  /** reference loss over every student view */
  readonly allCropsRef: boolean;
  /** processes in the all-reduce */
  readonly worldSize: number;
  #reduce: ((sums: Tensor) => void) | undefined;
  #center: Tensor;
  #refCenter: Tensor;

  /** A loss with both centres at zero (on the CPU until the first forward). */
  constructor(opts: DinoLossOptions) {
    checkInt("outDim", opts.outDim, 1);
    const G = opts.globalCrops ?? 2;
    checkInt("globalCrops", G, 1);
    checkInt("numViews", opts.numViews, G);
    if (opts.numRef !== undefined) checkInt("numRef", opts.numRef, 1);
    const studentTemp = opts.studentTemp ?? 0.1;
    checkNumber("studentTemp", studentTemp, (v) => v > 0, "a finite number > 0");
    const teacherTemp = opts.teacherTemp ?? 0.04;
    if (typeof teacherTemp === "number") {
      checkNumber("teacherTemp", teacherTemp, (v) => v > 0, "a finite number > 0");
    } else if (
      teacherTemp === null || typeof teacherTemp !== "object" ||
      typeof teacherTemp.at !== "function"
    ) {
      throw new RangeError(`${OP}: teacherTemp must be a number or a TeacherTempSchedule`);
    }
    const m = opts.centerMomentum ?? 0.9;
    checkNumber("centerMomentum", m, (v) => v >= 0 && v <= 1, "in [0, 1]");
    const alpha = opts.alpha ?? 0.5;
    checkNumber("alpha", alpha, (v) => v >= 0 && v <= 1, "in [0, 1]");
    const loss = opts.loss ?? "both";
    if (loss !== "cls" && loss !== "ref" && loss !== "both") {
      throw new RangeError(`${OP}: loss must be "cls", "ref" or "both", got ${String(loss)}`);
    }
    const worldSize = opts.worldSize ?? 1;
    checkInt("worldSize", worldSize, 1);
    if (opts.reduce !== undefined && typeof opts.reduce !== "function") {
      throw new RangeError(`${OP}: reduce must be a function`);
    }
    this.outDim = opts.outDim;
    this.globalCrops = G;
    this.numViews = opts.numViews;
    this.numRef = opts.numRef;
    this.studentTemp = studentTemp;
    this.teacherTemp = teacherTemp;
    this.centerMomentum = m;
    this.alpha = alpha;
    this.loss = loss;
    this.allCropsCls = opts.allCropsCls ?? false;
    this.allCropsRef = opts.allCropsRef ?? true;
    this.worldSize = worldSize;
    this.#reduce = opts.reduce;
    this.#center = keep(zeros([1, opts.outDim]));
    this.#refCenter = keep(zeros([1, opts.outDim]));
  }

  /** The class-output centre [1, K] (the live buffer: do not free or modify). */
  get center(): Tensor {
    return this.#center;
  }

  /** The reference-output centre [1, K] (the live buffer: do not free or modify). */
  get refCenter(): Tensor {
    return this.#refCenter;
  }

  /** Number of class terms per forward: pairs (iq < G, v < G+L or < G), v ≠ iq. */
  get clsTerms(): number {
    if (this.loss === "ref") return 0;
    const G = this.globalCrops;
    return G * ((this.allCropsCls ? this.numViews : G) - 1);
  }

  /** Number of reference terms per forward (as {@link clsTerms}, with `allCropsRef`). */
  get refTerms(): number {
    if (this.loss === "cls") return 0;
    const G = this.globalCrops;
    return G * ((this.allCropsRef ? this.numViews : G) - 1);
  }

  /**
   * The teacher temperature at `at`: its explicit `temperature`, else the fixed
   * `teacherTemp`, else the schedule at the epoch (and iteration).
   *
   * @throws RangeError for a missing epoch with a schedule, a step outside the schedule, or a
   * non-positive temperature.
   */
  temperatureAt(at: LossStep): number {
    const step = typeof at === "number" ? { epoch: at } : at;
    if (step === null || typeof step !== "object") {
      throw new RangeError(`${OP}: the step must be an epoch or { epoch, iteration, temperature }`);
    }
    let t: number;
    if (step.temperature !== undefined) {
      t = step.temperature;
    } else if (typeof this.teacherTemp === "number") {
      t = this.teacherTemp;
    } else {
      if (step.epoch === undefined) {
        throw new RangeError(`${OP}: an epoch is needed to look up the teacher temperature`);
      }
      t = this.teacherTemp.at(step.epoch, step.iteration);
    }
    checkNumber("the teacher temperature", t, (v) => v > 0, "a finite number > 0");
    return t;
  }

  /**
   * The loss of one batch, then the centre updates (see {@link DinoLoss}). `total` carries
   * the gradient to the student outputs; teacher outputs are used without gradient.
   *
   * @throws TorchError naming the tensor when a count of views, a shape, a dtype or a device
   * does not match; RangeError for a bad step.
   */
  forward(
    inputs: DinoLossInputs,
    at: LossStep,
    opts: DinoLossForwardOptions = {},
  ): DinoLossOutput {
    const temp = this.temperatureAt(at);
    const useCls = this.loss !== "ref", useRef = this.loss !== "cls";
    const { B, M, device } = this.#validate(inputs, useCls, useRef);
    this.#toDevice(device);
    const G = this.globalCrops, N = this.numViews, K = this.outDim;
    const wantEntropy = opts.entropy === true;
    return scope(() => {
      const sums = noGrad(() => zeros([2, K], { device }));
      let entropy: Tensor | null = null;
      let cls: Tensor | null = null, ref: Tensor | null = null;

      if (useCls) {
        const cols = this.allCropsCls ? N : G;
        const count = this.clsTerms;
        // teacher: [G·B, K], raw sums for the centre, then centred and sharpened in place
        const w = noGrad(() => {
          const t = f32(cat(inputs.teacherCls!, 0));
          sums.select(0, 0).copy_(t.sum(0));
          t.sub_(this.#center).div_(temp);
          const p = t.softmax(-1);
          if (wantEntropy) entropy = meanEntropyFrom(t, p);
          // targets of student view v: Σ over its pairs (iq ≠ v) of the teacher probabilities
          return matmul(pairMask(cols, G, device), p.reshape([G, B * K])).reshape([cols, B, K]);
        });
        if (count === 0) {
          cls = zeros([], { device }); // the official 0 / 1e-5
        } else {
          const parts: Tensor[] = [];
          for (let v = 0; v < cols; v++) {
            parts.push(scope(() => {
              const ls = f32(inputs.studentCls![v]).div(this.studentTemp).logSoftmax(-1);
              return w.select(0, v).mul(ls).sum();
            }));
          }
          cls = sumAll(parts).div(-(B * (count + 1e-5)));
        }
      }

      if (useRef) {
        const cols = this.allCropsRef ? N : G;
        const count = this.refTerms;
        const w = noGrad(() => {
          // teacher: [G·B, cols·M, K] (rows of pairs (iq, j < cols))
          const all = f32(cat(inputs.teacherRef!, 0));
          sums.select(0, 1).copy_(all.narrow(1, 0, G * M).sum([0, 1]));
          const t = cols === N ? all : all.narrow(1, 0, cols * M);
          t.sub_(this.#refCenter).div_(temp);
          const p = t.softmax(-1);
          if (wantEntropy && !useCls) entropy = meanEntropyFrom(t, p);
          const p5 = p.reshape([G, B, cols, M, K]);
          for (let iq = 0; iq < G; iq++) p5.select(0, iq).select(1, iq).zero_(); // v = iq: no term
          return p5;
        });
        if (count === 0) {
          ref = zeros([], { device });
        } else {
          const parts: Tensor[] = [];
          for (let v = 0; v < cols; v++) {
            parts.push(scope(() => {
              const ls = f32(inputs.studentRef![v]).div(this.studentTemp).logSoftmax(-1);
              // teacher rows of pair (iq, v) aligned with student view v rows iq·M + m
              const target = w.select(2, v).permute([1, 0, 2, 3]); // [B, G, M, K]
              return target.mul(ls.reshape([B, G, M, K])).sum();
            }));
          }
          ref = sumAll(parts).div(-(B * M * (count + 1e-5)));
        }
      }

      let total: Tensor;
      if (cls !== null && ref !== null) {
        total = cls.mul(this.alpha).add(ref.mul(1 - this.alpha));
      } else {
        total = (cls ?? ref)!.alias();
      }
      const zero = () => zeros([], { device });
      this.#updateCenters(sums, B, M, useCls, useRef);
      return { total, cls: cls ?? zero(), ref: ref ?? zero(), temperature: temp, entropy };
    });
  }

  /** The centres for a checkpoint: the live buffers (do not free or modify). */
  state(): DinoLossState {
    return { center: this.#center, ref_center: this.#refCenter };
  }

  /**
   * Copies the centres from a checkpoint (`center` and `ref_center`, each [1, K]).
   *
   * @throws TorchError naming a missing tensor or one of the wrong shape.
   */
  loadState(state: Partial<Record<keyof DinoLossState, Tensor>>): void {
    const want = [1, this.outDim];
    const pairs = [["center", this.#center], ["ref_center", this.#refCenter]] as const;
    for (const [key] of pairs) {
      const src = state[key];
      if (!src) throw new TorchError(`${OP}.loadState`, `missing tensor "${key}"`);
      const s = src.shape;
      if (s.length !== 2 || s[0] !== 1 || s[1] !== this.outDim) {
        throw new TorchError(
          `${OP}.loadState`,
          `"${key}" has shape ${fmtShape(s)}, expected ${fmtShape(want)}`,
        );
      }
    }
    noGrad(() => {
      for (const [key, dst] of pairs) dst.copy_(state[key]!);
    });
  }

  /** Frees the centres. */
  free(): void {
    this.#center.free();
    this.#refCenter.free();
  }

  #updateCenters(sums: Tensor, B: number, M: number, useCls: boolean, useRef: boolean): void {
    const G = this.globalCrops, m = this.centerMomentum;
    noGrad(() => {
      if (this.#reduce) this.#reduce(sums);
      const n = G * B * this.worldSize;
      if (useCls) {
        const batch = sums.narrow(0, 0, 1).div(n);
        this.#center.mul_(m).add_(batch.mul(1 - m));
      }
      if (useRef) {
        const batch = sums.narrow(0, 1, 1).div(n).div(G * M);
        this.#refCenter.mul_(m).add_(batch.mul(1 - m));
      }
    });
  }

  #toDevice(device: Device): void {
    if (this.#center.device === device) return;
    const c = keep(this.#center.to({ device })), r = keep(this.#refCenter.to({ device }));
    this.#center.free();
    this.#refCenter.free();
    this.#center = c;
    this.#refCenter = r;
  }

  #validate(
    inputs: DinoLossInputs,
    useCls: boolean,
    useRef: boolean,
  ): { B: number; M: number; device: Device } {
    const op = `${OP}.forward`;
    const G = this.globalCrops, N = this.numViews, K = this.outDim;
    const list = (name: keyof DinoLossInputs, n: number): readonly Tensor[] => {
      const ts = inputs[name];
      if (!Array.isArray(ts)) {
        throw new TorchError(op, `${name} is needed for loss "${this.loss}" (${n} tensors)`);
      }
      if (ts.length !== n) {
        throw new TorchError(
          op,
          `${name} has ${ts.length} tensors, expected ${n} (${
            name.startsWith("teacher") ? "one per global view" : "one per view"
          })`,
        );
      }
      return ts;
    };
    const tc = useCls ? list("teacherCls", G) : [];
    const sc = useCls ? list("studentCls", N) : [];
    const tr = useRef ? list("teacherRef", G) : [];
    const sr = useRef ? list("studentRef", N) : [];
    const first = useCls ? tc[0] : tr[0];
    const B = first.shape[0];
    const device = first.device;
    let M = 0;
    if (useRef) {
      M = this.numRef ?? sr[0].shape[1] / G;
      if (!Number.isSafeInteger(M) || M < 1) {
        throw new TorchError(
          op,
          `studentRef[0] has shape ${fmtShape(sr[0].shape)}: its second size must be ` +
            `G·M = ${G}·M with M ≥ 1`,
        );
      }
    }
    const check = (name: string, ts: readonly Tensor[], want: number[], what: string) => {
      ts.forEach((t, i) => {
        const s = t.shape;
        if (s.length !== want.length || s.some((d, k) => d !== want[k])) {
          throw new TorchError(
            op,
            `${name}[${i}] has shape ${fmtShape(s)}, expected ${fmtShape(want)} (${what})`,
          );
        }
        if (!isFloating(t.dtype)) {
          throw new TorchError(op, `${name}[${i}] has dtype ${t.dtype}, expected a float dtype`);
        }
        if (t.device !== device) {
          throw new TorchError(op, `${name}[${i}] is on ${t.device}, expected ${device}`);
        }
      });
    };
    check("teacherCls", tc, [B, K], `[B, K] with K = outDim = ${K}`);
    check("studentCls", sc, [B, K], `[B, K] with K = outDim = ${K}`);
    check("teacherRef", tr, [B, N * M, K], `[B, (G+L)·M, K] = [B, ${N}·${M}, ${K}]`);
    check("studentRef", sr, [B, G * M, K], `[B, G·M, K] = [B, ${G}·${M}, ${K}]`);
    if (B < 1) throw new TorchError(op, "the batch is empty");
    return { B, M, device };
  }
}

/** `x` as float32 (the tensor itself when it already is). */
function f32(x: Tensor): Tensor {
  return x.dtype === "float32" ? x : x.float();
}

/** [cols, G] float32: 1 where student view v pairs with teacher view iq (v ≠ iq). */
function pairMask(cols: number, G: number, device: Device): Tensor {
  const data: number[][] = [];
  for (let v = 0; v < cols; v++) {
    data.push(Array.from({ length: G }, (_, iq) => (iq === v ? 0 : 1)));
  }
  const m = tensor(data);
  return device === "cpu" ? m : m.to({ device });
}

function sumAll(parts: Tensor[]): Tensor {
  let acc = parts[0];
  for (let i = 1; i < parts.length; i++) acc = acc.add(parts[i]);
  return acc;
}

/** Mean over rows of the entropy of softmax(z), from the logits z and p = softmax(z). */
function meanEntropyFrom(z: Tensor, p: Tensor): Tensor {
  return z.logsumexp(-1).sub(p.mul(z).sum(-1)).mean();
}

/**
 * Mean entropy (nats) of `softmax(logits)` over the last dimension, averaged over every other
 * position; no gradient. A uniform distribution over K classes has entropy ln K.
 */
export function softmaxEntropy(logits: Tensor): Tensor {
  return scope(() =>
    noGrad(() => {
      const z = f32(logits);
      return meanEntropyFrom(z, z.softmax(-1));
    })
  );
}

/**
 * The entropy at and above which the teacher is considered collapsed to a uniform output:
 * `ratio · ln(outDim)` (default ratio 0.99).
 */
export function collapseThreshold(outDim: number, ratio = 0.99): number {
  checkInt("outDim", outDim, 1);
  checkNumber("ratio", ratio, (v) => v > 0 && v <= 1, "in (0, 1]");
  return ratio * Math.log(outDim);
}

/**
 * True when `entropy` (nats: the mean teacher-softmax entropy, e.g. `forward(…, { entropy:
 * true }).entropy.item()`) is at least `ratio · ln(outDim)`: the teacher's output is (nearly)
 * uniform, the collapse DESIGN.md §4 asks the trainer to warn about. Since the loss is the
 * cross-entropy H(p_t, p_s) ≥ H(p_t), a loss value stuck at ln(outDim) points the same way.
 * Always false for `outDim` 1 (nothing to collapse).
 */
export function isCollapsed(entropy: number, outDim: number, ratio = 0.99): boolean {
  const threshold = collapseThreshold(outDim, ratio);
  return outDim > 1 && Number.isFinite(entropy) && entropy >= threshold;
}
