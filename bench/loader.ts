/**
 * Does the data loader starve the training step? A simulated training loop — a busy native
 * step of a set duration (repeated 512×512 matmuls on the main thread, synchronous FFI like a
 * real step) — consumes batches from a {@link DataLoader} whose data set does real work per
 * example: decode a JPEG (or PNG) from memory with `decodeImage`, then `resizeImage` (bicubic,
 * antialiased resize of the shorter side + centre crop). For each worker count it reports the
 * time the loop waits for data per step, as a share of the step's time (issue 4's target:
 * ≤ 5%).
 *
 * This module is also the loader's source: the workers import it and call
 * {@link benchSource} (the encoded images travel in the options), so the main-thread code
 * below runs only when it is the entry point.
 *
 * Usage: `deno run -A bench/loader.ts [--workers 0,1,2] [--step-ms 300] [--batch 64] …`
 * (`--help` lists every flag). Progress and a table go to stderr, one JSON line to stdout.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  DataLoader,
  type Dataset,
  decodeImage,
  encodeJpeg,
  encodePng,
  getNumThreads,
  type LoaderSource,
  matmul,
  rand,
  randn,
  resizeImage,
  type Sample,
  scope,
  torchVersion,
} from "../mod.ts";
import { fmt, positiveInt, summarize, threadInfo } from "./common.ts";

/** Options of {@link benchSource} (structured-cloneable: they are posted to each worker). */
export interface BenchSourceOptions {
  /** encoded images (PNG or JPEG); example i uses image i mod their count */
  images: Uint8Array[];
  /** number of examples */
  n: number;
  /** shorter side after the resize */
  resize: number;
  /** centre crop after the resize */
  crop: number;
}

/** Examples decoded from memory and resized: the per-example work of an ImageFolder. */
class EncodedImages implements Dataset {
  readonly classes: readonly string[] = [];
  readonly length: number;
  readonly #o: BenchSourceOptions;

  constructor(o: BenchSourceOptions) {
    this.#o = o;
    this.length = o.n;
  }

  nameOf(i: number): string {
    return `bench/${i}`;
  }

  async get(i: number): Promise<Sample> {
    const o = this.#o;
    const x = await decodeImage(o.images[i % o.images.length], this.nameOf(i));
    try {
      return { image: resizeImage(x, o.resize, o.crop), label: i % 10, name: this.nameOf(i) };
    } finally {
      x.free();
    }
  }
}

/** The loader source of this benchmark (imported by the workers). */
export function benchSource(o: BenchSourceOptions): LoaderSource<Sample> {
  return { dataset: new EncodedImages(o) };
}

/** Smooth random RGB images (noise upsampled), encoded. */
async function makeImages(count: number, size: number, format: string): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    const img = scope(() => resizeImage(rand([3, size / 8, size / 8]), size));
    try {
      out.push(format === "png" ? await encodePng(img) : await encodeJpeg(img, 90));
    } finally {
      img.free();
    }
  }
  return out;
}

/** One configuration's result. */
interface Row {
  workers: number;
  prefetch: number;
  /** mean step time (ms) while the loader works */
  stepMs: number;
  /** mean step time (ms) with no loader, measured just before this configuration */
  stepAloneMs: number;
  /** mean and median wait for a batch per step (ms), warm-up batches excluded */
  waitMs: number;
  waitMedianMs: number;
  /** mean wait / mean step */
  waitShare: number;
  /** wait of the warm-up batches (ms; the first includes the first decodes) */
  warmupWaitMs: number[];
  /** ms to start the loader (workers importing the source) */
  startMs: number;
  /** training loop throughput (images/s), warm-up excluded */
  imagesPerSecond: number;
  /** cores other processes kept busy during the timed steps (this machine is shared) */
  otherCores: number | null;
}

/** The 1-minute load average (other processes share this machine's 2 cores), or null. */
function loadAvg(): number | null {
  try {
    return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
  } catch {
    return null;
  }
}

/** Busy CPU time of the whole machine and of this process (all its threads), in clock ticks. */
function cpuTicks(): { total: number; self: number } | null {
  try {
    const f = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/).map(Number);
    // user nice system idle iowait irq softirq steal
    const total = f[1] + f[2] + f[3] + f[6] + f[7] + f[8];
    const st = Deno.readTextFileSync("/proc/self/stat");
    const rest = st.slice(st.lastIndexOf(")") + 2).split(" ");
    return { total, self: Number(rest[11]) + Number(rest[12]) }; // utime, stime
  } catch {
    return null;
  }
}

/** Cores kept busy by other processes between two {@link cpuTicks} readings over `ms`. */
function otherCores(
  a: ReturnType<typeof cpuTicks>,
  b: ReturnType<typeof cpuTicks>,
  ms: number,
): number | null {
  if (a === null || b === null) return null;
  const ticksPerMs = 100 / 1000; // USER_HZ is 100 on Linux
  return ((b.total - a.total) - (b.self - a.self)) / (ms * ticksPerMs);
}

async function main(): Promise<void> {
  const load0 = loadAvg();
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      workers: { type: "string", default: "0,1,2" },
      prefetch: { type: "string", default: "auto" },
      batch: { type: "string", default: "64" },
      "step-ms": { type: "string", default: "300" },
      batches: { type: "string", default: "12" },
      warmup: { type: "string", default: "2" },
      format: { type: "string", default: "jpeg" },
      "image-size": { type: "string", default: "224" },
      resize: { type: "string", default: "112" },
      crop: { type: "string", default: "96" },
      images: { type: "string", default: "16" },
      rounds: { type: "string", default: "1" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(`Usage: deno run -A bench/loader.ts [flags]

A simulated training loop (a busy native step on the main thread) fed by the DataLoader;
reports the loop's wait for data per step as a share of the step time, per worker count.

  --workers LIST    comma-separated worker counts to compare (default 0,1,2)
  --prefetch N|auto batches in flight (auto: the loader's default, max(2, workers))
  --batch N         examples per batch (default 64)
  --step-ms N       simulated step duration in ms, repeated 512x512 matmuls (default 300)
  --batches N       timed steps per configuration (default 12)
  --warmup N        steps first whose wait is reported apart (default 2)
  --format F        jpeg or png: how the in-memory images are encoded (default jpeg)
  --image-size N    side of the encoded images (default 224)
  --resize N        shorter side after the resize, bicubic antialiased (default 112)
  --crop N          centre crop after the resize (default 96)
  --images N        distinct encoded images (example i uses image i mod N; default 16)
  --rounds N        run the worker list N times, interleaved; medians per count (default 1)
  -h, --help        this text`);
    return;
  }
  const workersList = values.workers.split(",").map((w) => {
    const n = Number(w);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--workers: bad count "${w}"`);
    return n;
  });
  const batch = positiveInt(values.batch, "--batch");
  const stepMs = positiveInt(values["step-ms"], "--step-ms");
  const batches = positiveInt(values.batches, "--batches");
  const warmup = Number(values.warmup);
  const size = positiveInt(values["image-size"], "--image-size");
  const resize = positiveInt(values.resize, "--resize");
  const crop = positiveInt(values.crop, "--crop");
  if (values.format !== "jpeg" && values.format !== "png") throw new Error("--format: jpeg|png");

  console.error(`encoding ${values.images} ${size}px ${values.format} images…`);
  const images = await makeImages(positiveInt(values.images, "--images"), size, values.format);

  // the step: k matmuls of 512×512, k calibrated to --step-ms
  const a = randn([512, 512]);
  const b = randn([512, 512]);
  const mm = () => matmul(a, b).free();
  for (let i = 0; i < 5; i++) mm();
  const t0 = performance.now();
  for (let i = 0; i < 20; i++) mm();
  const mmMs = (performance.now() - t0) / 20;
  const k = Math.max(1, Math.round(stepMs / mmMs));
  const step = () => {
    for (let i = 0; i < k; i++) mm();
  };
  console.error(`step: ${k} matmuls of 512x512 (${fmt(mmMs)} ms each alone)`);

  const n = batch * (batches + warmup + 1);
  const source = {
    module: new URL(import.meta.url),
    factory: "benchSource",
    options: { images, n, resize, crop } satisfies BenchSourceOptions,
  };

  // the data cost alone: main thread, no step
  let dataMsPerBatch = 0;
  {
    await using loader = new DataLoader({ source, batchSize: batch, workers: 0, shuffle: false });
    await loader.ready();
    const ts: number[] = [];
    let i = 0;
    let last = performance.now();
    for await (const x of loader.epoch(0)) {
      x.free();
      const now = performance.now();
      if (i++ > 0) ts.push(now - last); // the first includes imagescript's start
      last = now;
      if (i > 4) break;
    }
    dataMsPerBatch = summarize(ts).median;
  }
  console.error(
    `data alone (main thread): ${fmt(dataMsPerBatch)} ms per batch of ${batch} ` +
      `(${fmt(dataMsPerBatch / batch)} ms/image)`,
  );

  const rows: Row[] = [];
  const rounds = positiveInt(values.rounds, "--rounds");
  for (let round = 0; round < rounds; round++) {
    for (const workers of workersList) {
      const alone: number[] = [];
      for (let s = 0; s < 3; s++) {
        const st0 = performance.now();
        step();
        alone.push(performance.now() - st0);
      }
      const prefetch = values.prefetch === "auto"
        ? undefined
        : positiveInt(values.prefetch, "--prefetch");
      const s0 = performance.now();
      await using loader = new DataLoader({ source, batchSize: batch, workers, prefetch, seed: 1 });
      await loader.ready();
      const startMs = performance.now() - s0;
      const it = loader.epoch(0);
      const waits: number[] = [];
      const steps: number[] = [];
      const warm: number[] = [];
      let loopStart = 0;
      let cpu0: ReturnType<typeof cpuTicks> = null;
      for (let s = 0; s < warmup + batches; s++) {
        if (s === warmup) {
          loopStart = performance.now();
          cpu0 = cpuTicks();
        }
        const w0 = performance.now();
        const r = await it.next();
        const w = performance.now() - w0;
        if (r.done) throw new Error("the epoch ended early");
        if (s < warmup) warm.push(w);
        else waits.push(w);
        const st0 = performance.now();
        step();
        if (s >= warmup) steps.push(performance.now() - st0);
        r.value.free();
      }
      const loopMs = performance.now() - loopStart;
      const others = otherCores(cpu0, cpuTicks(), loopMs);
      await it.return();
      const ws = summarize(waits);
      const ss = summarize(steps);
      const row: Row = {
        workers,
        prefetch: loader.prefetch,
        stepMs: ss.mean,
        stepAloneMs: summarize(alone).mean,
        waitMs: ws.mean,
        waitMedianMs: ws.median,
        waitShare: ws.mean / ss.mean,
        warmupWaitMs: warm,
        startMs,
        imagesPerSecond: (batches * batch) / (loopMs / 1e3),
        otherCores: others,
      };
      rows.push(row);
      console.error(
        `workers ${workers} (prefetch ${row.prefetch}): step ${fmt(row.stepMs)} ms (alone ` +
          `${fmt(row.stepAloneMs)}), wait ` +
          `${fmt(row.waitMs)} ms (median ${fmt(row.waitMedianMs)}) = ${
            fmt(100 * row.waitShare)
          }% of the step; ${fmt(row.imagesPerSecond)} images/s; start ${fmt(startMs)} ms; ` +
          `other processes ${others === null ? "?" : fmt(others, 2)} cores`,
      );
    }
  }
  a.free();
  b.free();

  // medians over the rounds, per worker count
  const summary = workersList.map((workers) => {
    const mine = rows.filter((r) => r.workers === workers);
    const med = (f: (r: Row) => number) => summarize(mine.map(f)).median;
    return {
      workers,
      prefetch: mine[0].prefetch,
      stepMs: med((r) => r.stepMs),
      stepAloneMs: med((r) => r.stepAloneMs),
      waitMs: med((r) => r.waitMs),
      waitShare: med((r) => r.waitShare),
      imagesPerSecond: med((r) => r.imagesPerSecond),
      otherCores: med((r) => r.otherCores ?? NaN),
    };
  });
  console.error(
    `\nmedians over ${rounds} round(s):\n` +
      "workers  prefetch  step ms  (alone)  wait ms  wait/step  images/s  other cores",
  );
  for (const r of summary) {
    console.error(
      `${String(r.workers).padStart(7)}  ${String(r.prefetch).padStart(8)}  ${
        fmt(r.stepMs).padStart(7)
      }  ${fmt(r.stepAloneMs).padStart(7)}  ${fmt(r.waitMs).padStart(7)}  ${
        (fmt(100 * r.waitShare) + "%").padStart(9)
      }  ${fmt(r.imagesPerSecond).padStart(8)}  ${fmt(r.otherCores, 2).padStart(11)}`,
    );
  }
  if (rows.some((r) => (r.otherCores ?? 0) > 0.25)) {
    console.error(
      "note: other processes kept more than a quarter of a core busy during some rows; their " +
        "step times (and throughput) are not comparable, the wait shares still are",
    );
  }
  console.log(JSON.stringify({
    bench: "loader",
    versions: { deno: Deno.version.deno, libtorch: torchVersion() },
    threads: threadInfo(getNumThreads()),
    cores: navigator.hardwareConcurrency,
    loadAverage: { start: load0, end: loadAvg() },
    params: {
      batch,
      stepMs,
      matmulsPerStep: k,
      batches,
      warmup,
      format: values.format,
      imageSize: size,
      resize,
      crop,
      dataMsPerBatch,
    },
    target: { waitShare: 0.05 },
    summary,
    results: rows,
  }));
}

if (import.meta.main) await main();
