// Optimisers and per-parameter loops: AdamW and SGD against torch.optim (PyTorch 1.13, numbers
// computed offline and spelled out below), a 200-step MLP training loop that leaks nothing,
// exact resume through safetensors + JSON, EMA, DINO-style gradient clipping, zeroing.
import assert from "node:assert/strict";
import {
  AdamW,
  clipGradNorms,
  clipGradNormTotal,
  emaUpdate,
  keep,
  linear,
  liveHandles,
  liveTensors,
  loadSafetensors,
  manualSeed,
  noGrad,
  type OptimizerState,
  randn,
  saveSafetensors,
  scope,
  SGD,
  type Tensor,
  tensor,
  TorchError,
  zeroGrads,
  zeros,
} from "../../mod.ts";

type Nested = number | Nested[];

function param(values: Nested, dtype: "float32" | "float64" = "float32"): Tensor {
  return keep(tensor(values, { dtype })).requiresGrad_(true);
}

/** Sets (or with null drops) the gradient of `p` to the given values. */
function setGrad(p: Tensor, values: Nested | null): void {
  if (values === null) {
    p.setGrad(null);
    return;
  }
  const g = tensor(values, { dtype: p.dtype });
  p.setGrad(g);
  g.free();
}

function values(t: Tensor): number[] {
  return Array.from(t.toTypedArray() as Float32Array | Float64Array);
}

/** Elementwise |a − e| ≤ tol·max(1, |e|). */
function assertClose(t: Tensor, expected: number[], tol: number, what: string): void {
  const a = values(t);
  assert.equal(a.length, expected.length, what);
  a.forEach((x, i) => {
    const e = expected[i];
    assert.ok(
      Math.abs(x - e) <= tol * Math.max(1, Math.abs(e)),
      `${what}[${i}]: got ${x}, expected ${e}`,
    );
  });
}

function isTorchError(re: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof TorchError, `expected a TorchError, got ${e}`);
    assert.match(e.message, re);
    return true;
  };
}

function freeAll(ts: Iterable<Tensor>): void {
  for (const t of ts) t.free();
}

// ---- AdamW against torch.optim.AdamW -----------------------------------------------------------

Deno.test("AdamW: steps match torch.optim.AdamW (groups, changing lr / weight decay, no-grad skip)", () => {
  const before = liveTensors();
  const w = param([[0.5, -1.0, 2.0], [0.25, -0.75, 1.5]]);
  const b = param([0.1, -0.2, 0.3]);
  const u = param([[1.0, -2.0], [3.0, -4.0]]);
  const c = param([0.7, -0.3]);
  const opt = new AdamW([
    { params: [w, b], lr: 0.1, weightDecay: 0.05 },
    { params: [u, c], lr: 0.01, weightDecay: 0.0 },
  ]);
  const grads: Record<string, Nested | null>[] = [
    {
      w: [[0.1, -0.2, 0.3], [-0.4, 0.5, -0.6]],
      b: [1.0, -1.0, 0.5],
      u: [[0.01, 0.02], [-0.03, 0.04]],
      c: null,
    },
    {
      w: [[-0.3, 0.2, 0.1], [0.6, -0.5, 0.4]],
      b: [0.2, 0.3, -0.4],
      u: [[0.5, -0.5], [0.25, -0.25]],
      c: [2.0, -3.0],
    },
    {
      w: [[0.05, 0.05, -0.05], [1.0, -1.0, 0.0]],
      b: null,
      u: [[-0.1, 0.1], [0.2, -0.2]],
      c: [0.5, 0.5],
    },
  ];
  // [group 0 lr, wd], [group 1 lr, wd] for each step
  const hp = [[[0.1, 0.05], [0.01, 0.02]], [[0.05, 0.1], [0.02, 0.3]], [[0.2, 0.03], [0.001, 0.5]]];
  // torch.optim.AdamW(betas=(0.9, 0.999), eps=1e-8), PyTorch 1.13.0, float32, same sequence
  const want: Record<string, number[]>[] = [
    {
      w: [0.3975, -0.895, 1.89, 0.34875, -0.84625, 1.5925001],
      b: [-0.0004999861, -0.099000014, 0.1985],
      u: [0.98980004, -2.0096002, 3.0094001, -4.0092],
      c: [0.7, -0.3],
    },
    {
      w: [0.420222, -0.8931566, 1.8369968, 0.33462116, -0.8393871, 1.5917636],
      b: [-0.04064954, -0.077112585, 0.19460127],
      u: [0.96871364, -1.9832071, 2.9781628, -3.9725652],
      c: [0.6758, -0.2782],
    },
    {
      w: [0.47320032, -0.9180669, 1.7129351, 0.20657209, -0.72531146, 1.604556],
      b: [-0.04064954, -0.077112585, 0.19460127],
      u: [0.9677805, -1.9817973, 2.9758773, -3.9698014],
      c: [0.67463154, -0.27752236],
    },
  ];
  // torch's state[p]["step"] after each step (a parameter without grad keeps its count)
  const wantSteps = [
    { w: 1, b: 1, u: 1, c: 0 },
    { w: 2, b: 2, u: 2, c: 1 },
    { w: 3, b: 2, u: 3, c: 2 },
  ];
  const P: Record<string, Tensor> = { w, b, u, c };
  const where: Record<string, [number, number]> = { w: [0, 0], b: [0, 1], u: [1, 0], c: [1, 1] };
  let bAfter2 = new Uint8Array(0);
  for (let s = 0; s < 3; s++) {
    for (const [k, p] of Object.entries(P)) setGrad(p, grads[s][k]);
    [opt.groups[0].lr, opt.groups[0].weightDecay] = hp[s][0];
    [opt.groups[1].lr, opt.groups[1].weightDecay] = hp[s][1];
    opt.step();
    for (const [k, p] of Object.entries(P)) {
      assertClose(p, want[s][k], 2e-7, `step ${s + 1} ${k}`);
      assert.equal(opt.stepCount(...where[k]), wantSteps[s][k as "w"], `step ${s + 1} ${k} count`);
    }
    // a parameter without gradient is untouched bit for bit, although its group decays
    if (s === 0) assert.deepEqual(values(c), [Math.fround(0.7), Math.fround(-0.3)]);
    if (s === 1) bAfter2 = b.toBytes();
    if (s === 2) assert.deepEqual(b.toBytes(), bAfter2);
  }
  // the moments of c started at its first gradient (step 2): torch's values after step 3
  const st = opt.stateDict();
  assertClose(st.tensors["group1.1.exp_avg"], [0.22999999, -0.22000001], 2e-7, "c exp_avg");
  assertClose(st.tensors["group1.1.exp_avg_sq"], [0.004246, 0.009240999], 2e-7, "c exp_avg_sq");
  assert.deepEqual(
    (st.meta.groups as { steps: number[] }[]).map((g) => g.steps),
    [[3, 2], [3, 2]],
  );
  opt.free();
  freeAll([w, b, u, c]);
  assert.equal(liveTensors(), before);
});

Deno.test("AdamW: a skipped parameter gets no weight decay and no step", () => {
  const p = param([1, -2]);
  const q = param([3, 4]);
  const opt = new AdamW([p, q], { lr: 0.1, weightDecay: 0.5 });
  setGrad(p, [1, 1]);
  opt.step();
  assert.deepEqual(values(q), [3, 4]);
  assert.equal(opt.stepCount(0, 1), 0);
  assert.equal(opt.stepCount(0, 0), 1);
  // a step where no parameter has a gradient changes nothing
  opt.zeroGrad();
  const snap = [...values(p), ...values(q)];
  opt.step();
  assert.deepEqual([...values(p), ...values(q)], snap);
  assert.equal(opt.stepCount(0, 0), 1);
  opt.free();
  freeAll([p, q]);
});

Deno.test("AdamW: float64, non-default betas / eps match torch.optim.AdamW", () => {
  const x = param([1.0, -2.0, 0.5], "float64");
  const opt = new AdamW([x], { lr: 0.03, betas: [0.8, 0.95], eps: 1e-3, weightDecay: 0.2 });
  const grads = [[0.3, -0.1, 0.02], [0.1, 0.4, -0.2], [-0.5, 0.25, 0.0]];
  // PyTorch 1.13.0, float64
  const want = [
    [0.9640996677740864, -1.9582970297029703, 0.4684285714285714],
    [0.9328241649622656, -1.9645757904105137, 0.48678177639545206],
    [0.9353148694748044, -1.9749337111215568, 0.49933421510528186],
  ];
  for (let s = 0; s < 3; s++) {
    setGrad(x, grads[s]);
    opt.step();
    assertClose(x, want[s], 1e-14, `step ${s + 1}`);
  }
  opt.free();
  x.free();
});

Deno.test("AdamW: invalid settings and freed parameters give TorchErrors", () => {
  const before = liveTensors();
  const p = param([1, 2]);
  assert.throws(() => new AdamW([p], { betas: [1, 0.999] }), isTorchError(/betas/));
  const opt = new AdamW([p], { lr: -1 });
  setGrad(p, [1, 1]);
  assert.throws(() => opt.step(), isTorchError(/AdamW\.step.*lr must be >= 0/));
  opt.groups[0].lr = 0.1;
  opt.step();
  // loading a state that does not fit
  const p2 = param([3, 4]);
  assert.throws(
    () => new AdamW([{ params: [p] }, { params: [p2, p] }]),
    isTorchError(/parameter 1 of group 1 \("group1"\) already appears as parameter 0 of group 0/),
  );
  assert.throws(
    () => new AdamW([{ params: [p], name: "x" }, { params: [p2], name: "x" }]),
    isTorchError(/two parameter groups are named "x"/),
  );
  assert.throws(() => new SGD([p, p], { lr: 0.1 }), isTorchError(/listed only once/));
  const other = new AdamW([{ params: [p] }, { params: [p2] }]);
  assert.throws(() => opt.loadStateDict(other.stateDict()), isTorchError(/2 groups, optimiser 1/));
  const st = opt.stateDict();
  const { ["group0.0.exp_avg"]: _dropped, ...partial } = st.tensors;
  assert.throws(
    () => opt.loadStateDict({ tensors: partial, meta: st.meta }),
    isTorchError(/missing tensor "group0\.0\.exp_avg"/),
  );
  const wrong = zeros([3]);
  assert.throws(
    () =>
      opt.loadStateDict({ tensors: { ...st.tensors, "group0.0.exp_avg": wrong }, meta: st.meta }),
    isTorchError(/has shape \[3\], expected \[2\]/),
  );
  wrong.free();
  other.free();
  p2.free();
  p.free();
  assert.throws(() => opt.step(), isTorchError(/AdamW\.step.*freed/));
  opt.free();
  assert.equal(liveTensors(), before);
});

// ---- a small MLP trained with AdamW ----------------------------------------------------------

interface MLP {
  w1: Tensor;
  b1: Tensor;
  w2: Tensor;
  b2: Tensor;
}

function initMLP(seed: number): MLP {
  manualSeed(seed);
  const m = scope(() => ({
    w1: randn([16, 2]).mul(0.7),
    b1: zeros([16]),
    w2: randn([1, 16]).mul(0.25),
    b2: zeros([1]),
  }));
  for (const p of Object.values(m)) keep(p).requiresGrad_(true);
  return m;
}

function forward(m: MLP, x: Tensor): Tensor {
  return linear(linear(x, m.w1, m.b1).tanh(), m.w2, m.b2);
}

/** A fixed synthetic regression: y = sin(1.5·x0) + 0.5·x1², 64 points. */
function dataset(): { x: Tensor; y: Tensor } {
  manualSeed(1234);
  return keep(scope(() => {
    const x = randn([64, 2]);
    const y = x.narrow(1, 0, 1).mul(1.5).sin().add(x.narrow(1, 1, 1).square().mul(0.5));
    return { x, y };
  }));
}

/** Weights decay, biases do not (the DINO convention). */
function adamwFor(m: MLP, lr: number): AdamW {
  return new AdamW([
    { params: [m.w1, m.w2], lr, weightDecay: 0.01, name: "decay" },
    { params: [m.b1, m.b2], lr, weightDecay: 0, name: "no_decay" },
  ]);
}

Deno.test("AdamW: 200-step MLP training, loss falls, live handles constant", () => {
  const before = liveTensors();
  const { x, y } = dataset();
  const m = initMLP(0);
  const opt = adamwFor(m, 0.02);
  const losses: number[] = [];
  let liveAfter1 = -1, jsAfter1 = -1;
  for (let it = 0; it < 200; it++) {
    losses.push(scope(() => {
      opt.zeroGrad();
      const loss = forward(m, x).sub(y).square().mean();
      loss.backward();
      opt.step();
      return loss.item();
    }));
    if (it === 0) {
      liveAfter1 = liveTensors();
      jsAfter1 = liveHandles();
    }
  }
  assert.equal(liveTensors(), liveAfter1, "native handles after step 200 vs step 1");
  assert.equal(liveHandles(), jsAfter1, "JS handles after step 200 vs step 1");
  const first = losses[0], last = losses[199];
  assert.ok(losses.every(Number.isFinite));
  assert.ok(last < 0.15 * first, `loss ${first} → ${last}`);
  assert.ok(Math.min(...losses.slice(150)) < Math.min(...losses.slice(0, 50)));
  opt.free();
  freeAll([...Object.values(m), x, y]);
  assert.equal(liveTensors(), before);
});

// ---- exact resume ------------------------------------------------------------------------------

/**
 * Iterations [from, to) of a DINO-like loop: per-iteration lr and weight decay schedules,
 * per-parameter clipping, and the last layer (w2) "frozen" (gradient dropped) for the first 3
 * iterations, so that step counts differ between parameters.
 */
function train(m: MLP, opt: AdamW, data: { x: Tensor; y: Tensor }, from: number, to: number): void {
  for (let it = from; it < to; it++) {
    scope(() => {
      opt.zeroGrad();
      const xb = data.x.narrow(0, (it * 16) % 64, 16);
      const yb = data.y.narrow(0, (it * 16) % 64, 16);
      forward(m, xb).sub(yb).square().mean().backward();
      clipGradNorms([m.w1, m.b1, m.w2, m.b2], 0.5);
      if (it < 3) zeroGrads([m.w2]);
      const lr = 0.01 * (1 + Math.cos((Math.PI * it) / 12)) / 2 + 1e-4;
      const wd = 0.04 + 0.36 * it / 12;
      opt.groups[0].lr = lr;
      opt.groups[0].weightDecay = wd;
      opt.groups[1].lr = lr;
      opt.step();
    });
  }
}

function bytesOf(m: MLP): Uint8Array[] {
  return Object.values(m).map((p) => p.toBytes());
}

Deno.test("AdamW: resume from safetensors + JSON is bitwise identical to an uninterrupted run", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const before = liveTensors();
    const data = dataset();
    const N = 7, M = 5;

    // uninterrupted
    const a = initMLP(42);
    const optA = adamwFor(a, 0);
    train(a, optA, data, 0, N + M);
    const wantParams = bytesOf(a);
    const wantState = Object.values(optA.stateDict().tensors).map((t) => t.toBytes());
    const wantSteps = optA.stateDict().meta.groups;
    optA.free();
    freeAll(Object.values(a));

    // N steps, checkpoint, fresh objects, M steps
    const b = initMLP(42);
    const optB = adamwFor(b, 0);
    train(b, optB, data, 0, N);
    const st = optB.stateDict();
    assert.deepEqual((st.meta.groups as { steps: number[] }[])[0].steps, [7, 4]);
    const tensors: Record<string, Tensor> = { ...st.tensors };
    for (const [k, p] of Object.entries(b)) tensors[`model.${k}`] = p;
    await saveSafetensors(`${dir}/ckpt.safetensors`, tensors);
    await Deno.writeTextFile(
      `${dir}/ckpt.json`,
      JSON.stringify({ iteration: N, optimizer: st.meta }),
    );
    optB.free();
    freeAll(Object.values(b));

    const c = initMLP(7); // a different init: everything must come from the checkpoint
    const optC = adamwFor(c, 0.5);
    const side = JSON.parse(await Deno.readTextFile(`${dir}/ckpt.json`));
    const { tensors: loaded } = await loadSafetensors(`${dir}/ckpt.safetensors`);
    noGrad(() => {
      for (const [k, p] of Object.entries(c)) p.copy_(loaded[`model.${k}`]);
    });
    const state: OptimizerState = {
      tensors: Object.fromEntries(Object.entries(loaded).filter(([k]) => !k.startsWith("model."))),
      meta: side.optimizer,
    };
    optC.loadStateDict(state);
    freeAll(Object.values(loaded));
    train(c, optC, data, side.iteration, N + M);

    const got = bytesOf(c);
    for (let i = 0; i < got.length; i++) assert.deepEqual(got[i], wantParams[i], `parameter ${i}`);
    assert.deepEqual(
      Object.values(optC.stateDict().tensors).map((t) => t.toBytes()),
      wantState,
    );
    assert.deepEqual(optC.stateDict().meta.groups, wantSteps);
    optC.free();
    freeAll([...Object.values(c), data.x, data.y]);
    assert.equal(liveTensors(), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- EMA, clipping, zeroing --------------------------------------------------------------------

Deno.test("emaUpdate: teacher ← m·teacher + (1 − m)·student, closed form over k steps", () => {
  const before = liveTensors();
  const t0 = [1.5, -2.0, 0.25, 8.0];
  const s = [0.5, 3.0, -1.0, 8.0];
  const teacher = [param(t0, "float64"), param([[1, 2], [3, 4]])];
  const student = [param(s, "float64"), param([[0, 0], [0, 0]])];
  const m = 0.9;
  for (let k = 0; k < 5; k++) emaUpdate(teacher, student, m);
  const mk = m ** 5;
  assertClose(teacher[0], t0.map((v, i) => mk * v + (1 - mk) * s[i]), 1e-14, "float64");
  assertClose(teacher[1], [1, 2, 3, 4].map((v) => mk * v), 1e-6, "float32");
  // no autograd history on the teacher; the student is untouched
  assert.ok(teacher[0].isLeaf && teacher[0].requiresGrad);
  assert.deepEqual(values(student[0]), s);
  // momentum 1 keeps the teacher, 0 copies the student
  const snap = values(teacher[0]);
  emaUpdate(teacher, student, 1);
  assert.deepEqual(values(teacher[0]), snap);
  emaUpdate(teacher, student, 0);
  assert.deepEqual(values(teacher[0]), s);
  // mismatches are refused before anything changes
  const bad = param([1, 2, 3]);
  const t1 = values(teacher[1]);
  assert.throws(() => emaUpdate(teacher, [student[0]], 0.5), isTorchError(/2 tensors, student 1/));
  assert.throws(
    () => emaUpdate([teacher[1], teacher[0]], [bad, student[0]], 0.5),
    isTorchError(/EMA pair 0/),
  );
  assert.deepEqual(values(teacher[1]), t1);
  emaUpdate([], [], 0.5);
  freeAll([...teacher, ...student, bad]);
  assert.equal(liveTensors(), before);
});

Deno.test("clipGradNorms: the official DINO rule per parameter, pre-clip norms, no-grad skipped", () => {
  const before = liveTensors();
  const p1 = param([0, 0]);
  const p2 = param([0, 0]);
  const p3 = param([0, 0]); // no gradient
  const p4 = param([[0, 0], [0, 0]]);
  const p5 = param([0, 0]);
  setGrad(p1, [3, 4]); // norm 5 → clipped
  setGrad(p2, [0.6, 0.8]); // norm 1 → untouched
  setGrad(p4, [[1.5, 0], [0, 2]]); // norm 2.5 → untouched
  setGrad(p5, [3, 0]); // norm exactly 3: coef 3 / (3 + 1e-6) < 1 → scaled, as in DINO
  const g2 = p2.grad!;
  const g2before = g2.toBytes();
  const norms = clipGradNorms([p1, p2, p3, p4, p5], 3);
  assert.equal(norms.dtype, "float32");
  assertClose(norms, [5, 1, 2.5, 3], 1e-7, "norms");
  // coef = max / (norm + 1e-6), computed in float32 as torch does
  const f = Math.fround;
  const coef = (n: number) => f(3 / f(n + f(1e-6)));
  const [g1, g4, g5] = [p1.grad!, p4.grad!, p5.grad!];
  assertClose(g1, [f(3 * coef(5)), f(4 * coef(5))], 1e-7, "p1 grad");
  assert.deepEqual(g2.toBytes(), g2before);
  assert.deepEqual(values(g4), [1.5, 0, 0, 2]);
  assertClose(g5, [f(3 * coef(3)), 0], 1e-7, "p5 grad");
  assert.ok(values(g5)[0] < 3);
  assert.equal(p3.grad, null);
  // every norm is now ≤ max
  const after = clipGradNorms([p1, p2, p3, p4, p5], 3);
  assert.ok(values(after).every((n) => n <= 3));
  // nothing with a gradient: an empty result
  const none = clipGradNorms([p3], 3);
  assert.deepEqual(none.shape, [0]);
  freeAll([norms, after, none, g1, g2, g4, g5, p1, p2, p3, p4, p5]);
  assert.equal(liveTensors(), before);
});

Deno.test("clipGradNormTotal: torch.nn.utils.clip_grad_norm_", () => {
  const before = liveTensors();
  const p = param([0, 0]);
  const q = param([0]);
  const r = param([0]); // no gradient
  setGrad(p, [3, 4]);
  setGrad(q, [12]);
  const big = clipGradNormTotal([p, q, r], 100);
  assert.equal(big.item(), 13);
  scope(() => assert.deepEqual([...values(p.grad!), ...values(q.grad!)], [3, 4, 12]));
  const total = clipGradNormTotal([p, q, r], 6.5);
  assert.equal(total.item(), 13);
  const coef = 6.5 / (13 + 1e-6);
  scope(() => {
    assertClose(p.grad!, [3 * coef, 4 * coef], 1e-6, "p grad");
    assertClose(q.grad!, [12 * coef], 1e-6, "q grad");
  });
  const none = clipGradNormTotal([r], 1);
  assert.equal(none.item(), 0);
  freeAll([big, total, none]);
  freeAll([p, q, r]);
  assert.equal(liveTensors(), before);
});

Deno.test("zeroGrads: set to None or zero in place; gradients accumulate afterwards", () => {
  const before = liveTensors();
  const p = param([1, 2]);
  const q = param([3]);
  const backward = () => scope(() => p.mul(p).sum().add(q.mul(3).sum()).backward());
  backward();
  scope(() => assert.deepEqual(values(p.grad!), [2, 4]));
  zeroGrads([p, q], false);
  scope(() => {
    assert.deepEqual(values(p.grad!), [0, 0]);
    assert.deepEqual(values(q.grad!), [0]);
  });
  backward();
  backward(); // accumulates
  scope(() => {
    assert.deepEqual(values(p.grad!), [4, 8]);
    assert.deepEqual(values(q.grad!), [6]);
  });
  zeroGrads([p]); // default: set to None; q keeps its gradient
  assert.equal(p.grad, null);
  scope(() => assert.deepEqual(values(q.grad!), [6]));
  zeroGrads([p, q]); // p has none: fine
  assert.equal(q.grad, null);
  backward();
  scope(() => assert.deepEqual(values(p.grad!), [2, 4]));
  // through the optimiser
  const opt = new SGD([p, q], { lr: 0.1 });
  opt.zeroGrad(false);
  scope(() => assert.deepEqual(values(p.grad!), [0, 0]));
  opt.zeroGrad();
  assert.equal(p.grad, null);
  opt.free();
  freeAll([p, q]);
  assert.equal(liveTensors(), before);
});

// ---- SGD against torch.optim.SGD ---------------------------------------------------------------

Deno.test("SGD: momentum / dampening / weight decay / Nesterov match torch.optim.SGD", () => {
  const before = liveTensors();
  const G = [[0.5, -1.0, 0.25, 2.0], [-0.3, 0.6, 0.9, -1.2], [0.1, 0.1, -0.4, 0.8]];
  const H = [null, [0.5, 0.5], [-2.0, 0.25]]; // q has no gradient at step 1
  const lrs = [null, [0.2, 0.02], [0.01, 0.5]];
  // PyTorch 1.13.0: SGD([{params: [p]}, {params: [q], lr: 0.05}], **opts), float32
  const cases: [string, ConstructorParameters<typeof SGD>[1], number[][], number[][]][] = [
    [
      "momentum 0.9, dampening 0.1, wd 0.01",
      { lr: 0.1, momentum: 0.9, dampening: 0.1, weightDecay: 0.01 },
      [
        [0.949, -0.3995, 0.22475, 1.798],
        [0.9094918, -0.32588091, 0.016895462, 1.6471636],
        [0.9067321, -0.32343873, 0.011140488, 1.6330278],
      ],
      [[0.3, -0.7], [0.28994, -0.70985997], [0.9622852, -1.0410156]],
    ],
    [
      "Nesterov 0.9, wd 0.01",
      { lr: 0.1, momentum: 0.9, nesterov: true, weightDecay: 1e-2 },
      [
        [0.9031, -0.30905, 0.202025, 1.6162],
        [0.9310482, -0.37306562, -0.18164767, 1.7388184],
        [0.9276103, -0.37240326, -0.18316025, 1.7181513],
      ],
      [[0.3, -0.7], [0.28088602, -0.71873397], [1.9745027, -1.149071]],
    ],
    [
      "plain, wd 0.05",
      { lr: 0.1, weightDecay: 0.05 },
      [
        [0.945, -0.3975, 0.22375, 1.79],
        [0.99555, -0.513525, 0.041512497, 2.0121],
        [0.99405223, -0.5142682, 0.04549174, 2.003094],
      ],
      [[0.3, -0.7], [0.2897, -0.7093], [1.2824575, -0.8165675]],
    ],
  ];
  for (const [name, opts, wantP, wantQ] of cases) {
    const p = param([1.0, -0.5, 0.25, 2.0]);
    const q = param([0.3, -0.7]);
    const opt = new SGD([{ params: [p] }, { params: [q], lr: 0.05 }], opts);
    for (let s = 0; s < 3; s++) {
      setGrad(p, G[s]);
      setGrad(q, H[s]);
      if (lrs[s]) [opt.groups[0].lr, opt.groups[1].lr] = lrs[s]!;
      opt.step();
      assertClose(p, wantP[s], 3e-7, `${name} step ${s + 1} p`);
      assertClose(q, wantQ[s], 3e-7, `${name} step ${s + 1} q`);
    }
    opt.free();
    freeAll([p, q]);
  }
  const p = param([1]);
  assert.throws(
    () => new SGD([p], { lr: 0.1, nesterov: true }),
    isTorchError(/Nesterov momentum requires a momentum and zero dampening/),
  );
  assert.throws(
    () => new SGD([p], { lr: 0.1, momentum: 0.9, dampening: 0.1, nesterov: true }),
    isTorchError(/Nesterov/),
  );
  p.free();
  assert.equal(liveTensors(), before);
});
