/**
 * One rank of the tests in `dist_test.ts` (a helper module, no tests of its own): joins the
 * group described by the environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
 * DENSEDINO_DIST_TIMEOUT_MS) and runs the scenario named by its first argument, checking
 * results against closed forms; prints one JSON line on stdout and exits 0 when all held.
 *
 * Scenarios: `collectives`; `die` (rank 1 exits after one collective, rank 0 tries another);
 * `stuck` (rank 1 sleeps instead of joining the second collective); `join` (only joins).
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  DistError,
  fromTypedArray,
  initProcessGroup,
  liveTensors,
  scope,
  tensor,
  zeros,
} from "../../lib/torch/mod.ts";

const mode = Deno.args[0] ?? "collectives";
const t0 = performance.now();
const pg = initProcessGroup();
const r = pg.rank, W = pg.worldSize;
const out: Record<string, unknown> = {
  rank: r,
  world: W,
  upSeconds: (performance.now() - t0) / 1e3,
};

function values(t: { toTypedArray(): ArrayLike<number | bigint> }): number[] {
  return Array.from(t.toTypedArray(), Number);
}

if (mode === "collectives") {
  const live = liveTensors();
  scope(() => {
    // sum over a list of tensors of mixed shapes and dtypes, flattened into small buckets
    // (bucketBytes 16: several collectives): rank r holds (r + 1) · base
    const a = tensor([1, 2, 3], { dtype: "float32" }).mul(r + 1);
    const b = tensor([[10, 20], [30, 40]], { dtype: "float32" }).mul(r + 1);
    const c = tensor([5, -7], { dtype: "float64" }).mul(r + 1);
    const d = tensor([4, 9], { dtype: "int64" }).mul(r + 1);
    const tri = (W * (W + 1)) / 2; // Σ (r + 1)
    pg.allReduce([a, b, c, d], "sum", { bucketBytes: 16 });
    assert.deepEqual(values(a), [1, 2, 3].map((x) => x * tri));
    assert.deepEqual(values(b), [10, 20, 30, 40].map((x) => x * tri));
    assert.deepEqual(values(c), [5, -7].map((x) => x * tri));
    assert.deepEqual(values(d), [4, 9].map((x) => x * tri));
    // avg of one tensor (reduced in place, no copy), max and min
    const e = tensor([r, 2 * r + 1], { dtype: "float32" });
    pg.allReduce(e, "avg");
    assert.deepEqual(values(e), [(W - 1) / 2, W]);
    const f = tensor([r, 5 - r], { dtype: "float32" });
    pg.allReduce(f, "max");
    assert.deepEqual(values(f), [W - 1, 5]);
    const g = tensor([r, 5 - r], { dtype: "float32" });
    pg.allReduce(g, "min");
    assert.deepEqual(values(g), [0, 5 - (W - 1)]);
    // broadcast a list (root 1 when there is one): everyone ends with the root's values
    const root = W > 1 ? 1 : 0;
    const p = tensor([r, r, r], { dtype: "float32" });
    const q = fromTypedArray(new Float64Array([100 + r]), [1]);
    pg.broadcast([p, q], root);
    assert.deepEqual(values(p), [root, root, root]);
    assert.deepEqual(values(q), [100 + root]);
    // all_gather: [W, 2]
    const gathered = pg.allGather(tensor([r, 10 * r], { dtype: "float32" }));
    assert.deepEqual(gathered.shape, [W, 2]);
    assert.deepEqual(values(gathered), Array.from({ length: W }, (_, k) => [k, 10 * k]).flat());
    // gradients: averaged; a gradient missing on rank 0 only counts as zeros and exists after
    const w1 = zeros([3], { requiresGrad: true });
    const w2 = zeros([2], { requiresGrad: true });
    const w3 = zeros([2], { requiresGrad: true }); // no gradient on any rank: stays without
    w1.setGrad(tensor([1, 2, 3], { dtype: "float32" }).mul(r + 1));
    if (r !== 0) w2.setGrad(tensor([6, 8], { dtype: "float32" }));
    pg.allReduceGrads([w1, w2, w3]);
    assert.deepEqual(values(w1.grad!), [1, 2, 3].map((x) => (x * tri) / W));
    assert.deepEqual(values(w2.grad!), W > 1 ? [6 * (W - 1) / W, 8 * (W - 1) / W] : [0, 0]);
    assert.equal(w3.grad, null);
    // JSON from rank 0
    const j = pg.broadcastJson(r === 0 ? { steps: [1, 2, 3], name: "é" } : undefined);
    assert.deepEqual(j, { steps: [1, 2, 3], name: "é" });
    // bad arguments fail before any collective, naming the problem
    assert.throws(() => pg.broadcast(p, W), /root .* is outside/);
    assert.throws(() => pg.allReduce(d, "avg"), /not a floating-point tensor/);
  });
  pg.barrier();
  out.leaked = liveTensors() - live;
  assert.equal(out.leaked, 0);
} else if (mode === "die" || mode === "stuck") {
  using x = tensor([1, 2], { dtype: "float32" });
  pg.allReduce(x);
  if (r === 1) {
    if (mode === "die") Deno.exit(9); // as if killed: the sockets close without a goodbye
    await new Promise((res) => setTimeout(res, 60_000)); // alive, not participating
    Deno.exit(0);
  }
  const t1 = performance.now();
  try {
    pg.allReduce(x);
    out.error = null;
  } catch (e) {
    out.error = (e as Error).message;
    out.isDistError = e instanceof DistError;
  }
  out.failSeconds = (performance.now() - t1) / 1e3;
  out.broken = pg.isBroken;
  // a later call fails at once with the first error
  const t2 = performance.now();
  try {
    pg.barrier();
    out.second = null;
  } catch (e) {
    out.second = (e as Error).message;
  }
  out.secondSeconds = (performance.now() - t2) / 1e3;
}
pg.destroy();
pg.destroy(); // idempotent
console.log(JSON.stringify(out));
