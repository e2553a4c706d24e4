/**
 * Mixed precision on the CPU: a bf16 autocast region casts matmuls and restores the previous
 * state; the GradScaler unscales, detects overflow and follows torch's growth / backoff rule.
 */
import assert from "node:assert/strict";
import { autocast, GradScaler, liveTensors, randn, scope, tensor } from "../../mod.ts";

const START = liveTensors();

Deno.test("autocast (CPU, bfloat16): matmul runs in bf16 inside, float32 outside; nesting restores", () =>
  scope(() => {
    const a = randn([4, 8]), b = randn([8, 3]);
    const inside = autocast(() => a.matmul(b), { device: "cpu", dtype: "bfloat16" });
    assert.equal(inside.dtype, "bfloat16");
    const nested = autocast(() => {
      autocast(() => a.matmul(b), { device: "cpu" });
      return a.matmul(b); // still inside the outer region
    }, { device: "cpu" });
    assert.equal(nested.dtype, "bfloat16");
    assert.equal(a.matmul(b).dtype, "float32", "state restored after the regions");
    // values close to float32
    const ref = a.matmul(b);
    assert.ok(inside.float().sub(ref).abs().max().item() < 0.1);
    assert.throws(
      () => autocast(() => a, { device: "cpu", dtype: "float64" as "float16" }),
      /bfloat16 or float16/,
    );
  }));

Deno.test("GradScaler: unscale divides, finds inf/NaN, backs off and grows", () =>
  scope(() => {
    const p = tensor([1, 2], { requiresGrad: true });
    const q = tensor([3], { requiresGrad: true });
    const s = new GradScaler({ initScale: 8, growthInterval: 2 });
    s.scaleLoss(p.sum().add(q.mul(2).sum())).backward();
    assert.deepEqual(p.grad!.toArray(), [8, 8]);
    assert.equal(s.unscale([p, q]), false);
    assert.deepEqual(p.grad!.toArray(), [1, 1]);
    assert.deepEqual(q.grad!.toArray(), [2]);
    s.update(false);
    assert.equal(s.scale, 8);
    s.update(false);
    assert.equal(s.scale, 16, "grows after growthInterval finite steps");
    q.setGrad(tensor([Infinity]));
    assert.equal(s.unscale([p, q]), true);
    s.update(true);
    assert.equal(s.scale, 8);
    assert.deepEqual(s.state(), { scale: 8, growthTracker: 0 });
  }));

Deno.test("amp tests leave no live tensors", () => {
  assert.equal(liveTensors(), START);
});
