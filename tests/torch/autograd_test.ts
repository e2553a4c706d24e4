/**
 * Autograd across the shim's fast path: elementwise operations whose inputs need no gradient
 * skip libtorch's autograd layer; these tests pin down that the results are the same tensors
 * autograd would have produced (no graph, leaves, views, in-place, later requiresGrad_).
 */
import assert from "node:assert/strict";
import { full, liveTensors, noGrad, randn, scope, tensor, zeros } from "../../mod.ts";

const START = liveTensors();

const vals = (t: { toArray(): unknown }) => t.toArray() as number[];

Deno.test("ops on tensors that need no gradient give plain leaves with the same values", () =>
  scope(() => {
    const a = tensor([1, 2, 3]);
    const b = a.mul(2).add(1).sub(tensor([1, 1, 1])).exp().log();
    assert.deepEqual(vals(b).map((v) => Math.round(v * 1e5) / 1e5), [2, 4, 6]);
    assert.equal(b.requiresGrad, false);
    assert.equal(b.isLeaf, true);
    // such a result can become a parameter later, and gradients then flow through it
    b.requiresGrad_();
    const loss = b.mul(b).sum();
    assert.equal(loss.requiresGrad, true);
    loss.backward();
    assert.deepEqual(vals(b.grad!).map((v) => Math.round(v * 1e4) / 1e4), [4, 8, 12]);
  }));

Deno.test("ops that touch a tensor requiring grad are recorded, with either argument order", () =>
  scope(() => {
    const x = tensor([1, 2, 3], { requiresGrad: true });
    const c = tensor([10, 20, 30]);
    const y = c.mul(x).add(x.neg()).add(5).sum(); // d/dx = c - 1
    assert.equal(y.requiresGrad, true);
    y.backward();
    assert.deepEqual(vals(x.grad!), [9, 19, 29]);
  }));

Deno.test("noGrad records nothing even for inputs that require grad", () =>
  scope(() => {
    const x = tensor([1, 2], { requiresGrad: true });
    const y = noGrad(() => x.mul(3).exp());
    assert.equal(y.requiresGrad, false);
    assert.equal(x.mul(3).requiresGrad, true);
  }));

Deno.test("detach keeps its meaning: a view without grad that shares storage", () =>
  scope(() => {
    const x = full([3], 2, { requiresGrad: true });
    const d = x.detach();
    assert.equal(d.requiresGrad, false);
    assert.ok(d.sharesStorageWith(x));
    noGrad(() => d.add_(1)); // modifies x's data through the view
    assert.deepEqual(vals(x), [3, 3, 3]);
    const plain = zeros([2]).detach();
    assert.equal(plain.requiresGrad, false);
  }));

Deno.test("in-place updates on fast-path results feed later autograd correctly", () =>
  scope(() => {
    const w = randn([4]).mul(0.5); // fast path
    w.add_(1).requiresGrad_();
    const out = w.square().sum();
    out.backward();
    const g = vals(w.grad!);
    const expect = vals(w.mul(2));
    g.forEach((v, i) => assert.ok(Math.abs(v - expect[i]) < 1e-6));
  }));

Deno.test("autograd tests leave no live tensors", () => {
  assert.equal(liveTensors(), START);
});
