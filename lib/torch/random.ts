/**
 * Random numbers: seedable generators and random tensor creation.
 *
 * Every function takes an optional {@link Generator}; without one it uses libtorch's default
 * generator of the target device, which {@link manualSeed} seeds.
 *
 * @module
 */
import { lastError, native } from "./ffi.ts";
import { type Device, deviceCode, type DType, dtypeCode } from "./dtype.ts";
import { TorchError } from "./errors.ts";
import { fail, genH, sizesBuf, status, Tensor, wrap } from "./tensor.ts";

/** Options shared by the random creation functions. */
export interface RandomOptions {
  /** element type (default float32; int64 for randint / randperm) */
  dtype?: DType;
  /** device to create the tensor on (default "cpu") */
  device?: Device;
  /** generator to draw from (default: libtorch's default generator of the device) */
  generator?: Generator;
}

/** A seedable random generator (libtorch's Philox / MT engine of its device). */
export class Generator implements Disposable {
  /** @internal native generator handle; 0 once freed */
  _g: number;

  /** A generator seeded with `seed` for `device` (default cpu). */
  constructor(seed: number | bigint = 0, device: Device = "cpu") {
    const [t, i] = deviceCode(device, "Generator");
    const g = native().dd_generator_new(BigInt(seed), t, i);
    if (g === 0) throw new TorchError("Generator", lastError());
    this._g = g;
  }

  /** Re-seeds the generator. */
  manualSeed(seed: number | bigint): this {
    if (native().dd_generator_seed(this.#live(), BigInt(seed)) < 0) {
      throw new TorchError("Generator.manualSeed", lastError());
    }
    return this;
  }

  /** The full generator state as a uint8 tensor (save it to resume the exact stream). */
  getState(): Tensor {
    return wrap(native().dd_generator_get_state(this.#live()), "Generator.getState");
  }

  /** Restores a state from {@link getState}. */
  setState(state: Tensor): void {
    status(native().dd_generator_set_state(this.#live(), state._h), "Generator.setState", state);
  }

  #live(): number {
    if (this._g === 0) throw new TorchError("Generator", "generator used after free()");
    return this._g;
  }

  /** Releases the generator. */
  free(): void {
    if (this._g !== 0) {
      native().dd_generator_free(this._g);
      this._g = 0;
    }
  }

  /** Same as {@link free}. */
  [Symbol.dispose](): void {
    this.free();
  }
}

/** Seeds libtorch's default generators (CPU and every CUDA device). */
export function manualSeed(seed: number | bigint): void {
  if (native().dd_manual_seed(BigInt(seed)) < 0) throw new TorchError("manualSeed", lastError());
}

/** The default CPU generator's state (uint8 tensor). */
export function getRngState(): Tensor {
  return wrap(native().dd_generator_get_state(0), "getRngState");
}

/** Restores the default CPU generator's state. */
export function setRngState(state: Tensor): void {
  status(native().dd_generator_set_state(0, state._h), "setRngState", state);
}

function target(op: string, o: RandomOptions, dflt: DType): [number, number, number, number] {
  const [t, i] = deviceCode(o.device ?? "cpu", op);
  return [dtypeCode(o.dtype ?? dflt, op), t, i, genH(o.generator, op)];
}

/** U[0, 1) samples of the given shape (float32 by default). */
export function rand(shape: readonly number[], opts: RandomOptions = {}): Tensor {
  const [d, t, i, g] = target("rand", opts, "float32");
  return wrap(native().dd_random(0, sizesBuf(shape, "rand"), shape.length, d, t, i, g), "rand");
}

/** N(0, 1) samples of the given shape (float32 by default). */
export function randn(shape: readonly number[], opts: RandomOptions = {}): Tensor {
  const [d, t, i, g] = target("randn", opts, "float32");
  return wrap(native().dd_random(1, sizesBuf(shape, "randn"), shape.length, d, t, i, g), "randn");
}

/** Integers uniform in [low, high) (int64 by default). */
export function randint(
  low: number,
  high: number,
  shape: readonly number[],
  opts: RandomOptions = {},
): Tensor {
  const [d, t, i, g] = target("randint", opts, "int64");
  if (!Number.isSafeInteger(low) || !Number.isSafeInteger(high)) {
    throw new TorchError("randint", `low and high must be integers, got ${low}, ${high}`);
  }
  return wrap(
    native().dd_randint(low, high, sizesBuf(shape, "randint"), shape.length, d, t, i, g),
    "randint",
  );
}

/** A random permutation of 0..n−1 (int64 by default). */
export function randperm(n: number, opts: RandomOptions = {}): Tensor {
  const [d, t, i, g] = target("randperm", opts, "int64");
  if (!Number.isSafeInteger(n)) throw new TorchError("randperm", `n must be an integer, got ${n}`);
  return wrap(native().dd_randperm(n, d, t, i, g), "randperm");
}

/** Bernoulli draws with per-element probabilities `probs` (same dtype as probs). */
export function bernoulli(probs: Tensor, generator?: Generator): Tensor {
  const h = native().dd_bernoulli(probs._h, genH(generator, "bernoulli"));
  if (h === 0) fail("bernoulli", [probs]);
  return new Tensor(h);
}
