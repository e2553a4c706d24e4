/**
 * The PNG codec (lib/data/png.ts): Pillow-made fixtures of every colour type, bit depth, tRNS
 * and Adam7 layout decode exactly; random images round-trip exactly through our encoder and
 * decoder (including the small grey images imagescript could not read back); class indices of
 * label PNGs; deterministic encoder output; corrupt, truncated and invalid files raise
 * ImageError naming the file.
 *
 * The fixtures and their expected samples are written once by
 * tests/fixtures/png/make_png_fixtures.py (Pillow and a small spec-following writer, every file
 * read back by Pillow).
 */
import assert from "node:assert/strict";
import { deflateSync, inflateSync } from "node:zlib";
import { chunk, concat, SIGNATURE } from "./png_builder.ts";
import {
  decodeImage,
  decodePng,
  decodeRgb,
  encodePng,
  encodePngPixels,
  fromTypedArray,
  ImageError,
  liveTensors,
  loadRgb,
  type PngFilter,
  type PngImage,
  pngIndices,
  type PngPixels,
  pngToRgb8,
  pngToRgba8,
  scope,
  TorchError,
} from "../../mod.ts";

const FIXTURES = new URL("../fixtures/png/", import.meta.url);

/** One entry of expected.json: png.ts's PngImage with the samples and palette in base64. */
interface Expected {
  width: number;
  height: number;
  colorType: 0 | 2 | 3 | 4 | 6;
  bitDepth: 1 | 2 | 4 | 8 | 16;
  channels: 1 | 2 | 3 | 4;
  interlaced: boolean;
  /** RGB triples, base64 */
  palette: string | null;
  /** one alpha per palette entry, base64 */
  paletteAlpha: string | null;
  transparentColor: number[] | null;
  writer: "pillow" | "manual";
  /** one byte per sample below 16 bits, big-endian pairs at 16 */
  samples: string;
}

const EXPECTED: Record<string, Expected> = JSON.parse(
  await Deno.readTextFile(new URL("expected.json", FIXTURES)),
);

function base64(s: string): Uint8Array;
function base64(s: string | null): Uint8Array | null;
function base64(s: string | null): Uint8Array | null {
  return s === null ? null : Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
}

function expectedSamples(e: Expected): Uint8Array | Uint16Array {
  const raw = base64(e.samples);
  if (e.bitDepth !== 16) return raw;
  const out = new Uint16Array(raw.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = (raw[2 * i] << 8) | raw[2 * i + 1];
  return out;
}

function fixture(file: string): Promise<Uint8Array> {
  return Deno.readFile(new URL(file, FIXTURES));
}

/** mulberry32: a small seeded generator, so the random cases are the same on every run. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---- malformed files: chunks from tests/data/png_builder.ts ------------------------------

function ihdr(w: number, h: number, depth: number, colorType: number, interlace = 0): Uint8Array {
  const d = new Uint8Array(13);
  const v = new DataView(d.buffer);
  v.setUint32(0, w);
  v.setUint32(4, h);
  d.set([depth, colorType, 0, 0, interlace], 8);
  return chunk("IHDR", d);
}

/** A 2×2 8-bit RGB PNG from the given filtered scanlines (each with its filter byte). */
function rgbPng(filtered: number[], extra: Uint8Array[] = []): Uint8Array {
  return concat([
    SIGNATURE,
    ihdr(2, 2, 8, 2),
    ...extra,
    chunk("IDAT", new Uint8Array(deflateSync(new Uint8Array(filtered)))),
    chunk("IEND", new Uint8Array()),
  ]);
}

/** The IDAT data of a PNG, concatenated. */
function idatOf(png: Uint8Array): Uint8Array {
  const v = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const parts: Uint8Array[] = [];
  for (let pos = 8; pos < png.length;) {
    const n = v.getUint32(pos);
    if (String.fromCharCode(...png.subarray(pos + 4, pos + 8)) === "IDAT") {
      parts.push(png.subarray(pos + 8, pos + 8 + n));
    }
    pos += 12 + n;
  }
  return concat(parts);
}

/** The chunk types of a PNG, in order. */
function chunkTypes(png: Uint8Array): string[] {
  const v = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const types: string[] = [];
  for (let pos = 8; pos < png.length;) {
    const n = v.getUint32(pos);
    types.push(new TextDecoder().decode(png.subarray(pos + 4, pos + 8)));
    pos += 12 + n;
  }
  return types;
}

// ---- a plain reference of the 8-bit conversions ------------------------------------------------

function referenceRgba(e: Expected, s: Uint8Array | Uint16Array): number[] {
  const to8 = (v: number) =>
    e.bitDepth === 16
      ? v >> 8
      : e.bitDepth < 8 && e.colorType !== 3
      ? v * 255 / (2 ** e.bitDepth - 1)
      : v;
  const out: number[] = [];
  const ch = e.channels;
  for (let i = 0; i < e.width * e.height; i++) {
    const px = Array.from(s.subarray(i * ch, i * ch + ch));
    let rgb: number[];
    let alpha = 255;
    if (e.colorType === 3) {
      rgb = [...base64(e.palette)!.subarray(3 * px[0], 3 * px[0] + 3)];
      alpha = base64(e.paletteAlpha)?.[px[0]] ?? 255;
    } else {
      const c = px.map(to8);
      rgb = e.colorType === 0 || e.colorType === 4 ? [c[0], c[0], c[0]] : c.slice(0, 3);
      if (e.colorType === 4 || e.colorType === 6) alpha = c[ch - 1];
      const key = e.transparentColor;
      if (key && key.every((k, j) => px[j] === k)) alpha = 0;
    }
    out.push(...rgb, alpha);
  }
  return out;
}

// ---- fixtures ------------------------------------------------------------------------------

Deno.test("fixtures cover every colour type × bit depth, plain and Adam7, and tRNS", () => {
  const depths: Record<number, number[]> = {
    0: [1, 2, 4, 8, 16],
    2: [8, 16],
    3: [1, 2, 4, 8],
    4: [8, 16],
    6: [8, 16],
  };
  const have = new Set(
    Object.values(EXPECTED).map((e) => `${e.colorType}/${e.bitDepth}/${e.interlaced}`),
  );
  for (const [ct, ds] of Object.entries(depths)) {
    for (const d of ds) {
      for (const il of [false, true]) assert.ok(have.has(`${ct}/${d}/${il}`), `${ct}/${d}/${il}`);
    }
  }
  const all = Object.values(EXPECTED);
  assert.ok(all.some((e) => e.paletteAlpha !== null));
  assert.ok(all.some((e) => e.colorType === 0 && e.transparentColor !== null));
  assert.ok(all.some((e) => e.colorType === 2 && e.transparentColor !== null));
  assert.ok(all.some((e) => e.writer === "pillow") && all.some((e) => e.writer === "manual"));
  for (const [w, h] of [[1, 1], [7, 5], [33, 17]]) {
    assert.ok(all.some((e) => e.width === w && e.height === h), `${w}×${h}`);
  }
});

Deno.test("every fixture decodes to exactly its samples, palette and tRNS", async () => {
  for (const [file, e] of Object.entries(EXPECTED)) {
    const img = await decodePng(await fixture(file), file);
    const { data, palette, paletteAlpha, ...header } = img;
    assert.deepEqual(header, {
      width: e.width,
      height: e.height,
      colorType: e.colorType,
      bitDepth: e.bitDepth,
      channels: e.channels,
      interlaced: e.interlaced,
      transparentColor: e.transparentColor,
    }, file);
    assert.deepEqual(palette, base64(e.palette), file);
    assert.deepEqual(paletteAlpha, base64(e.paletteAlpha), file);
    assert.ok(e.bitDepth === 16 ? data instanceof Uint16Array : data instanceof Uint8Array, file);
    assert.deepEqual(data, expectedSamples(e), file);
  }
});

Deno.test("8-bit RGB / RGBA of every fixture, and decodeRgb / decodeImage agree", async () => {
  const before = liveTensors();
  for (const [file, e] of Object.entries(EXPECTED)) {
    const bytes = await fixture(file);
    const img = await decodePng(bytes, file);
    const rgba = referenceRgba(e, expectedSamples(e));
    assert.deepEqual([...pngToRgba8(img)], rgba, file);
    const rgb = rgba.filter((_, i) => i % 4 !== 3);
    assert.deepEqual([...pngToRgb8(img)], rgb, file);
    const viaImage = await decodeRgb(bytes, file);
    assert.deepEqual({ ...viaImage, data: [...viaImage.data] }, {
      width: e.width,
      height: e.height,
      data: rgb,
    });
    const x = await decodeImage(bytes, file);
    try {
      assert.deepEqual(x.shape, [3, e.height, e.width]);
      const v = x.toTypedArray() as Float32Array;
      const n = e.width * e.height;
      for (let i = 0; i < n; i++) {
        for (let c = 0; c < 3; c++) assert.equal(v[c * n + i], Math.fround(rgb[3 * i + c] / 255));
      }
    } finally {
      x.free();
    }
  }
  assert.equal(liveTensors(), before);
});

Deno.test("label PNGs read as class indices: palette indices, grey levels", async () => {
  const voc = "pil_pal8_voc_33x17.png";
  const img = await decodePng(await fixture(voc), voc);
  const idx = pngIndices(img, voc);
  assert.deepEqual(idx, expectedSamples(EXPECTED[voc]));
  assert.ok(idx.includes(255) && idx.includes(0) && Math.max(...idx.filter((v) => v < 255)) <= 20);
  // the VOC colour map: class 1 is (128, 0, 0), 255 is (224, 224, 192)
  assert.deepEqual([...img.palette!.subarray(3, 6)], [128, 0, 0]);
  assert.deepEqual([...img.palette!.subarray(765, 768)], [224, 224, 192]);
  for (const file of ["man_grey4_13x7.png", "man_pal2_13x7.png", "pil_grey8_33x17.png"]) {
    const g = await decodePng(await fixture(file), file);
    assert.deepEqual(pngIndices(g, file), expectedSamples(EXPECTED[file]), file); // not rescaled
  }
  const g16 = await decodePng(await fixture("pil_grey16_33x17.png"));
  assert.throws(() => pngIndices(g16, "g16.png"), /^ImageError: g16\.png: 16-bit grey level/);
  const small16 = { ...g16, data: g16.data.map((v) => v >> 8) } as PngImage;
  assert.deepEqual([...pngIndices(small16)], [...g16.data].map((v) => v >> 8));
  const rgb = await decodePng(await fixture("pil_rgb8_33x17.png"));
  assert.throws(() => pngIndices(rgb, "rgb.png"), (e: Error) => {
    assert.ok(e instanceof ImageError);
    assert.match(e.message, /^rgb\.png: expected a palette or grey PNG .* RGB \(colour type 2\)/);
    return true;
  });

  // masks written by this project read back as indices: a uint8 tensor (grey PNG) and a
  // paletted PNG with the VOC colours
  const mask = Uint8Array.from({ length: 6 * 9 }, (_, i) => [0, 3, 20, 255][i % 4]);
  const t = fromTypedArray(mask, [6, 9]);
  try {
    const back = await decodePng(await encodePng(t), "mask.png");
    assert.equal(back.colorType, 0);
    assert.deepEqual(pngIndices(back), mask);
  } finally {
    t.free();
  }
  const pal = await encodePngPixels({
    width: 9,
    height: 6,
    channels: 1,
    data: mask,
    palette: img.palette!,
  });
  const back = await decodePng(pal, "pal.png");
  assert.equal(back.colorType, 3);
  assert.deepEqual(pngIndices(back), mask);
  assert.deepEqual(back.palette, img.palette);
});

// ---- round trips ---------------------------------------------------------------------------

const FILTERS: PngFilter[] = ["adaptive", "none", "sub", "up", "average", "paeth"];

Deno.test("500 random images round-trip exactly: encodePngPixels → decodePng", async () => {
  const rnd = seeded(12345);
  const int = (n: number) => Math.floor(rnd() * n);
  const counts: Record<string, number> = {};
  for (let t = 0; t < 500; t++) {
    const width = 1 + int(t < 100 ? 8 : 48), height = 1 + int(t < 100 ? 8 : 40);
    const kind = int(10); // 0–5: 8-bit, 6–7: 16-bit, 8–9: palette
    const channels = (kind >= 8 ? 1 : 1 + int(4)) as 1 | 2 | 3 | 4;
    const n = width * height * channels;
    const depth16 = kind === 6 || kind === 7;
    const top = depth16 ? 65536 : 256;
    const entries = 1 + int(256);
    const style = int(3); // random, smooth (filters matter), constant
    const sample = (i: number) => {
      const max = kind >= 8 ? entries : top;
      if (style === 0) return int(max);
      if (style === 2) return (max - 1) >> 1;
      const p = Math.floor(i / channels);
      return Math.min(max - 1, ((p % width) * 5 + Math.floor(p / width) * 3 + int(3)) % max);
    };
    const data = depth16 ? Uint16Array.from({ length: n }, (_, i) => sample(i)) : Uint8Array.from(
      { length: n },
      (_, i) => sample(i),
    );
    const px: PngPixels = { width, height, channels, data };
    if (kind >= 8) {
      px.palette = Uint8Array.from({ length: 3 * entries }, () => int(256));
      if (int(2)) px.paletteAlpha = Uint8Array.from({ length: int(entries + 1) }, () => int(256));
    }
    const filter = FILTERS[int(2) ? 0 : int(FILTERS.length)];
    const bytes = await encodePngPixels(px, { filter });
    const img = await decodePng(bytes, `random${t}.png`);
    const what = `#${t} ${width}×${height}×${channels} kind ${kind} ${filter}`;
    assert.equal(img.width, width, what);
    assert.equal(img.height, height, what);
    assert.equal(img.channels, channels, what);
    assert.equal(img.bitDepth, depth16 ? 16 : 8, what);
    assert.equal(img.colorType, kind >= 8 ? 3 : [0, 0, 4, 2, 6][channels], what);
    assert.deepEqual(img.data, data, what);
    if (kind >= 8) {
      assert.deepEqual(img.palette, px.palette, what);
      if (px.paletteAlpha && px.paletteAlpha.some((a) => a !== 255)) {
        const alpha = new Uint8Array(entries).fill(255);
        alpha.set(px.paletteAlpha);
        assert.deepEqual(img.paletteAlpha, alpha, what);
      } else {
        assert.equal(img.paletteAlpha, null, what);
      }
    }
    const key = `${img.colorType}/${img.bitDepth}`;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  // every kind of image was drawn
  for (const key of ["0/8", "2/8", "4/8", "6/8", "0/16", "2/16", "4/16", "6/16", "3/8"]) {
    assert.ok(counts[key] > 5, `${key}: ${counts[key]}`);
  }
});

Deno.test("the 7×5 grey images imagescript could not read back round-trip exactly", async () => {
  const rnd = seeded(7);
  const before = liveTensors();
  for (let t = 0; t < 300; t++) {
    const grey = Uint8Array.from({ length: 35 }, () => Math.floor(rnd() * 256));
    // as grey, and as the opaque RGBA imagescript wrote
    const rgba = new Uint8Array(140);
    for (let i = 0; i < 35; i++) rgba.set([grey[i], grey[i], grey[i], 255], 4 * i);
    for (const [channels, data] of [[1, grey], [4, rgba]] as const) {
      const img = await decodePng(await encodePngPixels({ width: 7, height: 5, channels, data }));
      assert.deepEqual(img.data, data);
    }
    // and image.ts's encodePng → decodeImage (its test was flaky with imagescript's decoder)
    const x = fromTypedArray(Float32Array.from(grey, (v) => v / 255), [5, 7]);
    const back = await decodeImage(await encodePng(x), "g.png");
    try {
      assert.equal(scope(() => back.select(0, 0).sub(x).abs().amax().item()), 0);
    } finally {
      x.free();
      back.free();
    }
  }
  assert.equal(liveTensors(), before);

  // imagescript's own PNG encoder output, which its decoder fails on in about 7% of cases
  type Codec = {
    Image: {
      new (w: number, h: number): {
        bitmap: Uint8ClampedArray;
        encode(level: number, meta: object): Promise<Uint8Array>;
      };
    };
  };
  const { Image } = await import(["npm:imagescript", "1.3.1"].join("@")) as Codec;
  for (let t = 0; t < 100; t++) {
    const img = new Image(7, 5);
    for (let i = 0; i < 35; i++) {
      const v = Math.floor(rnd() * 256);
      img.bitmap.set([v, v, v, 255], 4 * i);
    }
    const png = await img.encode(1, { creationTime: 0, software: "densedino" });
    const ours = await decodePng(png, "imagescript.png");
    const bitmap = img.bitmap;
    assert.deepEqual(
      pngToRgba8(ours),
      new Uint8Array(bitmap.buffer, bitmap.byteOffset, bitmap.length),
    );
  }
});

Deno.test("encoder output: deterministic, no metadata, per-row filters, split IDAT", async () => {
  const w = 700, h = 420;
  const rnd = seeded(99);
  // half smooth (Sub / Up / Average / Paeth pay off), half noise (None does)
  const data = Uint8Array.from({ length: w * h * 3 }, (_, i) => {
    const p = Math.floor(i / 3), x = p % w, y = Math.floor(p / w);
    return y < h / 2 ? (x + 2 * y + (i % 3) * 40) & 255 : Math.floor(rnd() * 256);
  });
  const px: PngPixels = { width: w, height: h, channels: 3, data };
  const a = await encodePngPixels(px);
  assert.deepEqual(a, await encodePngPixels(px));
  const types = chunkTypes(a);
  assert.equal(types[0], "IHDR");
  assert.equal(types.at(-1), "IEND");
  assert.ok(types.filter((t) => t === "IDAT").length > 1, "large data is split over IDATs");
  assert.deepEqual(new Set(types), new Set(["IHDR", "IDAT", "IEND"]));
  assert.deepEqual((await decodePng(a)).data, data);
  // which filters the adaptive choice used (from the inflated scanlines)
  const raw = new Uint8Array(inflateSync(idatOf(a)));
  const used = new Set<number>();
  for (let r = 0; r < h; r++) used.add(raw[r * (1 + 3 * w)]);
  assert.ok(used.has(0) && used.size >= 3, `filters used: ${[...used]}`);
  // palette images: PLTE and a trimmed tRNS, filter None
  const pal = await encodePngPixels({
    width: 3,
    height: 2,
    channels: 1,
    data: new Uint8Array([0, 1, 2, 2, 1, 0]),
    palette: new Uint8Array(9).fill(7),
    paletteAlpha: new Uint8Array([0, 255, 255]),
  });
  assert.deepEqual(chunkTypes(pal), ["IHDR", "PLTE", "tRNS", "IDAT", "IEND"]);
  const back = await decodePng(pal);
  assert.deepEqual([...back.paletteAlpha!], [0, 255, 255]);
  assert.deepEqual([...pngToRgba8(back).subarray(0, 8)], [7, 7, 7, 0, 7, 7, 7, 255]);
});

Deno.test("encodePngPixels rejects malformed pixels", async () => {
  const bad: [Partial<PngPixels> & Record<string, unknown>, RegExp][] = [
    [{ width: 0 }, /size must be positive integers/],
    [{ channels: 5 as 1 }, /channels must be 1, 2, 3 or 4/],
    [{ data: new Uint8Array(5) }, /needs 6 samples, got 5/],
    [{ data: [1, 2, 3, 4, 5, 6] as unknown as Uint8Array }, /Uint8Array \(8-bit\)/],
    [{ palette: new Uint8Array(4) }, /1 to 256 RGB triples/],
    [{ palette: new Uint8Array(6) }, /palette index 2 at sample 2: only 2 entries/],
    [{ paletteAlpha: new Uint8Array(1) }, /paletteAlpha without a palette/],
    [{ channels: 3, data: new Uint8Array(18), palette: new Uint8Array(9) }, /one 8-bit index/],
  ];
  for (const [patch, re] of bad) {
    const px = {
      width: 3,
      height: 2,
      channels: 1,
      data: new Uint8Array([0, 1, 2, 0, 1, 2]),
      ...patch,
    } as PngPixels;
    await assert.rejects(() => encodePngPixels(px), (e: Error) => {
      assert.ok(e instanceof TorchError, String(e));
      assert.match(e.message, /^encodePngPixels: /);
      assert.match(e.message, re);
      return true;
    });
  }
  await assert.rejects(
    () =>
      encodePngPixels({ width: 1, height: 1, channels: 1, data: new Uint8Array(1) }, {
        filter: "best" as PngFilter,
      }),
    /unknown filter "best"/,
  );
});

// ---- bad input -----------------------------------------------------------------------------

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Both decodePng and image.ts's decodeRgb refuse `bytes` with an ImageError naming `name`. */
async function rejectsNaming(
  bytes: Uint8Array,
  name: string,
  re: RegExp,
  pngOnly = false,
): Promise<void> {
  for (const decode of pngOnly ? [decodePng] : [decodePng, decodeRgb]) {
    await assert.rejects(() => decode(bytes, name), (e: Error) => {
      assert.ok(e instanceof ImageError, `${name}: ${e}`);
      assert.equal(e.path, name);
      assert.ok(e.message.startsWith(`${name}: `), e.message);
      assert.match(e.message, re);
      return true;
    });
  }
}

Deno.test("truncated PNGs: every prefix is refused, the ImageError naming the file", async () => {
  const file = "adam7_pal4_trns_7x5.png"; // several chunks, IDATs, an empty IDAT
  const png = await fixture(file);
  await decodePng(png, file);
  for (let n = 1; n < png.length; n++) {
    const re = n < 8 ? /: not a PNG/ : /: corrupt or truncated PNG \(/;
    await assert.rejects(() => decodePng(png.subarray(0, n), `cut${n}.png`), (e: Error) => {
      assert.ok(e instanceof ImageError && e.path === `cut${n}.png`, String(e));
      assert.match(e.message, re);
      return true;
    });
  }
  await rejectsNaming(png.subarray(0, png.length - 12), "noend.png", /before the IEND chunk/);
  await rejectsNaming(
    png.subarray(0, 60),
    "cut.png",
    /the file ends inside chunk "tEXt" at byte 49/,
  );
});

Deno.test("CRC mismatches in any chunk are refused, naming the chunk", async () => {
  const file = "pil_rgb8_33x17.png";
  const png = await fixture(file);
  const v = new DataView(png.buffer, png.byteOffset, png.byteLength);
  for (let pos = 8; pos < png.length;) {
    const n = v.getUint32(pos);
    const type = String.fromCharCode(...png.subarray(pos + 4, pos + 8));
    // a flipped bit in the type, in the data (when there is some) and in the CRC
    for (const at of [pos + 5, pos + 8 + (n >> 1), pos + 8 + n + 3]) {
      const bad = png.slice();
      bad[at] ^= 0x10;
      const shown = at === pos + 5 ? String.fromCharCode(...bad.subarray(pos + 4, pos + 8)) : type;
      await rejectsNaming(
        bad,
        "crc.png",
        new RegExp(
          `corrupt or truncated PNG \\(CRC mismatch in chunk ${escape(JSON.stringify(shown))} at ` +
            `byte ${pos}\\)`,
        ),
      );
    }
    pos += 12 + n;
  }
});

Deno.test("invalid headers and structure: ImageError with the reason", async () => {
  const rows = [0, 1, 2, 3, 4, 5, 6, 0, 7, 8, 9, 10, 11, 12];
  const idat = chunk("IDAT", new Uint8Array(deflateSync(new Uint8Array(rows))));
  const iend = chunk("IEND", new Uint8Array());
  const png = (...parts: Uint8Array[]) => concat([SIGNATURE, ...parts]);
  const good = rgbPng(rows);
  assert.deepEqual([...(await decodePng(good)).data], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  const plte = chunk("PLTE", new Uint8Array([1, 2, 3]));
  const cases: [string, Uint8Array, RegExp][] = [
    ["sig.png", concat([new Uint8Array(8), good.subarray(8)]), /not a PNG \(the 8-byte/],
    [
      "depth3.png",
      png(ihdr(2, 2, 3, 2), idat, iend),
      /invalid PNG \(IHDR has bit depth 3, not allowed for colour type 2 \(RGB: 8, 16\)\)/,
    ],
    [
      "pal16.png",
      png(ihdr(2, 2, 16, 3), plte, idat, iend),
      /bit depth 16, not allowed for colour type 3/,
    ],
    ["ct5.png", png(ihdr(2, 2, 8, 5), idat, iend), /colour type 5; expected 0, 2, 3, 4 or 6/],
    ["w0.png", png(ihdr(0, 2, 8, 2), idat, iend), /size 0×2; both sides must be 1 to 2\^31 − 1/],
    ["h2g.png", png(ihdr(2, 2 ** 31, 8, 2), idat, iend), /size 2×2147483648/],
    ["il2.png", png(ihdr(2, 2, 8, 2, 2), idat, iend), /interlace method 2, not 0 or 1/],
    [
      "ihdr12.png",
      png(chunk("IHDR", ihdr(2, 2, 8, 2).subarray(8, 20)), idat, iend),
      /IHDR has 12 bytes, not 13/,
    ],
    ["first.png", png(idat, ihdr(2, 2, 8, 2), iend), /the first chunk is IDAT, not IHDR/],
    ["two.png", png(ihdr(2, 2, 8, 2), ihdr(2, 2, 8, 2), idat, iend), /a second IHDR/],
    ["noidat.png", png(ihdr(2, 2, 8, 2), iend), /invalid PNG \(no IDAT chunk\)/],
    ["noplte.png", png(ihdr(2, 2, 8, 3), idat, iend), /colour type 3\) without a PLTE chunk/],
    [
      "plte4.png",
      png(ihdr(2, 2, 8, 3), chunk("PLTE", new Uint8Array(4)), idat, iend),
      /PLTE has 4 bytes/,
    ],
    [
      "split.png",
      png(ihdr(2, 2, 8, 2), idat, chunk("tEXt", new Uint8Array([65, 0])), idat, iend),
      /IDAT chunks are not consecutive/,
    ],
    ["crit.png", rgbPng(rows, [chunk("ABCD", new Uint8Array(3))]), /unknown critical chunk ABCD/],
    [
      "badtype.png",
      rgbPng(rows, [chunk("AB1D", new Uint8Array(3))]),
      /chunk "AB1D" at byte 33 has an invalid type/,
    ],
    [
      "filter5.png",
      rgbPng([0, 1, 2, 3, 4, 5, 6, 5, 7, 8, 9, 10, 11, 12]),
      /corrupt or truncated PNG \(unknown filter type 5/,
    ],
    [
      "short.png",
      rgbPng(rows.slice(0, 10)),
      /the image data inflates to 10 bytes; the header needs 14/,
    ],
    [
      "zlib.png",
      png(ihdr(2, 2, 8, 2), chunk("IDAT", new Uint8Array([1, 2, 3, 4, 5, 6])), iend),
      /the image data does not inflate/,
    ],
    [
      "huge.png",
      png(ihdr(2 ** 20, 2 ** 20, 8, 6), idat, iend),
      /PNG too large to decode: 1048576×1048576 RGBA/,
    ],
  ];
  for (const [name, bytes, re] of cases) await rejectsNaming(bytes, name, re, name === "sig.png");

  // ancillary chunks, unknown or not, are skipped; extra image data is ignored
  const ok = rgbPng(rows, [chunk("abCd", new Uint8Array(3)), chunk("tEXt", new Uint8Array(2))]);
  assert.deepEqual((await decodePng(ok)).data, (await decodePng(good)).data);
  const long = rgbPng([...rows, 0, 0, 0]);
  assert.deepEqual((await decodePng(long)).data, (await decodePng(good)).data);

  // from a file: the path names it
  const dir = await Deno.makeTempDir({ prefix: "dd-png-" });
  try {
    const path = `${dir}/bad.png`;
    await Deno.writeFile(path, good.subarray(0, good.length - 5));
    await assert.rejects(
      () => loadRgb(path),
      new RegExp(`^ImageError: ${path}: corrupt or truncated PNG`),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
