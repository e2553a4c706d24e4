/**
 * Deterministic memory: every native handle is owned by exactly one JS object, freed once —
 * by `free()`, by `using` (Symbol.dispose), or by the scope it was created in.
 *
 * A scope ({@link scope}) frees every handle created while it runs, except those reachable
 * from its return value (tensors, arrays, plain objects, Maps and Sets of them) and those
 * marked with {@link keep}. Handles returned from a nested scope move to the enclosing one.
 * Finalizers are deliberately not used: the garbage collector does not see native (or GPU)
 * memory, so relying on it would hold memory for arbitrarily long.
 *
 * @module
 */

/** Base class of objects that own one native handle. */
export abstract class NativeHandle implements Disposable {
  /** @internal the native handle; 0 once freed */
  _h: number;
  /** @internal true when excluded from scopes (see {@link keep}) */
  _kept = false;

  constructor(h: number) {
    this._h = h;
    live++;
    if (current !== null) current.push(this);
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
}

let live = 0;
let current: NativeHandle[] | null = null;
let depth = 0;

/** Number of handles created from JS and not yet freed (this binding's own count). */
export function liveHandles(): number {
  return live;
}

/** Current scope nesting depth (0 outside any scope). */
export function scopeDepth(): number {
  return depth;
}

function collect(value: unknown, out: Set<NativeHandle>, seen: Set<unknown>, level: number): void {
  if (value === null || typeof value !== "object" || level > 8 || seen.has(value)) return;
  seen.add(value);
  if (value instanceof NativeHandle) {
    out.add(value);
  } else if (Array.isArray(value)) {
    for (const v of value) collect(v, out, seen, level + 1);
  } else if (value instanceof Map) {
    for (const v of value.values()) collect(v, out, seen, level + 1);
  } else if (value instanceof Set) {
    for (const v of value) collect(v, out, seen, level + 1);
  } else {
    const proto = Object.getPrototypeOf(value);
    if (proto === Object.prototype || proto === null) {
      for (const v of Object.values(value as Record<string, unknown>)) {
        collect(v, out, seen, level + 1);
      }
    }
  }
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
  const mine: NativeHandle[] = [];
  current = mine;
  depth++;
  let result: T;
  try {
    result = fn();
  } catch (e) {
    current = prev;
    depth--;
    for (const h of mine) if (!h._kept) h.free();
    throw e;
  }
  current = prev;
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
  const keepSet = new Set<NativeHandle>();
  collect(result, keepSet, new Set(), 0);
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
  const set = new Set<NativeHandle>();
  collect(value, set, new Set(), 0);
  for (const h of set) h._kept = true;
  return value;
}

/** Frees every handle reachable from `value` (tensors, arrays, plain objects, Maps, Sets). */
export function freeAll(value: unknown): void {
  const set = new Set<NativeHandle>();
  collect(value, set, new Set(), 0);
  for (const h of set) h.free();
}
