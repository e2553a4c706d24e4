/**
 * Image IO and preprocessing: PNG / JPEG decoding (RGB, grey, grey+alpha, RGBA, palette,
 * 16-bit), PNG encoding round trips, errors naming the file, torchvision's Resize + CenterCrop
 * geometry, and ImageNet normalisation.
 */
import assert from "node:assert/strict";
import { deflateSync } from "node:zlib";
import { chunk, concat } from "./png_builder.ts";
import {
  centerCrop,
  decodeImage,
  decodeRgb,
  encodeJpeg,
  encodePng,
  fromTypedArray,
  full,
  ImageError,
  imageFormat,
  IMAGENET_MEAN,
  IMAGENET_STD,
  imagenetNormalize,
  liveTensors,
  loadImage,
  rand,
  resizedSize,
  resizeImage,
  resizeShorterSide,
  savePng,
  scope,
  type Tensor,
  tensor,
} from "../../mod.ts";

// ---- a minimal PNG writer, for every colour type and bit depth -----------------------

/** A PNG of the given colour type (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA). */
function makePng(
  w: number,
  h: number,
  colorType: number,
  depth: number,
  rows: number[][],
  palette?: number[],
): Uint8Array {
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, w);
  v.setUint32(4, h);
  ihdr[8] = depth;
  ihdr[9] = colorType;
  const raw = concat(rows.map((r) => new Uint8Array([0, ...r])));
  return concat([
    new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk("IHDR", ihdr),
    ...(palette ? [chunk("PLTE", new Uint8Array(palette))] : []),
    chunk("IDAT", new Uint8Array(deflateSync(raw))),
    chunk("IEND", new Uint8Array()),
  ]);
}

function values(t: Tensor): number[] {
  return Array.from(t.toTypedArray() as Float32Array);
}

function maxAbsDiff(a: Tensor, b: Tensor): number {
  return scope(() => a.sub(b).abs().amax().item());
}

/** Every test must free what it creates. */
function leakFree(name: string, fn: () => Promise<void> | void): void {
  Deno.test(name, async () => {
    const before = liveTensors();
    await fn();
    assert.equal(liveTensors(), before, "tensors leaked");
  });
}

// ---- decoding --------------------------------------------------------------------------------

leakFree("imageFormat recognises PNG and JPEG signatures only", async () => {
  const png = makePng(1, 1, 2, 8, [[1, 2, 3]]);
  assert.equal(imageFormat(png), "png");
  const x = full([3, 4, 4], 0.5);
  const jpg = await encodeJpeg(x);
  x.free();
  assert.equal(imageFormat(jpg), "jpeg");
  assert.equal(imageFormat(new TextEncoder().encode("GIF89a....")), null);
  assert.equal(imageFormat(new Uint8Array()), null);
});

leakFree("an 8-bit RGB PNG decodes exactly to [3, H, W] in [0, 1]", async () => {
  // 3 wide, 2 high: channel-first layout and row order are checked value by value
  const rows = [[0, 1, 2, 10, 11, 12, 20, 21, 22], [100, 101, 102, 200, 201, 202, 253, 254, 255]];
  const x = await decodeImage(makePng(3, 2, 2, 8, rows), "rgb.png");
  try {
    assert.deepEqual(x.shape, [3, 2, 3]);
    assert.equal(x.dtype, "float32");
    const px = (r: number, c: number) => rows[r].slice(3 * c, 3 * c + 3);
    const expect: number[] = [];
    for (let ch = 0; ch < 3; ch++) {
      for (let r = 0; r < 2; r++) for (let c = 0; c < 3; c++) expect.push(px(r, c)[ch] / 255);
    }
    assert.deepEqual(values(x), expect.map(Math.fround));
  } finally {
    x.free();
  }
});

leakFree("an RGBA PNG: alpha dropped, colour kept (not premultiplied)", async () => {
  const rows = [[10, 20, 30, 255, 40, 50, 60, 0], [70, 80, 90, 128, 250, 251, 252, 1]];
  const x = await decodeImage(makePng(2, 2, 6, 8, rows), "rgba.png");
  try {
    assert.deepEqual(x.shape, [3, 2, 2]);
    assert.deepEqual(
      values(x),
      [10, 40, 70, 250, 20, 50, 80, 251, 30, 60, 90, 252].map((v) => Math.fround(v / 255)),
    );
  } finally {
    x.free();
  }
});

leakFree("grey, grey+alpha, palette and 16-bit PNGs become three-channel RGB", async () => {
  const cases: [string, Uint8Array, number[][]][] = [
    ["grey8", makePng(2, 1, 0, 8, [[7, 250]]), [[7, 250], [7, 250], [7, 250]]],
    ["grey+alpha", makePng(2, 1, 4, 8, [[7, 0, 250, 99]]), [[7, 250], [7, 250], [7, 250]]],
    ["grey16", makePng(2, 1, 0, 16, [[7, 99, 250, 1]]), [[7, 250], [7, 250], [7, 250]]],
    ["rgb16", makePng(1, 1, 2, 16, [[1, 0, 2, 0, 3, 0]]), [[1], [2], [3]]],
    [
      "palette",
      makePng(2, 1, 3, 8, [[1, 0]], [9, 8, 7, 1, 2, 3]),
      [[1, 9], [2, 8], [3, 7]],
    ],
  ];
  for (const [name, bytes, expect] of cases) {
    const x = await decodeImage(bytes, `${name}.png`);
    try {
      assert.deepEqual(x.shape, [3, 1, expect[0].length], name);
      assert.deepEqual(values(x), expect.flat().map((v) => Math.fround(v / 255)), name);
    } finally {
      x.free();
    }
  }
  const rgb = await decodeRgb(makePng(2, 1, 0, 8, [[7, 250]]), "grey.png");
  assert.deepEqual({ ...rgb, data: [...rgb.data] }, {
    width: 2,
    height: 1,
    data: [7, 7, 7, 250, 250, 250],
  });
});

leakFree("JPEG decodes to approximately the encoded colours", async () => {
  const W = 24, H = 16;
  const ref = fromTypedArray(
    Float32Array.from({ length: 3 * H * W }, (_, i) => {
      const c = Math.floor(i / (H * W)), y = Math.floor((i % (H * W)) / W), x = i % W;
      return [40 + 6 * x, 30 + 8 * y, 128][c] / 255;
    }),
    [3, H, W],
  );
  try {
    const x = await decodeImage(await encodeJpeg(ref, 95), "smooth.jpg");
    assert.deepEqual(x.shape, [3, H, W]);
    const err = maxAbsDiff(x, ref);
    x.free();
    assert.ok(err > 0 && err < 0.05, `max |jpeg − original| = ${err}`);
    await assert.rejects(() => encodeJpeg(ref, 0), /quality/);
  } finally {
    ref.free();
  }
});

// ---- encoding --------------------------------------------------------------------------------

leakFree("encodePng → decodeImage is exact for 8-bit values, RGB and grey", async () => {
  const q = scope(() => rand([3, 5, 7]).mul(255).round().div(255));
  const grey = scope(() => rand([5, 7]).mul(255).round().div(255));
  try {
    const back = await decodeImage(await encodePng(q), "q.png");
    assert.equal(maxAbsDiff(back, q), 0);
    back.free();
    for (const g of [grey, grey.unsqueeze(0)]) {
      const b = await decodeImage(await encodePng(g), "g.png");
      assert.deepEqual(b.shape, [3, 5, 7]);
      for (let c = 0; c < 3; c++) {
        assert.equal(scope(() => b.select(0, c).sub(grey).abs().amax().item()), 0);
      }
      b.free();
      if (g !== grey) g.free();
    }
    // the encoding is deterministic (no timestamp)
    assert.deepEqual(await encodePng(q), await encodePng(q));
  } finally {
    q.free();
    grey.free();
  }
});

leakFree("encodePng rounds, clamps, maps NaN to 0 and writes uint8 as is", async () => {
  const x = tensor([[-0.5, 0, 0.5, 1, 2, NaN, 1 / 255, 0.499 / 255]]);
  const u8 = tensor([[0, 1, 7, 255]], { dtype: "uint8" });
  try {
    const rgb = await decodeRgb(await encodePng(x), "x.png");
    assert.deepEqual([...rgb.data].filter((_, i) => i % 3 === 0), [0, 0, 128, 255, 255, 0, 1, 0]);
    const m = await decodeRgb(await encodePng(u8), "m.png");
    assert.deepEqual([...m.data].filter((_, i) => i % 3 === 0), [0, 1, 7, 255]);
    const x4 = x.reshape([1, 1, 2, 4]);
    await assert.rejects(() => encodePng(x4), /\[3, H, W\]/);
    x4.free();
    const ints = tensor([[1, 2]], { dtype: "int64" });
    await assert.rejects(() => encodePng(ints), /floating or uint8/);
    ints.free();
  } finally {
    x.free();
    u8.free();
  }
});

leakFree("savePng writes atomically and loadImage reads it back", async () => {
  const dir = await Deno.makeTempDir({ prefix: "dd-img-" });
  const q = scope(() => rand([3, 4, 6]).mul(255).round().div(255));
  try {
    const path = `${dir}/a.png`;
    await savePng(path, q);
    const back = await loadImage(path);
    assert.equal(maxAbsDiff(back, q), 0);
    back.free();
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["a.png"]);
    await assert.rejects(() => savePng(`${dir}/missing/a.png`, q), (e: Error) => {
      assert.ok(e instanceof ImageError);
      assert.match(e.message, /missing\/a\.png: could not write/);
      return true;
    });
  } finally {
    q.free();
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- errors ----------------------------------------------------------------------------------

leakFree("corrupt, truncated, empty and unsupported data: ImageError naming the file", async () => {
  const png = makePng(4, 4, 2, 8, Array.from({ length: 4 }, () => new Array(12).fill(77)));
  const blue = full([3, 32, 32], 0.4);
  const jpg = await encodeJpeg(blue);
  blue.free();
  const badCrc = png.slice();
  badCrc[40] ^= 0xff;
  const scrambled = jpg.slice();
  for (let i = 200; i < 260; i++) scrambled[i] = 0xff;
  const cases: [string, Uint8Array, RegExp][] = [
    ["trunc.png", png.subarray(0, 30), /^trunc\.png: corrupt or truncated PNG/],
    ["crc.png", badCrc, /^crc\.png: corrupt or truncated PNG/],
    ["trunc.jpg", jpg.subarray(0, 100), /^trunc\.jpg: corrupt or truncated JPEG/],
    ["scrambled.jpg", scrambled, /^scrambled\.jpg: corrupt or truncated JPEG/],
    ["empty.png", new Uint8Array(), /^empty\.png: empty file/],
    ["anim.gif", new TextEncoder().encode("GIF89a\x01\x00\x01\x00"), /^anim\.gif: .*a GIF/],
    ["text.png", new TextEncoder().encode("hello world"), /^text\.png: unsupported image format/],
  ];
  for (const [name, bytes, re] of cases) {
    await assert.rejects(() => decodeImage(bytes, name), (e: Error) => {
      assert.ok(e instanceof ImageError, `${name}: ${e}`);
      assert.equal(e.path, name);
      assert.match(e.message, re);
      return true;
    });
  }
  // the codecs stay usable after a corrupt input (a WebAssembly trap inside the JPEG decoder)
  const ok = await decodeImage(jpg, "ok.jpg");
  assert.deepEqual(ok.shape, [3, 32, 32]);
  ok.free();

  const dir = await Deno.makeTempDir({ prefix: "dd-img-" });
  try {
    await Deno.writeFile(`${dir}/bad.jpg`, jpg.subarray(0, 100));
    await assert.rejects(
      () => loadImage(`${dir}/bad.jpg`),
      new RegExp(`^ImageError: ${dir}/bad\\.jpg: corrupt`),
    );
    await assert.rejects(() => loadImage(`${dir}/none.png`), /none\.png: file not found/);
    await assert.rejects(() => loadImage(dir), (e: Error) => e instanceof ImageError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- resize and crop -------------------------------------------------------------------------

Deno.test("resizedSize follows torchvision's Resize(int): shorter side, ⌊size·long/short⌋", () => {
  assert.deepEqual(resizedSize(480, 640, 224), [224, 298]);
  assert.deepEqual(resizedSize(640, 480, 224), [298, 224]);
  assert.deepEqual(resizedSize(500, 375, 256), [341, 256]);
  assert.deepEqual(resizedSize(100, 100, 224), [224, 224]);
  assert.deepEqual(resizedSize(30, 50, 16), [16, 26]);
  assert.throws(() => resizedSize(10, 10, 0), /positive integer/);
});

leakFree("resize + centre crop: shapes, batches, upsampling and constant images", () => {
  const x = rand([3, 30, 50]);
  const b = rand([2, 3, 50, 30]);
  const c = full([3, 41, 29], 0.3);
  const small = full([3, 6, 9], 0.7);
  try {
    scope(() => {
      assert.deepEqual(resizeShorterSide(x, 16).shape, [3, 16, 26]);
      assert.deepEqual(resizeImage(x, 16).shape, [3, 16, 16]);
      assert.deepEqual(resizeImage(x, 20, 16).shape, [3, 16, 16]);
      assert.deepEqual(resizeImage(b, 16).shape, [2, 3, 16, 16]);
      assert.deepEqual(resizeImage(small, 32).shape, [3, 32, 32]);
      // same size: the values are kept
      assert.equal(maxAbsDiff(resizeShorterSide(x, 30), x), 0);
      for (const [img, v] of [[c, 0.3], [small, 0.7]] as const) {
        const r = resizeImage(img, 16);
        assert.ok(maxAbsDiff(r, full(r.shape, v)) < 1e-6);
      }
      // results stay in [0, 1] (bicubic overshoot is clamped, as on 8-bit PIL images)
      const checker = tensor(
        Array.from(
          { length: 3 },
          () =>
            Array.from({ length: 12 }, (_, i) => Array.from({ length: 12 }, (_, j) => (i + j) % 2)),
        ),
      );
      const r = resizeShorterSide(checker, 31);
      assert.ok(r.amin().item() >= 0 && r.amax().item() <= 1);
      assert.ok(resizeShorterSide(checker, 31, { clamp: false }).amax().item() > 1);
    });
    scope(() => assert.throws(() => resizeImage(tensor([1, 2, 3]), 4), /\[C, H, W\]/));
    const ints = tensor([[[1]]], { dtype: "int64" });
    assert.throws(() => resizeImage(ints, 4), /floating/);
    ints.free();
  } finally {
    for (const t of [x, b, c, small]) t.free();
  }
});

leakFree("centerCrop uses Python rounding for the corner and zero-pads small images", () => {
  // values encode their (row, col): 10·row + col
  const img = (h: number, w: number) =>
    tensor([Array.from({ length: h }, (_, r) => Array.from({ length: w }, (_, c) => 10 * r + c))]);
  scope(() => {
    // (5 − 2) / 2 = 1.5 → 2 ; (7 − 2) / 2 = 2.5 → 2 (half to even)
    assert.deepEqual(centerCrop(img(5, 7), 2).toArray(), [[[22, 23], [32, 33]]]);
    // (6 − 1) / 2 = 2.5 → 2 ; (4 − 1) / 2 = 1.5 → 2
    assert.deepEqual(centerCrop(img(6, 4), 1).toArray(), [[[22]]]);
    assert.deepEqual(centerCrop(img(4, 4), [2, 4]).toArray(), [[[10, 11, 12, 13], [
      20,
      21,
      22,
      23,
    ]]]);
    // smaller than the crop: padded left/top by ⌊d/2⌋, right/bottom by ⌈d/2⌉
    assert.deepEqual(centerCrop(img(1, 2), [2, 5]).toArray(), [[
      [0, 0, 1, 0, 0],
      [0, 0, 0, 0, 0],
    ]]);
  });
});

// ---- normalisation ---------------------------------------------------------------------------

leakFree("imagenetNormalize: (x − mean) / std per channel, in float32 as torchvision", () => {
  const x = tensor([[[0, 0.5]], [[0.25, 1]], [[1, 0.75]]]);
  const b = scope(() => x.unsqueeze(0).expand([2, 3, 1, 2]));
  try {
    const f = Math.fround;
    const expect = [[0, 0.5], [0.25, 1], [1, 0.75]].map((row, c) =>
      row.map((v) => f(f(f(v) - f(IMAGENET_MEAN[c])) / f(IMAGENET_STD[c])))
    );
    scope(() => {
      assert.deepEqual(values(imagenetNormalize(x)), expect.flat());
      const nb = imagenetNormalize(b);
      assert.deepEqual(nb.shape, [2, 3, 1, 2]);
      assert.deepEqual(values(nb.contiguous()), [...expect.flat(), ...expect.flat()]);
      const x64 = x.to("float64");
      const n64 = imagenetNormalize(x64);
      assert.equal(n64.dtype, "float64");
      assert.ok(Math.abs((n64.toTypedArray() as Float64Array)[1] - (0.5 - 0.485) / 0.229) < 1e-15);
    });
    const one = tensor([[[1]]]);
    assert.throws(() => imagenetNormalize(one), /3 channels/);
    one.free();
  } finally {
    x.free();
    b.free();
  }
});

// Pillow 9.4 `Image.resize(size, BICUBIC)` + torchvision's crop geometry on an 8-bit grey image
// (computed once with Debian's python3-pil; Pillow rounds to 8 bits, so within one level).
const PIL_SRC = [
  [60, 80, 100, 120, 140, 160, 180],
  [69, 92, 115, 138, 149, 172, 195],
  [78, 104, 118, 144, 158, 184, 198],
  [87, 116, 133, 150, 167, 196, 213],
  [96, 116, 136, 156, 176, 196, 216],
];
const PIL_RESIZED: Record<number, number[][]> = {
  // 5×7 → 3×4 → crop 3×3 at (0, 0)
  3: [[72, 108, 142], [89, 125, 159], [103, 137, 172]],
  // 5×7 → 8×11 → crop 8×8 at (0, 2)
  8: [
    [81, 94, 106, 119, 132, 144, 157, 172],
    [86, 100, 114, 127, 137, 148, 162, 178],
    [95, 110, 125, 139, 146, 155, 171, 188],
    [102, 112, 126, 143, 151, 162, 178, 192],
    [110, 118, 130, 146, 155, 168, 186, 198],
    [118, 128, 138, 150, 160, 173, 194, 206],
    [119, 131, 142, 154, 166, 179, 195, 209],
    [118, 131, 143, 156, 170, 182, 194, 209],
  ],
};

leakFree("resizeImage matches torchvision Resize + CenterCrop on PIL images within 1/255", () => {
  scope(() => {
    const x = tensor([PIL_SRC, PIL_SRC, PIL_SRC]).div(255);
    for (const [size, expect] of Object.entries(PIL_RESIZED)) {
      const r = resizeImage(x, Number(size));
      assert.deepEqual(r.shape, [3, Number(size), Number(size)]);
      const ref = tensor([expect, expect, expect]).div(255);
      const err = maxAbsDiff(r, ref) * 255;
      assert.ok(err <= 1.01, `size ${size}: max |ours − Pillow| = ${err.toFixed(3)} levels`);
    }
  });
});
