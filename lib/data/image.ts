/**
 * Image IO and the standard ImageNet-style preprocessing: PNG / JPEG to float tensors
 * [3, H, W] in [0, 1], PNG out, torchvision-equivalent `Resize(size)` + `CenterCrop(size)`, and
 * ImageNet mean/std normalisation; segmentation label PNGs (palette or grey) to class-index
 * masks [H, W].
 *
 * PNG goes through this project's own codec (`png.ts`, TypeScript with the web-standard zlib
 * streams). JPEG uses `imagescript` (pure JS + WebAssembly), loaded on the first JPEG: importing
 * this module (or `mod.ts`) needs neither the package nor a network, and PNG never loads it.
 *
 * @module
 */
import {
  fromTypedArray,
  interpolate,
  pad,
  scope,
  type Tensor,
  TorchError,
  writeFileAtomic,
} from "../torch/mod.ts";
import { ImageError } from "./error.ts";
import { decodePng, encodePngPixels, pngIndices, pngToRgb8 } from "./png.ts";

export { ImageError };

// imagescript (for JPEG only) is imported lazily, by a specifier that Deno does not analyse
// statically, so that importing mod.ts (and type-checking anything that does) needs neither the
// package nor a network: the CUDA machines are offline. The full `npm:` specifier, not
// deno.json's bare "imagescript", because mod.ts is also imported from URLs, where this project's
// import map does not apply. Keep the version in step with deno.json's "imports".
const IMAGESCRIPT: string = ["npm:imagescript", "1.3.1"].join("@");

/** The part of imagescript's `Image` used here (JPEG only; PNG goes through png.ts). */
interface CodecImage {
  readonly width: number;
  readonly height: number;
  readonly bitmap: Uint8ClampedArray;
  encodeJPEG(quality?: number): Promise<Uint8Array>;
}

interface ImageScript {
  Image: {
    new (width: number, height: number): CodecImage;
    decode(data: Uint8Array): Promise<CodecImage>;
  };
}

let imagescript: Promise<ImageScript> | null = null;

const FLOATING: readonly string[] = ["float32", "float64", "float16", "bfloat16"];

function loadImageScript(): Promise<ImageScript> {
  imagescript ??= (import(IMAGESCRIPT) as Promise<ImageScript>).catch((e) => {
    imagescript = null;
    throw new Error(
      `could not load the image codec package ${IMAGESCRIPT} (is the npm registry or a Deno ` +
        `cache holding it reachable?): ${e?.message ?? e}`,
    );
  });
  return imagescript;
}

/** The image formats this module decodes. */
export type ImageFormat = "png" | "jpeg";

/** The format of encoded image bytes from their signature, or null when neither PNG nor JPEG. */
export function imageFormat(bytes: Uint8Array): ImageFormat | null {
  const b = bytes;
  if (
    b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47 &&
    b[4] === 0x0d && b[5] === 0x0a && b[6] === 0x1a && b[7] === 0x0a
  ) return "png";
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "jpeg";
  return null;
}

function describeSignature(b: Uint8Array): string {
  const ascii = (n: number) => String.fromCharCode(...b.subarray(0, n));
  if (ascii(4) === "GIF8") return "a GIF";
  if (ascii(2) === "BM") return "a BMP";
  if (
    ascii(4) === "RIFF" && b.length >= 12 && String.fromCharCode(...b.subarray(8, 12)) === "WEBP"
  ) {
    return "a WebP";
  }
  if (ascii(4) === "II*\0" || ascii(4) === "MM\0*") return "a TIFF";
  const hex = [...b.subarray(0, 8)].map((x) => x.toString(16).padStart(2, "0")).join(" ");
  return `not an image this module knows (it starts with bytes ${hex})`;
}

/** Decoded 8-bit RGB pixels, row-major and interleaved (r, g, b, r, g, b, …). */
export interface RgbImage {
  /** width in pixels */
  width: number;
  /** height in pixels */
  height: number;
  /** width · height · 3 bytes */
  data: Uint8Array;
}

/**
 * Decodes PNG or JPEG bytes to 8-bit RGB (alpha dropped, grey and palette expanded to RGB,
 * 16-bit PNG reduced to 8 bits). `name` (e.g. the file path) starts every error message.
 * Throws {@link ImageError} on unsupported or corrupt data.
 */
export async function decodeRgb(bytes: Uint8Array, name = "<image bytes>"): Promise<RgbImage> {
  if (!(bytes instanceof Uint8Array)) {
    throw new ImageError(name, "image bytes must be a Uint8Array");
  }
  if (bytes.length === 0) throw new ImageError(name, "empty file, not an image");
  const format = imageFormat(bytes);
  if (format === null) {
    throw new ImageError(
      name,
      `unsupported image format: ${describeSignature(bytes)}; expected PNG or JPEG`,
    );
  }
  if (format === "png") {
    // our own codec: its errors are ImageErrors naming `name` ("corrupt or truncated PNG (…)",
    // "invalid PNG (…)")
    const png = await decodePng(bytes, name);
    return { width: png.width, height: png.height, data: pngToRgb8(png) };
  }
  const { Image } = await loadImageScript();
  let img;
  try {
    img = await Image.decode(bytes);
  } catch (e) {
    // corrupt data surfaces as codec errors or as a WebAssembly trap ("unreachable"); both are
    // recoverable and the codec stays usable
    const why = e instanceof Error ? e.message : String(e);
    throw new ImageError(name, `corrupt or truncated JPEG (${why})`);
  }
  const { width, height, bitmap } = img;
  if (!(width > 0 && height > 0) || bitmap.length !== width * height * 4) {
    throw new ImageError(name, `decoded JPEG has an invalid size ${width}×${height}`);
  }
  const n = width * height;
  const data = new Uint8Array(n * 3);
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    data[3 * i] = bitmap[j];
    data[3 * i + 1] = bitmap[j + 1];
    data[3 * i + 2] = bitmap[j + 2];
  }
  return { width, height, data };
}

/** 8-bit RGB pixels to a float32 tensor [3, H, W] in [0, 1] (torchvision's `to_tensor`). */
export function rgbToTensor(img: RgbImage): Tensor {
  const { width, height, data } = img;
  const n = width * height;
  if (data.length !== n * 3) {
    throw new TorchError(
      "rgbToTensor",
      `${width}×${height} RGB needs ${n * 3} bytes, got ${data.length}`,
    );
  }
  const out = new Float32Array(n * 3);
  for (let i = 0; i < n; i++) {
    out[i] = data[3 * i] / 255;
    out[n + i] = data[3 * i + 1] / 255;
    out[2 * n + i] = data[3 * i + 2] / 255;
  }
  return fromTypedArray(out, [3, height, width]);
}

/**
 * Decodes PNG or JPEG bytes to a float32 tensor [3, H, W] in [0, 1] (RGB; alpha dropped, grey
 * becomes three equal channels). `name` (e.g. the file path) starts every error message.
 * Throws {@link ImageError} on unsupported or corrupt data.
 */
export async function decodeImage(bytes: Uint8Array, name = "<image bytes>"): Promise<Tensor> {
  return rgbToTensor(await decodeRgb(bytes, name));
}

async function readBytes(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new ImageError(path, "file not found");
    if (e instanceof Deno.errors.IsADirectory) throw new ImageError(path, "is a directory");
    throw new ImageError(path, `could not read: ${(e as Error).message}`);
  }
}

/**
 * Reads a PNG or JPEG file into a float32 tensor [3, H, W] in [0, 1] (see
 * {@link decodeImage}). Throws {@link ImageError} naming the file when it is missing,
 * unreadable, corrupt or of another format.
 */
export async function loadImage(path: string): Promise<Tensor> {
  return decodeImage(await readBytes(path), path);
}

/** Reads a PNG or JPEG file as 8-bit RGB (see {@link decodeRgb}). */
export async function loadRgb(path: string): Promise<RgbImage> {
  return decodeRgb(await readBytes(path), path);
}

/**
 * An image tensor to 8-bit interleaved samples, 1 (grey) or 3 (RGB) per pixel; see
 * {@link encodePng} for the accepted inputs.
 */
function toPixels(
  x: Tensor,
  op: string,
): { width: number; height: number; channels: 1 | 3; data: Uint8Array } {
  const s = x.shape;
  let C: number, H: number, W: number;
  if (s.length === 2) [C, H, W] = [1, s[0], s[1]];
  else if (s.length === 3 && (s[0] === 3 || s[0] === 1)) [C, H, W] = s as [number, number, number];
  else {
    throw new TorchError(
      op,
      `expected an image [3, H, W], [1, H, W] or [H, W], got [${s.join(", ")}]`,
    );
  }
  if (H < 1 || W < 1) throw new TorchError(op, `empty image ${H}×${W}`);
  const isU8 = x.dtype === "uint8";
  if (!isU8 && !FLOATING.includes(x.dtype)) {
    throw new TorchError(op, `expected a floating or uint8 tensor, got ${x.dtype}`);
  }
  const values = scope(() =>
    x.to({ device: "cpu", dtype: isU8 ? "uint8" : "float32" }).contiguous().toTypedArray()
  ) as Uint8Array | Float32Array;
  const n = H * W;
  const channels = C === 1 ? 1 : 3;
  const data = new Uint8Array(n * channels);
  for (let c = 0; c < channels; c++) {
    const src = c * n;
    for (let i = 0; i < n; i++) {
      const v = values[src + i];
      data[channels * i + c] = isU8 ? v : v > 0 ? (v >= 1 ? 255 : Math.floor(v * 255 + 0.5)) : 0;
    }
  }
  return { width: W, height: H, channels, data };
}

/**
 * Encodes an image tensor as an 8-bit PNG: RGB for [3, H, W], grey for [1, H, W] or [H, W]
 * (so a uint8 mask reads back as grey class indices). Floating tensors hold values in [0, 1]:
 * they are clamped and rounded to 8 bits as torchvision's `save_image` (`⌊255·v + 0.5⌋`, NaN as
 * 0); uint8 tensors are written as they are (e.g. masks). The bytes are deterministic (no
 * timestamp or other metadata).
 */
export async function encodePng(x: Tensor): Promise<Uint8Array> {
  return await encodePngPixels(toPixels(x, "encodePng"));
}

/**
 * Encodes an image tensor as JPEG at `quality` (1–100, default 90); the inputs are those of
 * {@link encodePng}. Lossy: for fixtures and previews, not for masks.
 */
export async function encodeJpeg(x: Tensor, quality = 90): Promise<Uint8Array> {
  if (!Number.isInteger(quality) || quality < 1 || quality > 100) {
    throw new TorchError("encodeJpeg", `quality must be an integer in 1..100, got ${quality}`);
  }
  const { width, height, channels, data } = toPixels(x, "encodeJpeg");
  const { Image } = await loadImageScript();
  const img = new Image(width, height);
  const rgba = img.bitmap;
  for (let i = 0, n = width * height; i < n; i++) {
    for (let c = 0; c < 3; c++) rgba[4 * i + c] = data[channels * i + (channels === 1 ? 0 : c)];
    rgba[4 * i + 3] = 255;
  }
  return await img.encodeJPEG(quality);
}

/**
 * Writes an image tensor as a PNG file (see {@link encodePng}) atomically: the bytes go to a
 * temporary file in the same directory, which is then renamed over `path`.
 */
export async function savePng(path: string, x: Tensor): Promise<void> {
  const bytes = await encodePng(x);
  try {
    await writeFileAtomic(path, bytes);
  } catch (e) {
    throw new ImageError(path, `could not write: ${(e as Error).message}`);
  }
}

/** ImageNet channel means (R, G, B) used by {@link imagenetNormalize}. */
export const IMAGENET_MEAN: readonly [number, number, number] = [0.485, 0.456, 0.406];
/** ImageNet channel standard deviations (R, G, B) used by {@link imagenetNormalize}. */
export const IMAGENET_STD: readonly [number, number, number] = [0.229, 0.224, 0.225];

function checkImage(x: Tensor, op: string): void {
  if (x.ndim !== 3 && x.ndim !== 4) {
    throw new TorchError(
      op,
      `expected an image [C, H, W] or a batch [B, C, H, W], got [${x.shape.join(", ")}]`,
    );
  }
  if (!FLOATING.includes(x.dtype)) {
    throw new TorchError(op, `expected a floating tensor, got ${x.dtype}`);
  }
}

/**
 * `(x − mean) / std` per channel with the ImageNet statistics, for an image [3, H, W] or a
 * batch [B, 3, H, W] in [0, 1] (torchvision's `Normalize`, same float32 arithmetic).
 */
export function imagenetNormalize(x: Tensor): Tensor {
  checkImage(x, "imagenetNormalize");
  const c = x.size(-3);
  if (c !== 3) throw new TorchError("imagenetNormalize", `expected 3 channels, got ${c}`);
  return scope(() => {
    // from float64, as torchvision's as_tensor(mean, dtype=x.dtype)
    const opts = { dtype: x.dtype, device: x.device };
    const mean = fromTypedArray(Float64Array.from(IMAGENET_MEAN), [3, 1, 1], opts);
    const std = fromTypedArray(Float64Array.from(IMAGENET_STD), [3, 1, 1], opts);
    return x.sub(mean).div(std);
  });
}

/**
 * The output [height, width] of torchvision's `Resize(size)` for an h×w image: the shorter
 * side becomes `size`, the longer `⌊size · long / short⌋` (aspect ratio kept).
 */
export function resizedSize(h: number, w: number, size: number): [number, number] {
  if (!Number.isInteger(size) || size < 1) {
    throw new TorchError("resize", `size must be a positive integer, got ${size}`);
  }
  if (h <= w) return [size, Math.floor((size * w) / h)];
  return [Math.floor((size * h) / w), size];
}

/**
 * torchvision's `Resize(size)` with bicubic interpolation and antialiasing (as on PIL images):
 * the shorter side becomes `size`, aspect ratio kept. `x` is [C, H, W] or [B, C, H, W],
 * floating. Returns the input values unchanged (a copy) when the size already matches. With
 * `clamp` (default true) the result is clamped to [0, 1], as PIL's 8-bit output is.
 */
export function resizeShorterSide(
  x: Tensor,
  size: number,
  opts: { clamp?: boolean } = {},
): Tensor {
  checkImage(x, "resize");
  const [h, w] = [x.size(-2), x.size(-1)];
  const [oh, ow] = resizedSize(h, w, size);
  if (oh === h && ow === w) return x.clone();
  return scope(() => {
    const batch = x.ndim === 4 ? x : x.unsqueeze(0);
    let out = interpolate(batch, { size: [oh, ow], mode: "bicubic", antialias: true });
    if (opts.clamp ?? true) out = out.clamp(0, 1);
    return x.ndim === 4 ? out : out.squeeze(0);
  });
}

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d < 0.5) return f;
  if (d > 0.5) return f + 1;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * torchvision's `CenterCrop(size)` on [C, H, W] or [B, C, H, W]: the top-left corner is
 * `round((H − h) / 2)`, `round((W − w) / 2)` (Python rounding); an image smaller than the crop
 * is zero-padded first, as torchvision does. `size` is one side or [h, w].
 */
export function centerCrop(x: Tensor, size: number | readonly [number, number]): Tensor {
  if (x.ndim < 2) {
    throw new TorchError("centerCrop", `expected an image, got [${x.shape.join(", ")}]`);
  }
  const [ch, cw] = typeof size === "number" ? [size, size] : size;
  if (!Number.isInteger(ch) || !Number.isInteger(cw) || ch < 1 || cw < 1) {
    throw new TorchError("centerCrop", `crop size must be positive integers, got ${ch}×${cw}`);
  }
  return scope(() => {
    let img = x;
    let [h, w] = [x.size(-2), x.size(-1)];
    if (cw > w || ch > h) {
      const left = cw > w ? Math.floor((cw - w) / 2) : 0;
      const right = cw > w ? Math.floor((cw - w + 1) / 2) : 0;
      const top = ch > h ? Math.floor((ch - h) / 2) : 0;
      const bottom = ch > h ? Math.floor((ch - h + 1) / 2) : 0;
      img = pad(img, [left, right, top, bottom]);
      [h, w] = [img.size(-2), img.size(-1)];
      if (h === ch && w === cw) return img;
    }
    const top = roundHalfEven((h - ch) / 2);
    const left = roundHalfEven((w - cw) / 2);
    return img.narrow(-2, top, ch).narrow(-1, left, cw).contiguous();
  });
}

/**
 * The standard evaluation preprocessing of an image in [0, 1]: {@link resizeShorterSide} to
 * `size` (bicubic, antialiased, clamped to [0, 1]) then {@link centerCrop} to `crop` (default
 * `size`), i.e. torchvision's `Resize(size)` + `CenterCrop(crop)`. Use
 * `resizeImage(x, 256, 224)` for the k-NN protocol. `x` is [C, H, W] or [B, C, H, W].
 */
export function resizeImage(x: Tensor, size: number, crop: number = size): Tensor {
  return scope(() => centerCrop(resizeShorterSide(x, size), crop));
}

// ---- class-index masks -----------------------------------------------------------------------

/**
 * The Pascal VOC colour map: 256 RGB triples (768 bytes), entry `k` the colour VOC's label
 * PNGs show for class index `k` (0 black background, 1 aeroplane (128, 0, 0), …, 255 the
 * ignore / border colour (224, 224, 192)). The palette of VOC's `SegmentationClass` PNGs; pass it
 * as `palette` to `encodePngPixels` to write such a PNG, or as `colormap` to
 * {@link decodeIndexMask} to read RGB renderings of VOC masks. A fresh copy on every call.
 */
export function vocColormap(): Uint8Array {
  const out = new Uint8Array(256 * 3);
  for (let k = 0; k < 256; k++) {
    let [r, g, b, c] = [0, 0, 0, k];
    for (let j = 0; j < 8; j++) {
      r |= ((c >> 0) & 1) << (7 - j);
      g |= ((c >> 1) & 1) << (7 - j);
      b |= ((c >> 2) & 1) << (7 - j);
      c >>= 3;
    }
    out.set([r, g, b], 3 * k);
  }
  return out;
}

/** Options of {@link decodeIndexMask} and {@link loadIndexMask}. */
export interface IndexMaskOptions {
  /**
   * RGB triples (entry `k` is class index `k`, at most 256 entries, no colour twice) through
   * which an RGB or RGBA PNG is mapped back to class indices, e.g. {@link vocColormap} for VOC
   * masks that were re-saved as RGB. A colour not in the map is an error. Without it (the
   * default), RGB masks are rejected: a class-index mask is a palette or grey PNG.
   */
  colormap?: Uint8Array;
}

const colormapCache = new WeakMap<Uint8Array, Map<number, number>>();

function colormapLookup(colormap: Uint8Array, name: string): Map<number, number> {
  const cached = colormapCache.get(colormap);
  if (cached) return cached;
  const entries = colormap.length / 3;
  if (!(colormap instanceof Uint8Array) || !Number.isInteger(entries) || entries < 1) {
    throw new ImageError(name, "colormap must be a Uint8Array of RGB triples");
  }
  if (entries > 256) {
    throw new ImageError(name, `colormap has ${entries} entries; class indices stop at 255`);
  }
  const map = new Map<number, number>();
  for (let k = 0; k < entries; k++) {
    const key = (colormap[3 * k] << 16) | (colormap[3 * k + 1] << 8) | colormap[3 * k + 2];
    if (map.has(key)) {
      throw new ImageError(
        name,
        `colormap entries ${map.get(key)} and ${k} have the same colour ` +
          `(${colormap[3 * k]}, ${colormap[3 * k + 1]}, ${colormap[3 * k + 2]})`,
      );
    }
    map.set(key, k);
  }
  colormapCache.set(colormap, map);
  return map;
}

/**
 * Decodes a segmentation label image to class indices: a uint8 tensor [H, W] (255 = ignore by
 * the VOC convention; values are returned as stored, not checked against a class count).
 *
 * - a palette PNG (Pascal VOC's `SegmentationClass`): the palette **index** of each pixel is its
 *   class, whatever colours the palette holds;
 * - a grey PNG (`SegmentationClassAug`): the grey level is the class (16-bit levels must be at
 *   most 255; 1/2/4-bit levels are not rescaled);
 * - an RGB / RGBA PNG: rejected, unless `opts.colormap` maps its colours to indices (see
 *   {@link IndexMaskOptions}); grey+alpha is rejected;
 * - a JPEG: rejected (lossy compression changes the indices along every edge).
 *
 * `name` (e.g. the file path) starts every error message; errors are {@link ImageError}s.
 */
export async function decodeIndexMask(
  bytes: Uint8Array,
  name = "<mask bytes>",
  opts: IndexMaskOptions = {},
): Promise<Tensor> {
  if (!(bytes instanceof Uint8Array)) {
    throw new ImageError(name, "mask bytes must be a Uint8Array");
  }
  if (bytes.length === 0) throw new ImageError(name, "empty file, not a mask");
  const format = imageFormat(bytes);
  if (format === "jpeg") {
    throw new ImageError(
      name,
      "a JPEG cannot hold a class-index mask (lossy compression changes the indices): use " +
        "the PNG label images (palette, as VOC's SegmentationClass, or grey, as " +
        "SegmentationClassAug)",
    );
  }
  if (format === null) {
    throw new ImageError(
      name,
      `unsupported mask format: ${describeSignature(bytes)}; expected a palette or grey PNG`,
    );
  }
  const png = await decodePng(bytes, name);
  const { width, height, colorType } = png;
  let indices: Uint8Array;
  if (colorType === 0 || colorType === 3) {
    indices = pngIndices(png, name);
  } else if ((colorType === 2 || colorType === 6) && opts.colormap !== undefined) {
    const lookup = colormapLookup(opts.colormap, name);
    const rgb = pngToRgb8(png);
    const n = width * height;
    indices = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      const key = (rgb[3 * i] << 16) | (rgb[3 * i + 1] << 8) | rgb[3 * i + 2];
      const k = lookup.get(key);
      if (k === undefined) {
        throw new ImageError(
          name,
          `colour (${rgb[3 * i]}, ${rgb[3 * i + 1]}, ${rgb[3 * i + 2]}) at pixel ` +
            `(x ${i % width}, y ${Math.floor(i / width)}) is not in the colormap`,
        );
      }
      indices[i] = k;
    }
  } else {
    const kind = colorType === 2 ? "an RGB" : colorType === 6 ? "an RGBA" : "a grey+alpha";
    throw new ImageError(
      name,
      `${kind} PNG is not a class-index mask: use palette label PNGs (VOC's ` +
        "SegmentationClass) or grey index PNGs (SegmentationClassAug)" +
        (colorType === 4 ? "" : ", or pass a colormap (e.g. vocColormap()) to map colours to " +
          "class indices"),
    );
  }
  return fromTypedArray(indices, [height, width]);
}

/**
 * Reads a label PNG as class indices, a uint8 tensor [H, W] (see {@link decodeIndexMask}).
 * Throws {@link ImageError} naming the file when it is missing, unreadable, corrupt, a JPEG,
 * or an RGB PNG without a colormap.
 */
export async function loadIndexMask(path: string, opts: IndexMaskOptions = {}): Promise<Tensor> {
  return decodeIndexMask(await readBytes(path), path, opts);
}
