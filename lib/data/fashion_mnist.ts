/**
 * Fashion-MNIST from its IDX files (gzip-compressed or plain): an IDX reader that validates
 * magic numbers, dimensions and lengths, and the {@link FashionMNIST} data set (RGB `[3, H, W]`
 * float images in [0, 1], grey replicated to three channels, optionally resized), with raw
 * access to the uint8 item array and the labels for the scene generator.
 *
 * The files come from Debian's `dataset-fashion-mnist` package, which puts them in
 * `/usr/share/datasets/fashion-mnist/` (`deno task setup` installs it).
 *
 * @module
 */
import { fromTypedArray, interpolate, scope, type Tensor, TorchError } from "../torch/mod.ts";
import { checkIndex, type Dataset, type Sample } from "./dataset.ts";
import { DatasetError } from "./imagefolder.ts";

/** Where Debian's `dataset-fashion-mnist` package installs the four IDX `.gz` files. */
export const FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist";

/** The Debian package that provides the Fashion-MNIST files. */
export const FASHION_MNIST_PACKAGE = "dataset-fashion-mnist";

/** The ten Fashion-MNIST class names, by label. */
export const FASHION_MNIST_CLASSES: readonly string[] = Object.freeze([
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
]);

/** A Fashion-MNIST split: `"val"` is another name for `"test"`. */
export type FashionMNISTSplit = "train" | "test" | "val";

/**
 * A missing, unreadable or malformed IDX file: a {@link DatasetError} whose `path` names the
 * file; the message starts with it.
 */
export class IdxError extends DatasetError {
  /** An error about the IDX file at `path`. */
  constructor(path: string, detail: string) {
    super(path, detail);
    this.name = "IdxError";
  }
}

/** An IDX array of unsigned bytes: its dimensions and its row-major data. */
export interface IdxArray {
  /** dimensions, outermost first (e.g. [60000, 28, 28]) */
  dims: number[];
  /** the values, row-major, length = product of dims */
  data: Uint8Array;
}

const GZIP_MAGIC = [0x1f, 0x8b];

/** Whether `bytes` start with the gzip magic number. */
function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === GZIP_MAGIC[0] && bytes[1] === GZIP_MAGIC[1];
}

/** Gunzips `bytes` with the platform's DecompressionStream; errors name `path`. */
async function gunzip(bytes: Uint8Array, path: string): Promise<Uint8Array> {
  try {
    const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
      new DecompressionStream("gzip"),
    );
    return new Uint8Array(await new Response(stream).arrayBuffer());
  } catch (e) {
    throw new IdxError(path, `corrupt or truncated gzip data (${(e as Error).message})`);
  }
}

const IDX_TYPES: Record<number, string> = {
  0x08: "unsigned byte",
  0x09: "signed byte",
  0x0b: "short",
  0x0c: "int",
  0x0d: "float",
  0x0e: "double",
};

/**
 * Parses the bytes of an (uncompressed) IDX file of unsigned bytes: magic `00 00 08 D`, then D
 * big-endian uint32 dimensions, then the data. Throws {@link IdxError} naming `path` on a
 * wrong magic number, an unsupported element type, zero or absurd dimensions, or a length that
 * does not match the dimensions (a truncated file).
 */
export function parseIdx(bytes: Uint8Array, path = "<idx bytes>"): IdxArray {
  if (bytes.length < 4) {
    throw new IdxError(path, `truncated IDX file: ${bytes.length} bytes, not even a header`);
  }
  if (bytes[0] !== 0 || bytes[1] !== 0) {
    const hex = Array.from(bytes.subarray(0, 4), (b) => b.toString(16).padStart(2, "0"));
    throw new IdxError(
      path,
      `not an IDX file: wrong magic number ${hex.join(" ")} (expected 00 00 <type> <ndim>)`,
    );
  }
  const type = bytes[2];
  if (type !== 0x08) {
    const what = IDX_TYPES[type];
    throw new IdxError(
      path,
      what === undefined
        ? `not an IDX file: unknown element type 0x${type.toString(16).padStart(2, "0")}`
        : `IDX element type ${what} is not supported (expected unsigned byte, 0x08)`,
    );
  }
  const ndim = bytes[3];
  if (ndim < 1) throw new IdxError(path, "IDX file with 0 dimensions");
  const headerLen = 4 + 4 * ndim;
  if (bytes.length < headerLen) {
    throw new IdxError(
      path,
      `truncated IDX file: ${bytes.length} bytes, the header of ${ndim} dimensions needs ${headerLen}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dims: number[] = [];
  let n = 1;
  for (let d = 0; d < ndim; d++) {
    const v = view.getUint32(4 + 4 * d, false);
    dims.push(v);
    n *= v;
  }
  if (n > Number.MAX_SAFE_INTEGER) {
    throw new IdxError(path, `IDX dimensions [${dims.join(", ")}] are too large`);
  }
  const have = bytes.length - headerLen;
  if (have < n) {
    throw new IdxError(
      path,
      `truncated IDX file: dimensions [${dims.join(", ")}] need ${n} data bytes, found ${have}`,
    );
  }
  if (have > n) {
    throw new IdxError(
      path,
      `IDX file has ${have - n} bytes of trailing data after [${dims.join(", ")}]`,
    );
  }
  return { dims, data: bytes.subarray(headerLen) };
}

/**
 * Reads an IDX file of unsigned bytes, gzip-compressed (detected by its magic number, so the
 * `.gz` suffix is not required) or plain, and validates it (see {@link parseIdx}). Errors are
 * {@link IdxError}s naming `path`.
 */
export async function readIdx(path: string): Promise<IdxArray> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new IdxError(path, "file not found");
    if (e instanceof Deno.errors.IsADirectory) throw new IdxError(path, "is a directory");
    throw new IdxError(path, `could not read: ${(e as Error).message}`);
  }
  if (isGzip(bytes)) bytes = await gunzip(bytes, path);
  return parseIdx(bytes, path);
}

/** Raw Fashion-MNIST arrays of one split. */
export interface FashionMNISTArrays {
  /** uint8 grey items, [count, height, width] row-major (0 = black background) */
  images: Uint8Array;
  /** uint8 labels 0–9, [count] */
  labels: Uint8Array;
  /** number of items */
  count: number;
  /** item height (28) */
  height: number;
  /** item width (28) */
  width: number;
  /** the images file that was read */
  imagesPath: string;
  /** the labels file that was read */
  labelsPath: string;
}

const FILES: Record<"train" | "test", { images: string; labels: string }> = {
  train: { images: "train-images-idx3-ubyte", labels: "train-labels-idx1-ubyte" },
  test: { images: "t10k-images-idx3-ubyte", labels: "t10k-labels-idx1-ubyte" },
};

function normSplit(split: string): "train" | "test" {
  if (split === "train") return "train";
  if (split === "test" || split === "val") return "test";
  throw new RangeError(`Fashion-MNIST: unknown split "${split}"; expected train, test or val`);
}

/** The existing file for `base` in `dir`: `base.gz` first, then plain `base`. */
async function locate(dir: string, base: string): Promise<string> {
  const candidates = [`${dir}/${base}.gz`, `${dir}/${base}`];
  for (const p of candidates) {
    try {
      const st = await Deno.stat(p);
      if (st.isFile) return p;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        throw new IdxError(p, `could not read: ${(e as Error).message}`);
      }
    }
  }
  throw new IdxError(
    candidates[0],
    `Fashion-MNIST file not found (nor ${candidates[1]}); install Debian's package ` +
      `${FASHION_MNIST_PACKAGE} (\`deno task setup\` does: it puts the files in ` +
      `${FASHION_MNIST_DIR}) or pass the directory holding the four IDX files`,
  );
}

const cache = new Map<string, Promise<FashionMNISTArrays>>();

/**
 * Reads the raw arrays of a Fashion-MNIST split from `dir` (default {@link FASHION_MNIST_DIR})
 * and checks that they fit together (images [N, H, W], labels [N] in 0–9). Results are cached
 * per process (by path, size and modification time), so opening a split twice reads it once;
 * treat the arrays as read-only. Missing files raise an {@link IdxError} naming the path and the
 * Debian package.
 */
export async function loadFashionMNIST(
  split: FashionMNISTSplit = "train",
  dir: string = FASHION_MNIST_DIR,
): Promise<FashionMNISTArrays> {
  const s = normSplit(split);
  const imagesPath = await locate(dir, FILES[s].images);
  const labelsPath = await locate(dir, FILES[s].labels);
  const stamp = async (p: string) => {
    const st = await Deno.stat(p);
    return `${p}:${st.size}:${st.mtime?.getTime() ?? 0}`;
  };
  const key = `${await stamp(imagesPath)}|${await stamp(labelsPath)}`;
  let p = cache.get(key);
  if (p === undefined) {
    p = readPair(imagesPath, labelsPath);
    cache.set(key, p);
    p.catch(() => cache.delete(key));
  }
  return await p;
}

async function readPair(imagesPath: string, labelsPath: string): Promise<FashionMNISTArrays> {
  const [im, lb] = await Promise.all([readIdx(imagesPath), readIdx(labelsPath)]);
  if (im.dims.length !== 3) {
    throw new IdxError(
      imagesPath,
      `expected an images file of 3 dimensions [N, H, W], got [${im.dims.join(", ")}]`,
    );
  }
  if (lb.dims.length !== 1) {
    throw new IdxError(
      labelsPath,
      `expected a labels file of 1 dimension [N], got [${lb.dims.join(", ")}]`,
    );
  }
  const [count, height, width] = im.dims;
  if (lb.dims[0] !== count) {
    throw new IdxError(
      labelsPath,
      `${lb.dims[0]} labels for ${count} images in ${imagesPath}`,
    );
  }
  for (let i = 0; i < count; i++) {
    if (lb.data[i] > 9) {
      throw new IdxError(labelsPath, `label ${lb.data[i]} of item ${i} is outside 0..9`);
    }
  }
  return { images: im.data, labels: lb.data, count, height, width, imagesPath, labelsPath };
}

/** Options of {@link FashionMNIST.open}. */
export interface FashionMNISTOptions {
  /** "train" (60,000 items) or "test" / "val" (10,000 items); default "train" */
  split?: FashionMNISTSplit;
  /** directory holding the four IDX files (default {@link FASHION_MNIST_DIR}) */
  dir?: string;
  /**
   * output side in pixels: items are resized bicubically (clamped to [0, 1]) to
   * `resize`×`resize`, e.g. a model's input size; default: the native 28×28
   */
  resize?: number;
}

/**
 * Fashion-MNIST as a {@link Dataset}: `get(i)` gives the item as an RGB image [3, S, S]
 * (grey replicated to three channels, float32 in [0, 1], S = 28 or the `resize` option), its
 * label and the name `split/i`. The raw uint8 items and labels are public for generators and
 * fast batch paths.
 *
 * @example
 * const ds = await FashionMNIST.open({ split: "test", resize: 64 });
 * const { image, label } = await ds.get(0); // [3, 64, 64], 9 ("Ankle boot")
 * image.free();
 */
export class FashionMNIST implements Dataset {
  /** the split ("train" or "test") */
  readonly split: "train" | "test";
  /** the raw arrays (uint8 items [N, 28, 28] and labels [N]); read-only */
  readonly arrays: FashionMNISTArrays;
  /** output side of {@link get} (28 unless resized) */
  readonly size: number;
  /** the ten class names */
  readonly classes: readonly string[] = FASHION_MNIST_CLASSES;

  private constructor(split: "train" | "test", arrays: FashionMNISTArrays, size: number) {
    this.split = split;
    this.arrays = arrays;
    this.size = size;
  }

  /** Reads a split (see {@link FashionMNISTOptions}); errors name the file. */
  static async open(opts: FashionMNISTOptions = {}): Promise<FashionMNIST> {
    const split = normSplit(opts.split ?? "train");
    const size = opts.resize;
    if (size !== undefined && (!Number.isInteger(size) || size < 1)) {
      throw new RangeError(`FashionMNIST: resize must be a positive integer, got ${size}`);
    }
    const arrays = await loadFashionMNIST(split, opts.dir ?? FASHION_MNIST_DIR);
    return new FashionMNIST(split, arrays, size ?? arrays.height);
  }

  /** number of items */
  get length(): number {
    return this.arrays.count;
  }

  /** the uint8 labels (0–9), one per item; read-only */
  get labels(): Uint8Array {
    return this.arrays.labels;
  }

  /** The raw uint8 pixels of item `i` (a [28·28] view into {@link arrays}; read-only). */
  item(i: number): Uint8Array {
    checkIndex(this, i, `FashionMNIST ${this.split}`);
    const n = this.arrays.height * this.arrays.width;
    return this.arrays.images.subarray(i * n, (i + 1) * n);
  }

  /** `split/i` */
  nameOf(i: number): string {
    return `fashion-mnist/${this.split}/${i}`;
  }

  /** Item `i` with its label (see the class description). */
  get(i: number): Promise<Sample> {
    try {
      checkIndex(this, i, `FashionMNIST ${this.split}`);
      const image = this.batch([i]);
      const one = scope(() => image.squeeze(0));
      image.free();
      return Promise.resolve({ image: one, label: this.arrays.labels[i], name: this.nameOf(i) });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Items `indices` as one float32 batch [B, 3, S, S] in [0, 1] (the fast path for
   * evaluations); labels are `indices.map((i) => ds.labels[i])`.
   */
  batch(indices: readonly number[]): Tensor {
    const { height: h, width: w, images } = this.arrays;
    const n = h * w;
    if (indices.length === 0) {
      throw new TorchError("FashionMNIST.batch", "no indices given");
    }
    const buf = new Uint8Array(indices.length * n);
    indices.forEach((i, k) => {
      checkIndex(this, i, `FashionMNIST ${this.split}`);
      buf.set(images.subarray(i * n, (i + 1) * n), k * n);
    });
    return scope(() => {
      let x = fromTypedArray(buf, [indices.length, 1, h, w]).float().div(255);
      if (this.size !== h || this.size !== w) {
        const antialias = this.size < h; // down-sampling: as PIL / torchvision do
        x = interpolate(x, { size: this.size, mode: "bicubic", antialias }).clamp(0, 1);
      }
      return x.expand([indices.length, 3, this.size, this.size]).contiguous();
    });
  }
}
