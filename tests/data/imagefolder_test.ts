/**
 * ImageFolder on fixtures written in the ImageNet layout (root/<class>/<image>): torchvision's
 * class and file order, extensions in any case, non-image files ignored, decoding with labels,
 * a corrupt JPEG, the file-list cache and its invalidation, and the bad-input errors.
 */
import assert from "node:assert/strict";
import {
  DatasetError,
  encodeJpeg,
  encodePng,
  fromTypedArray,
  ImageError,
  ImageFolder,
  liveTensors,
  type Tensor,
} from "../../mod.ts";
import { compareCodePoints } from "../../lib/data/imagefolder.ts";

const startLive = liveTensors();

/** An RGB image [3, h, w] of one colour (values in [0, 1]). */
function solid(h: number, w: number, rgb: [number, number, number]): Tensor {
  const data = new Float32Array(3 * h * w);
  for (let c = 0; c < 3; c++) data.fill(rgb[c], c * h * w, (c + 1) * h * w);
  return fromTypedArray(data, [3, h, w]);
}

async function writeImage(
  path: string,
  kind: "png" | "jpeg",
  h = 6,
  w = 8,
  rgb: [number, number, number] = [0.2, 0.6, 1],
): Promise<void> {
  const x = solid(h, w, rgb);
  try {
    await Deno.writeFile(path, kind === "png" ? await encodePng(x) : await encodeJpeg(x));
  } finally {
    x.free();
  }
}

/** Every folder under (and including) `dir`. */
async function folders(dir: string): Promise<string[]> {
  const out = [dir];
  for await (const e of Deno.readDir(dir)) {
    if (e.isDirectory) out.push(...await folders(`${dir}/${e.name}`));
  }
  return out;
}

/** Sets every folder's times an hour back, so the listing is old enough to be cached. */
async function age(dir: string): Promise<void> {
  const past = new Date(Date.now() - 3600_000);
  for (const d of await folders(dir)) await Deno.utime(d, past, past);
}

/**
 * root/
 *   bird/      z.png
 *   cat/       B.png a.JPG  notes.txt  sub/c.jpeg  sub/deeper/d.PNG  sub_x/e.jpg
 *   dog/       broken.jpg (corrupt)  x.jpeg  readme.md
 *   LICENSE
 */
async function writeFixture(root: string): Promise<void> {
  for (const d of ["bird", "cat/sub/deeper", "cat/sub_x", "dog"]) {
    await Deno.mkdir(`${root}/${d}`, { recursive: true });
  }
  await writeImage(`${root}/bird/z.png`, "png", 5, 7, [1, 0, 0]);
  await writeImage(`${root}/cat/B.png`, "png", 6, 8, [0, 1, 0]);
  await writeImage(`${root}/cat/a.JPG`, "jpeg", 16, 16);
  await Deno.writeTextFile(`${root}/cat/notes.txt`, "not an image");
  await writeImage(`${root}/cat/sub/c.jpeg`, "jpeg", 8, 8);
  await writeImage(`${root}/cat/sub/deeper/d.PNG`, "png");
  await writeImage(`${root}/cat/sub_x/e.jpg`, "jpeg", 8, 8);
  const x = solid(32, 32, [0.3, 0.3, 0.3]);
  const jpg = await encodeJpeg(x);
  x.free();
  await Deno.writeFile(`${root}/dog/broken.jpg`, jpg.subarray(0, 100));
  await writeImage(`${root}/dog/x.jpeg`, "jpeg", 8, 8);
  await Deno.writeTextFile(`${root}/dog/readme.md`, "# dogs");
  await Deno.writeTextFile(`${root}/LICENSE`, "CC0");
}

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dd-imagefolder-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("ImageFolder: torchvision's class and file order, labels, decoding", async () => {
  await withTemp(async (tmp) => {
    const root = `${tmp}/train`;
    await writeFixture(root);
    const ds = await ImageFolder.open(`${root}/`, { cacheDir: false }); // trailing slash dropped
    assert.equal(ds.root, root);
    assert.deepEqual(ds.classes, ["bird", "cat", "dog"]);
    assert.equal(ds.cacheFile, null);
    assert.equal(ds.fromCache, false);
    // folders by path, files by code point within each ("B" < "a"); .txt / .md / LICENSE ignored
    const rel = Array.from({ length: ds.length }, (_, i) => ds.nameOf(i).slice(root.length + 1));
    assert.deepEqual(rel, [
      "bird/z.png",
      "cat/B.png",
      "cat/a.JPG",
      "cat/sub/c.jpeg",
      "cat/sub/deeper/d.PNG",
      "cat/sub_x/e.jpg",
      "dog/broken.jpg",
      "dog/x.jpeg",
    ]);
    assert.deepEqual(Array.from(ds.labels()), [0, 1, 1, 1, 1, 1, 2, 2]);
    assert.equal(ds.labelOf(3), 1);

    const s = await ds.get(1);
    try {
      assert.equal(s.name, `${root}/cat/B.png`);
      assert.equal(s.label, 1);
      assert.equal(s.mask, undefined);
      assert.deepEqual(s.image.shape, [3, 6, 8]);
      assert.equal(s.image.dtype, "float32");
      const px = s.image.toTypedArray() as Float32Array;
      assert.deepEqual([px[0], px[48], px[96]], [0, 1, 0]);
    } finally {
      s.image.free();
    }
    const j = await ds.get(2);
    assert.deepEqual(j.image.shape, [3, 16, 16]);
    assert.equal(j.label, 1);
    j.image.free();

    // a corrupt JPEG rejects with an ImageError naming the file; the data set stays usable
    const bad = rel.indexOf("dog/broken.jpg");
    await assert.rejects(() => ds.get(bad), (e: Error) => {
      assert.ok(e instanceof ImageError);
      assert.equal(e.path, `${root}/dog/broken.jpg`);
      assert.match(e.message, /broken\.jpg: corrupt or truncated JPEG/);
      return true;
    });
    const after = await ds.get(bad + 1);
    assert.equal(after.label, 2);
    after.image.free();

    assert.throws(() => ds.nameOf(ds.length), RangeError);
    await assert.rejects(() => ds.get(-1), /out of range/);
  });
});

Deno.test("ImageFolder: the file list is cached and redone when a folder changes", async () => {
  await withTemp(async (tmp) => {
    const root = `${tmp}/data`;
    const cacheDir = `${tmp}/cache`;
    await writeFixture(root);

    // just written: too fresh to cache
    const fresh = await ImageFolder.open(root, { cacheDir });
    assert.equal(fresh.fromCache, false);
    assert.equal((await ImageFolder.open(root, { cacheDir })).fromCache, false);

    await age(root);
    const first = await ImageFolder.open(root, { cacheDir });
    assert.equal(first.fromCache, false);
    assert.ok(first.cacheFile?.startsWith(`${cacheDir}/`), String(first.cacheFile));
    assert.ok((await Deno.stat(first.cacheFile!)).isFile);
    const second = await ImageFolder.open(root, { cacheDir });
    assert.equal(second.fromCache, true);
    assert.equal(second.cacheFile, first.cacheFile);
    const list = (ds: ImageFolder) => Array.from({ length: ds.length }, (_, i) => ds.nameOf(i));
    assert.deepEqual(list(second), list(first));
    assert.deepEqual(second.classes, first.classes);
    assert.deepEqual(second.labels(), first.labels());

    // a new image in a nested folder
    await writeImage(`${root}/cat/sub/deeper/c2.png`, "png");
    const added = await ImageFolder.open(root, { cacheDir });
    assert.equal(added.fromCache, false);
    assert.equal(added.length, first.length + 1);
    assert.ok(list(added).includes(`${root}/cat/sub/deeper/c2.png`));

    // a new class folder shifts the labels
    await age(root);
    assert.equal((await ImageFolder.open(root, { cacheDir })).fromCache, false);
    assert.equal((await ImageFolder.open(root, { cacheDir })).fromCache, true);
    await Deno.mkdir(`${root}/ant`);
    await writeImage(`${root}/ant/1.png`, "png");
    const withAnt = await ImageFolder.open(root, { cacheDir });
    assert.equal(withAnt.fromCache, false);
    assert.deepEqual(withAnt.classes, ["ant", "bird", "cat", "dog"]);
    assert.equal(withAnt.labelOf(0), 0);
    assert.equal(withAnt.labelOf(1), 1);

    // a removed image
    await age(root);
    await ImageFolder.open(root, { cacheDir });
    await Deno.remove(`${root}/dog/x.jpeg`);
    const removed = await ImageFolder.open(root, { cacheDir });
    assert.equal(removed.fromCache, false);
    assert.ok(!list(removed).includes(`${root}/dog/x.jpeg`));

    // a corrupt cache file is ignored and replaced
    await age(root);
    await ImageFolder.open(root, { cacheDir });
    await Deno.writeTextFile(removed.cacheFile!, "{ not json");
    const relisted = await ImageFolder.open(root, { cacheDir });
    assert.equal(relisted.fromCache, false);
    assert.deepEqual(list(relisted), list(removed));
    assert.equal((await ImageFolder.open(root, { cacheDir })).fromCache, true);

    // the default cache lives in the per-user cache directory ($DENSEDINO_CACHE)
    const saved = Deno.env.get("DENSEDINO_CACHE");
    Deno.env.set("DENSEDINO_CACHE", `${tmp}/user-cache`);
    try {
      const ds = await ImageFolder.open(root);
      assert.ok(ds.cacheFile?.startsWith(`${tmp}/user-cache/imagefolder/`), ds.cacheFile!);
      assert.equal((await ImageFolder.open(root)).fromCache, true);
    } finally {
      if (saved === undefined) Deno.env.delete("DENSEDINO_CACHE");
      else Deno.env.set("DENSEDINO_CACHE", saved);
    }
  });
});

Deno.test("ImageFolder: links are followed, a link back to an enclosing folder is not", async () => {
  await withTemp(async (tmp) => {
    const root = `${tmp}/root`;
    await Deno.mkdir(`${root}/cat`, { recursive: true });
    await Deno.mkdir(`${tmp}/elsewhere`);
    await writeImage(`${root}/cat/a.png`, "png");
    await writeImage(`${tmp}/elsewhere/b.png`, "png");
    await Deno.symlink(`${root}/cat`, `${root}/cat/loop`);
    await Deno.symlink(`${tmp}/elsewhere`, `${root}/dog`);
    const ds = await ImageFolder.open(root, { cacheDir: false });
    assert.deepEqual(ds.classes, ["cat", "dog"]);
    const names = Array.from({ length: ds.length }, (_, i) => ds.nameOf(i));
    assert.deepEqual(names, [`${root}/cat/a.png`, `${root}/dog/b.png`]);
  });
});

Deno.test("ImageFolder bad input: errors naming the path", async () => {
  await withTemp(async (tmp) => {
    const isDatasetError = (path: string, re: RegExp) => (e: Error) => {
      assert.ok(e instanceof DatasetError, String(e));
      assert.equal(e.path, path);
      assert.ok(e.message.startsWith(`${path}: `), e.message);
      assert.match(e.message, re);
      return true;
    };
    const opts = { cacheDir: false } as const;

    await assert.rejects(
      () => ImageFolder.open(`${tmp}/nope`, opts),
      isDatasetError(`${tmp}/nope`, /root folder not found/),
    );
    await Deno.writeTextFile(`${tmp}/file`, "x");
    await assert.rejects(
      () => ImageFolder.open(`${tmp}/file`, opts),
      isDatasetError(`${tmp}/file`, /is a file/),
    );

    // no class folders: empty, or images directly in the root
    await Deno.mkdir(`${tmp}/flat`);
    await assert.rejects(
      () => ImageFolder.open(`${tmp}/flat`, opts),
      isDatasetError(`${tmp}/flat`, /no class folders.*root\/<class>\/<image>/),
    );
    await writeImage(`${tmp}/flat/a.png`, "png");
    await Deno.writeTextFile(`${tmp}/flat/b.txt`, "x");
    await assert.rejects(
      () => ImageFolder.open(`${tmp}/flat`, opts),
      isDatasetError(`${tmp}/flat`, /found 1 image file\(s\) directly in the root, e\.g\. a\.png/),
    );

    // empty class folders (non-image files do not count), named; allowEmpty keeps them
    const root = `${tmp}/classes`;
    for (const d of ["a", "b", "c/sub", "d"]) await Deno.mkdir(`${root}/${d}`, { recursive: true });
    await writeImage(`${root}/a/1.png`, "png");
    await Deno.writeTextFile(`${root}/b/notes.txt`, "x");
    await writeImage(`${root}/c/sub/2.png`, "png"); // nested: not empty
    await assert.rejects(
      () => ImageFolder.open(root, opts),
      isDatasetError(
        `${root}/b`,
        /class folder holds no images.*1 more empty class folder\(s\): d/,
      ),
    );
    const kept = await ImageFolder.open(root, { ...opts, allowEmpty: true });
    assert.deepEqual(kept.classes, ["a", "b", "c", "d"]);
    assert.deepEqual(Array.from(kept.labels()), [0, 2]);

    // the cache never hides an empty class
    await age(root);
    const cacheDir = `${tmp}/cache`;
    await ImageFolder.open(root, { cacheDir, allowEmpty: true });
    await assert.rejects(
      () => ImageFolder.open(root, { cacheDir }),
      isDatasetError(`${root}/b`, /no images/),
    );
  });
});

Deno.test("compareCodePoints sorts as Python's sorted()", () => {
  const names = ["b", "B", "a_b", "a/b", "a", "é", "z", "\u{1F600}", "\uFFFD", ""];
  assert.deepEqual(names.sort(compareCodePoints), [
    "",
    "B",
    "a",
    "a/b",
    "a_b",
    "b",
    "z",
    "é",
    "\uFFFD",
    "\u{1F600}",
  ]);
});

Deno.test("imagefolder tests leak no tensors", () => {
  assert.equal(liveTensors(), startLive);
});
