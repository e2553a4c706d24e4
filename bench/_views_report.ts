/**
 * The report of `bench/views.ts` — its stdout JSON line's types — and the tables it prints
 * (shared with `bench/run.ts`, which prints them without loading the library).
 *
 * @module
 */
import { fmt, summarize, type ThreadInfo } from "./common.ts";

/** Where the images come from. */
export type DataKind = "scenes" | "jpeg";

/** The wait-share target of issue 4. */
export const WAIT_TARGET = 0.05;

/** One (data, config) row of the throughput part. */
export interface ThroughputRow {
  data: DataKind;
  config: string;
  /** images timed */
  images: number;
  /** mean ms per image of `dataset.get` (read + decode) */
  getMs: number;
  /** mean ms per image of `multiCropTransform` */
  transformMs: number;
  /** images/s of the transform alone */
  transformPerSecond: number;
  /** images/s of get + transform */
  perSecond: number;
}

/** One (data, config, workers, round) row of the loader part. */
export interface LoaderRow {
  data: DataKind;
  config: string;
  batch: number;
  workers: number;
  prefetch: number;
  round: number;
  /** mean step compute time (ms) while the loader runs */
  stepMs: number;
  /** mean step time (ms) on a held batch with no loader, measured before the rows */
  stepAloneMs: number;
  /** mean / median / max wait for a batch per step (ms), warm-up steps excluded */
  waitMs: number;
  waitMedianMs: number;
  waitMaxMs: number;
  /** mean wait / mean step */
  waitShare: number;
  /** waits of the warm-up steps (ms) */
  warmupWaitMs: number[];
  /** ms to start the loader (workers importing the source, opening the data set) */
  startMs: number;
  /** training-loop images/s over the timed steps (wait + step) */
  imagesPerSecond: number;
  /** cores other processes kept busy during the timed steps (null where unknown) */
  otherCores: number | null;
}

/** The verdict for one (data, config): the worker counts meeting the target. */
export interface Verdict {
  data: DataKind;
  config: string;
  /** median wait share per worker count */
  waitShare: Record<string, number>;
  /** the smallest worker count whose median wait share is ≤ the target, or null */
  minWorkers: number | null;
}

/** The stdout JSON line. */
export interface ViewsReport {
  bench: "views";
  side: "densedino";
  versions: Record<string, string>;
  threads: ThreadInfo;
  libraries: string[];
  cores: number;
  loadAverage: { start: number[]; end: number[] };
  params: Record<string, unknown>;
  throughput: ThroughputRow[];
  loader: LoaderRow[];
  verdicts: Verdict[];
  target: { waitShare: number };
  /** every measured (data, config) meets the target with some measured worker count */
  pass: boolean;
}

function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((c, i) => widths[i] = Math.max(widths[i] ?? 0, c.length));
  const line = (row: string[]) =>
    row.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  return [line(rows[0]), widths.map((w) => "-".repeat(w)).join("  "), ...rows.slice(1).map(line)]
    .join("\n");
}

/** The loader rows' medians per (data, config, workers), as printed and as in the verdicts. */
export function loaderSummary(rows: readonly LoaderRow[]): LoaderRow[] {
  const keys = [...new Set(rows.map((r) => `${r.data}\0${r.config}\0${r.workers}`))];
  return keys.map((k) => {
    const mine = rows.filter((r) => `${r.data}\0${r.config}\0${r.workers}` === k);
    const med = (f: (r: LoaderRow) => number) => summarize(mine.map(f)).median;
    return {
      ...mine[0],
      round: -1,
      stepMs: med((r) => r.stepMs),
      stepAloneMs: med((r) => r.stepAloneMs),
      waitMs: med((r) => r.waitMs),
      waitMedianMs: med((r) => r.waitMedianMs),
      waitMaxMs: med((r) => r.waitMaxMs),
      waitShare: med((r) => r.waitShare),
      startMs: med((r) => r.startMs),
      imagesPerSecond: med((r) => r.imagesPerSecond),
      otherCores: mine.some((r) => r.otherCores === null) ? null : med((r) => r.otherCores!),
    };
  });
}

/**
 * A printable table of {@link loaderSummary} rows. `loop/alone` = (mean wait + mean step) /
 * the step's time alone: what a training iteration costs relative to the step with free data
 * (1.00 = the data costs nothing; it also counts the step's slowdown by data work on the
 * other threads, which the wait share does not see).
 */
export function loaderTable(rows: readonly LoaderRow[]): string {
  return table([
    [
      "data",
      "config",
      "batch",
      "workers",
      "step ms (alone)",
      "wait ms (median, max)",
      "wait/step",
      "loop/alone",
      "images/s",
      "other cores",
    ],
    ...rows.map((r) => [
      r.data,
      r.config,
      String(r.batch),
      String(r.workers),
      `${fmt(r.stepMs, 0)} (${fmt(r.stepAloneMs, 0)})`,
      `${fmt(r.waitMs, 1)} (${fmt(r.waitMedianMs, 1)}, ${fmt(r.waitMaxMs, 0)})`,
      `${fmt(100 * r.waitShare, 1)}%${r.waitShare <= WAIT_TARGET ? "" : " *"}`,
      fmt((r.waitMs + r.stepMs) / r.stepAloneMs, 2),
      fmt(r.imagesPerSecond, 1),
      r.otherCores === null ? "?" : fmt(r.otherCores, 2),
    ]),
  ]);
}

/** A printable table of throughput rows. */
export function throughputTable(rows: readonly ThroughputRow[]): string {
  return table([
    ["data", "config", "images", "get ms/img", "views ms/img", "views img/s", "get+views img/s"],
    ...rows.map((r) => [
      r.data,
      r.config,
      String(r.images),
      fmt(r.getMs, 2),
      fmt(r.transformMs, 2),
      fmt(r.transformPerSecond, 1),
      fmt(r.perSecond, 1),
    ]),
  ]);
}
