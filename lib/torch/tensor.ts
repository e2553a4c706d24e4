/**
 * The Tensor class: a handle to a libtorch tensor with PyTorch's operators as methods.
 *
 * Every method that returns a new Tensor allocates a native handle that must be freed: by
 * `free()`, by `using`, or by an enclosing {@link scope}. Methods ending in `_` modify the
 * tensor in place and return it. Failures throw {@link TorchError} naming the operator.
 *
 * @module
 */
import { lastError, native } from "./ffi.ts";
import {
  type Device,
  deviceCode,
  deviceFromCode,
  type DType,
  DTYPE_SIZE,
  dtypeCode,
  dtypeFromCode,
} from "./dtype.ts";
import { TorchError } from "./errors.ts";
import { NativeHandle } from "./memory.ts";
import type { Generator } from "./random.ts";

// ---- internal helpers shared by the other modules of lib/torch -------------------------

/** @internal Native op codes (see native/include/densedino.h). */
export const U = {
  neg: 0,
  abs: 1,
  sqrt: 2,
  rsqrt: 3,
  exp: 4,
  log: 5,
  log1p: 6,
  floor: 7,
  ceil: 8,
  round: 9,
  trunc: 10,
  sign: 11,
  sigmoid: 12,
  tanh: 13,
  relu: 14,
  gelu: 15,
  geluTanh: 16,
  silu: 17,
  sin: 18,
  cos: 19,
  reciprocal: 20,
  erf: 21,
  erfinv: 22,
  square: 23,
  logicalNot: 24,
  isnan: 25,
  isfinite: 26,
  contiguous: 27,
  clone: 28,
  detach: 29,
  expm1: 30,
  alias: 31,
} as const;

/** @internal */
export const BIN = {
  add: 0,
  sub: 1,
  mul: 2,
  div: 3,
  pow: 4,
  maximum: 5,
  minimum: 6,
  eq: 7,
  ne: 8,
  lt: 9,
  le: 10,
  gt: 11,
  ge: 12,
  logicalAnd: 13,
  logicalOr: 14,
  remainder: 15,
  atan2: 16,
  floorDivide: 17,
  rsub: 18,
  rdiv: 19,
  rpow: 20,
} as const;

const RED = {
  sum: 0,
  mean: 1,
  amax: 2,
  amin: 3,
  logsumexp: 4,
  prod: 5,
  all: 6,
  any: 7,
  var: 8,
  std: 9,
};

let I64 = new BigInt64Array(16);
let I32 = new Int32Array(16);
let HS = new Uint32Array(16);
const OUT2 = new Uint32Array(2);
const F64 = new Float64Array(4);
const DEV = new Int32Array(2);

function describe(t: Tensor): string {
  if (t._h === 0) return "<freed>";
  try {
    return `[${t.shape.join(", ")}] ${t.dtype}`;
  } catch {
    return "<?>";
  }
}

/** @internal Throws the TorchError for a failed native call on `inputs`. */
export function fail(op: string, inputs: readonly (Tensor | null | undefined)[] = []): never {
  for (const t of inputs) {
    if (t != null && t._h === 0) {
      throw new TorchError(op, "a tensor argument was already freed (use after free())");
    }
  }
  const msg = lastError() || "unknown native error";
  const shown = inputs.filter((t): t is Tensor => t != null && t instanceof Tensor);
  throw new TorchError(op, msg, shown.length ? shown.map(describe).join(", ") : undefined);
}

/** @internal Wraps a handle returned by a native call (0 = failure). */
export function wrap(h: number, op: string, a?: Tensor, b?: Tensor): Tensor {
  if (h === 0) fail(op, [a, b]);
  return new Tensor(h);
}

/** @internal Wraps a handle from a call on a list of inputs. */
export function wrapN(
  h: number,
  op: string,
  inputs: readonly (Tensor | null | undefined)[],
): Tensor {
  if (h === 0) fail(op, inputs);
  return new Tensor(h);
}

/** @internal Checks a status (< 0 = failure). */
export function status(s: number, op: string, a?: Tensor, b?: Tensor): number {
  if (s < 0) fail(op, [a, b]);
  return s;
}

/** @internal Validates a list of integers (sizes / dims). */
function ints(xs: readonly number[], op: string, what: string): void {
  if (!Array.isArray(xs)) throw new TorchError(op, `${what} must be an array of integers`);
  for (const x of xs) {
    if (!Number.isSafeInteger(x)) {
      throw new TorchError(op, `${what} must be integers, got [${xs.join(", ")}]`);
    }
  }
}

/** @internal Sizes as the int64 buffer the native side expects. */
export function sizesBuf(xs: readonly number[], op: string): BigInt64Array {
  ints(xs, op, "sizes");
  if (xs.length > I64.length) I64 = new BigInt64Array(xs.length * 2);
  for (let i = 0; i < xs.length; i++) I64[i] = BigInt(xs[i]);
  return I64;
}

/** @internal Dimensions as an int32 buffer. */
export function dimsBuf(xs: readonly number[], op: string): Int32Array {
  ints(xs, op, "dims");
  if (xs.length > I32.length) I32 = new Int32Array(xs.length * 2);
  for (let i = 0; i < xs.length; i++) I32[i] = xs[i];
  return I32;
}

/** @internal Handles of a tensor list. */
export function handlesBuf(ts: readonly Tensor[], op: string): Uint32Array {
  if (!Array.isArray(ts)) throw new TorchError(op, "expected an array of tensors");
  if (ts.length > HS.length) HS = new Uint32Array(ts.length * 2);
  for (let i = 0; i < ts.length; i++) {
    const t = ts[i];
    if (!(t instanceof Tensor)) throw new TorchError(op, `element ${i} is not a Tensor`);
    if (t._h === 0) throw new TorchError(op, `element ${i} was already freed (use after free())`);
    HS[i] = t._h;
  }
  return HS;
}

/** @internal Handle of an optional tensor argument (0 = none). */
export function optH(t: Tensor | null | undefined, op: string): number {
  if (t == null) return 0;
  if (t._h === 0) {
    throw new TorchError(op, "a tensor argument was already freed (use after free())");
  }
  return t._h;
}

/**
 * @internal Handle of an optional generator argument (0 = the default generator). A freed
 * generator throws instead of silently falling back to the default one.
 */
export function genH(g: Generator | null | undefined, op: string): number {
  if (g == null) return 0;
  if (g._g === 0) throw new TorchError(op, "the generator was already freed (use after free())");
  return g._g;
}

function dimArg(dim: number | number[] | undefined, op: string): [Int32Array, number] {
  if (dim === undefined) return [I32, 0];
  const d = typeof dim === "number" ? [dim] : dim;
  return [dimsBuf(d, op), d.length];
}

function checkInt(x: number, op: string, what: string): void {
  if (!Number.isSafeInteger(x)) throw new TorchError(op, `${what} must be an integer, got ${x}`);
}

// The per-operation paths as plain functions (not private methods): they are the hot path of
// every elementwise operation, and V8 optimises these calls best.
function unary(t: Tensor, op: number, name: string): Tensor {
  return wrap(native().dd_unary(op, t._h), name, t);
}

function binary(t: Tensor, op: number, name: string, other: Tensor | number, alpha = 1): Tensor {
  if (typeof other === "number") {
    return wrap(native().dd_binary_scalar(op, t._h, alpha === 1 ? other : other * alpha), name, t);
  }
  return wrap(native().dd_binary(op, t._h, other._h, alpha), name, t, other);
}

function binaryInPlace<T extends Tensor>(
  t: T,
  op: number,
  name: string,
  other: Tensor | number,
  alpha = 1,
): T {
  if (typeof other === "number") {
    status(native().dd_binary_scalar_(op, t._h, alpha === 1 ? other : other * alpha), name, t);
  } else {
    status(native().dd_binary_(op, t._h, other._h, alpha), name, t, other);
  }
  return t;
}

function reduce(
  t: Tensor,
  op: number,
  name: string,
  dim: number | number[] | undefined,
  o?: ReduceOptions,
  corr = 0,
): Tensor {
  const [buf, n] = dimArg(dim, name);
  return wrap(native().dd_reduce(op, t._h, buf, n, o?.keepdim ? 1 : 0, corr), name, t);
}

/** Options for reductions. */
export interface ReduceOptions {
  /** keep reduced dimensions with size 1 (default false) */
  keepdim?: boolean;
}

/** A pair of tensors returned by max/min/topk/sort along a dimension. */
export interface ValuesIndices {
  /** the selected values */
  values: Tensor;
  /** their int64 indices along the dimension */
  indices: Tensor;
}

/**
 * The typed array {@link Tensor.toTypedArray} returns for a dtype: Float32Array for float32
 * (and float16 / bfloat16, converted), Float64Array, BigInt64Array for int64, Int32Array,
 * Int16Array, Int8Array, Uint8Array for uint8 and bool.
 */
export type TypedArrayOf<D extends DType> = D extends "float64" ? Float64Array
  : D extends "int64" ? BigInt64Array
  : D extends "int32" ? Int32Array
  : D extends "int16" ? Int16Array
  : D extends "int8" ? Int8Array
  : D extends "uint8" | "bool" ? Uint8Array
  : Float32Array;

/** Any typed array a tensor can be read into or created from. */
export type TensorData =
  | Float32Array
  | Float64Array
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array
  | Uint16Array;

/** Nested JS arrays of numbers or booleans, as `toArray()` returns. */
export type NestedArray = number | boolean | NestedArray[];

const MAX_PRINT = 1000;

/** A libtorch tensor. */
export class Tensor extends NativeHandle {
  // cached metadata (a tensor's shape and dtype never change); assigned in the constructor
  declare private _shape: number[] | null;
  declare private _dtype: DType | null;

  /** @internal Use the creation functions (`tensor`, `zeros`, …) instead. */
  constructor(h: number) {
    super(h);
    this._shape = null;
    this._dtype = null;
  }

  /** @internal */
  protected release(h: number): void {
    native().dd_free(h);
  }

  /**
   * @internal Takes ownership of a live native tensor handle that its previous owner gave up
   * with `releaseHandle()` (e.g. on another thread of this process: the handle table is
   * process-wide). The handle must be live (else a TorchError) and must have no other owner:
   * adopting a handle twice leads to a double free. The new Tensor joins the current scope
   * like any other.
   */
  static adopt(h: number): Tensor {
    if (!Number.isInteger(h) || h <= 0 || h > 0xffffffff) {
      throw new TorchError("Tensor.adopt", `not a tensor handle: ${h}`);
    }
    if (native().dd_ndim(h) < 0) fail("Tensor.adopt");
    return new Tensor(h);
  }

  /** @internal The live handle, or a TorchError naming `op` when freed. */
  handle(op = "tensor"): number {
    if (this._h === 0) throw new TorchError(op, "tensor used after free()");
    return this._h;
  }

  // ---- metadata --------------------------------------------------------------------------

  /** The sizes of each dimension. */
  get shape(): number[] {
    if (this._shape === null) {
      const h = this.handle("shape");
      const nd = native().dd_ndim(h);
      if (nd < 0) fail("shape", [this]);
      const buf = new BigInt64Array(Math.max(nd, 1));
      native().dd_shape(h, buf);
      this._shape = Array.from(buf.subarray(0, nd), Number);
    }
    return this._shape.slice();
  }

  /** Number of dimensions. */
  get ndim(): number {
    if (this._shape !== null) return this._shape.length;
    return this.shape.length;
  }

  /** Size of one dimension (negative counts from the end). */
  size(dim: number): number {
    const s = this.shape;
    const d = dim < 0 ? dim + s.length : dim;
    if (!Number.isInteger(d) || d < 0 || d >= s.length) {
      throw new TorchError("size", `dimension ${dim} out of range for a ${s.length}-D tensor`);
    }
    return s[d];
  }

  /** Number of elements. */
  get numel(): number {
    let n = 1;
    for (const s of this.shape) n *= s;
    return n;
  }

  /** Element type. */
  get dtype(): DType {
    if (this._dtype === null) {
      const c = native().dd_dtype(this.handle("dtype"));
      if (c < 0) fail("dtype", [this]);
      this._dtype = dtypeFromCode(c);
    }
    return this._dtype;
  }

  /** Device the data lives on. */
  get device(): Device {
    status(native().dd_device(this.handle("device"), DEV), "device", this);
    return deviceFromCode(DEV[0], DEV[1]);
  }

  /** Strides in elements. */
  strides(): number[] {
    const buf = new BigInt64Array(Math.max(this.ndim, 1));
    const nd = status(native().dd_strides(this.handle("strides"), buf), "strides", this);
    return Array.from(buf.subarray(0, nd), Number);
  }

  /** True when the elements are laid out contiguously in row-major order. */
  get isContiguous(): boolean {
    return status(native().dd_is_contiguous(this.handle("isContiguous")), "isContiguous", this) ===
      1;
  }

  /** True when the two tensors share storage (e.g. one is a view of the other). */
  sharesStorageWith(other: Tensor): boolean {
    return status(
      native().dd_same_storage(this.handle("sharesStorageWith"), other.handle("sharesStorageWith")),
      "sharesStorageWith",
      this,
      other,
    ) === 1;
  }

  // ---- host IO -----------------------------------------------------------------------------

  /**
   * Copies the elements into a new typed array (row-major): Float32Array for float32 (and for
   * float16 / bfloat16, converted), Float64Array, BigInt64Array for int64, Int32Array, …,
   * Uint8Array for uint8 and bool.
   */
  toTypedArray(): TypedArrayOf<DType> {
    const dt = this.dtype;
    if (dt === "float16" || dt === "bfloat16") {
      using f = this.to("float32");
      return f.toTypedArray();
    }
    const n = this.numel;
    let out: TensorData;
    switch (dt) {
      case "float32":
        out = new Float32Array(n);
        break;
      case "float64":
        out = new Float64Array(n);
        break;
      case "int64":
        out = new BigInt64Array(n);
        break;
      case "int32":
        out = new Int32Array(n);
        break;
      case "int16":
        out = new Int16Array(n);
        break;
      case "int8":
        out = new Int8Array(n);
        break;
      default:
        out = new Uint8Array(n);
    }
    status(
      native().dd_to_buffer(this.handle("toTypedArray"), out, n * DTYPE_SIZE[dt]),
      "toTypedArray",
      this,
    );
    return out as TypedArrayOf<DType>;
  }

  /**
   * The raw little-endian bytes of the elements in this dtype (row-major, contiguous). With
   * `into`, the bytes are copied to its start and a view of that part is returned (no new
   * buffer: for writers that stream many tensors through one scratch buffer); `into` must hold
   * at least `numel × element size` bytes.
   */
  toBytes(into?: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> {
    const n = this.numel * DTYPE_SIZE[this.dtype];
    if (into && into.length < n) {
      throw new TorchError("toBytes", `the destination holds ${into.length} bytes, ${n} needed`);
    }
    const out = into ? into.subarray(0, n) : new Uint8Array(n);
    status(native().dd_to_buffer(this.handle("toBytes"), out, out.length), "toBytes", this);
    return out;
  }

  /** The elements as nested JS arrays (numbers; booleans for bool; int64 as numbers). */
  toArray(): NestedArray {
    const flat = this.toTypedArray();
    const isBool = this.dtype === "bool";
    const val = (i: number): number | boolean => {
      const v = flat[i];
      return isBool ? v !== 0 : Number(v);
    };
    const shape = this.shape;
    if (shape.length === 0) return val(0);
    let i = 0;
    const build = (d: number): NestedArray[] => {
      const out: NestedArray[] = [];
      for (let k = 0; k < shape[d]; k++) out.push(d === shape.length - 1 ? val(i++) : build(d + 1));
      return out;
    };
    return build(0);
  }

  /** The value of a one-element tensor as a number. */
  item(): number {
    status(native().dd_item(this.handle("item"), F64), "item", this);
    return F64[0];
  }

  /** A short description, e.g. `Tensor([2, 3] float32 cpu)`, plus values for small tensors. */
  override toString(): string {
    if (this._h === 0) return "Tensor(<freed>)";
    const head = `Tensor([${this.shape.join(", ")}] ${this.dtype} ${this.device}` +
      (this.requiresGrad ? " requires_grad" : "") + ")";
    if (this.numel > MAX_PRINT) return head;
    const fmt = (v: NestedArray): string => {
      if (Array.isArray(v)) return `[${v.map(fmt).join(", ")}]`;
      if (typeof v === "boolean") return String(v);
      return Number.isInteger(v) ? String(v) : v.toPrecision(5);
    };
    return `${head}\n${fmt(this.toArray())}`;
  }

  /** @internal Deno's console.log hook. */
  [Symbol.for("Deno.customInspect")](): string {
    return this.toString();
  }

  // ---- conversion --------------------------------------------------------------------------

  /** Converts to a dtype and/or moves to a device (a new tensor; `copy` forces a copy). */
  to(
    target: DType | Device | {
      dtype?: DType;
      device?: Device;
      nonBlocking?: boolean;
      copy?: boolean;
    },
  ): Tensor {
    let dtype: DType | undefined, device: Device | undefined, nonBlocking = false, copy = false;
    if (typeof target === "string") {
      if (target === "cpu" || target.startsWith("cuda")) device = target as Device;
      else dtype = target as DType;
    } else {
      ({ dtype, device } = target);
      nonBlocking = target.nonBlocking ?? false;
      copy = target.copy ?? false;
    }
    const dc = dtype === undefined ? -1 : dtypeCode(dtype, "to");
    const [dt, di] = device === undefined ? [-1, 0] : deviceCode(device, "to");
    return wrap(native().dd_to(this._h, dc, dt, di, nonBlocking ? 1 : 0, copy ? 1 : 0), "to", this);
  }

  /** Shorthand for `to("float32")` etc. */
  float(): Tensor {
    return this.to("float32");
  }

  /** Shorthand for `to("int64")`. */
  long(): Tensor {
    return this.to("int64");
  }

  /** Copy in page-locked host memory (CUDA builds only) for fast asynchronous uploads. */
  pinMemory(): Tensor {
    return wrap(native().dd_pin_memory(this._h), "pinMemory", this);
  }

  // ---- unary -------------------------------------------------------------------------------

  /** -x */
  neg(): Tensor {
    return unary(this, U.neg, "neg");
  }
  /** |x| */
  abs(): Tensor {
    return unary(this, U.abs, "abs");
  }
  /** √x */
  sqrt(): Tensor {
    return unary(this, U.sqrt, "sqrt");
  }
  /** 1/√x */
  rsqrt(): Tensor {
    return unary(this, U.rsqrt, "rsqrt");
  }
  /** eˣ */
  exp(): Tensor {
    return unary(this, U.exp, "exp");
  }
  /** eˣ − 1 */
  expm1(): Tensor {
    return unary(this, U.expm1, "expm1");
  }
  /** ln x */
  log(): Tensor {
    return unary(this, U.log, "log");
  }
  /** ln(1 + x) */
  log1p(): Tensor {
    return unary(this, U.log1p, "log1p");
  }
  /** ⌊x⌋ */
  floor(): Tensor {
    return unary(this, U.floor, "floor");
  }
  /** ⌈x⌉ */
  ceil(): Tensor {
    return unary(this, U.ceil, "ceil");
  }
  /** Round half to even, as PyTorch. */
  round(): Tensor {
    return unary(this, U.round, "round");
  }
  /** Round toward zero. */
  trunc(): Tensor {
    return unary(this, U.trunc, "trunc");
  }
  /** −1, 0 or 1. */
  sign(): Tensor {
    return unary(this, U.sign, "sign");
  }
  /** 1/(1+e⁻ˣ) */
  sigmoid(): Tensor {
    return unary(this, U.sigmoid, "sigmoid");
  }
  /** tanh x */
  tanh(): Tensor {
    return unary(this, U.tanh, "tanh");
  }
  /** max(x, 0) */
  relu(): Tensor {
    return unary(this, U.relu, "relu");
  }
  /** GELU; exact (erf) by default, `"tanh"` for the tanh approximation. */
  gelu(approximate: "none" | "tanh" = "none"): Tensor {
    return unary(this, approximate === "tanh" ? U.geluTanh : U.gelu, "gelu");
  }
  /** x·sigmoid(x) */
  silu(): Tensor {
    return unary(this, U.silu, "silu");
  }
  /** sin x */
  sin(): Tensor {
    return unary(this, U.sin, "sin");
  }
  /** cos x */
  cos(): Tensor {
    return unary(this, U.cos, "cos");
  }
  /** 1/x */
  reciprocal(): Tensor {
    return unary(this, U.reciprocal, "reciprocal");
  }
  /** erf x */
  erf(): Tensor {
    return unary(this, U.erf, "erf");
  }
  /** erf⁻¹ x */
  erfinv(): Tensor {
    return unary(this, U.erfinv, "erfinv");
  }
  /** x² */
  square(): Tensor {
    return unary(this, U.square, "square");
  }
  /** Logical not (bool result). */
  logicalNot(): Tensor {
    return unary(this, U.logicalNot, "logicalNot");
  }
  /** NaN test (bool result). */
  isnan(): Tensor {
    return unary(this, U.isnan, "isnan");
  }
  /** Finite test (bool result). */
  isfinite(): Tensor {
    return unary(this, U.isfinite, "isfinite");
  }
  /** A contiguous tensor with the same values (itself-sharing when already contiguous). */
  contiguous(): Tensor {
    return unary(this, U.contiguous, "contiguous");
  }
  /** A copy that owns its data (gradients flow back through it). */
  clone(): Tensor {
    return unary(this, U.clone, "clone");
  }
  /**
   * A new handle to this very tensor (same data, same autograd identity): for code that must
   * return a tensor its caller owns when the result is the input itself.
   */
  alias(): Tensor {
    return unary(this, U.alias, "alias");
  }
  /** A view cut from the autograd graph. */
  detach(): Tensor {
    return unary(this, U.detach, "detach");
  }

  // ---- binary ------------------------------------------------------------------------------

  /** this + alpha·other (broadcasting). */
  add(other: Tensor | number, alpha = 1): Tensor {
    return binary(this, BIN.add, "add", other, alpha);
  }
  /** this − alpha·other. */
  sub(other: Tensor | number, alpha = 1): Tensor {
    return binary(this, BIN.sub, "sub", other, alpha);
  }
  /** this · other. */
  mul(other: Tensor | number): Tensor {
    return binary(this, BIN.mul, "mul", other);
  }
  /** this / other (true division). */
  div(other: Tensor | number): Tensor {
    return binary(this, BIN.div, "div", other);
  }
  /** ⌊this / other⌋. */
  floorDivide(other: Tensor | number): Tensor {
    return binary(this, BIN.floorDivide, "floorDivide", other);
  }
  /** this ** other. */
  pow(other: Tensor | number): Tensor {
    return binary(this, BIN.pow, "pow", other);
  }
  /** Python-style modulo (sign of the divisor). */
  remainder(other: Tensor | number): Tensor {
    return binary(this, BIN.remainder, "remainder", other);
  }
  /** Elementwise maximum. */
  maximum(other: Tensor | number): Tensor {
    return binary(this, BIN.maximum, "maximum", other);
  }
  /** Elementwise minimum. */
  minimum(other: Tensor | number): Tensor {
    return binary(this, BIN.minimum, "minimum", other);
  }
  /** atan2(this, other). */
  atan2(other: Tensor): Tensor {
    return binary(this, BIN.atan2, "atan2", other);
  }
  /** other − this (scalar). */
  rsub(s: number): Tensor {
    return wrap(native().dd_binary_scalar(BIN.rsub, this._h, s), "rsub", this);
  }
  /** s / this. */
  rdiv(s: number): Tensor {
    return wrap(native().dd_binary_scalar(BIN.rdiv, this._h, s), "rdiv", this);
  }
  /** s ** this. */
  rpow(s: number): Tensor {
    return wrap(native().dd_binary_scalar(BIN.rpow, this._h, s), "rpow", this);
  }
  /** == (bool result). */
  eq(other: Tensor | number): Tensor {
    return binary(this, BIN.eq, "eq", other);
  }
  /** != (bool result). */
  ne(other: Tensor | number): Tensor {
    return binary(this, BIN.ne, "ne", other);
  }
  /** < (bool result). */
  lt(other: Tensor | number): Tensor {
    return binary(this, BIN.lt, "lt", other);
  }
  /** <= (bool result). */
  le(other: Tensor | number): Tensor {
    return binary(this, BIN.le, "le", other);
  }
  /** > (bool result). */
  gt(other: Tensor | number): Tensor {
    return binary(this, BIN.gt, "gt", other);
  }
  /** >= (bool result). */
  ge(other: Tensor | number): Tensor {
    return binary(this, BIN.ge, "ge", other);
  }
  /** Logical and. */
  logicalAnd(other: Tensor): Tensor {
    return binary(this, BIN.logicalAnd, "logicalAnd", other);
  }
  /** Logical or. */
  logicalOr(other: Tensor): Tensor {
    return binary(this, BIN.logicalOr, "logicalOr", other);
  }
  /** Clamps into [min, max]; either bound may be omitted (undefined / null). */
  clamp(min?: number | Tensor | null, max?: number | Tensor | null): Tensor {
    if (min instanceof Tensor || max instanceof Tensor) {
      const lo = min instanceof Tensor ? min : null;
      const hi = max instanceof Tensor ? max : null;
      if ((min != null && lo === null) || (max != null && hi === null)) {
        throw new TorchError("clamp", "bounds must both be numbers or both be tensors");
      }
      return wrapN(
        native().dd_clamp_tensor(this._h, optH(lo, "clamp"), optH(hi, "clamp")),
        "clamp",
        [this, lo, hi],
      );
    }
    return wrap(
      native().dd_clamp(this._h, min ?? 0, max ?? 0, min == null ? 0 : 1, max == null ? 0 : 1),
      "clamp",
      this,
    );
  }
  /** Replaces elements where `mask` is true with `value`. */
  maskedFill(mask: Tensor, value: number): Tensor {
    return wrap(native().dd_masked_fill(this._h, mask._h, value), "maskedFill", this, mask);
  }
  /** this + weight·(end − this). */
  lerp(end: Tensor, weight: number): Tensor {
    return wrap(native().dd_lerp(this._h, end._h, weight), "lerp", this, end);
  }

  // ---- in place ----------------------------------------------------------------------------

  /** this += alpha·other. */
  add_(other: Tensor | number, alpha = 1): this {
    return binaryInPlace(this, BIN.add, "add_", other, alpha);
  }
  /** this −= alpha·other. */
  sub_(other: Tensor | number, alpha = 1): this {
    return binaryInPlace(this, BIN.sub, "sub_", other, alpha);
  }
  /** this ·= other. */
  mul_(other: Tensor | number): this {
    return binaryInPlace(this, BIN.mul, "mul_", other);
  }
  /** this /= other. */
  div_(other: Tensor | number): this {
    return binaryInPlace(this, BIN.div, "div_", other);
  }
  /** this = this ** s. */
  pow_(s: number): this {
    return binaryInPlace(this, BIN.pow, "pow_", s);
  }
  /** this = max(this, other). */
  maximum_(other: Tensor): this {
    return binaryInPlace(this, BIN.maximum, "maximum_", other);
  }
  /** Copies `src` (broadcast, cast) into this. */
  copy_(src: Tensor): this {
    status(native().dd_copy_(this._h, src._h), "copy_", this, src);
    return this;
  }
  /** Sets every element to `value`. */
  fill_(value: number): this {
    status(native().dd_fill_(this._h, value), "fill_", this);
    return this;
  }
  /** Sets every element to 0. */
  zero_(): this {
    status(native().dd_zero_(this._h), "zero_", this);
    return this;
  }
  /** Clamps in place. */
  clamp_(min?: number | null, max?: number | null): this {
    status(
      native().dd_clamp_(this._h, min ?? 0, max ?? 0, min == null ? 0 : 1, max == null ? 0 : 1),
      "clamp_",
      this,
    );
    return this;
  }
  /** Fills where `mask` is true, in place. */
  maskedFill_(mask: Tensor, value: number): this {
    status(native().dd_masked_fill_(this._h, mask._h, value), "maskedFill_", this, mask);
    return this;
  }
  /** this += weight·(end − this). */
  lerp_(end: Tensor, weight: number): this {
    status(native().dd_lerp_(this._h, end._h, weight), "lerp_", this, end);
    return this;
  }
  /** this += value·a·b. */
  addcmul_(a: Tensor, b: Tensor, value = 1): this {
    status(native().dd_addcmul_(this._h, a._h, b._h, value), "addcmul_", this, a);
    return this;
  }
  /** this += value·a/b. */
  addcdiv_(a: Tensor, b: Tensor, value = 1): this {
    status(native().dd_addcdiv_(this._h, a._h, b._h, value), "addcdiv_", this, a);
    return this;
  }
  /** Fills with U[low, high) draws. */
  uniform_(low = 0, high = 1, generator?: Generator): this {
    status(
      native().dd_random_(0, this._h, low, high, 0, 0, genH(generator, "uniform_")),
      "uniform_",
      this,
    );
    return this;
  }
  /** Fills with N(mean, std²) draws. */
  normal_(mean = 0, std = 1, generator?: Generator): this {
    status(
      native().dd_random_(1, this._h, mean, std, 0, 0, genH(generator, "normal_")),
      "normal_",
      this,
    );
    return this;
  }
  /** Fills with Bernoulli(p) draws (0 / 1). */
  bernoulli_(p = 0.5, generator?: Generator): this {
    status(
      native().dd_random_(2, this._h, p, 0, 0, 0, genH(generator, "bernoulli_")),
      "bernoulli_",
      this,
    );
    return this;
  }
  /**
   * Fills with a normal N(mean, std²) truncated to [a, b], as `torch.nn.init.trunc_normal_`
   * (defaults mean 0, std 1, a −2, b 2; ViT initialisation uses std 0.02).
   */
  truncNormal_(std = 1, mean = 0, a = -2, b = 2, generator?: Generator): this {
    status(
      native().dd_random_(3, this._h, mean, std, a, b, genH(generator, "truncNormal_")),
      "truncNormal_",
      this,
    );
    return this;
  }

  // ---- reductions --------------------------------------------------------------------------

  /** Sum over `dim` (all dimensions when omitted). */
  sum(dim?: number | number[], opts?: ReduceOptions): Tensor {
    return reduce(this, RED.sum, "sum", dim, opts);
  }
  /** Mean over `dim` (all when omitted). */
  mean(dim?: number | number[], opts?: ReduceOptions): Tensor {
    return reduce(this, RED.mean, "mean", dim, opts);
  }
  /** Product over `dim` (all when omitted). */
  prod(dim?: number | number[], opts?: ReduceOptions): Tensor {
    return reduce(this, RED.prod, "prod", dim, opts);
  }
  /** Maximum value over `dim` (all when omitted); see {@link maxDim} for indices. */
  amax(dim?: number | number[], opts?: ReduceOptions): Tensor {
    return reduce(this, RED.amax, "amax", dim, opts);
  }
  /** Minimum value over `dim` (all when omitted). */
  amin(dim?: number | number[], opts?: ReduceOptions): Tensor {
    return reduce(this, RED.amin, "amin", dim, opts);
  }
  /** Same as {@link amax}. */
  max(dim?: number | number[], opts?: ReduceOptions): Tensor {
    return reduce(this, RED.amax, "max", dim, opts);
  }
  /** Same as {@link amin}. */
  min(dim?: number | number[], opts?: ReduceOptions): Tensor {
    return reduce(this, RED.amin, "min", dim, opts);
  }
  /** log Σ exp over `dim` (all when omitted), computed stably. */
  logsumexp(dim?: number | number[], opts?: ReduceOptions): Tensor {
    return reduce(this, RED.logsumexp, "logsumexp", dim, opts);
  }
  /** True where all elements over `dim` are non-zero. */
  all(dim?: number | number[], opts?: ReduceOptions): Tensor {
    return reduce(this, RED.all, "all", dim, opts);
  }
  /** True where any element over `dim` is non-zero. */
  any(dim?: number | number[], opts?: ReduceOptions): Tensor {
    return reduce(this, RED.any, "any", dim, opts);
  }
  /** Variance (unbiased by default). */
  var(dim?: number | number[], opts?: ReduceOptions & { unbiased?: boolean }): Tensor {
    return reduce(this, RED.var, "var", dim, opts, opts?.unbiased === false ? 0 : 1);
  }
  /** Standard deviation (unbiased by default). */
  std(dim?: number | number[], opts?: ReduceOptions & { unbiased?: boolean }): Tensor {
    return reduce(this, RED.std, "std", dim, opts, opts?.unbiased === false ? 0 : 1);
  }
  /** Maximum along `dim` with its indices. */
  maxDim(dim: number, opts?: ReduceOptions): ValuesIndices {
    status(
      native().dd_max_min_dim(RED.amax, this._h, dim, opts?.keepdim ? 1 : 0, OUT2),
      "maxDim",
      this,
    );
    return { values: new Tensor(OUT2[0]), indices: new Tensor(OUT2[1]) };
  }
  /** Minimum along `dim` with its indices. */
  minDim(dim: number, opts?: ReduceOptions): ValuesIndices {
    status(
      native().dd_max_min_dim(RED.amin, this._h, dim, opts?.keepdim ? 1 : 0, OUT2),
      "minDim",
      this,
    );
    return { values: new Tensor(OUT2[0]), indices: new Tensor(OUT2[1]) };
  }
  /** Index of the maximum (over the flattened tensor when `dim` is omitted). */
  argmax(dim?: number, opts?: ReduceOptions): Tensor {
    return wrap(
      native().dd_arg_reduce(
        RED.amax,
        this._h,
        dim ?? 0,
        dim === undefined ? 0 : 1,
        opts?.keepdim ? 1 : 0,
      ),
      "argmax",
      this,
    );
  }
  /** Index of the minimum (over the flattened tensor when `dim` is omitted). */
  argmin(dim?: number, opts?: ReduceOptions): Tensor {
    return wrap(
      native().dd_arg_reduce(
        RED.amin,
        this._h,
        dim ?? 0,
        dim === undefined ? 0 : 1,
        opts?.keepdim ? 1 : 0,
      ),
      "argmin",
      this,
    );
  }
  /** Vector p-norm over `dim` (all when omitted); p may be Infinity. */
  norm(p = 2, dim?: number | number[], opts?: ReduceOptions): Tensor {
    const [buf, n] = dimArg(dim, "norm");
    return wrap(native().dd_norm(this._h, p, buf, n, opts?.keepdim ? 1 : 0), "norm", this);
  }
  /** Softmax along `dim`. */
  softmax(dim: number): Tensor {
    return wrap(native().dd_dim_op(0, this._h, dim), "softmax", this);
  }
  /** Log-softmax along `dim`. */
  logSoftmax(dim: number): Tensor {
    return wrap(native().dd_dim_op(1, this._h, dim), "logSoftmax", this);
  }
  /** Cumulative sum along `dim`. */
  cumsum(dim: number): Tensor {
    return wrap(native().dd_dim_op(2, this._h, dim), "cumsum", this);
  }
  /** Cumulative product along `dim`. */
  cumprod(dim: number): Tensor {
    return wrap(native().dd_dim_op(3, this._h, dim), "cumprod", this);
  }
  /** The k largest (or smallest) elements along `dim` (default last) with their indices. */
  topk(k: number, opts: { dim?: number; largest?: boolean; sorted?: boolean } = {}): ValuesIndices {
    checkInt(k, "topk", "k");
    status(
      native().dd_topk(
        this._h,
        k,
        opts.dim ?? -1,
        opts.largest === false ? 0 : 1,
        opts.sorted === false ? 0 : 1,
        OUT2,
      ),
      "topk",
      this,
    );
    return { values: new Tensor(OUT2[0]), indices: new Tensor(OUT2[1]) };
  }
  /** Sorts along `dim` (default last). */
  sort(opts: { dim?: number; descending?: boolean; stable?: boolean } = {}): ValuesIndices {
    status(
      native().dd_sort(this._h, opts.dim ?? -1, opts.descending ? 1 : 0, opts.stable ? 1 : 0, OUT2),
      "sort",
      this,
    );
    return { values: new Tensor(OUT2[0]), indices: new Tensor(OUT2[1]) };
  }
  /** Indices that sort along `dim`. */
  argsort(opts: { dim?: number; descending?: boolean; stable?: boolean } = {}): Tensor {
    const r = this.sort(opts);
    r.values.free();
    return r.indices;
  }
  /** Counts of each non-negative integer (optionally weighted), at least `minlength` bins. */
  bincount(opts: { weights?: Tensor; minlength?: number } = {}): Tensor {
    return wrap(
      native().dd_bincount(this._h, optH(opts.weights, "bincount"), opts.minlength ?? 0),
      "bincount",
      this,
      opts.weights,
    );
  }

  // ---- shape and indexing ------------------------------------------------------------------

  /** Same data with a new shape (one size may be −1); copies only when needed. */
  reshape(shape: readonly number[]): Tensor {
    return wrap(
      native().dd_reshape(this._h, sizesBuf(shape, "reshape"), shape.length),
      "reshape",
      this,
    );
  }
  /** A view with a new shape (fails when the layout does not allow one). */
  view(shape: readonly number[]): Tensor {
    return wrap(native().dd_view(this._h, sizesBuf(shape, "view"), shape.length), "view", this);
  }
  /** Broadcasts size-1 dimensions to `shape` (−1 keeps a size), without copying. */
  expand(shape: readonly number[]): Tensor {
    return wrap(
      native().dd_expand(this._h, sizesBuf(shape, "expand"), shape.length),
      "expand",
      this,
    );
  }
  /** Expands to another tensor's shape. */
  expandAs(other: Tensor): Tensor {
    return this.expand(other.shape);
  }
  /** Tiles the tensor `reps` times along each dimension. */
  repeat(reps: readonly number[]): Tensor {
    return wrap(native().dd_repeat(this._h, sizesBuf(reps, "repeat"), reps.length), "repeat", this);
  }
  /** Reorders dimensions. */
  permute(dims: readonly number[]): Tensor {
    return wrap(
      native().dd_permute(this._h, dimsBuf(dims, "permute"), dims.length),
      "permute",
      this,
    );
  }
  /** Reverses the order along `dims`. */
  flip(dims: readonly number[]): Tensor {
    return wrap(native().dd_flip(this._h, dimsBuf(dims, "flip"), dims.length), "flip", this);
  }
  /** Swaps two dimensions. */
  transpose(d0: number, d1: number): Tensor {
    return wrap(native().dd_transpose(this._h, d0, d1), "transpose", this);
  }
  /** Removes size-1 dimensions (only `dim` when given). */
  squeeze(dim?: number): Tensor {
    return wrap(native().dd_squeeze(this._h, dim ?? 0, dim === undefined ? 0 : 1), "squeeze", this);
  }
  /** Inserts a size-1 dimension at `dim`. */
  unsqueeze(dim: number): Tensor {
    return wrap(native().dd_unsqueeze(this._h, dim), "unsqueeze", this);
  }
  /** Flattens dimensions start..end (inclusive) into one. */
  flatten(start = 0, end = -1): Tensor {
    return wrap(native().dd_flatten(this._h, start, end), "flatten", this);
  }
  /** A view of `length` elements from `start` along `dim`. */
  narrow(dim: number, start: number, length: number): Tensor {
    checkInt(start, "narrow", "start");
    checkInt(length, "narrow", "length");
    return wrap(native().dd_narrow(this._h, dim, start, length), "narrow", this);
  }
  /** A view of elements start..end (exclusive) with a step along `dim`, as Python slicing. */
  slice(dim: number, start = 0, end = Number.MAX_SAFE_INTEGER, step = 1): Tensor {
    checkInt(start, "slice", "start");
    checkInt(end, "slice", "end");
    checkInt(step, "slice", "step");
    return wrap(native().dd_slice(this._h, dim, start, end, step), "slice", this);
  }
  /** The sub-tensor at `index` along `dim` (that dimension removed). */
  select(dim: number, index: number): Tensor {
    checkInt(index, "select", "index");
    return wrap(native().dd_select(this._h, dim, index), "select", this);
  }
  /** Elements at the int64 `index` positions along `dim`. */
  indexSelect(dim: number, index: Tensor): Tensor {
    return wrap(native().dd_index_select(this._h, dim, index._h), "indexSelect", this, index);
  }
  /** A copy with alpha·`src` added at the int64 `index` positions along `dim` (torch.index_add). */
  indexAdd(dim: number, index: Tensor, src: Tensor, alpha = 1): Tensor {
    return wrapN(
      native().dd_index_add(this._h, dim, index._h, src._h, alpha),
      "indexAdd",
      [this, index, src],
    );
  }
  /** out[i][j] = this[index[i][j]][j] (for dim 0), as torch.gather. */
  gather(dim: number, index: Tensor): Tensor {
    return wrap(native().dd_gather(this._h, dim, index._h), "gather", this, index);
  }
  /** A copy with `src` (or a scalar) written at `index` along `dim`, as torch.scatter. */
  scatter(dim: number, index: Tensor, src: Tensor | number): Tensor {
    const isT = src instanceof Tensor;
    return wrapN(
      native().dd_scatter(
        this._h,
        dim,
        index._h,
        isT ? src.handle("scatter") : 0,
        isT ? 0 : src,
        0,
      ),
      "scatter",
      [this, index, isT ? src : null],
    );
  }
  /** A copy with `src` (or a scalar) added at `index` along `dim`, as torch.scatter_add. */
  scatterAdd(dim: number, index: Tensor, src: Tensor | number): Tensor {
    const isT = src instanceof Tensor;
    return wrapN(
      native().dd_scatter(
        this._h,
        dim,
        index._h,
        isT ? src.handle("scatterAdd") : 0,
        isT ? 0 : src,
        1,
      ),
      "scatterAdd",
      [this, index, isT ? src : null],
    );
  }
  /** The elements where `mask` is true, as a 1-D tensor. */
  maskedSelect(mask: Tensor): Tensor {
    return wrap(native().dd_masked_select(this._h, mask._h), "maskedSelect", this, mask);
  }
  /** Indices of non-zero elements, [n, ndim]. */
  nonzero(): Tensor {
    return wrap(native().dd_nonzero(this._h), "nonzero", this);
  }
  /** Upper triangle (elements below `diagonal` zeroed). */
  triu(diagonal = 0): Tensor {
    return wrap(native().dd_tri(this._h, diagonal, 1), "triu", this);
  }
  /** Lower triangle. */
  tril(diagonal = 0): Tensor {
    return wrap(native().dd_tri(this._h, diagonal, 0), "tril", this);
  }
  /** One-hot encoding of an int64 tensor (int64 result). */
  oneHot(numClasses = -1): Tensor {
    return wrap(native().dd_one_hot(this._h, numClasses), "oneHot", this);
  }
  /** Splits into `chunks` nearly equal views along `dim`. */
  chunk(chunks: number, dim = 0): Tensor[] {
    checkInt(chunks, "chunk", "chunks");
    const cap = Math.max(chunks, 1);
    const out = new Uint32Array(cap);
    const n = status(native().dd_chunk(this._h, chunks, dim, out, cap), "chunk", this);
    return Array.from(out.subarray(0, n), (h) => new Tensor(h));
  }
  /** Splits into views of the given sizes (or equal pieces of `sizes` each) along `dim`. */
  split(sizes: number | readonly number[], dim = 0): Tensor[] {
    let list: number[];
    if (typeof sizes === "number") {
      checkInt(sizes, "split", "split size");
      if (sizes <= 0) throw new TorchError("split", `split size must be positive, got ${sizes}`);
      const total = this.size(dim);
      list = [];
      for (let s = 0; s < total; s += sizes) list.push(Math.min(sizes, total - s));
    } else {
      list = [...sizes];
    }
    const out = new Uint32Array(Math.max(list.length, 1));
    const n = status(
      native().dd_split(this._h, sizesBuf(list, "split"), list.length, dim, out, out.length),
      "split",
      this,
    );
    return Array.from(out.subarray(0, n), (h) => new Tensor(h));
  }

  // ---- linear algebra ------------------------------------------------------------------------

  /** Matrix product with broadcasting (torch.matmul). */
  matmul(other: Tensor): Tensor {
    return wrap(native().dd_matmul(this._h, other._h), "matmul", this, other);
  }
  /** Batched matrix product of [B, n, m] and [B, m, p]. */
  bmm(other: Tensor): Tensor {
    return wrap(native().dd_bmm(this._h, other._h), "bmm", this, other);
  }

  // ---- autograd ----------------------------------------------------------------------------

  /** True when operations on this tensor are recorded for gradients. */
  get requiresGrad(): boolean {
    return status(native().dd_requires_grad(this.handle("requiresGrad")), "requiresGrad", this) ===
      1;
  }
  /** Starts (or stops) recording operations for gradients; returns this. */
  requiresGrad_(flag = true): this {
    if (!flag && !this.isLeaf) {
      // libtorch's C++ API would silently keep recording (the grad_fn stays); PyTorch refuses
      throw new TorchError(
        "requiresGrad_",
        "only leaf tensors can stop requiring grad; use detach() for a computed tensor",
      );
    }
    status(native().dd_set_requires_grad(this._h, flag ? 1 : 0), "requiresGrad_", this);
    return this;
  }
  /** True for tensors created by the user rather than by a recorded operation. */
  get isLeaf(): boolean {
    return status(native().dd_is_leaf(this.handle("isLeaf")), "isLeaf", this) === 1;
  }
  /**
   * Back-propagates from this tensor. A scalar needs no `gradient`; otherwise pass one of the
   * same shape. Gradients accumulate into the leaves' `.grad`.
   */
  backward(gradient?: Tensor, opts: { retainGraph?: boolean } = {}): void {
    status(
      native().dd_backward(this._h, optH(gradient, "backward"), opts.retainGraph ? 1 : 0),
      "backward",
      this,
      gradient,
    );
  }
  /** The accumulated gradient (a new handle each call), or null when there is none. */
  get grad(): Tensor | null {
    const s = status(native().dd_grad(this.handle("grad"), OUT2), "grad", this);
    return s === 1 ? new Tensor(OUT2[0]) : null;
  }
  /**
   * Replaces this tensor's data with `src`'s (shape, dtype and device may change), keeping this
   * handle and its autograd identity — as `p.data = src` in PyTorch. The cached shape and dtype
   * follow. Used to move parameters between devices without invalidating references to them.
   */
  setData_(src: Tensor): this {
    status(native().dd_set_data(this._h, src._h), "setData_", this, src);
    this._shape = null;
    this._dtype = null;
    return this;
  }

  /** Replaces the gradient (null drops it, as `p.grad = None`). */
  setGrad(g: Tensor | null): void {
    status(native().dd_set_grad(this._h, optH(g, "setGrad")), "setGrad", this, g ?? undefined);
  }
}
