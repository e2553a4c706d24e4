/**
 * The multi-crop pipeline: per-example views and points through the data loader, batched in
 * the layout the ViT takes, deterministic and identical with and without workers.
 */
import assert from "node:assert/strict";
import { DataLoader, liveTensors, scope } from "../../mod.ts";
import {
  collateMultiCrop,
  type MultiCropBatch,
  type MultiCropItem,
  type MultiCropOptions,
  viewKind,
} from "../../lib/densedino/mod.ts";

const START = liveTensors();
const SOURCE = new URL("./_multicrop_source.ts", import.meta.url);
const VIEWS: MultiCropOptions = {
  globalCrops: 2,
  globalSize: 32,
  localCrops: 3,
  localSize: 16,
  numRef: 4,
};

function loader(workers: number, n = 6, batchSize = 3) {
  return new DataLoader<MultiCropItem, MultiCropBatch>({
    source: { module: SOURCE, factory: "multiCropSource", options: { n, views: VIEWS } },
    batchSize,
    seed: 11,
    workers,
    collate: collateMultiCrop,
  });
}

async function epochBytes(workers: number): Promise<Uint8Array[][]> {
  await using l = loader(workers);
  const out: Uint8Array[][] = [];
  for await (const b of l.epoch(0)) {
    out.push(
      [...b.views, ...b.teacherPoints, ...b.studentPoints, b.labels!].map((t) => t.toBytes()),
    );
    b.free();
  }
  return out;
}

Deno.test("multi-crop batches have the ViT's layout: views by index, points per pair", async () => {
  await using l = loader(0);
  let batches = 0;
  for await (const b of l.epoch(0)) {
    batches++;
    const G = 2, N = 5, M = 4, B = 3;
    assert.equal(b.views.length, N);
    b.views.forEach((v, k) => assert.deepEqual(v.shape, [B, 3, k < G ? 32 : 16, k < G ? 32 : 16]));
    assert.equal(b.teacherPoints.length, G);
    for (const t of b.teacherPoints) assert.deepEqual(t.shape, [B, N * M, 2]);
    assert.equal(b.studentPoints.length, N);
    for (const s of b.studentPoints) assert.deepEqual(s.shape, [B, G * M, 2]);
    assert.deepEqual(b.labels!.toArray(), b.indices.map((i) => i % 2));
    // teacher row j·M + m of view i and student row i·M + m of view j hold the same image point
    const plan = b.plans[0];
    const t01 = scope(() => b.teacherPoints[0].select(0, 0).toArray()) as number[][];
    const s10 = scope(() => b.studentPoints[1].select(0, 0).toArray()) as number[][];
    for (let m = 0; m < M; m++) {
      assert.deepEqual(t01[1 * M + m], plan.teacherPoints[0][1][m]);
      assert.deepEqual(s10[0 * M + m], plan.studentPoints[1][0][m]);
    }
    // views are normalised: values well outside [0, 1] occur, all finite
    scope(() => {
      const v = b.views[0];
      assert.ok(v.isfinite().all().item() === 1);
      assert.ok(v.amin().item() < -0.5 || v.amax().item() > 1.5);
    });
    b.free();
  }
  assert.equal(batches, 2);
});

Deno.test("multi-crop: the same seed gives the same bytes, with or without a worker", async () => {
  const a = await epochBytes(0);
  const b = await epochBytes(0);
  const c = await epochBytes(1);
  assert.deepEqual(a, b);
  assert.deepEqual(a, c);
});

Deno.test("view kinds: global1, global2, then local for every other view", () => {
  assert.deepEqual([0, 1, 2, 3, 9].map(viewKind), [
    "global1",
    "global2",
    "local",
    "local",
    "local",
  ]);
});

Deno.test("an empty multi-crop batch is an error", () => {
  assert.throws(() => collateMultiCrop([], []), /empty batch/);
});

Deno.test("multi-crop tests leave no live tensors", () => {
  assert.equal(liveTensors(), START);
});
