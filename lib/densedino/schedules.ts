/**
 * Training schedules as the official DINO / DenseDINO code computes them: the per-iteration
 * cosine schedule with linear warm-up (`utils.cosine_scheduler`, used for the learning rate,
 * the weight decay and the teacher EMA momentum), the linear scaling rule of the learning rate,
 * and the teacher-temperature schedule (`DINOLoss.teacher_temp_schedule`).
 *
 * Every schedule is a `Float64Array` indexed like the official arrays: the cosine schedules by
 * the global iteration `epoch · itersPerEpoch + it`, the teacher temperature by the epoch.
 *
 * @module
 */

/** Options of {@link cosineSchedule}. */
export interface CosineScheduleOptions {
  /** epochs of linear warm-up (default 0: none); a non-negative integer */
  warmupEpochs?: number;
  /** value at the first warm-up iteration (default 0) */
  startWarmupValue?: number;
  /**
   * warm-up length in iterations, for a warm-up that is not a whole number of epochs; when
   * given together with `warmupEpochs` the two must agree (`warmupEpochs · itersPerEpoch`)
   */
  warmupIters?: number;
}

function finite(op: string, name: string, v: number): void {
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new RangeError(`${op}: ${name} must be a finite number, got ${v}`);
  }
}

function integer(op: string, name: string, v: number, min: number): void {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
    throw new RangeError(
      `${op}: ${name} must be an integer ≥ ${min}, got ${v}`,
    );
  }
}

/**
 * `numpy.linspace(start, stop, num)` (endpoint included) written into `out` at `offset`, with
 * numpy's arithmetic: `i·step + start`, the last value set to `stop` exactly when `num > 1`.
 */
function linspaceInto(
  out: Float64Array,
  offset: number,
  start: number,
  stop: number,
  num: number,
): void {
  if (num <= 0) return;
  const div = num - 1;
  const step = div > 0 ? (stop - start) / div : 0;
  for (let i = 0; i < num; i++) out[offset + i] = i * step + start;
  if (num > 1) out[offset + num - 1] = stop;
}

/**
 * The official `utils.cosine_scheduler`: `epochs · itersPerEpoch` values, first a linear
 * warm-up over `w = warmupEpochs · itersPerEpoch` (or `warmupIters`) iterations from
 * `startWarmupValue` to `base` inclusive (`numpy.linspace`), then over the remaining `n`
 * iterations `final + 0.5·(base − final)·(1 + cos(π·i/n))` for `i = 0 … n−1`.
 *
 * As in the official code the cosine part starts again at exactly `base` (so `base` appears
 * twice when there is a warm-up) and never reaches `final`: its last value is
 * `final + 0.5·(base − final)·(1 + cos(π·(n−1)/n))`.
 *
 * @example
 * ```ts
 * import { cosineSchedule, linearScaledLr } from "./schedules.ts";
 * const lr = cosineSchedule(linearScaledLr(5e-4, 64), 1e-6, 100, 500, { warmupEpochs: 10 });
 * lr[0]; // 0: the start of the warm-up
 * ```
 *
 * @throws RangeError naming the argument: `epochs` not an integer ≥ 0, `itersPerEpoch` not an
 * integer ≥ 1, a negative or fractional warm-up, a warm-up longer than the run, a non-finite
 * value.
 */
export function cosineSchedule(
  base: number,
  final: number,
  epochs: number,
  itersPerEpoch: number,
  opts: CosineScheduleOptions = {},
): Float64Array {
  const op = "cosineSchedule";
  finite(op, "base", base);
  finite(op, "final", final);
  integer(op, "epochs", epochs, 0);
  integer(op, "itersPerEpoch", itersPerEpoch, 1);
  const startWarmupValue = opts.startWarmupValue ?? 0;
  finite(op, "startWarmupValue", startWarmupValue);
  let warmupIters: number;
  if (opts.warmupIters !== undefined) {
    integer(op, "warmupIters", opts.warmupIters, 0);
    warmupIters = opts.warmupIters;
    if (opts.warmupEpochs !== undefined) {
      integer(op, "warmupEpochs", opts.warmupEpochs, 0);
      if (opts.warmupEpochs * itersPerEpoch !== warmupIters) {
        throw new RangeError(
          `${op}: warmupIters (${warmupIters}) disagrees with warmupEpochs · itersPerEpoch ` +
            `(${opts.warmupEpochs} · ${itersPerEpoch}); give one of them`,
        );
      }
    }
  } else {
    const warmupEpochs = opts.warmupEpochs ?? 0;
    integer(op, "warmupEpochs", warmupEpochs, 0);
    warmupIters = warmupEpochs * itersPerEpoch;
  }
  const total = epochs * itersPerEpoch;
  if (warmupIters > total) {
    throw new RangeError(
      `${op}: the warm-up (warmupEpochs / warmupIters: ${warmupIters} iterations) is longer ` +
        `than the run (epochs · itersPerEpoch = ${total} iterations)`,
    );
  }
  const out = new Float64Array(total);
  linspaceInto(out, 0, startWarmupValue, base, warmupIters);
  const n = total - warmupIters;
  const amp = 0.5 * (base - final);
  for (let i = 0; i < n; i++) out[warmupIters + i] = final + amp * (1 + Math.cos(Math.PI * i / n));
  return out;
}

/**
 * The linear scaling rule of the learning rate: `lr · (batchSize · worldSize) / 256`, with
 * `batchSize` the per-process batch as in the official code (`args.lr *
 * (args.batch_size_per_gpu * world_size) / 256`).
 *
 * @throws RangeError naming the argument: a non-finite or negative `lr`, a `batchSize` or
 * `worldSize` that is not an integer ≥ 1.
 */
export function linearScaledLr(lr: number, batchSize: number, worldSize = 1): number {
  const op = "linearScaledLr";
  finite(op, "lr", lr);
  if (lr < 0) throw new RangeError(`${op}: lr must be ≥ 0, got ${lr}`);
  integer(op, "batchSize", batchSize, 1);
  integer(op, "worldSize", worldSize, 1);
  return lr * (batchSize * worldSize) / 256;
}

/** Options of {@link teacherTempSchedule}; defaults are the official DenseDINO code's. */
export interface TeacherTempScheduleOptions {
  /** number of training epochs (required); an integer ≥ 1 */
  epochs: number;
  /** temperature at the start of the warm-up (default 0.04, `--warmup_teacher_temp`) */
  warmupTemp?: number;
  /** temperature after the warm-up (default 0.04, `--teacher_temp`) */
  temp?: number;
  /** epochs of linear warm-up (default 0, `--warmup_teacher_temp_epochs`) */
  warmupEpochs?: number;
  /**
   * warm up per iteration instead of per epoch (default false: per epoch, as the official
   * code). Per iteration, the temperature goes linearly from `warmupTemp` to `temp` over
   * `warmupEpochs · itersPerEpoch` iterations and the schedule is indexed by global iteration.
   */
  perIteration?: boolean;
  /** iterations per epoch; required when `perIteration` */
  itersPerEpoch?: number;
}

/**
 * The teacher temperature over training. **Default (the official code): one value per epoch**,
 * `numpy.linspace(warmupTemp, temp, warmupEpochs)` followed by `temp` for the remaining
 * epochs, looked up as `values[epoch]` (the temperature is constant within an epoch). With
 * `perIteration` the warm-up is linear per iteration instead: `values` has one entry per
 * global iteration.
 */
export class TeacherTempSchedule {
  /** the temperatures: per epoch, or per global iteration when {@link perIteration} */
  readonly values: Float64Array;
  /** true when {@link values} is indexed by global iteration */
  readonly perIteration: boolean;
  /** number of epochs */
  readonly epochs: number;
  /** iterations per epoch (0 for a per-epoch schedule built without it) */
  readonly itersPerEpoch: number;

  /** Use {@link teacherTempSchedule} to build one. */
  constructor(
    values: Float64Array,
    perIteration: boolean,
    epochs: number,
    itersPerEpoch: number,
  ) {
    this.values = values;
    this.perIteration = perIteration;
    this.epochs = epochs;
    this.itersPerEpoch = itersPerEpoch;
  }

  /**
   * The temperature at `epoch` (per-epoch schedule: `values[epoch]`, `iteration` ignored) or at
   * global iteration `iteration` (per-iteration schedule; `epoch · itersPerEpoch`, the start
   * of the epoch, when `iteration` is omitted).
   *
   * @throws RangeError when the epoch or iteration is outside the schedule.
   */
  at(epoch: number, iteration?: number): number {
    const op = "TeacherTempSchedule.at";
    integer(op, "epoch", epoch, 0);
    if (epoch >= this.epochs) {
      throw new RangeError(`${op}: epoch ${epoch} is past the schedule's ${this.epochs} epochs`);
    }
    if (!this.perIteration) return this.values[epoch];
    const it = iteration ?? epoch * this.itersPerEpoch;
    integer(op, "iteration", it, 0);
    if (it >= this.values.length) {
      throw new RangeError(
        `${op}: iteration ${it} is past the schedule's ${this.values.length} iterations`,
      );
    }
    return this.values[it];
  }
}

/**
 * Builds the teacher-temperature schedule (see {@link TeacherTempSchedule}); the default is
 * the official per-epoch warm-up.
 *
 * @example
 * ```ts
 * import { teacherTempSchedule } from "./schedules.ts";
 * const s = teacherTempSchedule({ epochs: 100, warmupTemp: 0.04, temp: 0.07, warmupEpochs: 30 });
 * s.at(0); // 0.04
 * s.at(29); // 0.07
 * ```
 *
 * @throws RangeError naming the argument: non-finite or non-positive temperatures, `epochs` not
 * an integer ≥ 1, `warmupEpochs` negative, fractional or longer than `epochs`, `itersPerEpoch`
 * missing or not an integer ≥ 1 with `perIteration`.
 */
export function teacherTempSchedule(opts: TeacherTempScheduleOptions): TeacherTempSchedule {
  const op = "teacherTempSchedule";
  const warmupTemp = opts.warmupTemp ?? 0.04;
  const temp = opts.temp ?? 0.04;
  const warmupEpochs = opts.warmupEpochs ?? 0;
  for (const [name, v] of [["warmupTemp", warmupTemp], ["temp", temp]] as const) {
    finite(op, name, v);
    if (v <= 0) throw new RangeError(`${op}: ${name} must be > 0, got ${v}`);
  }
  integer(op, "epochs", opts.epochs, 1);
  integer(op, "warmupEpochs", warmupEpochs, 0);
  if (warmupEpochs > opts.epochs) {
    throw new RangeError(
      `${op}: warmupEpochs (${warmupEpochs}) is longer than the run (epochs = ${opts.epochs})`,
    );
  }
  const perIteration = opts.perIteration ?? false;
  if (perIteration || opts.itersPerEpoch !== undefined) {
    integer(op, "itersPerEpoch", opts.itersPerEpoch as number, 1);
  }
  const ipe = opts.itersPerEpoch ?? 0;
  const len = perIteration ? opts.epochs * ipe : opts.epochs;
  const warm = perIteration ? warmupEpochs * ipe : warmupEpochs;
  const values = new Float64Array(len);
  linspaceInto(values, 0, warmupTemp, temp, warm);
  values.fill(temp, warm);
  return new TeacherTempSchedule(values, perIteration, opts.epochs, ipe);
}
