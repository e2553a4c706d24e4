/**
 * Segmentation metrics against hand computations: a confusion matrix accumulated over batches
 * with ignore pixels and an absent class, per-class IoU / mIoU / pixel accuracy written out by
 * hand, out-of-range labels, and no leaked tensors.
 */
import assert from "node:assert/strict";
import { fromTypedArray, liveTensors, scope, type Tensor, tensor } from "../../mod.ts";
import { EvalError } from "../../lib/eval/backbone.ts";
import { checkLabels, ConfusionMatrix, LabelError } from "../../lib/eval/metrics.ts";

const u8 = (v: number[], shape: number[]): Tensor => fromTypedArray(Uint8Array.from(v), shape);
const i64 = (v: number[], shape: number[]): Tensor =>
  scope(() => tensor(v, { dtype: "int64" }).reshape(shape));

function close(a: number, b: number, eps = 1e-12): void {
  assert.ok(Math.abs(a - b) <= eps, `${a} ≠ ${b}`);
}

Deno.test("ConfusionMatrix: a hand-made confusion with ignore pixels and an absent class", () => {
  const live = liveTensors();
  // 4 classes: 0 background, 1, 2, and 3 which appears in neither targets nor predictions.
  // batch 1 (2×4 pixels):                 batch 2 (1×6 pixels):
  //   target 0 0 1 1 / 0 2 255 2             target 0 1 1 255 255 2
  //   pred   0 1 1 1 / 0 2 3?  0             pred   0 1 0 2   0   2
  // the 255 target pixels are skipped whatever their prediction (3 there is not counted)
  const t1 = u8([0, 0, 1, 1, 0, 2, 255, 2], [2, 4]);
  const p1 = i64([0, 1, 1, 1, 0, 2, 3, 0], [2, 4]);
  const t2 = u8([0, 1, 1, 255, 255, 2], [1, 6]);
  const p2 = i64([0, 1, 0, 2, 0, 2], [6]); // another shape, same number of elements
  const cm = new ConfusionMatrix(4);
  cm.update(p1, t1);
  cm.update(p2, t2);
  t1.free(), p1.free(), t2.free(), p2.free();

  // counted pairs (target, pred):
  //  b1: (0,0) (0,1) (1,1) (1,1) (0,0) (2,2) (2,0)      b2: (0,0) (1,1) (1,0) (2,2)
  //  target 0: (0,0) (0,1) (0,0) | (0,0)  → pred 0 ×3, pred 1 ×1
  //  target 1: (1,1) (1,1) | (1,1) (1,0)    → pred 0 ×1, pred 1 ×3
  //  target 2: (2,2) (2,0) | (2,2)          → pred 0 ×1, pred 2 ×2
  assert.deepEqual(cm.counts(), [
    [3, 1, 0, 0],
    [1, 3, 0, 0],
    [1, 0, 2, 0],
    [0, 0, 0, 0],
  ]);
  assert.equal(cm.pixels, 11);
  assert.equal(cm.ignored, 3);

  // IoU by hand: TP / (TP + FP + FN)
  //  class 0: TP 3, FN 1 (0→1), FP 2 (1→0, 2→0)  → 3/6
  //  class 1: TP 3, FN 1 (1→0), FP 1 (0→1)       → 3/5
  //  class 2: TP 2, FN 1 (2→0), FP 0             → 2/3
  //  class 3: absent everywhere                   → NaN, left out of the mean
  const iou = cm.iou();
  close(iou[0], 3 / 6);
  close(iou[1], 3 / 5);
  close(iou[2], 2 / 3);
  assert.ok(Number.isNaN(iou[3]));
  const m = cm.compute(["bg", "a", "b", "c"]);
  close(m.miou, (3 / 6 + 3 / 5 + 2 / 3) / 3);
  close(m.pixelAccuracy, (3 + 3 + 2) / 11);
  assert.equal(m.classesInMean, 3);
  assert.deepEqual(m.perClass.map((c) => c.class), ["bg", "a", "b", "c"]);
  assert.equal(m.perClass[3].iou, null);
  assert.deepEqual(m.perClass.map((c) => c.pixels), [4, 4, 3, 0]);
  assert.equal(m.pixels, 11);
  assert.equal(m.ignored, 3);
  assert.equal(liveTensors(), live);
});

Deno.test("ConfusionMatrix: a class predicted but never in the targets has IoU 0, not NaN", () => {
  const cm = ConfusionMatrix.fromCounts([
    [5, 0, 1],
    [0, 2, 0],
    [0, 0, 0],
  ]);
  const m = cm.compute();
  // class 2: TP 0, FP 1, FN 0 → 0 (present in the predictions, so it counts in the mean)
  assert.equal(m.perClass[2].iou, 0);
  close(m.miou, (5 / 6 + 1 + 0) / 3);
  close(m.pixelAccuracy, 7 / 8);
  assert.deepEqual(m.perClass.map((c) => c.class), ["0", "1", "2"]);
  // merge adds counts; reset clears them
  const twice = ConfusionMatrix.fromCounts(cm.counts()).merge(cm);
  assert.deepEqual(twice.counts()[0], [10, 0, 2]);
  twice.reset();
  assert.equal(twice.pixels, 0);
  assert.ok(Number.isNaN(twice.compute().miou));
  assert.ok(Number.isNaN(twice.pixelAccuracy()));
});

Deno.test("ConfusionMatrix: agrees with a brute-force count on random labels", () => {
  const live = liveTensors();
  const K = 5;
  const n = 4000;
  let s = 12345;
  const rnd = () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
  const tv = Array.from({ length: n }, () => (rnd() < 0.1 ? 255 : Math.floor(rnd() * K)));
  const pv = Array.from({ length: n }, () => Math.floor(rnd() * K));
  const cm = new ConfusionMatrix(K);
  const t = u8(tv, [n]);
  const p = i64(pv, [n]);
  cm.update(p, t);
  t.free(), p.free();
  const brute = Array.from({ length: K }, () => new Array(K).fill(0));
  tv.forEach((tt, i) => {
    if (tt !== 255) brute[tt][pv[i]]++;
  });
  assert.deepEqual(cm.counts(), brute);
  assert.equal(cm.ignored, tv.filter((v) => v === 255).length);
  assert.equal(liveTensors(), live);
});

Deno.test("labels outside the classes (other than 255) are an error naming the value and file", () => {
  const live = liveTensors();
  const cm = new ConfusionMatrix(3);
  const t = u8([0, 1, 7, 255, 7, 2], [2, 3]);
  const p = i64([0, 1, 2, 0, 0, 2], [2, 3]);
  assert.throws(
    () => cm.update(p, t, "masks/img_001.png"),
    (e: unknown) => {
      assert.ok(e instanceof LabelError);
      assert.ok(e instanceof EvalError); // scripts report it as bad input (exit 2)
      assert.equal(e.value, 7);
      assert.equal(e.source, "masks/img_001.png");
      assert.match(e.message, /masks\/img_001\.png/);
      assert.match(e.message, /label 7/);
      assert.match(e.message, /0\.\.2/);
      assert.match(e.message, /2 pixels/);
      return true;
    },
  );
  assert.equal(cm.pixels, 0); // nothing counted
  // 255 alone is fine; checkLabels without a file still names the value
  const ok = u8([0, 255, 2], [3]);
  checkLabels(ok, 3);
  const neg = tensor([0, -1, 1], { dtype: "int64" });
  assert.throws(() => checkLabels(neg, 3), /label -1 is outside the class range 0\.\.2/);
  // another ignore index: 255 is then a label like any other
  assert.throws(() => checkLabels(ok, 3, 254, "m.png"), /m\.png: label 255/);
  // predictions out of range, shape mismatches and float predictions are errors too
  const bigPred = i64([0, 1, 3, 0, 0, 2], [2, 3]);
  const t3 = u8([0, 1, 2, 255, 0, 2], [2, 3]);
  assert.throws(() => cm.update(bigPred, t3), /predicted class 3 is outside 0\.\.2/);
  const short = i64([0, 1], [2]);
  assert.throws(() => cm.update(short, t3), /pred has 2 elements/);
  const fl = tensor([0, 1, 2, 0, 0, 2]);
  assert.throws(() => cm.update(fl, t3), /integer class indices/);
  for (const x of [t, p, ok, neg, bigPred, t3, short, fl]) x.free();
  assert.throws(() => new ConfusionMatrix(0), /numClasses/);
  assert.equal(liveTensors(), live);
});
