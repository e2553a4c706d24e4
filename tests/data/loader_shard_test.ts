/**
 * The DataLoader's distributed sampling (`shard`, issue 8): disjoint shards that together are
 * the unsharded epoch, batch k of the ranks together = the unsharded batch k of size b·W (rank
 * 0's examples first), reshuffled per epoch from the shared seed, equal batch counts with
 * `dropLast`, and bad shard options rejected.
 */
import assert from "node:assert/strict";
import { DataLoader } from "../../lib/data/mod.ts";
import { SyntheticDataset } from "./_synthetic_dataset.ts";

async function batches(loader: DataLoader, e: number): Promise<number[][]> {
  const out: number[][] = [];
  for await (const b of loader.epoch(e)) {
    out.push([...b.indices]);
    b.free();
  }
  return out;
}

Deno.test("shards: disjoint, per-step union = the unsharded global batch, reshuffled per epoch", async () => {
  using ds = new SyntheticDataset({ n: 27 });
  const B = 3, W = 2;
  await using whole = new DataLoader({ dataset: ds, batchSize: B * W, seed: 5 });
  const ranks = [0, 1].map((rank) =>
    new DataLoader({ dataset: ds, batchSize: B, seed: 5, shard: { rank, world: W } })
  );
  try {
    for (const e of [0, 1]) {
      const global = await batches(whole, e);
      const per = await Promise.all(ranks.map((l) => batches(l, e)));
      assert.equal(global.length, 4, "floor(27 / 6) global batches");
      for (const p of per) assert.equal(p.length, global.length, "same batch count on every rank");
      for (let k = 0; k < global.length; k++) {
        assert.deepEqual([...per[0][k], ...per[1][k]], global[k], `epoch ${e} batch ${k}`);
      }
      const seen = per.map((p) => new Set(p.flat()));
      for (const i of seen[0]) assert.ok(!seen[1].has(i), `index ${i} on both ranks`);
      assert.equal(ranks[0].batchesPerEpoch, 4);
    }
    assert.notDeepEqual(ranks[0].order(0), ranks[0].order(1), "reshuffled per epoch");
    // without dropLast the tail is split the same way: 27 = 4·6 + 3 → rank 0 gets the last 3
    const tail = [0, 1].map((rank) =>
      new DataLoader({
        dataset: ds,
        batchSize: B,
        seed: 5,
        dropLast: false,
        shard: { rank, world: W },
      })
    );
    for (const l of tail) await l.ready();
    assert.deepEqual(tail.map((l) => l.order(0).length), [15, 12]);
    for (const l of tail) await l.close();
  } finally {
    for (const l of ranks) await l.close();
  }
});

Deno.test("shard options are checked", () => {
  using ds = new SyntheticDataset({ n: 4 });
  assert.throws(
    () => new DataLoader({ dataset: ds, batchSize: 1, shard: { rank: 2, world: 2 } }),
    /shard\.rank 2 is outside 0…1/,
  );
  assert.throws(
    () => new DataLoader({ dataset: ds, batchSize: 1, shard: { rank: 0, world: 0 } }),
    /shard\.world must be an integer ≥ 1/,
  );
});
