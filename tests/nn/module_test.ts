/**
 * `Module`: dotted parameter names in registration order, train / eval propagation, parameter
 * counting, state dicts (safetensors round trip, strict and non-strict loading with every
 * offending key listed), in-place dtype moves and deterministic freeing.
 */
import assert from "node:assert/strict";
import {
  DINOHead,
  Dropout,
  DropPath,
  GELU,
  Generator,
  type Layer,
  LayerNorm,
  Linear,
  liveTensors,
  loadSafetensors,
  Module,
  noGrad,
  ones,
  randn,
  saveSafetensors,
  scope,
  Sequential,
  StateDictError,
  type Tensor,
  TorchError,
} from "../../mod.ts";

const START = liveTensors();

/** A small model exercising own parameters, a sub-module and a nested Sequential. */
class Toy extends Module {
  readonly scale: Tensor;
  readonly lin: Linear;
  readonly seq: Sequential;
  readonly drop: Dropout;
  readonly dp: DropPath;
  readonly norm: LayerNorm;

  constructor(g?: Generator) {
    super();
    this.scale = this.registerParameter("scale", ones([3]));
    this.lin = this.registerModule("lin", new Linear(3, 4, { generator: g }));
    this.seq = this.registerModule(
      "seq",
      new Sequential(
        new Linear(4, 5, { generator: g }),
        new GELU(),
        new Linear(5, 2, { generator: g, bias: false }),
      ),
    );
    this.drop = this.registerModule("drop", new Dropout(0.5));
    this.dp = this.registerModule("dp", new DropPath(0.5));
    this.norm = this.registerModule("norm", new LayerNorm(2));
  }

  /** Exposes the protected registration for the error tests. */
  register(name: string, t: Tensor): Tensor {
    return this.registerParameter(name, t);
  }

  registerSub(name: string, m: Module): Module {
    return this.registerModule(name, m);
  }

  forward(x: Tensor): Tensor {
    return scope(() =>
      this.norm.forward(this.dp.forward(this.seq.forward(this.drop.forward(this.lin.forward(
        x.mul(this.scale),
      )))))
    );
  }
}

function toy(seed: number): Toy {
  using g = new Generator(seed);
  return new Toy(g);
}

const TOY_KEYS = [
  "scale",
  "lin.weight",
  "lin.bias",
  "seq.0.weight",
  "seq.0.bias",
  "seq.2.weight",
  "norm.weight",
  "norm.bias",
];

/** Bitwise equality of two tensors (dtype, shape and bytes). */
function assertSameBytes(a: Tensor, b: Tensor, what: string): void {
  assert.equal(a.dtype, b.dtype, what);
  assert.deepEqual(a.shape, b.shape, what);
  assert.deepEqual(a.toBytes(), b.toBytes(), what);
}

Deno.test("module: dotted names in registration order, sub-modules, bad names", () => {
  const m = toy(1);
  try {
    assert.deepEqual(m.namedParameters().map(([k]) => k), TOY_KEYS);
    assert.deepEqual(Object.keys(m.stateDict()), TOY_KEYS);
    assert.deepEqual(m.namedParameters("student.").map(([k]) => k).slice(0, 2), [
      "student.scale",
      "student.lin.weight",
    ]);
    assert.deepEqual(m.namedModules().map(([k]) => k), [
      "",
      "lin",
      "seq",
      "seq.0",
      "seq.1",
      "seq.2",
      "drop",
      "dp",
      "norm",
    ]);
    // the state dict holds the live parameters themselves
    assert.equal(m.stateDict()["lin.weight"], m.lin.weight);
    assert.deepEqual(m.lin.weight.shape, [4, 3]); // PyTorch layout [out, in]
    assert.deepEqual(m.seq.layers[2].namedParameters().map(([k]) => k), ["weight"]);
    for (const [, t] of m.namedParameters()) assert.equal(t.requiresGrad, true);

    const before = liveTensors();
    for (const bad of ["a.b", "scale", "lin"]) {
      const t = ones([1]);
      assert.throws(() => m.register(bad, t), (e: unknown) => {
        assert.ok(e instanceof TorchError);
        assert.match(e.message, new RegExp(`"${bad.replace(".", "\\.")}"`));
        return true;
      });
      t.free();
    }
    assert.throws(() => m.registerSub("seq", new GELU()), /duplicate sub-module name "seq"/);
    assert.throws(() => m.registerSub("x.y", new GELU()), /"x\.y"/);
    assert.equal(liveTensors(), before);
  } finally {
    m.free();
  }
});

Deno.test("module: train / eval propagate; Dropout and DropPath are the identity in eval", () => {
  const m = toy(2);
  try {
    assert.equal(m.training, true);
    assert.equal(m.eval(), m);
    for (const [name, sub] of m.namedModules()) assert.equal(sub.training, false, name);
    scope(() => {
      using gx = new Generator(30);
      const x = randn([64, 16], { generator: gx });
      assert.deepEqual(m.drop.forward(x).toBytes(), x.toBytes());
      assert.deepEqual(m.dp.forward(x).toBytes(), x.toBytes());
      // training mode again: both draw masks
      m.train();
      for (const [name, sub] of m.namedModules()) assert.equal(sub.training, true, name);
      using g = new Generator(3);
      m.drop.generator = g;
      m.dp.generator = g;
      const d = m.drop.forward(x).toTypedArray() as Float32Array;
      const xs = x.toTypedArray() as Float32Array;
      const zeros = d.filter((v) => v === 0).length;
      assert.ok(zeros > 300 && zeros < 724, `dropout zeroed ${zeros} of 1024`);
      d.forEach((v, i) => {
        if (v !== 0) assert.ok(Math.abs(v - 2 * xs[i]) <= 1e-6 * Math.abs(xs[i]) + 1e-7);
      });
      // DropPath drops whole samples (rows here), scaling kept ones by 1/(1 − p)
      const dp = m.dp.forward(x);
      const rowsKept = dp.abs().amax(1).gt(0).toTypedArray() as Uint8Array;
      let kept = 0;
      for (let r = 0; r < 64; r++) {
        const row = dp.select(0, r), xr = x.select(0, r);
        if (rowsKept[r]) {
          kept++;
          assert.ok(row.sub(xr.mul(2)).abs().amax().item() <= 1e-6);
        } else {
          assert.equal(row.abs().amax().item(), 0);
        }
      }
      assert.ok(kept > 10 && kept < 54, `DropPath kept ${kept} of 64 samples`);
      m.drop.generator = undefined;
      m.dp.generator = undefined;
      // train(false) is eval
      m.train(false);
      assert.equal(m.seq.layers[0].training, false);
      // a module's own forward honours the mode of each sub-module
      const y1 = m.forward(randn([2, 3]).mul(0));
      assert.deepEqual(y1.shape, [2, 2]);
    });
    assert.throws(() => new Dropout(1.5), /p must be in \[0, 1\]/);
    assert.throws(() => new DropPath(1), /p must be in \[0, 1\)/);
  } finally {
    m.free();
  }
});

Deno.test("module: parameters and numParameters (trainableOnly skips DINOHead's weight_g)", () => {
  const m = toy(4);
  using g = new Generator(5);
  const head = new DINOHead(8, 10, { hiddenDim: 16, bottleneckDim: 4, generator: g });
  const free = new DINOHead(8, 10, {
    hiddenDim: 16,
    bottleneckDim: 4,
    generator: g,
    normLastLayer: false,
  });
  try {
    assert.equal(m.parameters().length, TOY_KEYS.length);
    assert.equal(m.numParameters(), 3 + (12 + 4) + (20 + 5) + 10 + (2 + 2));
    assert.equal(m.numParameters({ trainableOnly: true }), m.numParameters());
    const all = (8 * 16 + 16) + (16 * 16 + 16) + (16 * 4 + 4) + 10 + 10 * 4;
    assert.equal(head.numParameters(), all);
    assert.equal(head.numParameters({ trainableOnly: true }), all - 10);
    assert.equal(head.parameters().length, 8);
    assert.equal(head.parameters({ trainableOnly: true }).length, 7);
    assert.ok(!head.parameters({ trainableOnly: true }).includes(head.lastLayer.weightG));
    assert.equal(free.numParameters({ trainableOnly: true }), all);
  } finally {
    m.free();
    head.free();
    free.free();
  }
});

Deno.test("module: stateDict → safetensors → loadStateDict round trip is bitwise", async () => {
  const a = toy(6), b = toy(7);
  const dir = await Deno.makeTempDir({ prefix: "dd_module_test_" });
  try {
    const path = `${dir}/toy.safetensors`;
    await saveSafetensors(path, a.stateDict());
    // different initial weights before loading
    assert.notDeepEqual(a.lin.weight.toBytes(), b.lin.weight.toBytes());
    const { tensors } = await loadSafetensors(path);
    try {
      assert.deepEqual(Object.keys(tensors).sort(), [...TOY_KEYS].sort());
      const refs = b.parameters();
      const r = b.loadStateDict(tensors);
      assert.deepEqual(r, { missing: [], unexpected: [] });
      // loaded in place: the same tensor objects, still parameters requiring grad
      assert.deepEqual(b.parameters(), refs);
      for (const [k, t] of b.namedParameters()) {
        assertSameBytes(t, a.stateDict()[k], k);
        assert.equal(t.requiresGrad, true, k);
        assert.equal(t.sharesStorageWith(tensors[k]), false, k);
      }
      // the loaded model computes what the saved one does
      scope(() => {
        a.eval();
        b.eval();
        using gx = new Generator(31);
        const x = randn([5, 3], { generator: gx });
        assertSameBytes(b.forward(x), a.forward(x), "outputs");
      });
    } finally {
      for (const t of Object.values(tensors)) t.free();
    }
  } finally {
    a.free();
    b.free();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("module: strict load lists every missing, unexpected and shape-mismatched key", () => {
  const m = toy(8);
  try {
    scope(() => {
      const before = m.stateDict()["lin.weight"].clone();
      const sd: Record<string, Tensor> = {};
      for (const [k, t] of m.namedParameters()) sd[k] = t.detach().add(1);
      delete sd["seq.0.bias"];
      delete sd["norm.weight"];
      sd["extra.weight"] = ones([2]);
      sd["lin.bias2"] = ones([4]);
      sd["lin.weight"] = ones([3, 4]); // transposed
      sd["scale"] = ones([3, 1]);
      let err: StateDictError | undefined;
      try {
        m.loadStateDict(sd);
      } catch (e) {
        assert.ok(e instanceof StateDictError, String(e));
        err = e;
      }
      assert.ok(err, "strict load must throw");
      assert.equal(err.name, "StateDictError");
      assert.deepEqual(err.missing, ["seq.0.bias", "norm.weight"]);
      assert.deepEqual(err.unexpected.sort(), ["extra.weight", "lin.bias2"]);
      assert.deepEqual(err.mismatched, [
        "scale: [3, 1] in the state dict vs [3] in the model",
        "lin.weight: [3, 4] in the state dict vs [4, 3] in the model",
      ]);
      for (
        const s of [
          "Toy",
          "missing keys (2)",
          "unexpected keys (2)",
          "shape mismatch (2)",
          "seq.0.bias",
          "norm.weight",
          "extra.weight",
          "lin.bias2",
          "lin.weight: [3, 4] in the state dict vs [4, 3] in the model",
          "scale: [3, 1]",
        ]
      ) assert.ok(err.message.includes(s), `message lacks "${s}":\n${err.message}`);
      // nothing was copied
      assertSameBytes(m.lin.weight, before, "lin.weight untouched");
      assert.deepEqual(m.scale.toArray(), [1, 1, 1]);

      // only missing keys: the message lists just those
      const sd2: Record<string, Tensor> = {};
      for (const [k, t] of m.namedParameters()) if (k !== "lin.bias") sd2[k] = t;
      assert.throws(() => m.loadStateDict(sd2), (e: unknown) => {
        assert.ok(e instanceof StateDictError);
        assert.deepEqual([e.missing, e.unexpected, e.mismatched], [["lin.bias"], [], []]);
        assert.match(e.message, /missing keys \(1\):\n\s+lin\.bias/);
        assert.doesNotMatch(e.message, /unexpected|mismatch/);
        return true;
      });
    });
  } finally {
    m.free();
  }
});

Deno.test("module: non-strict load copies what matches and reports the rest", () => {
  const m = toy(9), src = toy(10);
  try {
    scope(() => {
      const keepBias = m.lin.bias!.clone();
      const sd: Record<string, Tensor> = { ...src.stateDict() };
      delete sd["lin.bias"];
      sd["head.weight"] = ones([1]);
      const r = m.loadStateDict(sd, { strict: false });
      assert.deepEqual(r, { missing: ["lin.bias"], unexpected: ["head.weight"] });
      assertSameBytes(m.lin.weight, src.lin.weight, "copied");
      assertSameBytes(m.lin.bias!, keepBias, "missing key left as it was");
      // a shape mismatch fails even when not strict, and names the key
      sd["norm.bias"] = ones([3]);
      assert.throws(() => m.loadStateDict(sd, { strict: false }), (e: unknown) => {
        assert.ok(e instanceof StateDictError);
        assert.deepEqual(e.mismatched, ["norm.bias: [3] in the state dict vs [2] in the model"]);
        assert.doesNotMatch(e.message, /missing|unexpected/);
        return true;
      });
      // values are cast to the parameter dtype
      const sd64: Record<string, Tensor> = {};
      for (const [k, t] of src.namedParameters()) sd64[k] = t.to("float64").add(0.5);
      m.loadStateDict(sd64);
      assert.equal(m.lin.weight.dtype, "float32");
      assert.ok(m.lin.weight.sub(src.lin.weight.add(0.5)).abs().amax().item() < 1e-6);
    });
  } finally {
    m.free();
    src.free();
  }
});

Deno.test("module: to(float64) converts in place; references stay valid", () => {
  const m = toy(11);
  using g = new Generator(12);
  const head = new DINOHead(4, 6, { hiddenDim: 8, bottleneckDim: 3, generator: g });
  try {
    scope(() => {
      const refs = m.parameters();
      const w = m.lin.weight;
      const ref32 = w.clone();
      const before = liveTensors();
      assert.equal(m.to("float64"), m);
      assert.equal(liveTensors(), before, "to() leaks no handles");
      assert.equal(m.lin.weight, w);
      assert.deepEqual(m.parameters(), refs);
      for (const [k, t] of m.namedParameters()) {
        assert.equal(t.dtype, "float64", k);
        assert.equal(t.requiresGrad, true, k);
        assert.equal(t.isLeaf, true, k);
      }
      assert.deepEqual(w.shape, [4, 3]);
      assert.ok(w.sub(ref32.to("float64")).abs().amax().item() === 0);
      // float64 forward and backward reach the same parameter objects
      m.eval();
      const y = m.forward(randn([2, 3], { dtype: "float64" }));
      assert.equal(y.dtype, "float64");
      y.square().sum().backward();
      assert.equal(w.grad?.dtype, "float64");
      for (const t of refs) t.setGrad(null);
      // moving to the same dtype is a no-op, and back to float32 works
      m.to("float64");
      m.to("float32");
      assert.equal(w.dtype, "float32");
      assert.deepEqual(w.toBytes(), ref32.toBytes());

      head.to("float64");
      assert.equal(head.lastLayer.weightG.dtype, "float64");
      assert.equal(head.lastLayer.weightG.requiresGrad, false, "frozen gain stays frozen");
      assert.equal(head.lastLayer.weightV.requiresGrad, true);
      assert.deepEqual(head.forward(randn([2, 4], { dtype: "float64" })).shape, [2, 6]);
      noGrad(() => assert.equal(head.lastLayer.weightG.sum().item(), 6));
    });
  } finally {
    m.free();
    head.free();
  }
});

Deno.test("module: free() releases every parameter", () => {
  const before = liveTensors();
  const m = toy(13);
  using g = new Generator(14);
  const head = new DINOHead(8, 10, { hiddenDim: 16, bottleneckDim: 4, generator: g });
  const layers: Layer[] = [new Linear(2, 2), new LayerNorm(5)];
  assert.equal(liveTensors(), before + TOY_KEYS.length + 8 + 4);
  m.free();
  head.free();
  for (const l of layers) l.free();
  assert.equal(liveTensors(), before);
  for (const [k, t] of m.namedParameters()) assert.equal(t.isFreed, true, k);
  assert.throws(() => scope(() => m.forward(randn([1, 3]))), /freed/);
  m.free(); // idempotent
  assert.equal(liveTensors(), before);
});

Deno.test("module tests leave no live tensors", () => {
  assert.equal(liveTensors(), START);
});
