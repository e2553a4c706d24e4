/**
 * Distributed data parallelism on libtorch's own c10d: a TCPStore rendezvous and a Gloo (CPU)
 * or NCCL (CUDA) process group, configured from torchrun's environment (`RANK`, `WORLD_SIZE`,
 * `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), with the collectives
 * data-parallel training needs: all-reduce (sum / avg / min / max / product) over a list of
 * tensors flattened into buckets, the gradients of a parameter list averaged in one call,
 * broadcast, all-gather and barrier.
 *
 * ```ts
 * const pg = initProcessGroup();             // from the environment scripts/launch.ts sets
 * pg.broadcast(model.parameters());          // everyone starts from rank 0's weights
 * // … loss.backward() …
 * pg.allReduceGrads(model.parameters());     // averaged gradients, then clip + optimiser step
 * pg.destroy();
 * ```
 *
 * Every call blocks until the collective finished on all ranks. A timeout (default 300 s,
 * `DENSEDINO_DIST_TIMEOUT_MS`) bounds the rendezvous and each collective: a dead peer surfaces
 * at once as a {@link DistError} ("a peer closed its connection"), a stuck one after the
 * timeout — never a hang. After a failed collective the group is broken: every later call fails
 * with the first error; {@link ProcessGroup.destroy} still works.
 *
 * @module
 */
import { cString, lastError, native } from "./ffi.ts";
import { TorchError } from "./errors.ts";
import { fromTypedArray, zeros } from "./creation.ts";
import { handlesBuf, Tensor } from "./tensor.ts";

/** A c10d backend: Gloo (CPU tensors) or NCCL (CUDA tensors). */
export type DistBackend = "gloo" | "nccl";

/** How {@link ProcessGroup.allReduce} combines the ranks' values ("avg" = sum / world). */
export type ReduceOp = "sum" | "avg" | "product" | "min" | "max";

const BACKEND_CODE: Record<DistBackend, number> = { gloo: 0, nccl: 1 };
const OP_CODE: Record<ReduceOp, number> = { sum: 0, avg: 1, product: 2, min: 3, max: 4 };

/** Default timeout of the rendezvous and of each collective (ms). */
export const DEFAULT_DIST_TIMEOUT_MS = 300_000;

/** Default bucket size of the flattened all-reduce / broadcast (25 MiB, as PyTorch's DDP). */
export const DEFAULT_BUCKET_BYTES = 25 << 20;

/** torchrun's environment of this process. */
export interface DistEnv {
  /** global rank, 0 … worldSize − 1 (`RANK`) */
  rank: number;
  /** number of processes in all (`WORLD_SIZE`) */
  worldSize: number;
  /** rank on this machine (`LOCAL_RANK`, default: rank) */
  localRank: number;
  /** processes on this machine (`LOCAL_WORLD_SIZE`, default: worldSize) */
  localWorldSize: number;
  /** address of rank 0's machine (`MASTER_ADDR`, default 127.0.0.1) */
  masterAddr: string;
  /** rendezvous port on rank 0's machine (`MASTER_PORT`, default 29500) */
  masterPort: number;
}

/** Raised for a bad distributed environment, a failed rendezvous or a failed collective. */
export class DistError extends TorchError {
  /** An error of distributed operation `op`; `detail` says what happened and what to do. */
  constructor(op: string, detail: string) {
    super(op, detail);
    this.name = "DistError";
  }
}

function readEnv(): Record<string, string | undefined> {
  try {
    return Deno.env.toObject();
  } catch {
    return {}; // no --allow-env: as if nothing were set
  }
}

function intVar(
  env: Record<string, string | undefined>,
  name: string,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number | undefined {
  const v = env[name];
  if (v === undefined || v === "") return undefined;
  const n = Number(v);
  if (!/^\s*\d+\s*$/.test(v) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new DistError(
      "distributed environment",
      `${name}=${JSON.stringify(v)} is not an integer in ${min}…${max}`,
    );
  }
  return n;
}

/**
 * torchrun's environment of this process, validated (a bad value throws a {@link DistError}
 * naming the variable), or null when `WORLD_SIZE` is unset (a plain single-process run).
 */
export function distEnv(env: Record<string, string | undefined> = readEnv()): DistEnv | null {
  const worldSize = intVar(env, "WORLD_SIZE", 1);
  if (worldSize === undefined) return null;
  const rank = intVar(env, "RANK", 0);
  if (rank === undefined) {
    throw new DistError(
      "distributed environment",
      `WORLD_SIZE=${worldSize} is set but RANK is not: start each process with RANK (and ` +
        `MASTER_ADDR / MASTER_PORT), e.g. through scripts/launch.ts`,
    );
  }
  if (rank >= worldSize) {
    throw new DistError(
      "distributed environment",
      `RANK=${rank} is outside 0…${worldSize - 1} (WORLD_SIZE=${worldSize})`,
    );
  }
  const localWorldSize = intVar(env, "LOCAL_WORLD_SIZE", 1) ?? worldSize;
  const localRank = intVar(env, "LOCAL_RANK", 0) ?? rank;
  if (localRank >= localWorldSize) {
    throw new DistError(
      "distributed environment",
      `LOCAL_RANK=${localRank} is outside 0…${
        localWorldSize - 1
      } (LOCAL_WORLD_SIZE=${localWorldSize})`,
    );
  }
  const masterAddr = (env.MASTER_ADDR ?? "").trim() || "127.0.0.1";
  const masterPort = intVar(env, "MASTER_PORT", 1, 65535) ?? 29500;
  return { rank, worldSize, localRank, localWorldSize, masterAddr, masterPort };
}

/** Options of {@link initProcessGroup}; anything not given comes from the environment. */
export interface DistInitOptions extends Partial<DistEnv> {
  /** default: "nccl" for `device: "cuda"`, else "gloo" */
  backend?: DistBackend;
  /** device of the tensors (default cpu); CUDA ranks use `cuda:LOCAL_RANK` */
  device?: "cpu" | "cuda";
  /** rendezvous and per-collective timeout in ms (default `DENSEDINO_DIST_TIMEOUT_MS` or 300 s) */
  timeoutMs?: number;
}

/** Advice for a failure message from the shim. */
function advise(_op: string, msg: string, pg?: { worldSize: number; timeoutMs: number }): string {
  if (/built without|without distributed/.test(msg)) return msg;
  if (/Connection closed by peer|Connection reset|Broken pipe|Read error|EOF|closed/i.test(msg)) {
    return `${msg} — a peer closed its connection: another rank probably crashed or was ` +
      `killed (its own output says why)`;
  }
  if (/timed? ?out|Timeout/i.test(msg)) {
    const s = pg ? ` after ${pg.timeoutMs / 1000} s` : "";
    return `${msg} — no answer${s}: a rank is stuck, far slower, or not started; check the other ` +
      `ranks, or raise the timeout (--dist-timeout, DENSEDINO_DIST_TIMEOUT_MS)`;
  }
  return msg;
}

function rendezvousAdvice(msg: string, addr: string, port: number, world: number): string {
  if (/Address already in use|errno: 98/.test(msg)) {
    return `${msg} — MASTER_PORT ${port} is in use on this machine: choose another ` +
      `(--master-port / MASTER_PORT)`;
  }
  if (/built without|without distributed/.test(msg)) return msg;
  if (/rendezvous/.test(msg)) {
    return `${msg} — not all WORLD_SIZE=${world} ranks joined: start every rank with the same ` +
      `MASTER_ADDR=${addr}, MASTER_PORT=${port} and WORLD_SIZE, and check that the port is ` +
      `reachable from every machine (firewall)`;
  }
  return msg;
}

const INFO = new Int32Array(4);

/**
 * A c10d process group: this process's membership in a group of `worldSize` processes. Create
 * it with {@link initProcessGroup}; free it with {@link destroy} (or `using`).
 */
export class ProcessGroup implements Disposable {
  /** this process's rank, 0 … worldSize − 1 */
  readonly rank: number;
  /** number of processes */
  readonly worldSize: number;
  /** rank on this machine */
  readonly localRank: number;
  /** processes on this machine */
  readonly localWorldSize: number;
  /** the backend */
  readonly backend: DistBackend;
  /** the timeout of the rendezvous and of each collective (ms) */
  readonly timeoutMs: number;
  #g: number;

  private constructor(g: number, env: DistEnv, backend: DistBackend, timeoutMs: number) {
    this.#g = g;
    this.rank = env.rank;
    this.worldSize = env.worldSize;
    this.localRank = env.localRank;
    this.localWorldSize = env.localWorldSize;
    this.backend = backend;
    this.timeoutMs = timeoutMs;
  }

  /** @internal use {@link initProcessGroup} */
  static _create(g: number, env: DistEnv, backend: DistBackend, timeoutMs: number): ProcessGroup {
    return new ProcessGroup(g, env, backend, timeoutMs);
  }

  /** True when the shim was built with `backend` (Gloo needs its headers at build time). */
  static available(backend: DistBackend): boolean {
    return native().dd_dist_available(BACKEND_CODE[backend]) === 1;
  }

  /** True on rank 0 (the rank that logs and writes). */
  get isMain(): boolean {
    return this.rank === 0;
  }

  /** True once destroyed. */
  get isDestroyed(): boolean {
    return this.#g === 0;
  }

  /** True after a failed collective (every later collective then fails at once). */
  get isBroken(): boolean {
    if (this.#g === 0) return false;
    if (native().dd_dist_info(this.#g, INFO) < 0) return true;
    return INFO[3] === 1;
  }

  #handle(op: string): number {
    if (this.#g === 0) {
      throw new DistError(op, "the process group was already destroyed");
    }
    return this.#g;
  }

  #check(s: number, op: string): void {
    if (s < 0) throw new DistError(op, advise(op, lastError(), this));
  }

  /**
   * Combines `tensors` over all ranks in place (every rank ends with the same values). A list
   * is packed into flat buckets of at most `bucketBytes` (one collective per bucket), not one
   * collective per tensor. "avg" is the sum divided by the world size (floating tensors).
   */
  allReduce(
    tensors: Tensor | readonly Tensor[],
    op: ReduceOp = "sum",
    opts: { bucketBytes?: number } = {},
  ): void {
    const list = tensors instanceof Tensor ? [tensors] : tensors;
    if (!(op in OP_CODE)) {
      throw new DistError("allReduce", `unknown op ${op}; expected sum, avg, product, min or max`);
    }
    const g = this.#handle("allReduce");
    const hs = handlesBuf(list as Tensor[], "allReduce");
    this.#check(
      native().dd_dist_allreduce(g, hs, list.length, OP_CODE[op], opts.bucketBytes ?? 0),
      "allReduce",
    );
  }

  /**
   * The gradients of `params` summed over ranks (`average`: divided by the world size, the
   * default), in flat buckets. A parameter with no gradient on this rank contributes zeros and
   * ends with a gradient exactly when some rank had one.
   */
  allReduceGrads(
    params: readonly Tensor[],
    opts: { average?: boolean; bucketBytes?: number } = {},
  ): void {
    const g = this.#handle("allReduceGrads");
    const hs = handlesBuf(params as Tensor[], "allReduceGrads");
    this.#check(
      native().dd_dist_allreduce_grads(
        g,
        hs,
        params.length,
        opts.average === false ? 0 : 1,
        opts.bucketBytes ?? 0,
      ),
      "allReduceGrads",
    );
  }

  /** Copies rank `root`'s values of `tensors` to every rank, in place (bucketed). */
  broadcast(
    tensors: Tensor | readonly Tensor[],
    root = 0,
    opts: { bucketBytes?: number } = {},
  ): void {
    const list = tensors instanceof Tensor ? [tensors] : tensors;
    this.#root(root, "broadcast");
    const g = this.#handle("broadcast");
    const hs = handlesBuf(list as Tensor[], "broadcast");
    this.#check(
      native().dd_dist_broadcast(g, hs, list.length, root, opts.bucketBytes ?? 0),
      "broadcast",
    );
  }

  #root(root: number, op: string): void {
    if (!Number.isSafeInteger(root) || root < 0 || root >= this.worldSize) {
      throw new DistError(op, `root ${root} is outside 0…${this.worldSize - 1}`);
    }
  }

  /** Every rank's `t` (same shape and dtype on all ranks), stacked: `[worldSize, ...t.shape]`. */
  allGather(t: Tensor): Tensor {
    const g = this.#handle("allGather");
    const h = native().dd_dist_allgather(g, t.handle("allGather"));
    if (h === 0) throw new DistError("allGather", advise("allGather", lastError(), this));
    return Tensor.adopt(h);
  }

  /** Rank `root`'s bytes on every rank (`data` is ignored elsewhere). */
  broadcastBytes(data: Uint8Array | undefined, root = 0): Uint8Array {
    this.#root(root, "broadcastBytes");
    if (this.rank === root && !(data instanceof Uint8Array)) {
      throw new DistError("broadcastBytes", `the root rank ${root} must pass a Uint8Array`);
    }
    const n = new Float64Array([this.rank === root ? data!.length : 0]);
    using len = fromTypedArray(n, [1]);
    this.broadcast(len, root);
    const size = len.item();
    if (size === 0) return new Uint8Array(0);
    using buf = this.rank === root
      ? fromTypedArray(data!, [size])
      : zeros([size], { dtype: "uint8" });
    this.broadcast(buf, root);
    return this.rank === root ? data! : buf.toTypedArray() as Uint8Array;
  }

  /** Rank `root`'s JSON-serialisable `value` on every rank. */
  broadcastJson<T>(value: T | undefined, root = 0): T {
    const bytes = this.broadcastBytes(
      this.rank === root ? new TextEncoder().encode(JSON.stringify(value ?? null)) : undefined,
      root,
    );
    return JSON.parse(new TextDecoder().decode(bytes)) as T;
  }

  /** Returns once every rank called it. */
  barrier(): void {
    this.#check(native().dd_dist_barrier(this.#handle("barrier")), "barrier");
  }

  /** Leaves the group and frees it (also after a failure). Idempotent. */
  destroy(): void {
    const g = this.#g;
    if (g === 0) return;
    this.#g = 0;
    if (native().dd_dist_destroy(g) < 0) throw new DistError("destroy", lastError());
  }

  /** Same as {@link destroy}. */
  [Symbol.dispose](): void {
    this.destroy();
  }
}

function timeoutFromEnv(): number {
  const v = readEnv().DENSEDINO_DIST_TIMEOUT_MS;
  if (v === undefined || v === "") return DEFAULT_DIST_TIMEOUT_MS;
  const n = Number(v);
  if (!(Number.isSafeInteger(n) && n > 0)) {
    throw new DistError(
      "distributed environment",
      `DENSEDINO_DIST_TIMEOUT_MS=${JSON.stringify(v)} is not a positive integer (milliseconds)`,
    );
  }
  return n;
}

/**
 * Joins the process group described by `opts` and the environment (torchrun's variables:
 * options win): rank 0 hosts the rendezvous at `MASTER_ADDR:MASTER_PORT` and waits for all
 * `WORLD_SIZE` ranks; returns once the group is up. Throws a {@link DistError} naming the fix
 * when the environment is incomplete, the port is taken, not every rank joined within the
 * timeout, or the shim was built without the backend.
 */
export function initProcessGroup(opts: DistInitOptions = {}): ProcessGroup {
  const fromEnv = distEnv();
  const worldSize = opts.worldSize ?? fromEnv?.worldSize;
  const rank = opts.rank ?? fromEnv?.rank;
  if (worldSize === undefined || rank === undefined) {
    throw new DistError(
      "initProcessGroup",
      "no rank / world size: set RANK and WORLD_SIZE (and MASTER_ADDR, MASTER_PORT) — " +
        "scripts/launch.ts does — or pass them as options",
    );
  }
  const env: DistEnv = {
    rank,
    worldSize,
    localRank: opts.localRank ?? fromEnv?.localRank ?? rank,
    localWorldSize: opts.localWorldSize ?? fromEnv?.localWorldSize ?? worldSize,
    masterAddr: opts.masterAddr ?? fromEnv?.masterAddr ?? "127.0.0.1",
    masterPort: opts.masterPort ?? fromEnv?.masterPort ?? 29500,
  };
  for (const [k, v, min] of [["worldSize", env.worldSize, 1], ["rank", env.rank, 0]] as const) {
    if (!Number.isSafeInteger(v) || v < min) {
      throw new DistError("initProcessGroup", `${k} must be an integer ≥ ${min}, got ${v}`);
    }
  }
  if (env.rank >= env.worldSize) {
    throw new DistError(
      "initProcessGroup",
      `rank ${env.rank} is outside 0…${env.worldSize - 1} (world size ${env.worldSize})`,
    );
  }
  const device = opts.device ?? "cpu";
  const backend = opts.backend ?? (device === "cuda" ? "nccl" : "gloo");
  if (!(backend in BACKEND_CODE)) {
    throw new DistError("initProcessGroup", `unknown backend ${backend}; expected gloo or nccl`);
  }
  const timeoutMs = opts.timeoutMs ?? timeoutFromEnv();
  if (!(Number.isSafeInteger(timeoutMs) && timeoutMs > 0)) {
    throw new DistError(
      "initProcessGroup",
      `timeoutMs must be a positive integer, got ${timeoutMs}`,
    );
  }
  const g = native().dd_dist_init(
    env.rank,
    env.worldSize,
    cString(env.masterAddr),
    env.masterPort,
    timeoutMs,
    BACKEND_CODE[backend],
    device === "cuda" ? env.localRank : -1,
  );
  if (g === 0) {
    throw new DistError(
      "initProcessGroup",
      rendezvousAdvice(lastError(), env.masterAddr, env.masterPort, env.worldSize),
    );
  }
  return ProcessGroup._create(g, env, backend, timeoutMs);
}
