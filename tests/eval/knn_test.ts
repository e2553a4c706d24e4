/**
 * knnClassify against a brute-force weighted k-NN written here in plain JS (loops over arrays,
 * float64): cosine similarity to every bank entry, the k most similar, votes exp(sim / T),
 * classes ranked by votes (ties by index), top-1 / top-5. Also: a hand-computed case where the
 * exp weighting overturns the majority, chunking that does not change results, k clamped to the
 * bank, top-5 only with ≥ 5 classes, and the errors.
 */
import assert from "node:assert/strict";
import { liveTensors, type Tensor, tensor, zeros } from "../../mod.ts";
import { EvalError } from "../../lib/eval/backbone.ts";
import { knnClassify, type KnnResult } from "../../lib/eval/knn.ts";

/** A small deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Brute-force weighted k-NN: [top-1 %, top-5 % or null]. */
function bruteKnn(
  trainF: number[][],
  trainL: number[],
  testF: number[][],
  testL: number[],
  k: number,
  T: number,
  C: number,
): { top1: number; top5: number | null } {
  const unit = (v: number[]) => {
    let s = 0;
    for (const x of v) s += x * x;
    const n = Math.sqrt(s);
    return v.map((x) => x / n);
  };
  const bank = trainF.map(unit);
  let c1 = 0, c5 = 0;
  for (let q = 0; q < testF.length; q++) {
    const x = unit(testF[q]);
    const sims: [number, number][] = [];
    for (let j = 0; j < bank.length; j++) {
      let dot = 0;
      for (let d = 0; d < x.length; d++) dot += x[d] * bank[j][d];
      sims.push([dot, j]);
    }
    sims.sort((a, b) => b[0] - a[0]);
    const votes = new Array(C).fill(0);
    for (let i = 0; i < k; i++) votes[trainL[sims[i][1]]] += Math.exp(sims[i][0] / T);
    const order = [...votes.keys()].sort((a, b) => votes[b] - votes[a] || a - b);
    const rank = order.indexOf(testL[q]);
    if (rank === 0) c1++;
    if (rank < 5) c5++;
  }
  return {
    top1: (100 * c1) / testF.length,
    top5: C >= 5 ? (100 * c5) / testF.length : null,
  };
}

function randomSet(
  r: () => number,
  n: number,
  d: number,
  classes: number,
): { f: number[][]; l: number[] } {
  // class-dependent means so that neighbours mostly agree, plus noise: a realistic mix
  const means = Array.from({ length: classes }, (_, c) => {
    const m = rng(1000 + c);
    return Array.from({ length: d }, () => m() * 2 - 1);
  });
  const f: number[][] = [], l: number[] = [];
  for (let i = 0; i < n; i++) {
    const c = Math.floor(r() * classes);
    l.push(c);
    // float32-representable inputs: JS and libtorch see the same numbers
    f.push(means[c].map((m) => Math.fround(m + 1.6 * (r() * 2 - 1))));
  }
  return { f, l };
}

function toTensors(s: { f: number[][]; l: number[] }): { features: Tensor; labels: Tensor } {
  return {
    features: tensor(s.f),
    labels: tensor(Int32Array.from(s.l), { dtype: "int64" }),
  };
}

Deno.test("knnClassify equals a brute-force weighted k-NN", () => {
  const live = liveTensors();
  const r = rng(42);
  const C = 7;
  const train = randomSet(r, 60, 8, C);
  const test = randomSet(r, 37, 8, C);
  const tr = toTensors(train), te = toTensors(test);
  try {
    const ks = [1, 3, 10, 20, 60];
    for (const T of [0.07, 0.5]) {
      const got = knnClassify(tr, te, { ks, temperature: T, numClasses: C });
      const want = ks.map((k) => ({ k, ...bruteKnn(train.f, train.l, test.f, test.l, k, T, C) }));
      assert.deepEqual(got, want, `T = ${T}`);
      // the data are such that top-5 and top-1 differ (top-5 counts more) for some k
      assert.ok(got.some((x) => x.top5! > x.top1), JSON.stringify(got));
      assert.ok(got.some((x) => x.top1 > 0 && x.top1 < 100), JSON.stringify(got));
      // chunking does not change anything
      for (const chunk of [1, 5, 36, 37, 1000]) {
        assert.deepEqual(knnClassify(tr, te, { ks, temperature: T, numClasses: C, chunk }), got);
      }
    }
    // the default k list, clamped to the bank of 60 with a note
    const notes: string[] = [];
    const dflt = knnClassify(tr, te, { log: (m) => notes.push(m) });
    assert.deepEqual(dflt.map((x) => [x.k, x.requested]), [
      [10, undefined],
      [20, undefined],
      [60, 100],
      [60, 200],
    ]);
    assert.equal(notes.length, 2);
    assert.match(notes[0], /k = 100 exceeds the memory bank \(60 examples\): using k = 60/);
    const b = bruteKnn(train.f, train.l, test.f, test.l, 20, 0.07, C);
    assert.deepEqual({ top1: dflt[1].top1, top5: dflt[1].top5 }, b);
    assert.deepEqual({ top1: dflt[2].top1, top5: dflt[2].top5 }, {
      top1: dflt[3].top1,
      top5: dflt[3].top5,
    });
  } finally {
    for (const t of [tr, te]) {
      t.features.free();
      t.labels.free();
    }
  }
  assert.equal(liveTensors(), live);
});

Deno.test("knnClassify: the exp(sim / T) weighting, worked by hand", () => {
  // query (1, 0); bank: class 0 at sim 1, class 1 at sims 0.8 and 0.6 (unnormalised on purpose)
  const train = {
    features: tensor([[2, 0], [0.8, 0.6], [3, 4]]),
    labels: tensor([0, 1, 1], { dtype: "int64" }),
  };
  const test = { features: tensor([[5, 0]]), labels: tensor([0], { dtype: "int64" }) };
  try {
    // T = 0.07: e^(1/.07) = 1.6e6 > e^(.8/.07) + e^(.6/.07) = 9.2e4 + 5.3e3 → class 0 (right)
    const sharp = knnClassify(train, test, { ks: [1, 3] });
    assert.deepEqual(sharp, [{ k: 1, top1: 100, top5: null }, { k: 3, top1: 100, top5: null }]);
    // T = 1: e^1 = 2.72 < e^0.8 + e^0.6 = 4.05 → class 1 wins with k = 3 (majority-like)
    const flat = knnClassify(train, test, { ks: [1, 3], temperature: 1 });
    assert.deepEqual(flat.map((x) => x.top1), [100, 0]);
    // with 5 or more classes top-5 is reported: class 0 ranks second → counted
    const five = knnClassify(train, test, { ks: [3], temperature: 1, numClasses: 5 });
    assert.deepEqual(five, [{ k: 3, top1: 0, top5: 100 }]);
  } finally {
    for (const t of [train, test]) {
      t.features.free();
      t.labels.free();
    }
  }
});

Deno.test("knnClassify: errors name the problem", () => {
  const f = tensor([[1, 0], [0, 1]]);
  const l = tensor([0, 1], { dtype: "int64" });
  const f3 = tensor([[1, 0, 0]]);
  const l1 = tensor([0], { dtype: "int64" });
  const empty = zeros([0, 2]);
  const emptyL = zeros([0], { dtype: "int64" });
  const neg = tensor([-1, 1], { dtype: "int64" });
  const big = tensor([0, 7], { dtype: "int64" });
  const cases: [() => KnnResult[], RegExp][] = [
    [
      () => knnClassify({ features: empty, labels: emptyL }, { features: f, labels: l }),
      /memory bank .* is empty/,
    ],
    [
      () => knnClassify({ features: f, labels: l }, { features: f3, labels: l1 }),
      /train features have 2 dimensions but test features 3/,
    ],
    [
      () => knnClassify({ features: f, labels: neg }, { features: f, labels: l }),
      /train labels must lie in \[0, 1\].*found -1.*without a label/,
    ],
    [
      () =>
        knnClassify({ features: f, labels: l }, { features: f, labels: big }, { numClasses: 5 }),
      /test labels must lie in \[0, 4\] \(5 classes\), found 7/,
    ],
    [
      () => knnClassify({ features: f, labels: l }, { features: f, labels: l }, { ks: [0] }),
      /positive integer, got 0/,
    ],
    [
      () => knnClassify({ features: f, labels: l }, { features: f, labels: l }, { temperature: 0 }),
      /temperature/,
    ],
    [
      () => knnClassify({ features: f, labels: l1 }, { features: f, labels: l }),
      /train labels must be \[N\] with N = 2/,
    ],
  ];
  try {
    for (const [fn, re] of cases) {
      assert.throws(fn, (e: unknown) => {
        assert.ok(e instanceof EvalError, String(e));
        assert.match((e as Error).message, re);
        return true;
      });
    }
  } finally {
    for (const t of [f, l, f3, l1, empty, emptyL, neg, big]) t.free();
  }
});
