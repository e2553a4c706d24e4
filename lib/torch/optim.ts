/**
 * Optimisers and per-parameter loops. Each operation over a list of parameters is a single
 * native call (libtorch's `_foreach_*` kernels or one C++ loop), never one FFI call per tensor.
 *
 * @module
 */
import { native } from "./ffi.ts";
import { TorchError } from "./errors.ts";
import { keep } from "./memory.ts";
import { zerosLike } from "./creation.ts";
import { fail, Tensor } from "./tensor.ts";

function handles(ts: readonly Tensor[], op: string): Uint32Array {
  const out = new Uint32Array(ts.length);
  for (let i = 0; i < ts.length; i++) {
    const t = ts[i];
    if (!(t instanceof Tensor)) throw new TorchError(op, `parameter ${i} is not a Tensor`);
    out[i] = t.handle(op);
  }
  return out;
}

/**
 * Throws when a tensor of a cached handle list was freed (or its handle changed) since the
 * list was built: the native side then never sees a stale handle.
 */
function assertLive(ts: readonly Tensor[], cached: Uint32Array, op: string, what: string): void {
  for (let i = 0; i < ts.length; i++) {
    if (ts[i]._h !== cached[i]) {
      throw new TorchError(
        op,
        `${what} ${i} was freed after the optimiser was created (use after free())`,
      );
    }
  }
}

function check(s: number, op: string, ts: readonly Tensor[] = []): number {
  if (s < 0) fail(op, ts.filter((t) => t._h === 0));
  return s;
}

/**
 * teacher ← m·teacher + (1 − m)·student for every pair, without autograd (the DINO teacher
 * update). Lists must align.
 */
export function emaUpdate(
  teacher: readonly Tensor[],
  student: readonly Tensor[],
  momentum: number,
): void {
  if (teacher.length !== student.length) {
    throw new TorchError(
      "emaUpdate",
      `teacher has ${teacher.length} tensors, student ${student.length}`,
    );
  }
  check(
    native().dd_ema_(
      handles(teacher, "emaUpdate"),
      handles(student, "emaUpdate"),
      teacher.length,
      momentum,
    ),
    "emaUpdate",
    [...teacher, ...student],
  );
}

/**
 * Clips each parameter's gradient separately to norm ≤ maxNorm (coefficient
 * maxNorm / (norm + 1e-6), applied when below 1), as the official DINO `clip_gradients`.
 * Returns the norms before clipping (float32, one per parameter that has a gradient).
 */
export function clipGradNorms(params: readonly Tensor[], maxNorm: number): Tensor {
  const out = new Uint32Array(1);
  check(
    native().dd_clip_grad_norms_(handles(params, "clipGradNorms"), params.length, maxNorm, out),
    "clipGradNorms",
    params,
  );
  return new Tensor(out[0]);
}

/** Clips the global gradient norm (torch.nn.utils.clip_grad_norm_); returns the total norm. */
export function clipGradNormTotal(params: readonly Tensor[], maxNorm: number): Tensor {
  const out = new Uint32Array(1);
  check(
    native().dd_clip_grad_norm_total_(
      handles(params, "clipGradNormTotal"),
      params.length,
      maxNorm,
      out,
    ),
    "clipGradNormTotal",
    params,
  );
  return new Tensor(out[0]);
}

/** Drops (setToNone, as `p.grad = None`) or zeroes the gradients of `params`. */
export function zeroGrads(params: readonly Tensor[], setToNone = true): void {
  check(
    native().dd_zero_grads(handles(params, "zeroGrads"), params.length, setToNone ? 1 : 0),
    "zeroGrads",
    params,
  );
}

/** A parameter group: its own learning rate and weight decay, changeable every iteration. */
export interface ParamGroup {
  /** the parameters of the group */
  params: Tensor[];
  /** learning rate (default: the optimiser's) */
  lr?: number;
  /** weight decay (default: the optimiser's) */
  weightDecay?: number;
  /** a label for logs and state dicts */
  name?: string;
}

/** A parameter group as the optimiser holds it (lr / weightDecay writable). */
export interface LiveGroup {
  /** the parameters of the group */
  readonly params: readonly Tensor[];
  /** learning rate used by the next step */
  lr: number;
  /** weight decay used by the next step */
  weightDecay: number;
  /** the group's label (default "group{i}") */
  readonly name: string;
}

/** Options of {@link AdamW}; defaults are torch.optim.AdamW's. */
export interface AdamWOptions {
  /** learning rate (default 1e-3) */
  lr?: number;
  /** decay rates of the first and second moment averages (default [0.9, 0.999]) */
  betas?: [number, number];
  /** term added to the denominator for numerical stability (default 1e-8) */
  eps?: number;
  /** decoupled weight decay coefficient (default 1e-2) */
  weightDecay?: number;
}

/** Optimiser state as tensors (for safetensors) plus JSON-able numbers. */
export interface OptimizerState {
  /** state tensors by name */
  tensors: Record<string, Tensor>;
  /** hyper-parameters, groups and step counts (JSON-serialisable) */
  meta: Record<string, unknown>;
}

function toGroups(p: Tensor[] | ParamGroup[]): ParamGroup[] {
  if (p.length === 0) return [];
  return p[0] instanceof Tensor ? [{ params: p as Tensor[] }] : (p as ParamGroup[]);
}

// As torch.optim: a parameter may appear only once. Group names key the state dict, so they
// must be unique too (two groups called "x" would overwrite each other's moments on save).
function checkGroups(groups: readonly LiveGroup[], op: string): void {
  const seen = new Map<number, string>();
  const names = new Set<string>();
  groups.forEach((g, gi) => {
    if (names.has(g.name)) throw new TorchError(op, `two parameter groups are named "${g.name}"`);
    names.add(g.name);
    g.params.forEach((p, i) => {
      const h = p.handle(op);
      const prev = seen.get(h);
      if (prev !== undefined) {
        throw new TorchError(
          op,
          `parameter ${i} of group ${gi} ("${g.name}") already appears as ${prev}; ` +
            "a parameter may be listed only once",
        );
      }
      seen.set(h, `parameter ${i} of group ${gi} ("${g.name}")`);
    });
  });
}

/**
 * AdamW (torch.optim.AdamW, amsgrad off) over parameter groups. Set `groups[i].lr` and
 * `groups[i].weightDecay` before each `step()` to follow a schedule. Parameters without a
 * gradient are skipped, as in PyTorch (their step count does not advance). The state
 * (moments and per-parameter step counts) round-trips exactly through
 * {@link stateDict} / {@link loadStateDict}.
 */
export class AdamW {
  /** the parameter groups; set their lr / weightDecay to follow a schedule */
  readonly groups: LiveGroup[];
  /** decay rates of the first and second moment averages */
  readonly betas: [number, number];
  /** term added to the denominator for numerical stability */
  readonly eps: number;
  #handles: Uint32Array[];
  #m: Tensor[][];
  #v: Tensor[][];
  #mh: Uint32Array[];
  #vh: Uint32Array[];
  #steps: Float64Array[];

  /** An optimiser over `params` (one group) or parameter groups, with zeroed moments. */
  constructor(params: Tensor[] | ParamGroup[], opts: AdamWOptions = {}) {
    const lr = opts.lr ?? 1e-3;
    const wd = opts.weightDecay ?? 1e-2;
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    const [b1, b2] = this.betas;
    if (!(b1 >= 0 && b1 < 1 && b2 >= 0 && b2 < 1)) {
      throw new TorchError("AdamW", `betas must be in [0, 1), got [${b1}, ${b2}]`);
    }
    this.groups = toGroups(params).map((g, i) => ({
      params: [...g.params],
      lr: g.lr ?? lr,
      weightDecay: g.weightDecay ?? wd,
      name: g.name ?? `group${i}`,
    }));
    this.#handles = this.groups.map((g) => handles(g.params, "AdamW"));
    checkGroups(this.groups, "AdamW");
    this.#m = this.groups.map((g) => g.params.map((p) => keep(zerosLike(p))));
    this.#v = this.groups.map((g) => g.params.map((p) => keep(zerosLike(p))));
    this.#mh = this.#m.map((ts) => handles(ts, "AdamW"));
    this.#vh = this.#v.map((ts) => handles(ts, "AdamW"));
    this.#steps = this.groups.map((g) => new Float64Array(g.params.length));
  }

  /** One update of every group with its current lr and weight decay. */
  step(): void {
    const n = native();
    for (let g = 0; g < this.groups.length; g++) {
      const grp = this.groups[g];
      assertLive(grp.params, this.#handles[g], "AdamW.step", `parameter of ${grp.name}`);
      assertLive(this.#m[g], this.#mh[g], "AdamW.step", `state (exp_avg) of ${grp.name}`);
      assertLive(this.#v[g], this.#vh[g], "AdamW.step", `state (exp_avg_sq) of ${grp.name}`);
      check(
        n.dd_adamw_step(
          this.#handles[g],
          this.#mh[g],
          this.#vh[g],
          this.#steps[g],
          grp.params.length,
          grp.lr,
          this.betas[0],
          this.betas[1],
          this.eps,
          grp.weightDecay,
        ),
        "AdamW.step",
        grp.params,
      );
    }
  }

  /** Drops (default) or zeroes every parameter's gradient. */
  zeroGrad(setToNone = true): void {
    for (const g of this.groups) zeroGrads(g.params, setToNone);
  }

  /** Step count of parameter `i` of group `g`. */
  stepCount(g = 0, i = 0): number {
    return this.#steps[g][i];
  }

  /**
   * The state: tensors `"{group}.{i}.exp_avg"`, `"{group}.{i}.exp_avg_sq"` (views of the live
   * state; do not free) and `"{group}.steps"` (float64, a new tensor), plus meta numbers.
   */
  stateDict(): OptimizerState {
    const tensors: Record<string, Tensor> = {};
    this.groups.forEach((grp, g) => {
      grp.params.forEach((_, i) => {
        tensors[`${grp.name}.${i}.exp_avg`] = this.#m[g][i];
        tensors[`${grp.name}.${i}.exp_avg_sq`] = this.#v[g][i];
      });
    });
    return {
      tensors,
      meta: {
        betas: this.betas,
        eps: this.eps,
        groups: this.groups.map((g, i) => ({
          name: g.name,
          lr: g.lr,
          weightDecay: g.weightDecay,
          size: g.params.length,
          steps: Array.from(this.#steps[i]),
        })),
      },
    };
  }

  /** Restores a state from {@link stateDict} (same groups and shapes), copying the moments. */
  loadStateDict(state: OptimizerState): void {
    const groups = (state.meta.groups ?? []) as {
      name: string;
      lr: number;
      weightDecay: number;
      size: number;
      steps: number[];
    }[];
    if (groups.length !== this.groups.length) {
      throw new TorchError(
        "AdamW.loadStateDict",
        `state has ${groups.length} groups, optimiser ${this.groups.length}`,
      );
    }
    groups.forEach((sg, g) => {
      const grp = this.groups[g];
      if (
        sg.name !== grp.name || sg.size !== grp.params.length ||
        sg.steps.length !== grp.params.length
      ) {
        throw new TorchError(
          "AdamW.loadStateDict",
          `group ${g}: state "${sg.name}" with ${sg.size} parameters does not match "${grp.name}" with ${grp.params.length}`,
        );
      }
    });
    groups.forEach((sg, g) => {
      const grp = this.groups[g];
      for (let i = 0; i < grp.params.length; i++) {
        for (
          const [kind, dst] of [["exp_avg", this.#m[g][i]], ["exp_avg_sq", this.#v[g][i]]] as const
        ) {
          const key = `${grp.name}.${i}.${kind}`;
          const src = state.tensors[key];
          if (!src) throw new TorchError("AdamW.loadStateDict", `missing tensor "${key}"`);
          const a = src.shape, b = dst.shape;
          if (a.length !== b.length || a.some((s, k) => s !== b[k])) {
            throw new TorchError(
              "AdamW.loadStateDict",
              `"${key}" has shape [${a}], expected [${b}]`,
            );
          }
          dst.copy_(src);
        }
      }
      this.#steps[g].set(sg.steps);
      grp.lr = sg.lr;
      grp.weightDecay = sg.weightDecay;
    });
  }

  /** Frees the optimiser state. */
  free(): void {
    for (const ts of [...this.#m, ...this.#v]) for (const t of ts) t.free();
  }
}

/** Options of {@link SGD}; defaults are torch.optim.SGD's. */
export interface SGDOptions {
  /** learning rate (required) */
  lr: number;
  /** momentum factor (default 0: none) */
  momentum?: number;
  /** dampening of the momentum (default 0) */
  dampening?: number;
  /** L2 penalty added to the gradient (default 0) */
  weightDecay?: number;
  /** use Nesterov momentum (default false; needs momentum > 0 and zero dampening) */
  nesterov?: boolean;
}

/** SGD with momentum / weight decay / Nesterov (torch.optim.SGD), e.g. for linear probes. */
export class SGD {
  /** the parameter groups; set their lr / weightDecay to follow a schedule */
  readonly groups: LiveGroup[];
  /** momentum factor */
  readonly momentum: number;
  /** dampening of the momentum */
  readonly dampening: number;
  /** whether Nesterov momentum is used */
  readonly nesterov: boolean;
  #handles: Uint32Array[];
  #bufs: Uint32Array[];

  /** An optimiser over `params` (one group) or parameter groups. */
  constructor(params: Tensor[] | ParamGroup[], opts: SGDOptions) {
    this.momentum = opts.momentum ?? 0;
    this.dampening = opts.dampening ?? 0;
    this.nesterov = opts.nesterov ?? false;
    if (this.nesterov && (this.momentum <= 0 || this.dampening !== 0)) {
      throw new TorchError("SGD", "Nesterov momentum requires a momentum and zero dampening");
    }
    this.groups = toGroups(params).map((g, i) => ({
      params: [...g.params],
      lr: g.lr ?? opts.lr,
      weightDecay: g.weightDecay ?? opts.weightDecay ?? 0,
      name: g.name ?? `group${i}`,
    }));
    this.#handles = this.groups.map((g) => handles(g.params, "SGD"));
    checkGroups(this.groups, "SGD");
    this.#bufs = this.groups.map((g) => new Uint32Array(g.params.length));
  }

  /** One update of every group. */
  step(): void {
    const n = native();
    for (let g = 0; g < this.groups.length; g++) {
      const grp = this.groups[g];
      assertLive(grp.params, this.#handles[g], "SGD.step", `parameter of ${grp.name}`);
      check(
        n.dd_sgd_step(
          this.#handles[g],
          this.#bufs[g],
          grp.params.length,
          grp.lr,
          this.momentum,
          this.dampening,
          grp.weightDecay,
          this.nesterov ? 1 : 0,
        ),
        "SGD.step",
        grp.params,
      );
    }
  }

  /** Drops (default) or zeroes every parameter's gradient. */
  zeroGrad(setToNone = true): void {
    for (const g of this.groups) zeroGrads(g.params, setToNone);
  }

  /** Frees the momentum buffers. */
  free(): void {
    for (const b of this.#bufs) {
      for (let i = 0; i < b.length; i++) {
        if (b[i] !== 0) native().dd_free(b[i]);
        b[i] = 0;
      }
    }
  }
}
