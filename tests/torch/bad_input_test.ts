/**
 * Bad input never crashes the process: at least 1,000 seeded, randomized invalid calls through
 * the public API each throw, and the native and JS live-handle counts are unchanged afterwards.
 *
 * Expected error classes:
 *   - `TorchError` for every operation failure, whether libtorch rejects the call (its message
 *     carried) or the binding rejects it first (freed tensors, unknown modes, non-integer sizes);
 *   - `TypeError` where a JS value cannot even be passed to the native function (Deno's FFI
 *     rejects a non-integer number for an int32 dimension argument);
 *   - `RangeError` where `BigInt()` rejects a non-integer generator seed.
 *
 * Reproduce a failing run with `DD_BAD_INPUT_SEED=<seed>` (printed in the failure message).
 */
import assert from "node:assert/strict";
import * as dd from "../../mod.ts";
import { type Tensor, TorchError } from "../../mod.ts";

// ---- a small seeded PRNG (mulberry32) ----------------------------------------------------

class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  /** uniform in [0, 1) */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** integer in [lo, hi] */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)];
  }
  bool(): boolean {
    return this.next() < 0.5;
  }
  /** a shape of `nd` sizes in [lo, hi] */
  shape(nd: number, lo = 1, hi = 4): number[] {
    return Array.from({ length: nd }, () => this.int(lo, hi));
  }
  /** a size in [lo, hi] different from `not` */
  other(not: number, lo = 1, hi = 6): number {
    let v = this.int(lo, hi - 1);
    if (v >= not) v++;
    return v;
  }
  /** a dimension index out of range for an `nd`-D tensor (valid: -nd .. nd-1) */
  badDim(nd: number): number {
    return this.bool() ? nd + this.int(0, 3) : -nd - 1 - this.int(0, 3);
  }
  /** a valid dimension index for an `nd`-D tensor */
  dim(nd: number): number {
    return this.int(-nd, nd - 1);
  }
}

// ---- cases ---------------------------------------------------------------------------------

type ErrorClass = typeof TorchError | TypeErrorConstructor | RangeErrorConstructor;
type Tmp = <T extends Tensor>(t: T) => T;

interface Case {
  category: Category;
  name: string;
  /** the class every failure of this case must be (default TorchError) */
  expect?: ErrorClass;
  /** a pattern the message must match */
  message?: RegExp;
  /** makes one randomized invalid call; tensors it needs go through `tmp` (freed after) */
  run(r: Rng, tmp: Tmp): unknown;
}

type Category =
  | "shape mismatch"
  | "dim out of range"
  | "wrong dtype"
  | "bad size"
  | "freed tensor"
  | "empty tensor"
  | "index out of range"
  | "invalid option"
  | "generator / optimizer / autograd misuse";

const FREED = /free/i;
const cudaAvailable = dd.cuda.isAvailable();

const rn = (tmp: Tmp, shape: number[]) => tmp(dd.randn(shape));
const ints = (tmp: Tmp, values: number[], shape?: number[]) =>
  tmp(dd.tensor(values, { dtype: "int64", shape: shape ?? [values.length] }));
/** a shape of nd sizes in [1, 4] */
const nd14 = (r: Rng) => r.int(1, 4);

const binaryOps = [
  "add",
  "sub",
  "mul",
  "div",
  "maximum",
  "minimum",
  "eq",
  "lt",
  "ge",
  "pow",
  "remainder",
  "atan2",
] as const;

function binary(a: Tensor, op: typeof binaryOps[number], b: Tensor): Tensor {
  return a[op](b);
}

const cases: Case[] = [
  // ---- mismatched shapes -------------------------------------------------------------------
  {
    category: "shape mismatch",
    name: "matmul [m,k]x[k2,n]",
    message: /matmul/,
    run(r, tmp) {
      const k = r.int(1, 6);
      return rn(tmp, [r.int(1, 5), k]).matmul(rn(tmp, [r.other(k), r.int(1, 5)]));
    },
  },
  {
    category: "shape mismatch",
    name: "matmul batch broadcast",
    run(r, tmp) {
      const b = r.int(2, 4);
      return dd.matmul(rn(tmp, [b, 2, 3]), rn(tmp, [r.other(b, 2, 5), 3, 2]));
    },
  },
  {
    category: "shape mismatch",
    name: "matmul of a 0-D tensor",
    run(r, tmp) {
      return tmp(dd.scalarTensor(r.next())).matmul(rn(tmp, [3]));
    },
  },
  {
    category: "shape mismatch",
    name: "bmm",
    run(r, tmp) {
      const k = r.int(1, 5);
      switch (r.int(0, 2)) {
        case 0:
          return rn(tmp, [2, 3, k]).bmm(rn(tmp, [2, r.other(k), 4]));
        case 1:
          return rn(tmp, [2, 3, k]).bmm(rn(tmp, [r.other(2), k, 4]));
        default:
          return rn(tmp, [3, k]).bmm(rn(tmp, [k, 4]));
      }
    },
  },
  {
    category: "shape mismatch",
    name: "broadcasting binary op",
    run(r, tmp) {
      const nd = nd14(r);
      const s = r.shape(nd, 2, 5);
      const t = [...s];
      const d = r.int(0, nd - 1);
      t[d] = r.other(s[d], 2, 6);
      return binary(rn(tmp, s), r.pick(binaryOps), rn(tmp, t));
    },
  },
  {
    category: "shape mismatch",
    name: "in-place op whose result would need a bigger self",
    run(r, tmp) {
      const n = r.int(2, 4);
      const a = rn(tmp, [n]);
      const b = rn(tmp, [r.int(2, 3), n]);
      return r.bool() ? a.add_(b) : a.mul_(b);
    },
  },
  {
    category: "shape mismatch",
    name: "copy_ from a non-broadcastable source",
    run(r, tmp) {
      const n = r.int(2, 5);
      return rn(tmp, [3, n]).copy_(rn(tmp, [3, r.other(n, 2, 6)]));
    },
  },
  {
    category: "shape mismatch",
    name: "cat of mismatched shapes",
    run(r, tmp) {
      const nd = r.int(2, 4);
      const s = r.shape(nd, 2, 4);
      const t = [...s];
      const dim = r.int(0, nd - 1);
      const other = (dim + r.int(1, nd - 1)) % nd;
      t[other] = r.other(s[other], 2, 5);
      return dd.cat([rn(tmp, s), rn(tmp, t)], dim);
    },
  },
  {
    category: "shape mismatch",
    name: "cat of tensors with different ranks / of 0-D tensors / of nothing",
    run(r, tmp) {
      switch (r.int(0, 2)) {
        case 0:
          return dd.cat([rn(tmp, [2, 3]), rn(tmp, [2, 3, 1])]);
        case 1:
          return dd.cat([tmp(dd.scalarTensor(1)), tmp(dd.scalarTensor(2))]);
        default:
          return dd.cat([]);
      }
    },
  },
  {
    category: "shape mismatch",
    name: "stack of mismatched shapes",
    run(r, tmp) {
      const s = r.shape(r.int(1, 3), 2, 4);
      const t = [...s];
      t[0] = r.other(s[0], 2, 5);
      return dd.stack([rn(tmp, s), rn(tmp, t)], r.int(0, s.length));
    },
  },
  {
    category: "shape mismatch",
    name: "linear",
    run(r, tmp) {
      const fin = r.int(2, 6), fout = r.int(1, 5);
      if (r.bool()) return dd.linear(rn(tmp, [3, fin]), rn(tmp, [fout, r.other(fin, 2, 7)]));
      return dd.linear(rn(tmp, [3, fin]), rn(tmp, [fout, fin]), rn(tmp, [r.other(fout, 2, 7)]));
    },
  },
  {
    category: "shape mismatch",
    name: "conv2d",
    run(r, tmp) {
      const c = r.int(1, 4);
      switch (r.int(0, 3)) {
        case 0: // channel mismatch
          return dd.conv2d(rn(tmp, [1, c, 6, 6]), rn(tmp, [2, r.other(c), 3, 3]));
        case 1: // kernel larger than the (unpadded) input
          return dd.conv2d(rn(tmp, [1, c, 3, 3]), rn(tmp, [2, c, r.int(4, 6), 4]));
        case 2: // 3-D weight
          return dd.conv2d(rn(tmp, [1, c, 6, 6]), rn(tmp, [2, c, 3]));
        default: // bias of the wrong size
          return dd.conv2d(rn(tmp, [1, c, 6, 6]), rn(tmp, [2, c, 3, 3]), rn(tmp, [r.other(2)]));
      }
    },
  },
  {
    category: "shape mismatch",
    name: "layerNorm",
    run(r, tmp) {
      const n = r.int(2, 6);
      const x = rn(tmp, [3, n]);
      if (r.bool()) return dd.layerNorm(x, [r.other(n, 2, 7)]);
      return dd.layerNorm(x, [n], rn(tmp, [r.other(n, 2, 7)]));
    },
  },
  {
    category: "shape mismatch",
    name: "crossEntropy target batch",
    run(r, tmp) {
      const n = r.int(1, 5);
      const m = r.other(n);
      return dd.crossEntropy(rn(tmp, [n, 4]), ints(tmp, Array(m).fill(1)));
    },
  },
  {
    category: "shape mismatch",
    name: "gridSample grid",
    run(r, tmp) {
      const n = r.int(1, 3);
      const x = rn(tmp, [n, 2, 5, 5]);
      switch (r.int(0, 2)) {
        case 0:
          return dd.gridSample(x, rn(tmp, [r.other(n, 1, 4), 3, 3, 2]));
        case 1:
          return dd.gridSample(x, rn(tmp, [n, 3, 3, r.pick([1, 3, 4])]));
        default:
          return dd.gridSample(x, rn(tmp, [n, 3, 2]));
      }
    },
  },
  {
    category: "shape mismatch",
    name: "interpolate on a non-4-D input",
    run(r, tmp) {
      const nd = r.pick([1, 2, 3, 5]);
      return dd.interpolate(rn(tmp, r.shape(nd, 2, 4)), { size: [4, 4], mode: "bilinear" });
    },
  },
  {
    category: "shape mismatch",
    name: "where / maskedFill broadcasting",
    run(r, tmp) {
      const n = r.int(2, 4);
      const x = rn(tmp, [3, n]);
      const cond = tmp(rn(tmp, [3, r.other(n, 2, 6)]).gt(0));
      return r.bool() ? dd.where(cond, x, x) : x.maskedFill(cond, 0);
    },
  },
  {
    category: "shape mismatch",
    name: "einsum operand sizes",
    run(r, tmp) {
      const k = r.int(2, 5);
      return dd.einsum("ij,jk->ik", rn(tmp, [2, k]), rn(tmp, [r.other(k, 2, 6), 3]));
    },
  },
  {
    category: "shape mismatch",
    name: "expand to an incompatible shape",
    run(r, tmp) {
      const n = r.int(2, 4);
      return rn(tmp, [n, 3]).expand([r.other(n, 2, 6), 3]);
    },
  },
  {
    category: "shape mismatch",
    name: "weightNorm with a g of the wrong shape",
    run(r, tmp) {
      const n = r.int(2, 40);
      return dd.weightNorm(rn(tmp, [n, 3]), rn(tmp, r.pick([[1], [r.other(n, 1, 50), 1], [n]])));
    },
  },

  // ---- dimensions out of range -------------------------------------------------------------
  {
    category: "dim out of range",
    name: "reduction over a bad dim",
    message: /range/i,
    run(r, tmp) {
      const nd = nd14(r);
      const x = rn(tmp, r.shape(nd));
      const op = r.pick(
        ["sum", "mean", "amax", "amin", "prod", "logsumexp", "all", "any", "var", "std"] as const,
      );
      const dims = r.bool() ? r.badDim(nd) : [r.dim(nd), r.badDim(nd)];
      return x[op](dims);
    },
  },
  {
    category: "dim out of range",
    name: "repeated dims in a reduction",
    run(r, tmp) {
      const nd = r.int(2, 4);
      const x = rn(tmp, r.shape(nd, 2, 3));
      const d = r.int(0, nd - 1);
      const op = r.pick(["sum", "mean", "prod", "all", "any", "amax", "var"] as const);
      return x[op]([d, r.bool() ? d : d - nd]);
    },
  },
  {
    category: "dim out of range",
    name: "softmax / logSoftmax / cumsum / cumprod",
    run(r, tmp) {
      const nd = nd14(r);
      const x = rn(tmp, r.shape(nd));
      return x[r.pick(["softmax", "logSoftmax", "cumsum", "cumprod"] as const)](r.badDim(nd));
    },
  },
  {
    category: "dim out of range",
    name: "transpose",
    run(r, tmp) {
      const nd = nd14(r);
      const x = rn(tmp, r.shape(nd));
      return r.bool() ? x.transpose(r.badDim(nd), r.dim(nd)) : x.transpose(r.dim(nd), r.badDim(nd));
    },
  },
  {
    category: "dim out of range",
    name: "permute with repeated / missing / bad dims",
    run(r, tmp) {
      const nd = r.int(2, 4);
      const x = rn(tmp, r.shape(nd));
      const p = Array.from({ length: nd }, (_, i) => i);
      switch (r.int(0, 2)) {
        case 0:
          p[r.int(1, nd - 1)] = p[0];
          break;
        case 1:
          p.pop();
          break;
        default:
          p[r.int(0, nd - 1)] = r.badDim(nd);
      }
      return x.permute(p);
    },
  },
  {
    category: "dim out of range",
    name: "flip",
    run(r, tmp) {
      const nd = nd14(r);
      const x = rn(tmp, r.shape(nd));
      if (r.bool()) return x.flip([r.badDim(nd)]);
      const d = r.dim(nd);
      return x.flip([d, d]);
    },
  },
  {
    category: "dim out of range",
    name: "narrow out of range",
    run(r, tmp) {
      const nd = nd14(r);
      const s = r.shape(nd, 1, 5);
      const x = rn(tmp, s);
      const d = r.int(0, nd - 1);
      switch (r.int(0, 2)) {
        case 0:
          return x.narrow(r.badDim(nd), 0, 1);
        case 1:
          return x.narrow(d, r.int(0, s[d]), s[d] + 1);
        default:
          return x.narrow(d, 0, -r.int(1, 3));
      }
    },
  },
  {
    category: "dim out of range",
    name: "select out of range",
    run(r, tmp) {
      const nd = nd14(r);
      const s = r.shape(nd, 1, 5);
      const x = rn(tmp, s);
      const d = r.int(0, nd - 1);
      if (r.bool()) return x.select(r.badDim(nd), 0);
      return x.select(d, r.bool() ? s[d] + r.int(0, 3) : -s[d] - 1 - r.int(0, 3));
    },
  },
  {
    category: "dim out of range",
    name: "slice with a bad dim or step",
    run(r, tmp) {
      const nd = nd14(r);
      const x = rn(tmp, r.shape(nd));
      if (r.bool()) return x.slice(r.badDim(nd), 0, 1);
      return x.slice(r.dim(nd), 0, 2, -r.int(0, 2));
    },
  },
  {
    category: "dim out of range",
    name: "squeeze / unsqueeze",
    run(r, tmp) {
      const nd = nd14(r);
      const x = rn(tmp, r.shape(nd));
      if (r.bool()) return x.squeeze(r.badDim(nd));
      return x.unsqueeze(r.bool() ? nd + 1 + r.int(0, 2) : -nd - 2 - r.int(0, 2));
    },
  },
  {
    category: "dim out of range",
    name: "flatten",
    run(r, tmp) {
      const nd = r.int(2, 4);
      const x = rn(tmp, r.shape(nd));
      if (r.bool()) return x.flatten(r.badDim(nd), -1);
      return x.flatten(nd - 1, 0);
    },
  },
  {
    category: "dim out of range",
    name: "maxDim / minDim / argmax / argmin / sort / topk",
    run(r, tmp) {
      const nd = nd14(r);
      const x = rn(tmp, r.shape(nd));
      const d = r.badDim(nd);
      switch (r.int(0, 5)) {
        case 0:
          return x.maxDim(d);
        case 1:
          return x.minDim(d);
        case 2:
          return x.argmax(d);
        case 3:
          return x.argmin(d);
        case 4:
          return x.sort({ dim: d });
        default:
          return x.topk(1, { dim: d });
      }
    },
  },
  {
    category: "dim out of range",
    name: "norm / normalize",
    run(r, tmp) {
      const nd = nd14(r);
      const x = rn(tmp, r.shape(nd));
      return r.bool() ? x.norm(2, r.badDim(nd)) : dd.normalize(x, { dim: r.badDim(nd) });
    },
  },
  {
    category: "dim out of range",
    name: "cat / stack / chunk / split dim",
    run(r, tmp) {
      const nd = nd14(r);
      const s = r.shape(nd, 2, 4);
      const x = rn(tmp, s);
      switch (r.int(0, 3)) {
        case 0:
          return dd.cat([x, x], r.badDim(nd));
        case 1: // stack inserts a dim: valid range is -(nd+1) .. nd
          return dd.stack([x, x], r.bool() ? nd + 1 + r.int(0, 2) : -nd - 2 - r.int(0, 2));
        case 2:
          return x.chunk(2, r.badDim(nd));
        default:
          return x.split([1, 1], r.badDim(nd));
      }
    },
  },
  {
    category: "dim out of range",
    name: "gather / indexSelect / scatter dim",
    run(r, tmp) {
      const nd = r.int(1, 3);
      const x = rn(tmp, r.shape(nd, 2, 3));
      const d = r.badDim(nd);
      switch (r.int(0, 2)) {
        case 0:
          return x.indexSelect(d, ints(tmp, [0]));
        case 1:
          return x.gather(d, ints(tmp, Array(nd).fill(0), Array(nd).fill(1)));
        default:
          return x.scatter(d, ints(tmp, Array(nd).fill(0), Array(nd).fill(1)), 1);
      }
    },
  },
  {
    category: "dim out of range",
    name: "non-integer dimension",
    expect: TypeError, // Deno's FFI rejects a non-integer for an int32 parameter
    run(r, tmp) {
      const x = rn(tmp, [2, 3]);
      const d = r.pick([0.5, 1.25, NaN, Infinity, -0.5]);
      return r.bool() ? x.softmax(d) : x.transpose(0, d);
    },
  },

  // ---- wrong dtypes --------------------------------------------------------------------------
  {
    category: "wrong dtype",
    name: "matmul / bmm / linear int x float",
    run(r, tmp) {
      const a = tmp(dd.ones([2, 3, 3], { dtype: r.pick(["int64", "int32"] as const) }));
      const b = rn(tmp, [2, 3, 3]);
      switch (r.int(0, 2)) {
        case 0:
          return r.bool() ? a.matmul(b) : b.matmul(a);
        case 1:
          return r.bool() ? a.bmm(b) : b.bmm(a);
        default:
          return dd.linear(b, tmp(dd.ones([4, 3], { dtype: "int64" })));
      }
    },
  },
  {
    category: "wrong dtype",
    name: "indexSelect / gather / scatter with float indices",
    run(r, tmp) {
      const x = rn(tmp, [3, 4]);
      const idx = tmp(dd.zeros([1, 4], { dtype: r.pick(["float32", "float64"] as const) }));
      switch (r.int(0, 2)) {
        case 0:
          return x.indexSelect(r.int(0, 1), tmp(idx.flatten()));
        case 1:
          return x.gather(0, idx);
        default:
          return x.scatter(0, idx, 1);
      }
    },
  },
  {
    category: "wrong dtype",
    name: "crossEntropy with float targets of the wrong shape",
    run(r, tmp) {
      const n = r.int(2, 4), c = r.int(2, 5);
      const t = r.bool() ? rn(tmp, [n]) : rn(tmp, [n, r.other(c, 2, 6)]);
      return dd.crossEntropy(rn(tmp, [n, c]), t);
    },
  },
  {
    category: "wrong dtype",
    name: "bool arithmetic libtorch rejects",
    run(r, tmp) {
      const b = tmp(dd.tensor([true, false, true]));
      switch (r.int(0, 2)) {
        case 0:
          return b.sub(b);
        case 1:
          return b.neg();
        default:
          return b.sub(tmp(dd.tensor([false, true, true])), 2);
      }
    },
  },
  {
    category: "wrong dtype",
    name: "float-only ops on integer tensors",
    run(r, tmp) {
      const x = tmp(dd.ones([1, 2, 4, 4], { dtype: "int64" }));
      switch (r.int(0, 6)) {
        case 0:
          return x.softmax(-1);
        case 1:
          return x.mean();
        case 2:
          return dd.layerNorm(x, [4]);
        case 3: // int64 conv2d runs on CPU, but not with a float weight
          return dd.conv2d(x, rn(tmp, [1, 2, 3, 3]));
        case 4:
          return dd.interpolate(x, { size: [8, 8], mode: "bilinear" });
        case 5:
          return x.norm();
        default:
          return x.requiresGrad_(true);
      }
    },
  },
  {
    category: "wrong dtype",
    name: "non-bool masks and conditions",
    run(r, tmp) {
      const x = rn(tmp, [2, 3]);
      return r.bool() ? x.maskedFill(x, 0) : dd.where(x, x, x);
    },
  },
  {
    category: "wrong dtype",
    name: "integer-only ops on float tensors",
    run(r, tmp) {
      const x = rn(tmp, [4]);
      return r.bool() ? x.oneHot(3) : x.bincount();
    },
  },
  {
    category: "wrong dtype",
    name: "unknown dtype / device names",
    run(r, tmp) {
      // deliberately invalid names, as untyped JS callers could pass
      const dtype = r.pick(["float128", "int4", "", "Float"]) as dd.DType;
      switch (r.int(0, 2)) {
        case 0:
          return dd.zeros([2], { dtype });
        case 1:
          return rn(tmp, [2]).to(dtype);
        default:
          return dd.zeros([2], { device: r.pick(["tpu", "cuda:x", "gpu"]) as dd.Device });
      }
    },
  },

  // ---- negative / non-integer sizes ----------------------------------------------------------
  {
    category: "bad size",
    name: "creation with a negative size",
    run(r) {
      const s = r.shape(r.int(1, 3));
      s[r.int(0, s.length - 1)] = -r.int(1, 5);
      switch (r.int(0, 5)) {
        case 0:
          return dd.zeros(s);
        case 1:
          return dd.ones(s);
        case 2:
          return dd.full(s, 3);
        case 3:
          return dd.empty(s);
        case 4:
          return dd.rand(s);
        default:
          return dd.randn(s);
      }
    },
  },
  {
    category: "bad size",
    name: "creation with a non-integer size",
    run(r) {
      const s = r.shape(r.int(1, 3));
      s[r.int(0, s.length - 1)] = r.pick([1.5, NaN, Infinity, -0.25, 2 ** 60]);
      return r.bool() ? dd.zeros(s) : dd.randn(s);
    },
  },
  {
    category: "bad size",
    name: "sizes too large to allocate",
    run(r) {
      return dd.zeros([r.int(1, 9) * 1e15, 1e15]);
    },
  },
  {
    category: "bad size",
    name: "reshape / view",
    run(r, tmp) {
      const x = rn(tmp, [2, 3, 4]);
      switch (r.int(0, 3)) {
        case 0:
          return x.reshape([-1, -1]);
        case 1:
          return x.reshape([5, r.int(1, 4)]);
        case 2:
          return x.reshape([2, 12.5]);
        default:
          return tmp(x.transpose(0, 2)).view([24]);
      }
    },
  },
  {
    category: "bad size",
    name: "expand / repeat with negative sizes",
    run(r, tmp) {
      const x = rn(tmp, [1, 3]);
      return r.bool() ? x.expand([-r.int(2, 4), 3]) : x.repeat([2, -r.int(1, 3)]);
    },
  },
  {
    category: "bad size",
    name: "eye / linspace / randperm / arange",
    run(r) {
      const n = -r.int(1, 5);
      switch (r.int(0, 4)) {
        case 0:
          return dd.eye(n);
        case 1:
          return dd.linspace(0, 1, n);
        case 2:
          return dd.randperm(n);
        case 3:
          return dd.arange(0, 10, 0);
        default:
          return dd.arange(10, 0, r.int(1, 3));
      }
    },
  },
  {
    category: "bad size",
    name: "chunk / split / topk counts",
    run(r, tmp) {
      const x = rn(tmp, [4, 3]);
      switch (r.int(0, 4)) {
        case 0:
          return x.chunk(r.pick([0, -1, -3]));
        case 1:
          return x.split([-1, 5]);
        case 2:
          return x.split([r.int(1, 2), 1]); // sizes do not sum to 4
        case 3:
          return x.split(-r.int(0, 2));
        default:
          return x.topk(r.bool() ? r.int(4, 9) : -r.int(1, 3));
      }
    },
  },
  {
    category: "bad size",
    name: "tensor data that does not match its shape",
    run(r) {
      switch (r.int(0, 3)) {
        case 0:
          return dd.tensor([1, 2, 3], { shape: [r.int(4, 6)] });
        case 1:
          return dd.fromTypedArray(new Float32Array(r.int(1, 5)), [2, 3]);
        case 2:
          return dd.tensor([[1, 2], [3]]);
        default:
          return dd.fromBytes(new Uint8Array(r.int(1, 7)), "float64", [1]);
      }
    },
  },
  {
    category: "bad size",
    name: "randint with low >= high",
    run(r) {
      const lo = r.int(0, 5);
      return dd.randint(lo, lo - r.int(0, 3), [3]);
    },
  },
  {
    category: "bad size",
    name: "interpolate output size or scale <= 0",
    run(r, tmp) {
      const x = rn(tmp, [1, 1, 4, 4]);
      return r.bool()
        ? dd.interpolate(x, { size: [-r.int(0, 3), 4] })
        : dd.interpolate(x, { scaleFactor: r.pick([0, -1, 0.01]) });
    },
  },
  {
    category: "bad size",
    name: "pad counts and sizes",
    run(r, tmp) {
      const x = rn(tmp, [1, 1, 4, 4]);
      switch (r.int(0, 3)) {
        case 0:
          return dd.pad(x, [1, 1, 1]);
        case 1:
          return dd.pad(x, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
        case 2:
          return dd.pad(x, [r.int(4, 8), 1], "reflect");
        default:
          return dd.pad(x, [r.int(5, 9), 0], "circular");
      }
    },
  },
  {
    category: "bad size",
    name: "conv / pool parameters",
    run(r, tmp) {
      const x = rn(tmp, [1, 2, 6, 6]);
      const w = rn(tmp, [2, 2, 3, 3]);
      switch (r.int(0, 5)) {
        case 0:
          return dd.conv2d(x, w, null, { stride: 0 });
        case 1:
          return dd.conv2d(x, w, null, { padding: -r.int(1, 3) });
        case 2:
          return dd.conv2d(x, w, null, { groups: r.pick([0, -1, 3]) });
        case 3:
          return dd.maxPool2d(x, 2, { padding: r.int(2, 4) });
        case 4:
          return dd.avgPool2d(x, 0);
        default:
          return dd.adaptiveAvgPool2d(x, -r.int(1, 3));
      }
    },
  },

  // ---- freed tensors -------------------------------------------------------------------------
  {
    category: "freed tensor",
    name: "binary op with a freed argument",
    message: FREED,
    run(r, tmp) {
      const a = rn(tmp, [2, 3]), b = rn(tmp, [2, 3]);
      (r.bool() ? a : b).free();
      switch (r.int(0, 3)) {
        case 0:
          return binary(a, r.pick(binaryOps), b);
        case 1:
          return a.matmul(tmp(b.transpose(0, 1)));
        case 2:
          return a.lerp(b, 0.5);
        default:
          return dd.where(tmp(dd.ones([2, 3], { dtype: "bool" })), a, b);
      }
    },
  },
  {
    category: "freed tensor",
    name: "method or metadata of a freed tensor",
    message: FREED,
    run(r, tmp) {
      const a = rn(tmp, [2, 3]);
      a.free();
      if (r.bool()) a.free(); // free() is idempotent
      switch (r.int(0, 9)) {
        case 0:
          return a.sum();
        case 1:
          return a.reshape([6]);
        case 2:
          return a.item();
        case 3:
          return a.toTypedArray();
        case 4:
          return a.shape;
        case 5:
          return a.dtype;
        case 6:
          return a.clone();
        case 7:
          return a.softmax(0);
        case 8:
          return a.requiresGrad;
        default:
          return a.to("float64");
      }
    },
  },
  {
    category: "freed tensor",
    name: "list op with a freed element",
    message: FREED,
    run(r, tmp) {
      const xs = [rn(tmp, [2]), rn(tmp, [2]), rn(tmp, [2])];
      xs[r.int(0, 2)].free();
      return r.bool() ? dd.cat(xs) : dd.stack(xs);
    },
  },
  {
    category: "freed tensor",
    name: "nn function with a freed tensor argument",
    message: FREED,
    run(r, tmp) {
      const x = rn(tmp, [2, 3, 4, 4]);
      const w = rn(tmp, [3, 3, 1, 1]);
      const b = rn(tmp, [3]);
      const t = ints(tmp, [0, 1]);
      switch (r.int(0, 6)) {
        case 0:
          (r.bool() ? w : b).free();
          return dd.conv2d(x, w, b);
        case 1: {
          const lw = rn(tmp, [5, 4]);
          (r.bool() ? lw : b).free();
          return dd.linear(x, lw, b);
        }
        case 2: {
          const g = rn(tmp, [4]);
          g.free();
          return dd.layerNorm(x, [4], g);
        }
        case 3:
          t.free();
          return dd.crossEntropy(rn(tmp, [2, 3]), t);
        case 4: {
          const grid = rn(tmp, [2, 3, 3, 2]);
          (r.bool() ? grid : x).free();
          return dd.gridSample(x, grid);
        }
        case 5: {
          const src = rn(tmp, [1, 3]);
          src.free();
          const y = rn(tmp, [2, 3]);
          const idx = ints(tmp, [0, 1, 0], [1, 3]);
          return r.bool() ? y.scatter(0, idx, src) : y.scatterAdd(0, idx, src);
        }
        default: {
          const lo = rn(tmp, [2, 3]);
          lo.free();
          return rn(tmp, [2, 3]).clamp(lo, null);
        }
      }
    },
  },
  {
    category: "freed tensor",
    name: "in-place op with a freed argument",
    message: FREED,
    run(r, tmp) {
      const a = rn(tmp, [3]), b = rn(tmp, [3]), c = rn(tmp, [3]);
      switch (r.int(0, 3)) {
        case 0:
          (r.bool() ? a : b).free();
          return a.add_(b);
        case 1:
          (r.bool() ? a : b).free();
          return a.copy_(b);
        case 2:
          c.free();
          return a.addcmul_(b, c);
        default:
          (r.bool() ? a : b).free();
          return a.maskedFill_(tmp(b.gt(0)), 1);
      }
    },
  },
  {
    category: "freed tensor",
    name: "autograd with a freed tensor",
    message: FREED,
    run(r, tmp) {
      const p = tmp(dd.randn([3]).requiresGrad_(true));
      const y = tmp(p.mul(2));
      const g = rn(tmp, [3]);
      switch (r.int(0, 2)) {
        case 0:
          g.free();
          return y.backward(g);
        case 1:
          g.free();
          return p.setGrad(g);
        default:
          p.free();
          return p.grad;
      }
    },
  },

  // ---- empty tensors -------------------------------------------------------------------------
  {
    category: "empty tensor",
    name: "argmax / argmin / max / min of an empty tensor",
    run(r, tmp) {
      const e = tmp(dd.zeros(r.pick([[0], [0, 3], [2, 0]])));
      return e[r.pick(["argmax", "argmin", "max", "min", "amax", "amin"] as const)]();
    },
  },
  {
    category: "empty tensor",
    name: "reduction along an empty dimension",
    run(r, tmp) {
      const e = tmp(dd.zeros([0, 3]));
      switch (r.int(0, 3)) {
        case 0:
          return e.maxDim(0);
        case 1:
          return e.minDim(0);
        case 2:
          return e.amax(0);
        default:
          return e.argmax(0);
      }
    },
  },
  {
    category: "empty tensor",
    name: "item() of an empty or multi-element tensor",
    message: /item/,
    run(r, tmp) {
      return tmp(dd.zeros(r.pick([[0], [2], [1, 3], [2, 2]]))).item();
    },
  },
  {
    category: "empty tensor",
    name: "topk of an empty tensor",
    run(r, tmp) {
      return tmp(dd.zeros([0])).topk(r.int(1, 3));
    },
  },

  // ---- indices out of range ------------------------------------------------------------------
  {
    category: "index out of range",
    name: "indexSelect",
    run(r, tmp) {
      const n = r.int(1, 5);
      const x = rn(tmp, [n, 3]);
      const bad = r.bool() ? n + r.int(0, 100) : -r.int(1, 100);
      return x.indexSelect(0, ints(tmp, [0, bad]));
    },
  },
  {
    category: "index out of range",
    name: "gather",
    run(r, tmp) {
      const n = r.int(1, 5);
      const x = rn(tmp, [n, 3]);
      const bad = r.bool() ? n + r.int(0, 1000) : -r.int(1, 1000);
      return x.gather(0, ints(tmp, [0, bad, 0], [1, 3]));
    },
  },
  {
    category: "index out of range",
    name: "scatter / scatterAdd",
    run(r, tmp) {
      const n = r.int(1, 5);
      const x = rn(tmp, [n, 3]);
      const bad = r.bool() ? n + r.int(0, 1000) : -r.int(1, 1000);
      const idx = ints(tmp, [bad, 0, 0], [1, 3]);
      const src = r.bool() ? rn(tmp, [1, 3]) : r.next();
      return r.bool() ? x.scatter(0, idx, src) : x.scatterAdd(0, idx, src);
    },
  },
  {
    category: "index out of range",
    name: "oneHot",
    run(r, tmp) {
      const c = r.int(1, 5);
      const bad = r.bool() ? c + r.int(0, 10) : -r.int(1, 10);
      return ints(tmp, [0, bad]).oneHot(c);
    },
  },
  {
    category: "index out of range",
    name: "crossEntropy target class",
    run(r, tmp) {
      const c = r.int(2, 5);
      const bad = r.bool() ? c + r.int(0, 10) : -r.int(1, 10) - 1;
      return dd.crossEntropy(rn(tmp, [2, c]), ints(tmp, [0, bad]), {
        reduction: r.pick(["mean", "sum", "none"] as const),
      });
    },
  },
  {
    category: "index out of range",
    name: "bincount of negative values",
    run(r, tmp) {
      return ints(tmp, [1, -r.int(1, 9)]).bincount();
    },
  },

  // ---- invalid enum-like options -------------------------------------------------------------
  {
    category: "invalid option",
    name: "interpolate mode / flags",
    run(r, tmp) {
      const x = rn(tmp, [1, 1, 4, 4]);
      switch (r.int(0, 4)) {
        case 0:
          return dd.interpolate(x, {
            size: 8,
            mode: r.pick(["trilinear", "linear", "area", ""]) as dd.InterpolateMode,
          });
        case 1:
          return dd.interpolate(x, { size: 8, mode: "nearest", alignCorners: true });
        case 2:
          return dd.interpolate(x, { size: 2, mode: "nearest", antialias: true });
        case 3:
          return dd.interpolate(x, { size: 8, scaleFactor: 2, mode: "bilinear" });
        default:
          return dd.interpolate(x, { mode: "bicubic" });
      }
    },
  },
  {
    category: "invalid option",
    name: "gridSample mode / padding",
    run(r, tmp) {
      const x = rn(tmp, [1, 1, 4, 4]), g = rn(tmp, [1, 2, 2, 2]);
      return r.bool()
        ? dd.gridSample(x, g, { mode: "area" as "bilinear" })
        : dd.gridSample(x, g, { paddingMode: "wrap" as "zeros" });
    },
  },
  {
    category: "invalid option",
    name: "pad mode",
    run(r, tmp) {
      return dd.pad(rn(tmp, [1, 1, 4, 4]), [1, 1], r.pick(["symmetric", "edge", ""]) as dd.PadMode);
    },
  },
  {
    category: "invalid option",
    name: "crossEntropy reduction",
    run(r, tmp) {
      return dd.crossEntropy(rn(tmp, [2, 3]), ints(tmp, [0, 1]), {
        reduction: r.pick(["avg", "max", "batchmean"]) as "mean",
      });
    },
  },
  {
    category: "invalid option",
    name: "probabilities and fill bounds out of range",
    run(r, tmp) {
      const x = rn(tmp, [3, 3]);
      switch (r.int(0, 5)) {
        case 0:
          return dd.dropout(x, r.pick([-0.1, 1.5, NaN]));
        case 1:
          return x.bernoulli_(r.pick([-0.5, 1.5]));
        case 2:
          return x.uniform_(1, 0);
        case 3:
          return x.normal_(0, -r.int(1, 3));
        case 4:
          return x.truncNormal_(r.pick([0, -1]));
        default:
          return dd.bernoulli(tmp(dd.full([3], r.pick([-1, 2]))));
      }
    },
  },
  {
    category: "invalid option",
    name: "device not available",
    run(_r, tmp) {
      // on a CUDA machine, ask for a device index that does not exist
      if (cudaAvailable) return rn(tmp, [2]).to(`cuda:${dd.cuda.deviceCount() + 3}`);
      return rn(tmp, [2]).to("cuda");
    },
  },
  {
    category: "invalid option",
    name: "setNumThreads out of range",
    run(r) {
      return dd.setNumThreads(r.pick([0, -1, 1_000_000]));
    },
  },

  // ---- generator / optimizer / autograd misuse ----------------------------------------------
  {
    category: "generator / optimizer / autograd misuse",
    name: "freed generator",
    message: FREED,
    run(r, tmp) {
      const g = new dd.Generator(r.int(0, 1000));
      g.free();
      const x = rn(tmp, [4]);
      switch (r.int(0, 5)) {
        case 0:
          return x.normal_(0, 1, g);
        case 1:
          return x.uniform_(0, 1, g);
        case 2:
          return x.bernoulli_(0.5, g);
        case 3:
          return x.truncNormal_(1, 0, -2, 2, g);
        case 4:
          return g.manualSeed(3);
        default:
          return g.getState();
      }
    },
  },
  {
    category: "generator / optimizer / autograd misuse",
    name: "generator state of the wrong kind",
    run(r, tmp) {
      using g = new dd.Generator(1);
      let state: Tensor;
      switch (r.int(0, 3)) {
        case 0:
          state = tmp(dd.zeros([5056]));
          break;
        case 1:
          state = tmp(dd.zeros([r.int(1, 100)], { dtype: "uint8" }));
          break;
        case 2:
          state = tmp(dd.randint(0, 255, [5056], { dtype: "uint8" }));
          break;
        default: // an expanded view: its bytes are not really there
          state = tmp(tmp(dd.zeros([1], { dtype: "uint8" })).expand([5056]));
      }
      return r.bool() ? g.setState(state) : dd.setRngState(state);
    },
  },
  {
    category: "generator / optimizer / autograd misuse",
    name: "generator seed / device",
    expect: RangeError, // BigInt() of a non-integer
    run(r) {
      return new dd.Generator(r.pick([0.5, NaN, Infinity]));
    },
  },
  {
    category: "generator / optimizer / autograd misuse",
    name: "generator on a missing device",
    run(r) {
      if (cudaAvailable) return new dd.Generator(1, `cuda:${dd.cuda.deviceCount() + 3}`);
      return new dd.Generator(r.int(0, 9), r.pick(["cuda", "cuda:0", "tpu"]) as dd.Device);
    },
  },
  {
    category: "generator / optimizer / autograd misuse",
    name: "optimizer construction",
    run(r, tmp) {
      const p = tmp(dd.randn([3]).requiresGrad_(true));
      switch (r.int(0, 3)) {
        case 0:
          return new dd.AdamW([p], { betas: [r.pick([1, 1.5, -0.1]), 0.9] });
        case 1:
          return new dd.AdamW([p, 3 as unknown as Tensor]);
        case 2: {
          const q = tmp(dd.randn([2]));
          q.free();
          return new dd.AdamW([p, q]);
        }
        default: {
          const q = tmp(dd.randn([2]));
          q.free();
          return new dd.SGD([q], { lr: 0.1 });
        }
      }
    },
  },
  {
    category: "generator / optimizer / autograd misuse",
    name: "optimizer step after a parameter was freed",
    message: FREED,
    run(r, tmp) {
      const p = tmp(dd.randn([3]).requiresGrad_(true));
      if (r.bool()) {
        const opt = new dd.AdamW([p]);
        try {
          p.free();
          return opt.step();
        } finally {
          opt.free();
        }
      }
      const opt = new dd.SGD([p], { lr: 0.1, momentum: 0.9 });
      try {
        p.free();
        return opt.step();
      } finally {
        opt.free();
      }
    },
  },
  {
    category: "generator / optimizer / autograd misuse",
    name: "optimizer state of another model",
    run(r, tmp) {
      const a = tmp(dd.randn([3]).requiresGrad_(true));
      const b = tmp(dd.randn([r.other(3)]).requiresGrad_(true));
      const oa = new dd.AdamW([a]);
      const ob = new dd.AdamW(r.bool() ? [b] : [a, b]);
      try {
        return oa.loadStateDict(ob.stateDict());
      } finally {
        oa.free();
        ob.free();
      }
    },
  },
  {
    category: "generator / optimizer / autograd misuse",
    name: "per-parameter loops over mismatched or freed lists",
    run(r, tmp) {
      const a = rn(tmp, [3]), b = rn(tmp, [r.other(3)]);
      switch (r.int(0, 3)) {
        case 0:
          return dd.emaUpdate([a], [b], 0.9);
        case 1:
          return dd.emaUpdate([a, a], [a], 0.9);
        case 2:
          a.free();
          return dd.clipGradNorms([a, b], 1);
        default:
          b.free();
          return dd.zeroGrads([a, b]);
      }
    },
  },
  {
    category: "generator / optimizer / autograd misuse",
    name: "backward misuse",
    run(r, tmp) {
      const p = tmp(dd.randn([3]).requiresGrad_(true));
      const y = tmp(p.mul(3));
      switch (r.int(0, 4)) {
        case 0: // non-scalar output without a gradient
          return y.backward();
        case 1: { // backward twice through a graph whose saved tensors were released
          const s = tmp(tmp(p.exp()).sum());
          s.backward();
          return s.backward();
        }
        case 2: // a gradient of the wrong shape
          return y.backward(rn(tmp, [r.other(3)]));
        case 3: // nothing requires grad
          return tmp(rn(tmp, [3]).sum()).backward();
        default: // non-scalar with a wrong-rank gradient
          return y.backward(rn(tmp, [3, 1]));
      }
    },
  },
  {
    category: "generator / optimizer / autograd misuse",
    name: "requires-grad misuse",
    run(r, tmp) {
      const p = tmp(dd.randn([3]).requiresGrad_(true));
      switch (r.int(0, 3)) {
        case 0: // in-place update of a leaf that requires grad
          return p.add_(1);
        case 1: // requiresGrad_(false) on a non-leaf
          return tmp(p.mul(2)).requiresGrad_(false);
        case 2: // a gradient of the wrong shape / dtype
          return p.setGrad(tmp(r.bool() ? dd.zeros([4]) : dd.zeros([3], { dtype: "float64" })));
        default: // integer tensors cannot require grad
          return tmp(dd.zeros([2], { dtype: "int64" })).requiresGrad_(true);
      }
    },
  },
];

// ---- the randomized run --------------------------------------------------------------------

const SEED = Number(Deno.env.get("DD_BAD_INPUT_SEED") ?? 20240611);
const CALLS = 1200;

Deno.test("randomized invalid calls all throw, leak nothing and never crash", () => {
  const r = new Rng(SEED);
  const tensorsBefore = dd.liveTensors();
  const handlesBefore = dd.liveHandles();
  const problems: string[] = [];
  const perCategory = new Map<Category, number>();
  for (let i = 0; i < CALLS; i++) {
    // every case once first, then random picks
    const c = i < cases.length ? cases[i] : r.pick(cases);
    perCategory.set(c.category, (perCategory.get(c.category) ?? 0) + 1);
    const temps: Tensor[] = [];
    const tmp: Tmp = (t) => {
      temps.push(t);
      return t;
    };
    const expect = c.expect ?? TorchError;
    const where = `call ${i} [${c.category}] ${c.name} (seed ${SEED})`;
    const t0 = dd.liveTensors(), h0 = dd.liveHandles();
    try {
      const result = c.run(r, tmp);
      problems.push(`${where}: did not throw`);
      dd.freeAll(result);
    } catch (e) {
      if (!(e instanceof expect)) {
        problems.push(`${where}: expected ${expect.name}, got ${String(e)}`);
      } else if (e instanceof TorchError && (!e.op || !e.message.startsWith(e.op))) {
        problems.push(`${where}: TorchError without an op name: ${e.message}`);
      } else if (c.message && !c.message.test((e as Error).message)) {
        problems.push(`${where}: message ${JSON.stringify((e as Error).message)} !~ ${c.message}`);
      }
    } finally {
      for (const t of temps) t.free();
    }
    if (dd.liveTensors() !== t0 || dd.liveHandles() !== h0) {
      problems.push(
        `${where}: leaked (native ${t0} -> ${dd.liveTensors()}, js ${h0} -> ${dd.liveHandles()})`,
      );
    }
  }
  assert.deepEqual(problems, [], problems.slice(0, 20).join("\n"));
  assert.equal(dd.liveTensors(), tensorsBefore, "native live-tensor count changed");
  assert.equal(dd.liveHandles(), handlesBefore, "JS live-handle count changed");
  // every category ran, and the whole run was at least 1,000 invalid calls
  assert.equal(perCategory.size, 9, [...perCategory.keys()].join(", "));
  let total = 0;
  for (const n of perCategory.values()) total += n;
  assert.ok(total >= 1000);
  // the library still works afterwards
  using a = dd.tensor([[1, 2], [3, 4]]);
  using b = a.matmul(a);
  assert.deepEqual(b.toArray(), [[7, 10], [15, 22]]);
});

Deno.test("matmul shape mismatch names matmul and both shapes; the next op works", () => {
  const before = dd.liveTensors();
  using a = dd.randn([2, 3]);
  using b = dd.randn([4, 5]);
  let err: unknown = null;
  try {
    a.matmul(b).free();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof TorchError, `expected a TorchError, got ${err}`);
  assert.equal(err.op, "matmul");
  assert.match(err.message, /matmul/);
  assert.match(err.message, /\[2, 3\]/);
  assert.match(err.message, /\[4, 5\]/);
  assert.match(err.detail, /2x3/); // libtorch's own message is carried
  assert.match(err.detail, /4x5/);
  // the process carries on and the next op works
  using c = dd.ones([3, 2]);
  using d = a.matmul(c);
  assert.deepEqual(d.shape, [2, 2]);
  using s = a.sum(1);
  const rows = d.toArray() as number[][];
  const sums = s.toArray() as number[];
  for (let i = 0; i < 2; i++) {
    for (let j = 0; j < 2; j++) assert.ok(Math.abs(rows[i][j] - sums[i]) < 1e-5);
  }
  assert.equal(dd.liveTensors(), before + 5); // a, b, c, d, s: the failed call left nothing
});

function messageOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof TorchError, String(e));
    return e.message;
  }
  assert.fail("expected a failure");
}

Deno.test("each failure reports its own message, not a stale one", () => {
  using a = dd.randn([2, 3]);
  using b = dd.randn([4, 5]);
  const m1 = messageOf(() => a.matmul(b));
  const m2 = messageOf(() => a.sum(7));
  const m3 = messageOf(() => a.matmul(b));
  assert.notEqual(m1, m2);
  assert.match(m1, /^matmul:/);
  assert.match(m2, /^sum: .*range/i);
  assert.equal(m3, m1);
  // a success in between does not leave an error behind that a later failure would report
  using ok = a.add(1);
  assert.equal(ok.shape[1], 3);
  const m4 = messageOf(() => a.transpose(0, 9));
  assert.match(m4, /^transpose:/);
  assert.notEqual(m4, m1);
  assert.notEqual(m4, m2);
});

const WORKER_SRC = `
import * as dd from ${JSON.stringify(new URL("../../mod.ts", import.meta.url).href)};
self.onmessage = (ev) => {
  const n = ev.data;
  const bad = [];
  const a = dd.randn([3, 3]);
  for (let i = 0; i < n; i++) {
    try {
      a.softmax(5 + (i % 3)).free();
      bad.push("no error");
    } catch (e) {
      if (!/^softmax: .*range/i.test(e.message)) bad.push(e.message);
    }
  }
  a.free();
  self.postMessage({ bad, live: dd.liveHandles() });
};
self.postMessage("ready");
`;

Deno.test("the error slot is per thread: concurrent failures on a worker do not mix", async () => {
  const before = dd.liveTensors();
  const url = URL.createObjectURL(new Blob([WORKER_SRC], { type: "application/javascript" }));
  const worker = new Worker(url, { type: "module" });
  try {
    let ready: () => void = () => {};
    const isReady = new Promise<void>((resolve) => (ready = resolve));
    const done = new Promise<{ bad: string[]; live: number }>((resolve, reject) => {
      worker.onmessage = (ev) => (ev.data === "ready" ? ready() : resolve(ev.data));
      worker.onerror = (ev) => {
        ev.preventDefault();
        reject(new Error(ev.message));
      };
    });
    await isReady; // the worker has loaded the library: now both threads fail at once
    worker.postMessage(400);
    // meanwhile, different failures on this thread
    using a = dd.randn([2, 3]);
    using b = dd.randn([4, 5]);
    const mine: string[] = [];
    for (let i = 0; i < 400; i++) {
      const m = messageOf(() => a.matmul(b));
      if (!/^matmul: .*\[2, 3\].*\[4, 5\]/.test(m)) mine.push(m);
    }
    const theirs = await done;
    assert.deepEqual(mine, [], "the main thread read a message that was not its own");
    assert.deepEqual(theirs.bad, [], "the worker read a message that was not its own");
    assert.equal(theirs.live, 0);
  } finally {
    worker.terminate();
    URL.revokeObjectURL(url);
  }
  assert.equal(dd.liveTensors(), before);
});
