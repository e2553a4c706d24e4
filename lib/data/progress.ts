/**
 * Progress for long work, for people and for machines: {@link Progress} keeps one status line
 * on a terminal (count, rate, ETA, the loop's own numbers) and prints a full line now and then
 * where stderr is not a terminal (CI, pipes, log files); {@link JsonlLog} appends one JSON
 * record per line to a file, and {@link readJsonl} reads such a file back (e.g. to plot curves).
 * Nothing here touches tensors.
 *
 * ```ts
 * import { JsonlLog, Progress } from "./progress.ts";
 *
 * const log = new JsonlLog("runs/demo/log.jsonl");
 * const bar = new Progress({ label: "train", total: 1000, unit: "it" });
 * for (let step = 0; step < 1000; step++) {
 *   const loss = 1 / (step + 1);
 *   bar.tick(1, { loss, lr: 1e-5 });
 *   log.write({ step, loss });
 * }
 * bar.done();
 * log.close();
 * ```
 *
 * @module
 */

// ---- formatting --------------------------------------------------------------------------

function trimZeros(s: string): string {
  return s.includes(".") ? s.replace(/\.?0+$/, "") : s;
}

/**
 * A number in at most 4 significant digits: integers below 10⁶ as they are ("1234"),
 * "0.1235", "12.35", "12346" (rounded from 10⁴ on), exponents for tiny or huge values
 * ("1.2e-5", "3.5e7"), "nan", "inf", "-inf".
 */
export function formatNumber(v: number): string {
  if (Number.isNaN(v)) return "nan";
  if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (Number.isInteger(v) && a < 1e6) return String(v);
  if (a >= 1e-3 && a < 1e4) {
    const p = v.toPrecision(4);
    if (!p.includes("e")) return trimZeros(p);
  }
  if (a >= 1e-3 && a < 1e6) return String(Math.round(v));
  const [m, e] = v.toExponential(3).split("e");
  return `${trimZeros(m)}e${Number(e)}`;
}

/**
 * A duration for people: "12.3s" under a minute, "3m05s" under an hour, then "1h02m"
 * (rounded to the shown unit); "?" for a negative or non-finite value.
 */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  if (seconds < 59.95) return `${seconds.toFixed(1)}s`;
  const whole = Math.round(seconds);
  if (whole < 3600) return `${Math.floor(whole / 60)}m${String(whole % 60).padStart(2, "0")}s`;
  const minutes = Math.round(seconds / 60);
  return `${Math.floor(minutes / 60)}h${String(minutes % 60).padStart(2, "0")}m`;
}

/**
 * Reads a duration written by {@link formatDuration} ("12.3s", "4m05s", "1h02m") back into
 * seconds; null for anything else (including "?").
 */
export function parseDuration(text: string): number | null {
  const m = /^(?:(\d+)h(\d{2})m|(\d+)m(\d{2})s|(\d+(?:\.\d+)?)s)$/.exec(text.trim());
  if (!m) return null;
  if (m[1] !== undefined) return Number(m[1]) * 3600 + Number(m[2]) * 60;
  if (m[3] !== undefined) return Number(m[3]) * 60 + Number(m[4]);
  return Number(m[5]);
}

/** A rate: "123 img/s", "12.3 img/s", "1.23 img/s"; slower than one a second "2.5s/img". */
function formatRate(rate: number | null, unit: string): string {
  if (rate === null || !Number.isFinite(rate)) return `? ${unit}/s`;
  if (rate >= 1 || rate === 0) {
    return `${
      rate >= 100 ? rate.toFixed(0) : rate >= 10 ? rate.toFixed(1) : rate.toFixed(2)
    } ${unit}/s`;
  }
  return `${formatDuration(1 / rate)}/${unit}`;
}

function formatFields(fields: Record<string, number | string>): string {
  return Object.entries(fields)
    .map(([k, v]) => `${k}=${typeof v === "number" ? formatNumber(v) : v}`)
    .join(" ");
}

// ---- Progress ----------------------------------------------------------------------------

/** Where {@link Progress} writes: `Deno.stderr`, or anything with the same two methods. */
export interface ProgressStream {
  /** writes the bytes (synchronously), returning how many were written */
  writeSync(p: Uint8Array): number;
  /** whether the stream is a terminal (absent: not one) */
  isTerminal?(): boolean;
}

/** Options of {@link Progress}. */
export interface ProgressOptions {
  /** what is being done, first on the line ("train", "extract") */
  label: string;
  /** the count at which the work is done; without it there is no percentage, bar or ETA */
  total?: number;
  /** what is counted, e.g. "it" (default), "img", "batch" */
  unit?: string;
  /** where lines go (default `Deno.stderr`) */
  stream?: ProgressStream;
  /** on a terminal: the least time between redraws, and between rate samples (default 200) */
  minIntervalMs?: number;
  /** off a terminal: the least time between printed lines (default 10 000) */
  plainIntervalMs?: number;
  /** treat the stream as a terminal or not (default: `stream.isTerminal()`) */
  tty?: boolean;
  /** the weight of the newest rate sample in the moving average (default 0.3) */
  smoothing?: number;
  /** terminal lines are cut to this many characters (default: the console width − 1) */
  columns?: number;
  /** the count to start from (e.g. when resuming; default 0) */
  initial?: number;
  /** milliseconds from some fixed origin (default `performance.now`; for tests) */
  clock?: () => number;
  /** false prints nothing at all (a `--quiet` flag; default true) */
  enabled?: boolean;
}

const CLEAR = "\r\x1b[2K";
const encoder = new TextEncoder();

/**
 * A progress line for a long loop. On a terminal, {@link Progress.tick} redraws one line in
 * place (`\r` and clear-line) at most every `minIntervalMs`; elsewhere it prints a full line at
 * most every `plainIntervalMs` (default 10 s) so that logs stay short. The line holds the
 * label, count (and total, percentage and a bar on a terminal), the rate — a moving average
 * (EMA) of per-interval rates, so it follows speed changes — the elapsed time, the ETA when
 * the total is known, and the last fields given to `tick` (numbers in 4 significant digits).
 * {@link Progress.done} prints the final line with the average rate and total time.
 */
export class Progress {
  /** the label given */
  readonly label: string;
  /** the total given, if any */
  readonly total: number | undefined;
  /** what is counted */
  readonly unit: string;
  /** whether lines are redrawn in place */
  readonly tty: boolean;
  #stream: ProgressStream;
  #clock: () => number;
  #minInterval: number;
  #plainInterval: number;
  #alpha: number;
  #columns: number;
  #enabled: boolean;
  #n: number;
  #n0: number;
  #start: number;
  #sampleT: number;
  #sampleN: number;
  #ema: number | null = null;
  #lastOut = -Infinity;
  #drawn = false;
  #fields: Record<string, number | string> = {};
  #done = false;

  /** Starts counting now (the clock starts at construction). */
  constructor(opts: ProgressOptions) {
    this.label = opts.label;
    this.total = opts.total;
    this.unit = opts.unit ?? "it";
    this.#stream = opts.stream ?? Deno.stderr;
    this.#clock = opts.clock ?? (() => performance.now());
    this.#minInterval = opts.minIntervalMs ?? 200;
    this.#plainInterval = opts.plainIntervalMs ?? 10_000;
    this.#alpha = opts.smoothing ?? 0.3;
    this.#enabled = opts.enabled ?? true;
    this.tty = opts.tty ?? (this.#stream.isTerminal?.() ?? false);
    let columns = opts.columns;
    if (columns === undefined && this.tty) {
      try {
        columns = Deno.consoleSize().columns - 1;
      } catch {
        columns = undefined;
      }
    }
    this.#columns = columns ?? Infinity;
    this.#n = this.#n0 = opts.initial ?? 0;
    this.#start = this.#sampleT = this.#clock();
    this.#sampleN = this.#n;
    if (!this.tty) this.#lastOut = this.#start;
  }

  /** the count so far */
  get count(): number {
    return this.#n;
  }

  /** seconds since construction */
  get elapsed(): number {
    return (this.#clock() - this.#start) / 1000;
  }

  /**
   * units per second: the moving average of the per-interval rates, or the average since the
   * start until the first interval has passed; null before any time has passed
   */
  get rate(): number | null {
    if (this.#ema !== null) return this.#ema;
    const t = this.elapsed;
    return t > 0 ? (this.#n - this.#n0) / t : null;
  }

  /** seconds left at the current rate; null without a total or a rate */
  get eta(): number | null {
    const r = this.rate;
    if (this.total === undefined || r === null || !(r > 0)) return null;
    return Math.max(0, this.total - this.#n) / r;
  }

  /**
   * Counts `n` more units and remembers `fields` (shown after the rate, e.g. `{ loss, lr }`;
   * they replace the previous ones); redraws or prints when the interval has passed (or, on a
   * terminal, when the count reaches the total).
   */
  tick(n = 1, fields?: Record<string, number | string>): void {
    if (this.#done) return;
    this.#n += n;
    if (fields !== undefined) this.#fields = fields;
    const now = this.#clock();
    if (now - this.#sampleT >= this.#minInterval) {
      const r = ((this.#n - this.#sampleN) * 1000) / (now - this.#sampleT);
      this.#ema = this.#ema === null ? r : this.#alpha * r + (1 - this.#alpha) * this.#ema;
      this.#sampleT = now;
      this.#sampleN = this.#n;
    }
    if (!this.#enabled) return;
    if (this.tty) {
      const last = this.total !== undefined && this.#n >= this.total;
      if (now - this.#lastOut >= this.#minInterval || last) {
        this.#write(CLEAR + this.#cut(this.line()));
        this.#drawn = true;
        this.#lastOut = now;
      }
    } else if (now - this.#lastOut >= this.#plainInterval) {
      this.#write(this.line() + "\n");
      this.#lastOut = now;
    }
  }

  /**
   * Prints `message` on a line of its own (on a terminal above the progress line, which is
   * then redrawn).
   */
  log(message: string): void {
    if (!this.#enabled) return;
    if (this.tty && this.#drawn && !this.#done) {
      this.#write(`${CLEAR}${message}\n${CLEAR}${this.#cut(this.line())}`);
    } else {
      this.#write(`${this.tty ? CLEAR : ""}${message}\n`);
    }
  }

  /** The current status line (no control characters). */
  line(): string {
    const parts = [this.label];
    const t = this.total;
    if (t !== undefined) {
      const frac = t > 0 ? Math.min(1, this.#n / t) : 1;
      if (this.tty) {
        const fill = Math.round(frac * 20);
        parts.push(`[${"#".repeat(fill)}${"-".repeat(20 - fill)}]`);
      }
      parts.push(`${this.#n}/${t} ${this.unit}`, `${(100 * frac).toFixed(0)}%`);
    } else {
      parts.push(`${this.#n} ${this.unit}`);
    }
    parts.push(formatRate(this.rate, this.unit), `elapsed ${formatDuration(this.elapsed)}`);
    const eta = this.eta;
    if (eta !== null) parts.push(`ETA ${formatDuration(eta)}`);
    const f = formatFields(this.#fields);
    if (f !== "") parts.push(f);
    return parts.join("  ");
  }

  /**
   * Prints the final line, ending with a newline: the count, the average rate over the whole
   * run, the total time, the last fields and `summary` (text, or fields formatted like
   * `tick`'s). Later calls (and ticks) do nothing.
   */
  done(summary?: string | Record<string, number | string>): void {
    if (this.#done) return;
    this.#done = true;
    if (!this.#enabled) return;
    const secs = this.elapsed;
    const parts = [this.label];
    parts.push(
      this.total !== undefined
        ? `${this.#n}/${this.total} ${this.unit}`
        : `${this.#n} ${this.unit}`,
    );
    const avg = secs > 0 ? (this.#n - this.#n0) / secs : null;
    parts.push(formatRate(avg, this.unit), `done in ${formatDuration(secs)}`);
    const f = formatFields(this.#fields);
    if (f !== "") parts.push(f);
    if (summary !== undefined) {
      const s = typeof summary === "string" ? summary : formatFields(summary);
      if (s !== "") parts.push(s);
    }
    const text = parts.join("  ");
    this.#write(this.tty ? `${CLEAR}${text}\n` : `${text}\n`);
  }

  #cut(s: string): string {
    return s.length > this.#columns ? s.slice(0, Math.max(0, this.#columns)) : s;
  }

  #write(s: string): void {
    const bytes = encoder.encode(s);
    let off = 0;
    while (off < bytes.length) off += this.#stream.writeSync(bytes.subarray(off));
  }
}

// ---- JSONL -------------------------------------------------------------------------------

/** Options of {@link JsonlLog}. */
export interface JsonlLogOptions {
  /** put `"time"` (an ISO-8601 UTC string) first in every record (default false) */
  timestamp?: boolean;
}

/**
 * A JSON-lines log: every {@link JsonlLog.write} appends one record as one line with a single
 * write to a file opened for appending (created, with its directory, if missing), so records
 * reach the file as they happen, a second run appends to the same file, and a crash can cut
 * off at most the last line ({@link readJsonl} skips that). Non-finite numbers become `null`
 * (JSON has no NaN). Close it with {@link JsonlLog.close} or `using`.
 */
export class JsonlLog {
  /** the file written */
  readonly path: string;
  #file: Deno.FsFile | null;
  #timestamp: boolean;

  /** Opens (creating it and its directory if needed) `path` for appending. */
  constructor(path: string, opts: JsonlLogOptions = {}) {
    this.path = path;
    this.#timestamp = opts.timestamp ?? false;
    const slash = path.lastIndexOf("/");
    if (slash > 0) Deno.mkdirSync(path.slice(0, slash), { recursive: true });
    this.#file = Deno.openSync(path, { append: true, create: true });
  }

  /** Appends `record` as one line. Throws after {@link JsonlLog.close}. */
  write(record: Record<string, unknown>): void {
    if (this.#file === null) throw new Error(`${this.path}: the JSONL log is closed`);
    const r = this.#timestamp ? { time: new Date().toISOString(), ...record } : record;
    const bytes = encoder.encode(JSON.stringify(r) + "\n");
    let off = 0;
    while (off < bytes.length) off += this.#file.writeSync(bytes.subarray(off));
  }

  /** Closes the file; later calls do nothing. */
  close(): void {
    this.#file?.close();
    this.#file = null;
  }

  /** Same as {@link JsonlLog.close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Reads a JSON-lines file: one parsed record per non-empty line. A last line that does not
 * parse (a write cut off by a crash) is skipped; any other bad line throws a `SyntaxError`
 * naming the file and line.
 */
export async function readJsonl(path: string): Promise<Record<string, unknown>[]> {
  const lines = (await Deno.readTextFile(path)).split("\n");
  const out: Record<string, unknown>[] = [];
  for (let k = 0; k < lines.length; k++) {
    if (lines[k].trim() === "") continue;
    try {
      out.push(JSON.parse(lines[k]));
    } catch (e) {
      if (lines.slice(k + 1).every((l) => l.trim() === "")) break;
      throw new SyntaxError(`${path}:${k + 1}: ${(e as Error).message}`);
    }
  }
  return out;
}
