/**
 * Finite-difference gradient checking, in the spirit of `torch.autograd.gradcheck`.
 *
 * For a function `fn(...inputs) → out` of float64 tensors, the analytical gradient of
 * `L = Σ out · w` (w a fixed random tensor) with respect to each checked input is taken from
 * libtorch's autograd and compared element by element with the central difference
 * `(L(x + ε·eᵢ) − L(x − ε·eᵢ)) / 2ε`. An element passes when
 * `|analytical − numerical| ≤ atol + rtol·|numerical|` (as `torch.allclose`).
 *
 * Every tensor the check creates is freed before it returns or throws; the caller's inputs are
 * neither modified nor given gradients.
 *
 * @module
 */
import { enableGrad, noGrad } from "./autograd.ts";
import { fromTypedArray, zerosLike } from "./creation.ts";
import { scope } from "./memory.ts";
import { Generator, randn } from "./random.ts";
import { Tensor } from "./tensor.ts";

/** Options of {@link gradcheck} and {@link assertGradcheck}. */
export interface GradcheckOptions {
  /** finite-difference step (default 1e-6) */
  eps?: number;
  /** absolute tolerance (default 1e-5) */
  atol?: number;
  /** relative tolerance (default 1e-3) */
  rtol?: number;
  /**
   * indices of the inputs to check; default: those with `requiresGrad`, or every input when
   * none has it
   */
  wrt?: readonly number[];
  /** seed of the random output weights w (default 0) */
  seed?: number;
}

/** The worst element found in one checked input. */
export interface GradcheckInputReport {
  /** position of the input in the argument list */
  input: number;
  /** shape of that input */
  shape: number[];
  /** largest |analytical − numerical| over its elements */
  maxAbsError: number;
  /** largest |analytical − numerical| / max(|numerical|, 1e-12) over its elements */
  maxRelError: number;
  /** flat (row-major) index of the element with the largest tolerance violation ratio */
  worstFlatIndex: number;
  /** multi-dimensional index of that element */
  worstIndex: number[];
  /** autograd's value there */
  analytical: number;
  /** the finite-difference value there */
  numerical: number;
  /** number of elements outside the tolerance */
  failures: number;
}

/** Result of {@link gradcheck}. */
export interface GradcheckResult {
  /** true when every element of every checked input is within tolerance */
  ok: boolean;
  /** largest absolute error over all checked inputs */
  maxAbsError: number;
  /** largest relative error over all checked inputs */
  maxRelError: number;
  /** one report per checked input */
  inputs: GradcheckInputReport[];
  /** a human-readable summary naming the worst input and element */
  message: string;
}

/** Thrown by {@link assertGradcheck} when analytical and numerical gradients disagree. */
export class GradcheckError extends Error {
  /** the full comparison */
  readonly result: GradcheckResult;
  /** Wraps a failed {@link GradcheckResult}; the message is its summary. */
  constructor(result: GradcheckResult) {
    super(result.message);
    this.name = "GradcheckError";
    this.result = result;
  }
}

function unravel(flat: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length).fill(0);
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = flat % shape[d];
    flat = Math.floor(flat / shape[d]);
  }
  return idx;
}

/**
 * Compares libtorch's analytical gradients of `fn` with central finite differences and returns
 * a report (it does not throw on a mismatch; see {@link assertGradcheck}).
 *
 * `fn` must be deterministic and built from differentiable tensor operations; every input must
 * be float64 (float32 finite differences are too coarse to mean anything). Tensors created by
 * `fn` are freed by the check.
 *
 * @example
 * const a = randn([3, 4], { dtype: "float64" }), b = randn([4, 2], { dtype: "float64" });
 * const r = gradcheck((x, y) => x.matmul(y), [a, b]);
 * console.log(r.ok, r.maxAbsError);
 */
export function gradcheck(
  fn: (...inputs: Tensor[]) => Tensor,
  inputs: readonly Tensor[],
  opts: GradcheckOptions = {},
): GradcheckResult {
  const eps = opts.eps ?? 1e-6;
  const atol = opts.atol ?? 1e-5;
  const rtol = opts.rtol ?? 1e-3;
  if (!(eps > 0)) throw new RangeError(`gradcheck: eps must be positive, got ${eps}`);
  if (inputs.length === 0) throw new TypeError("gradcheck: no inputs given");
  inputs.forEach((x, i) => {
    if (!(x instanceof Tensor)) throw new TypeError(`gradcheck: input ${i} is not a Tensor`);
    if (x.dtype !== "float64") {
      throw new TypeError(`gradcheck: input ${i} is ${x.dtype}; finite differences need float64`);
    }
  });
  let wrt = opts.wrt ? [...opts.wrt] : inputs.flatMap((x, i) => (x.requiresGrad ? [i] : []));
  if (wrt.length === 0) wrt = inputs.map((_, i) => i);
  for (const i of wrt) {
    if (!Number.isInteger(i) || i < 0 || i >= inputs.length) {
      throw new RangeError(`gradcheck: wrt index ${i} out of range for ${inputs.length} inputs`);
    }
  }

  using gen = new Generator(opts.seed ?? 0);
  const reports = scope(() => {
    // detached copies: the caller's tensors are never touched
    const base = inputs.map((x) => x.detach().clone());
    const values = base.map((x) => x.toTypedArray() as Float64Array);
    const shapes = base.map((x) => x.shape);

    // analytical: backward of Σ out·w
    const leaves = base.map((x, i) => (wrt.includes(i) ? x.detach().requiresGrad_(true) : x));
    const { analytic, weights } = enableGrad(() => {
      const out = fn(...leaves);
      if (!(out instanceof Tensor)) throw new TypeError("gradcheck: fn must return a Tensor");
      if (out.dtype !== "float64") {
        throw new TypeError(`gradcheck: fn returned ${out.dtype}; it must return float64`);
      }
      const weights = randn(out.shape, { dtype: "float64", generator: gen });
      if (out.requiresGrad) out.mul(weights).sum().backward();
      const analytic = wrt.map((i) => {
        const g = leaves[i].grad ?? zerosLike(leaves[i]);
        return g.toTypedArray() as Float64Array;
      });
      return { analytic, weights };
    });

    // numerical: central differences, one element at a time
    const evalAt = (which: number, data: Float64Array): Tensor => {
      const args = base.map((x, i) => (i === which ? fromTypedArray(data, shapes[i]) : x));
      return fn(...args);
    };
    return noGrad(() =>
      wrt.map((i, k): GradcheckInputReport => {
        const x = values[i].slice();
        const a = analytic[k];
        const rep: GradcheckInputReport = {
          input: i,
          shape: shapes[i],
          maxAbsError: 0,
          maxRelError: 0,
          worstFlatIndex: -1,
          worstIndex: [],
          analytical: NaN,
          numerical: NaN,
          failures: 0,
        };
        let worstRatio = -1;
        for (let j = 0; j < x.length; j++) {
          const x0 = x[j];
          const num = scope(() => {
            x[j] = x0 + eps;
            const plus = evalAt(i, x);
            x[j] = x0 - eps;
            const minus = evalAt(i, x);
            x[j] = x0;
            return plus.sub(minus).mul(weights).sum().item() / (2 * eps);
          });
          const err = Math.abs(a[j] - num);
          const rel = err / Math.max(Math.abs(num), 1e-12);
          const ratio = err / (atol + rtol * Math.abs(num));
          if (!(ratio <= 1)) rep.failures++;
          if (err > rep.maxAbsError || Number.isNaN(err)) rep.maxAbsError = err;
          if (rel > rep.maxRelError || Number.isNaN(rel)) rep.maxRelError = rel;
          if (ratio > worstRatio || (Number.isNaN(ratio) && !Number.isNaN(worstRatio))) {
            worstRatio = Number.isNaN(ratio) ? NaN : ratio;
            rep.worstFlatIndex = j;
            rep.worstIndex = unravel(j, shapes[i]);
            rep.analytical = a[j];
            rep.numerical = num;
          }
        }
        return rep;
      })
    );
  });

  const ok = reports.every((r) => r.failures === 0);
  const maxAbsError = Math.max(0, ...reports.map((r) => r.maxAbsError));
  const maxRelError = Math.max(0, ...reports.map((r) => r.maxRelError));
  const lines = reports.map((r) =>
    `  input ${r.input} [${r.shape.join(", ")}]: max abs error ${
      r.maxAbsError.toExponential(3)
    }, ` +
    `max rel error ${r.maxRelError.toExponential(3)}, ${r.failures} element(s) out of tolerance` +
    (r.worstFlatIndex >= 0
      ? `; worst at [${
        r.worstIndex.join(", ")
      }]: analytical ${r.analytical}, numerical ${r.numerical}`
      : "")
  );
  const worst = reports.find((r) => r.failures > 0);
  const message =
    (ok
      ? `gradcheck passed (eps ${eps}, atol ${atol}, rtol ${rtol})`
      : `gradcheck failed for input ${worst!.input} at [${worst!.worstIndex.join(", ")}]: ` +
        `analytical ${worst!.analytical} vs numerical ${worst!.numerical} ` +
        `(eps ${eps}, atol ${atol}, rtol ${rtol})`) + "\n" + lines.join("\n");
  return { ok, maxAbsError, maxRelError, inputs: reports, message };
}

/**
 * Like {@link gradcheck} but throws a {@link GradcheckError} (whose message names the input,
 * the element and both values) when any element is out of tolerance; returns the result
 * otherwise.
 */
export function assertGradcheck(
  fn: (...inputs: Tensor[]) => Tensor,
  inputs: readonly Tensor[],
  opts: GradcheckOptions = {},
): GradcheckResult {
  const r = gradcheck(fn, inputs, opts);
  if (!r.ok) throw new GradcheckError(r);
  return r;
}
