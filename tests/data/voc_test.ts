/**
 * Class-index masks (palette, grey, RGB through a colormap, rejected formats) and Pascal VOC 2012
 * on fixtures written in its real layout: root discovery, split files in their usual places,
 * SegmentationClass vs SegmentationClassAug, a corrupt JPEG, and the bad-input errors.
 */
import assert from "node:assert/strict";
import {
  DatasetError,
  decodeIndexMask,
  encodeJpeg,
  encodePngPixels,
  fromTypedArray,
  ImageError,
  liveTensors,
  loadIndexMask,
  PascalVOC,
  type Tensor,
  VOC_CLASSES,
  VOC_IGNORE_INDEX,
  vocColormap,
} from "../../mod.ts";

const startLive = liveTensors();

const W = 12;
const H = 8;

/** A deterministic label map: background, two classes, a 255 border between them. */
function labels(seed: number, w = W, h = H): Uint8Array {
  const out = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const k = (x + seed) % w;
      out[y * w + x] = y < 2 ? 0 : k < 4 ? 15 : k === 4 ? 255 : (seed % 20) + 1;
    }
  }
  return out;
}

function paletted(indices: Uint8Array, w = W, h = H): Promise<Uint8Array> {
  return encodePngPixels({
    width: w,
    height: h,
    channels: 1,
    data: indices,
    palette: vocColormap(),
  });
}

function grey(indices: Uint8Array, w = W, h = H): Promise<Uint8Array> {
  return encodePngPixels({ width: w, height: h, channels: 1, data: indices });
}

function rgbOf(indices: Uint8Array): Uint8Array {
  const cmap = vocColormap();
  const out = new Uint8Array(indices.length * 3);
  indices.forEach((k, i) => out.set(cmap.subarray(3 * k, 3 * k + 3), 3 * i));
  return out;
}

async function jpeg(w = W, h = H, v = 0.5): Promise<Uint8Array> {
  const x = fromTypedArray(new Float32Array(3 * w * h).fill(v), [3, h, w]);
  try {
    return await encodeJpeg(x);
  } finally {
    x.free();
  }
}

function u8(t: Tensor): number[] {
  return Array.from(t.toTypedArray() as Uint8Array);
}

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dd-voc-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// ---- masks -----------------------------------------------------------------------------------

Deno.test("vocColormap: VOC's colours by class index", () => {
  const c = vocColormap();
  assert.equal(c.length, 768);
  const at = (k: number) => Array.from(c.subarray(3 * k, 3 * k + 3));
  assert.deepEqual(at(0), [0, 0, 0]);
  assert.deepEqual(at(1), [128, 0, 0]);
  assert.deepEqual(at(2), [0, 128, 0]);
  assert.deepEqual(at(15), [192, 128, 128]); // person
  assert.deepEqual(at(20), [0, 64, 128]); // tvmonitor
  assert.deepEqual(at(255), [224, 224, 192]); // ignore / border
  assert.equal(new Set(Array.from({ length: 256 }, (_, k) => at(k).join())).size, 256);
  assert.equal(VOC_CLASSES.length, 21);
  assert.equal(VOC_CLASSES[15], "person");
  assert.equal(VOC_IGNORE_INDEX, 255);
});

Deno.test("decodeIndexMask: palette indices, grey levels, RGB via a colormap", async () => {
  const idx = labels(3);
  // palette: the index is the class, whatever the palette's colours
  const scrambled = new Uint8Array(768).map((_, i) => (i * 37) % 256);
  for (
    const bytes of [
      await paletted(idx),
      await encodePngPixels({ width: W, height: H, channels: 1, data: idx, palette: scrambled }),
      await grey(idx),
      await encodePngPixels({ width: W, height: H, channels: 1, data: Uint16Array.from(idx) }),
    ]
  ) {
    const m = await decodeIndexMask(bytes, "m.png");
    assert.equal(m.dtype, "uint8");
    assert.deepEqual(m.shape, [H, W]);
    assert.deepEqual(u8(m), Array.from(idx));
    m.free();
  }
  // RGB renderings: rejected by default, mapped with a colormap
  const rgb = await encodePngPixels({ width: W, height: H, channels: 3, data: rgbOf(idx) });
  await assert.rejects(() => decodeIndexMask(rgb, "rgb.png"), (e: Error) => {
    assert.ok(e instanceof ImageError);
    assert.match(e.message, /^rgb\.png: an RGB PNG is not a class-index mask: use palette .*grey/);
    assert.match(e.message, /colormap/);
    return true;
  });
  const mapped = await decodeIndexMask(rgb, "rgb.png", { colormap: vocColormap() });
  assert.deepEqual(u8(mapped), Array.from(idx));
  mapped.free();
  const odd = rgbOf(idx);
  odd.set([1, 2, 3], 3 * (2 * W + 5));
  await assert.rejects(
    () =>
      encodePngPixels({ width: W, height: H, channels: 3, data: odd }).then((b) =>
        decodeIndexMask(b, "odd.png", { colormap: vocColormap() })
      ),
    /^ImageError: odd\.png: colour \(1, 2, 3\) at pixel \(x 5, y 2\) is not in the colormap/,
  );
});

Deno.test("decodeIndexMask / loadIndexMask: rejected inputs name the file", async () => {
  const cases: [string, Uint8Array, RegExp][] = [
    ["m.jpg", await jpeg(), /^m\.jpg: a JPEG cannot hold a class-index mask/],
    [
      "ga.png",
      await encodePngPixels({ width: 2, height: 1, channels: 2, data: new Uint8Array(4) }),
      /^ga\.png: a grey\+alpha PNG is not a class-index mask/,
    ],
    ["e.png", new Uint8Array(), /^e\.png: empty file/],
    ["t.png", new TextEncoder().encode("not a png"), /^t\.png: unsupported mask format/],
    ["c.png", (await grey(labels(1))).subarray(0, 40), /^c\.png: corrupt or truncated PNG/],
  ];
  for (const [name, bytes, re] of cases) {
    await assert.rejects(() => decodeIndexMask(bytes, name), (e: Error) => {
      assert.ok(e instanceof ImageError, String(e));
      assert.equal(e.path, name);
      assert.match(e.message, re);
      return true;
    });
  }
  await withTemp(async (dir) => {
    await assert.rejects(
      () => loadIndexMask(`${dir}/none.png`),
      new RegExp(`^ImageError: ${dir}/none\\.png: file not found`),
    );
    await Deno.writeFile(`${dir}/m.png`, await paletted(labels(2)));
    const m = await loadIndexMask(`${dir}/m.png`);
    assert.deepEqual(u8(m), Array.from(labels(2)));
    m.free();
  });
});

// ---- Pascal VOC ------------------------------------------------------------------------------

const TRAIN = ["2007_000032", "2007_000039"];
const VAL = ["2008_000002"];
const AUG_ONLY = ["2011_000123"];
const ALL = [...TRAIN, ...VAL, ...AUG_ONLY];

/**
 * tmp/VOCdevkit/VOC2012/ with JPEGImages (all ids), SegmentationClass (palette; train + val),
 * SegmentationClassAug (grey; all ids, background where the palette masks have borders),
 * ImageSets/Segmentation/{train,val}.txt and ImageSets/SegmentationAug/train_aug.txt in DeepLab's
 * "image mask" line format. Returns the VOC2012 folder.
 */
async function writeVoc(tmp: string): Promise<string> {
  const voc = `${tmp}/VOCdevkit/VOC2012`;
  for (
    const d of [
      "JPEGImages",
      "SegmentationClass",
      "SegmentationClassAug",
      "ImageSets/Segmentation",
      "ImageSets/SegmentationAug",
    ]
  ) await Deno.mkdir(`${voc}/${d}`, { recursive: true });
  for (const [i, id] of ALL.entries()) {
    await Deno.writeFile(`${voc}/JPEGImages/${id}.jpg`, await jpeg(W, H, 0.2 + 0.1 * i));
    if (!AUG_ONLY.includes(id)) {
      await Deno.writeFile(`${voc}/SegmentationClass/${id}.png`, await paletted(labels(i)));
    }
    const aug = labels(i).map((k) => (k === 255 ? 0 : k));
    await Deno.writeFile(`${voc}/SegmentationClassAug/${id}.png`, await grey(aug));
  }
  await Deno.writeTextFile(`${voc}/ImageSets/Segmentation/train.txt`, TRAIN.join("\n") + "\n");
  await Deno.writeTextFile(`${voc}/ImageSets/Segmentation/val.txt`, VAL.join("\r\n") + "\r\n");
  await Deno.writeTextFile(
    `${voc}/ImageSets/SegmentationAug/train_aug.txt`,
    [...TRAIN, ...AUG_ONLY].map((id) => `/JPEGImages/${id}.jpg /SegmentationClassAug/${id}.png`)
      .join("\n"),
  );
  return voc;
}

Deno.test("PascalVOC: images, palette masks with 255 borders, names, root discovery", async () => {
  await withTemp(async (tmp) => {
    const voc = await writeVoc(tmp);
    for (const root of [tmp, `${tmp}/VOCdevkit`, voc, `${voc}/`]) {
      const ds = await PascalVOC.open(root);
      assert.equal(ds.root, voc);
      assert.equal(ds.split, "train");
      assert.deepEqual(ds.ids, TRAIN);
    }
    const train = await PascalVOC.open(tmp, { split: "train" });
    assert.equal(train.length, 2);
    assert.equal(train.maskDir, `${voc}/SegmentationClass`);
    assert.equal(train.splitFile, `${voc}/ImageSets/Segmentation/train.txt`);
    assert.deepEqual(train.classes, VOC_CLASSES);
    assert.equal(train.nameOf(1), `${voc}/JPEGImages/${TRAIN[1]}.jpg`);
    assert.equal(train.maskPathOf(1), `${voc}/SegmentationClass/${TRAIN[1]}.png`);
    for (let i = 0; i < train.length; i++) {
      const s = await train.get(i);
      try {
        assert.equal(s.name, `${voc}/JPEGImages/${TRAIN[i]}.jpg`);
        assert.equal(s.label, undefined);
        assert.deepEqual(s.image.shape, [3, H, W]);
        assert.equal(s.image.dtype, "float32");
        const px = s.image.toTypedArray() as Float32Array;
        assert.ok(Math.abs(px[0] - (0.2 + 0.1 * i)) < 0.02, String(px[0]));
        assert.equal(s.mask!.dtype, "uint8");
        assert.deepEqual(s.mask!.shape, [H, W]);
        const m = u8(s.mask!);
        assert.deepEqual(m, Array.from(labels(i)));
        assert.ok(m.includes(255) && m.includes(15) && m.includes(0));
      } finally {
        s.image.free();
        s.mask?.free();
      }
    }
    const val = await PascalVOC.open(tmp, { split: "val" }); // CRLF lines
    assert.deepEqual(val.ids, VAL);
    assert.throws(() => val.nameOf(1), RangeError);
    await assert.rejects(() => val.get(1), /out of range/);
  });
});

Deno.test("PascalVOC: trainaug reads SegmentationClassAug; masks option", async () => {
  await withTemp(async (tmp) => {
    const voc = await writeVoc(tmp);
    // found as ImageSets/SegmentationAug/train_aug.txt, DeepLab's "image mask" lines
    const aug = await PascalVOC.open(tmp, { split: "trainaug" });
    assert.equal(aug.splitFile, `${voc}/ImageSets/SegmentationAug/train_aug.txt`);
    assert.deepEqual(aug.ids, [...TRAIN, ...AUG_ONLY]);
    assert.equal(aug.maskDir, `${voc}/SegmentationClassAug`);
    const s = await aug.get(2);
    assert.deepEqual(u8(s.mask!), Array.from(labels(3).map((k) => (k === 255 ? 0 : k))));
    s.image.free();
    s.mask!.free();

    // ImageSets/Segmentation/trainaug.txt is preferred when present
    await Deno.writeTextFile(`${voc}/ImageSets/Segmentation/trainaug.txt`, AUG_ONLY.join("\n"));
    const seg = await PascalVOC.open(tmp, { split: "trainaug" });
    assert.equal(seg.splitFile, `${voc}/ImageSets/Segmentation/trainaug.txt`);
    assert.deepEqual(seg.ids, AUG_ONLY);

    // forced folders, and images only
    const forced = await PascalVOC.open(tmp, { split: "train", masks: "SegmentationClassAug" });
    assert.equal(forced.maskDir, `${voc}/SegmentationClassAug`);
    const f = await forced.get(0);
    assert.ok(!u8(f.mask!).includes(255));
    f.image.free();
    f.mask!.free();
    const bare = await PascalVOC.open(tmp, { split: "trainaug", masks: "none" });
    assert.equal(bare.maskDir, null);
    assert.equal(bare.maskPathOf(0), null);
    const b = await bare.get(0);
    assert.equal(b.mask, undefined);
    b.image.free();

    // auto falls back to the other folder when the preferred one lacks masks of the split
    await Deno.remove(`${voc}/SegmentationClass/${TRAIN[0]}.png`);
    const fallback = await PascalVOC.open(tmp, { split: "train" });
    assert.equal(fallback.maskDir, `${voc}/SegmentationClassAug`);
    await Deno.remove(`${voc}/SegmentationClass`, { recursive: true });
    assert.equal(
      (await PascalVOC.open(tmp, { split: "val" })).maskDir,
      `${voc}/SegmentationClassAug`,
    );

    // RGB masks only through a colormap
    const rgbId = TRAIN[1];
    await Deno.writeFile(
      `${voc}/SegmentationClassAug/${rgbId}.png`,
      await encodePngPixels({ width: W, height: H, channels: 3, data: rgbOf(labels(1)) }),
    );
    const plain = await PascalVOC.open(tmp, { split: "train" });
    await assert.rejects(
      () => plain.get(1),
      new RegExp(`^ImageError: ${voc}/SegmentationClassAug/${rgbId}\\.png: an RGB PNG`),
    );
    const mapped = await PascalVOC.open(tmp, { split: "train", colormap: vocColormap() });
    const r = await mapped.get(1);
    assert.deepEqual(u8(r.mask!), Array.from(labels(1)));
    r.image.free();
    r.mask!.free();
  });
});

Deno.test("PascalVOC: a corrupt JPEG or a mismatched mask rejects naming the file", async () => {
  await withTemp(async (tmp) => {
    const voc = await writeVoc(tmp);
    const ds = await PascalVOC.open(tmp);
    const before = liveTensors();
    const jpg = `${voc}/JPEGImages/${TRAIN[0]}.jpg`;
    const good = await Deno.readFile(jpg);
    await Deno.writeFile(jpg, good.subarray(0, 100));
    await assert.rejects(() => ds.get(0), (e: Error) => {
      assert.ok(e instanceof ImageError);
      assert.equal(e.path, jpg);
      assert.match(e.message, /corrupt or truncated JPEG/);
      return true;
    });
    await Deno.writeFile(jpg, good);
    const maskPath = `${voc}/SegmentationClass/${TRAIN[0]}.png`;
    await Deno.writeFile(maskPath, await paletted(labels(0, 6, 4), 6, 4));
    await assert.rejects(
      () => ds.get(0),
      new RegExp(`^ImageError: ${maskPath}: the mask is 6×4 but its image ${jpg} is 12×8`),
    );
    await Deno.remove(maskPath);
    await assert.rejects(() => ds.get(0), new RegExp(`${maskPath}: file not found`));
    assert.equal(liveTensors(), before, "a failed get leaves nothing allocated");
    const ok = await ds.get(1);
    ok.image.free();
    ok.mask!.free();
  });
});

Deno.test("PascalVOC bad input: errors naming the path", async () => {
  await withTemp(async (tmp) => {
    const failsWith = (path: string, re: RegExp) => (e: Error) => {
      assert.ok(e instanceof DatasetError, String(e));
      assert.equal(e.path, path);
      assert.ok(e.message.startsWith(`${path}: `), e.message);
      assert.match(e.message, re);
      return true;
    };
    await assert.rejects(
      () => PascalVOC.open(`${tmp}/nope`),
      failsWith(`${tmp}/nope`, /Pascal VOC root folder not found/),
    );
    await Deno.mkdir(`${tmp}/empty`);
    await assert.rejects(
      () => PascalVOC.open(`${tmp}/empty`),
      failsWith(`${tmp}/empty/JPEGImages`, /not found.*VOCdevkit\/VOC2012.*also looked for/),
    );

    const voc = await writeVoc(tmp);
    // unknown split, a standard split whose file is missing, a name that is not a file name
    await assert.rejects(
      () => PascalVOC.open(tmp, { split: "tarin" }),
      failsWith(tmp, /unknown split "tarin": expected train, val, trainval, trainaug/),
    );
    await assert.rejects(
      () => PascalVOC.open(tmp, { split: "trainval" }),
      failsWith(
        `${voc}/ImageSets/Segmentation/trainval.txt`,
        /split file for "trainval" not found/,
      ),
    );
    await assert.rejects(
      () => PascalVOC.open(tmp, { split: "../train" }),
      failsWith(tmp, /invalid split name/),
    );
    await assert.rejects(
      () => PascalVOC.open(tmp, { masks: "Segmentation" as "none" }),
      failsWith(tmp, /unknown masks option/),
    );
    // a custom split file is accepted
    await Deno.writeTextFile(`${voc}/ImageSets/Segmentation/mini.txt`, `# one image\n${VAL[0]}\n`);
    assert.deepEqual((await PascalVOC.open(tmp, { split: "mini" })).ids, VAL);
    // an empty split
    await Deno.writeTextFile(`${voc}/ImageSets/Segmentation/none.txt`, "\n\n");
    await assert.rejects(
      () => PascalVOC.open(tmp, { split: "none" }),
      failsWith(`${voc}/ImageSets/Segmentation/none.txt`, /names no images/),
    );

    // a split naming missing images: the first few and the count
    const missing = Array.from({ length: 7 }, (_, i) => `2012_00000${i}`);
    const file = `${voc}/ImageSets/Segmentation/broken.txt`;
    await Deno.writeTextFile(file, [...TRAIN, ...missing].join("\n"));
    await assert.rejects(
      () => PascalVOC.open(tmp, { split: "broken" }),
      failsWith(
        file,
        new RegExp(
          `names images missing from ${voc}/JPEGImages/: 2012_000000, 2012_000001, ` +
            "2012_000002, 2012_000003, 2012_000004, … \\(7 of 9\\)",
        ),
      ),
    );

    // missing masks: an image without its mask in either folder
    await Deno.writeFile(`${voc}/JPEGImages/2012_000100.jpg`, await jpeg());
    await Deno.writeTextFile(file, [...TRAIN, "2012_000100"].join("\n"));
    await assert.rejects(
      () => PascalVOC.open(tmp, { split: "broken" }),
      failsWith(
        file,
        /names images with no mask in .*\/SegmentationClass\/: 2012_000100 \(1 of 3\)/,
      ),
    );
    await assert.rejects(
      () => PascalVOC.open(tmp, { split: "broken", masks: "SegmentationClassAug" }),
      failsWith(file, /no mask in .*\/SegmentationClassAug\/: 2012_000100 \(1 of 3\)/),
    );
    assert.equal((await PascalVOC.open(tmp, { split: "broken", masks: "none" })).length, 3);

    // missing mask folders
    await Deno.remove(`${voc}/SegmentationClass`, { recursive: true });
    await assert.rejects(
      () => PascalVOC.open(tmp, { masks: "SegmentationClass" }),
      failsWith(`${voc}/SegmentationClass`, /mask folder not found; pass masks: "none"/),
    );
    await Deno.remove(`${voc}/SegmentationClassAug`, { recursive: true });
    await assert.rejects(
      () => PascalVOC.open(tmp, { split: "trainaug" }),
      failsWith(
        `${voc}/SegmentationClassAug`,
        new RegExp(`mask folder not found \\(nor ${voc}/SegmentationClass\\)`),
      ),
    );
  });
});

Deno.test("voc tests leak no tensors", () => {
  assert.equal(liveTensors(), startLive);
});
