/**
 * Creating tensors: from JS data, constants, ranges.
 *
 * @module
 */
import { native } from "./ffi.ts";
import { type Device, deviceCode, type DType, DTYPE_SIZE, dtypeCode, isFloating } from "./dtype.ts";
import { TorchError } from "./errors.ts";
import { type NestedArray, sizesBuf, type Tensor, type TensorData, wrap } from "./tensor.ts";

/** Where and as what to create a tensor. */
export interface CreateOptions {
  /** element type (default float32, or the typed array's own type) */
  dtype?: DType;
  /** device (default cpu) */
  device?: Device;
  /** record operations for gradients (default false) */
  requiresGrad?: boolean;
}

function finish(t: Tensor, o: CreateOptions, op: string): Tensor {
  if (o.device !== undefined && o.device !== "cpu") {
    const moved = (() => {
      try {
        return t.to(o.device!);
      } finally {
        t.free();
      }
    })();
    t = moved;
  }
  if (o.requiresGrad) {
    try {
      t.requiresGrad_(true);
    } catch (e) {
      t.free();
      throw new TorchError(op, (e as Error).message);
    }
  }
  return t;
}

function typedDType(data: TensorData): DType | null {
  if (data instanceof Float32Array) return "float32";
  if (data instanceof Float64Array) return "float64";
  if (data instanceof BigInt64Array) return "int64";
  if (data instanceof Int32Array) return "int32";
  if (data instanceof Int16Array) return "int16";
  if (data instanceof Int8Array) return "int8";
  if (data instanceof Uint8Array) return "uint8";
  return null; // Uint16Array: raw float16 / bfloat16 bits, dtype must be given
}

function inferShape(data: NestedArray, op: string): number[] {
  const shape: number[] = [];
  let v: NestedArray = data;
  while (Array.isArray(v)) {
    shape.push(v.length);
    if (v.length === 0) break;
    v = v[0];
  }
  const check = (x: NestedArray, d: number) => {
    if (d === shape.length) {
      if (Array.isArray(x)) {
        throw new TorchError(op, "ragged nested array (sub-arrays differ in depth)");
      }
      if (typeof x !== "number" && typeof x !== "boolean") {
        throw new TorchError(op, `elements must be numbers or booleans, got ${typeof x}`);
      }
      return;
    }
    if (!Array.isArray(x) || x.length !== shape[d]) {
      throw new TorchError(op, `ragged nested array: expected length ${shape[d]} at depth ${d}`);
    }
    for (const y of x) check(y, d + 1);
  };
  check(data, 0);
  return shape;
}

function flattenNested(data: NestedArray, out: number[]): void {
  if (Array.isArray(data)) { for (const x of data) flattenNested(x, out); }
  else out.push(typeof data === "boolean" ? (data ? 1 : 0) : data);
}

/** Creates a tensor by copying a typed array (with an explicit shape) into native memory. */
export function fromTypedArray(
  data: TensorData,
  shape: readonly number[],
  opts: CreateOptions = {},
): Tensor {
  const own = typedDType(data);
  const dtype = opts.dtype ?? own;
  if (dtype === null) {
    throw new TorchError(
      "fromTypedArray",
      "a Uint16Array holds raw float16 / bfloat16 bits: pass dtype",
    );
  }
  if (own === null && dtype !== "float16" && dtype !== "bfloat16") {
    throw new TorchError(
      "fromTypedArray",
      `a Uint16Array can only hold float16 / bfloat16, not ${dtype}`,
    );
  }
  // the bytes are stored as the array's own type, then cast natively when another dtype is asked
  const store: DType = own ?? dtype;
  const size = DTYPE_SIZE[store];
  let numel = 1;
  for (const s of shape) numel *= s;
  if (Number.isFinite(numel) && numel >= 0 && numel * size !== data.byteLength) {
    throw new TorchError(
      "fromTypedArray",
      `shape [${shape.join(", ")}] needs ${numel} elements but the array has ${
        data.byteLength / size
      }`,
    );
  }
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const h = native().dd_from_buffer(
    bytes,
    data.byteLength,
    dtypeCode(store, "fromTypedArray"),
    sizesBuf(shape, "fromTypedArray"),
    shape.length,
  );
  let t = wrap(h, "fromTypedArray");
  if (store !== dtype) {
    try {
      const c = t.to(dtype);
      t.free();
      t = c;
    } catch (e) {
      t.free();
      throw e;
    }
  }
  return finish(t, opts, "fromTypedArray");
}

/**
 * Creates a tensor of `dtype` and `shape` from raw little-endian bytes (the inverse of
 * `Tensor.toBytes()`); the bytes are copied.
 */
export function fromBytes(
  bytes: Uint8Array,
  dtype: DType,
  shape: readonly number[],
  opts: CreateOptions = {},
): Tensor {
  const code = dtypeCode(dtype, "fromBytes");
  let numel = 1;
  for (const s of shape) numel *= s;
  if (Number.isFinite(numel) && numel >= 0 && numel * DTYPE_SIZE[dtype] !== bytes.byteLength) {
    throw new TorchError(
      "fromBytes",
      `shape [${shape.join(", ")}] of ${dtype} needs ${
        numel * DTYPE_SIZE[dtype]
      } bytes, got ${bytes.byteLength}`,
    );
  }
  const h = native().dd_from_buffer(
    bytes,
    bytes.byteLength,
    code,
    sizesBuf(shape, "fromBytes"),
    shape.length,
  );
  return finish(wrap(h, "fromBytes"), opts, "fromBytes");
}

/**
 * Creates a tensor from JS data: a number, boolean, nested arrays, or a typed array (then
 * `shape` defaults to 1-D). Numbers default to float32, booleans to bool, typed arrays to
 * their own type.
 *
 * @example
 * const x = tensor([[1, 2], [3, 4]]);            // float32 [2, 2]
 * const y = tensor([0, 2, 1], { dtype: "int64" });
 */
export function tensor(
  data: NestedArray | TensorData,
  opts: CreateOptions & { shape?: readonly number[] } = {},
): Tensor {
  if (ArrayBuffer.isView(data)) {
    return fromTypedArray(data as TensorData, opts.shape ?? [(data as TensorData).length], opts);
  }
  const shape = inferShape(data as NestedArray, "tensor");
  const flat: number[] = [];
  flattenNested(data as NestedArray, flat);
  const isBool = typeof firstLeaf(data as NestedArray) === "boolean";
  const dtype = opts.dtype ?? (isBool ? "bool" : "float32");
  if (opts.shape) {
    let n = 1;
    for (const s of opts.shape) n *= s;
    if (n !== flat.length) {
      throw new TorchError(
        "tensor",
        `shape [${opts.shape.join(", ")}] does not match ${flat.length} elements`,
      );
    }
  }
  const target = opts.shape ?? shape;
  if (dtype !== "float32" && dtype !== "float16" && dtype !== "bfloat16") {
    if (!isFloating(dtype)) {
      for (const v of flat) {
        if (!Number.isInteger(v)) {
          throw new TorchError("tensor", `value ${v} is not an integer, as dtype ${dtype} needs`);
        }
      }
    }
    // float64 holds every such value exactly; the native cast gives the final type
    return fromTypedArray(Float64Array.from(flat), target, { ...opts, dtype });
  }
  return fromTypedArray(Float32Array.from(flat), target, { ...opts, dtype });
}

function firstLeaf(x: NestedArray): NestedArray {
  while (Array.isArray(x)) {
    if (x.length === 0) return 0;
    x = x[0];
  }
  return x;
}

function deviceArgs(o: CreateOptions, op: string): [number, number, number] {
  const [t, i] = deviceCode(o.device ?? "cpu", op);
  return [dtypeCode(o.dtype ?? "float32", op), t, i];
}

function req(t: Tensor, o: CreateOptions): Tensor {
  if (!o.requiresGrad) return t;
  try {
    return t.requiresGrad_(true);
  } catch (e) {
    t.free();
    throw e;
  }
}

/** A tensor filled with `value`. */
export function full(shape: readonly number[], value: number, opts: CreateOptions = {}): Tensor {
  const [d, t, i] = deviceArgs(opts, "full");
  return req(
    wrap(native().dd_full(sizesBuf(shape, "full"), shape.length, value, d, t, i), "full"),
    opts,
  );
}

/** A tensor of zeros. */
export function zeros(shape: readonly number[], opts: CreateOptions = {}): Tensor {
  return full(shape, 0, opts);
}

/** A tensor of ones. */
export function ones(shape: readonly number[], opts: CreateOptions = {}): Tensor {
  return full(shape, 1, opts);
}

/** An uninitialised tensor (contents are arbitrary). */
export function empty(shape: readonly number[], opts: CreateOptions = {}): Tensor {
  const [d, t, i] = deviceArgs(opts, "empty");
  return req(
    wrap(native().dd_empty(sizesBuf(shape, "empty"), shape.length, d, t, i), "empty"),
    opts,
  );
}

/** Values start, start+step, … below end (`arange(n)` is 0..n−1). int64 when all arguments are integers. */
export function arange(start: number, end?: number, step = 1, opts: CreateOptions = {}): Tensor {
  if (end === undefined) [start, end] = [0, start];
  const ints = Number.isInteger(start) && Number.isInteger(end) && Number.isInteger(step);
  const [d, t, i] = deviceArgs(
    { ...opts, dtype: opts.dtype ?? (ints ? "int64" : "float32") },
    "arange",
  );
  return req(wrap(native().dd_arange(start, end, step, d, t, i), "arange"), opts);
}

/** `steps` evenly spaced values from start to end inclusive. */
export function linspace(
  start: number,
  end: number,
  steps: number,
  opts: CreateOptions = {},
): Tensor {
  const [d, t, i] = deviceArgs(opts, "linspace");
  if (!Number.isSafeInteger(steps)) {
    throw new TorchError("linspace", `steps must be an integer, got ${steps}`);
  }
  return req(wrap(native().dd_linspace(start, end, steps, d, t, i), "linspace"), opts);
}

/** An n×m identity matrix (m defaults to n). */
export function eye(n: number, m = n, opts: CreateOptions = {}): Tensor {
  const [d, t, i] = deviceArgs(opts, "eye");
  if (!Number.isSafeInteger(n) || !Number.isSafeInteger(m)) {
    throw new TorchError("eye", `sizes must be integers, got ${n}, ${m}`);
  }
  return req(wrap(native().dd_eye(n, m, d, t, i), "eye"), opts);
}

function like(op: number, name: string, t: Tensor, dtype?: DType): Tensor {
  return wrap(
    native().dd_like(op, t._h, dtype === undefined ? -1 : dtypeCode(dtype, name)),
    name,
    t,
  );
}

/** Zeros with the shape, dtype and device of `t` (dtype overridable). */
export function zerosLike(t: Tensor, dtype?: DType): Tensor {
  return like(0, "zerosLike", t, dtype);
}

/** Ones like `t`. */
export function onesLike(t: Tensor, dtype?: DType): Tensor {
  return like(1, "onesLike", t, dtype);
}

/** Uninitialised like `t`. */
export function emptyLike(t: Tensor, dtype?: DType): Tensor {
  return like(2, "emptyLike", t, dtype);
}

/** `value` everywhere, like `t`. */
export function fullLike(t: Tensor, value: number, dtype?: DType): Tensor {
  return wrap(
    native().dd_full_like(t._h, value, dtype === undefined ? -1 : dtypeCode(dtype, "fullLike")),
    "fullLike",
    t,
  );
}

/** A 0-D tensor holding one number. */
export function scalarTensor(value: number, opts: CreateOptions = {}): Tensor {
  return full([], value, opts);
}
