/**
 * fashion-scenes: determinism byte for byte, the on-disk cache (hit, invalidation, corruption),
 * masks that agree with the drawn pixels, labels recounted from the masks, item counts and
 * sizes within the options, contrast, the ignore band, the background pool, option validation
 * and the preview.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  decodePng,
  FASHION_SCENES_MASK_CLASSES,
  FashionScenes,
  type FashionScenesOptions,
  generateFashionScenes,
  liveTensors,
  loadFashionMNIST,
  resolveSceneOptions,
  saveScenePreview,
  type SceneArrays,
} from "../../mod.ts";

const N = 64;
const S = 96;
const base: FashionScenesOptions = { count: N, size: S, seed: 7, quiet: true, cacheDir: null };

/** Live tensors when this file was loaded: every test leaves the count where it found it. */
const LIVE_AT_START = liveTensors();

function leakCheck(name: string, fn: () => Promise<void> | void): void {
  Deno.test(name, async () => {
    const before = liveTensors();
    await fn();
    assert.equal(liveTensors(), before, "tensors leaked");
  });
}

function sameArrays(a: SceneArrays, b: SceneArrays, what: string): void {
  assert.deepEqual(a.labels, b.labels, `${what}: labels`);
  assert.ok(Buffer.compare(a.images, b.images) === 0, `${what}: images`);
  assert.ok(Buffer.compare(a.masks, b.masks) === 0, `${what}: masks`);
  assert.deepEqual(a.items, b.items, `${what}: items`);
}

const setP = FashionScenes.open(base);

leakCheck(
  "same options and seed give identical bytes; scene i does not depend on count",
  async () => {
    const a = await setP;
    const b = await generateFashionScenes(base);
    sameArrays(a.arrays, b, "regenerated");
    const half = await generateFashionScenes({ ...base, count: N / 2 });
    const n = (N / 2) * S * S;
    assert.ok(Buffer.compare(half.images, a.arrays.images.subarray(0, 3 * n)) === 0);
    assert.ok(Buffer.compare(half.masks, a.arrays.masks.subarray(0, n)) === 0);
    const other = await generateFashionScenes({ ...base, count: 4, seed: 8 });
    assert.notDeepEqual(other.images, a.arrays.images.subarray(0, 4 * 3 * S * S));
    const val = await generateFashionScenes({ ...base, count: 4, split: "val" });
    assert.notDeepEqual(val.images, a.arrays.images.subarray(0, 4 * 3 * S * S));
  },
);

leakCheck(
  "get(i) and batch(): image [3, S, S] float in [0, 1], mask [S, S] uint8, label",
  async () => {
    const ds = await setP;
    assert.equal(ds.length, N);
    assert.equal(ds.classes.length, 10);
    assert.equal(FASHION_SCENES_MASK_CLASSES[0], "background");
    const s = await ds.get(5);
    assert.deepEqual(s.image.shape, [3, S, S]);
    assert.equal(s.image.dtype, "float32");
    assert.deepEqual(s.mask!.shape, [S, S]);
    assert.equal(s.mask!.dtype, "uint8");
    assert.equal(s.label, ds.labels[5]);
    assert.equal(s.name, "fashion-scenes/train/5");
    const px = s.image.toTypedArray() as Float32Array;
    const raw = ds.imageBytes(5);
    for (let i = 0; i < px.length; i += 97) assert.equal(px[i], Math.fround(raw[i] / 255));
    assert.deepEqual(s.mask!.toTypedArray(), ds.maskBytes(5));
    s.image.free();
    s.mask!.free();
    const b = ds.batch([0, 5, 9]);
    assert.deepEqual(b.images.shape, [3, 3, S, S]);
    assert.deepEqual(b.masks.shape, [3, S, S]);
    assert.deepEqual(b.labels, [ds.labels[0], ds.labels[5], ds.labels[9]]);
    b.images.free();
    b.masks.free();
    await assert.rejects(() => ds.get(N), RangeError);
  },
);

leakCheck("masks agree with the pixels: background where 0, item colours where k > 0", async () => {
  const ds = await setP;
  let itemPx = 0, itemDiff = 0, distinctPx = 0;
  for (let i = 0; i < N; i++) {
    const bgT = await ds.background(i);
    const bg = bgT.toTypedArray() as Uint8Array;
    bgT.free();
    const img = ds.imageBytes(i);
    const mask = ds.maskBytes(i);
    const items = ds.items(i);
    const colorOf = new Map(items.map((it) => [it.label + 1, it.color]));
    for (let p = 0; p < S * S; p++) {
      const k = mask[p];
      const d = [0, 1, 2].map((c) => Math.abs(img[c * S * S + p] - bg[c * S * S + p]));
      if (k === 0) {
        assert.deepEqual(d, [0, 0, 0], `scene ${i} pixel ${p}: mask 0 but not the background`);
        continue;
      }
      assert.ok(k >= 1 && k <= 10, `scene ${i}: mask value ${k}`);
      const col = colorOf.get(k);
      assert.ok(col, `scene ${i}: mask class ${k} is not one of its items`);
      // the item's pixels are its tint times a shading factor in [0.6, 1]
      for (let c = 0; c < 3; c++) {
        const v = img[c * S * S + p] / 255;
        assert.ok(
          v <= col[c] + 0.6 / 255 && v >= 0.6 * col[c] - 0.6 / 255,
          `scene ${i} pixel ${p} channel ${c}: ${v} outside the tint ${col[c]}`,
        );
      }
      itemPx++;
      itemDiff += (d[0] + d[1] + d[2]) / 3 / 255;
      if (d[0] + d[1] + d[2] > 0) distinctPx++;
    }
  }
  // every item pixel differs from the background behind it (all but a vanishing few)
  assert.ok(distinctPx / itemPx > 0.999, `${itemPx - distinctPx} item pixels equal the background`);
  // contrast: items stand out from the background on average
  assert.ok(itemDiff / itemPx > 0.15, `mean |item − background| ${itemDiff / itemPx}`);
});

leakCheck(
  "label = the class with the most visible pixels; items within the option ranges",
  async () => {
    const ds = await setP;
    const o = ds.options;
    const test = await loadFashionMNIST("train");
    const hist = new Array(5).fill(0);
    let salientWins = 0;
    for (let i = 0; i < N; i++) {
      const counts = new Array(11).fill(0);
      for (const v of ds.maskBytes(i)) counts[v]++;
      const best = counts.slice(1).indexOf(Math.max(...counts.slice(1)));
      assert.equal(ds.labels[i], best, `scene ${i}: label`);
      const items = ds.items(i);
      hist[items.length]++;
      assert.ok(items.length >= o.items[0] && items.length <= o.items[1]);
      assert.equal(new Set(items.map((it) => it.label)).size, items.length, "distinct classes");
      items.forEach((it, k) => {
        const [lo, hi] = k === 0 ? o.salientSize : o.itemSize;
        assert.ok(it.size >= lo && it.size <= hi, `scene ${i} item ${k}: size ${it.size}`);
        assert.ok(it.cx - it.size / 2 >= 0 && it.cx + it.size / 2 <= S, "frame inside the canvas");
        assert.ok(it.cy - it.size / 2 >= 0 && it.cy + it.size / 2 <= S, "frame inside the canvas");
        assert.equal(test.labels[it.source], it.label, "the item's source has its class");
        const r = Math.max(...it.color), m = Math.min(...it.color);
        assert.ok(r <= 1 && m >= 0);
      });
      // a class appears in the mask only if the scene has such an item
      for (let c = 1; c <= 10; c++) {
        if (counts[c] > 0) assert.ok(items.some((it) => it.label + 1 === c));
      }
      if (ds.labels[i] === items[0].label) salientWins++;
    }
    assert.deepEqual(o.salientSize, [40, 64]);
    assert.deepEqual(o.itemSize, [16, 32]);
    for (let n = 1; n <= 4; n++) assert.ok(hist[n] > 0, `some scenes with ${n} items: ${hist}`);
    assert.ok(salientWins / N > 0.9, `the salient item is usually the label (${salientWins}/${N})`);
  },
);

leakCheck(
  "val scenes use test items; the ignore band marks boundaries and keeps the images",
  async () => {
    const val = await FashionScenes.open({ ...base, split: "val", count: 16 });
    const test = await loadFashionMNIST("test");
    for (let i = 0; i < 16; i++) {
      for (const it of val.items(i)) {
        assert.ok(it.source < 10_000);
        assert.equal(test.labels[it.source], it.label);
      }
    }
    const band = await generateFashionScenes({ ...base, count: 16, ignoreBand: [0.25, 0.75] });
    const plain = (await setP).arrays;
    assert.ok(Buffer.compare(band.images, plain.images.subarray(0, band.images.length)) === 0);
    let ignored = 0, atEdge = 0;
    for (let p = 0; p < band.masks.length; p++) {
      const v = band.masks[p];
      if (v === 255) {
        ignored++;
        // ignored pixels lie at boundaries (within 3 px the plain mask changes value), apart from
        // faint (semi-transparent) patches inside items
        const i = Math.floor(p / (S * S)), q = p % (S * S), y = Math.floor(q / S), x = q % S;
        let edge = false;
        for (let a = Math.max(0, y - 3); a <= Math.min(S - 1, y + 3); a++) {
          for (let b = Math.max(0, x - 3); b <= Math.min(S - 1, x + 3); b++) {
            if (plain.masks[i * S * S + a * S + b] !== plain.masks[p]) edge = true;
          }
        }
        if (edge) atEdge++;
      } else {
        assert.equal(v, plain.masks[p], "pixels outside the band keep their class");
      }
    }
    assert.ok(ignored > 0 && ignored < band.masks.length * 0.1, `${ignored} ignored pixels`);
    assert.ok(atEdge / ignored > 0.9, `${atEdge} of ${ignored} ignored pixels at boundaries`);
  },
);

leakCheck(
  "the cache: written once, hit on the second open, invalidated by options and corruption",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "scenes-cache-" });
    try {
      const opts = { ...base, count: 32, cacheDir: dir };
      const a = await FashionScenes.open(opts);
      assert.equal(a.fromCache, false);
      assert.ok(a.cachePath!.startsWith(`${dir}/train-96px-32-seed7-`));
      const t0 = performance.now();
      const b = await FashionScenes.open(opts);
      const hit = performance.now() - t0;
      assert.equal(b.fromCache, true);
      assert.equal(b.cachePath, a.cachePath);
      sameArrays(a.arrays, b.arrays, "from the cache");
      assert.ok(hit < 1000, `cache hit took ${hit} ms`);
      assert.deepEqual(b.items(3), a.items(3));
      // no temporary files left behind
      const names = [...Deno.readDirSync(dir)].map((e) => e.name);
      assert.deepEqual(names, [a.cachePath!.slice(dir.length + 1)]);
      // another option: another file, another set
      const c = await FashionScenes.open({ ...opts, background: 0.2 });
      assert.equal(c.fromCache, false);
      assert.notEqual(c.cachePath, a.cachePath);
      assert.notDeepEqual(c.arrays.images, a.arrays.images);
      // the id that feature caches are keyed by: equal for the same options, distinct for
      // another (an option the file name does not show, here the background)
      assert.equal(b.id, a.id);
      assert.notEqual(c.id, a.id);
      assert.match(a.id, /^fashion-scenes\/v\d+:\{.*"count":32/);
      // a truncated cache file is regenerated (and rewritten) rather than trusted
      const bytes = await Deno.readFile(a.cachePath!);
      await Deno.writeFile(a.cachePath!, bytes.subarray(0, bytes.length - 10));
      const d = await FashionScenes.open(opts);
      assert.equal(d.fromCache, false);
      sameArrays(d.arrays, a.arrays, "regenerated after corruption");
      assert.equal((await FashionScenes.open(opts)).fromCache, true);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

leakCheck(
  "backgrounds: a shared pool of N across scenes and splits, or one per scene",
  async () => {
    // distinct background textures among the first 32 scenes of each split, keyed by their bytes
    const kinds = async (o: FashionScenesOptions): Promise<Set<string>> => {
      const ds = await FashionScenes.open({ ...o, count: 32 });
      const out = new Set<string>();
      for (let i = 0; i < 32; i++) {
        const t = await ds.background(i);
        out.add(Buffer.from(t.toBytes()).toString("base64"));
        t.free();
      }
      return out;
    };
    const train = await kinds({ ...base, backgrounds: 3 });
    const val = await kinds({ ...base, backgrounds: 3, split: "val" });
    assert.equal(train.size, 3, "32 scenes draw all of a pool of 3, and nothing else");
    assert.deepEqual(val, train, "train and val scenes share the pool");
    const other = await kinds({ ...base, backgrounds: 3, seed: 8 });
    assert.equal([...other].filter((k) => train.has(k)).length, 0, "another seed, another pool");
    assert.equal((await kinds({ ...base, backgrounds: null })).size, 32, "null: one per scene");
    assert.equal(resolveSceneOptions({}).backgrounds, 8, "default pool of 8");
  },
);

Deno.test("bad options: a RangeError naming the option", () => {
  const bad: [FashionScenesOptions, RegExp][] = [
    [{ items: [0, 4] }, /items/],
    [{ items: [3, 2] }, /items/],
    [{ items: [1, 11] }, /items/],
    [{ salientSize: [40, 200] }, /salientSize/],
    [{ itemSize: [1, 8] }, /itemSize/],
    [{ background: 1.5 }, /background/],
    [{ backgrounds: 0 }, /backgrounds/],
    [{ backgrounds: 2.5 }, /backgrounds/],
    [{ contrast: [0.3, 0.9] }, /contrast/],
    [{ ignoreBand: [0.6, 0.9] }, /ignoreBand/],
    [{ count: 0 }, /count/],
    [{ size: 7 }, /size/],
    [{ seed: -1 }, /seed/],
    [{ split: "test" as "val" }, /split/],
  ];
  for (const [o, re] of bad) assert.throws(() => resolveSceneOptions(o), re);
  const r = resolveSceneOptions({ size: 64 });
  assert.equal(r.count, 10_000);
  assert.deepEqual(r.salientSize, [27, 43], "default sizes scale with the canvas");
  assert.equal(resolveSceneOptions({ split: "val" }).count, 2_000);
});

leakCheck("saveScenePreview writes a valid PNG contact sheet of scenes and masks", async () => {
  const ds = await setP;
  const dir = await Deno.makeTempDir({ prefix: "scenes-preview-" });
  try {
    const path = await saveScenePreview(ds, dir, 12);
    assert.equal(path, `${dir}/fashion-scenes-train.png`);
    const png = await decodePng(await Deno.readFile(path), path);
    assert.equal(png.width, 8 * S + 9 * 2);
    assert.equal(png.height, 4 * S + 5 * 2);
    await assert.rejects(() => saveScenePreview(ds, dir, 0), RangeError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("this file leaves no tensor alive", () => {
  assert.equal(liveTensors(), LIVE_AT_START);
});
