/**
 * The data loader: seeded per-epoch shuffling, batching with `dropLast`, a per-example
 * `transform` and a per-batch `collate`, background prefetch — in the main thread (`workers:
 * 0`) or in Deno Workers that hand tensors back by handle — and unreadable examples skipped
 * with a warning and counted.
 *
 * ```ts
 * await using loader = new DataLoader({
 *   source: { module: new URL("./my_data.ts", import.meta.url), factory: "trainSource" },
 *   batchSize: 64,
 *   seed: 0,
 *   workers: 2,
 * });
 * for (let e = 0; e < epochs; e++) {
 *   for await (const batch of loader.epoch(e)) {
 *     using _ = batch; // or batch.free() / freeAll(batch)
 *     step(batch.images, batch.labels);
 *   }
 *   console.error(loader.stats); // batches, examples, skipped, waitSeconds, …
 * }
 * ```
 *
 * **Order.** Epoch `e` visits the examples in the order of libtorch's `randperm(n)` drawn from a
 * generator seeded with {@link epochSeed}`(seed, e)` (0…n−1 with `shuffle: false`). Batch `k`
 * holds the next `batchSize` readable examples of that order, so the batches are a function of
 * (seed, epoch, data set) alone: never of `prefetch`, `workers` or timing.
 *
 * **Randomness per example.** The transform receives an {@link ExampleRandom} whose seed is
 * {@link exampleSeed}`(epochSeed(seed, e), index)` and whose `generator` (a libtorch Generator,
 * created on first use and freed by the loader) is seeded with it: random augmentations are
 * reproducible and independent of which thread runs them.
 *
 * **Unreadable examples.** When `dataset.get(i)` rejects, the example is skipped: a warning
 * naming it (`dataset.nameOf(i)` and the error's message) goes to stderr (or the `warn`
 * option), `stats.skipped` counts it, and the batch is filled from the following examples, so
 * every batch but the epoch's last has `batchSize` examples. At the epoch's end the remaining
 * examples (fewer than `batchSize`) form a last, smaller batch — or, with `dropLast` (the
 * default), are dropped and counted in `stats.dropped`; a skip therefore never shifts the next
 * epoch. A transform or collate that throws is a bug, not bad data: the error ends the
 * iteration (after the loader has freed everything it held).
 *
 * **Memory.** The caller owns each yielded batch. After a transform the loader frees the
 * sample's tensors that the transform did not return, and after a collate the item tensors
 * that the batch does not contain. Batches prefetched but not yielded are freed when the
 * iteration stops early (`break`, an exception) and by {@link DataLoader.close}; workers free
 * what they hold and exit. `liveTensors()` returns to its value from before the loader.
 *
 * **Workers** (`workers: N ≥ 1`). Functions cannot be posted to a Worker, so the data comes
 * from a {@link SourceSpec}: a module URL, the name of a factory it exports and options (any
 * structured-cloneable value). Each worker imports the module, calls `factory(options)` once
 * and uses the {@link LoaderSource} (`{ dataset, transform? }`, or a bare Dataset) it returns.
 * The main thread hands out chunks of `batchSize` indices of the epoch order to the least busy
 * worker; the worker runs `get` + `transform` per example and posts the items back with every
 * tensor replaced by its native handle, giving up ownership (`releaseHandle()`); the main
 * thread adopts them (`Tensor.adopt`): the native handle table is process-wide. Batches are
 * assembled and collated in the main thread, in order. When closing, the loader cancels the
 * chunks in flight, asks each worker to free what it holds and to dispose its source (its
 * `Symbol.asyncDispose` / `Symbol.dispose`, then those of its dataset: give a data set that
 * holds tensors one), waits for the acknowledgement and terminates it. A `source` also works
 * with `workers: 0` (the main thread imports it), so the worker count can change without
 * changing results.
 *
 * Workers keep a Deno process alive: always `close()` a loader that has workers (or create it
 * with `await using`). Worker threads have libtorch's default thread-local state (grad mode on,
 * no autocast); data tensors rarely need grad, so this seldom matters.
 *
 * @module
 */
import {
  freeAll,
  fromTypedArray,
  Generator,
  liveHandles,
  randperm,
  scope,
  stack,
  Tensor,
  TorchError,
} from "../torch/mod.ts";
import type { Dataset, Sample } from "./dataset.ts";

// ---- public types ------------------------------------------------------------------------

/** The per-example randomness handed to a transform. */
export interface ExampleRandom {
  /** the epoch being loaded */
  readonly epoch: number;
  /** `exampleSeed(epochSeed(seed, epoch), index)`: a non-negative integer below 2^53 */
  readonly seed: number;
  /**
   * A libtorch CPU generator seeded with `seed`, created on first access; the loader frees it
   * when the transform has finished (do not keep it).
   */
  readonly generator: Generator;
}

/**
 * A per-example transform: the loaded sample, its index in the data set and its randomness to
 * an item (anything collate accepts). The loader frees the sample's tensors that the item does
 * not contain. May be async.
 */
export type Transform<T> = (sample: Sample, index: number, rng: ExampleRandom) => T | Promise<T>;

/**
 * Items of one batch (in order) and their data-set indices to a batch. Runs in the main
 * thread; the loader frees the items' tensors that the batch does not contain.
 */
export type Collate<T, B> = (items: T[], indices: number[]) => B;

/** What a {@link SourceSpec}'s factory returns: the data set and an optional transform. */
export interface LoaderSource<T = Sample> {
  /** the data set */
  dataset: Dataset;
  /** the per-example transform (default: the sample itself) */
  transform?: Transform<T>;
}

/**
 * Where workers (or the main thread) get the data from: `module` is imported, its export
 * `factory` is called with `options`, and returns a {@link LoaderSource} or a bare
 * {@link Dataset} (possibly through a Promise). The returned object (and its dataset) is
 * disposed through `Symbol.asyncDispose` / `Symbol.dispose` when the loader closes.
 *
 * ```ts
 * // my_data.ts
 * export function trainSource(o: { root: string; size: number }): LoaderSource<Sample> {
 *   return { dataset: new ImageFolder(o.root), transform: (s) => ({ ...s, image: resize(s.image, o.size) }) };
 * }
 * ```
 */
export interface SourceSpec {
  /**
   * the module: a URL (`new URL("./my_data.ts", import.meta.url)`, `https://…`, `file://…`)
   * or a file path (relative paths resolve against the current directory)
   */
  module: string | URL;
  /** the name of the factory the module exports (default "default") */
  factory?: string;
  /** passed to the factory; must survive structured cloning (JSON-able values do) */
  options?: unknown;
}

/** Options of a {@link DataLoader}. Give exactly one of `dataset` and `source`. */
export interface LoaderOptions<T, B> {
  /** the data set, used in the main thread (`workers: 0` only) */
  dataset?: Dataset;
  /** per-example transform for `dataset` (with `source`, the source brings its own) */
  transform?: Transform<T>;
  /** a module-provided data source; required when `workers` ≥ 1 */
  source?: SourceSpec;
  /** examples per batch (≥ 1) */
  batchSize: number;
  /** visit the examples in a seeded random order per epoch (default true) */
  shuffle?: boolean;
  /** base seed of the epoch orders and of the per-example randomness (default 0) */
  seed?: number;
  /** drop the epoch's last batch when it is short (default true, as for training) */
  dropLast?: boolean;
  /** items to batch (default {@link defaultCollate}) */
  collate?: Collate<T, B>;
  /**
   * batches being prepared ahead of the consumer (default max(2, workers)); with workers, a
   * value below `workers` leaves some idle
   */
  prefetch?: number;
  /** 0 (default): load in the main thread, interleaved with awaits; N ≥ 1: N Deno Workers */
  workers?: number;
  /** where skip warnings go (default: a line on stderr) */
  warn?: (message: string) => void;
  /**
   * Distributed sampling: this process is rank `rank` of `world`, each with batches of
   * `batchSize` (see {@link DataLoader.order}). Every rank draws the same epoch order from the
   * shared seed; rank r takes, from each consecutive chunk of `batchSize · world` indices, the
   * part `[r · batchSize, (r + 1) · batchSize)`. The shards are disjoint, reshuffled per epoch,
   * and the ranks' k-th batches together are exactly the k-th batch of size
   * `batchSize · world` of one unsharded loader (rank 0's examples first). With `dropLast`
   * the last incomplete chunk is dropped on every rank (all ranks get the same batch count);
   * without, it is split the same way (later ranks may get fewer or none).
   */
  shard?: { rank: number; world: number };
  /** how long close() waits for a worker to free what it holds before terminating it (10000) */
  closeTimeoutMs?: number;
}

/** The summary of an epoch (the current one while it runs). */
export interface EpochStats {
  /** the epoch (−1 before the first) */
  epoch: number;
  /** batches yielded */
  batches: number;
  /** examples in the yielded batches */
  examples: number;
  /** unreadable examples skipped (get() rejected) */
  skipped: number;
  /** names of the skipped examples (the first 1000) */
  skippedNames: string[];
  /** readable examples left out by `dropLast` at the epoch's end */
  dropped: number;
  /** seconds the consumer spent waiting for batches (in `next()`), start-up excluded */
  waitSeconds: number;
  /** seconds spent starting the loader (workers, source) during this epoch, if it started then */
  startSeconds: number;
  /** wall-clock seconds from the epoch's first `next()` to its end (or to now) */
  seconds: number;
  /** true once the epoch ran to its end (false while running, after a break or an error) */
  complete: boolean;
  /**
   * The position in the epoch's order just after the last example of the last yielded batch:
   * `epoch(e, { start: nextPosition })` yields exactly the batches that would have followed
   * (a checkpoint taken after a batch resumes from here).
   */
  nextPosition: number;
}

/** The default batch of {@link Sample} items: stacked images, labels and masks. */
export class SampleBatch implements Disposable {
  /** images [B, 3, H, W] */
  images: Tensor;
  /** labels, int64 [B], when every sample has one */
  labels?: Tensor;
  /** masks [B, H, W] (the samples' dtype, uint8), when every sample has one */
  masks?: Tensor;
  /** the samples' names */
  names: string[];
  /** the samples' indices in the data set */
  indices: number[];

  /** A batch of the given parts (the batch owns the tensors). */
  constructor(
    images: Tensor,
    names: string[],
    indices: number[],
    labels?: Tensor,
    masks?: Tensor,
  ) {
    this.images = images;
    this.names = names;
    this.indices = indices;
    if (labels !== undefined) this.labels = labels;
    if (masks !== undefined) this.masks = masks;
  }

  /** Number of examples. */
  get size(): number {
    return this.names.length;
  }

  /** Frees the batch's tensors. */
  free(): void {
    this.images.free();
    this.labels?.free();
    this.masks?.free();
  }

  /** Same as {@link free}. */
  [Symbol.dispose](): void {
    this.free();
  }
}

/**
 * What {@link defaultCollate} makes of items of type `T` other than {@link Sample}: tensors
 * stacked along a new first dimension, numbers and booleans into a [B] tensor, strings into an
 * array, arrays and objects field by field.
 */
export type Collated<T> = T extends Tensor ? Tensor
  : T extends number | boolean ? Tensor
  : T extends string ? string[]
  : T extends undefined | null ? T
  : T extends object ? { [K in keyof T]: Collated<T[K]> }
  : T[];

/** The default batch type of items `T`: a {@link SampleBatch} for samples. */
export type DefaultBatch<T> = T extends Sample ? SampleBatch : Collated<T>;

// ---- seeds -----------------------------------------------------------------------------

const M64 = (1n << 64n) - 1n;

/** splitmix64's finaliser of z + golden gamma. */
function mix64(z: bigint): bigint {
  z = (z + 0x9e3779b97f4a7c15n) & M64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}

function checkSeed(x: number, what: string): void {
  if (!Number.isSafeInteger(x) || x < 0) {
    throw new RangeError(`${what} must be a non-negative integer, got ${x}`);
  }
}

/**
 * The seed of epoch `epoch`'s order (and of its per-example seeds) from the base seed: a
 * splitmix64 mix, below 2^53. Same (seed, epoch), same value, on every machine.
 */
export function epochSeed(seed: number, epoch: number): number {
  checkSeed(seed, "seed");
  checkSeed(epoch, "epoch");
  return Number(mix64(mix64(BigInt(seed)) ^ BigInt(epoch)) >> 11n);
}

/** The seed of example `index` in the epoch whose seed is `epochSeed_` (below 2^53). */
export function exampleSeed(epochSeed_: number, index: number): number {
  return Number(mix64(mix64(BigInt(epochSeed_) ^ 0x5851f42d4c957f2dn) ^ BigInt(index)) >> 11n);
}

class ExampleRng implements ExampleRandom {
  readonly epoch: number;
  readonly seed: number;
  #g: Generator | null = null;

  constructor(epoch: number, seed: number) {
    this.epoch = epoch;
    this.seed = seed;
  }

  get generator(): Generator {
    this.#g ??= new Generator(this.seed);
    return this.#g;
  }

  free(): void {
    this.#g?.free();
    this.#g = null;
  }
}

// ---- tensors inside items ------------------------------------------------------------------

/** A Tensor, also from another copy of the tensor layer (a module imported from another URL). */
function isTensor(v: unknown): v is Tensor {
  if (v instanceof Tensor) return true;
  if (v === null || typeof v !== "object") return false;
  const o = v as { _h?: unknown; releaseHandle?: unknown; free?: unknown; shape?: unknown };
  return typeof o._h === "number" && typeof o.releaseHandle === "function" &&
    typeof o.free === "function" && "shape" in o;
}

function isOpaque(v: object): boolean {
  return ArrayBuffer.isView(v) || v instanceof ArrayBuffer || v instanceof Promise ||
    v instanceof Date || v instanceof RegExp || v instanceof Generator;
}

/**
 * Every tensor reachable from `root` through arrays, Maps, Sets and the own enumerable
 * properties of other objects (the same walk as scope / freeAll).
 */
function tensorsIn(root: unknown): Set<Tensor> {
  const out = new Set<Tensor>();
  const seen = new Set<object>();
  const stackv: unknown[] = [root];
  while (stackv.length > 0) {
    const v = stackv.pop();
    if (v === null || typeof v !== "object" || seen.has(v)) continue;
    seen.add(v);
    if (isTensor(v)) out.add(v);
    else if (Array.isArray(v)) stackv.push(...v);
    else if (v instanceof Map) { for (const [k, x] of v) stackv.push(k, x); }
    else if (v instanceof Set) { for (const x of v) stackv.push(x); }
    else if (!isOpaque(v)) stackv.push(...Object.values(v));
  }
  return out;
}

/** Frees the tensors of `value` that `keepFrom` does not contain. */
function freeExcept(value: unknown, keepFrom: unknown): void {
  const kept = tensorsIn(keepFrom);
  for (const t of tensorsIn(value)) if (!kept.has(t)) t.free();
}

const MARK = "__densedino_tensor_handle__";

/**
 * `value` with every tensor replaced by `{ [MARK]: handle }` (worker side), giving up the
 * tensors' ownership only once the whole structure has been copied; returns the handles.
 * Class instances become plain objects (structured cloning would do the same).
 */
function pack(value: unknown): { packed: unknown; handles: number[] } {
  const found = new Map<Tensor, { [MARK]: number }>();
  const seen = new Map<object, unknown>();
  const walk = (v: unknown): unknown => {
    if (v === null || typeof v !== "object") return v;
    if (isTensor(v)) {
      let m = found.get(v);
      if (m === undefined) {
        if (v._h === 0) throw new TorchError("DataLoader", "a transform returned a freed tensor");
        m = { [MARK]: v._h };
        found.set(v, m);
      }
      return m;
    }
    if (seen.has(v)) return seen.get(v);
    if (isOpaque(v)) return v;
    if (Array.isArray(v)) {
      const out: unknown[] = [];
      seen.set(v, out);
      for (const x of v) out.push(walk(x));
      return out;
    }
    if (v instanceof Map) {
      const out = new Map();
      seen.set(v, out);
      for (const [k, x] of v) out.set(walk(k), walk(x));
      return out;
    }
    if (v instanceof Set) {
      const out = new Set();
      seen.set(v, out);
      for (const x of v) out.add(walk(x));
      return out;
    }
    const out: Record<string, unknown> = {};
    seen.set(v, out);
    for (const [k, x] of Object.entries(v)) out[k] = walk(x);
    return out;
  };
  const packed = walk(value);
  const handles: number[] = [];
  for (const t of found.keys()) handles.push(t.releaseHandle());
  return { packed, handles };
}

/** The inverse of {@link pack} (main side): adopts every handle, once each. */
function revive(value: unknown, adopted: Map<number, Tensor>): unknown {
  if (value === null || typeof value !== "object" || isOpaque(value)) return value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = revive(value[i], adopted);
    return value;
  }
  if (value instanceof Map) {
    const out = new Map();
    for (const [k, x] of value) out.set(revive(k, adopted), revive(x, adopted));
    return out;
  }
  if (value instanceof Set) {
    const out = new Set();
    for (const x of value) out.add(revive(x, adopted));
    return out;
  }
  const rec = value as Record<string, unknown>;
  const keys = Object.keys(rec);
  if (keys.length === 1 && keys[0] === MARK && typeof rec[MARK] === "number") {
    const h = rec[MARK];
    let t = adopted.get(h);
    if (t === undefined) {
      t = Tensor.adopt(h);
      adopted.set(h, t);
    }
    return t;
  }
  for (const k of keys) rec[k] = revive(rec[k], adopted);
  return rec;
}

// ---- collate ----------------------------------------------------------------------------

function isSample(v: unknown): v is Sample {
  return v !== null && typeof v === "object" && isTensor((v as Sample).image) &&
    typeof (v as Sample).name === "string";
}

function sameShapes(ts: Tensor[], what: string, names: (i: number) => string): void {
  const s0 = ts[0].shape.join(",");
  for (let i = 1; i < ts.length; i++) {
    const s = ts[i].shape.join(",");
    if (s !== s0) {
      throw new TorchError(
        "defaultCollate",
        `${what} differ in shape: [${s0}] (${names(0)}) vs [${s}] (${names(i)}); resize them to ` +
          `one size in the transform, or pass a collate`,
      );
    }
  }
}

/** Stacks a batch of samples (see {@link SampleBatch}); all images must have one size. */
export function collateSamples(items: Sample[], indices: number[]): SampleBatch {
  if (items.length === 0) throw new TorchError("defaultCollate", "empty batch");
  const names = items.map((s) => s.name);
  const nameAt = (i: number) => names[i];
  const images = items.map((s) => s.image);
  sameShapes(images, "images", nameAt);
  const nLabels = items.filter((s) => typeof s.label === "number").length;
  if (nLabels !== 0 && nLabels !== items.length) {
    throw new TorchError("defaultCollate", "some samples of the batch have a label, others not");
  }
  const nMasks = items.filter((s) => isTensor(s.mask)).length;
  if (nMasks !== 0 && nMasks !== items.length) {
    throw new TorchError("defaultCollate", "some samples of the batch have a mask, others not");
  }
  const masks = nMasks ? items.map((s) => s.mask as Tensor) : [];
  if (nMasks) sameShapes(masks, "masks", nameAt);
  return scope(() => {
    const img = stack(images);
    const labels = nLabels
      ? fromTypedArray(BigInt64Array.from(items, (s) => BigInt(s.label as number)), [items.length])
      : undefined;
    const mask = nMasks ? stack(masks) : undefined;
    return new SampleBatch(img, names, indices.slice(), labels, mask);
  });
}

function collateValues(values: unknown[], path: string): unknown {
  const first = values[0];
  const kind = (v: unknown) => (isTensor(v) ? "tensor" : Array.isArray(v) ? "array" : typeof v);
  const k0 = kind(first);
  for (const v of values) {
    if (kind(v) !== k0) {
      throw new TorchError(
        "defaultCollate",
        `${path || "items"}: mixed kinds in one batch (${k0} and ${kind(v)})`,
      );
    }
  }
  switch (k0) {
    case "tensor":
      sameShapes(values as Tensor[], path || "items", (i) => `item ${i}`);
      return stack(values as Tensor[]);
    case "number": {
      const xs = values as number[];
      if (xs.every(Number.isSafeInteger)) {
        return fromTypedArray(BigInt64Array.from(xs, (x) => BigInt(x)), [xs.length]);
      }
      return fromTypedArray(Float32Array.from(xs), [xs.length]);
    }
    case "boolean":
      return fromTypedArray(Uint8Array.from(values as boolean[], (b) => (b ? 1 : 0)), [
        values.length,
      ], { dtype: "bool" });
    case "undefined":
      return undefined;
    case "array": {
      const arrs = values as unknown[][];
      const n = arrs[0].length;
      if (arrs.some((a) => a.length !== n)) {
        throw new TorchError("defaultCollate", `${path || "items"}: arrays of different lengths`);
      }
      return Array.from(
        { length: n },
        (_, i) => collateValues(arrs.map((a) => a[i]), `${path}[${i}]`),
      );
    }
    case "object": {
      if (first === null) return null;
      const objs = values as Record<string, unknown>[];
      const keys = Object.keys(objs[0]);
      const out: Record<string, unknown> = {};
      for (const key of keys) {
        out[key] = collateValues(objs.map((o) => o[key]), path ? `${path}.${key}` : key);
      }
      return out;
    }
    default:
      return values.slice(); // strings and anything else: an array
  }
}

/**
 * The default collate: {@link collateSamples} for {@link Sample} items; otherwise PyTorch's
 * default_collate rules — tensors stacked along a new first dimension (same shapes required),
 * integers into an int64 [B] tensor, other numbers float32 [B], booleans bool [B], strings and
 * other values into arrays, arrays and plain objects field by field.
 */
export function defaultCollate<T>(items: T[], indices: number[]): DefaultBatch<T> {
  if (items.length > 0 && items.every(isSample)) {
    return collateSamples(items as Sample[], indices) as DefaultBatch<T>;
  }
  // scope: on a failure part-way, the tensors already made are freed
  return scope(() => collateValues(items, "")) as DefaultBatch<T>;
}

// ---- running examples (shared by the main thread and the workers) ------------------------

type ExampleOutcome<T> =
  | { index: number; ok: true; item: T }
  | { index: number; ok: false; name: string; message: string };

interface ChunkTask {
  id: number;
  token: number;
  epoch: number;
  epochSeed: number;
  indices: number[];
}

/** A transform (or source) failure: a bug, not bad data; ends the iteration. */
class LoaderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LoaderError";
  }
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function nameOf(ds: Dataset, i: number): string {
  try {
    return ds.nameOf(i);
  } catch {
    return `#${i}`;
  }
}

/**
 * Runs get + transform on the chunk's examples in order; returns their outcomes (items owned
 * by the caller), or null when cancelled part-way (what was made is freed). A transform error
 * frees what was made and throws a LoaderError naming the example.
 */
async function runChunk<T>(
  src: LoaderSource<T>,
  task: ChunkTask,
  cancelled: () => boolean,
): Promise<ExampleOutcome<T>[] | null> {
  const out: ExampleOutcome<T>[] = [];
  const ds = src.dataset;
  const dropAll = () => {
    for (const o of out) if (o.ok) freeAll(o.item);
  };
  for (const index of task.indices) {
    if (cancelled()) {
      dropAll();
      return null;
    }
    let sample: Sample;
    try {
      sample = await ds.get(index);
    } catch (e) {
      out.push({ index, ok: false, name: nameOf(ds, index), message: errText(e) });
      continue;
    }
    if (src.transform === undefined) {
      out.push({ index, ok: true, item: sample as T });
      continue;
    }
    const rng = new ExampleRng(task.epoch, exampleSeed(task.epochSeed, index));
    try {
      const item = await src.transform(sample, index, rng);
      freeExcept(sample, item);
      out.push({ index, ok: true, item });
    } catch (e) {
      freeAll(sample);
      dropAll();
      throw new LoaderError(
        `the transform failed on example ${index} (${nameOf(ds, index)}): ${errText(e)}`,
      );
    } finally {
      rng.free();
    }
  }
  return out;
}

function resolveModule(m: string | URL): string {
  if (m instanceof URL) return m.href;
  try {
    return new URL(m).href;
  } catch {
    const abs = m.startsWith("/") ? m : `${Deno.cwd()}/${m}`;
    return new URL(`file://${abs.split("/").map(encodeURIComponent).join("/")}`).href;
  }
}

async function loadSource<T>(spec: SourceSpec): Promise<LoaderSource<T>> {
  const url = resolveModule(spec.module);
  const name = spec.factory ?? "default";
  let mod: Record<string, unknown>;
  try {
    mod = await import(url);
  } catch (e) {
    throw new LoaderError(`DataLoader: could not import the source module ${url}: ${errText(e)}`);
  }
  const f = mod[name];
  if (typeof f !== "function") {
    throw new LoaderError(
      `DataLoader: the source module ${url} has no function export "${name}" (exports: ${
        Object.keys(mod).join(", ") || "none"
      })`,
    );
  }
  let got: unknown;
  try {
    got = await f(spec.options);
  } catch (e) {
    throw new LoaderError(`DataLoader: ${url} ${name}(options) failed: ${errText(e)}`);
  }
  const isDs = (d: unknown): d is Dataset =>
    d !== null && typeof d === "object" && typeof (d as Dataset).get === "function" &&
    typeof (d as Dataset).length === "number" && typeof (d as Dataset).nameOf === "function";
  if (isDs(got)) return { dataset: got };
  const s = got as LoaderSource<T> | null;
  if (s === null || typeof s !== "object" || !isDs(s.dataset)) {
    throw new LoaderError(
      `DataLoader: ${url} ${name}(options) must return { dataset, transform? } or a Dataset`,
    );
  }
  if (s.transform !== undefined && typeof s.transform !== "function") {
    throw new LoaderError(`DataLoader: ${url} ${name}(options): transform is not a function`);
  }
  return s;
}

async function disposeSource(src: LoaderSource<unknown>): Promise<void> {
  const targets = new Set<unknown>([src, src.dataset]);
  for (const t of targets) {
    const o = t as Partial<AsyncDisposable & Disposable>;
    if (typeof o[Symbol.asyncDispose] === "function") await o[Symbol.asyncDispose]!();
    else if (typeof o[Symbol.dispose] === "function") o[Symbol.dispose]!();
  }
}

// ---- backends ----------------------------------------------------------------------------

interface Backend<T> {
  readonly length: number;
  /** outcomes with items owned by the main thread; null when cancelled */
  run(task: ChunkTask): Promise<ExampleOutcome<T>[] | null>;
  cancel(token: number): void;
  close(): Promise<void>;
}

class InlineBackend<T> implements Backend<T> {
  readonly #src: LoaderSource<T>;
  readonly #owned: boolean;
  readonly #cancelled = new Set<number>();
  #closed = false;

  constructor(src: LoaderSource<T>, owned: boolean) {
    this.#src = src;
    this.#owned = owned;
  }

  get length(): number {
    return this.#src.dataset.length;
  }

  run(task: ChunkTask): Promise<ExampleOutcome<T>[] | null> {
    return runChunk(this.#src, task, () => this.#closed || this.#cancelled.has(task.token));
  }

  cancel(token: number): void {
    this.#cancelled.add(token);
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#owned) await disposeSource(this.#src as LoaderSource<unknown>);
  }
}

/** Main → worker messages. */
type ToWorker =
  | { type: "init"; spec: { module: string; factory?: string; options?: unknown } }
  | ({ type: "run" } & ChunkTask)
  | { type: "cancel"; token: number }
  | { type: "close" };

/** Worker → main messages. */
type FromWorker =
  | { type: "ready"; length: number }
  | { type: "init-error"; message: string }
  | { type: "result"; id: number; outcomes: unknown[] | null; handles: number[] }
  | { type: "fail"; id: number; message: string }
  | { type: "closed"; leftover: number; message?: string };

const WORKER_NAME = "densedino-data-loader";
const WORKER_FLAG = Symbol.for("densedino.dataLoaderWorker");

interface Pending<T> {
  resolve(v: ExampleOutcome<T>[] | null): void;
  reject(e: unknown): void;
}

class WorkerSlot<T> {
  readonly worker: Worker;
  readonly pending = new Map<number, Pending<T>>();
  dead: Error | null = null;
  onReady: ((m: FromWorker) => void) | null = null;
  onClosed: ((m: FromWorker) => void) | null = null;
  readonly index: number;
  readonly warn: (m: string) => void;

  constructor(index: number, warn: (m: string) => void) {
    this.index = index;
    this.warn = warn;
    this.worker = new Worker(import.meta.url, { type: "module", name: WORKER_NAME });
    this.worker.onmessage = (ev: MessageEvent<FromWorker>) => this.#message(ev.data);
    this.worker.onerror = (ev: ErrorEvent) => {
      ev.preventDefault();
      this.#die(new LoaderError(`DataLoader worker ${index} failed: ${ev.message}`));
    };
    this.worker.onmessageerror = () => {
      this.#die(new LoaderError(`DataLoader worker ${index}: a message could not be read`));
    };
  }

  #die(e: Error): void {
    if (this.dead === null) this.dead = e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
    this.onReady?.({ type: "init-error", message: e.message });
    this.onClosed?.({ type: "closed", leftover: 0, message: e.message });
  }

  #message(m: FromWorker): void {
    switch (m.type) {
      case "ready":
      case "init-error":
        this.onReady?.(m);
        return;
      case "closed":
        this.onClosed?.(m);
        return;
      case "result": {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        // adopt first: the handles have no other owner, whatever happens next
        const adopted = new Map<number, Tensor>();
        for (const h of m.handles) adopted.set(h, Tensor.adopt(h));
        if (m.outcomes === null) {
          for (const t of adopted.values()) t.free();
          p?.resolve(null);
          return;
        }
        const outcomes = m.outcomes.map((o) => revive(o, adopted) as ExampleOutcome<T>);
        if (p === undefined) freeAll(outcomes);
        else p.resolve(outcomes);
        return;
      }
      case "fail": {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        p?.reject(new LoaderError(m.message));
        return;
      }
    }
  }

  post(m: ToWorker): void {
    this.worker.postMessage(m);
  }
}

class WorkerBackend<T> implements Backend<T> {
  readonly #slots: WorkerSlot<T>[];
  readonly #closeTimeoutMs: number;
  #length = 0;
  #next = 1;

  private constructor(slots: WorkerSlot<T>[], closeTimeoutMs: number) {
    this.#slots = slots;
    this.#closeTimeoutMs = closeTimeoutMs;
  }

  /** Starts `n` workers, each importing the source; all must report the same length. */
  static async start<T>(
    n: number,
    spec: SourceSpec,
    warn: (m: string) => void,
    closeTimeoutMs: number,
  ): Promise<WorkerBackend<T>> {
    const slots: WorkerSlot<T>[] = [];
    const backend = new WorkerBackend<T>(slots, closeTimeoutMs);
    const module = resolveModule(spec.module);
    try {
      for (let i = 0; i < n; i++) slots.push(new WorkerSlot<T>(i, warn));
      const lengths = await Promise.all(slots.map((s) =>
        new Promise<number>((resolve, reject) => {
          s.onReady = (m) => {
            s.onReady = null;
            if (m.type === "ready") resolve(m.length);
            else reject(new LoaderError((m as { message: string }).message));
          };
          s.post({
            type: "init",
            spec: { module, factory: spec.factory, options: spec.options },
          });
        })
      ));
      if (lengths.some((l) => l !== lengths[0])) {
        throw new LoaderError(
          `DataLoader: the workers' data sets differ in length (${lengths.join(", ")}): the ` +
            `source must build the same data set in every worker`,
        );
      }
      backend.#length = lengths[0];
      return backend;
    } catch (e) {
      await backend.close();
      throw e;
    }
  }

  get length(): number {
    return this.#length;
  }

  run(task: ChunkTask): Promise<ExampleOutcome<T>[] | null> {
    let best: WorkerSlot<T> | null = null;
    for (const s of this.#slots) {
      if (s.dead !== null) continue;
      if (best === null || s.pending.size < best.pending.size) best = s;
    }
    if (best === null) {
      return Promise.reject(this.#slots[0]?.dead ?? new LoaderError("DataLoader: no workers"));
    }
    const slot = best;
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      slot.pending.set(id, { resolve, reject });
      slot.post({ type: "run", ...task, id });
    });
  }

  cancel(token: number): void {
    for (const s of this.#slots) if (s.dead === null) s.post({ type: "cancel", token });
  }

  async close(): Promise<void> {
    await Promise.all(this.#slots.map((s) => this.#closeSlot(s)));
  }

  async #closeSlot(s: WorkerSlot<T>): Promise<void> {
    if (s.dead === null) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const acked = await new Promise<FromWorker | null>((resolve) => {
        s.onClosed = resolve;
        timer = setTimeout(() => resolve(null), this.#closeTimeoutMs);
        try {
          s.post({ type: "close" });
        } catch {
          resolve(null);
        }
      });
      clearTimeout(timer);
      s.onClosed = null;
      if (acked === null) {
        s.warn(
          `DataLoader: worker ${s.index} did not finish within ${this.#closeTimeoutMs} ms; ` +
            `terminated (the tensors it held are lost)`,
        );
      } else if (acked.type === "closed" && acked.message) {
        s.warn(`DataLoader: worker ${s.index}: ${acked.message}`);
      } else if (acked.type === "closed" && acked.leftover > 0) {
        s.warn(
          `DataLoader: worker ${s.index} still held ${acked.leftover} tensor(s) after disposing ` +
            `its source (give the source or its dataset a [Symbol.dispose]() that frees them)`,
        );
      }
    }
    s.worker.terminate();
    const e = s.dead ?? new LoaderError("DataLoader: closed");
    for (const p of s.pending.values()) p.reject(e);
    s.pending.clear();
    s.dead ??= e;
  }
}

// ---- the worker side ---------------------------------------------------------------------

function workerMain(): void {
  const g = globalThis as unknown as {
    postMessage(m: FromWorker): void;
    onmessage: ((ev: MessageEvent<ToWorker>) => void) | null;
  };
  let src: LoaderSource<unknown> | null = null;
  const cancelled = new Set<number>();
  let closing = false;
  const queue: ToWorker[] = [];
  let running = false;

  const post = (m: FromWorker) => g.postMessage(m);

  async function handle(m: ToWorker): Promise<void> {
    switch (m.type) {
      case "init":
        try {
          src = await loadSource(m.spec);
          post({ type: "ready", length: src.dataset.length });
        } catch (e) {
          post({ type: "init-error", message: errText(e) });
        }
        return;
      case "run": {
        const stop = () => closing || cancelled.has(m.token);
        if (src === null || stop()) {
          post({ type: "result", id: m.id, outcomes: null, handles: [] });
          return;
        }
        let outcomes: ExampleOutcome<unknown>[] | null;
        try {
          outcomes = await runChunk(src, m, stop);
        } catch (e) {
          post({ type: "fail", id: m.id, message: errText(e) });
          return;
        }
        if (outcomes === null) {
          post({ type: "result", id: m.id, outcomes: null, handles: [] });
          return;
        }
        let packed: { packed: unknown; handles: number[] };
        try {
          packed = pack(outcomes);
        } catch (e) {
          freeAll(outcomes);
          post({ type: "fail", id: m.id, message: `DataLoader worker: ${errText(e)}` });
          return;
        }
        try {
          post({
            type: "result",
            id: m.id,
            outcomes: packed.packed as unknown[],
            handles: packed.handles,
          });
        } catch (e) {
          // not cloneable: the handles are still ours, free them
          for (const h of packed.handles) Tensor.adopt(h).free();
          post({
            type: "fail",
            id: m.id,
            message: `DataLoader worker: a transform's item could not be posted: ${errText(e)}`,
          });
        }
        return;
      }
      case "close": {
        let message: string | undefined;
        try {
          if (src !== null) await disposeSource(src);
        } catch (e) {
          message = `disposing the source failed: ${errText(e)}`;
        }
        src = null;
        post({ type: "closed", leftover: liveHandles(), message });
        return;
      }
      default:
        return;
    }
  }

  async function pump(): Promise<void> {
    running = true;
    while (queue.length > 0) await handle(queue.shift()!);
    running = false;
  }

  g.onmessage = (ev) => {
    const m = ev.data;
    if (m.type === "cancel") {
      cancelled.add(m.token);
      return;
    }
    if (m.type === "close") closing = true;
    queue.push(m);
    if (!running) void pump();
  };
}

{
  const g = globalThis as unknown as Record<string | symbol, unknown>;
  if (
    g.name === WORKER_NAME && typeof g.postMessage === "function" && g[WORKER_FLAG] !== true &&
    typeof (g as { WorkerGlobalScope?: unknown }).WorkerGlobalScope === "function"
  ) {
    g[WORKER_FLAG] = true; // one handler even when the source imports this module again
    workerMain();
  }
}

// ---- the loader ----------------------------------------------------------------------------

type Settled<T> = { ok: true; value: ExampleOutcome<T>[] | null } | { ok: false; error: unknown };

function settle<T>(p: Promise<ExampleOutcome<T>[] | null>): Promise<Settled<T>> {
  return p.then((value) => ({ ok: true as const, value }), (error) => ({ ok: false, error }));
}

function newStats(epoch: number): EpochStats {
  return {
    epoch,
    batches: 0,
    examples: 0,
    skipped: 0,
    skippedNames: [],
    dropped: 0,
    waitSeconds: 0,
    startSeconds: 0,
    seconds: 0,
    complete: false,
    nextPosition: 0,
  };
}

let nextToken = 1;

/** One epoch's in-flight state; cleanup() frees everything it holds (idempotent). */
class EpochRun<T> {
  readonly token = nextToken++;
  readonly pending: (Promise<Settled<T>> | undefined)[] = [];
  readonly fifo: { index: number; item: T }[] = [];
  #cleanup: Promise<void> | null = null;
  cancelled = false;

  constructor(readonly backend: Backend<T>) {}

  cleanup(): Promise<void> {
    this.#cleanup ??= (async () => {
      this.cancelled = true;
      this.backend.cancel(this.token);
      for (const x of this.fifo.splice(0)) freeAll(x.item);
      const waits = this.pending.splice(0).filter((p) => p !== undefined);
      for (const r of await Promise.all(waits)) {
        if (r.ok && r.value !== null) { for (const o of r.value) if (o.ok) freeAll(o.item); }
      }
    })();
    return this.#cleanup;
  }
}

/**
 * Batches of a data set, epoch by epoch, prepared ahead of the consumer. See the module
 * documentation for the order, the randomness, skipping, memory and the worker protocol.
 */
export class DataLoader<T = Sample, B = DefaultBatch<T>> implements AsyncDisposable {
  /** examples per batch */
  readonly batchSize: number;
  /** whether each epoch visits the examples in a seeded random order */
  readonly shuffle: boolean;
  /** the base seed */
  readonly seed: number;
  /** whether a short last batch is dropped */
  readonly dropLast: boolean;
  /** batches prepared ahead of the consumer */
  readonly prefetch: number;
  /** number of Deno Workers (0 = main thread) */
  readonly workers: number;
  /** this loader's shard ({ rank: 0, world: 1 } when not distributed) */
  readonly shard: { readonly rank: number; readonly world: number };

  readonly #opts: LoaderOptions<T, B>;
  readonly #collate: Collate<T, B>;
  readonly #warn: (m: string) => void;
  #backend: Promise<Backend<T>> | null = null;
  #length = -1;
  #active: EpochRun<T> | null = null;
  #stats: EpochStats = newStats(-1);
  #epochStart = 0;
  #closing: Promise<void> | null = null;

  /** A loader; nothing starts until {@link ready} or the first epoch. */
  constructor(opts: LoaderOptions<T, B>) {
    const int = (v: number, min: number, what: string) => {
      if (!Number.isSafeInteger(v) || v < min) {
        throw new RangeError(`DataLoader: ${what} must be an integer ≥ ${min}, got ${v}`);
      }
      return v;
    };
    if ((opts.dataset === undefined) === (opts.source === undefined)) {
      throw new TypeError("DataLoader: give exactly one of `dataset` and `source`");
    }
    this.batchSize = int(opts.batchSize, 1, "batchSize");
    this.workers = int(opts.workers ?? 0, 0, "workers");
    this.prefetch = int(opts.prefetch ?? Math.max(2, this.workers), 1, "prefetch");
    this.seed = opts.seed ?? 0;
    checkSeed(this.seed, "DataLoader: seed");
    this.shuffle = opts.shuffle ?? true;
    this.dropLast = opts.dropLast ?? true;
    const world = int(opts.shard?.world ?? 1, 1, "shard.world");
    const rank = int(opts.shard?.rank ?? 0, 0, "shard.rank");
    if (rank >= world) {
      throw new RangeError(`DataLoader: shard.rank ${rank} is outside 0…${world - 1}`);
    }
    this.shard = Object.freeze({ rank, world });
    if (opts.dataset !== undefined && this.workers > 0) {
      throw new TypeError(
        "DataLoader: workers need a `source` (module URL + factory name + options): a dataset " +
          "object and its functions cannot be sent to a worker",
      );
    }
    if (opts.source !== undefined && opts.transform !== undefined) {
      throw new TypeError("DataLoader: with `source`, the transform comes from the source");
    }
    this.#opts = opts;
    this.#collate = opts.collate ?? (defaultCollate as unknown as Collate<T, B>);
    this.#warn = opts.warn ?? ((m: string) => console.error(m));
  }

  /** Starts the workers (or imports the source) and learns the data set's length. */
  async ready(): Promise<void> {
    if (this.#closing !== null) throw new LoaderError("DataLoader: the loader is closed");
    await this.#getBackend();
  }

  #getBackend(): Promise<Backend<T>> {
    this.#backend ??= (async () => {
      const o = this.#opts;
      let b: Backend<T>;
      if (o.dataset !== undefined) {
        b = new InlineBackend<T>({ dataset: o.dataset, transform: o.transform }, false);
      } else if (this.workers === 0) {
        b = new InlineBackend<T>(await loadSource<T>(o.source!), true);
      } else {
        b = await WorkerBackend.start<T>(
          this.workers,
          o.source!,
          this.#warn,
          o.closeTimeoutMs ?? 10000,
        );
      }
      this.#length = b.length;
      return b;
    })();
    return this.#backend;
  }

  /** Number of examples in the data set (after {@link ready}). */
  get length(): number {
    if (this.#length < 0) throw new Error("DataLoader: length is known after `await ready()`");
    return this.#length;
  }

  /** Batches per epoch (of this rank's shard) when no example is skipped (after {@link ready}). */
  get batchesPerEpoch(): number {
    const n = this.shard.world === 1 ? this.length : this.#shardLength();
    return this.dropLast ? Math.floor(n / this.batchSize) : Math.ceil(n / this.batchSize);
  }

  #shardLength(): number {
    const n = this.length, B = this.batchSize, { rank, world } = this.shard;
    const full = Math.floor(n / (B * world));
    if (this.dropLast) return full * B;
    const tail = n - full * B * world;
    return full * B + Math.max(0, Math.min(B, tail - rank * B));
  }

  /** The summary of the current (or last) epoch: a copy. */
  get stats(): EpochStats {
    const s = { ...this.#stats, skippedNames: this.#stats.skippedNames.slice() };
    if (!s.complete && this.#active !== null) {
      s.seconds = (performance.now() - this.#epochStart) / 1e3;
    }
    return s;
  }

  /**
   * The order in which epoch `e` visits the data set's indices (after {@link ready}); with a
   * `shard`, this rank's part of it (see {@link LoaderOptions.shard}).
   */
  order(e: number): number[] {
    const n = this.length;
    let full: number[];
    if (!this.shuffle) full = Array.from({ length: n }, (_, i) => i);
    else {
      checkSeed(e, "DataLoader: epoch");
      using g = new Generator(epochSeed(this.seed, e));
      using p = randperm(n, { generator: g });
      full = Array.from(p.toTypedArray() as BigInt64Array, Number);
    }
    const { rank, world } = this.shard;
    if (world === 1) return full;
    const B = this.batchSize, G = B * world;
    const chunks = this.dropLast ? Math.floor(n / G) : Math.ceil(n / G);
    const mine: number[] = [];
    for (let c = 0; c < chunks; c++) {
      const from = Math.min(c * G + rank * B, n);
      mine.push(...full.slice(from, Math.min(from + B, (c + 1) * G, n)));
    }
    return mine;
  }

  /**
   * The batches of epoch `e`, in order. Iterate it to the end or break out of it (which frees
   * the prefetched batches); one epoch at a time.
   */
  async *epoch(e: number, opts: { start?: number } = {}): AsyncGenerator<B, void, undefined> {
    checkSeed(e, "DataLoader: epoch");
    const startAt = opts.start ?? 0;
    if (this.#closing !== null) throw new LoaderError("DataLoader: the loader is closed");
    if (this.#active !== null) {
      throw new LoaderError(
        `DataLoader: epoch ${e} started while epoch ${this.#stats.epoch} is still being ` +
          `iterated; finish it or break out of it first`,
      );
    }
    const stats = newStats(e);
    const t0 = performance.now();
    const backend = await this.#getBackend();
    stats.startSeconds = (performance.now() - t0) / 1e3;
    if (this.#closing !== null) throw new LoaderError("DataLoader: the loader is closed");
    if (this.#active !== null) throw new LoaderError("DataLoader: another epoch started");
    const full = this.order(e);
    if (!Number.isInteger(startAt) || startAt < 0 || startAt > full.length) {
      throw new LoaderError(
        `DataLoader: start ${startAt} is outside the epoch's order 0..${full.length}`,
      );
    }
    // resuming mid-epoch: the batches are the next readable examples from `start` on, whatever
    // the chunking, so they equal those of an uninterrupted epoch
    const order = full.slice(startAt);
    const position = new Map(order.map((index, k) => [index, startAt + k]));
    stats.nextPosition = startAt;
    const eSeed = epochSeed(this.seed, e);
    const run = new EpochRun<T>(backend);
    this.#active = run;
    this.#stats = stats;
    this.#epochStart = t0;
    const B = this.batchSize;
    const nChunks = Math.ceil(order.length / B);
    let dispatched = 0;
    let consumed = 0;
    let yielded = 0;
    const start = () => {
      const c = dispatched++;
      const task: ChunkTask = {
        id: 0,
        token: run.token,
        epoch: e,
        epochSeed: eSeed,
        indices: order.slice(c * B, (c + 1) * B),
      };
      run.pending[c] = settle(backend.run(task));
    };
    const topUp = () => {
      while (!run.cancelled && dispatched < nChunks && dispatched < yielded + this.prefetch) {
        start();
      }
    };
    try {
      topUp();
      while (true) {
        if (run.cancelled) throw new LoaderError("DataLoader: the loader was closed");
        const w0 = performance.now();
        while (run.fifo.length < B && consumed < nChunks) {
          if (consumed === dispatched) start(); // skips left the batch short: one more chunk
          const r = await run.pending[consumed]!;
          run.pending[consumed] = undefined;
          consumed++;
          if (run.cancelled) throw new LoaderError("DataLoader: the loader was closed");
          if (!r.ok) throw r.error;
          if (r.value === null) throw new LoaderError("DataLoader: the epoch was cancelled");
          for (const o of r.value) {
            if (o.ok) run.fifo.push({ index: o.index, item: o.item });
            else {
              stats.skipped++;
              if (stats.skippedNames.length < 1000) stats.skippedNames.push(o.name);
              this.#warn(
                `DataLoader: skipping unreadable example ${o.index} (${o.name}): ${o.message}`,
              );
            }
          }
          topUp();
        }
        if (run.fifo.length === 0) break;
        if (run.fifo.length < B && this.dropLast) {
          stats.dropped += run.fifo.length;
          for (const x of run.fifo.splice(0)) freeAll(x.item);
          break;
        }
        const take = run.fifo.splice(0, B);
        const items = take.map((x) => x.item);
        let batch: B;
        try {
          batch = this.#collate(items, take.map((x) => x.index));
        } catch (err) {
          freeAll(items);
          throw err;
        }
        freeExcept(items, batch);
        stats.batches++;
        stats.examples += take.length;
        stats.nextPosition = position.get(take[take.length - 1].index)! + 1;
        yielded++;
        topUp(); // the next chunks start before the consumer's step
        stats.waitSeconds += (performance.now() - w0) / 1e3;
        yield batch;
      }
      stats.complete = true;
    } finally {
      await run.cleanup();
      stats.seconds = (performance.now() - t0) / 1e3;
      if (this.#active === run) this.#active = null;
    }
  }

  /**
   * Stops the epoch in progress (freeing what it prefetched), asks the workers to free what
   * they hold and dispose their sources, and terminates them. Idempotent. A source imported in
   * the main thread is disposed too; a `dataset` given directly stays the caller's.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      if (this.#active !== null) {
        // a data set whose get() never settles must not hang close(): give up after the timeout
        // (the workers are then terminated below, and what they held is lost)
        const ms = this.#opts.closeTimeoutMs ?? 10000;
        let timer: ReturnType<typeof setTimeout> | undefined;
        const drained = await Promise.race([
          this.#active.cleanup().then(() => true),
          new Promise<boolean>((r) => timer = setTimeout(() => r(false), ms)),
        ]);
        clearTimeout(timer);
        if (!drained) {
          this.#warn(`DataLoader: the batches in flight did not arrive within ${ms} ms`);
        }
      }
      if (this.#backend !== null) {
        let b: Backend<T> | null = null;
        try {
          b = await this.#backend;
        } catch {
          // it failed to start: it cleaned up after itself
        }
        await b?.close();
      }
    })();
    return this.#closing;
  }

  /** Same as {@link close}: `await using loader = new DataLoader(…)`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
