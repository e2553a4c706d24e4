/**
 * One DenseDINO training step of a ViT through the public API, timed per call. Its comparator is
 * `bench/vit_step.py`, which computes the same step the way the official PyTorch code does
 * (tokens [cls, refs, patches] with an explicit additive mask). Ours runs with the library's
 * default attention path (`fastPath` unset); the informational `*_split` and `*_explicit`
 * variants force the split fast path (`fastPath: true`) or the explicit-mask computation
 * (`fastPath: false`). Every variant asks the backbones for what training needs, the class and
 * reference outputs (`patchTokens: false`, which skips the last block's patch rows; the official
 * training forward also returns only these two, though it computes every token);
 * `--patch-tokens` computes the patch outputs too.
 *
 * Workload (defaults; bench/run.ts passes the same flags to both sides):
 * - `vit_tiny`, patch 16, positional grid trained at 224 px and interpolated bicubically for the
 *   96-px views; batch 16; 2 global + 2 local views, all 96×96; M = 4 reference points per
 *   (teacher view i, view j) pair, so a teacher (global) view carries 4·M = 16 reference tokens
 *   (pairs (i, 0…3) in order) and a student view 2·M = 8 (pairs (0, j), (1, j)); points uniform in
 *   [−1, 1] (random is enough for timing);
 * - teacher: a second ViT plus heads (the EMA copy: no drop path, parameters frozen), forward
 *   under `noGrad` on the two global views batched together ([32, 3, 96, 96], points [32, 16, 2]);
 * - student: drop path 0.1 (the DINO default), forward on all four views batched together
 *   ([64, 3, 96, 96], points [64, 8, 2]);
 * - heads: `DINOHead(192, 4096)` for the class token and a separate one for the reference tokens,
 *   on student and teacher outputs.
 *
 * Variants (each in its own phase of the process; ms per call, graph and outputs freed in it):
 * - `forward`: teacher forward (no grad) + student forward with autograd recording (backbones);
 * - `fwd_bwd`: `forward`, then backward of the student's `cls.sum() + ref.sum()`; gradients
 *   dropped after each call;
 * - `step`: the full step — teacher and student forward with heads, the stand-in loss, zeroGrad,
 *   backward, `clipGradNorms(…, 3.0)` (each parameter's gradient separately, as DINO),
 *   `AdamW` (lr 0.0005·16/256; weight decay 0.04 on parameters that are not biases and not 1-D,
 *   0 on the rest: the official grouping), `loss.item()`, `emaUpdate` of the teacher (0.996);
 * - `forward_split`, `fwd_bwd_split`, `step_split`: the same with `fastPath: true`;
 * - `forward_explicit`, `fwd_bwd_explicit`, `step_explicit`: the same with `fastPath: false`.
 *
 * The stand-in loss (until the library's DINO loss exists, issue 5) has the DINO loss's shapes
 * and ops: teacher softmax((t − centre)/0.04), student logSoftmax(s/0.1), cross-entropy over
 * the pairs (teacher global view iq, student view v ≠ iq) — class tokens on the global views
 * only, reference tokens on every view (the official defaults) — total 0.5·class + 0.5·reference,
 * then the two centres' EMA (momentum 0.9; the reference centre from the global views'
 * reference tokens). No temperature schedule.
 *
 * Profiling aids (run.ts passes neither): `--count-ops` wraps every native symbol with a counter
 * and reports FFI calls per call of each variant (it perturbs the timings slightly); `--phases`
 * times the phases of `step` (as `bench/vit_step.py --phases`).
 *
 * Usage: `deno run -A bench/vit_step.ts --help`. Progress goes to stderr, one JSON line (see
 * `BenchReport` in common.ts, with `peakRssMiB` per variant) to stdout.
 *
 * @module
 */
import { parseArgs } from "node:util";
import * as dd from "../mod.ts";
import { native } from "../lib/torch/ffi.ts";
import {
  type BenchReport,
  emit,
  fmt,
  loadedLibraries,
  parseThreads,
  parseVariants,
  peakRssMiB,
  positiveInt,
  resetPeakRss,
  rssMiB,
  summarize,
  threadInfo,
} from "./common.ts";

/** Names of the timed variants. */
export const VARIANTS = [
  "forward",
  "fwd_bwd",
  "step",
  "forward_split",
  "fwd_bwd_split",
  "step_split",
  "forward_explicit",
  "fwd_bwd_explicit",
  "step_explicit",
] as const;
/** One timed variant. */
export type Variant = typeof VARIANTS[number];

/** The workload's shape parameters. */
export interface Workload {
  arch: string;
  patchSize: number;
  imgSize: number;
  viewSize: number;
  batch: number;
  /** reference points per (teacher view, view) pair */
  points: number;
  outDim: number;
  /** the student's drop-path rate */
  dropPath: number;
  /** compute the backbones' patch-token outputs, which training does not use (default false) */
  patchTokens?: boolean;
}

const GLOBAL_VIEWS = 2;
const LOCAL_VIEWS = 2;
const STUDENT_TEMP = 0.1;
const TEACHER_TEMP = 0.04;
const CENTER_MOMENTUM = 0.9;
const EMA_MOMENTUM = 0.996;
const CLIP = 3.0;

/** Backbone + class head + reference head (the official MultiCropWrapper's parts). */
class Model extends dd.Module {
  readonly backbone: dd.VisionTransformer;
  readonly head: dd.DINOHead;
  readonly refHead: dd.DINOHead;

  constructor(w: Workload, dropPath: number) {
    super();
    this.backbone = this.registerModule(
      "backbone",
      dd.createViT(w.arch, {
        patchSize: w.patchSize,
        imgSize: w.imgSize,
        dropPathRate: dropPath,
      }),
    );
    const D = this.backbone.embedDim;
    this.head = this.registerModule("head", new dd.DINOHead(D, w.outDim));
    this.refHead = this.registerModule("ref_head", new dd.DINOHead(D, w.outDim));
  }
}

/** The models, inputs and optimiser of one benchmark process. */
export class VitStep {
  readonly w: Workload;
  readonly ncrops = GLOBAL_VIEWS + LOCAL_VIEWS;
  readonly student: Model;
  readonly teacher: Model;
  /** all views [ncrops·B, 3, S, S], global views first */
  readonly images: dd.Tensor;
  /** the global views (a view of `images`) */
  readonly globals: dd.Tensor;
  /** teacher points [2B, ncrops·M, 2] */
  readonly tPoints: dd.Tensor;
  /** student points [ncrops·B, 2·M, 2] */
  readonly sPoints: dd.Tensor;
  readonly opt: dd.AdamW;
  readonly centre: dd.Tensor;
  readonly refCentre: dd.Tensor;
  readonly studentParams: dd.Tensor[];
  readonly teacherParams: dd.Tensor[];
  readonly trainable: dd.Tensor[];
  readonly backboneTrainable: dd.Tensor[];
  /** per-phase times of `step` when set (`--phases`) */
  phases: Phases | null = null;

  constructor(w: Workload) {
    this.w = w;
    dd.manualSeed(0);
    const B = w.batch, M = w.points, S = w.viewSize;
    this.student = new Model(w, w.dropPath);
    this.teacher = new Model(w, 0);
    this.teacher.loadStateDict(this.student.stateDict());
    for (const p of this.teacher.parameters()) p.requiresGrad_(false);
    this.student.train();
    this.teacher.train(); // as the official code: the teacher is never put in eval mode
    this.studentParams = this.student.parameters();
    this.teacherParams = this.teacher.parameters();
    this.trainable = this.student.parameters({ trainableOnly: true });
    this.backboneTrainable = this.student.backbone.parameters({ trainableOnly: true });

    const decay: dd.Tensor[] = [], noDecay: dd.Tensor[] = [];
    for (const [name, p] of this.student.namedParameters()) {
      if (!p.requiresGrad) continue;
      (name.endsWith(".bias") || p.ndim === 1 ? noDecay : decay).push(p);
    }
    this.opt = new dd.AdamW([
      { params: decay, weightDecay: 0.04, name: "decay" },
      { params: noDecay, weightDecay: 0, name: "no_decay" },
    ], { lr: 0.0005 * B / 256 });

    const made = dd.scope(() => {
      const images = dd.randn([this.ncrops * B, 3, S, S]);
      // points of pair (teacher view i, view j): [B, M, 2] in [−1, 1]
      const pair = Array.from(
        { length: GLOBAL_VIEWS },
        () => Array.from({ length: this.ncrops }, () => dd.rand([B, M, 2]).mul(2).sub(1)),
      );
      const tPoints = dd.cat(pair.map((row) => dd.cat(row, 1)), 0);
      const sPoints = dd.cat(
        Array.from({ length: this.ncrops }, (_, j) => dd.cat(pair.map((row) => row[j]), 1)),
        0,
      );
      return { images, tPoints, sPoints, globals: images.narrow(0, 0, GLOBAL_VIEWS * B) };
    });
    dd.keep(made);
    this.images = made.images;
    this.globals = made.globals;
    this.tPoints = made.tPoints;
    this.sPoints = made.sPoints;
    this.centre = dd.keep(dd.zeros([1, w.outDim]));
    this.refCentre = dd.keep(dd.zeros([1, w.outDim]));
  }

  /** The backbones' forward options. */
  #opts(points: dd.Tensor, fastPath: boolean | undefined): dd.ForwardOptions {
    return { points, fastPath, patchTokens: this.w.patchTokens ?? false };
  }

  /** Runs one call of `variant`. */
  run(variant: Variant): void {
    // undefined = the library's default
    const fastPath = variant.endsWith("_split")
      ? true
      : variant.endsWith("_explicit")
      ? false
      : undefined;
    const base = variant.replace(/_(split|explicit)$/, "");
    if (base === "forward") this.forward(fastPath);
    else if (base === "fwd_bwd") this.fwdBwd(fastPath);
    else this.step(fastPath);
  }

  /** Teacher forward (no grad) and student forward (recording), backbones only. */
  forward(fastPath?: boolean): void {
    dd.scope(() => {
      dd.noGrad(() =>
        this.teacher.backbone.forward(this.globals, this.#opts(this.tPoints, fastPath))
      );
      this.student.backbone.forward(this.images, this.#opts(this.sPoints, fastPath));
    });
  }

  /** {@link forward}, then backward of the student's cls.sum() + ref.sum(). */
  fwdBwd(fastPath?: boolean): void {
    dd.scope(() => {
      dd.noGrad(() =>
        this.teacher.backbone.forward(this.globals, this.#opts(this.tPoints, fastPath))
      );
      const o = this.student.backbone.forward(this.images, this.#opts(this.sPoints, fastPath));
      o.cls.sum().add(o.ref!.sum()).backward();
    });
    dd.zeroGrads(this.backboneTrainable);
  }

  /** The full training step; returns the loss. */
  step(fastPath?: boolean): number {
    const ph = this.phases;
    ph?.start();
    const value = dd.scope(() => {
      const t = dd.noGrad(() => {
        const o = this.teacher.backbone.forward(this.globals, this.#opts(this.tPoints, fastPath));
        ph?.mark("teacher_backbone");
        const heads = {
          cls: this.teacher.head.forward(o.cls),
          ref: this.teacher.refHead.forward(o.ref!),
        };
        ph?.mark("teacher_heads");
        return heads;
      });
      const o = this.student.backbone.forward(this.images, this.#opts(this.sPoints, fastPath));
      ph?.mark("student_backbone");
      const sCls = this.student.head.forward(o.cls);
      const sRef = this.student.refHead.forward(o.ref!);
      ph?.mark("student_heads");
      const loss = this.standInLoss(sCls, sRef, t.cls, t.ref);
      ph?.mark("loss");
      this.opt.zeroGrad();
      ph?.mark("zero_grad");
      loss.backward();
      ph?.mark("backward");
      dd.clipGradNorms(this.trainable, CLIP);
      ph?.mark("clip");
      this.opt.step();
      ph?.mark("adamw");
      const value = loss.item();
      dd.emaUpdate(this.teacherParams, this.studentParams, EMA_MOMENTUM);
      ph?.mark("ema");
      return value;
    });
    ph?.mark("free");
    return value;
  }

  /**
   * The stand-in DINO loss (see the module doc) of student outputs sCls [4B, O], sRef
   * [4B, 2M, O] and teacher outputs tCls [2B, O], tRef [2B, 4M, O]; updates the centres.
   */
  standInLoss(sCls: dd.Tensor, sRef: dd.Tensor, tCls: dd.Tensor, tRef: dd.Tensor): dd.Tensor {
    const B = this.w.batch, M = this.w.points, O = this.w.outDim, V = this.ncrops;
    return dd.scope(() => {
      const s = sCls.div(STUDENT_TEMP); // [V·B, O]
      const sr = sRef.div(STUDENT_TEMP).reshape([V * B, GLOBAL_VIEWS, M, O]);
      const tru = tRef.reshape([GLOBAL_VIEWS * B, V, M, O]);
      const [tc, tr] = dd.noGrad(() => [
        tCls.sub(this.centre).div(TEACHER_TEMP).softmax(-1),
        tru.sub(this.refCentre).div(TEACHER_TEMP).softmax(-1),
      ]);
      let cls: dd.Tensor | null = null, ref: dd.Tensor | null = null;
      let nCls = 0, nRef = 0;
      for (let iq = 0; iq < GLOBAL_VIEWS; iq++) {
        for (let v = 0; v < V; v++) {
          if (v === iq) continue;
          if (v < GLOBAL_VIEWS) {
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
      const loss = cls!.div(nCls).mul(0.5).add(ref!.div(nRef).mul(0.5));
      dd.noGrad(() => {
        const n = GLOBAL_VIEWS * B;
        const c = tCls.sum(0, { keepdim: true }).div(n);
        this.centre.mul_(CENTER_MOMENTUM).add_(c, 1 - CENTER_MOMENTUM);
        const g = tru.narrow(1, 0, GLOBAL_VIEWS).reshape([n, GLOBAL_VIEWS * M, O]);
        const rc = g.sum(0, { keepdim: true }).div(n).mean(1);
        this.refCentre.mul_(CENTER_MOMENTUM).add_(rc, 1 - CENTER_MOMENTUM);
      });
      return loss;
    });
  }
}

/** Wall time per named phase of a call, accumulated over calls (profiling aid). */
export class Phases {
  readonly ms = new Map<string, number[]>();
  #t = 0;

  /** Starts a call. */
  start(): void {
    this.#t = performance.now();
  }

  /** Ends the phase `name` (the time since the previous mark or start). */
  mark(name: string): void {
    const t = performance.now();
    const xs = this.ms.get(name) ?? [];
    xs.push(t - this.#t);
    this.ms.set(name, xs);
    this.#t = t;
  }

  /** Forgets the calls so far (after warm-up). */
  reset(): void {
    this.ms.clear();
  }

  /** Median ms per phase. */
  medians(): Record<string, number> {
    return Object.fromEntries([...this.ms].map(([k, xs]) => [k, summarize(xs).median]));
  }
}

/** FFI calls per native symbol, counted by wrapping the symbol table (profiling aid). */
export class OpCounter {
  readonly counts = new Map<string, number>();

  /** Wraps every function of the loaded native symbol table with a counter. */
  install(): void {
    const table = native() as unknown as Record<string, unknown>;
    for (const [name, f] of Object.entries(table)) {
      if (typeof f !== "function") continue;
      const fn = f as (...a: unknown[]) => unknown;
      this.counts.set(name, 0);
      table[name] = (...a: unknown[]) => {
        this.counts.set(name, this.counts.get(name)! + 1);
        return fn(...a);
      };
    }
  }

  /** A copy of the current counts. */
  snapshot(): Map<string, number> {
    return new Map(this.counts);
  }

  /** Calls per repetition since `before`, largest first (symbols with no calls left out). */
  since(before: Map<string, number>, reps: number): Record<string, number> {
    const out: [string, number][] = [];
    for (const [k, v] of this.counts) {
      const d = v - (before.get(k) ?? 0);
      if (d > 0) out.push([k, d / reps]);
    }
    out.sort((a, b) => b[1] - a[1]);
    return Object.fromEntries(out);
  }
}

const HELP = `Usage: deno run -A bench/vit_step.ts [flags]

Times one DenseDINO training step (and its forward / forward+backward parts) of a ViT with
reference tokens; ms per call. Comparator: /usr/bin/python3 bench/vit_step.py.

  --variants LIST   comma-separated subset of ${VARIANTS.join(",")},
                    each timed in its own phase (default forward,step)
  --reps N          timed calls per variant (default 5)
  --warmup N        untimed calls per variant first (default 2)
  --threads N|auto  libtorch intra-op threads; auto keeps the library default (default auto)
  --arch NAME       ViT architecture (default vit_tiny)
  --patch-size N    patch side (default 16)
  --img-size N      trained image side: positional grid img/patch square (default 224)
  --view-size N     side of every view (default 96)
  --batch N         images per view (default 16)
  --points N        reference points per (teacher view, view) pair (default 4)
  --out-dim N       head output width (default 4096)
  --drop-path X     student drop-path rate (default 0.1)
  --patch-tokens    also compute the backbones' patch outputs (default: only the class and
                    reference outputs that training uses: patchTokens false)
  --count-ops       count FFI calls per call of each variant (perturbs timings)
  --phases          time the phases of the step variants (teacher backbone, heads, loss,
                    backward, clipping, AdamW, EMA, freeing) and report their medians
  -h, --help        this text`;

function main(): void {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      variants: { type: "string", default: "forward,step" },
      reps: { type: "string", default: "5" },
      warmup: { type: "string", default: "2" },
      threads: { type: "string", default: "auto" },
      arch: { type: "string", default: "vit_tiny" },
      "patch-size": { type: "string", default: "16" },
      "img-size": { type: "string", default: "224" },
      "view-size": { type: "string", default: "96" },
      batch: { type: "string", default: "16" },
      points: { type: "string", default: "4" },
      "out-dim": { type: "string", default: "4096" },
      "drop-path": { type: "string", default: "0.1" },
      "patch-tokens": { type: "boolean", default: false },
      "count-ops": { type: "boolean", default: false },
      phases: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  const variants = parseVariants(values.variants, VARIANTS);
  const reps = positiveInt(values.reps, "reps");
  const warmup = Number(values.warmup);
  if (!Number.isInteger(warmup) || warmup < 0) throw new Error("--warmup must be >= 0");
  const threads = parseThreads(values.threads);
  const dropPath = Number(values["drop-path"]);
  if (!(dropPath >= 0 && dropPath < 1)) throw new Error("--drop-path must be in [0, 1)");
  const w: Workload = {
    arch: values.arch,
    patchSize: positiveInt(values["patch-size"], "patch-size"),
    imgSize: positiveInt(values["img-size"], "img-size"),
    viewSize: positiveInt(values["view-size"], "view-size"),
    batch: positiveInt(values.batch, "batch"),
    points: positiveInt(values.points, "points"),
    outDim: positiveInt(values["out-dim"], "out-dim"),
    dropPath,
    patchTokens: values["patch-tokens"],
  };

  if (threads !== null) dd.setNumThreads(threads);
  const counter = values["count-ops"] ? new OpCounter() : null;
  counter?.install();
  const bench = new VitStep(w);
  const live0 = dd.liveTensors();
  const samples: Record<string, number[]> = {};
  const rss: Record<string, number | null> = {};
  const startRss: Record<string, number | null> = {};
  const ops: Record<string, Record<string, number>> = {};
  const phaseMs: Record<string, Record<string, number>> = {};
  for (const v of variants) {
    resetPeakRss();
    startRss[v] = rssMiB();
    bench.phases = values.phases && v.startsWith("step") ? new Phases() : null;
    for (let i = 0; i < warmup; i++) bench.run(v);
    bench.phases?.reset();
    const before = counter?.snapshot();
    const xs: number[] = [];
    for (let i = 0; i < reps; i++) {
      const t0 = performance.now();
      bench.run(v);
      xs.push(performance.now() - t0);
    }
    samples[v] = xs;
    rss[v] = peakRssMiB();
    if (counter && before) ops[v] = counter.since(before, reps);
    if (bench.phases) {
      phaseMs[v] = bench.phases.medians();
      console.error(
        `[vit_step densedino] ${v} phases (median ms): ` +
          Object.entries(phaseMs[v]).map(([k, x]) => `${k} ${fmt(x, 1)}`).join(", "),
      );
    }
    const s = summarize(xs);
    const total = counter ? Object.values(ops[v]).reduce((a, b) => a + b, 0) : 0;
    console.error(
      `[vit_step densedino] ${v}: median ${fmt(s.median, 1)} ms (min ${fmt(s.min, 1)}, ` +
        `max ${fmt(s.max, 1)}, n ${s.n}), peak RSS ${fmt(rss[v] ?? NaN, 0)} MiB ` +
        `(${fmt(startRss[v] ?? NaN, 0)} at the start)` +
        (counter ? `, ${total} FFI calls per call` : ""),
    );
  }
  const leaked = dd.liveTensors() - live0;
  if (leaked !== 0) console.error(`[vit_step densedino] WARNING: ${leaked} tensors leaked`);

  const report: BenchReport & { ffiCallsPerCall?: typeof ops; phasesMs?: typeof phaseMs } = {
    bench: "vit_step",
    side: "densedino",
    unit: "ms",
    versions: { deno: Deno.version.deno, v8: Deno.version.v8, libtorch: dd.torchVersion() },
    threads: threadInfo(dd.getNumThreads()),
    libraries: loadedLibraries(),
    params: {
      ...w,
      patchTokens: String(w.patchTokens ?? false),
      reps,
      warmup,
      attention: "library default (*_split: fastPath true, *_explicit: fastPath false)",
      hasScaledDotProductAttention: String(dd.hasScaledDotProductAttention()),
      leakedTensors: leaked,
    },
    samples,
    peakRssMiB: rss,
    startRssMiB: startRss,
    primary: "step",
  };
  if (counter) report.ffiCallsPerCall = ops;
  if (values.phases) report.phasesMs = phaseMs;
  emit(report);
}

if (import.meta.main) main();
