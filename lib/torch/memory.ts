/**
 * Deterministic memory: every native handle is owned by exactly one JS object, freed once —
 * by `free()`, by `using` (Symbol.dispose), or by the scope it was created in.
 *
 * A scope ({@link scope}) frees every handle created while it runs, except those reachable
 * from its return value (tensors, and arrays, objects — plain or class instances, through
 * their own enumerable properties —, Maps and Sets holding them, at any depth) and those
 * marked with {@link keep}. Handles returned from a nested scope move to the enclosing one.
 * Finalizers are deliberately not used: the garbage collector does not see native (or GPU)
 * memory, so relying on it would hold memory for arbitrarily long.
 *
 * @module
 */
import { TorchError } from "./errors.ts";

/** Base class of objects that own one native handle. */
export abstract class NativeHandle implements Disposable {
  // Fields are assigned in the constructor (`declare`: no class-field definitions): creating a
  // handle object is on the per-operation path, where this measurably matters.
  /** @internal the native handle; 0 once freed */
  declare _h: number;
  /** @internal true when excluded from scopes (see {@link keep}) */
  declare _kept: boolean;

  /** Takes ownership of native handle `h` and registers it with the current scope. */
  constructor(h: number) {
    this._h = h;
    this._kept = false;
    live++;
    if (current !== null && current.push(this) >= compactAt) compact(current);
  }

  /** @internal releases the native handle */
  protected abstract release(h: number): void;

  /** True once the handle has been freed. */
  get isFreed(): boolean {
    return this._h === 0;
  }

  /** Frees the native handle now. Idempotent. */
  free(): void {
    const h = this._h;
    if (h !== 0) {
      this._h = 0;
      live--;
      this.release(h);
    }
  }

  /** Same as {@link free}; lets `using t = …` free the tensor at the end of the block. */
  [Symbol.dispose](): void {
    this.free();
  }

  /**
   * @internal Gives up ownership of the native handle **without freeing it** and returns it:
   * this object then reads as freed (scopes skip it) and {@link liveHandles} drops by one,
   * while the native object stays alive. For handing a tensor to another owner — the data
   * loader's Deno Workers send tensors to the main thread this way: the native handle table is
   * process-wide, so a handle is valid on every thread. The caller must give the handle to
   * exactly one new owner (`Tensor.adopt`), or free it natively, or it leaks. Throws when
   * the handle was already freed or released.
   */
  releaseHandle(): number {
    const h = this._h;
    if (h === 0) throw new TorchError("releaseHandle", "the handle was already freed or released");
    this._h = 0;
    live--;
    return h;
  }
}

let live = 0;
let current: NativeHandle[] | null = null;
let depth = 0;

// A long loop inside one scope that frees its tensors as it goes would otherwise grow the
// scope's list without bound: past this length the list drops its freed entries (the
// threshold belongs to the innermost scope; scope() saves and restores it).
const COMPACT_MIN = 4096;
let compactAt = COMPACT_MIN;

function compact(list: NativeHandle[]): void {
  let n = 0;
  for (let i = 0; i < list.length; i++) if (list[i]._h !== 0) list[n++] = list[i];
  list.length = n;
  compactAt = Math.max(COMPACT_MIN, 2 * n);
}

/** Number of handles created from JS and not yet freed (this binding's own count). */
export function liveHandles(): number {
  return live;
}

/** Current scope nesting depth (0 outside any scope). */
export function scopeDepth(): number {
  return depth;
}

/**
 * Every handle reachable from `root`: through arrays, Maps (keys and values), Sets and the own
 * enumerable properties of other objects, at any depth (iterative; cycles are fine). Typed
 * arrays, ArrayBuffers and Promises are not searched.
 */
function collect(root: unknown): Set<NativeHandle> {
  const out = new Set<NativeHandle>();
  const seen = new Set<object>();
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const value = stack.pop();
    if (value === null || typeof value !== "object" || seen.has(value)) continue;
    seen.add(value);
    if (value instanceof NativeHandle) {
      out.add(value);
    } else if (Array.isArray(value)) {
      for (let i = value.length - 1; i >= 0; i--) {
        const v = value[i];
        if (v !== null && typeof v === "object") stack.push(v);
      }
    } else if (value instanceof Map) {
      for (const [k, v] of value) stack.push(k, v);
    } else if (value instanceof Set) {
      for (const v of value) stack.push(v);
    } else if (
      !ArrayBuffer.isView(value) && !(value instanceof ArrayBuffer) &&
      !(value instanceof Promise)
    ) {
      for (const v of Object.values(value)) {
        if (v !== null && typeof v === "object") stack.push(v);
      }
    }
  }
  return out;
}

/**
 * Runs `fn` and frees every tensor created inside it except what it returns (and what was
 * {@link keep}-ed). `fn` must be synchronous: an `await` inside would let other work create
 * tensors that the scope then mistakes for its own.
 *
 * @example
 * const loss = scope(() => model.forward(x).sub(y).square().mean()); // intermediates freed
 */
export function scope<T>(fn: () => T): T {
  const prev = current;
  const prevCompactAt = compactAt;
  const mine: NativeHandle[] = [];
  current = mine;
  compactAt = COMPACT_MIN;
  depth++;
  let result: T;
  try {
    result = fn();
  } catch (e) {
    current = prev;
    compactAt = prevCompactAt;
    depth--;
    for (const h of mine) if (!h._kept) h.free();
    throw e;
  }
  current = prev;
  compactAt = prevCompactAt;
  depth--;
  if (
    result !== null && typeof result === "object" &&
    typeof (result as { then?: unknown }).then === "function"
  ) {
    for (const h of mine) if (!h._kept) h.free();
    throw new TypeError(
      "scope(fn): fn returned a Promise; scopes are synchronous. Use `using` or explicit free() " +
        "around awaits, and scope() inside each synchronous step.",
    );
  }
  const keepSet = collect(result);
  for (const h of mine) {
    if (h._kept || h._h === 0) continue;
    if (keepSet.has(h)) {
      if (prev !== null) prev.push(h);
    } else {
      h.free();
    }
  }
  return result;
}

/**
 * Excludes handles from every scope: they live until freed explicitly (or via `using`).
 * Returns its argument, so `const w = keep(randn([3, 3]))` reads naturally.
 */
export function keep<T>(value: T): T {
  for (const h of collect(value)) h._kept = true;
  return value;
}

/**
 * Frees every handle reachable from `value` (tensors, arrays, objects, Maps, Sets, at any
 * depth). Tensors already freed are skipped.
 */
export function freeAll(value: unknown): void {
  for (const h of collect(value)) h.free();
}
