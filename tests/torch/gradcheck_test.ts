/**
 * Float64 finite-difference gradient checks of the operators the ViT and DenseDINO rely on,
 * and a check that the checker itself catches a wrong gradient.
 */
import assert from "node:assert/strict";
import {
  gelu,
  Generator,
  gridSample,
  interpolate,
  layerNorm,
  liveHandles,
  liveTensors,
  matmul,
  rand,
  randn,
  scope,
  softmax,
  type Tensor,
  tensor,
} from "../../mod.ts";
import {
  assertGradcheck,
  gradcheck,
  GradcheckError,
  type GradcheckResult,
} from "../../lib/torch/gradcheck.ts";

const START_TENSORS = liveTensors();
const START_HANDLES = liveHandles();

const F64 = { dtype: "float64" } as const;

/** float64 N(0, 1) input of `shape` from a fixed seed, marked requiresGrad. */
function input(shape: number[], seed: number, scale = 1): Tensor {
  using g = new Generator(seed);
  return randn(shape, { ...F64, generator: g }).mul(scale).requiresGrad_(true);
}

function passes(r: GradcheckResult): void {
  assert.ok(r.ok, r.message);
  assert.ok(r.maxAbsError < 1e-6, r.message);
}

Deno.test("gradcheck: matmul", async (t) => {
  await t.step("2-D", () =>
    scope(() => {
      const r = assertGradcheck((a, b) => a.matmul(b), [input([3, 4], 1), input([4, 2], 2)]);
      assert.equal(r.inputs.length, 2);
      passes(r);
    }));
  await t.step("batched with broadcasting, and vector", () =>
    scope(() => {
      passes(gradcheck((a, b) => matmul(a, b), [input([2, 3, 4], 3), input([4, 5], 4)]));
      passes(gradcheck((a, b) => matmul(a, b), [input([3, 4], 5), input([4], 6)]));
    }));
});

Deno.test("gradcheck: softmax along each dimension", () =>
  scope(() => {
    const x = input([3, 5], 7, 2);
    passes(gradcheck((a) => softmax(a, -1), [x]));
    passes(gradcheck((a) => softmax(a, 0), [x]));
    passes(gradcheck((a) => a.logSoftmax(1), [x]));
  }));

Deno.test("gradcheck: layer_norm w.r.t. input, weight and bias", () =>
  scope(() => {
    const x = input([3, 6], 8, 1.5);
    const w = input([6], 9);
    const b = input([6], 10);
    const r = gradcheck((a, ww, bb) => layerNorm(a, [6], ww, bb, 1e-5), [x, w, b]);
    assert.deepEqual(r.inputs.map((i) => i.input), [0, 1, 2]);
    passes(r);
    // normalising over two trailing dimensions
    const x3 = input([2, 3, 4], 11);
    const w3 = input([3, 4], 12);
    const b3 = input([3, 4], 13);
    passes(gradcheck((a, ww, bb) => layerNorm(a, [3, 4], ww, bb, 1e-6), [x3, w3, b3]));
  }));

Deno.test("gradcheck: gelu (exact and tanh approximation)", () =>
  scope(() => {
    const x = input([4, 5], 14, 2);
    passes(gradcheck((a) => gelu(a), [x]));
    passes(gradcheck((a) => gelu(a, "tanh"), [x]));
  }));

Deno.test("gradcheck: grid_sample bicubic w.r.t. input and grid", () =>
  scope(() => {
    const [H, W] = [4, 5];
    const x = input([1, 2, H, W], 15);
    // Sample points in unnormalised pixel coordinates whose fractional parts lie in
    // [0.2, 0.8], away from the integer positions where the cubic kernel's second derivative
    // jumps; mapped to [-1, 1] with align_corners=false: u = (2·p + 1) / size − 1.
    const px = [
      [0.3, 0.4],
      [1.6, 2.3],
      [3.25, 1.7],
      [2.5, 0.65],
      [0.75, 2.45],
      [1.35, 1.25],
    ];
    const g = px.map(([ix, iy]) => [(2 * ix + 1) / W - 1, (2 * iy + 1) / H - 1]);
    const grid = tensor([[g.slice(0, 3), g.slice(3)]], F64).requiresGrad_(true);
    assert.deepEqual(grid.shape, [1, 2, 3, 2]);
    const r = gradcheck(
      (a, gr) => gridSample(a, gr, { mode: "bicubic", alignCorners: false }),
      [x, grid],
    );
    assert.deepEqual(r.inputs.map((i) => i.input), [0, 1]);
    passes(r);
    // border padding as well
    passes(gradcheck(
      (a, gr) => gridSample(a, gr, { mode: "bicubic", paddingMode: "border" }),
      [x, grid],
    ));
  }));

Deno.test("gradcheck: interpolate bicubic, size and scale-factor forms", async (t) => {
  await t.step("size form, align_corners false and true", () =>
    scope(() => {
      const x = input([1, 2, 3, 4], 16);
      passes(gradcheck((a) => interpolate(a, { size: [5, 7], mode: "bicubic" }), [x]));
      passes(gradcheck(
        (a) => interpolate(a, { size: [4, 3], mode: "bicubic", alignCorners: true }),
        [x],
      ));
    }));
  await t.step("scale-factor form (up and down)", () =>
    scope(() => {
      const x = input([1, 1, 4, 5], 17);
      passes(gradcheck((a) => interpolate(a, { scaleFactor: 1.7, mode: "bicubic" }), [x]));
      passes(gradcheck((a) => interpolate(a, { scaleFactor: [0.75, 1.5], mode: "bicubic" }), [x]));
    }));
  await t.step("antialiased bicubic down-sampling", () =>
    scope(() => {
      const x = input([1, 1, 6, 6], 18);
      passes(gradcheck(
        (a) => interpolate(a, { size: [3, 4], mode: "bicubic", antialias: true }),
        [x],
      ));
    }));
});

Deno.test("gradcheck fails on a deliberately wrong gradient", async (t) => {
  await t.step("x · detach(x): autograd says x, the truth is 2x", () =>
    scope(() => {
      const x = input([2, 3], 19);
      const r = gradcheck((a) => a.mul(a.detach()), [x]);
      assert.equal(r.ok, false, "gradcheck must reject a wrong gradient");
      const rep = r.inputs[0];
      assert.equal(rep.input, 0);
      assert.equal(rep.failures, 6);
      // numerical ≈ 2 × analytical at the worst element
      assert.ok(Math.abs(rep.numerical - 2 * rep.analytical) < 1e-6 * Math.abs(rep.numerical));
      assert.ok(Math.abs(r.maxRelError - 0.5) < 1e-6, `rel error ${r.maxRelError}`);
      assert.equal(rep.worstIndex.length, 2);
      assert.match(r.message, /gradcheck failed for input 0 at \[\d, \d\]/);
      assert.throws(
        () => assertGradcheck((a) => a.mul(a.detach()), [x]),
        (e: unknown) =>
          e instanceof GradcheckError && !e.result.ok &&
          /analytical .* vs numerical/.test(e.message),
      );
    }));
  await t.step("a wrong gradient for only the second input is attributed to it", () =>
    scope(() => {
      const a = input([3], 20);
      const b = input([3], 21);
      // d/db of a·b·detach(b) is truly 2ab, autograd reports ab
      const r = gradcheck((p, q) => p.mul(q).mul(q.detach()), [a, b]);
      assert.equal(r.ok, false);
      assert.equal(r.inputs[0].failures, 0, r.message);
      assert.equal(r.inputs[1].failures, 3, r.message);
      assert.match(r.message, /failed for input 1/);
    }));
  await t.step("a gradient lost through detach is reported (analytical zero)", () =>
    scope(() => {
      const x = input([4], 22);
      const r = gradcheck((a) => a.detach().exp(), [x]);
      assert.equal(r.ok, false);
      assert.equal(r.inputs[0].analytical, 0);
    }));
});

Deno.test("gradcheck helper: input validation, wrt selection, and no side effects", () =>
  scope(() => {
    const f32 = rand([3]).requiresGrad_(true);
    assert.throws(() => gradcheck((a) => a.mul(2), [f32]), /float64/);
    const x = input([3], 23);
    assert.throws(() => gradcheck((a) => a.to("float32"), [x]), /must return float64/);
    assert.throws(() => gradcheck((a) => a, [x], { wrt: [1] }), /out of range/);
    // only input 1 is checked when asked
    const y = input([3], 24);
    const r = gradcheck((a, b) => a.mul(b), [x, y], { wrt: [1] });
    assert.deepEqual(r.inputs.map((i) => i.input), [1]);
    passes(r);
    // inputs without requiresGrad: all of them are checked
    const c = tensor([0.5, -1, 2], F64);
    const r2 = gradcheck((a) => a.pow(3), [c]);
    assert.equal(r2.inputs.length, 1);
    passes(r2);
    // the caller's tensors get no gradient and keep their values
    assert.equal(x.grad, null);
    assert.equal(y.grad, null);
    assert.deepEqual(c.toArray(), [0.5, -1, 2]);
  }));

Deno.test("gradcheck tests leave no live tensors", () => {
  assert.equal(liveTensors(), START_TENSORS);
  assert.equal(liveHandles(), START_HANDLES);
});
