/**
 * Mixed precision: autocast regions (bf16 / fp16 on CUDA, bf16 on CPU) and dynamic loss scaling
 * for fp16 (torch.cuda.amp.GradScaler's rule). Autocast, like grad mode, is per thread: the
 * region runs `fn` synchronously on the calling thread.
 *
 * @module
 */
import { lastError, native } from "./ffi.ts";
import { type Device, deviceCode, dtypeCode } from "./dtype.ts";
import { TorchError } from "./errors.ts";
import type { Tensor } from "./tensor.ts";

/** Options of {@link autocast}. */
export interface AutocastOptions {
  /** the device whose ops are autocast (default "cuda") */
  device?: Device;
  /** the low-precision type (default bfloat16) */
  dtype?: "bfloat16" | "float16";
}

/**
 * Runs `fn` with autocast on: eligible ops (matmul, linear, conv, …) run in `dtype`, others
 * (softmax, losses, norms) in float32, as PyTorch's autocast. `fn` must be synchronous.
 */
export function autocast<T>(fn: () => T, opts: AutocastOptions = {}): T {
  const [type] = deviceCode(opts.device ?? "cuda", "autocast");
  const dtype = dtypeCode(opts.dtype ?? "bfloat16", "autocast");
  const prev = new Int32Array(2);
  if (native().dd_autocast_enter(type, dtype, prev) < 0) {
    throw new TorchError("autocast", lastError());
  }
  try {
    const r = fn();
    if (
      r !== null && typeof r === "object" && typeof (r as { then?: unknown }).then === "function"
    ) {
      throw new TypeError("autocast takes a synchronous function (autocast state is per thread)");
    }
    return r;
  } finally {
    native().dd_autocast_exit(type, prev[0], prev[1]);
  }
}

/** Options of {@link GradScaler}; defaults are torch.cuda.amp.GradScaler's. */
export interface GradScalerOptions {
  /** initial scale (default 2^16) */
  initScale?: number;
  /** factor on a run of finite steps (default 2) */
  growthFactor?: number;
  /** factor on a step with inf / NaN gradients (default 0.5) */
  backoffFactor?: number;
  /** finite steps before growing (default 2000) */
  growthInterval?: number;
}

/**
 * Dynamic loss scaling for fp16 training: multiply the loss by `scale` before backward, then
 * {@link unscale} the gradients (one native call; it reports inf / NaN), skip the optimiser
 * step when they overflowed, and {@link update} the scale.
 */
export class GradScaler {
  /** the current scale */
  scale: number;
  /** finite steps since the last change */
  growthTracker = 0;
  readonly #growth: number;
  readonly #backoff: number;
  readonly #interval: number;

  /** A scaler with torch's defaults unless overridden. */
  constructor(opts: GradScalerOptions = {}) {
    this.scale = opts.initScale ?? 65536;
    this.#growth = opts.growthFactor ?? 2;
    this.#backoff = opts.backoffFactor ?? 0.5;
    this.#interval = opts.growthInterval ?? 2000;
    if (!(this.scale > 0) || !(this.#growth > 1) || !(this.#backoff > 0 && this.#backoff < 1)) {
      throw new TorchError(
        "GradScaler",
        "needs initScale > 0, growthFactor > 1, 0 < backoffFactor < 1",
      );
    }
  }

  /** loss · scale (a new tensor). */
  scaleLoss(loss: Tensor): Tensor {
    return loss.mul(this.scale);
  }

  /** Divides every gradient by the scale; true when any gradient is inf or NaN. */
  unscale(params: readonly Tensor[]): boolean {
    const hs = new Uint32Array(params.length);
    params.forEach((p, i) => (hs[i] = p.handle("GradScaler.unscale")));
    const r = native().dd_unscale_grads_(hs, params.length, 1 / this.scale);
    if (r < 0) throw new TorchError("GradScaler.unscale", lastError());
    return r === 1;
  }

  /** Backs off after an overflow, grows after `growthInterval` finite steps. */
  update(foundInf: boolean): void {
    if (foundInf) {
      this.scale *= this.#backoff;
      this.growthTracker = 0;
    } else if (++this.growthTracker >= this.#interval) {
      this.scale *= this.#growth;
      this.growthTracker = 0;
    }
  }

  /** The state for checkpoints. */
  state(): { scale: number; growthTracker: number } {
    return { scale: this.scale, growthTracker: this.growthTracker };
  }

  /** Restores {@link state}. */
  loadState(s: { scale: number; growthTracker: number }): void {
    this.scale = s.scale;
    this.growthTracker = s.growthTracker;
  }
}
