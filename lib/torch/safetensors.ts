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

const MAX_HEADER = 100_000_000;

/** One entry of a safetensors header. */
export interface SafetensorsInfo {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

/** A parsed header: tensor entries (in file order) and the free-form string metadata. */
export interface SafetensorsHeader {
  tensors: [string, SafetensorsInfo][];
  metadata: Record<string, string>;
  /** byte offset of the data section in the file */
  dataStart: number;
}

/** The tensors of a file and its metadata. */
export interface SafetensorsContent {
  tensors: Record<string, Tensor>;
  metadata: Record<string, string>;
}

function err(where: string, msg: string): TorchError {
  return new TorchError("safetensors", `${where}: ${msg}`);
}

/** Parses and validates the header of a safetensors file held in `bytes`. */
export function parseSafetensorsHeader(bytes: Uint8Array, where = "buffer"): SafetensorsHeader {
  if (bytes.length < 8) {
    throw err(where, `file too short (${bytes.length} bytes) for a safetensors header`);
  }
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER)) {
    throw err(where, `header length ${n} exceeds 100 MB: not a safetensors file?`);
  }
  const len = Number(n);
  if (8 + len > bytes.length) {
    throw err(
      where,
      `header length ${len} runs past the end of the file (${bytes.length} bytes): truncated?`,
    );
  }
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
      if (v === null || typeof v !== "object") {
        throw err(where, "__metadata__ must be an object of strings");
      }
      for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
        if (typeof s !== "string") throw err(where, `__metadata__.${k} is not a string`);
        metadata[k] = s;
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
    tensors.push([name, info]);
  }
  tensors.sort((a, b) =>
    a[1].data_offsets[0] - b[1].data_offsets[0] || a[1].data_offsets[1] - b[1].data_offsets[1]
  );
  const dataLen = bytes.length - 8 - len;
  let pos = 0;
  for (const [name, info] of tensors) {
    const [s, e] = info.data_offsets;
    if (s !== pos || e < s) {
      throw err(
        where,
        `tensor "${name}" has offsets [${s}, ${e}] but the previous tensor ends at ${pos}`,
      );
    }
    const dt = FROM_NAME[info.dtype];
    const size = dt ? DTYPE_SIZE[dt] : null;
    if (size !== null) {
      const numel = info.shape.reduce((a, b) => a * b, 1);
      if (numel * size !== e - s) {
        throw err(
          where,
          `tensor "${name}": shape [${info.shape}] of ${info.dtype} needs ${
            numel * size
          } bytes, offsets give ${e - s}`,
        );
      }
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

/** Reads only the header of a safetensors file (no tensor is loaded). */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  return parseSafetensorsHeader(await readFile(path), path);
}

async function readFile(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw err(path, "file not found");
    throw err(path, (e as Error).message);
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
  const tensors: Record<string, Tensor> = {};
  try {
    for (const [name, info] of header.tensors) {
      if (wanted && !wanted.has(name)) continue;
      const dtype = FROM_NAME[info.dtype];
      if (!dtype) {
        throw err(
          where,
          `tensor "${name}" has dtype ${info.dtype}, which this toolkit does not support`,
        );
      }
      const [s, e] = info.data_offsets;
      const view = bytes.subarray(header.dataStart + s, header.dataStart + e);
      tensors[name] = fromBytes(view, dtype, info.shape, { device: opts.device });
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
    RANK.indexOf(b.dtype) - RANK.indexOf(a.dtype) ||
    (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  );
  const head: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") throw err("write", `metadata "${k}" must be a string`);
    }
    head.__metadata__ = metadata;
  }
  let offset = 0;
  for (const it of items) {
    head[it.name] = { dtype: it.dtype, shape: it.shape, data_offsets: [offset, offset + it.bytes] };
    offset += it.bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(head));
  const padded = new Uint8Array(Math.ceil(json.length / 8) * 8).fill(0x20);
  padded.set(json);
  const header = new Uint8Array(8 + padded.length);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded.length), true);
  header.set(padded, 8);
  return { header, items };
}

/** The bytes of a safetensors file holding `tensors` (and string `metadata`). */
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
 * same directory, which is then renamed over `path` (a crash never leaves a half-written file).
 */
export async function saveSafetensors(
  path: string,
  tensors: Record<string, Tensor>,
  metadata?: Record<string, string>,
): Promise<void> {
  const { header, items } = plan(tensors, metadata);
  const tmp = `${path}.tmp-${Deno.pid}-${Date.now()}`;
  let file: Deno.FsFile | null = null;
  try {
    file = await Deno.open(tmp, { write: true, create: true, truncate: true });
    await writeAll(file, header);
    for (const it of items) await writeAll(file, it.tensor.toBytes());
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
