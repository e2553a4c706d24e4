/**
 * The data loader: per-epoch seeded order independent of prefetch and workers, dropLast and
 * the short last batch, skipping unreadable examples (counter, warning naming the file, batches
 * filled from the following examples), memory (early break, close, transform failures), the
 * worker path byte-equal to the main-thread path, and the handle-transfer helpers it rests on
 * (`releaseHandle` / `Tensor.adopt`).
 */
import assert from "node:assert/strict";
import {
  DataLoader,
  defaultCollate,
  epochSeed,
  exampleSeed,
  freeAll,
  fromTypedArray,
  liveHandles,
  liveTensors,
  ones,
  type Sample,
  SampleBatch,
  scope,
  type SourceSpec,
  Tensor,
  TorchError,
} from "../../mod.ts";
import { pixel, type SyntheticOptions } from "./_synthetic_dataset.ts";
import { SyntheticDataset } from "./_synthetic_dataset.ts";

const MODULE = new URL("./_synthetic_dataset.ts", import.meta.url);

function spec(factory: string, options: SyntheticOptions): SourceSpec {
  return { module: MODULE, factory, options };
}

/** Every batch of one epoch as comparable data: indices, names and the bytes of each tensor. */
interface Seen {
  indices: number[];
  names: string[];
  images: number[];
  labels: number[];
  masks: number[];
  shape: number[];
}

async function collect(loader: DataLoader, e: number): Promise<Seen[]> {
  const out: Seen[] = [];
  for await (const b of loader.epoch(e)) {
    using _ = b;
    out.push({
      indices: b.indices,
      names: b.names,
      images: Array.from(b.images.toTypedArray() as Float32Array),
      labels: Array.from(b.labels!.toTypedArray() as BigInt64Array, Number),
      masks: Array.from(b.masks!.toTypedArray() as Uint8Array),
      shape: b.images.shape,
    });
  }
  return out;
}

Deno.test("releaseHandle / Tensor.adopt move ownership without freeing", () => {
  const base = [liveTensors(), liveHandles()];
  const t = fromTypedArray(new Float32Array([1, 2, 3]), [3]);
  const h = t.releaseHandle();
  assert.equal(t.isFreed, true);
  assert.equal(liveTensors(), base[0] + 1, "the native tensor lives on");
  assert.equal(liveHandles(), base[1], "no JS owner");
  t.free(); // a no-op: it no longer owns anything
  assert.throws(() => t.releaseHandle(), TorchError);
  const u = Tensor.adopt(h);
  assert.deepEqual(u.toArray(), [1, 2, 3]);
  assert.equal(liveHandles(), base[1] + 1);
  u.free();
  assert.deepEqual([liveTensors(), liveHandles()], base);
  // a freed or bogus handle is refused
  assert.throws(() => Tensor.adopt(h), /freed/);
  assert.throws(() => Tensor.adopt(0), TorchError);
  assert.throws(() => Tensor.adopt(1.5), TorchError);
  // an adopted tensor joins the scope it is adopted in
  const v = ones([2]);
  const hv = v.releaseHandle();
  scope(() => void Tensor.adopt(hv));
  assert.deepEqual([liveTensors(), liveHandles()], base);
});

Deno.test("seeds: order per (seed, epoch), a permutation, reproducible", async () => {
  const ds = new SyntheticDataset({ n: 50 });
  await using a = new DataLoader({ dataset: ds, batchSize: 8, seed: 7 });
  await using b = new DataLoader({ dataset: ds, batchSize: 3, seed: 7, prefetch: 5 });
  await using c = new DataLoader({ dataset: ds, batchSize: 8, seed: 8 });
  await a.ready();
  await b.ready();
  await c.ready();
  const o0 = a.order(0);
  assert.deepEqual([...o0].sort((x, y) => x - y), Array.from({ length: 50 }, (_, i) => i));
  assert.deepEqual(b.order(0), o0, "the order depends on (seed, epoch) only");
  assert.notDeepEqual(a.order(1), o0, "epochs differ");
  assert.notDeepEqual(c.order(0), o0, "seeds differ");
  assert.equal(epochSeed(7, 3), epochSeed(7, 3));
  assert.notEqual(epochSeed(7, 3), epochSeed(7, 4));
  assert.ok(Number.isSafeInteger(exampleSeed(epochSeed(7, 3), 12)));
  assert.throws(() => epochSeed(-1, 0), RangeError);
  await using d = new DataLoader({ dataset: ds, batchSize: 8, shuffle: false });
  await d.ready();
  assert.deepEqual(d.order(5), Array.from({ length: 50 }, (_, i) => i));
});

Deno.test("batches follow the epoch order, independent of prefetch", async () => {
  const ds = new SyntheticDataset({ n: 23 });
  const runs: Seen[][] = [];
  for (const prefetch of [1, 2, 5]) {
    await using loader = new DataLoader({ dataset: ds, batchSize: 5, seed: 3, prefetch });
    await loader.ready();
    const seen = await collect(loader, 2);
    const order = loader.order(2);
    assert.deepEqual(
      seen.map((s) => s.indices),
      [0, 1, 2, 3].map((k) => order.slice(5 * k, 5 * k + 5)),
    );
    runs.push(seen);
  }
  assert.deepEqual(runs[1], runs[0]);
  assert.deepEqual(runs[2], runs[0]);
  // the default collate: images [B,3,H,W] (the examples' own pixels), labels int64, masks
  const first = runs[0][0];
  assert.deepEqual(first.shape, [5, 3, 4, 4]);
  assert.equal(first.images[0], pixel(first.indices[0], 0, 0, 0));
  assert.equal(first.images[16 * 3 + 5], pixel(first.indices[1], 0, 1, 1));
  assert.deepEqual(first.labels, first.indices.map((i) => i % 10));
  assert.deepEqual(first.names, first.indices.map((i) => `synthetic/${i}.png`));
});

Deno.test("epoch(e, {start}) resumes after any batch with the batches that would have followed", async () => {
  // unreadable examples make batches span chunks: resuming must still line up
  const ds = new SyntheticDataset({ n: 29, bad: [3, 7, 8, 20] });
  const warn = () => {};
  await using loader = new DataLoader({ dataset: ds, batchSize: 4, seed: 5, warn });
  await loader.ready();
  const full: number[][] = [];
  const positions: number[] = [];
  for await (const b of loader.epoch(1)) {
    full.push(b.indices);
    positions.push(loader.stats.nextPosition);
    b.free();
  }
  assert.ok(full.length >= 5);
  for (let k = 0; k < full.length; k++) {
    const rest: number[][] = [];
    for await (const b of loader.epoch(1, { start: positions[k] })) {
      rest.push(b.indices);
      b.free();
    }
    assert.deepEqual(rest, full.slice(k + 1), `resuming after batch ${k}`);
  }
  await assert.rejects(async () => {
    for await (const _ of loader.epoch(1, { start: 1000 })) { /* never */ }
  }, /outside the epoch's order/);
});

Deno.test("dropLast drops the short last batch; without it the last batch is short", async () => {
  const ds = new SyntheticDataset({ n: 10 });
  const base = liveTensors();
  {
    await using loader = new DataLoader({ dataset: ds, batchSize: 4, shuffle: false });
    const seen = await collect(loader, 0);
    assert.deepEqual(seen.map((s) => s.indices), [[0, 1, 2, 3], [4, 5, 6, 7]]);
    assert.equal(loader.batchesPerEpoch, 2);
    const st = loader.stats;
    assert.deepEqual([st.batches, st.examples, st.dropped, st.skipped, st.complete], [
      2,
      8,
      2,
      0,
      true,
    ]);
  }
  {
    await using loader = new DataLoader({
      dataset: ds,
      batchSize: 4,
      shuffle: false,
      dropLast: false,
    });
    const seen = await collect(loader, 0);
    assert.deepEqual(seen.map((s) => s.indices), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]);
    assert.deepEqual(seen[2].shape, [2, 3, 4, 4]);
    assert.equal(loader.batchesPerEpoch, 3);
    assert.equal(loader.stats.dropped, 0);
  }
  {
    // an exact multiple: nothing to drop
    await using loader = new DataLoader({ dataset: new SyntheticDataset({ n: 8 }), batchSize: 4 });
    assert.equal((await collect(loader, 0)).length, 2);
    assert.equal(loader.stats.dropped, 0);
  }
  assert.equal(liveTensors(), base);
});

Deno.test("unreadable examples are skipped, warned about by name, counted; batches refilled", async (t) => {
  const base = liveTensors();
  for (const workers of [0, 1]) {
    await t.step(`workers ${workers}`, async () => {
      const warnings: string[] = [];
      await using loader = new DataLoader({
        source: spec("datasetOnly", { n: 12, bad: [1, 5, 6] }),
        batchSize: 4,
        shuffle: false,
        dropLast: false,
        workers,
        warn: (m) => warnings.push(m),
      });
      const seen = await collect(loader, 0);
      // batch 0 takes 4 and 7 from the next chunk; the epoch's end has the rest
      assert.deepEqual(seen.map((s) => s.indices), [[0, 2, 3, 4], [7, 8, 9, 10], [11]]);
      const st = loader.stats;
      assert.equal(st.skipped, 3);
      assert.deepEqual(st.skippedNames, ["synthetic/1.png", "synthetic/5.png", "synthetic/6.png"]);
      assert.equal(st.examples, 9);
      assert.equal(st.complete, true);
      assert.equal(warnings.length, 3);
      assert.match(warnings[0], /example 1 \(synthetic\/1\.png\).*corrupt or truncated PNG/);
      // the next epoch is unaffected by the skips of this one
      await collect(loader, 1);
      assert.equal(loader.stats.epoch, 1);
      assert.equal(loader.stats.skipped, 3);
    });
  }
  // with dropLast, a skip leaves the epoch's end short
  const warnings: string[] = [];
  await using loader = new DataLoader({
    source: spec("datasetOnly", { n: 12, bad: [0] }),
    batchSize: 4,
    shuffle: false,
    warn: (m) => warnings.push(m),
  });
  const seen = await collect(loader, 0);
  assert.deepEqual(seen.map((s) => s.indices), [[1, 2, 3, 4], [5, 6, 7, 8]]);
  assert.deepEqual([loader.stats.dropped, loader.stats.skipped], [3, 1]);
  // every example unreadable: an empty epoch, never an exception
  await using all = new DataLoader({
    source: spec("datasetOnly", { n: 5, bad: [0, 1, 2, 3, 4] }),
    batchSize: 2,
    warn: () => {},
  });
  assert.deepEqual(await collect(all, 0), []);
  assert.equal(all.stats.skipped, 5);
  await all.close();
  await loader.close();
  assert.equal(liveTensors(), base);
});

Deno.test("the default warning goes to stderr", async () => {
  const lines: string[] = [];
  const orig = console.error;
  console.error = (...args: unknown[]) => void lines.push(args.join(" "));
  try {
    await using loader = new DataLoader({
      dataset: new SyntheticDataset({ n: 3, bad: [2] }),
      batchSize: 2,
      shuffle: false,
    });
    await collect(loader, 0);
  } finally {
    console.error = orig;
  }
  assert.equal(lines.length, 1);
  assert.match(lines[0], /skipping unreadable example 2 \(synthetic\/2\.png\)/);
});

Deno.test("workers 1 and 2 give the main thread's batches, byte for byte", async () => {
  const base = liveTensors();
  const options = { n: 30, bad: [4, 17], size: 5 };
  const results: Seen[][][] = [];
  for (const [workers, prefetch] of [[0, 2], [1, 2], [2, 3]]) {
    await using loader = new DataLoader({
      source: spec("noisySource", options),
      batchSize: 4,
      seed: 11,
      workers,
      prefetch,
      warn: () => {},
    });
    results.push([await collect(loader, 0), await collect(loader, 1)]);
    assert.equal(loader.stats.skipped, 2);
  }
  assert.equal(results[0][0].length, 7);
  assert.notDeepEqual(results[0][0], results[0][1], "epochs differ");
  // the transform really ran: noise in [0, 1) on top of the encoded pixels
  const b = results[0][0][0];
  assert.ok(b.images.some((v) => v !== Math.floor(v)));
  assert.deepEqual(results[1], results[0]);
  assert.deepEqual(results[2], results[0]);
  assert.equal(liveTensors(), base);
});

Deno.test("an early break frees the prefetched batches (main thread and workers)", async (t) => {
  for (const workers of [0, 1, 2]) {
    await t.step(`workers ${workers}`, async () => {
      const base = liveTensors();
      const loader = new DataLoader({
        source: spec("noisySource", { n: 40, delayMs: workers ? 2 : 0 }),
        batchSize: 4,
        workers,
        prefetch: 4,
      });
      let n = 0;
      for await (const batch of loader.epoch(0)) {
        batch.free();
        if (++n === 2) break;
      }
      assert.equal(liveTensors(), base, "nothing left after the break");
      assert.equal(loader.stats.complete, false);
      assert.equal(loader.stats.batches, 2);
      // the loader still works after a break
      n = 0;
      for await (const batch of loader.epoch(1)) {
        batch.free();
        n++;
      }
      assert.equal(n, 10);
      await loader.close();
      assert.equal(liveTensors(), base);
    });
  }
});

Deno.test("close() mid-epoch frees everything, disposes the worker's source, ends the iteration", async (t) => {
  for (const workers of [0, 1]) {
    await t.step(`workers ${workers}`, async () => {
      const base = liveTensors();
      const loader = new DataLoader({
        source: spec("noisySource", { n: 40, holdTensor: true }),
        batchSize: 4,
        workers,
        prefetch: 3,
      });
      const it = loader.epoch(0);
      const first = await it.next();
      assert.ok(first.value instanceof SampleBatch);
      assert.ok(liveTensors() > base + 3);
      await loader.close(); // the consumer still holds `first`
      first.value.free();
      assert.equal(liveTensors(), base, "prefetched batches, worker items and source freed");
      await assert.rejects(() => it.next(), /closed/);
      await loader.close(); // idempotent
      await assert.rejects(() => loader.epoch(2).next(), /closed/);
    });
  }
});

Deno.test("close() does not hang on a data set whose get() never settles", async (t) => {
  for (const workers of [0, 1]) {
    await t.step(`workers ${workers}`, async () => {
      const base = liveTensors();
      const warnings: string[] = [];
      const loader = new DataLoader({
        source: spec("datasetOnly", { n: 12, hangAt: 4 }),
        batchSize: 4,
        shuffle: false,
        workers,
        closeTimeoutMs: 200,
        warn: (m) => warnings.push(m),
      });
      const it = loader.epoch(0);
      const first = await it.next();
      (first.value as SampleBatch).free();
      const t0 = performance.now();
      await loader.close();
      assert.ok(performance.now() - t0 < 2000);
      assert.match(warnings[0], /did not arrive within 200 ms/);
      if (workers) assert.match(warnings[1], /worker 0 did not finish within 200 ms; terminated/);
      assert.equal(liveTensors(), base);
    });
  }
});

Deno.test("a transform that throws ends the iteration with its error, leaking nothing", async (t) => {
  for (const workers of [0, 1]) {
    await t.step(`workers ${workers}`, async () => {
      const base = liveTensors();
      await using loader = new DataLoader({
        source: spec("noisySource", { n: 20, throwAt: 9 }),
        batchSize: 4,
        shuffle: false,
        workers,
      });
      const got: number[][] = [];
      await assert.rejects(async () => {
        for await (const b of loader.epoch(0)) {
          got.push(b.indices);
          b.free();
        }
      }, /transform failed on example 9 \(synthetic\/9\.png\): synthetic transform failure/);
      assert.deepEqual(got, [[0, 1, 2, 3], [4, 5, 6, 7]]);
      assert.equal(liveTensors(), base);
    });
  }
  // a collate error (images of two sizes) likewise
  const base = liveTensors();
  await using loader = new DataLoader({
    dataset: new SyntheticDataset({ n: 8, odd: [5] }),
    batchSize: 4,
    shuffle: false,
  });
  await assert.rejects(() => collect(loader, 0), /images differ in shape.*synthetic\/5\.png/);
  assert.equal(liveTensors(), base);
});

Deno.test("custom transform and collate; the generic default collate", async () => {
  const base = liveTensors();
  const ds = new SyntheticDataset({ n: 6 });
  await using loader = new DataLoader({
    dataset: ds,
    batchSize: 3,
    shuffle: false,
    transform: (s: Sample, i: number) => ({
      x: s.image.sum(),
      i,
      tag: `t${i}`,
      pair: [s.label!, 0.5],
    }),
  });
  const batches = [];
  for await (const b of loader.epoch(0)) {
    batches.push({
      x: b.x.toArray(),
      i: b.i.toArray(),
      dtype: b.i.dtype,
      tag: b.tag,
      pair: [b.pair[0].dtype, b.pair[1].dtype, b.pair[1].toArray()],
    });
    freeAll(b);
  }
  assert.equal(batches.length, 2);
  assert.deepEqual(batches[1].i, [3, 4, 5]);
  assert.equal(batches[1].dtype, "int64");
  assert.deepEqual(batches[1].tag, ["t3", "t4", "t5"]);
  assert.deepEqual(batches[1].pair, ["int64", "float32", [0.5, 0.5, 0.5]]);
  assert.equal(liveTensors(), base, "the samples' images were freed after the transform");
  // a collate returning plain data: the items' tensors are freed by the loader
  await using sums = new DataLoader({
    dataset: ds,
    batchSize: 2,
    shuffle: false,
    collate: (items: Sample[], indices) => ({ n: items.length, indices }),
  });
  const got = [];
  for await (const b of sums.epoch(0)) got.push(b.indices);
  assert.deepEqual(got, [[0, 1], [2, 3], [4, 5]]);
  assert.equal(liveTensors(), base);
  assert.throws(() => defaultCollate([{ a: 1 }, { a: "x" }], [0, 1]), /mixed kinds/);
});

Deno.test("bad options and misuse are clear errors", async () => {
  const ds = new SyntheticDataset({ n: 4 });
  assert.throws(() => new DataLoader({ dataset: ds, batchSize: 0 }), /batchSize/);
  assert.throws(() => new DataLoader({ dataset: ds, batchSize: 2, workers: 1 }), /source/);
  assert.throws(() => new DataLoader({ batchSize: 2 }), /exactly one/);
  assert.throws(() => new DataLoader({ dataset: ds, batchSize: 2, prefetch: 0 }), /prefetch/);
  await using missing = new DataLoader({
    source: { module: MODULE, factory: "nope" },
    batchSize: 2,
    workers: 1,
  });
  await assert.rejects(() => missing.ready(), /no function export "nope".*datasetOnly/);
  // one epoch at a time
  await using loader = new DataLoader({ dataset: ds, batchSize: 2 });
  const a = loader.epoch(0);
  const first = await a.next();
  (first.value as SampleBatch).free();
  await assert.rejects(() => loader.epoch(1).next(), /still being iterated/);
  await a.return();
  assert.equal(loader.stats.complete, false);
});
