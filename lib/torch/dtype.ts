/**
 * Data types and devices: names as in PyTorch, codes as in the native ABI.
 *
 * @module
 */
import { TorchError } from "./errors.ts";

/** Element types, named as in PyTorch. */
export type DType =
  | "float32"
  | "float64"
  | "float16"
  | "bfloat16"
  | "int64"
  | "int32"
  | "int16"
  | "int8"
  | "uint8"
  | "bool";

/** A device: `"cpu"`, `"cuda"` or `"cuda:N"`. */
export type Device = "cpu" | "cuda" | `cuda:${number}`;

/** Native dtype codes (c10::ScalarType values). */
export const DTYPE_CODE: Readonly<Record<DType, number>> = {
  uint8: 0,
  int8: 1,
  int16: 2,
  int32: 3,
  int64: 4,
  float16: 5,
  float32: 6,
  float64: 7,
  bool: 11,
  bfloat16: 15,
};

const CODE_DTYPE: Record<number, DType> = Object.fromEntries(
  Object.entries(DTYPE_CODE).map(([k, v]) => [v, k as DType]),
);

/** Bytes per element. */
export const DTYPE_SIZE: Readonly<Record<DType, number>> = {
  uint8: 1,
  int8: 1,
  int16: 2,
  int32: 4,
  int64: 8,
  float16: 2,
  float32: 4,
  float64: 8,
  bool: 1,
  bfloat16: 2,
};

/** True for floating-point dtypes. */
export function isFloating(d: DType): boolean {
  return d === "float32" || d === "float64" || d === "float16" || d === "bfloat16";
}

/** The native code of a dtype; throws a TorchError naming the op for unknown names. */
export function dtypeCode(d: DType, op: string): number {
  const c = DTYPE_CODE[d];
  if (c === undefined) {
    throw new TorchError(
      op,
      `unknown dtype "${d}"; expected one of ${Object.keys(DTYPE_CODE).join(", ")}`,
    );
  }
  return c;
}

/** The dtype of a native code. */
export function dtypeFromCode(c: number): DType {
  const d = CODE_DTYPE[c];
  if (d === undefined) throw new TorchError("dtype", `unsupported native dtype code ${c}`);
  return d;
}

/** Native [type, index] of a device string. */
export function deviceCode(device: string, op: string): [number, number] {
  if (device === "cpu") return [0, 0];
  if (device === "cuda") return [1, 0];
  const m = /^cuda:(\d+)$/.exec(device);
  if (m) return [1, Number(m[1])];
  throw new TorchError(op, `unknown device "${device}"; expected "cpu", "cuda" or "cuda:N"`);
}

/** Device string of a native [type, index]. */
export function deviceFromCode(type: number, index: number): Device {
  if (type === 0) return "cpu";
  if (type === 1) return `cuda:${index}`;
  throw new TorchError("device", `unsupported native device type ${type}`);
}
