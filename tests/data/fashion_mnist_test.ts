/**
 * Fashion-MNIST: the real Debian files (counts, labels, known statistics), the data set's
 * images, and IDX files written here that are truncated, of the wrong magic, of mismatched
 * lengths or missing: clear errors naming the file.
 */
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import {
  DatasetError,
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_DIR,
  FashionMNIST,
  IdxError,
  liveTensors,
  loadFashionMNIST,
  parseIdx,
  readIdx,
} from "../../mod.ts";

/** An IDX file of unsigned bytes with the given dimensions and data. */
function idx(dims: number[], data: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + 4 * dims.length + data.length);
  out[2] = 0x08;
  out[3] = dims.length;
  const v = new DataView(out.buffer);
  dims.forEach((d, i) => v.setUint32(4 + 4 * i, d, false));
  out.set(data, 4 + 4 * dims.length);
  return out;
}

/** A directory holding a small valid Fashion-MNIST-layout set (plain or gzip files). */
async function fixtureDir(n: number, gz: boolean, nLabels = n): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "fmnist-" });
  const images = new Uint8Array(n * 28 * 28);
  for (let i = 0; i < images.length; i++) images[i] = (i * 7) % 256;
  const labels = Uint8Array.from({ length: nLabels }, (_, i) => i % 10);
  const write = async (name: string, bytes: Uint8Array) => {
    if (gz) await Deno.writeFile(`${dir}/${name}.gz`, new Uint8Array(gzipSync(bytes)));
    else await Deno.writeFile(`${dir}/${name}`, bytes);
  };
  for (const split of ["train", "t10k"]) {
    await write(`${split}-images-idx3-ubyte`, idx([n, 28, 28], images));
    await write(`${split}-labels-idx1-ubyte`, idx([nLabels], labels));
  }
  return dir;
}

/** Live tensors when this file was loaded: every test leaves the count where it found it. */
const LIVE_AT_START = liveTensors();

function leakCheck(name: string, fn: () => Promise<void> | void): void {
  Deno.test(name, async () => {
    const before = liveTensors();
    await fn();
    assert.equal(liveTensors(), before, "tensors leaked");
  });
}

// ---- the real files ----------------------------------------------------------------------------

leakCheck(
  "the Debian files: 60,000 train and 10,000 test items, 28×28, balanced labels",
  async () => {
    const train = await loadFashionMNIST("train");
    const test = await loadFashionMNIST("test");
    assert.equal(train.count, 60_000);
    assert.equal(test.count, 10_000);
    for (const a of [train, test]) {
      assert.equal(a.height, 28);
      assert.equal(a.width, 28);
      assert.equal(a.images.length, a.count * 784);
      assert.equal(a.labels.length, a.count);
      const counts = new Array(10).fill(0);
      for (const l of a.labels) counts[l]++;
      assert.deepEqual(counts, new Array(10).fill(a.count / 10), "6,000 / 1,000 per class");
    }
    assert.ok(train.imagesPath.startsWith(FASHION_MNIST_DIR));
    // known facts: the first train and test items are ankle boots (label 9); the train pixel mean
    // is the well-known 0.2860 (·255)
    assert.equal(train.labels[0], 9);
    assert.equal(test.labels[0], 9);
    assert.equal(FASHION_MNIST_CLASSES[9], "Ankle boot");
    let sum = 0;
    for (const v of train.images) sum += v;
    assert.ok(Math.abs(sum / train.images.length / 255 - 0.286) < 0.0005, `mean ${sum}`);
    // a checksum of the first item, and its corner (background) pixels
    let first = 0;
    for (let i = 0; i < 784; i++) first += train.images[i];
    assert.equal(first, 76247);
    assert.equal(train.images[0], 0);
    assert.equal(train.images[783], 0);
    // opening again is served from the per-process cache (the same arrays)
    assert.equal((await loadFashionMNIST("train")).images, train.images);
    assert.equal((await loadFashionMNIST("val")).images, test.images, '"val" is the test split');
  },
);

leakCheck(
  "FashionMNIST: RGB [3, 28, 28] in [0, 1] with grey replicated, labels, names",
  async () => {
    const ds = await FashionMNIST.open({ split: "test" });
    assert.equal(ds.length, 10_000);
    assert.deepEqual(ds.classes, FASHION_MNIST_CLASSES);
    const s = await ds.get(0);
    assert.deepEqual(s.image.shape, [3, 28, 28]);
    assert.equal(s.image.dtype, "float32");
    assert.equal(s.label, 9);
    assert.equal(s.name, "fashion-mnist/test/0");
    assert.equal(s.mask, undefined);
    const px = s.image.toTypedArray() as Float32Array;
    const raw = ds.item(0);
    for (let c = 0; c < 3; c++) {
      for (let i = 0; i < 784; i++) assert.equal(px[c * 784 + i], Math.fround(raw[i] / 255));
    }
    s.image.free();
    assert.throws(() => ds.item(10_000), RangeError);
    await assert.rejects(() => ds.get(-1), RangeError);
  },
);

leakCheck("FashionMNIST: resize to a model's input size, and batches", async () => {
  const ds = await FashionMNIST.open({ split: "train", resize: 64 });
  const s = await ds.get(3);
  assert.deepEqual(s.image.shape, [3, 64, 64]);
  const v = s.image.toTypedArray() as Float32Array;
  assert.ok(v.every((x) => x >= 0 && x <= 1));
  assert.ok(Math.max(...v) > 0.5, "the item survives resizing");
  s.image.free();
  const b = ds.batch([0, 1, 2]);
  assert.deepEqual(b.shape, [3, 3, 64, 64]);
  b.free();
  const small = await FashionMNIST.open({ split: "train", resize: 16 });
  const t = small.batch([0]);
  assert.deepEqual(t.shape, [1, 3, 16, 16]);
  t.free();
  await assert.rejects(() => FashionMNIST.open({ resize: 0 }), /resize/);
  await assert.rejects(() => FashionMNIST.open({ split: "dev" as "train" }), /unknown split/);
});

// ---- files written here ------------------------------------------------------------------------

leakCheck("a directory of plain or gzip IDX files works through `dir`", async () => {
  for (const gz of [false, true]) {
    const dir = await fixtureDir(12, gz);
    try {
      const ds = await FashionMNIST.open({ split: "val", dir });
      assert.equal(ds.length, 12);
      assert.equal(ds.labels[11], 1);
      assert.equal(ds.item(1)[0], (784 * 7) % 256);
      const s = await ds.get(5);
      assert.equal(s.label, 5);
      s.image.free();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("parseIdx: wrong magic, other element types, truncation, trailing bytes", () => {
  const good = idx([2, 3], new Uint8Array(6).fill(1));
  assert.deepEqual(parseIdx(good, "g").dims, [2, 3]);
  const bad = good.slice();
  bad[0] = 0x1f;
  assert.throws(() => parseIdx(bad, "x.idx"), (e: Error) => {
    assert.ok(e instanceof IdxError && e instanceof DatasetError);
    assert.equal((e as IdxError).path, "x.idx");
    assert.match(e.message, /^x\.idx: not an IDX file: wrong magic number 1f 00 08 02/);
    return true;
  });
  const float = good.slice();
  float[2] = 0x0d;
  assert.throws(() => parseIdx(float, "f.idx"), /f\.idx: IDX element type float is not supported/);
  const weird = good.slice();
  weird[2] = 0x42;
  assert.throws(() => parseIdx(weird, "w.idx"), /unknown element type 0x42/);
  assert.throws(() => parseIdx(good.subarray(0, 9), "t.idx"), /t\.idx: truncated IDX file/);
  assert.throws(
    () => parseIdx(good.subarray(0, good.length - 1), "t.idx"),
    /t\.idx: truncated IDX file: dimensions \[2, 3\] need 6 data bytes, found 5/,
  );
  assert.throws(() => parseIdx(good.subarray(0, 2), "t.idx"), /truncated/);
  const extra = new Uint8Array(good.length + 3);
  extra.set(good);
  assert.throws(() => parseIdx(extra, "e.idx"), /3 bytes of trailing data/);
});

leakCheck(
  "truncated files (plain, gzip of a truncated file, cut gzip stream) name the path",
  async () => {
    const dir = await fixtureDir(10, false);
    try {
      const path = `${dir}/train-images-idx3-ubyte`;
      const full = await Deno.readFile(path);
      await Deno.writeFile(path, full.subarray(0, full.length - 100));
      await assert.rejects(() => FashionMNIST.open({ dir }), (e: Error) => {
        assert.ok(e instanceof IdxError);
        assert.equal(e.path, path);
        assert.match(e.message, /truncated IDX file: dimensions \[10, 28, 28\] need 7840/);
        return true;
      });
      const gzPath = `${dir}/a.gz`;
      await Deno.writeFile(gzPath, new Uint8Array(gzipSync(full.subarray(0, 500))));
      await assert.rejects(() => readIdx(gzPath), new RegExp(`^IdxError: ${gzPath}: truncated`));
      const z = new Uint8Array(gzipSync(full));
      await Deno.writeFile(gzPath, z.subarray(0, z.length >> 1));
      await assert.rejects(() => readIdx(gzPath), (e: Error) => {
        assert.ok(e instanceof IdxError);
        assert.equal(e.path, gzPath);
        assert.match(e.message, /corrupt or truncated gzip data|truncated IDX/);
        return true;
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

leakCheck("missing files name the path and the Debian package; mismatched lengths", async () => {
  const dir = await Deno.makeTempDir({ prefix: "fmnist-empty-" });
  try {
    await assert.rejects(() => FashionMNIST.open({ dir }), (e: Error) => {
      assert.ok(e instanceof IdxError);
      assert.equal(e.path, `${dir}/train-images-idx3-ubyte.gz`);
      assert.match(e.message, /not found/);
      assert.match(e.message, /dataset-fashion-mnist/);
      return true;
    });
    await assert.rejects(() => readIdx(`${dir}/nope`), /nope: file not found/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const bad = await fixtureDir(6, true, 5);
  try {
    await assert.rejects(
      () => FashionMNIST.open({ dir: bad }),
      /train-labels-idx1-ubyte\.gz: 5 labels for 6 images/,
    );
  } finally {
    await Deno.remove(bad, { recursive: true });
  }
});

Deno.test("this file leaves no tensor alive", () => {
  assert.equal(liveTensors(), LIVE_AT_START);
});
