/**
 * A PNG codec written from the PNG specification (W3C, "Portable Network Graphics (PNG)
 * Specification", third edition), in TypeScript, with the web-standard `DecompressionStream` /
 * `CompressionStream` for zlib.
 *
 * Decoding reads every standard PNG: colour types 0 (grey), 2 (RGB), 3 (palette), 4
 * (grey+alpha) and 6 (RGBA) at every bit depth the specification allows for them (1, 2, 4, 8,
 * 16), `tRNS` transparency, Adam7 interlacing, all five filter types and image data split over
 * any number of `IDAT` chunks. Every chunk's CRC is checked; other ancillary chunks are skipped;
 * an unknown critical chunk is an error. {@link decodePng} keeps the samples as stored (palette
 * indices, grey levels at their own bit depth, 16-bit values), so that label images can be read
 * as class indices ({@link pngIndices}); {@link pngToRgb8} and {@link pngToRgba8} convert to
 * 8-bit colour.
 *
 * Encoding ({@link encodePngPixels}) writes 8- or 16-bit grey, grey+alpha, RGB and RGBA, and
 * 8-bit paletted images, with a filter chosen per row, and deterministic bytes (no time or text
 * chunks).
 *
 * @module
 */
import { TorchError } from "../torch/errors.ts";
import { ImageError } from "./error.ts";

/** PNG colour types: 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA. */
export type PngColorType = 0 | 2 | 3 | 4 | 6;

/** PNG bit depths (bits per sample; per palette index for colour type 3). */
export type PngBitDepth = 1 | 2 | 4 | 8 | 16;

/** A decoded PNG: its header and its samples as stored (not converted to 8-bit colour). */
export interface PngImage {
  /** width in pixels */
  width: number;
  /** height in pixels */
  height: number;
  /** 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA */
  colorType: PngColorType;
  /** bits per sample (per palette index for colour type 3) */
  bitDepth: PngBitDepth;
  /**
   * Samples per pixel in {@link PngImage.data}: 1 grey (or the palette index for colour type 3),
   * 2 grey+alpha, 3 RGB, 4 RGBA.
   */
  channels: 1 | 2 | 3 | 4;
  /** whether the file was Adam7-interlaced (`data` is de-interlaced either way) */
  interlaced: boolean;
  /**
   * `width · height · channels` samples, row-major, interleaved per pixel, at their stored
   * values: a `Uint16Array` for bit depth 16, otherwise a `Uint8Array` with one byte per sample
   * (bit depths 1, 2 and 4 unpacked, not rescaled: a 2-bit grey level is 0–3).
   */
  data: Uint8Array | Uint16Array;
  /** colour type 3: the palette (`PLTE`) as RGB triples, one per entry; otherwise null */
  palette: Uint8Array | null;
  /**
   * colour type 3 with a `tRNS` chunk: one alpha per palette entry (entries `tRNS` leaves out
   * are opaque, 255); otherwise null
   */
  paletteAlpha: Uint8Array | null;
  /**
   * colour types 0 and 2 with a `tRNS` chunk: the fully transparent grey level `[g]` or colour
   * `[r, g, b]`, in sample units of the bit depth; otherwise null
   */
  transparentColor: number[] | null;
}

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

const DEPTHS: Record<number, readonly number[]> = {
  0: [1, 2, 4, 8, 16],
  2: [8, 16],
  3: [1, 2, 4, 8],
  4: [8, 16],
  6: [8, 16],
};

const CHANNELS: Record<number, 1 | 2 | 3 | 4> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

const COLOR_NAMES: Record<number, string> = {
  0: "grey",
  2: "RGB",
  3: "palette",
  4: "grey+alpha",
  6: "RGBA",
};

/** The decoder refuses images whose filtered data or samples would exceed this many bytes. */
const MAX_BYTES = 2 ** 30;

/** The largest chunk length the specification allows. */
const MAX_CHUNK = 2 ** 31 - 1;

/** The encoder splits the compressed data into IDAT chunks of at most this many bytes. */
const IDAT_SIZE = 1 << 18;

// ---- CRC-32 (the ISO-HDLC polynomial that PNG uses), four bytes per step --------------------

const CRC_TABLES: Int32Array[] = (() => {
  const t0 = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t0[n] = c;
  }
  const tables = [t0];
  for (let k = 1; k < 4; k++) {
    const prev = tables[k - 1];
    const t = new Int32Array(256);
    for (let n = 0; n < 256; n++) t[n] = (prev[n] >>> 8) ^ t0[prev[n] & 0xff];
    tables.push(t);
  }
  return tables;
})();

/** The CRC-32 of `bytes[start, end)`, as PNG chunks carry it (an unsigned 32-bit number). */
function crc32(bytes: Uint8Array, start = 0, end = bytes.length): number {
  const [t0, t1, t2, t3] = CRC_TABLES;
  let c = -1;
  let i = start;
  for (const stop = end - 3; i < stop; i += 4) {
    c ^= bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24);
    c = t3[c & 0xff] ^ t2[(c >>> 8) & 0xff] ^ t1[(c >>> 16) & 0xff] ^ t0[c >>> 24];
  }
  for (; i < end; i++) c = t0[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

// ---- image geometry ------------------------------------------------------------------------

/** One sub-image: the whole image, or one Adam7 pass. */
interface Pass {
  x0: number;
  y0: number;
  dx: number;
  dy: number;
  /** width and height in pixels (0 when the pass is empty) */
  w: number;
  h: number;
  /** bytes per scanline, without the filter-type byte */
  rowBytes: number;
}

/** Adam7: the first column and row and the steps of each of the seven passes. */
const ADAM7: readonly (readonly [number, number, number, number])[] = [
  [0, 0, 8, 8],
  [4, 0, 8, 8],
  [0, 4, 4, 8],
  [2, 0, 4, 4],
  [0, 2, 2, 4],
  [1, 0, 2, 2],
  [0, 1, 1, 2],
];

function passes(width: number, height: number, bitsPerPixel: number, interlaced: boolean): Pass[] {
  const grid = interlaced ? ADAM7 : [[0, 0, 1, 1] as const];
  return grid.map(([x0, y0, dx, dy]) => {
    const w = width > x0 ? Math.ceil((width - x0) / dx) : 0;
    const h = height > y0 ? Math.ceil((height - y0) / dy) : 0;
    return { x0, y0, dx, dy, w, h, rowBytes: Math.ceil((w * bitsPerPixel) / 8) };
  });
}

/** Bytes of filtered image data (scanlines with their filter-type bytes) of all passes. */
function filteredSize(ps: Pass[]): number {
  let n = 0;
  for (const p of ps) if (p.w > 0 && p.h > 0) n += p.h * (1 + p.rowBytes);
  return n;
}

// ---- decoding ------------------------------------------------------------------------------

interface Header {
  width: number;
  height: number;
  bitDepth: PngBitDepth;
  colorType: PngColorType;
  interlaced: boolean;
}

function parseHeader(d: Uint8Array, invalid: (why: string) => ImageError): Header {
  if (d.length !== 13) throw invalid(`IHDR has ${d.length} bytes, not 13`);
  const v = new DataView(d.buffer, d.byteOffset, d.byteLength);
  const width = v.getUint32(0);
  const height = v.getUint32(4);
  const [bitDepth, colorType, compression, filter, interlace] = d.subarray(8, 13);
  if (width < 1 || width > MAX_CHUNK || height < 1 || height > MAX_CHUNK) {
    throw invalid(`IHDR gives the size ${width}×${height}; both sides must be 1 to 2^31 − 1`);
  }
  const depths = DEPTHS[colorType];
  if (depths === undefined) {
    throw invalid(`IHDR has colour type ${colorType}; expected 0, 2, 3, 4 or 6`);
  }
  if (!depths.includes(bitDepth)) {
    throw invalid(
      `IHDR has bit depth ${bitDepth}, not allowed for colour type ${colorType} ` +
        `(${COLOR_NAMES[colorType]}: ${depths.join(", ")})`,
    );
  }
  if (compression !== 0) throw invalid(`IHDR has compression method ${compression}, not 0`);
  if (filter !== 0) throw invalid(`IHDR has filter method ${filter}, not 0`);
  if (interlace > 1) throw invalid(`IHDR has interlace method ${interlace}, not 0 or 1`);
  return {
    width,
    height,
    bitDepth: bitDepth as PngBitDepth,
    colorType: colorType as PngColorType,
    interlaced: interlace === 1,
  };
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * Inflates the zlib stream split over `parts` into exactly `expected` bytes. Data beyond
 * `expected` is ignored (as libpng does); less is an error.
 */
async function inflate(
  parts: Uint8Array[],
  expected: number,
  corrupt: (why: string) => ImageError,
): Promise<Uint8Array> {
  const out = new Uint8Array(expected);
  let n = 0;
  const ds = new DecompressionStream("deflate");
  const writer = ds.writable.getWriter();
  // one write of the whole stream: many small IDAT chunks cost no more than one large one
  const z = parts.length === 1 ? parts[0] : concat(parts);
  const writing = writer.write(z as Uint8Array<ArrayBuffer>).then(() => writer.close());
  writing.catch(() => {}); // a corrupt stream surfaces on the reading side
  const reader = ds.readable.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const take = Math.min(value.length, expected - n);
      out.set(take === value.length ? value : value.subarray(0, take), n);
      n += take;
      if (n === expected && take < value.length) {
        reader.cancel().catch(() => {});
        break;
      }
    }
  } catch (e) {
    throw corrupt(`the image data does not inflate: ${e instanceof Error ? e.message : e}`);
  }
  if (n < expected) {
    throw corrupt(`the image data inflates to ${n} bytes; the header needs ${expected}`);
  }
  return out;
}

/**
 * The Paeth predictor of bytes a (left), b (above), c (upper left): whichever is closest to
 * a + b − c, ties going to a, then b. Branch-free (sign masks), which is several times faster
 * than comparisons on noisy data.
 */
function paeth(a: number, b: number, c: number): number {
  let pa = b - c; // |p − a| with p = a + b − c
  let pb = a - c; // |p − b|
  let pc = pa + pb; // |p − c|
  let m = pa >> 31;
  pa = (pa ^ m) - m;
  m = pb >> 31;
  pb = (pb ^ m) - m;
  m = pc >> 31;
  pc = (pc ^ m) - m;
  const notA = ((pb - pa) | (pc - pa)) >> 31; // −1 when b or c is strictly closer than a
  const useC = (pc - pb) >> 31; // −1 when c is strictly closer than b
  return (a & ~notA) | (notA & ((b & ~useC) | (c & useC)));
}

/** Undoes the scanline filters of one pass, in place; rows start at `offset` of `raw`. */
function unfilter(
  raw: Uint8Array,
  offset: number,
  p: Pass,
  bpp: number,
  corrupt: (why: string) => ImageError,
): void {
  const n = p.rowBytes;
  let prev = -1;
  let s = offset;
  for (let r = 0; r < p.h; r++) {
    const type = raw[s];
    s++;
    const end = s + n;
    switch (type) {
      case 0:
        break;
      case 1:
        for (let i = s + bpp; i < end; i++) raw[i] += raw[i - bpp];
        break;
      case 2:
        if (prev >= 0) { for (let i = 0; i < n; i++) raw[s + i] += raw[prev + i]; }
        break;
      case 3:
        if (prev >= 0) {
          for (let i = 0; i < bpp && i < n; i++) raw[s + i] += raw[prev + i] >> 1;
          for (let i = bpp; i < n; i++) raw[s + i] += (raw[s + i - bpp] + raw[prev + i]) >> 1;
        } else {
          for (let i = s + bpp; i < end; i++) raw[i] += raw[i - bpp] >> 1;
        }
        break;
      case 4:
        if (prev >= 0) {
          // left and upper-left are 0 for the first pixel: the predictor is the byte above
          for (let i = 0; i < bpp && i < n; i++) raw[s + i] += raw[prev + i];
          for (let i = bpp; i < n; i++) {
            raw[s + i] += paeth(raw[s + i - bpp], raw[prev + i], raw[prev + i - bpp]);
          }
        } else {
          // no row above: Paeth predicts from the left byte, as Sub
          for (let i = s + bpp; i < end; i++) raw[i] += raw[i - bpp];
        }
        break;
      default:
        throw corrupt(`unknown filter type ${type} in a scanline`);
    }
    prev = s;
    s = end;
  }
}

/** Copies one unfiltered pass's samples to their places in `out`. */
function scatter(
  raw: Uint8Array,
  offset: number,
  p: Pass,
  h: Header,
  ch: number,
  out: Uint8Array | Uint16Array,
): void {
  const W = h.width;
  const depth = h.bitDepth;
  const rowLen = 1 + p.rowBytes;
  if (depth === 8) {
    const o = out as Uint8Array;
    if (p.dx === 1) {
      for (let r = 0; r < p.h; r++) {
        const s = offset + r * rowLen + 1;
        o.set(raw.subarray(s, s + p.rowBytes), (p.y0 + r * p.dy) * W * ch);
      }
      return;
    }
    for (let r = 0; r < p.h; r++) {
      let s = offset + r * rowLen + 1;
      let d = ((p.y0 + r * p.dy) * W + p.x0) * ch;
      const step = p.dx * ch;
      for (let c = 0; c < p.w; c++, d += step) for (let k = 0; k < ch; k++) o[d + k] = raw[s++];
    }
    return;
  }
  if (depth === 16) {
    for (let r = 0; r < p.h; r++) {
      let s = offset + r * rowLen + 1;
      let d = ((p.y0 + r * p.dy) * W + p.x0) * ch;
      const step = p.dx * ch;
      for (let c = 0; c < p.w; c++, d += step) {
        for (let k = 0; k < ch; k++, s += 2) out[d + k] = (raw[s] << 8) | raw[s + 1];
      }
    }
    return;
  }
  // 1, 2 or 4 bits: one sample per pixel, packed from the high bits of each byte
  const mask = (1 << depth) - 1;
  for (let r = 0; r < p.h; r++) {
    const s = offset + r * rowLen + 1;
    let d = (p.y0 + r * p.dy) * W + p.x0;
    for (let c = 0, bit = 0; c < p.w; c++, bit += depth, d += p.dx) {
      out[d] = (raw[s + (bit >> 3)] >> (8 - depth - (bit & 7))) & mask;
    }
  }
}

/** `true` for the four ASCII letters a chunk type consists of. */
function validChunkType(b: Uint8Array, at: number): boolean {
  for (let i = at; i < at + 4; i++) {
    const x = b[i] | 0x20; // lower case
    if (x < 0x61 || x > 0x7a) return false;
  }
  return true;
}

/**
 * Decodes PNG bytes to their header and samples (see {@link PngImage}): every colour type and
 * bit depth, `tRNS`, Adam7 interlacing, all filter types, several `IDAT` chunks. Every chunk's
 * CRC is checked; ancillary chunks other than `tRNS` are ignored. `name` (e.g. the file path)
 * starts every error message.
 *
 * Throws {@link ImageError} for bytes that are not a PNG, corrupt or truncated data (a CRC
 * mismatch, a chunk running past the end, no `IEND`, image data that does not inflate or is
 * too short, an unknown filter type) and invalid files (a bad `IHDR`, a palette image without
 * `PLTE`, an unknown critical chunk).
 */
export async function decodePng(bytes: Uint8Array, name = "<png bytes>"): Promise<PngImage> {
  if (!(bytes instanceof Uint8Array)) {
    throw new ImageError(name, "PNG bytes must be a Uint8Array");
  }
  const corrupt = (why: string) => new ImageError(name, `corrupt or truncated PNG (${why})`);
  const invalid = (why: string) => new ImageError(name, `invalid PNG (${why})`);
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) {
    throw new ImageError(name, "not a PNG (the 8-byte PNG signature is missing)");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let header: Header | null = null;
  let plte: Uint8Array | null = null;
  let trns: Uint8Array | null = null;
  const idat: Uint8Array[] = [];
  let afterIdat = false; // a chunk other than IDAT followed the IDAT chunks
  let ended = false;
  let pos = 8;
  while (!ended) {
    if (pos + 8 > bytes.length) {
      throw corrupt(
        pos === bytes.length
          ? `the file ends at byte ${pos}, before the IEND chunk`
          : `the file ends inside the chunk header at byte ${pos}`,
      );
    }
    const length = view.getUint32(pos);
    const type = String.fromCharCode(
      bytes[pos + 4],
      bytes[pos + 5],
      bytes[pos + 6],
      bytes[pos + 7],
    );
    const what = `chunk ${JSON.stringify(type)} at byte ${pos}`;
    if (length > MAX_CHUNK) throw corrupt(`${what} claims ${length} bytes`);
    const start = pos + 8, end = start + length;
    if (end + 4 > bytes.length) {
      throw corrupt(`the file ends inside ${what} (${length} data bytes declared)`);
    }
    if (crc32(bytes, pos + 4, end) !== view.getUint32(end)) {
      throw corrupt(`CRC mismatch in ${what}`);
    }
    if (!validChunkType(bytes, pos + 4)) throw corrupt(`${what} has an invalid type`);
    const data = bytes.subarray(start, end);
    if (header === null && type !== "IHDR") throw invalid(`the first chunk is ${type}, not IHDR`);
    switch (type) {
      case "IHDR":
        if (header !== null) throw invalid(`a second IHDR at byte ${pos}`);
        header = parseHeader(data, invalid);
        break;
      case "PLTE":
        if (plte !== null) throw invalid(`a second PLTE at byte ${pos}`);
        if (idat.length > 0) throw invalid(`PLTE after the image data, at byte ${pos}`);
        if (length === 0 || length % 3 !== 0 || length > 768) {
          throw invalid(`PLTE has ${length} bytes; expected 3 per entry, 1 to 256 entries`);
        }
        plte = data;
        break;
      case "tRNS":
        // ancillary: a misplaced or malformed one is ignored, as by libpng
        if (idat.length === 0 && trns === null) trns = data;
        break;
      case "IDAT":
        if (afterIdat) throw invalid(`IDAT chunks are not consecutive (byte ${pos})`);
        idat.push(data);
        break;
      case "IEND":
        ended = true;
        break;
      default:
        if ((bytes[pos + 4] & 0x20) === 0) throw invalid(`unknown critical chunk ${type}`);
    }
    if (type !== "IDAT" && idat.length > 0) afterIdat = true;
    pos = end + 4;
  }
  const h = header as Header; // the loop only ends after IHDR (IEND before it is refused)
  if (idat.length === 0) throw invalid("no IDAT chunk");
  const { width, height, colorType, bitDepth } = h;
  const ch = CHANNELS[colorType];
  let palette: Uint8Array | null = null;
  let paletteAlpha: Uint8Array | null = null;
  let transparentColor: number[] | null = null;
  if (colorType === 3) {
    if (plte === null) throw invalid("a palette image (colour type 3) without a PLTE chunk");
    palette = plte.slice();
    const entries = plte.length / 3;
    if (trns !== null && trns.length <= entries) {
      paletteAlpha = new Uint8Array(entries).fill(255);
      paletteAlpha.set(trns);
    }
  } else if (trns !== null) {
    const tv = new DataView(trns.buffer, trns.byteOffset, trns.byteLength);
    if (colorType === 0 && trns.length === 2) transparentColor = [tv.getUint16(0)];
    if (colorType === 2 && trns.length === 6) {
      transparentColor = [tv.getUint16(0), tv.getUint16(2), tv.getUint16(4)];
    }
  }

  const bitsPerPixel = ch * bitDepth;
  const ps = passes(width, height, bitsPerPixel, h.interlaced);
  const size = filteredSize(ps);
  const samples = width * height * ch;
  if (size > MAX_BYTES || samples * (bitDepth === 16 ? 2 : 1) > MAX_BYTES) {
    throw new ImageError(
      name,
      `PNG too large to decode: ${width}×${height} ${COLOR_NAMES[colorType]}`,
    );
  }
  const raw = await inflate(idat, size, corrupt);
  const out = bitDepth === 16 ? new Uint16Array(samples) : new Uint8Array(samples);
  const bpp = Math.max(1, bitsPerPixel >> 3);
  let offset = 0;
  for (const p of ps) {
    if (p.w === 0 || p.h === 0) continue;
    unfilter(raw, offset, p, bpp, corrupt);
    scatter(raw, offset, p, h, ch, out);
    offset += p.h * (1 + p.rowBytes);
  }
  return {
    width,
    height,
    colorType,
    bitDepth,
    channels: ch,
    interlaced: h.interlaced,
    data: out,
    palette,
    paletteAlpha,
    transparentColor,
  };
}

// ---- conversions ---------------------------------------------------------------------------

/**
 * The samples at 8 bits: 16-bit values keep their high byte (as libpng's `strip_16` and
 * Pillow); 1-, 2- and 4-bit grey levels are scaled to 0–255 (×255, ×85, ×17); palette indices
 * are kept.
 */
function samples8(img: PngImage): Uint8Array {
  const { data, bitDepth, colorType } = img;
  if (bitDepth === 16) {
    const out = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) out[i] = data[i] >> 8;
    return out;
  }
  if (bitDepth === 8 || colorType === 3) return data as Uint8Array;
  const scale = 255 / ((1 << bitDepth) - 1);
  const out = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = data[i] * scale;
  return out;
}

function checkImage(img: PngImage, op: string): void {
  const { width, height, channels, data } = img;
  if (data.length !== width * height * channels) {
    throw new TorchError(
      op,
      `a ${width}×${height} image with ${channels} channels needs ${width * height * channels} ` +
        `samples, got ${data.length}`,
    );
  }
  if (img.colorType === 3 && img.palette === null) {
    throw new TorchError(op, "a palette image (colour type 3) without a palette");
  }
}

/**
 * A decoded PNG as 8-bit RGB, `width · height · 3` bytes (r, g, b, r, g, b, …): alpha dropped,
 * grey repeated, palette indices looked up (an index past the palette's end is black), 16-bit
 * samples reduced to their high byte, 1/2/4-bit grey scaled to 0–255.
 */
export function pngToRgb8(img: PngImage): Uint8Array {
  checkImage(img, "pngToRgb8");
  const n = img.width * img.height;
  const s = samples8(img);
  const out = new Uint8Array(n * 3);
  switch (img.colorType) {
    case 0:
    case 4: {
      const ch = img.channels;
      for (let i = 0, j = 0, o = 0; i < n; i++, j += ch, o += 3) {
        const g = s[j];
        out[o] = g;
        out[o + 1] = g;
        out[o + 2] = g;
      }
      break;
    }
    case 2:
      out.set(s);
      break;
    case 3: {
      const pal = img.palette as Uint8Array;
      const entries = pal.length / 3;
      for (let i = 0, o = 0; i < n; i++, o += 3) {
        const k = s[i];
        if (k < entries) {
          out[o] = pal[3 * k];
          out[o + 1] = pal[3 * k + 1];
          out[o + 2] = pal[3 * k + 2];
        }
      }
      break;
    }
    case 6:
      for (let i = 0, j = 0, o = 0; i < n; i++, j += 4, o += 3) {
        out[o] = s[j];
        out[o + 1] = s[j + 1];
        out[o + 2] = s[j + 2];
      }
      break;
  }
  return out;
}

/**
 * A decoded PNG as 8-bit RGBA, `width · height · 4` bytes, colour as {@link pngToRgb8} and
 * alpha from the alpha channel (high byte when 16-bit), the palette's `tRNS` alphas, or 0 for
 * pixels equal to a grey / RGB `tRNS` colour (compared at full precision); otherwise 255.
 */
export function pngToRgba8(img: PngImage): Uint8Array {
  const rgb = pngToRgb8(img);
  const n = img.width * img.height;
  const out = new Uint8Array(n * 4);
  for (let i = 0, o = 0; i < n; i++, o += 4) {
    out[o] = rgb[3 * i];
    out[o + 1] = rgb[3 * i + 1];
    out[o + 2] = rgb[3 * i + 2];
    out[o + 3] = 255;
  }
  const { colorType, data, transparentColor: key } = img;
  if (colorType === 4 || colorType === 6) {
    const s = samples8(img);
    const ch = img.channels;
    for (let i = 0; i < n; i++) out[4 * i + 3] = s[i * ch + ch - 1];
  } else if (colorType === 3 && img.paletteAlpha !== null) {
    const alpha = img.paletteAlpha;
    for (let i = 0; i < n; i++) if (data[i] < alpha.length) out[4 * i + 3] = alpha[data[i]];
  } else if (colorType === 0 && key !== null) {
    for (let i = 0; i < n; i++) if (data[i] === key[0]) out[4 * i + 3] = 0;
  } else if (colorType === 2 && key !== null) {
    for (let i = 0; i < n; i++) {
      if (data[3 * i] === key[0] && data[3 * i + 1] === key[1] && data[3 * i + 2] === key[2]) {
        out[4 * i + 3] = 0;
      }
    }
  }
  return out;
}

/**
 * A label image's class indices, `width · height` bytes: the palette index of each pixel for a
 * palette PNG (e.g. Pascal VOC's `SegmentationClass`), the stored grey level for a grey PNG
 * (e.g. `SegmentationClassAug`; 1/2/4-bit levels are not rescaled; 16-bit levels must be at most
 * 255). Throws {@link ImageError} naming `name` for other colour types.
 */
export function pngIndices(img: PngImage, name = "<png bytes>"): Uint8Array {
  checkImage(img, "pngIndices");
  const { colorType, bitDepth, data } = img;
  if (colorType !== 0 && colorType !== 3) {
    throw new ImageError(
      name,
      `expected a palette or grey PNG of class indices, got ${COLOR_NAMES[colorType]} ` +
        `(colour type ${colorType})`,
    );
  }
  if (bitDepth !== 16) return (data as Uint8Array).slice();
  const out = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) {
    if (data[i] > 255) {
      throw new ImageError(name, `16-bit grey level ${data[i]} is not a class index (0–255)`);
    }
    out[i] = data[i];
  }
  return out;
}

// ---- encoding ------------------------------------------------------------------------------

/** Pixels for {@link encodePngPixels}. */
export interface PngPixels {
  /** width in pixels */
  width: number;
  /** height in pixels */
  height: number;
  /**
   * samples per pixel: 1 grey (or the palette index when `palette` is given), 2 grey+alpha,
   * 3 RGB, 4 RGBA
   */
  channels: 1 | 2 | 3 | 4;
  /**
   * `width · height · channels` samples, row-major, interleaved per pixel: a `Uint8Array`
   * for an 8-bit PNG, a `Uint16Array` for a 16-bit one (not with a palette)
   */
  data: Uint8Array | Uint16Array;
  /** RGB triples, 1 to 256 entries: writes an 8-bit palette PNG whose indices are `data` */
  palette?: Uint8Array;
  /** with `palette`: one alpha per entry (up to the palette's length; missing ones are 255) */
  paletteAlpha?: Uint8Array;
}

/** Scanline filters of {@link encodePngPixels}. */
export type PngFilter = "adaptive" | "none" | "sub" | "up" | "average" | "paeth";

/** Options of {@link encodePngPixels}. */
export interface PngEncodeOptions {
  /**
   * The filter of every scanline, or "adaptive" (the default): per row, the filter whose
   * output has the smallest sum of absolute (signed) bytes; "none" for palette images.
   */
  filter?: PngFilter;
}

const FILTER_TYPES: Record<PngFilter, number> = {
  adaptive: -1,
  none: 0,
  sub: 1,
  up: 2,
  average: 3,
  paeth: 4,
};

/**
 * Writes row `s` of `src` (previous row at `prev`, or −1 for none; `n` bytes) filtered with
 * `type` to `out[o, o + n)`, and returns the sum of the filtered bytes taken as signed, the
 * usual estimate of how well the row will compress.
 */
function filterRow(
  src: Uint8Array,
  s: number,
  prev: number,
  n: number,
  bpp: number,
  type: number,
  out: Uint8Array,
  o: number,
): number {
  const first = Math.min(bpp, n);
  switch (type) {
    case 0:
      out.set(src.subarray(s, s + n), o);
      break;
    case 1:
      for (let i = 0; i < first; i++) out[o + i] = src[s + i];
      for (let i = bpp; i < n; i++) out[o + i] = src[s + i] - src[s + i - bpp];
      break;
    case 2:
      if (prev < 0) out.set(src.subarray(s, s + n), o);
      else for (let i = 0; i < n; i++) out[o + i] = src[s + i] - src[prev + i];
      break;
    case 3:
      if (prev < 0) {
        for (let i = 0; i < first; i++) out[o + i] = src[s + i];
        for (let i = bpp; i < n; i++) out[o + i] = src[s + i] - (src[s + i - bpp] >> 1);
      } else {
        for (let i = 0; i < first; i++) out[o + i] = src[s + i] - (src[prev + i] >> 1);
        for (let i = bpp; i < n; i++) {
          out[o + i] = src[s + i] - ((src[s + i - bpp] + src[prev + i]) >> 1);
        }
      }
      break;
    case 4:
      if (prev < 0) {
        for (let i = 0; i < first; i++) out[o + i] = src[s + i];
        for (let i = bpp; i < n; i++) out[o + i] = src[s + i] - src[s + i - bpp];
      } else {
        for (let i = 0; i < first; i++) out[o + i] = src[s + i] - src[prev + i];
        for (let i = bpp; i < n; i++) {
          out[o + i] = src[s + i] - paeth(src[s + i - bpp], src[prev + i], src[prev + i - bpp]);
        }
      }
      break;
  }
  let sum = 0;
  for (let i = o; i < o + n; i++) {
    const v = out[i];
    sum += v < 128 ? v : 256 - v;
  }
  return sum;
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  v.setUint32(8 + data.length, crc32(out, 4, 8 + data.length));
  return out;
}

async function deflate(data: Uint8Array): Promise<Uint8Array> {
  const cs = new CompressionStream("deflate");
  const writer = cs.writable.getWriter();
  const writing = writer.write(data as Uint8Array<ArrayBuffer>).then(() => writer.close());
  const parts: Uint8Array[] = [];
  const reader = cs.readable.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
  }
  await writing;
  return parts.length === 1 ? parts[0] : concat(parts);
}

/**
 * Encodes pixels as a PNG (see {@link PngPixels}): 8- or 16-bit grey, grey+alpha, RGB or RGBA,
 * or 8-bit palette, not interlaced, with a filter chosen per row ({@link PngEncodeOptions}) and
 * zlib's default compression. The bytes hold only IHDR, PLTE and tRNS (palette images), IDAT
 * and IEND, so the same pixels always give the same bytes. Throws `TorchError` for malformed
 * pixels (a wrong sample count, a palette index past the palette).
 */
export async function encodePngPixels(
  img: PngPixels,
  opts: PngEncodeOptions = {},
): Promise<Uint8Array> {
  const op = "encodePngPixels";
  const { width, height, channels, data, palette, paletteAlpha } = img;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new TorchError(op, `the size must be positive integers, got ${width}×${height}`);
  }
  if (![1, 2, 3, 4].includes(channels)) {
    throw new TorchError(op, `channels must be 1, 2, 3 or 4, got ${channels}`);
  }
  const is16 = data instanceof Uint16Array;
  if (!is16 && !(data instanceof Uint8Array)) {
    throw new TorchError(op, "data must be a Uint8Array (8-bit) or a Uint16Array (16-bit)");
  }
  if (data.length !== width * height * channels) {
    throw new TorchError(
      op,
      `a ${width}×${height} image with ${channels} channels needs ${width * height * channels} ` +
        `samples, got ${data.length}`,
    );
  }
  const filterName = opts.filter ?? "adaptive";
  if (!(filterName in FILTER_TYPES)) {
    throw new TorchError(op, `unknown filter ${JSON.stringify(filterName)}`);
  }
  let colorType: PngColorType = ([0, 0, 4, 2, 6] as const)[channels];
  const extra: Uint8Array[] = [];
  if (palette !== undefined) {
    if (channels !== 1 || is16) {
      throw new TorchError(
        op,
        "a palette needs one 8-bit index per pixel (channels 1, Uint8Array)",
      );
    }
    const entries = palette.length / 3;
    if (!Number.isInteger(entries) || entries < 1 || entries > 256) {
      throw new TorchError(
        op,
        `the palette needs 1 to 256 RGB triples, got ${palette.length} bytes`,
      );
    }
    for (let i = 0; i < data.length; i++) {
      if (data[i] >= entries) {
        throw new TorchError(
          op,
          `palette index ${data[i]} at sample ${i}: only ${entries} entries`,
        );
      }
    }
    colorType = 3;
    extra.push(chunk("PLTE", palette));
    if (paletteAlpha !== undefined) {
      if (paletteAlpha.length > entries) {
        throw new TorchError(
          op,
          `paletteAlpha has ${paletteAlpha.length} entries, the palette ${entries}`,
        );
      }
      let k = paletteAlpha.length;
      while (k > 0 && paletteAlpha[k - 1] === 255) k--;
      if (k > 0) extra.push(chunk("tRNS", paletteAlpha.subarray(0, k)));
    }
  } else if (paletteAlpha !== undefined) {
    throw new TorchError(op, "paletteAlpha without a palette");
  }

  // samples as big-endian bytes, one unfiltered row after another
  const bytesPerSample = is16 ? 2 : 1;
  const bpp = channels * bytesPerSample;
  const rowBytes = width * bpp;
  let src: Uint8Array;
  if (is16) {
    src = new Uint8Array(data.length * 2);
    for (let i = 0; i < data.length; i++) {
      src[2 * i] = data[i] >> 8;
      src[2 * i + 1] = data[i] & 0xff;
    }
  } else {
    src = data as Uint8Array;
  }
  const fixed = colorType === 3 && filterName === "adaptive" ? 0 : FILTER_TYPES[filterName];
  const stride = 1 + rowBytes;
  const filtered = new Uint8Array(height * stride);
  const trial = fixed < 0 ? new Uint8Array(rowBytes) : filtered;
  for (let r = 0; r < height; r++) {
    const s = r * rowBytes;
    const prev = r > 0 ? s - rowBytes : -1;
    const o = r * stride;
    if (fixed >= 0) {
      filtered[o] = fixed;
      filterRow(src, s, prev, rowBytes, bpp, fixed, filtered, o + 1);
      continue;
    }
    // adaptive: the filter with the smallest sum of signed bytes (ties to the lower type)
    let best = filterRow(src, s, prev, rowBytes, bpp, 0, filtered, o + 1);
    filtered[o] = 0;
    for (let t = 1; t < 5; t++) {
      const cost = filterRow(src, s, prev, rowBytes, bpp, t, trial, 0);
      if (cost < best) {
        best = cost;
        filtered[o] = t;
        filtered.set(trial, o + 1);
      }
    }
  }
  const z = await deflate(filtered);

  const ihdr = new Uint8Array(13);
  const hv = new DataView(ihdr.buffer);
  hv.setUint32(0, width);
  hv.setUint32(4, height);
  ihdr[8] = is16 ? 16 : 8;
  ihdr[9] = colorType;
  const parts = [new Uint8Array(SIGNATURE), chunk("IHDR", ihdr), ...extra];
  for (let o = 0; o < z.length; o += IDAT_SIZE) {
    parts.push(chunk("IDAT", z.subarray(o, o + IDAT_SIZE)));
  }
  parts.push(chunk("IEND", new Uint8Array()));
  return concat(parts);
}
