/**
 * The safetensors format (https://github.com/huggingface/safetensors), read and written in
 * TypeScript straight into and out of tensors: an 8-byte little-endian header length, a JSON
 * header `{name: {dtype, shape, data_offsets}, "__metadata__": {…}}` padded with spaces to a
 * multiple of 8 bytes, then the tensors' bytes back to back. The writer orders tensors as the
 * reference implementation does (by dtype alignment, then name), so files are byte-identical
 * to those written by `safetensors.torch.save_file`.
 *
 * @module
 */
import { temporaryName } from "./files.ts";
import { type Device, type DType, DTYPE_SIZE } from "./dtype.ts";
import { TorchError } from "./errors.ts";
import { fromBytes } from "./creation.ts";
import { Tensor } from "./tensor.ts";

/** safetensors dtype names of the dtypes this toolkit supports. */
export const SAFETENSORS_DTYPE: Readonly<Record<DType, string>> = {
  bool: "BOOL",
  uint8: "U8",
  int8: "I8",
  int16: "I16",
  float16: "F16",
  bfloat16: "BF16",
  int32: "I32",
  float32: "F32",
  float64: "F64",
  int64: "I64",
};

const FROM_NAME: Record<string, DType> = Object.fromEntries(
  Object.entries(SAFETENSORS_DTYPE).map(([k, v]) => [v, k as DType]),
);

// the reference implementation's dtype order (increasing alignment); files list tensors by
// descending rank, then by name
const RANK = [
  "BOOL",
  "U8",
  "I8",
  "F8_E5M2",
  "F8_E4M3",
  "I16",
  "U16",
  "F16",
  "BF16",
  "I32",
  "U32",
  "F32",
  "F64",
  "I64",
  "U64",
];

// bytes per element of every dtype the format defines (also those this toolkit cannot load,
// so that their files still validate and their headers can be read)
const FORMAT_SIZE: Readonly<Record<string, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};

const MAX_HEADER = 100_000_000;

const utf8 = new TextEncoder();

// the reference compares names as byte strings (Rust `String::cmp`, i.e. UTF-8 byte order),
// which differs from JS's UTF-16 code-unit order for some non-ASCII names
function compareUtf8(a: string, b: string): number {
  if (a === b) return 0;
  const x = utf8.encode(a), y = utf8.encode(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

// assigns an own enumerable property, also for names such as "__proto__"
function setOwn<T>(obj: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

/** One entry of a safetensors header. */
export interface SafetensorsInfo {
  /** safetensors dtype name, e.g. "F32" (see {@link SAFETENSORS_DTYPE}) */
  dtype: string;
  /** the tensor's shape */
  shape: number[];
  /** [begin, end) byte offsets of the tensor's data, relative to the data section */
  data_offsets: [number, number];
}

/** A parsed header: tensor entries (in file order) and the free-form string metadata. */
export interface SafetensorsHeader {
  /** [name, entry] pairs in the order of their data */
  tensors: [string, SafetensorsInfo][];
  /** the `__metadata__` strings (empty when absent) */
  metadata: Record<string, string>;
  /** byte offset of the data section in the file */
  dataStart: number;
}

/** The tensors of a file and its metadata. */
export interface SafetensorsContent {
  /** the loaded tensors by name */
  tensors: Record<string, Tensor>;
  /** the `__metadata__` strings (empty when absent) */
  metadata: Record<string, string>;
}

function err(where: string, msg: string): TorchError {
  return new TorchError("safetensors", `${where}: ${msg}`);
}

/** Parses and validates the header of a safetensors file held in `bytes`. */
export function parseSafetensorsHeader(bytes: Uint8Array, where = "buffer"): SafetensorsHeader {
  return parseHeader(bytes, headerLength(bytes, bytes.length, where), bytes.length, where);
}

// the header length from the first 8 bytes, checked against the file length
function headerLength(bytes: Uint8Array, fileLength: number, where: string): number {
  if (fileLength < 8 || bytes.length < 8) {
    throw err(where, `file too short (${fileLength} bytes) for a safetensors header`);
  }
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER)) {
    throw err(where, `header length ${n} exceeds 100 MB: not a safetensors file?`);
  }
  const len = Number(n);
  if (8 + len > fileLength) {
    throw err(
      where,
      `header length ${len} runs past the end of the file (${fileLength} bytes): truncated?`,
    );
  }
  return len;
}

// `bytes` holds at least the 8 + len header bytes of a file of `fileLength` bytes
function parseHeader(
  bytes: Uint8Array,
  len: number,
  fileLength: number,
  where: string,
): SafetensorsHeader {
  let raw: unknown;
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + len));
    if (!text.startsWith("{")) throw new Error("header does not start with '{'");
    raw = JSON.parse(text);
  } catch (e) {
    throw err(where, `invalid header JSON (${(e as Error).message}): not a safetensors file?`);
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw err(where, "header is not a JSON object");
  }
  const metadata: Record<string, string> = {};
  const tensors: [string, SafetensorsInfo][] = [];
  for (const [name, v] of Object.entries(raw as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (v === null || typeof v !== "object" || Array.isArray(v)) {
        throw err(where, "__metadata__ must be an object of strings");
      }
      for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
        if (typeof s !== "string") throw err(where, `__metadata__.${k} is not a string`);
        setOwn(metadata, k, s);
      }
      continue;
    }
    const info = v as SafetensorsInfo;
    if (
      info === null || typeof info !== "object" || typeof info.dtype !== "string" ||
      !Array.isArray(info.shape) || !info.shape.every((s) => Number.isSafeInteger(s) && s >= 0) ||
      !Array.isArray(info.data_offsets) || info.data_offsets.length !== 2 ||
      !info.data_offsets.every((s) => Number.isSafeInteger(s) && s >= 0)
    ) {
      throw err(where, `tensor "${name}" has a malformed entry ${JSON.stringify(v)}`);
    }
    if (!Object.hasOwn(FORMAT_SIZE, info.dtype)) {
      throw err(where, `tensor "${name}" has unknown dtype "${info.dtype}"`);
    }
    tensors.push([name, {
      dtype: info.dtype,
      shape: [...info.shape],
      data_offsets: [info.data_offsets[0], info.data_offsets[1]],
    }]);
  }
  tensors.sort((a, b) =>
    a[1].data_offsets[0] - b[1].data_offsets[0] || a[1].data_offsets[1] - b[1].data_offsets[1]
  );
  const dataLen = fileLength - 8 - len;
  let pos = 0;
  for (const [name, info] of tensors) {
    const [s, e] = info.data_offsets;
    if (e < s) {
      throw err(where, `tensor "${name}" has offsets [${s}, ${e}] that end before they start`);
    }
    if (s !== pos) {
      throw err(
        where,
        `tensor "${name}" has offsets [${s}, ${e}] but the previous tensor ends at ${pos} (${
          s > pos ? "a hole" : "an overlap"
        } in the data section)`,
      );
    }
    const numel = info.shape.reduce((a, b) => a * b, 1);
    const need = numel * FORMAT_SIZE[info.dtype];
    if (need !== e - s) {
      throw err(
        where,
        `tensor "${name}": shape [${info.shape}] of ${info.dtype} needs ${need} bytes, offsets give ${
          e - s
        }`,
      );
    }
    pos = e;
  }
  if (pos !== dataLen) {
    throw err(
      where,
      `the tensors cover ${pos} bytes but the data section has ${dataLen}: truncated or padded file`,
    );
  }
  return { tensors, metadata, dataStart: 8 + len };
}

/**
 * Reads and validates only the header of a safetensors file: no tensor is created and only
 * the header bytes are read (the data section is checked against the file size).
 */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw fsError(path, e);
  }
  try {
    const size = (await file.stat()).size;
    const first = await readExactly(file, Math.min(8, size), path);
    const len = headerLength(first, size, path);
    const bytes = new Uint8Array(8 + len);
    bytes.set(first);
    bytes.set(await readExactly(file, len, path), 8);
    return parseHeader(bytes, len, size, path);
  } catch (e) {
    if (e instanceof TorchError) throw e;
    throw fsError(path, e);
  } finally {
    file.close();
  }
}

async function readExactly(file: Deno.FsFile, n: number, path: string): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let off = 0;
  while (off < n) {
    const got = await file.read(out.subarray(off));
    if (got === null) throw err(path, `unexpected end of file after ${off} of ${n} bytes`);
    off += got;
  }
  return out;
}

function fsError(path: string, e: unknown): TorchError {
  if (e instanceof Deno.errors.NotFound) return err(path, "file not found");
  return err(path, (e as Error).message);
}

async function readFile(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    throw fsError(path, e);
  }
}

/** Options of {@link deserializeSafetensors} / {@link loadSafetensors}. */
export interface LoadOptions {
  /** load only these names (default: all) */
  names?: string[];
  /** move each tensor to this device */
  device?: Device;
}

/** Creates tensors from the bytes of a safetensors file. */
export function deserializeSafetensors(
  bytes: Uint8Array,
  opts: LoadOptions = {},
  where = "buffer",
): SafetensorsContent {
  const header = parseSafetensorsHeader(bytes, where);
  const wanted = opts.names ? new Set(opts.names) : null;
  if (wanted) {
    const have = new Set(header.tensors.map(([n]) => n));
    const missing = [...wanted].filter((n) => !have.has(n));
    if (missing.length) {
      throw err(
        where,
        `no tensor named ${missing.map((m) => `"${m}"`).join(", ")}`,
      );
    }
  }
  const selected = header.tensors.filter(([name]) => !wanted || wanted.has(name));
  // refuse before creating anything
  for (const [name, info] of selected) {
    if (!Object.hasOwn(FROM_NAME, info.dtype)) {
      throw err(
        where,
        `tensor "${name}" has dtype ${info.dtype}, which this toolkit does not support (supported: ${
          Object.keys(FROM_NAME).join(", ")
        })`,
      );
    }
  }
  const tensors: Record<string, Tensor> = {};
  try {
    for (const [name, info] of selected) {
      const [s, e] = info.data_offsets;
      const view = bytes.subarray(header.dataStart + s, header.dataStart + e);
      setOwn(
        tensors,
        name,
        fromBytes(view, FROM_NAME[info.dtype], info.shape, { device: opts.device }),
      );
    }
  } catch (e) {
    for (const t of Object.values(tensors)) t.free();
    throw e;
  }
  return { tensors, metadata: header.metadata };
}

/** Loads every tensor of a safetensors file (or those named in `opts.names`). */
export async function loadSafetensors(
  path: string,
  opts: LoadOptions = {},
): Promise<SafetensorsContent> {
  return deserializeSafetensors(await readFile(path), opts, path);
}

interface Planned {
  name: string;
  tensor: Tensor;
  dtype: string;
  shape: number[];
  bytes: number;
}

function plan(
  tensors: Record<string, Tensor>,
  metadata?: Record<string, string>,
): { header: Uint8Array; items: Planned[] } {
  if (tensors === null || typeof tensors !== "object") {
    throw err("write", "tensors must be an object mapping names to tensors");
  }
  const items: Planned[] = [];
  for (const [name, t] of Object.entries(tensors)) {
    if (name === "__metadata__") {
      throw err("write", `"__metadata__" is reserved and cannot name a tensor`);
    }
    if (!(t instanceof Tensor)) throw err("write", `"${name}" is not a Tensor`);
    if (t.isFreed) throw err("write", `tensor "${name}" was already freed`);
    const dtype = SAFETENSORS_DTYPE[t.dtype];
    const shape = t.shape;
    items.push({
      name,
      tensor: t,
      dtype,
      shape,
      bytes: shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[t.dtype],
    });
  }
  items.sort((a, b) =>
    RANK.indexOf(b.dtype) - RANK.indexOf(a.dtype) || compareUtf8(a.name, b.name)
  );
  // The JSON is assembled by hand: a JS object would move integer-like names ("0", "12") to
  // the front. `__metadata__` comes first whenever metadata is given (even empty), as in the
  // reference; its entries keep the caller's order.
  const parts: string[] = [];
  if (metadata !== undefined && metadata !== null) {
    if (typeof metadata !== "object" || Array.isArray(metadata)) {
      throw err("write", "metadata must be an object of strings");
    }
    const entries = Object.entries(metadata).map(([k, v]) => {
      if (typeof v !== "string") throw err("write", `metadata "${k}" must be a string`);
      return `${JSON.stringify(k)}:${JSON.stringify(v)}`;
    });
    parts.push(`"__metadata__":{${entries.join(",")}}`);
  }
  let offset = 0;
  for (const it of items) {
    parts.push(
      `${JSON.stringify(it.name)}:{"dtype":"${it.dtype}","shape":[${it.shape.join(",")}],` +
        `"data_offsets":[${offset},${offset + it.bytes}]}`,
    );
    offset += it.bytes;
  }
  const json = utf8.encode(`{${parts.join(",")}}`);
  const padded = new Uint8Array(Math.ceil(json.length / 8) * 8).fill(0x20);
  padded.set(json);
  const header = new Uint8Array(8 + padded.length);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded.length), true);
  header.set(padded, 8);
  return { header, items };
}

/**
 * The bytes of a safetensors file holding `tensors` (and string `metadata`), identical to
 * what the reference implementation writes for the same tensors and metadata.
 */
export function serializeSafetensors(
  tensors: Record<string, Tensor>,
  metadata?: Record<string, string>,
): Uint8Array {
  const { header, items } = plan(tensors, metadata);
  const total = header.length + items.reduce((a, b) => a + b.bytes, 0);
  const out = new Uint8Array(total);
  out.set(header);
  let pos = header.length;
  for (const it of items) {
    out.set(it.tensor.toBytes(), pos);
    pos += it.bytes;
  }
  return out;
}

/**
 * Writes `tensors` to a safetensors file atomically: the data goes to a temporary file in the
 * same directory, which is then renamed over `path`. On any failure (a freed tensor, a full
 * disk, …) the temporary file is removed and an existing file at `path` is left untouched.
 */
export async function saveSafetensors(
  path: string,
  tensors: Record<string, Tensor>,
  metadata?: Record<string, string>,
): Promise<void> {
  const { header, items } = plan(tensors, metadata);
  const tmp = temporaryName(path);
  let file: Deno.FsFile | null = null;
  try {
    file = await Deno.open(tmp, { write: true, createNew: true });
    await writeAll(file, header);
    // one scratch buffer for every tensor: a checkpoint's bytes do not become JS garbage
    const scratch = new Uint8Array(
      Math.max(0, ...items.map((it) => it.tensor.numel * DTYPE_SIZE[it.tensor.dtype])),
    );
    for (const it of items) await writeAll(file, it.tensor.toBytes(scratch));
    await file.sync();
    file.close();
    file = null;
    await Deno.rename(tmp, path);
  } catch (e) {
    try {
      file?.close();
    } catch { /* already closed */ }
    await Deno.remove(tmp).catch(() => {});
    if (e instanceof TorchError) throw e;
    throw err(path, `could not write: ${(e as Error).message}`);
  }
}

async function writeAll(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await file.write(data.subarray(off));
}
