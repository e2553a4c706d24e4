/**
 * Deterministic memory: scopes, `using`, free(), the live-handle counters, use after free.
 *
 * `liveTensors()` is the native count (handles issued by the shim and not freed);
 * `liveHandles()` is the binding's own count of JS handle objects not freed. Both must move
 * exactly with every allocation and free.
 */
import assert from "node:assert/strict";
import * as dd from "../../mod.ts";
import { freeAll, keep, scope, type Tensor, TorchError } from "../../mod.ts";

/** Asserts both counters moved by exactly `delta` since `base`. */
function assertLive(base: [number, number], delta: number, what = ""): void {
  assert.equal(dd.liveTensors(), base[0] + delta, `native count ${what}`);
  assert.equal(dd.liveHandles(), base[1] + delta, `JS count ${what}`);
}
const counts = (): [number, number] => [dd.liveTensors(), dd.liveHandles()];

Deno.test("counters are exact: +1 per tensor created, -1 per free", () => {
  const base = counts();
  const a = dd.randn([3]);
  assertLive(base, 1);
  const b = a.add(1);
  const c = dd.cat([a, b]);
  assertLive(base, 3);
  const c2 = c.reshape([2, 3]); // a view, but its own handle
  const { values, indices } = c2.maxDim(1);
  assertLive(base, 6);
  const parts = c.chunk(3);
  assertLive(base, 9);
  for (const t of [a, b, c, c2, values, indices, ...parts]) t.free();
  assertLive(base, 0);
  // a failing op allocates nothing
  using d = dd.randn([2, 3]);
  assert.throws(() => d.matmul(d), TorchError);
  assertLive(base, 1);
});

Deno.test("free() is idempotent and use after free throws a TorchError naming the op", () => {
  const base = counts();
  const a = dd.ones([2, 2]);
  const b = dd.ones([2, 2]);
  a.free();
  assert.equal(a.isFreed, true);
  a.free(); // no-op
  a[Symbol.dispose](); // no-op too
  assertLive(base, 1);
  const cases: [string, () => unknown][] = [
    ["sum", () => a.sum()],
    ["add", () => a.add(b)],
    ["add", () => b.add(a)], // the freed tensor as the second argument
    ["matmul", () => b.matmul(a)],
    ["reshape", () => a.reshape([4])],
    ["item", () => a.item()],
    ["shape", () => a.shape],
    ["dtype", () => a.dtype],
    ["cat", () => dd.cat([b, a])],
    ["add_", () => b.add_(a)],
    ["copy_", () => a.copy_(b)],
    ["linear", () => dd.linear(b, b, a)],
  ];
  for (const [op, f] of cases) {
    let err: unknown = null;
    try {
      f();
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof TorchError, `${op}: expected a TorchError, got ${err}`);
    assert.equal(err.op, op);
    assert.match(err.message, new RegExp(`^${op}: `));
    assert.match(err.message, /free/, `${op}: ${err.message}`);
  }
  assertLive(base, 1, "failed calls allocate nothing");
  assert.equal(String(a), "Tensor(<freed>)");
  b.free();
  assertLive(base, 0);
});

Deno.test("`using` frees at the end of the block, also when it throws", () => {
  const base = counts();
  {
    using a = dd.randn([4]);
    using b = a.mul(2);
    assertLive(base, 2);
    assert.equal(b.shape[0], 4);
  }
  assertLive(base, 0);
  const escaped: Tensor[] = [];
  assert.throws(() => {
    using a = dd.randn([4]);
    escaped.push(a);
    a.reshape([7]);
  }, TorchError);
  assertLive(base, 0);
  assert.equal(escaped[0].isFreed, true);
  {
    using a = dd.randn([2]);
    a.free(); // freeing early is fine; dispose at block end is then a no-op
  }
  assertLive(base, 0);
});

Deno.test("scope frees everything created inside except what it returns", () => {
  const base = counts();
  const outside = dd.ones([3]);
  const r = scope(() => {
    const a = outside.add(1);
    const b = a.mul(a);
    const c = b.sum();
    assert.equal(dd.scopeDepth(), 1);
    assertLive(base, 4, "inside");
    return c;
  });
  assert.equal(dd.scopeDepth(), 0);
  assertLive(base, 2, "outside + the returned tensor");
  assert.equal(r.item(), 12);
  assert.equal(outside.isFreed, false, "tensors from outside the scope are not touched");
  r.free();
  outside.free();
  assertLive(base, 0);
});

Deno.test("scope keeps tensors reachable from arrays, objects, Maps, Sets and class instances", () => {
  const base = counts();
  class Holder {
    constructor(public weight: Tensor, public extra: { deep: Tensor[] }) {}
  }
  const freedInside: Tensor[] = [];
  const out = scope(() => {
    const t = () => dd.randn([2]);
    for (let i = 0; i < 5; i++) freedInside.push(t());
    const deep: unknown[] = [t()];
    let cur = deep;
    for (let i = 0; i < 20; i++) { // deeper than any fixed recursion limit
      const next: unknown[] = [];
      cur.push(next);
      cur = next;
    }
    cur.push(t());
    const cyc: { self?: unknown; t: Tensor } = { t: t() };
    cyc.self = cyc;
    return {
      arr: [t(), [t(), t()]],
      obj: { a: t(), b: { c: t() } },
      map: new Map<unknown, unknown>([["k", t()], [t(), "tensor as a key"]]),
      set: new Set([t()]),
      inst: new Holder(t(), { deep: [t()] }),
      deep,
      cyc,
      num: 3,
      str: "x",
      typed: new Float32Array(4),
    };
  });
  for (const f of freedInside) assert.equal(f.isFreed, true);
  const kept = 3 + 2 + 2 + 1 + 2 + 2 + 1; // arr, obj, map, set, inst, deep, cyc
  assertLive(base, kept);
  assert.equal(out.num, 3);
  freeAll(out);
  assertLive(base, 0);
});

Deno.test("keep() excludes tensors from every scope", () => {
  const base = counts();
  const kept: Tensor[] = [];
  const r = scope(() => {
    kept.push(keep(dd.randn([2])));
    scope(() => {
      kept.push(keep(dd.ones([2])));
      dd.zeros([2]); // freed with the inner scope
    });
    dd.zeros([2]); // freed with the outer scope
    return 42;
  });
  assert.equal(r, 42);
  assertLive(base, 2);
  assert.equal(kept[0].isFreed, false);
  assert.equal(kept[1].isFreed, false);
  // keep() of a structure marks every tensor in it and returns it unchanged
  const both = keep({ a: kept[0], b: [kept[1]] });
  assert.equal(both.a, kept[0]);
  freeAll(both);
  assertLive(base, 0);
});

Deno.test("nested scopes hand returned tensors to the enclosing scope", () => {
  const base = counts();
  const seen: Tensor[] = [];
  const outer = scope(() => {
    const innerResult = scope(() => {
      const tmp = dd.randn([3]);
      return tmp.mul(2);
    });
    assert.equal(innerResult.isFreed, false, "alive after the inner scope");
    assertLive(base, 1, "inner temporaries are gone");
    const outerOnly = innerResult.add(1);
    seen.push(innerResult, outerOnly);
    return outerOnly.sum();
  });
  // the inner result now belonged to the outer scope, which did not return it
  assert.equal(seen[0].isFreed, true);
  assert.equal(seen[1].isFreed, true);
  assertLive(base, 1);
  // returned through two levels: survives both
  const twice = scope(() => scope(() => dd.ones([2])));
  assert.equal(twice.isFreed, false);
  assertLive(base, 2);
  outer.free();
  twice.free();
  assertLive(base, 0);
});

Deno.test("an exception inside a scope frees everything and rethrows the same error", () => {
  const base = counts();
  const made: Tensor[] = [];
  const kept: Tensor[] = [];
  const boom = new Error("boom");
  const thrown = (() => {
    try {
      scope(() => {
        made.push(dd.randn([2]), dd.randn([3]));
        kept.push(keep(dd.randn([1])));
        scope(() => {
          made.push(dd.randn([4]));
          return made[made.length - 1]; // handed to the outer scope, then freed with it
        });
        throw boom;
      });
    } catch (e) {
      return e;
    }
  })();
  assert.equal(thrown, boom);
  assert.equal(dd.scopeDepth(), 0);
  for (const t of made) assert.equal(t.isFreed, true);
  assertLive(base, 1, "only the kept tensor");
  // a TorchError from inside propagates just the same
  assert.throws(() =>
    scope(() => {
      const a = dd.randn([2, 3]);
      return a.matmul(a);
    }), TorchError);
  assertLive(base, 1);
  kept[0].free();
  assertLive(base, 0);
});

Deno.test("a scope whose function returns a Promise throws and frees everything", async () => {
  const base = counts();
  const made: Tensor[] = [];
  assert.throws(
    () =>
      scope(() => {
        made.push(dd.randn([2]));
        return Promise.resolve(made[0]);
      }),
    (e: unknown) => e instanceof TypeError && /Promise/.test(e.message),
  );
  assert.equal(made[0].isFreed, true);
  assert.equal(dd.scopeDepth(), 0);
  assertLive(base, 0);
  // an async function: the synchronous part's tensors are freed, the error is thrown at once
  const p = (async () => {})();
  assert.throws(() =>
    scope(async () => {
      dd.randn([2]);
      await p;
    }), TypeError);
  await p;
  assertLive(base, 0);
});

Deno.test("a long loop inside one scope frees as it goes without losing earlier tensors", () => {
  const base = counts();
  const early: Tensor[] = [];
  const r = scope(() => {
    early.push(dd.ones([1]));
    let acc = dd.zeros([1]);
    for (let i = 0; i < 20_000; i++) {
      const next = acc.add(1);
      acc.free();
      acc = next;
    }
    assertLive(base, 2, "inside the loop: early + acc");
    return acc;
  });
  assert.equal(r.item(), 20_000);
  assert.equal(early[0].isFreed, true, "an early tensor is still freed by the scope");
  assertLive(base, 1);
  r.free();
  assertLive(base, 0);
});

Deno.test(".grad returns a new handle each time, each to be freed", () => {
  const base = counts();
  const p = dd.tensor([1, 2, 3]).requiresGrad_(true);
  assert.equal(p.grad, null, "no gradient before backward");
  assertLive(base, 1);
  scope(() => p.mul(p).sum().backward());
  assertLive(base, 1, "the graph's tensors are gone; the gradient lives inside p");
  const g1 = p.grad!;
  const g2 = p.grad!;
  assert.notEqual(g1, g2);
  assertLive(base, 3);
  assert.deepEqual(g1.toArray(), [2, 4, 6]);
  assert.deepEqual(g2.toArray(), [2, 4, 6]);
  g1.free();
  assert.deepEqual(g2.toArray(), [2, 4, 6], "freeing one handle leaves the gradient alive");
  g2.free();
  assertLive(base, 1);
  const g3 = p.grad!;
  assert.deepEqual(g3.toArray(), [2, 4, 6]);
  g3.free();
  // inside a scope, grads read there are freed with it
  scope(() => {
    const a = p.grad, b = p.grad;
    assert.ok(a !== null && b !== null);
    assertLive(base, 3);
  });
  assertLive(base, 1);
  p.free();
  assertLive(base, 0);
});

Deno.test("forward + backward of a small model inside a scope leaves the live count unchanged", () => {
  dd.manualSeed(0);
  const params = keep({
    w1: dd.randn([16, 8]).mul_(0.3).requiresGrad_(true),
    b1: dd.zeros([16]).requiresGrad_(true),
    g: dd.ones([16]).requiresGrad_(true),
    beta: dd.zeros([16]).requiresGrad_(true),
    w2: dd.randn([4, 16]).mul_(0.3).requiresGrad_(true),
    b2: dd.zeros([4]).requiresGrad_(true),
  });
  const x = dd.randn([32, 8]);
  const y = dd.randint(0, 4, [32]);
  const base = counts();
  const step = () =>
    scope(() => {
      const h = dd.linear(x, params.w1, params.b1).gelu();
      const n = dd.layerNorm(h, [16], params.g, params.beta);
      const logits = dd.linear(dd.dropout(n, 0.1), params.w2, params.b2);
      const loss = dd.crossEntropy(logits, y, { labelSmoothing: 0.1 });
      loss.backward();
      // gradient reads and a manual SGD update, all inside the scope
      dd.noGrad(() => {
        for (const p of Object.values(params)) p.sub_(p.grad!.mul(0.1));
      });
      dd.zeroGrads(Object.values(params));
      return loss.item();
    });
  const first = step();
  assertLive(base, 0, "after step 1");
  let last = first;
  for (let i = 0; i < 30; i++) last = step();
  assertLive(base, 0, "after step 31");
  assert.ok(Number.isFinite(first) && Number.isFinite(last));
  assert.ok(last < first, `loss should fall: ${first} -> ${last}`);
  freeAll([params, x, y]);
  assertLive(base, -8);
});

Deno.test("freeAll frees nested structures once, skipping freed and non-tensor members", () => {
  const base = counts();
  const a = dd.randn([2]);
  const b = dd.randn([2]);
  const c = dd.randn([2]);
  const d = dd.randn([2]);
  const e = dd.randn([2]);
  b.free();
  const s: Record<string, unknown> = {
    list: [a, [b, { deep: c }], a],
    map: new Map<unknown, unknown>([["d", d], [e, 1]]),
    set: new Set([c, 7, "x", null, undefined]),
    nothing: null,
  };
  s.self = s;
  freeAll(s);
  for (const t of [a, b, c, d, e]) assert.equal(t.isFreed, true);
  assertLive(base, 0);
  freeAll(s); // again: nothing left to free
  freeAll(null);
  freeAll(42);
  freeAll([undefined, "x"]);
  assertLive(base, 0);
});
