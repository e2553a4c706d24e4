/**
 * The DINO / DenseDINO loss against a closed form computed here in plain JS (float64): the
 * official `DINOLoss` written out pair by pair — teacher softmax((t − centre)/τt), student
 * log-softmax(s/τs), terms averaged over batch (and points), sums divided by `count + 1e-5` —
 * for "cls", "ref" and "both", with and without all crops; gradients (to the student only,
 * values from the closed-form derivative); the centres after one and two updates; the
 * teacher temperature at chosen epochs; the distributed hook; the collapse check; checkpoint
 * state; memory; bad input.
 */
import assert from "node:assert/strict";
import {
  collapseThreshold,
  DinoLoss,
  type DinoLossOptions,
  isCollapsed,
  keep,
  liveTensors,
  scope,
  softmaxEntropy,
  teacherTempSchedule,
  type Tensor,
  tensor,
  TorchError,
  zeros,
} from "../../mod.ts";

const START = liveTensors();

type V = number[]; // [K]

/** Test inputs in plain JS: tc[iq][b] [K], sc[v][b], tr[iq][b][row], sr[v][b][row]. */
interface Logits {
  tc: V[][];
  sc: V[][];
  tr: V[][][];
  sr: V[][][];
}

interface Cfg {
  G: number;
  N: number;
  M: number;
  K: number;
  B: number;
}

/** Deterministic "hand-made" logits, rounded to float32 so the tensors hold them exactly. */
function makeLogits(c: Cfg, seed: number, scale = 1.5): Logits {
  let i = 0;
  const val = () => Math.fround(scale * Math.sin(1.37 * (i++) + seed) + 0.25 * Math.cos(0.61 * i));
  const vec = () => Array.from({ length: c.K }, val);
  const rows = (n: number) => Array.from({ length: n }, vec);
  const batch = <T>(f: () => T) => Array.from({ length: c.B }, f);
  return {
    tc: Array.from({ length: c.G }, () => batch(vec)),
    sc: Array.from({ length: c.N }, () => batch(vec)),
    tr: Array.from({ length: c.G }, () => batch(() => rows(c.N * c.M))),
    sr: Array.from({ length: c.N }, () => batch(() => rows(c.G * c.M))),
  };
}

function toTensors(l: Logits, requiresGrad = false) {
  const t = (x: V[] | V[][]) => {
    const r = tensor(x);
    return requiresGrad ? r.requiresGrad_() : r;
  };
  return {
    teacherCls: l.tc.map(t),
    studentCls: l.sc.map(t),
    teacherRef: l.tr.map(t),
    studentRef: l.sr.map(t),
  };
}

function softmax(x: V, center: V, temp: number): V {
  const z = x.map((v, k) => (v - center[k]) / temp);
  const mx = Math.max(...z);
  const e = z.map((v) => Math.exp(v - mx));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function logSoftmax(x: V, temp: number): V {
  const z = x.map((v) => v / temp);
  const mx = Math.max(...z);
  const lse = mx + Math.log(z.reduce((a, v) => a + Math.exp(v - mx), 0));
  return z.map((v) => v - lse);
}

/** Σ_k −p_k · ls_k */
function ce(p: V, ls: V): number {
  return p.reduce((a, pk, k) => a - pk * ls[k], 0);
}

interface Closed {
  cls: number;
  ref: number;
  total: number;
  nCls: number;
  nRef: number;
  center: V;
  refCenter: V;
}

/** The official DINOLoss, pair by pair, in float64. */
function closedForm(
  l: Logits,
  c: Cfg,
  o: {
    center: V;
    refCenter: V;
    temp: number;
    loss: "cls" | "ref" | "both";
    allCropsCls: boolean;
    allCropsRef: boolean;
    alpha?: number;
    studentTemp?: number;
    momentum?: number;
  },
): Closed {
  const st = o.studentTemp ?? 0.1, m = o.momentum ?? 0.9, alpha = o.alpha ?? 0.5;
  const useCls = o.loss !== "ref", useRef = o.loss !== "cls";
  let cls = 0, ref = 0, nCls = 1e-5, nRef = 1e-5; // the official counters start at 1e-5
  let pairsCls = 0, pairsRef = 0;
  for (let iq = 0; iq < c.G; iq++) {
    for (let v = 0; v < c.N; v++) {
      if (v === iq) continue;
      if (useCls && (o.allCropsCls || v < c.G)) {
        let term = 0;
        for (let b = 0; b < c.B; b++) {
          term += ce(softmax(l.tc[iq][b], o.center, o.temp), logSoftmax(l.sc[v][b], st));
        }
        cls += term / c.B;
        nCls += 1;
        pairsCls++;
      }
      if (useRef && (o.allCropsRef || v < c.G)) {
        let term = 0;
        for (let b = 0; b < c.B; b++) {
          for (let p = 0; p < c.M; p++) {
            const pt = softmax(l.tr[iq][b][v * c.M + p], o.refCenter, o.temp);
            term += ce(pt, logSoftmax(l.sr[v][b][iq * c.M + p], st));
          }
        }
        ref += term / (c.B * c.M);
        nRef += 1;
        pairsRef++;
      }
    }
  }
  cls /= nCls;
  ref /= nRef;
  const total = o.loss === "both" ? alpha * cls + (1 - alpha) * ref : o.loss === "cls" ? cls : ref;
  // centres: teacher class outputs of the global views; reference rows of pairs (iq, j < G)
  const center = o.center.slice(), refCenter = o.refCenter.slice();
  if (useCls) {
    for (let k = 0; k < c.K; k++) {
      let s = 0;
      for (let iq = 0; iq < c.G; iq++) for (let b = 0; b < c.B; b++) s += l.tc[iq][b][k];
      center[k] = m * o.center[k] + (1 - m) * s / (c.G * c.B);
    }
  }
  if (useRef) {
    for (let k = 0; k < c.K; k++) {
      let s = 0;
      for (let iq = 0; iq < c.G; iq++) {
        for (let b = 0; b < c.B; b++) {
          for (let row = 0; row < c.G * c.M; row++) s += l.tr[iq][b][row][k];
        }
      }
      refCenter[k] = m * o.refCenter[k] + (1 - m) * s / (c.G * c.B * c.G * c.M);
    }
  }
  return { cls, ref, total, nCls: pairsCls, nRef: pairsRef, center, refCenter };
}

function near(a: number, b: number, tol: number, what: string): void {
  assert.ok(Math.abs(a - b) <= tol, `${what}: ${a} vs ${b} (|diff| ${Math.abs(a - b)} > ${tol})`);
}

/** |a − b| ≤ rel·|b|: tight enough (1e-6) to see the official 1e-5 guard on a few terms. */
function nearRel(a: number, b: number, rel: number, what: string): void {
  near(a, b, rel * Math.abs(b), what);
}

function nearArr(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(a.length, b.length, `${what}: length`);
  for (let i = 0; i < a.length; i++) near(a[i], b[i], tol, `${what}[${i}]`);
}

const flat = (t: Tensor) => Array.from(t.toTypedArray() as Float32Array);
const zerosV = (K: number) => new Array(K).fill(0);

const CFG: Cfg = { G: 2, N: 3, M: 2, K: 4, B: 2 };
const OPTS: DinoLossOptions = { outDim: CFG.K, numViews: CFG.N, numRef: CFG.M };

Deno.test("one hand-written class-loss case: two global views, K = 3, B = 1", () => {
  // teacher softmax((t − 0)/0.5), student log_softmax(s/1): written out by hand
  const tc = [[[1, 0, 0]], [[0, 2, 0]]];
  const sc = [[[0, 0, 1]], [[1, 1, 0]]];
  scope(() => {
    const loss = new DinoLoss({
      outDim: 3,
      numViews: 2,
      loss: "cls",
      teacherTemp: 0.5,
      studentTemp: 1,
    });
    const out = loss.forward(
      { teacherCls: tc.map((x) => tensor(x)), studentCls: sc.map((x) => tensor(x)) },
      0,
    );
    const e = Math.E, e2 = e * e, e4 = e2 * e2;
    // pair (0, 1): p = (e², 1, 1)/(e² + 2), log q = (1, 1, 0) − ln(2e + 1)
    const p0 = [e2 / (e2 + 2), 1 / (e2 + 2), 1 / (e2 + 2)];
    const lq1 = [1, 1, 0].map((v) => v - Math.log(2 * e + 1));
    // pair (1, 0): p = (1, e⁴, 1)/(e⁴ + 2), log q = (0, 0, 1) − ln(e + 2)
    const p1 = [1 / (e4 + 2), e4 / (e4 + 2), 1 / (e4 + 2)];
    const lq0 = [0, 0, 1].map((v) => v - Math.log(e + 2));
    const want = (ce(p0, lq1) + ce(p1, lq0)) / (2 + 1e-5);
    nearRel(out.cls.item(), want, 1e-6, "cls");
    nearRel(out.total.item(), want, 1e-6, "total");
    // the 1e-5 guard is visible at this precision: the plain mean of the two terms is not it
    assert.ok(Math.abs(out.cls.item() - want * (2 + 1e-5) / 2) > 2e-6 * want, "1e-5 guard");
    assert.equal(out.ref.item(), 0);
    // centre: 0.9·0 + 0.1·mean([1,0,0], [0,2,0])
    nearArr(flat(loss.center), [0.05, 0.1, 0], 1e-7, "center");
    assert.deepEqual(flat(loss.refCenter), [0, 0, 0]);
    loss.free();
  });
});

for (const loss of ["cls", "ref", "both"] as const) {
  for (const allCropsCls of [false, true]) {
    for (const allCropsRef of [true, false]) {
      if (loss === "cls" && !allCropsRef) continue;
      if (loss === "ref" && allCropsCls) continue;
      Deno.test(
        `loss "${loss}", allCropsCls ${allCropsCls}, allCropsRef ${allCropsRef}: closed form`,
        () => {
          scope(() => {
            const l = makeLogits(CFG, 0.3);
            const dl = new DinoLoss({ ...OPTS, loss, allCropsCls, allCropsRef, alpha: 0.3 });
            const o = {
              center: zerosV(CFG.K),
              refCenter: zerosV(CFG.K),
              temp: 0.04,
              loss,
              allCropsCls,
              allCropsRef,
              alpha: 0.3,
            };
            const want = closedForm(l, CFG, o);
            // counts of terms, as the official enumerates them
            assert.equal(dl.clsTerms, want.nCls);
            assert.equal(dl.refTerms, want.nRef);
            if (loss !== "ref") assert.equal(want.nCls, allCropsCls ? 4 : 2);
            if (loss !== "cls") assert.equal(want.nRef, allCropsRef ? 4 : 2);
            const out = dl.forward(toTensors(l), 0);
            nearRel(out.cls.item(), want.cls, 1e-6, "cls");
            nearRel(out.ref.item(), want.ref, 1e-6, "ref");
            nearRel(out.total.item(), want.total, 1e-6, "total");
            // …and not the plain mean of the terms: the 1e-5 guard is kept
            for (
              const [got, w, n] of [[out.cls, want.cls, want.nCls], [
                out.ref,
                want.ref,
                want.nRef,
              ]] as const
            ) {
              if (n > 0) assert.ok(Math.abs(got.item() - w * (n + 1e-5) / n) > 1.5e-6 * w, "guard");
            }
            assert.equal(out.temperature, 0.04);
            assert.equal(out.entropy, null);
            nearArr(flat(dl.center), want.center, 1e-6, "center after one update");
            nearArr(flat(dl.refCenter), want.refCenter, 1e-6, "ref_center after one update");
            // second batch: the loss uses the updated centres, which update again
            const l2 = makeLogits(CFG, 1.1);
            const want2 = closedForm(l2, CFG, {
              ...o,
              center: want.center,
              refCenter: want.refCenter,
            });
            const out2 = dl.forward(toTensors(l2), 1);
            nearRel(out2.total.item(), want2.total, 1e-6, "total, second batch");
            nearRel(out2.cls.item(), want2.cls, 1e-6, "cls, second batch");
            nearRel(out2.ref.item(), want2.ref, 1e-6, "ref, second batch");
            nearArr(flat(dl.center), want2.center, 1e-6, "center after two updates");
            nearArr(flat(dl.refCenter), want2.refCenter, 1e-6, "ref_center after two updates");
            if (loss === "ref") assert.deepEqual(flat(dl.center), zerosV(CFG.K));
            if (loss === "cls") assert.deepEqual(flat(dl.refCenter), zerosV(CFG.K));
            dl.free();
          });
        },
      );
    }
  }
}

Deno.test("centre values after one and two updates equal m·c + (1−m)·batch mean", () => {
  scope(() => {
    const c: Cfg = { G: 2, N: 4, M: 3, K: 5, B: 3 };
    const dl = new DinoLoss({ outDim: c.K, numViews: c.N, centerMomentum: 0.7 });
    const ls = [makeLogits(c, 2.0), makeLogits(c, -0.4)];
    let center = zerosV(c.K), refCenter = zerosV(c.K);
    for (const [i, l] of ls.entries()) {
      dl.forward(toTensors(l), 0);
      // centre: mean over global views and batch of the raw teacher class outputs
      const mean = (rows: V[]) => zerosV(c.K).map((_, k) => rows.reduce((a, r) => a + r[k], 0));
      const clsRows = l.tc.flat();
      const refRows = l.tr.flatMap((views) => views.flatMap((rows) => rows.slice(0, c.G * c.M)));
      const cm = mean(clsRows).map((s) => s / clsRows.length);
      const rm = mean(refRows).map((s) => s / refRows.length);
      assert.equal(refRows.length, c.G * c.B * c.G * c.M);
      center = center.map((x, k) => 0.7 * x + 0.3 * cm[k]);
      refCenter = refCenter.map((x, k) => 0.7 * x + 0.3 * rm[k]);
      nearArr(flat(dl.center), center, 1e-6, `center after ${i + 1} updates`);
      nearArr(flat(dl.refCenter), refCenter, 1e-6, `ref_center after ${i + 1} updates`);
    }
    dl.free();
  });
});

Deno.test("gradients: to the student outputs only, equal to the closed-form derivative", () => {
  scope(() => {
    const c = CFG, alpha = 0.4, st = 0.1, T = 0.05;
    for (const allCropsCls of [false, true]) {
      const l = makeLogits(c, 0.7);
      const dl = new DinoLoss({ ...OPTS, alpha, teacherTemp: T, allCropsCls });
      const inp = toTensors(l, true);
      const out = dl.forward(inp, 0);
      out.total.backward();
      for (const t of [...inp.teacherCls, ...inp.teacherRef]) assert.equal(t.grad, null);
      // dL/ds for one term: (softmax(s/τs) − p_t)/τs, divided as the term is
      const nCls = allCropsCls ? 4 : 2, nRef = 4;
      for (let v = 0; v < c.N; v++) {
        const g = inp.studentCls[v].grad;
        if (!allCropsCls && v >= c.G) {
          assert.ok(g === null || flat(g).every((x) => x === 0), "unused local view: no grad");
          continue;
        }
        const want: number[] = [];
        for (let b = 0; b < c.B; b++) {
          const q = logSoftmax(l.sc[v][b], st).map(Math.exp);
          const acc = zerosV(c.K);
          for (let iq = 0; iq < c.G; iq++) {
            if (iq === v) continue;
            const p = softmax(l.tc[iq][b], zerosV(c.K), T);
            for (let k = 0; k < c.K; k++) acc[k] += (q[k] - p[k]) / st;
          }
          want.push(...acc.map((x) => alpha * x / (c.B * (nCls + 1e-5))));
        }
        nearArr(flat(g!), want, 1e-5, `studentCls[${v}].grad`);
      }
      for (let v = 0; v < c.N; v++) {
        const want: number[] = [];
        for (let b = 0; b < c.B; b++) {
          for (let iq = 0; iq < c.G; iq++) {
            for (let m = 0; m < c.M; m++) {
              if (iq === v) {
                want.push(...zerosV(c.K));
                continue;
              }
              const q = logSoftmax(l.sr[v][b][iq * c.M + m], st).map(Math.exp);
              const p = softmax(l.tr[iq][b][v * c.M + m], zerosV(c.K), T);
              want.push(
                ...q.map((qk, k) => (1 - alpha) * (qk - p[k]) / st / (c.B * c.M * (nRef + 1e-5))),
              );
            }
          }
        }
        nearArr(flat(inp.studentRef[v].grad!), want, 1e-5, `studentRef[${v}].grad`);
      }
      dl.free();
    }
  });
});

Deno.test("teacher temperature: fixed, scheduled per epoch / per iteration, explicit", () => {
  scope(() => {
    const l = makeLogits(CFG, 0.9);
    const o = {
      center: zerosV(CFG.K),
      refCenter: zerosV(CFG.K),
      loss: "both" as const,
      allCropsCls: false,
      allCropsRef: true,
    };
    const sched = teacherTempSchedule({ epochs: 5, warmupTemp: 0.04, temp: 0.07, warmupEpochs: 3 });
    const expected = [0.04, 0.055, 0.07, 0.07, 0.07];
    for (let epoch = 0; epoch < 5; epoch++) {
      const dl = new DinoLoss({ ...OPTS, teacherTemp: sched });
      assert.equal(dl.temperatureAt(epoch), sched.values[epoch]);
      near(dl.temperatureAt(epoch), expected[epoch], 1e-15, `τt at epoch ${epoch}`);
      const out = dl.forward(toTensors(l), epoch);
      assert.equal(out.temperature, sched.values[epoch]);
      const want = closedForm(l, CFG, { ...o, temp: sched.values[epoch] });
      nearRel(out.total.item(), want.total, 1e-6, `loss at epoch ${epoch}`);
      dl.free();
    }
    // per iteration: 2 epochs of warm-up over 4 iterations each, looked up by global iteration
    const perIt = teacherTempSchedule({
      epochs: 3,
      warmupTemp: 0.04,
      temp: 0.07,
      warmupEpochs: 2,
      perIteration: true,
      itersPerEpoch: 4,
    });
    const dl = new DinoLoss({ ...OPTS, teacherTemp: perIt });
    near(dl.temperatureAt({ epoch: 0, iteration: 3 }), 0.04 + 3 * 0.03 / 7, 1e-15, "it 3");
    assert.equal(dl.temperatureAt({ epoch: 1 }), perIt.values[4]);
    assert.equal(dl.temperatureAt({ epoch: 2, iteration: 9 }), 0.07);
    // an explicit temperature overrides the schedule
    const out = dl.forward(toTensors(l), { temperature: 0.1 });
    assert.equal(out.temperature, 0.1);
    nearRel(out.total.item(), closedForm(l, CFG, { ...o, temp: 0.1 }).total, 1e-6, "τt 0.1");
    assert.throws(() => dl.temperatureAt({ iteration: 3 }), RangeError);
    assert.throws(() => dl.temperatureAt(3), /epoch 3 is past/);
    assert.throws(() => dl.temperatureAt({ temperature: 0 }), RangeError);
    dl.free();
  });
});

Deno.test("distributed hook: one in-place all-reduce of [2, K] sums per forward", () => {
  scope(() => {
    // two ranks simulated: rank 0's reduce adds rank 1's sums; the centres must equal those of
    // one process over the concatenated batch
    const c: Cfg = { ...CFG, B: 2 };
    const a = makeLogits(c, 0.1), b = makeLogits(c, 0.2);
    const both: Logits = {
      tc: a.tc.map((x, i) => [...x, ...b.tc[i]]),
      sc: a.sc.map((x, i) => [...x, ...b.sc[i]]),
      tr: a.tr.map((x, i) => [...x, ...b.tr[i]]),
      sr: a.sr.map((x, i) => [...x, ...b.sr[i]]),
    };
    let rank1Sums: Tensor | null = null;
    const rank1 = new DinoLoss({
      ...OPTS,
      worldSize: 2,
      reduce: (s) => (rank1Sums = keep(s.clone())),
    });
    rank1.forward(toTensors(b), 0);
    let calls = 0;
    const rank0 = new DinoLoss({
      ...OPTS,
      worldSize: 2,
      reduce: (s) => {
        calls++;
        assert.deepEqual(s.shape, [2, CFG.K]);
        assert.equal(s.dtype, "float32");
        s.add_(rank1Sums!);
      },
    });
    rank0.forward(toTensors(a), 0);
    assert.equal(calls, 1);
    const single = new DinoLoss(OPTS);
    single.forward(toTensors(both), 0);
    nearArr(flat(rank0.center), flat(single.center), 1e-6, "center");
    nearArr(flat(rank0.refCenter), flat(single.refCenter), 1e-6, "ref_center");
    // "cls" only: still [2, K], the ref row zero
    const clsOnly = new DinoLoss({
      ...OPTS,
      loss: "cls",
      reduce: (s) => {
        assert.deepEqual(s.shape, [2, CFG.K]);
        assert.deepEqual(flat(s).slice(CFG.K), zerosV(CFG.K));
      },
    });
    clsOnly.forward(
      { teacherCls: toTensors(a).teacherCls, studentCls: toTensors(a).studentCls },
      0,
    );
    for (const x of [rank0, rank1, single, clsOnly]) x.free();
    rank1Sums!.free();
  });
});

Deno.test("collapse check: entropy of the teacher softmax against 0.99·ln(outDim)", () => {
  scope(() => {
    const K = 4;
    assert.equal(collapseThreshold(K), 0.99 * Math.log(K));
    // uniform teacher outputs: entropy ln K → collapsed
    const dl = new DinoLoss({ outDim: K, numViews: 2, loss: "cls" });
    const flatT = [tensor([[0.3, 0.3, 0.3, 0.3]]), tensor([[-1, -1, -1, -1]])];
    const st = [tensor([[1, 2, 3, 4]]), tensor([[0, 0, 1, 0]])];
    const out = dl.forward({ teacherCls: flatT, studentCls: st }, 0, { entropy: true });
    near(out.entropy!.item(), Math.log(K), 1e-6, "uniform entropy");
    assert.ok(isCollapsed(out.entropy!.item(), K));
    // the loss of a uniform teacher is at least ln K
    assert.ok(out.total.item() >= Math.log(K) * (2 / (2 + 1e-5)) - 1e-6);
    // sharp teacher: not collapsed; the entropy is that of softmax((t − centre)/τt)
    const sharp = [tensor([[1, 0, 0, 0]]), tensor([[0, 1, 0.5, 0]])];
    const out2 = dl.forward({ teacherCls: sharp, studentCls: st }, 0, { entropy: true });
    const H = (x: V, cen: V) => {
      const p = softmax(x, cen, 0.04);
      return -p.reduce((a, pk) => a + (pk > 0 ? pk * Math.log(pk) : 0), 0);
    };
    // the centre this forward used: after the first one, 0.9·0 + 0.1·mean(0.3, −1) = −0.035
    const cen1 = [-0.035, -0.035, -0.035, -0.035];
    const wantH = (H([1, 0, 0, 0], cen1) + H([0, 1, 0.5, 0], cen1)) / 2;
    near(out2.entropy!.item(), wantH, 1e-5, "sharp entropy");
    assert.ok(!isCollapsed(out2.entropy!.item(), K));
    // softmaxEntropy on its own
    near(softmaxEntropy(tensor([[0, 0, 0, 0], [100, 0, 0, 0]])).item(), Math.log(4) / 2, 1e-6, "");
    assert.ok(!isCollapsed(NaN, K));
    assert.ok(!isCollapsed(5, 1));
    assert.throws(() => collapseThreshold(0), RangeError);
    // "ref": the entropy of the reference teacher
    const rl = new DinoLoss({ ...OPTS, loss: "ref" });
    const l = makeLogits(CFG, 0.5);
    const t = toTensors(l);
    const o3 = rl.forward({ teacherRef: t.teacherRef, studentRef: t.studentRef }, 0, {
      entropy: true,
    });
    const rows = l.tr.flat(2);
    const wantRef = rows.reduce((a, r) => a + H(r, zerosV(CFG.K)), 0) / rows.length;
    near(o3.entropy!.item(), wantRef, 1e-5, "ref entropy");
    dl.free();
    rl.free();
  });
});

Deno.test("no pairs (one global view, no local view): every loss is 0 (the 1e-5 guard)", () => {
  scope(() => {
    const c: Cfg = { G: 1, N: 1, M: 2, K: 3, B: 2 };
    const dl = new DinoLoss({ outDim: 3, numViews: 1, globalCrops: 1 });
    const out = dl.forward(toTensors(makeLogits(c, 0)), 0);
    assert.equal(out.total.item(), 0);
    assert.equal(out.cls.item(), 0);
    assert.equal(out.ref.item(), 0);
    assert.equal(dl.clsTerms, 0);
    dl.free();
  });
});

Deno.test("float64 inputs are computed in float32; outputs are float32 scalars", () => {
  scope(() => {
    const l = makeLogits(CFG, 0.3);
    const a = new DinoLoss(OPTS), b = new DinoLoss(OPTS);
    const t = toTensors(l);
    const t64 = {
      teacherCls: t.teacherCls.map((x) => x.to("float64")),
      studentCls: t.studentCls.map((x) => x.to("float64")),
      teacherRef: t.teacherRef.map((x) => x.to("float64")),
      studentRef: t.studentRef.map((x) => x.to("float64")),
    };
    const o1 = a.forward(t, 0), o2 = b.forward(t64, 0);
    assert.equal(o2.total.dtype, "float32");
    assert.deepEqual(o2.total.shape, []);
    assert.equal(o1.total.item(), o2.total.item());
    assert.deepEqual(flat(a.refCenter), flat(b.refCenter));
    a.free();
    b.free();
  });
});

Deno.test("state / loadState round-trip the centres", () => {
  scope(() => {
    const a = new DinoLoss(OPTS);
    a.forward(toTensors(makeLogits(CFG, 0.3)), 0);
    const s = a.state();
    assert.deepEqual(Object.keys(s), ["center", "ref_center"]);
    assert.deepEqual(s.center.shape, [1, CFG.K]);
    const b = new DinoLoss(OPTS);
    b.loadState({ center: s.center.clone(), ref_center: s.ref_center.clone() });
    assert.deepEqual(flat(b.center), flat(a.center));
    assert.deepEqual(flat(b.refCenter), flat(a.refCenter));
    const l2 = makeLogits(CFG, 1.3);
    assert.equal(
      a.forward(toTensors(l2), 0).total.item(),
      b.forward(toTensors(l2), 0).total.item(),
    );
    assert.throws(() => b.loadState({ center: s.center }), /missing tensor "ref_center"/);
    assert.throws(
      () => b.loadState({ center: zeros([CFG.K]), ref_center: s.ref_center }),
      /"center" has shape \[4\], expected \[1, 4\]/,
    );
    a.free();
    b.free();
  });
});

Deno.test("bad input: view counts, shapes, dtypes and options name the culprit", () => {
  scope(() => {
    const dl = new DinoLoss(OPTS);
    const t = toTensors(makeLogits(CFG, 0.3));
    const bad = (inputs: Partial<typeof t>, re: RegExp) =>
      assert.throws(() => dl.forward({ ...t, ...inputs }, 0), (e: unknown) => {
        assert.ok(e instanceof TorchError, String(e));
        assert.match(e.message, re);
        return true;
      });
    bad({ teacherCls: t.teacherCls.slice(0, 1) }, /teacherCls has 1 tensors, expected 2/);
    bad({ studentCls: t.studentCls.slice(0, 2) }, /studentCls has 2 tensors, expected 3/);
    bad({ studentRef: [...t.studentRef, t.studentRef[0]] }, /studentRef has 4 tensors/);
    bad({ teacherRef: undefined }, /teacherRef is needed for loss "both"/);
    bad(
      { studentCls: [t.studentCls[0], zeros([2, 5]), t.studentCls[2]] },
      /studentCls\[1\] has shape \[2, 5\], expected \[2, 4\]/,
    );
    bad(
      { studentCls: [t.studentCls[0], t.studentCls[1], zeros([3, 4])] },
      /studentCls\[2\] has shape \[3, 4\]/,
    );
    bad(
      { teacherRef: [t.teacherRef[0], zeros([2, 5, 4])] },
      /teacherRef\[1\] has shape \[2, 5, 4\], expected \[2, 6, 4\]/,
    );
    bad(
      { studentRef: [t.studentRef[0], t.studentRef[1], zeros([2, 6, 4])] },
      /studentRef\[2\] has shape \[2, 6, 4\], expected \[2, 4, 4\]/,
    );
    bad(
      { teacherCls: [t.teacherCls[0], zeros([2, 4], { dtype: "int64" })] },
      /teacherCls\[1\] has dtype int64/,
    );
    // M inferred when numRef is not given: a student size that is not G·M
    const inferred = new DinoLoss({ outDim: CFG.K, numViews: CFG.N });
    assert.throws(
      () => inferred.forward({ ...t, studentRef: t.studentRef.map(() => zeros([2, 3, 4])) }, 0),
      /studentRef\[0\] has shape \[2, 3, 4\]: its second size must be G·M/,
    );
    // "cls" needs no reference outputs
    const clsOnly = new DinoLoss({ ...OPTS, loss: "cls" });
    clsOnly.forward({ teacherCls: t.teacherCls, studentCls: t.studentCls }, 0);
    // options
    const opt = (o: Partial<DinoLossOptions>, re: RegExp) =>
      assert.throws(() => new DinoLoss({ ...OPTS, ...o }), (e: unknown) => {
        assert.ok(e instanceof RangeError, String(e));
        assert.match(e.message, re);
        return true;
      });
    opt({ outDim: 0 }, /outDim/);
    opt({ numViews: 1 }, /numViews must be an integer ≥ 2/);
    opt({ globalCrops: 0 }, /globalCrops/);
    opt({ studentTemp: 0 }, /studentTemp/);
    opt({ teacherTemp: NaN }, /teacherTemp/);
    opt({ centerMomentum: 1.5 }, /centerMomentum/);
    opt({ alpha: -0.1 }, /alpha/);
    opt({ loss: "all" as "cls" }, /loss must be/);
    opt({ numRef: 0 }, /numRef/);
    opt({ worldSize: 0 }, /worldSize/);
    dl.free();
    inferred.free();
    clsOnly.free();
  });
});

Deno.test("memory: a forward + backward in a scope leaves no tensor behind", () => {
  const dl = new DinoLoss(OPTS);
  const l = makeLogits(CFG, 0.3);
  const run = () =>
    scope(() => {
      const t = toTensors(l, true);
      const out = dl.forward(t, 0, { entropy: true });
      out.total.backward();
    });
  run();
  const before = liveTensors();
  for (let i = 0; i < 5; i++) run();
  assert.equal(liveTensors(), before);
  dl.free();
  assert.equal(liveTensors(), START);
});
