/**
 * Gradient-mode regions. libtorch's grad mode is per thread; these helpers run `fn`
 * synchronously on the calling thread and restore the previous mode afterwards.
 *
 * @module
 */
import { native } from "./ffi.ts";

function withGradMode<T>(enabled: boolean, fn: () => T): T {
  const n = native();
  const prev = n.dd_set_grad_enabled(enabled ? 1 : 0);
  try {
    const r = fn();
    if (
      r !== null && typeof r === "object" && typeof (r as { then?: unknown }).then === "function"
    ) {
      throw new TypeError(
        "noGrad / enableGrad take a synchronous function: grad mode is a per-thread state that an " +
          "await would leak into unrelated work",
      );
    }
    return r;
  } finally {
    n.dd_set_grad_enabled(prev);
  }
}

/** Runs `fn` without recording operations for gradients (torch.no_grad). */
export function noGrad<T>(fn: () => T): T {
  return withGradMode(false, fn);
}

/** Runs `fn` with gradient recording on (torch.enable_grad), e.g. inside a noGrad region. */
export function enableGrad<T>(fn: () => T): T {
  return withGradMode(true, fn);
}

/** True when operations are being recorded for gradients on this thread. */
export function isGradEnabled(): boolean {
  return native().dd_is_grad_enabled() === 1;
}

/** Switches gradient recording on or off for this thread; returns the previous state. */
export function setGradEnabled(enabled: boolean): boolean {
  return native().dd_set_grad_enabled(enabled ? 1 : 0) === 1;
}
