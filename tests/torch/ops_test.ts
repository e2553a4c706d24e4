/**
 * Correctness of the Tensor API against independent truth: closed-form values, small
 * reference implementations written here in plain JS, and — where no closed form exists
 * (bicubic / antialiased resizing, bicubic grid sampling, generator streams) — numbers
 * computed once with PyTorch 1.13 (`/usr/bin/python3`) and spelled out below. The tests never
 * call Python.
 */
import assert from "node:assert/strict";
import {
  arange,
  bernoulli,
  cat,
  crossEntropy,
  dropout,
  empty,
  enableGrad,
  eye,
  fromTypedArray,
  full,
  Generator,
  gridSample,
  interpolate,
  isGradEnabled,
  layerNorm,
  linspace,
  liveHandles,
  liveTensors,
  manualSeed,
  noGrad,
  normalize,
  ones,
  rand,
  randint,
  randn,
  scalarTensor,
  scope,
  stack,
  type Tensor,
  tensor,
  TorchError,
  where,
  zeros,
} from "../../mod.ts";

const START_TENSORS = liveTensors();
const START_HANDLES = liveHandles();

const F64 = { dtype: "float64" } as const;
const I64 = { dtype: "int64" } as const;

/** The elements of `t` as plain numbers (row-major). */
function vals(t: Tensor): number[] {
  return Array.from(t.toTypedArray() as ArrayLike<number | bigint>, Number);
}

/** Asserts |a − e| ≤ tol·max(1, |e|) elementwise (and equal lengths). */
function close(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol = 1e-6,
  what = "",
): void {
  assert.equal(actual.length, expected.length, `${what} length`);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i], e = expected[i];
    if (Number.isNaN(e) && Number.isNaN(a)) continue;
    if (a === e) continue; // also covers ±Infinity
    assert.ok(
      Math.abs(a - e) <= tol * Math.max(1, Math.abs(e)),
      `${what}[${i}]: got ${a}, expected ${e} (tol ${tol})`,
    );
  }
}

/** Same as `close` on a tensor's values, checking its shape too. */
function expectT(t: Tensor, shape: number[], expected: ArrayLike<number>, tol = 1e-6, what = "") {
  assert.deepEqual(t.shape, shape, `${what} shape`);
  close(vals(t), expected, tol, what);
}

// Test inputs defined by integer formulas, so PyTorch saw exactly the same numbers:
//   X1 = tensor([((n*37) % 23) / 4 for n in range(40)], float64).reshape(1, 2, 4, 5)
//   X2 = tensor([((n*29) % 31) / 4 for n in range(64)], float64).reshape(1, 1, 8, 8)
const X1_DATA = Array.from({ length: 40 }, (_, n) => ((n * 37) % 23) / 4);
const X2_DATA = Array.from({ length: 64 }, (_, n) => ((n * 29) % 31) / 4);
const X1 = () => fromTypedArray(Float64Array.from(X1_DATA), [1, 2, 4, 5]);
const X2 = () => fromTypedArray(Float64Array.from(X2_DATA), [1, 1, 8, 8]);

// ---- creation -----------------------------------------------------------------------------

Deno.test("creation: zeros / ones / full / arange / linspace / eye / scalar", () =>
  scope(() => {
    expectT(zeros([2, 3]), [2, 3], [0, 0, 0, 0, 0, 0]);
    assert.equal(zeros([2]).dtype, "float32");
    expectT(ones([3], I64), [3], [1, 1, 1]);
    assert.equal(ones([3], I64).dtype, "int64");
    expectT(full([2, 2], 7.5, F64), [2, 2], [7.5, 7.5, 7.5, 7.5]);
    assert.equal(full([1], 1, F64).dtype, "float64");
    expectT(zeros([0, 4]), [0, 4], []);

    const a = arange(5);
    assert.equal(a.dtype, "int64");
    expectT(a, [5], [0, 1, 2, 3, 4]);
    expectT(arange(2, 11, 3), [3], [2, 5, 8]);
    expectT(arange(5, 0, -2), [3], [5, 3, 1]);
    const af = arange(0, 1, 0.25);
    assert.equal(af.dtype, "float32");
    expectT(af, [4], [0, 0.25, 0.5, 0.75]);
    expectT(arange(0, 3, 1, F64), [3], [0, 1, 2]);
    assert.equal(arange(0, 3, 1, F64).dtype, "float64");

    expectT(linspace(0, 1, 5), [5], [0, 0.25, 0.5, 0.75, 1]);
    expectT(linspace(-1, 1, 3, F64), [3], [-1, 0, 1], 0);
    expectT(linspace(2, 2, 1), [1], [2]);

    expectT(eye(3), [3, 3], [1, 0, 0, 0, 1, 0, 0, 0, 1]);
    expectT(eye(2, 3), [2, 3], [1, 0, 0, 0, 1, 0]);

    const s = scalarTensor(3.25, F64);
    assert.deepEqual(s.shape, []);
    assert.equal(s.ndim, 0);
    assert.equal(s.numel, 1);
    assert.equal(s.item(), 3.25);

    const e = empty([2, 5]);
    assert.deepEqual(e.shape, [2, 5]);
    // nested arrays, booleans, typed arrays
    const n = tensor([[1, 2, 3], [4, 5, 6]]);
    assert.deepEqual(n.shape, [2, 3]);
    assert.deepEqual(n.toArray(), [[1, 2, 3], [4, 5, 6]]);
    const b = tensor([true, false, true]);
    assert.equal(b.dtype, "bool");
    assert.deepEqual(b.toArray(), [true, false, true]);
    const ta = tensor(new Int32Array([4, -5]));
    assert.equal(ta.dtype, "int32");
    assert.deepEqual(ta.toArray(), [4, -5]);
    assert.throws(() => tensor([[1, 2], [3]]), TorchError);
    assert.throws(() => tensor([1.5], I64), /not an integer/);
  }));

// ---- host IO, printing, dtypes ------------------------------------------------------------

Deno.test("toArray / toTypedArray / item / toBytes", () =>
  scope(() => {
    const x = tensor([[1.5, -2], [0, 4]], F64);
    assert.deepEqual(x.toArray(), [[1.5, -2], [0, 4]]);
    const ta = x.toTypedArray();
    assert.ok(ta instanceof Float64Array);
    assert.deepEqual(Array.from(ta as Float64Array), [1.5, -2, 0, 4]);
    assert.ok(tensor([1, 2]).toTypedArray() instanceof Float32Array);
    assert.ok(tensor([1, 2], I64).toTypedArray() instanceof BigInt64Array);
    assert.ok(tensor([true]).toTypedArray() instanceof Uint8Array);
    assert.equal(x.sum().item(), 3.5);
    assert.equal(scalarTensor(5, I64).item(), 5);
    assert.equal(scalarTensor(5).toArray(), 5);
    assert.throws(() => x.item(), TorchError);
    // a non-contiguous view reads back in logical (row-major) order
    assert.deepEqual(x.transpose(0, 1).toArray(), [[1.5, 0], [-2, 4]]);
    assert.deepEqual(Array.from(tensor([1, 256], { dtype: "int16" }).toBytes()), [1, 0, 0, 1]);
  }));

Deno.test("printing (toString and Deno.inspect)", () =>
  scope(() => {
    const i = tensor([[1, 2], [3, 4]], I64);
    assert.equal(i.toString(), "Tensor([2, 2] int64 cpu)\n[[1, 2], [3, 4]]");
    assert.equal(Deno.inspect(i), i.toString());
    const f = tensor([0.5, -1.25, 1 / 3]);
    assert.equal(String(f), "Tensor([3] float32 cpu)\n[0.50000, -1.2500, 0.33333]");
    assert.equal(String(tensor([true, false])), "Tensor([2] bool cpu)\n[true, false]");
    const g = tensor([1, 2], { requiresGrad: true });
    assert.match(String(g), /^Tensor\(\[2\] float32 cpu requires_grad\)/);
    assert.equal(String(zeros([40, 40])), "Tensor([40, 40] float32 cpu)"); // values omitted
    assert.equal(String(scalarTensor(2, I64)), "Tensor([] int64 cpu)\n2");
    const freed = tensor([1]);
    freed.free();
    assert.equal(String(freed), "Tensor(<freed>)");
  }));

Deno.test("dtype conversion", async (t) => {
  await t.step("float16 round trips and rounding", () =>
    scope(() => {
      // exactly representable values survive
      const exact = [0, 1, -2, 0.5, 1.25, 65504, -65504, 2 ** -14, 2 ** -24, 1023.5, 2048];
      const h = tensor(exact, { dtype: "float16" });
      assert.equal(h.dtype, "float16");
      assert.deepEqual(vals(h), exact);
      assert.deepEqual(vals(h.to("float32").to("float16").to("float64")), exact);
      // rounding, overflow and underflow, from PyTorch 1.13:
      //   torch.tensor([1/3, 0.1, 65504, 1e-8, 70000, 2**-24]).half().float().tolist()
      const r = tensor([1 / 3, 0.1, 65504, 1e-8, 70000, 2 ** -24]).to("float16");
      assert.deepEqual(vals(r), [0.333251953125, 0.0999755859375, 65504, 0, Infinity, 2 ** -24]);
      // raw bits in and out: 0x3C00 = 1, 0xC000 = −2, 0x7C00 = +inf
      const bits = fromTypedArray(new Uint16Array([0x3c00, 0xc000, 0x7c00]), [3], {
        dtype: "float16",
      });
      assert.deepEqual(vals(bits), [1, -2, Infinity]);
      assert.deepEqual(Array.from(bits.toBytes()), [0x00, 0x3c, 0x00, 0xc0, 0x00, 0x7c]);
    }));
  await t.step("bfloat16 round trips and round-half-even", () =>
    scope(() => {
      const exact = [0, 1, -2, 0.5, 1.0078125, 3.0e38 - 3.0e38 + 256, 2 ** -100];
      assert.deepEqual(vals(tensor(exact, { dtype: "bfloat16" })), exact);
      // torch.tensor([1/3, 0.1, 1.00390625, 1.01171875]).bfloat16().float().tolist()
      // (1 + 2^-8 and 1 + 3·2^-8 are ties: they round to the even mantissa)
      const r = tensor([1 / 3, 0.1, 1.00390625, 1.01171875]).to("bfloat16");
      assert.deepEqual(vals(r), [0.333984375, 0.10009765625, 1, 1.015625]);
      const bits = fromTypedArray(new Uint16Array([0x3f80, 0xc040]), [2], { dtype: "bfloat16" });
      assert.deepEqual(vals(bits), [1, -3]);
    }));
  await t.step("int64 exactness up to 2^53 and beyond through BigInt64Array", () =>
    scope(() => {
      const big = [2 ** 53, -(2 ** 53), 2 ** 53 - 1, 123456789012345];
      const t64 = tensor(big, I64);
      assert.deepEqual(
        Array.from(t64.toTypedArray() as BigInt64Array),
        [2n ** 53n, -(2n ** 53n), 2n ** 53n - 1n, 123456789012345n],
      );
      assert.deepEqual(t64.toArray(), big);
      assert.equal(t64.select(0, 2).item(), 2 ** 53 - 1);
      // beyond 2^53 only BigInt64Array is exact: native arithmetic stays exact
      const huge = fromTypedArray(new BigInt64Array([2n ** 62n + 3n, -(2n ** 62n) - 7n]), [2]);
      assert.equal(huge.dtype, "int64");
      const plus = huge.add(huge.sign());
      assert.deepEqual(
        Array.from(plus.toTypedArray() as BigInt64Array),
        [2n ** 62n + 4n, -(2n ** 62n) - 8n],
      );
      // float64 → int64 truncates toward zero, as PyTorch
      assert.deepEqual(vals(tensor([2.7, -2.7, 0.5], F64).to("int64")), [2, -2, 0]);
      assert.deepEqual(vals(tensor([0, 2, -1]).to("bool")), [0, 1, 1]);
      assert.deepEqual(vals(tensor([300, -1], I64).to("uint8")), [44, 255]);
    }));
  await t.step("to() with options; float() / long()", () =>
    scope(() => {
      const x = tensor([1.5, 2.5], F64);
      assert.equal(x.float().dtype, "float32");
      assert.equal(x.long().dtype, "int64");
      assert.deepEqual(vals(x.long()), [1, 2]);
      const c = x.to({ dtype: "float64", copy: true });
      assert.equal(c.sharesStorageWith(x), false);
      assert.equal(x.device, "cpu");
      assert.throws(() => x.to("float8" as "float32"), /unknown dtype/);
    }));
});

// ---- elementwise --------------------------------------------------------------------------

Deno.test("elementwise math: pow/sqrt/exp/log/abs/neg/floor/ceil/round/trunc/sign", () =>
  scope(() => {
    const x = tensor([0.25, 1, 4, 9], F64);
    expectT(x.sqrt(), [4], [0.5, 1, 2, 3], 0);
    expectT(x.pow(2), [4], [0.0625, 1, 16, 81], 0);
    expectT(x.pow(0.5), [4], [0.5, 1, 2, 3], 1e-15);
    expectT(x.pow(tensor([2, 0, -1, 0.5], F64)), [4], [0.0625, 1, 0.25, 3], 1e-15);
    expectT(x.rpow(2), [4], [2 ** 0.25, 2, 16, 512], 1e-15);
    expectT(x.rsqrt(), [4], [2, 1, 0.5, 1 / 3], 1e-15);
    const y = tensor([-1, 0, 1, 2], F64);
    expectT(y.exp(), [4], [1 / Math.E, 1, Math.E, Math.E ** 2], 1e-15);
    expectT(x.log(), [4], [Math.log(0.25), 0, Math.log(4), Math.log(9)], 1e-15);
    expectT(tensor([0, -1], F64).log(), [2], [-Infinity, NaN]);
    expectT(y.abs(), [4], [1, 0, 1, 2]);
    expectT(y.neg(), [4], [1, -0, -1, -2]);
    expectT(y.sign(), [4], [-1, 0, 1, 1]);
    expectT(y.square(), [4], [1, 0, 1, 4]);
    expectT(y.reciprocal(), [4], [-1, Infinity, 1, 0.5]);
    expectT(tensor([1e-10], F64).log1p(), [1], [Math.log1p(1e-10)], 1e-15);
    expectT(tensor([1e-10], F64).expm1(), [1], [Math.expm1(1e-10)], 1e-15);
    expectT(y.sigmoid(), [4], [-1, 0, 1, 2].map((v) => 1 / (1 + Math.exp(-v))), 1e-15);
    expectT(y.tanh(), [4], [-1, 0, 1, 2].map(Math.tanh), 1e-15);
    expectT(y.relu(), [4], [0, 0, 1, 2]);
    expectT(y.sin(), [4], [-1, 0, 1, 2].map(Math.sin), 1e-15);

    const z = tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4999, -1.7, 3.2], F64);
    expectT(z.floor(), [9], [-3, -2, -1, 0, 1, 2, 2, -2, 3]);
    expectT(z.ceil(), [9], [-2, -1, -0, 1, 2, 3, 3, -1, 4]);
    expectT(z.trunc(), [9], [-2, -1, -0, 0, 1, 2, 2, -1, 3]);
    // round half to even, as PyTorch (not Math.round's half-up)
    expectT(z.round(), [9], [-2, -2, -0, 0, 2, 2, 2, -2, 3]);
    expectT(tensor([0.5, 1.5, 2.5, 3.5]).round(), [4], [0, 2, 2, 4]);
    // integer dtypes stay integral
    assert.equal(tensor([1, -2], I64).abs().dtype, "int64");
    // gelu exact: x·Φ(x); values of Φ from the closed form at 0 and ±∞-ish
    expectT(tensor([0, 10, -10], F64).gelu(), [3], [0, 10, 0], 1e-12);
  }));

Deno.test("arithmetic with broadcasting and scalars", () =>
  scope(() => {
    const col = tensor([[1], [2], [3]], F64); // [3, 1]
    const row = tensor([10, 20, 30, 40], F64); // [4]
    expectT(col.add(row), [3, 4], [11, 21, 31, 41, 12, 22, 32, 42, 13, 23, 33, 43]);
    expectT(col.mul(row), [3, 4], [10, 20, 30, 40, 20, 40, 60, 80, 30, 60, 90, 120]);
    expectT(row.sub(col, 2), [3, 4], [8, 18, 28, 38, 6, 16, 26, 36, 4, 14, 24, 34]);
    expectT(row.div(col).select(0, 1), [4], [5, 10, 15, 20]);
    expectT(row.add(1.5), [4], [11.5, 21.5, 31.5, 41.5]);
    expectT(row.sub(5), [4], [5, 15, 25, 35]);
    expectT(row.rsub(5), [4], [-5, -15, -25, -35]);
    expectT(row.rdiv(40), [4], [4, 2, 40 / 30, 1]);
    expectT(row.mul(0.5), [4], [5, 10, 15, 20]);
    expectT(row.div(4), [4], [2.5, 5, 7.5, 10]);
    const a = tensor([-7, 7, -7, 7], F64);
    const b = tensor([2, -2, -2, 2], F64);
    // Python semantics: floor division and remainder take the divisor's sign
    expectT(a.floorDivide(b), [4], [-4, -4, 3, 3]);
    expectT(a.remainder(b), [4], [1, -1, -1, 1]);
    expectT(a.maximum(b), [4], [2, 7, -2, 7]);
    expectT(a.minimum(b), [4], [-7, -2, -7, 2]);
    // [2, 1, 3] with [4, 1] → [2, 4, 3]
    const u = ones([2, 1, 3]);
    const v = tensor([[1], [2], [3], [4]]);
    const w = u.mul(v);
    assert.deepEqual(w.shape, [2, 4, 3]);
    assert.equal(w.sum().item(), 2 * 3 * 10);
    assert.throws(() => ones([2, 3]).add(ones([4])), TorchError);
    // integer / float promotion
    assert.equal(tensor([1, 2], I64).add(tensor([0.5, 0.5], F64)).dtype, "float64");
    assert.equal(tensor([1, 2], I64).div(2).dtype, "float32");
    expectT(tensor([1, 3], I64).div(2), [2], [0.5, 1.5]);
    // lerp
    expectT(tensor([0, 10], F64).lerp(tensor([10, 20], F64), 0.25), [2], [2.5, 12.5]);
  }));

Deno.test("comparisons, logical ops, where, maskedFill, clamp", () =>
  scope(() => {
    const a = tensor([1, 2, 3, 4]);
    const b = tensor([4, 2, 1, 4]);
    assert.deepEqual(a.eq(b).toArray(), [false, true, false, true]);
    assert.deepEqual(a.ne(b).toArray(), [true, false, true, false]);
    assert.deepEqual(a.lt(b).toArray(), [true, false, false, false]);
    assert.deepEqual(a.le(b).toArray(), [true, true, false, true]);
    assert.deepEqual(a.gt(b).toArray(), [false, false, true, false]);
    assert.deepEqual(a.ge(b).toArray(), [false, true, true, true]);
    assert.deepEqual(a.gt(2).toArray(), [false, false, true, true]);
    assert.equal(a.eq(b).dtype, "bool");
    const m1 = a.gt(1), m2 = a.lt(4);
    assert.deepEqual(m1.logicalAnd(m2).toArray(), [false, true, true, false]);
    assert.deepEqual(a.eq(1).logicalOr(a.eq(4)).toArray(), [true, false, false, true]);
    assert.deepEqual(m1.logicalNot().toArray(), [true, false, false, false]);
    assert.deepEqual(tensor([NaN, 1, Infinity]).isnan().toArray(), [true, false, false]);
    assert.deepEqual(tensor([NaN, 1, Infinity]).isfinite().toArray(), [false, true, false]);

    expectT(where(a.gt(2), a, b), [4], [4, 2, 3, 4]);
    // where broadcasts cond [2, 1] against values [3]
    const cond = tensor([[true], [false]]);
    expectT(where(cond, tensor([1, 2, 3]), zeros([3])), [2, 3], [1, 2, 3, 0, 0, 0]);
    expectT(a.maskedFill(a.ge(3), -1), [4], [1, 2, -1, -1]);
    const x = tensor([[1, 2], [3, 4]]);
    expectT(x.maskedFill(tensor([true, false]), 0), [2, 2], [0, 2, 0, 4]); // broadcast mask
    const y = x.clone();
    y.maskedFill_(tensor([[false, true], [true, false]]), 9);
    expectT(y, [2, 2], [1, 9, 9, 4]);
    expectT(x, [2, 2], [1, 2, 3, 4]); // out-of-place left x alone

    const c = tensor([-3, -0.5, 0.5, 3]);
    expectT(c.clamp(-1, 1), [4], [-1, -0.5, 0.5, 1]);
    expectT(c.clamp(0), [4], [0, 0, 0.5, 3]);
    expectT(c.clamp(null, 0), [4], [-3, -0.5, 0, 0]);
    expectT(c.clamp(tensor([0, 0, 0, 0]), tensor([1, 1, 1, 2])), [4], [0, 0, 0.5, 2]);
    const d = c.clone().clamp_(-2, 2);
    expectT(d, [4], [-2, -0.5, 0.5, 2]);
    assert.throws(() => c.clamp(tensor([0]), 1), /both be numbers or both be tensors/);
  }));

Deno.test("in-place updates", () =>
  scope(() => {
    const x = tensor([1, 2, 3], F64);
    x.add_(tensor([1, 1, 1], F64), 2).mul_(2).sub_(1).div_(tensor([1, 2, 4], F64));
    expectT(x, [3], [5, 3.5, 2.25]);
    x.pow_(2);
    expectT(x, [3], [25, 12.25, 5.0625]);
    x.copy_(tensor([7], F64)); // broadcast copy
    expectT(x, [3], [7, 7, 7]);
    x.fill_(-1.5);
    expectT(x, [3], [-1.5, -1.5, -1.5]);
    x.zero_();
    expectT(x, [3], [0, 0, 0]);
    const acc = zeros([2], F64);
    acc.addcmul_(tensor([2, 3], F64), tensor([4, 5], F64), 0.5);
    expectT(acc, [2], [4, 7.5]);
    acc.addcdiv_(tensor([1, 1], F64), tensor([2, 4], F64), 2);
    expectT(acc, [2], [5, 8]);
    acc.lerp_(tensor([15, 18], F64), 0.1);
    expectT(acc, [2], [6, 9], 1e-15);
    acc.maximum_(tensor([7, 0], F64));
    expectT(acc, [2], [7, 9], 1e-15);
  }));

// ---- reductions -----------------------------------------------------------------------------

Deno.test("reductions with keepdim and negative dims", () =>
  scope(() => {
    // x[i][j][k] = 12i + 4j + k, shape [2, 3, 4]
    const x = arange(24, undefined, 1, F64).reshape([2, 3, 4]);
    expectT(x.sum(), [], [276]);
    expectT(x.sum(-1), [2, 3], [6, 22, 38, 54, 70, 86]);
    expectT(x.sum(-1, { keepdim: true }), [2, 3, 1], [6, 22, 38, 54, 70, 86]);
    expectT(x.sum([0, -1]), [3], [60, 92, 124]);
    expectT(x.mean(1), [2, 4], [4, 5, 6, 7, 16, 17, 18, 19]);
    expectT(x.mean([-2, -1], { keepdim: true }), [2, 1, 1], [5.5, 17.5]);
    expectT(x.amax(-2), [2, 4], [8, 9, 10, 11, 20, 21, 22, 23]);
    expectT(x.amin(0, { keepdim: true }).flatten(), [12], Array.from({ length: 12 }, (_, i) => i));
    expectT(x.max(), [], [23]);
    expectT(x.min(), [], [0]);
    expectT(x.slice(-1, 0, 4, 2).add(1).prod(-1), [2, 3], [3, 35, 99, 195, 323, 483]);
    // var / std of [0, 4, 8] (over dim 1): mean 4, squared deviations 32
    expectT(x.var(1).select(0, 0), [4], [16, 16, 16, 16]);
    expectT(x.var(1, { unbiased: false }).select(0, 0), [4], [32 / 3, 32 / 3, 32 / 3, 32 / 3]);
    expectT(x.std(-2).select(1, 0), [2], [4, 4]);
    const b = tensor([[true, false], [true, true]]);
    assert.deepEqual(b.all(-1).toArray(), [false, true]);
    assert.deepEqual(b.any(0).toArray(), [true, true]);
    assert.equal(b.all().item(), 0);

    const y = tensor([[3, 9, 1], [7, 2, 8]]);
    const mx = y.maxDim(-1);
    expectT(mx.values, [2], [9, 8]);
    assert.deepEqual(mx.indices.toArray(), [1, 2]);
    assert.equal(mx.indices.dtype, "int64");
    const mn = y.minDim(0, { keepdim: true });
    expectT(mn.values, [1, 3], [3, 2, 1]);
    assert.deepEqual(mn.indices.toArray(), [[0, 1, 0]]);
    assert.equal(y.argmax().item(), 1);
    assert.deepEqual(y.argmax(0).toArray(), [1, 0, 1]);
    assert.deepEqual(y.argmin(-1, { keepdim: true }).toArray(), [[2], [1]]);
    expectT(y.cumsum(1), [2, 3], [3, 12, 13, 7, 9, 17]);
    expectT(y.cumprod(-1), [2, 3], [3, 27, 27, 7, 14, 112]);
    assert.throws(() => y.sum(2), TorchError);
  }));

Deno.test("norm, logsumexp, softmax, logSoftmax, normalize: closed forms", () =>
  scope(() => {
    const v = tensor([3, -4], F64);
    assert.equal(v.norm().item(), 5);
    assert.equal(v.norm(1).item(), 7);
    assert.equal(v.norm(Infinity).item(), 4);
    expectT(tensor([[3, 4], [6, 8], [0, 0]], F64).norm(2, -1), [3], [5, 10, 0]);
    expectT(tensor([[3, 4], [6, 8]], F64).norm(2, 0, { keepdim: true }), [1, 2], [
      Math.hypot(3, 6),
      Math.hypot(4, 8),
    ], 1e-15);
    expectT(tensor([1, 2, 2], F64).norm(3), [], [Math.cbrt(17)], 1e-15);

    // logsumexp: ln(e^1 + e^2 + e^3); stable for large values: 1000 + ln 2
    expectT(
      tensor([1, 2, 3], F64).logsumexp(0),
      [],
      [Math.log(Math.E + Math.E ** 2 + Math.E ** 3)],
      1e-15,
    );
    expectT(tensor([1000, 1000], F64).logsumexp(-1), [], [1000 + Math.LN2], 1e-15);
    expectT(
      tensor([[0, 0], [1000, -1000]], F64).logsumexp(1, { keepdim: true }),
      [2, 1],
      [Math.LN2, 1000],
      1e-15,
    );

    const s = tensor([1, 2, 3], F64).softmax(0);
    const z = Math.E + Math.E ** 2 + Math.E ** 3;
    expectT(s, [3], [Math.E / z, Math.E ** 2 / z, Math.E ** 3 / z], 1e-15);
    expectT(tensor([0, 0, 0, 0]).softmax(-1), [4], [0.25, 0.25, 0.25, 0.25]);
    // large inputs stay finite: [1000, 1001] → [1/(1+e), e/(1+e)]
    expectT(tensor([1000, 1001], F64).softmax(0), [2], [1 / (1 + Math.E), Math.E / (1 + Math.E)]);
    // along dim 0 of [2, 2]: columns are normalised
    expectT(tensor([[0, 1], [0, 3]], F64).softmax(0), [2, 2], [
      0.5,
      1 / (1 + Math.E ** 2),
      0.5,
      Math.E ** 2 / (1 + Math.E ** 2),
    ], 1e-15);
    expectT(
      tensor([1, 2, 3], F64).logSoftmax(0),
      [3],
      [1, 2, 3].map((k) => k - Math.log(z)),
      1e-15,
    );
    expectT(tensor([1000, 0], F64).logSoftmax(0), [2], [0, -1000], 1e-15);

    expectT(normalize(tensor([[3, 4], [0, 0]], F64), { dim: -1 }), [2, 2], [0.6, 0.8, 0, 0]);
    expectT(normalize(tensor([[1, 1], [1, 3]], F64), { p: 1, dim: 0 }), [2, 2], [
      0.5,
      0.25,
      0.5,
      0.75,
    ]);
  }));

Deno.test("layer_norm matches the textbook formula", () =>
  scope(() => {
    const rows = [[1, 2, 3, 4], [-2, 0, 0, 10], [5, 5, 5, 5.5]];
    const w = [1, 0.5, -2, 3];
    const b = [0, 1, 0.25, -1];
    const eps = 1e-5;
    const expected: number[] = [];
    const plain: number[] = [];
    for (const r of rows) {
      const m = r.reduce((s, v) => s + v, 0) / r.length;
      const v = r.reduce((s, x) => s + (x - m) ** 2, 0) / r.length; // biased variance
      r.forEach((x, j) => {
        const n = (x - m) / Math.sqrt(v + eps);
        plain.push(n);
        expected.push(n * w[j] + b[j]);
      });
    }
    const x = tensor(rows, F64);
    expectT(layerNorm(x, [4], tensor(w, F64), tensor(b, F64), eps), [3, 4], expected, 1e-12);
    expectT(layerNorm(x, [4], null, null, eps), [3, 4], plain, 1e-12);
    // normalising over two dimensions = over the flattened pair
    const x2 = x.reshape([1, 3, 4]);
    const flat = layerNorm(x.reshape([1, 12]), [12]);
    expectT(layerNorm(x2, [3, 4]), [1, 3, 4], vals(flat), 1e-12);
    // the default eps is 1e-5 (variance of a constant row is 0 → output 0, not NaN)
    expectT(layerNorm(tensor([[2, 2]], F64), [2]), [1, 2], [0, 0]);
    assert.throws(() => layerNorm(x, [5]), TorchError);
  }));

Deno.test("cross-entropy with ignore_index 255, by hand", () =>
  scope(() => {
    // logits [N=2, C=3, H=2, W=2] and targets [2, 2, 2]
    const N = 2, C = 3, P = 4;
    const logits = Array.from({ length: N * C * P }, (_, n) => (((n * 13) % 17) - 8) / 4);
    const targets = [0, 2, 255, 1, 255, 1, 0, 2];
    const classW = [0.5, 1, 2];
    const lt = fromTypedArray(Float64Array.from(logits), [N, C, 2, 2]);
    const tt = tensor(targets, { dtype: "int64", shape: [N, 2, 2] });
    // per-pixel −log softmax(target), computed here in plain JS
    const perPixel: number[] = [];
    let sum = 0, count = 0, wsum = 0, wcount = 0;
    for (let n = 0; n < N; n++) {
      for (let p = 0; p < P; p++) {
        const t = targets[n * P + p];
        if (t === 255) {
          perPixel.push(0);
          continue;
        }
        const zs = Array.from({ length: C }, (_, c) => logits[(n * C + c) * P + p]);
        const m = Math.max(...zs);
        const lse = m + Math.log(zs.reduce((s, z) => s + Math.exp(z - m), 0));
        const l = lse - zs[t];
        perPixel.push(l);
        sum += l;
        count++;
        wsum += classW[t] * l;
        wcount += classW[t];
      }
    }
    const opts = { ignoreIndex: 255 };
    expectT(crossEntropy(lt, tt, opts), [], [sum / count], 1e-12, "mean");
    expectT(crossEntropy(lt, tt, { ...opts, reduction: "sum" }), [], [sum], 1e-12, "sum");
    expectT(crossEntropy(lt, tt, { ...opts, reduction: "none" }), [N, 2, 2], perPixel, 1e-12);
    expectT(
      crossEntropy(lt, tt, { ...opts, weight: tensor(classW, F64) }),
      [],
      [wsum / wcount],
      1e-12,
      "weighted mean",
    );
    // without ignoreIndex, 255 is an out-of-range class
    assert.throws(() => crossEntropy(lt, tt), TorchError);
    // a plain [N, C] batch
    const l2 = tensor([[2, 0, 0], [0, 0, 0]], F64);
    const t2 = tensor([0, 1], I64);
    const e2 = (Math.log(Math.E ** 2 + 2) - 2 + Math.log(3)) / 2;
    expectT(crossEntropy(l2, t2), [], [e2], 1e-14);
    // a gradient flows: d mean / d logits = (softmax − onehot) / N
    const lg = l2.clone().requiresGrad_(true);
    crossEntropy(lg, t2).backward();
    const s0 = Math.E ** 2 / (Math.E ** 2 + 2), s1 = 1 / (Math.E ** 2 + 2);
    expectT(lg.grad!, [2, 3], [(s0 - 1) / 2, s1 / 2, s1 / 2, 1 / 6, -1 / 3, 1 / 6], 1e-14);
  }));

Deno.test("topk and sort", () =>
  scope(() => {
    const x = tensor([[5, 1, 4, 1, 3], [0, 9, 2, 8, 7]]);
    const tk = x.topk(2);
    expectT(tk.values, [2, 2], [5, 4, 9, 8]);
    assert.deepEqual(tk.indices.toArray(), [[0, 2], [1, 3]]);
    const sm = x.topk(3, { largest: false });
    expectT(sm.values.select(0, 1), [3], [0, 2, 7]);
    assert.deepEqual(sm.indices.select(0, 1).toArray(), [0, 2, 4]);
    const d0 = x.topk(1, { dim: 0 });
    expectT(d0.values, [1, 5], [5, 9, 4, 8, 7]);
    assert.deepEqual(d0.indices.toArray(), [[0, 1, 0, 1, 1]]);
    assert.throws(() => x.topk(6), TorchError);

    const s = x.sort();
    expectT(s.values, [2, 5], [1, 1, 3, 4, 5, 0, 2, 7, 8, 9]);
    const sd = x.sort({ descending: true, dim: -1 });
    expectT(sd.values.select(0, 1), [5], [9, 8, 7, 2, 0]);
    assert.deepEqual(sd.indices.select(0, 1).toArray(), [1, 3, 4, 2, 0]);
    // stable sort keeps equal keys in input order
    const dup = tensor([2, 1, 2, 1, 2, 1, 0]);
    assert.deepEqual(dup.sort({ stable: true }).indices.toArray(), [6, 1, 3, 5, 0, 2, 4]);
    assert.deepEqual(dup.argsort({ stable: true, descending: true }).toArray(), [
      0,
      2,
      4,
      1,
      3,
      5,
      6,
    ]);
    // the values gathered by the indices are the sorted values
    assert.deepEqual(vals(x.gather(1, s.indices)), vals(s.values));
  }));

Deno.test("indexing: gather / scatter / indexSelect / select / maskedSelect / nonzero", () =>
  scope(() => {
    const x = tensor([[1, 2, 3], [4, 5, 6]]);
    const idx = tensor([[2, 0], [1, 1]], I64);
    expectT(x.gather(1, idx), [2, 2], [3, 1, 5, 5]);
    expectT(x.gather(0, tensor([[1, 0, 1]], I64)), [1, 3], [4, 2, 6]);
    expectT(x.indexSelect(1, tensor([2, 0, 2], I64)), [2, 3], [3, 1, 3, 6, 4, 6]);
    expectT(x.indexSelect(-2, tensor([1], I64)), [1, 3], [4, 5, 6]);
    expectT(x.select(1, -1), [2], [3, 6]);
    assert.throws(() => x.indexSelect(0, tensor([5], I64)), TorchError);

    const z = zeros([2, 4]);
    const sc = z.scatter(1, tensor([[3, 0], [1, 2]], I64), tensor([[7, 8], [9, 10]]));
    expectT(sc, [2, 4], [8, 0, 0, 7, 0, 9, 10, 0]);
    expectT(z, [2, 4], [0, 0, 0, 0, 0, 0, 0, 0]); // out of place
    expectT(z.scatter(1, tensor([[1], [3]], I64), 5), [2, 4], [0, 5, 0, 0, 0, 0, 0, 5]);
    const sa = zeros([5], F64).scatterAdd(0, tensor([0, 1, 0, 4, 0], I64), ones([5], F64));
    expectT(sa, [5], [3, 1, 0, 0, 1]);

    expectT(x.maskedSelect(x.gt(2)), [4], [3, 4, 5, 6]);
    assert.deepEqual(tensor([[0, 1], [2, 0]]).nonzero().toArray(), [[0, 1], [1, 0]]);
    expectT(tensor([[1, 2], [3, 4]]).triu(), [2, 2], [1, 2, 0, 4]);
    expectT(tensor([[1, 2], [3, 4]]).tril(-1), [2, 2], [0, 0, 3, 0]);
    assert.deepEqual(tensor([2, 0], I64).oneHot(3).toArray(), [[0, 0, 1], [1, 0, 0]]);
    assert.deepEqual(tensor([1, 1, 3], I64).bincount({ minlength: 5 }).toArray(), [0, 2, 0, 1, 0]);
  }));

Deno.test("shape ops: cat / stack / chunk / split / narrow / slice / views", () =>
  scope(() => {
    const a = tensor([[1, 2], [3, 4]]);
    const b = tensor([[5, 6]]);
    expectT(cat([a, b]), [3, 2], [1, 2, 3, 4, 5, 6]);
    expectT(cat([a, a], -1), [2, 4], [1, 2, 1, 2, 3, 4, 3, 4]);
    assert.throws(() => cat([a, b], 1), TorchError);
    expectT(stack([a, a]), [2, 2, 2], [1, 2, 3, 4, 1, 2, 3, 4]);
    expectT(stack([a, a.neg()], 2), [2, 2, 2], [1, -1, 2, -2, 3, -3, 4, -4]);

    const r = arange(10);
    const ch = r.chunk(3);
    assert.deepEqual(ch.map((c) => c.toArray()), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]);
    const sp = r.split(4);
    assert.deepEqual(sp.map((c) => c.shape[0]), [4, 4, 2]);
    const sp2 = r.split([2, 5, 3]);
    assert.deepEqual(sp2.map((c) => c.toArray()), [[0, 1], [2, 3, 4, 5, 6], [7, 8, 9]]);
    assert.throws(() => r.split([2, 2]), TorchError);
    const m = arange(12).reshape([3, 4]);
    assert.deepEqual(m.chunk(2, 1).map((c) => c.toArray()), [
      [[0, 1], [4, 5], [8, 9]],
      [[2, 3], [6, 7], [10, 11]],
    ]);
    expectT(m.narrow(1, 1, 2), [3, 2], [1, 2, 5, 6, 9, 10]);
    expectT(m.narrow(-2, 2, 1), [1, 4], [8, 9, 10, 11]);
    expectT(m.slice(1, 1, 4, 2), [3, 2], [1, 3, 5, 7, 9, 11]);
    expectT(m.slice(0, -2), [2, 4], [4, 5, 6, 7, 8, 9, 10, 11]);
    expectT(m.slice(1, 0, -1, 3), [3, 1], [0, 4, 8]);
    // narrow is a view: writing through it changes m
    const nv = m.narrow(1, 1, 2);
    assert.equal(nv.isContiguous, false);
    nv.fill_(0);
    expectT(m.select(0, 0), [4], [0, 0, 0, 3]);
    assert.throws(() => m.narrow(1, 3, 2), TorchError);

    const x = arange(24).reshape([2, 3, 4]);
    expectT(x.permute([2, 0, 1]).select(0, 1), [2, 3], [1, 5, 9, 13, 17, 21]);
    assert.deepEqual(x.transpose(0, 2).shape, [4, 3, 2]);
    assert.equal(x.transpose(0, 2).isContiguous, false);
    assert.equal(x.transpose(0, 2).contiguous().isContiguous, true);
    assert.deepEqual(x.transpose(0, 2).strides(), [1, 4, 12]);
    assert.deepEqual(x.reshape([-1, 4]).shape, [6, 4]);
    assert.deepEqual(x.view([6, 4]).shape, [6, 4]);
    assert.throws(() => x.transpose(0, 1).view([24]), TorchError);
    assert.deepEqual(x.flatten(1).shape, [2, 12]);
    assert.deepEqual(x.flatten().shape, [24]);
    assert.deepEqual(x.unsqueeze(-1).shape, [2, 3, 4, 1]);
    assert.deepEqual(ones([1, 3, 1]).squeeze().shape, [3]);
    assert.deepEqual(ones([1, 3, 1]).squeeze(0).shape, [3, 1]);
    expectT(tensor([[1], [2]]).expand([2, 3]), [2, 3], [1, 1, 1, 2, 2, 2]);
    expectT(tensor([1, 2]).repeat([2, 2]), [2, 4], [1, 2, 1, 2, 1, 2, 1, 2]);
    expectT(tensor([[1, 2], [3, 4]]).flip([1]), [2, 2], [2, 1, 4, 3]);
    expectT(tensor([[1, 2], [3, 4]]).flip([0, 1]), [2, 2], [4, 3, 2, 1]);
    assert.equal(x.size(-1), 4);
    assert.equal(x.numel, 24);
    assert.throws(() => x.size(3), TorchError);
  }));

Deno.test("matmul / bmm by hand", () =>
  scope(() => {
    const a = tensor([[1, 2, 3], [4, 5, 6]], F64);
    const b = tensor([[7, 8], [9, 10], [11, 12]], F64);
    expectT(a.matmul(b), [2, 2], [58, 64, 139, 154]);
    expectT(a.matmul(tensor([1, 0, -1], F64)), [2], [-2, -2]);
    const ab = stack([a, a.mul(2)]);
    expectT(ab.bmm(stack([b, b])), [2, 2, 2], [58, 64, 139, 154, 116, 128, 278, 308]);
    assert.throws(() => a.matmul(a), /matmul/);
  }));

// ---- resizing and sampling --------------------------------------------------------------------

/** PyTorch's bilinear resize (no antialias), written out in JS. */
function bilinearRef(
  x: number[],
  [C, H, W]: [number, number, number],
  [oh, ow]: [number, number],
  alignCorners: boolean,
  scales?: [number, number],
): number[] {
  const src = (d: number, inS: number, outS: number, scale?: number) => {
    if (alignCorners) return outS > 1 ? d * (inS - 1) / (outS - 1) : 0;
    const r = scale !== undefined ? 1 / scale : inS / outS;
    return Math.max((d + 0.5) * r - 0.5, 0);
  };
  const out: number[] = [];
  for (let c = 0; c < C; c++) {
    for (let i = 0; i < oh; i++) {
      const sy = src(i, H, oh, scales?.[0]);
      const y0 = Math.floor(sy), y1 = Math.min(y0 + 1, H - 1), ly = sy - y0;
      for (let j = 0; j < ow; j++) {
        const sx = src(j, W, ow, scales?.[1]);
        const x0 = Math.floor(sx), x1 = Math.min(x0 + 1, W - 1), lx = sx - x0;
        const at = (yy: number, xx: number) => x[(c * H + yy) * W + xx];
        out.push(
          (1 - ly) * ((1 - lx) * at(y0, x0) + lx * at(y0, x1)) +
            ly * ((1 - lx) * at(y1, x0) + lx * at(y1, x1)),
        );
      }
    }
  }
  return out;
}

Deno.test("interpolate: nearest and bilinear against JS references", () =>
  scope(() => {
    const x = X1();
    // nearest (PyTorch's legacy rule): src = floor(dst · in / out)
    const near = (oh: number, ow: number, ry: number, rx: number) => {
      const out: number[] = [];
      for (let c = 0; c < 2; c++) {
        for (let i = 0; i < oh; i++) {
          for (let j = 0; j < ow; j++) {
            const y = Math.min(Math.floor(i * ry), 3), xx = Math.min(Math.floor(j * rx), 4);
            out.push(X1_DATA[(c * 4 + y) * 5 + xx]);
          }
        }
      }
      return out;
    };
    expectT(interpolate(x, { size: [8, 10] }), [1, 2, 8, 10], near(8, 10, 0.5, 0.5), 0);
    expectT(
      interpolate(x, { size: [3, 3], mode: "nearest" }),
      [1, 2, 3, 3],
      near(3, 3, 4 / 3, 5 / 3),
      0,
    );
    expectT(interpolate(x, { scaleFactor: 2 }), [1, 2, 8, 10], near(8, 10, 0.5, 0.5), 0);
    expectT(interpolate(x, { scaleFactor: [0.5, 0.4] }), [1, 2, 2, 2], near(2, 2, 2, 2.5), 0);
    assert.throws(() => interpolate(x, { size: [3, 3], alignCorners: true }), TorchError);

    // bilinear, size and scale-factor forms, both corner conventions
    const shape: [number, number, number] = [2, 4, 5];
    const cases: [string, Tensor, number[]][] = [
      [
        "size 6x7",
        interpolate(x, { size: [6, 7], mode: "bilinear" }),
        bilinearRef(X1_DATA, shape, [6, 7], false),
      ],
      [
        "size 3x2",
        interpolate(x, { size: [3, 2], mode: "bilinear" }),
        bilinearRef(X1_DATA, shape, [3, 2], false),
      ],
      [
        "size 7x9 align",
        interpolate(x, { size: [7, 9], mode: "bilinear", alignCorners: true }),
        bilinearRef(X1_DATA, shape, [7, 9], true),
      ],
      [
        "scale 1.5",
        interpolate(x, { scaleFactor: 1.5, mode: "bilinear" }),
        bilinearRef(X1_DATA, shape, [6, 7], false, [1.5, 1.5]),
      ],
    ];
    for (const [what, got, want] of cases) close(vals(got), want, 1e-12, what);
    // align_corners keeps the corners exactly
    const ac = interpolate(x, { size: [7, 9], mode: "bilinear", alignCorners: true });
    assert.equal(ac.select(3, 8).select(2, 6).select(1, 1).item(), X1_DATA[39]);
    // identity size is the identity
    expectT(interpolate(x, { size: [4, 5], mode: "bilinear" }), [1, 2, 4, 5], X1_DATA, 1e-15);
    expectT(interpolate(x, { size: [4, 5], mode: "bicubic" }), [1, 2, 4, 5], X1_DATA, 1e-14);
    assert.throws(() => interpolate(x, { mode: "bilinear" }), /size or a scale factor/);
    assert.throws(() => interpolate(ones([4, 5]), { size: [2, 2] }), /4-D/);
  }));

Deno.test("interpolate: bicubic and antialias against PyTorch 1.13 numbers", () =>
  scope(() => {
    const x = X1();
    // F.interpolate(X1, size=(6, 7), mode="bicubic", align_corners=False)
    const bicubic6x7 = [
      -0.2972115929705215,
      2.245062459507613,
      3.1142315557175273,
      1.2282986111111114,
      3.9524239755426023,
      4.151039135892454,
      2.3011849084872056,
      -0.17394770408163263,
      2.368326348396502,
      3.2374954446064157,
      1.3515625,
      4.07568786443149,
      4.274303024781342,
      2.424448797376095,
      0.027730536659108483,
      2.5700045891372425,
      3.439173685347156,
      1.553240740740741,
      4.277366105172232,
      4.475981265522083,
      2.626127038116836,
      0.17124905517762692,
      2.713523107655762,
      3.582692203865675,
      1.6967592592592597,
      4.42088462369075,
      4.619499784040601,
      2.769645556635354,
      0.37292729591836765,
      2.915201348396502,
      3.7843704446064157,
      1.8984375,
      4.622562864431489,
      4.82117802478134,
      2.971323797376094,
      0.49619118480725677,
      3.0384652372853913,
      3.9076343334953054,
      2.0217013888888893,
      4.7458267533203795,
      4.94444191367023,
      3.094587686264984,
      0.7027884070294791,
      3.2450624595076136,
      4.365689281665048,
      2.2282986111111116,
      0.09090794055717778,
      1.2115347627146114,
      3.7538088151927482,
      0.8260522959183679,
      3.3683263483965025,
      4.488953170553937,
      2.3515625,
      0.21417182944606664,
      1.3347986516035002,
      3.8770727040816375,
      1.027730536659109,
      3.570004589137244,
      4.690631411294677,
      2.5532407407407414,
      0.4158500701868077,
      1.5364768923442413,
      4.078750944822378,
      1.1712490551776276,
      3.713523107655762,
      4.834149929813195,
      2.69675925925926,
      0.5593685887053262,
      1.67999541086276,
      4.222269463340898,
      1.372927295918368,
      3.9152013483965025,
      5.035828170553936,
      2.8984375,
      0.7610468294460669,
      1.8816736516035,
      4.4239477040816375,
      1.496191184807257,
      4.038465237285392,
      5.159092059442827,
      3.0217013888888893,
      0.8843107183349561,
      2.0049375404923895,
      4.547211592970526,
    ];
    expectT(interpolate(x, { size: [6, 7], mode: "bicubic" }), [1, 2, 6, 7], bicubic6x7, 1e-12);
    // F.interpolate(X1, size=(7, 3), mode="bicubic", align_corners=True)
    const bicubic7x3ac = [
      0,
      1.25,
      2.5,
      0.1015625,
      1.3515625,
      2.6015625,
      0.25,
      1.5,
      2.75,
      0.375,
      1.625,
      2.875,
      0.5,
      1.75,
      3,
      0.6484375,
      1.8984375,
      3.1484375,
      0.75,
      2,
      3.25,
      1,
      2.25,
      3.5,
      1.1015625,
      2.3515625,
      3.6015625,
      1.25,
      2.5,
      3.75,
      1.375,
      2.625,
      3.875,
      1.5,
      2.75,
      4,
      1.6484375,
      2.8984375,
      4.1484375,
      1.75,
      3,
      4.25,
    ];
    expectT(
      interpolate(x, { size: [7, 3], mode: "bicubic", alignCorners: true }),
      [1, 2, 7, 3],
      bicubic7x3ac,
      1e-12,
    );
    // F.interpolate(X1, scale_factor=1.5, mode="bicubic", align_corners=False): the output is
    // 6x7 like above, but the sampling grid uses the scale 1/1.5 (not 5/7) along the width
    const bicubicScale = [
      -0.32552083333333265,
      1.9392361111111116,
      3.398437500000002,
      1.3081597222222239,
      2.978298611111112,
      4.709201388888891,
      2.8619791666666683,
      -0.20225694444444375,
      2.0625,
      3.521701388888891,
      1.4314236111111127,
      3.1015625000000004,
      4.832465277777779,
      2.9852430555555567,
      -0.000578703703702714,
      2.2641782407407414,
      3.7233796296296324,
      1.6331018518518536,
      3.3032407407407414,
      5.03414351851852,
      3.1869212962962976,
      0.14293981481481569,
      2.40769675925926,
      3.8668981481481515,
      1.7766203703703722,
      3.44675925925926,
      5.177662037037039,
      3.3304398148148167,
      0.3446180555555564,
      2.609375,
      4.068576388888891,
      1.9782986111111127,
      3.6484375,
      5.379340277777779,
      3.5321180555555562,
      0.4678819444444455,
      2.7326388888888893,
      4.19184027777778,
      2.1015625000000018,
      3.7717013888888893,
      5.502604166666669,
      3.655381944444446,
      0.6744791666666677,
      2.9392361111111116,
      4.498263888888889,
      2.807291666666668,
      0.5642361111111113,
      0.28530092592592654,
      2.9369212962962963,
      0.7977430555555565,
      3.0625,
      4.621527777777778,
      2.9305555555555562,
      0.6875,
      0.4085648148148154,
      3.0601851851851847,
      0.9994212962962975,
      3.264178240740741,
      4.82320601851852,
      3.132233796296297,
      0.889178240740741,
      0.6102430555555564,
      3.261863425925925,
      1.1429398148148162,
      3.40769675925926,
      4.966724537037037,
      3.275752314814816,
      1.0326967592592595,
      0.7537615740740748,
      3.405381944444444,
      1.3446180555555567,
      3.609375,
      5.168402777777777,
      3.4774305555555562,
      1.234375,
      0.9554398148148152,
      3.6070601851851842,
      1.4678819444444458,
      3.7326388888888893,
      5.291666666666668,
      3.6006944444444455,
      1.357638888888889,
      1.0787037037037044,
      3.7303240740740726,
    ];
    expectT(
      interpolate(x, { scaleFactor: 1.5, mode: "bicubic" }),
      [1, 2, 6, 7],
      bicubicScale,
      1e-12,
    );
    // float32 input gives the same numbers to float32 precision
    close(
      vals(interpolate(x.float(), { size: [6, 7], mode: "bicubic" })),
      bicubic6x7,
      2e-6,
      "float32 bicubic",
    );

    const x2 = X2();
    // F.interpolate(X2, size=(3, 5), mode="bilinear", align_corners=False, antialias=True)
    const aaBilinear = [
      4.246112440191388,
      4.81335282651072,
      4.026315789473683,
      3.2392787524366473,
      2.4808612440191387,
      5.170454545454547,
      4.412037037037035,
      3.625,
      2.837962962962963,
      2.8428030303030303,
      4.769138755980862,
      4.010721247563353,
      3.223684210526316,
      2.4366471734892787,
      4.088516746411483,
    ];
    expectT(
      interpolate(x2, { size: [3, 5], mode: "bilinear", antialias: true }),
      [1, 1, 3, 5],
      aaBilinear,
      1e-12,
    );
    // F.interpolate(X2, size=(3, 3), mode="bicubic", align_corners=False, antialias=True)
    const aaBicubic = [
      4.6699224079409465,
      4.2531129121638935,
      2.8242340687728906,
      4.99475702632985,
      3.588330020650877,
      2.693410249846435,
      4.371209880195238,
      2.946570482615456,
      3.235863593238066,
    ];
    expectT(
      interpolate(x2, { size: [3, 3], mode: "bicubic", antialias: true }),
      [1, 1, 3, 3],
      aaBicubic,
      1e-12,
    );
    // antialias changes the result when down-sampling (it is a wider filter)
    const plain = vals(interpolate(x2, { size: [3, 3], mode: "bicubic" }));
    assert.ok(plain.some((v, i) => Math.abs(v - aaBicubic[i]) > 1e-3));
    assert.throws(() => interpolate(x2, { size: [3, 3], antialias: true }), /antialias/);
  }));

Deno.test("grid_sample: pixel centres reproduce the input; off-centre values", () =>
  scope(() => {
    const [H, W] = [4, 5];
    const x = X1();
    // pixel centres with align_corners=false: u = (2j + 1) / W − 1, v = (2i + 1) / H − 1
    const centres: number[][][] = [];
    for (let i = 0; i < H; i++) {
      centres.push(Array.from({ length: W }, (_, j) => [(2 * j + 1) / W - 1, (2 * i + 1) / H - 1]));
    }
    const grid = tensor([centres], F64);
    assert.deepEqual(grid.shape, [1, H, W, 2]);
    for (const mode of ["bilinear", "bicubic", "nearest"] as const) {
      expectT(gridSample(x, grid, { mode }), [1, 2, H, W], X1_DATA, 1e-12, mode);
      expectT(gridSample(x.float(), grid.float(), { mode }), [1, 2, H, W], X1_DATA, 1e-6, mode);
    }
    // a flipped x coordinate mirrors the image
    const flipped = gridSample(x, grid.mul(tensor([-1, 1], F64)), { mode: "bicubic" });
    expectT(flipped, [1, 2, H, W], vals(x.flip([3])), 1e-12);

    // off-centre points, [1, 1, 4, 2] grid (x first, then y)
    const pts = [[-0.83, -0.41], [0.12, 0.37], [0.55, -0.66], [-0.2, 0.9]];
    const g = tensor([[pts]], F64);
    // bilinear by hand: unnormalised p = ((u + 1)·size − 1) / 2, zero padding outside
    const bil: number[] = [];
    for (let c = 0; c < 2; c++) {
      for (const [u, v] of pts) {
        const px = ((u + 1) * W - 1) / 2, py = ((v + 1) * H - 1) / 2;
        const x0 = Math.floor(px), y0 = Math.floor(py);
        let s = 0;
        for (const [yy, wy] of [[y0, 1 - (py - y0)], [y0 + 1, py - y0]]) {
          for (const [xx, wx] of [[x0, 1 - (px - x0)], [x0 + 1, px - x0]]) {
            if (yy >= 0 && yy < H && xx >= 0 && xx < W) {
              s += wy * wx * X1_DATA[(c * H + yy) * W + xx];
            }
          }
        }
        bil.push(s);
      }
    }
    expectT(gridSample(x, g), [1, 2, 1, 4], bil, 1e-12, "bilinear");
    // PyTorch 1.13: F.grid_sample(X1, g, mode="bicubic", align_corners=False / True) with
    // g = tensor([[-0.83, -0.41], [0.12, 0.37], [0.55, -0.66], [-0.2, 0.9]]).reshape(1, 1, 4, 2)
    expectT(
      gridSample(x, g, { mode: "bicubic" }),
      [1, 2, 1, 4],
      [
        -0.038963423499998616,
        2.7578845120000013,
        4.932330052978517,
        2.2806875000000013,
        0.9498558600000019,
        1.853188231999999,
        1.3941052602539066,
        3.390351562500002,
      ],
      1e-12,
      "bicubic",
    );
    expectT(
      gridSample(x, g, { mode: "bicubic", alignCorners: true }),
      [1, 2, 1, 4],
      [
        1.4994458358633138,
        2.3725879948707522,
        5.33998152714063,
        2.9419436562499994,
        2.6202769827108767,
        1.9392208570245,
        0.2945287340000008,
        4.694700562499999,
      ],
      1e-12,
      "bicubic align_corners",
    );
    // python: F.grid_sample(X1, g, mode="bilinear", align_corners=False) (checks the JS one)
    close(
      bil,
      [
        0.15725000000000006,
        2.860000000000001,
        3.95125,
        2.1875000000000004,
        1.0822500000000002,
        2.135,
        1.3574999999999997,
        2.8875000000000006,
      ],
      1e-12,
      "bilinear JS reference vs PyTorch",
    );
    // outside [-1, 1] with zero padding: 0; with border padding: the edge value
    const far = tensor([[[[3, 0.75]]]], F64); // right of the image, on row 3
    expectT(gridSample(x, far), [1, 2, 1, 1], [0, 0]);
    expectT(gridSample(x, far, { paddingMode: "border" }), [1, 2, 1, 1], [
      X1_DATA[3 * W + 4],
      X1_DATA[20 + 3 * W + 4],
    ], 1e-12);
    assert.throws(() => gridSample(x, ones([1, 2, 2, 3], F64)), TorchError);
  }));

// ---- randomness -------------------------------------------------------------------------------

Deno.test("random: Generator streams match PyTorch 1.13's and reproduce by seed", async (t) => {
  await t.step("rand / randn / randint / bernoulli values", () =>
    scope(() => {
      // torch.rand(6, generator=torch.Generator().manual_seed(2024)), likewise randn, and
      // torch.randint(-5, 5, (8,), generator=…manual_seed(2024))
      const g = new Generator(2024);
      close(
        vals(rand([6], { generator: g })),
        [
          0.53171587,
          0.831267953,
          0.971837997,
          0.119300842,
          0.166902244,
          0.349458933,
        ],
        1e-7,
        "rand",
      );
      g.manualSeed(2024);
      close(
        vals(randn([6], { generator: g })),
        [
          -0.0404291674,
          1.72599208,
          -0.814038754,
          1.37216663,
          0.505964816,
          -0.482337385,
        ],
        1e-7,
        "randn",
      );
      g.manualSeed(2024);
      assert.deepEqual(vals(randint(-5, 5, [8], { generator: g })), [
        -3,
        -5,
        -1,
        -5,
        -2,
        -5,
        -5,
        -4,
      ]);
      // torch.bernoulli(tensor([0.1, 0.5, 0.9, 0, 1, 0.3, 0.7, 0.5]), generator=…manual_seed(2024))
      g.manualSeed(2024);
      const p = tensor([0.1, 0.5, 0.9, 0, 1, 0.3, 0.7, 0.5]);
      assert.deepEqual(vals(bernoulli(p, g)), [0, 0, 0, 0, 1, 0, 1, 0]);
      g.free();
    }));
  await t.step(
    "same seed → same stream; state save / restore; default generator",
    () =>
      scope(() => {
        using g1 = new Generator(7);
        using g2 = new Generator(7);
        const a = vals(randn([50], { generator: g1, dtype: "float64" }));
        assert.deepEqual(vals(randn([50], { generator: g2, dtype: "float64" })), a);
        assert.notDeepEqual(vals(randn([50], { generator: g1, dtype: "float64" })), a);
        const state = g1.getState();
        const next = vals(rand([20], { generator: g1 }));
        g1.setState(state);
        assert.deepEqual(vals(rand([20], { generator: g1 })), next);
        // the default generator after manualSeed(s) yields the same stream as Generator(s)
        manualSeed(7);
        assert.deepEqual(vals(randn([50], { dtype: "float64" })), a);
        using g3 = new Generator(8);
        assert.notDeepEqual(vals(randn([50], { generator: g3, dtype: "float64" })), a);
      }),
  );
  await t.step("basic statistics", () =>
    scope(() => {
      using g = new Generator(123);
      const n = 40000;
      const u = rand([n], { generator: g, dtype: "float64" });
      assert.ok(u.min().item() >= 0 && u.max().item() < 1);
      assert.ok(Math.abs(u.mean().item() - 0.5) < 0.01); // sd of the mean ≈ 0.0014
      assert.ok(Math.abs(u.var().item() - 1 / 12) < 0.003);
      const z = randn([n], { generator: g, dtype: "float64" });
      assert.ok(Math.abs(z.mean().item()) < 0.02);
      assert.ok(Math.abs(z.std().item() - 1) < 0.02);
      const ri = randint(3, 9, [n], { generator: g });
      assert.equal(ri.dtype, "int64");
      assert.equal(ri.min().item(), 3);
      assert.equal(ri.max().item(), 8);
      const counts = vals(ri.bincount()).slice(3);
      assert.equal(counts.length, 6);
      for (const c of counts) assert.ok(Math.abs(c - n / 6) < 300, `randint counts ${counts}`);
      const b = bernoulli(full([n], 0.3, F64), g);
      assert.equal(b.dtype, "float64");
      assert.ok(vals(b.eq(0).logicalOr(b.eq(1)).all()).every((v) => v === 1));
      assert.ok(Math.abs(b.mean().item() - 0.3) < 0.015);
      const bi = empty([n]).bernoulli_(0.8, g);
      assert.ok(Math.abs(bi.mean().item() - 0.8) < 0.015);
      const un = empty([n], F64).uniform_(-2, 6, g);
      assert.ok(un.min().item() >= -2 && un.max().item() < 6);
      assert.ok(Math.abs(un.mean().item() - 2) < 0.06);
      const nn = empty([n], F64).normal_(3, 0.5, g);
      assert.ok(Math.abs(nn.mean().item() - 3) < 0.01);
      assert.ok(Math.abs(nn.std().item() - 0.5) < 0.01);
    }));
  await t.step("truncNormal_: PyTorch's values, bounds and moments", () =>
    scope(() => {
      // torch.manual_seed(11); torch.nn.init.trunc_normal_(torch.empty(6)) (mean 0, std 1, ±2)
      manualSeed(11);
      close(
        vals(empty([6]).truncNormal_()),
        [
          -0.97407192,
          -0.0321782045,
          1.79362869,
          -0.902147651,
          0.20221065,
          0.481136739,
        ],
        1e-6,
        "trunc_normal_ default",
      );
      // torch.manual_seed(11); trunc_normal_(torch.empty(6), mean=0.5, std=0.02, a=0.47, b=0.53)
      manualSeed(11);
      close(
        vals(empty([6]).truncNormal_(0.02, 0.5, 0.47, 0.53)),
        [
          0.482875377,
          0.499415874,
          0.528205395,
          0.484058768,
          0.503666461,
          0.508673131,
        ],
        1e-6,
        "trunc_normal_ narrow",
      );
      // the same stream from a Generator with the same seed
      using g = new Generator(11);
      close(
        vals(empty([6]).truncNormal_(1, 0, -2, 2, g)),
        [
          -0.97407192,
          -0.0321782045,
          1.79362869,
          -0.902147651,
          0.20221065,
          0.481136739,
        ],
        1e-6,
        "trunc_normal_ with a Generator",
      );

      const n = 40000;
      // N(0, 1) truncated to [-2, 2]: mean 0, sd √(1 − 4φ(2)/(Φ(2) − Φ(−2))) = 0.87963
      const t1 = empty([n], F64).truncNormal_(1, 0, -2, 2, g);
      assert.ok(t1.min().item() >= -2 && t1.max().item() <= 2);
      assert.ok(Math.abs(t1.mean().item()) < 0.02);
      assert.ok(Math.abs(t1.std().item() - 0.87963) < 0.015, `std ${t1.std().item()}`);
      // N(0, 1) truncated to [0, 1]: mean (φ(0) − φ(1)) / (Φ(1) − Φ(0)) = 0.45986
      const t2 = empty([n], F64).truncNormal_(1, 0, 0, 1, g);
      assert.ok(t2.min().item() >= 0 && t2.max().item() <= 1);
      assert.ok(Math.abs(t2.mean().item() - 0.45986) < 0.01, `mean ${t2.mean().item()}`);
      // ViT init: std 0.02 with the default absolute bounds ±2 is a plain N(0, 0.02²)
      const t3 = empty([n]).truncNormal_(0.02, 0, -2, 2, g);
      assert.ok(Math.abs(t3.std().item() - 0.02) < 0.0005);
      // with bounds at ±2σ around a mean
      const t4 = empty([n], F64).truncNormal_(0.1, 5, 4.8, 5.2, g);
      assert.ok(t4.min().item() >= 4.8 && t4.max().item() <= 5.2);
      assert.ok(Math.abs(t4.std().item() - 0.087963) < 0.0015);
      assert.throws(() => empty([2]).truncNormal_(0), TorchError);
      assert.throws(() => empty([2]).truncNormal_(1, 0, 1, -1), TorchError);
    }));
});

Deno.test("dropout: identity in eval mode; seeded, scaled and reproducible in train mode", () =>
  scope(() => {
    const x = arange(1, 13, 1, F64);
    expectT(dropout(x, 0.5, false), [12], vals(x), 0);
    expectT(dropout(x, 0, true), [12], vals(x), 0);
    // torch.empty(12).bernoulli_(0.75, generator=torch.Generator().manual_seed(5)) is the keep
    // mask the shim draws for p = 0.25; kept values are scaled by 1 / (1 − p)
    const keep = [1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1];
    using g = new Generator(5);
    const y = dropout(x, 0.25, true, g);
    expectT(y, [12], keep.map((k, i) => (k * (i + 1)) / 0.75), 1e-15);
    g.manualSeed(5);
    assert.deepEqual(vals(dropout(x, 0.25, true, g)), vals(y));
    assert.notDeepEqual(vals(dropout(x, 0.25, true, g)), vals(y));
    expectT(dropout(x, 1, true, g), [12], new Array(12).fill(0));
    // the kept fraction and the scale on a large tensor (default generator too)
    for (const gen of [g, undefined]) {
      const big = dropout(ones([20000], F64), 0.3, true, gen);
      const kept = big.ne(0);
      const keptVals = big.maskedSelect(kept);
      close([keptVals.min().item(), keptVals.max().item()], [1 / 0.7, 1 / 0.7], 1e-12);
      assert.ok(Math.abs(kept.to("float64").mean().item() - 0.7) < 0.015);
      // E[dropout(x)] = x
      assert.ok(Math.abs(big.mean().item() - 1) < 0.03);
    }
    assert.throws(() => dropout(x, 1.5), TorchError);
  }));

// ---- autograd -----------------------------------------------------------------------------------

Deno.test("autograd: noGrad / enableGrad semantics", () =>
  scope(() => {
    const x = tensor([1, 2, 3], { requiresGrad: true });
    assert.equal(x.requiresGrad, true);
    assert.equal(x.isLeaf, true);
    assert.equal(isGradEnabled(), true);
    const inside = noGrad(() => {
      assert.equal(isGradEnabled(), false);
      const y = x.mul(2);
      assert.equal(y.requiresGrad, false, "no graph recorded inside noGrad");
      const z = enableGrad(() => {
        assert.equal(isGradEnabled(), true);
        return x.mul(3);
      });
      assert.equal(z.requiresGrad, true, "enableGrad re-enables recording");
      assert.equal(isGradEnabled(), false, "noGrad restored after the inner enableGrad");
      return y;
    });
    assert.equal(isGradEnabled(), true, "recording restored after noGrad");
    expectT(inside, [3], [2, 4, 6]);
    assert.throws(() => inside.sum().backward(), TorchError);
    // the mode is restored when the body throws
    assert.throws(() =>
      noGrad(() => {
        throw new Error("boom");
      }), /boom/);
    assert.equal(isGradEnabled(), true);
    // nested noGrad
    noGrad(() => noGrad(() => assert.equal(isGradEnabled(), false)));
    assert.equal(isGradEnabled(), true);
    // in-place updates of a leaf are allowed inside noGrad (optimizer steps) but not outside
    noGrad(() => x.sub_(1));
    expectT(x, [3], [0, 1, 2]);
    assert.throws(() => x.sub_(1), TorchError);
    const d = x.detach();
    assert.equal(d.requiresGrad, false);
    assert.ok(d.sharesStorageWith(x));
  }));

Deno.test("autograd: backward with an explicit gradient, accumulation, setGrad(null)", () =>
  scope(() => {
    const x = tensor([1, 2, 3], { dtype: "float64", requiresGrad: true });
    assert.equal(x.grad, null);
    const y = x.mul(x); // dy/dx = 2x
    assert.equal(y.isLeaf, false);
    assert.throws(() => y.backward(), TorchError); // non-scalar needs a gradient
    y.backward(tensor([1, 0.5, 2], F64), { retainGraph: true });
    expectT(x.grad!, [3], [2, 2, 12]);
    // gradients accumulate
    y.backward(tensor([1, 1, 1], F64));
    expectT(x.grad!, [3], [4, 6, 18]);
    assert.throws(() => y.backward(tensor([1, 1, 1], F64)), TorchError); // graph freed
    // setGrad replaces, setGrad(null) drops
    x.setGrad(tensor([9, 9, 9], F64));
    expectT(x.grad!, [3], [9, 9, 9]);
    x.setGrad(null);
    assert.equal(x.grad, null);
    // a scalar backward through a small chain: d/dx Σ exp(x)·x = exp(x)(1 + x)
    x.mul(x.exp()).sum().backward();
    expectT(x.grad!, [3], [1, 2, 3].map((v) => Math.exp(v) * (1 + v)), 1e-14);
    assert.throws(() => x.backward(tensor([1, 1], F64)), TorchError); // wrong gradient shape
    // requiresGrad_(false) on a leaf stops recording
    const w = tensor([1, 2], { requiresGrad: true }).requiresGrad_(false);
    assert.equal(w.mul(2).requiresGrad, false);
  }));

Deno.test("errors: failures throw TorchError naming the op, the process carries on", () =>
  scope(() => {
    const a = ones([2, 3]), b = ones([4, 5]);
    assert.throws(() => a.matmul(b), (e: unknown) => {
      assert.ok(e instanceof TorchError);
      assert.equal(e.op, "matmul");
      assert.match(e.message, /\[2, 3\].*\[4, 5\]/);
      return true;
    });
    expectT(a.matmul(ones([3, 1])), [2, 1], [3, 3]);
    const f = ones([2]);
    f.free();
    assert.throws(() => f.add(1), /freed|after free/);
    assert.throws(() => f.shape, /after free/);
  }));

// JS numbers reach libtorch as integer Scalars when whole (PyTorch's rule for Python ints), so
// integer tensors keep their dtype and stay exact beyond 2^24; floor division by a fractional
// number and s / x follow PyTorch 1.13 (`torch.tensor([7, 30]) // 2.5`, `10 / x`).
Deno.test({
  name: "integer tensors with number scalars keep PyTorch's dtypes",
  fn: () =>
    scope(() => {
      const a = tensor([7, 30], I64);
      assert.equal(a.add(3).dtype, "int64");
      assert.equal(a.clamp(0, 10).dtype, "int64");
      assert.equal(tensor([1], { dtype: "uint8" }).add(1).dtype, "uint8");
      const big = fromTypedArray(new BigInt64Array([2n ** 60n + 1n]), [1]);
      assert.deepEqual(Array.from(big.add(1).toTypedArray() as BigInt64Array), [2n ** 60n + 2n]);
      a.clone().add_(1); // PyTorch: fine
      expectT(a.floorDivide(2.5), [2], [2, 12]); // torch.tensor([7, 30]) // 2.5
      assert.equal(tensor([3], F64).rdiv(10).item(), 10 / 3); // correctly rounded
    }),
});

Deno.test("ops tests leave no live tensors", () => {
  assert.equal(liveTensors(), START_TENSORS);
  assert.equal(liveHandles(), START_HANDLES);
});
