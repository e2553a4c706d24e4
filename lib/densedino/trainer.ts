/**
 * The DINO / DenseDINO training loop (paper §3.1–3.2, Eq. 1–4) with the official code's
 * schedules and update order: per iteration, lr / weight decay from their cosine schedules,
 * teacher forward on the global views (no grad) and student forward on every view, the loss,
 * backward, per-parameter gradient clipping, the heads' last layer frozen during the first
 * epoch(s), AdamW, then the teacher's EMA update.
 *
 * Checkpoints (DESIGN.md §3): `OUT/checkpoint.safetensors` with `student.*`, `teacher.*`,
 * the loss centres (`dino_loss.center`, `dino_loss.ref_center`), the optimiser state
 * (`optimizer.*`) and the CPU RNG state (`rng.cpu`), its JSON sidecar `OUT/checkpoint.json`
 * (epoch, iteration, position in the epoch, config, optimiser steps, loss scale), and
 * `OUT/teacher_backbone.safetensors` with bare ViT keys — each written atomically. Resuming
 * restores all of it, so a resumed run computes exactly what an uninterrupted one would.
 *
 * @module
 */
import {
  AdamW,
  autocast,
  clipGradNorms,
  emaUpdate,
  freeAll,
  getNumThreads,
  getRngState,
  GradScaler,
  liveTensors,
  loadSafetensors,
  manualSeed,
  noGrad,
  type ParamGroup,
  saveSafetensors,
  scope,
  setNumThreads,
  setRngState,
  type Tensor,
  writeFileAtomic,
  zeroGrads,
} from "../torch/mod.ts";
import { createViT, saveModule } from "../nn/mod.ts";
import { DataLoader, JsonlLog, Progress, readJsonl, saveLinePlot } from "../data/mod.ts";
import { checkResumable, ConfigError, resolveTrainConfig, type TrainConfig } from "./config.ts";
import { DenseDinoModel } from "./model.ts";
import { DinoLoss, isCollapsed } from "./loss.ts";
import { cosineSchedule, linearScaledLr, teacherTempSchedule } from "./schedules.ts";
import {
  collateMultiCrop,
  collateMultiCropPinned,
  type MultiCropBatch,
  type MultiCropItem,
} from "./multicrop.ts";
import { openTrainDataset, type TrainSourceOptions, trainSourceSpec } from "./data.ts";

/** Raised when training cannot go on (non-finite loss, unusable checkpoint); the message says why. */
export class TrainError extends Error {
  /** A training error. */
  constructor(message: string) {
    super(message);
    this.name = "TrainError";
  }
}

/** The numbers of one iteration. */
export interface StepStats {
  /** total loss */
  loss: number;
  /** class-token loss */
  cls: number;
  /** reference-token loss */
  ref: number;
  /** mean teacher-softmax entropy (collapse shows as ≈ ln(outDim)) */
  entropy: number;
  /** learning rate used */
  lr: number;
  /** weight decay used */
  wd: number;
  /** teacher momentum used */
  momentum: number;
  /** teacher temperature used */
  teacherTemp: number;
  /** fp16 only: the step was skipped because gradients overflowed */
  skipped: boolean;
}

/** What {@link Trainer.run} returns (also the final JSON line of `scripts/train.ts`). */
export interface TrainSummary {
  /** epochs completed (the next epoch to run) */
  epochs: number;
  /** iterations completed in total */
  iterations: number;
  /** the last logged losses */
  final: { loss: number; cls: number; ref: number } | null;
  /** training images per second over this run */
  imagesPerSec: number;
  /** share of the run spent waiting for data */
  dataWaitShare: number;
  /** written files */
  outputs: {
    checkpoint: string;
    sidecar: string;
    teacherBackbone: string;
    log: string;
    config: string;
    lossCurve: string;
  };
  /** wall-clock seconds of this run */
  seconds: number;
}

/** Hooks for tests and embedding. */
export interface TrainerHooks {
  /** where messages go (default: a line on stderr) */
  log?: (message: string) => void;
  /** progress line output (default: stderr) */
  progress?: boolean;
  /** called after every iteration (tests) */
  onStep?: (iteration: number, stats: StepStats) => void;
}

const CHECKPOINT = "checkpoint.safetensors";
const SIDECAR = "checkpoint.json";
const TEACHER_BACKBONE = "teacher_backbone.safetensors";

/** The trainer: build with {@link Trainer.create}, then {@link run}; {@link free} when done. */
export class Trainer {
  /** the resolved configuration */
  readonly config: TrainConfig;
  /** the student (trained by gradient descent) */
  readonly student: DenseDinoModel;
  /** the teacher (EMA of the student) */
  readonly teacher: DenseDinoModel;
  /** the loss with its centres */
  readonly loss: DinoLoss;
  /** the optimiser (group 0 regularised, group 1 without weight decay) */
  readonly optimizer: AdamW;
  /** the data loader */
  readonly loader: DataLoader<MultiCropItem, MultiCropBatch>;
  /** iterations per epoch */
  readonly itersPerEpoch: number;
  /** per-iteration schedules */
  readonly schedules: { lr: Float64Array; wd: Float64Array; momentum: Float64Array };
  /** fp16 loss scaling (null otherwise) */
  readonly scaler: GradScaler | null;
  /** the epoch to run next */
  epoch = 0;
  /** iterations done */
  iteration = 0;
  /** position in the current epoch's order where it continues (resume) */
  position = 0;
  readonly #log: (m: string) => void;
  readonly #hooks: TrainerHooks;
  readonly #studentParams: Tensor[];
  readonly #teacherParams: Tensor[];
  readonly #lastLayer: Tensor[];

  private constructor(
    cfg: TrainConfig,
    parts: {
      student: DenseDinoModel;
      teacher: DenseDinoModel;
      loss: DinoLoss;
      optimizer: AdamW;
      loader: DataLoader<MultiCropItem, MultiCropBatch>;
      itersPerEpoch: number;
      schedules: { lr: Float64Array; wd: Float64Array; momentum: Float64Array };
      lastLayer: Tensor[];
    },
    hooks: TrainerHooks,
  ) {
    this.config = cfg;
    this.student = parts.student;
    this.teacher = parts.teacher;
    this.loss = parts.loss;
    this.optimizer = parts.optimizer;
    this.loader = parts.loader;
    this.itersPerEpoch = parts.itersPerEpoch;
    this.schedules = parts.schedules;
    this.scaler = cfg.precision === "fp16" ? new GradScaler() : null;
    this.#hooks = hooks;
    this.#log = hooks.log ?? ((m) => console.error(m));
    this.#studentParams = parts.student.parameters();
    this.#teacherParams = parts.teacher.parameters();
    this.#lastLayer = parts.lastLayer;
  }

  /**
   * Checks the configuration, prepares OUT, builds data, models, loss, optimiser and
   * schedules, and (with `resume`) restores the checkpoint — every error before any training.
   */
  static async create(opts: Partial<TrainConfig>, hooks: TrainerHooks = {}): Promise<Trainer> {
    const cfg = resolveTrainConfig(opts);
    const log = hooks.log ?? ((m: string) => console.error(m));
    await prepareOut(cfg);
    await removeStaleTemporaries(cfg.out, log);
    if (cfg.resume) {
      // an early check against the sidecar; restoring checks the checkpoint's own copy again
      const saved = await readSidecar(cfg.out);
      if (saved) checkResumable(saved.config, cfg, `${cfg.out}/${SIDECAR}`);
    }
    if (cfg.threads > 0) setNumThreads(cfg.threads);
    manualSeed(cfg.seed);
    const views = cfg.views;
    const G = views.globalCrops!, N = G + views.localCrops!;
    const dense = cfg.method === "densedino";
    const source: TrainSourceOptions = {
      data: cfg.data,
      scenes: cfg.scenes,
      views,
      quiet: cfg.workers > 0,
    };
    // the data set is opened here first: a missing or empty data set fails before training, and
    // a generated data set is cached before the workers open it
    const probe = await openTrainDataset({ ...source, quiet: false });
    const n = probe.length;
    (probe as { [Symbol.dispose]?: () => void })[Symbol.dispose]?.();
    if (n < cfg.batchSize) {
      throw new ConfigError(
        `--batch-size ${cfg.batchSize} is larger than the data set (${n} images) and the last short ` +
          `batch is dropped: no iteration would run`,
      );
    }
    const itersPerEpoch = Math.floor(n / cfg.batchSize);
    const loader = new DataLoader<MultiCropItem, MultiCropBatch>({
      source: trainSourceSpec(source),
      batchSize: cfg.batchSize,
      seed: cfg.seed,
      workers: cfg.workers,
      dropLast: true,
      // on CUDA the batch is collated into pinned memory: its copies to the GPU run asynchronously
      collate: cfg.device === "cuda" ? collateMultiCropPinned : collateMultiCrop,
      warn: log,
    });
    const build = (dropPathRate: number) => {
      const backbone = createViT(cfg.arch, {
        patchSize: cfg.patchSize,
        imgSize: cfg.imgSize,
        dropPathRate,
        learnableRefToken: cfg.learnableRefToken,
      });
      return new DenseDinoModel(backbone, {
        outDim: cfg.outDim,
        hiddenDim: cfg.headHiddenDim,
        bottleneckDim: cfg.headBottleneckDim,
        normLastLayer: cfg.normLastLayer,
        refHead: dense && cfg.loss !== "cls" ? true : false,
        sharedRefHead: cfg.sharedRefHead,
      });
    };
    const student = build(cfg.dropPathRate);
    const teacher = build(0);
    teacher.loadStateDict(student.stateDict());
    for (const p of teacher.parameters()) if (p.requiresGrad) p.requiresGrad_(false);
    if (cfg.device === "cuda") {
      student.to("cuda");
      teacher.to("cuda");
    }
    teacher.eval();
    student.train();
    // AdamW groups as the official get_params_groups: no decay on biases and 1-D parameters
    const reg: Tensor[] = [], noReg: Tensor[] = [];
    const lastLayer: Tensor[] = [];
    for (const [name, p] of student.namedParameters()) {
      if (!p.requiresGrad) continue;
      (name.endsWith(".bias") || p.ndim === 1 ? noReg : reg).push(p);
      if (name.includes("last_layer")) lastLayer.push(p);
    }
    const groups: ParamGroup[] = [
      { params: reg, name: "regularized" },
      { params: noReg, name: "not_regularized", weightDecay: 0 },
    ];
    const optimizer = new AdamW(groups, { lr: 0, weightDecay: 0 });
    const lr = cosineSchedule(
      linearScaledLr(cfg.lr, cfg.batchSize),
      cfg.minLr,
      cfg.epochs,
      itersPerEpoch,
      { warmupEpochs: cfg.warmupEpochs },
    );
    const wd = cosineSchedule(cfg.weightDecay, cfg.weightDecayEnd, cfg.epochs, itersPerEpoch);
    const momentum = cosineSchedule(cfg.momentumTeacher, 1, cfg.epochs, itersPerEpoch);
    const loss = new DinoLoss({
      outDim: cfg.outDim,
      globalCrops: G,
      numViews: N,
      numRef: dense ? views.numRef : undefined,
      studentTemp: cfg.studentTemp,
      teacherTemp: teacherTempSchedule({
        epochs: cfg.epochs,
        warmupTemp: cfg.warmupTeacherTemp,
        temp: cfg.teacherTemp,
        warmupEpochs: cfg.warmupTeacherTempEpochs,
      }),
      centerMomentum: cfg.centerMomentum,
      alpha: cfg.alpha,
      loss: cfg.loss,
      allCropsCls: cfg.allCropsCls,
      allCropsRef: cfg.allCropsRef,
    });
    const t = new Trainer(cfg, {
      student,
      teacher,
      loss,
      optimizer,
      loader,
      itersPerEpoch,
      schedules: { lr, wd, momentum },
      lastLayer,
    }, hooks);
    await Deno.writeTextFile(`${cfg.out}/config.json`, JSON.stringify(cfg, null, 2) + "\n");
    // a fresh run starts a fresh log; a resumed one appends, after a line cut off by a crash
    // is dropped (else the next record would be glued to it)
    if (cfg.resume) await dropPartialLine(`${cfg.out}/log.jsonl`);
    else await Deno.remove(`${cfg.out}/log.jsonl`).catch(() => {});
    if (cfg.resume) await t.#restore();
    return t;
  }

  /** Total iterations of the configured run (or `maxIters`). */
  get totalIterations(): number {
    const all = this.config.epochs * this.itersPerEpoch;
    return this.config.maxIters > 0 ? Math.min(all, this.config.maxIters) : all;
  }

  /**
   * One iteration on a batch: forward passes, loss, backward, clipping, last-layer freeze,
   * AdamW, EMA. Throws a TrainError (before any update) when the loss is not finite.
   */
  step(batch: MultiCropBatch): StepStats {
    const cfg = this.config;
    const it = this.iteration;
    const lr = this.schedules.lr[it], wd = this.schedules.wd[it], m = this.schedules.momentum[it];
    this.optimizer.groups[0].lr = lr;
    this.optimizer.groups[0].weightDecay = wd;
    this.optimizer.groups[1].lr = lr;
    const G = cfg.views.globalCrops!;
    const dense = this.student.refHead !== null;
    const dev = cfg.device;
    return scope(() => {
      const onDevice = (ts: Tensor[]) =>
        dev === "cpu" ? ts : ts.map((t) => t.to({ device: dev, nonBlocking: true }));
      const views = onDevice(batch.views);
      const tPts = dense ? onDevice(batch.teacherPoints) : null;
      const sPts = dense ? onDevice(batch.studentPoints) : null;
      const precise = cfg.precision === "fp32";
      const fwd = {
        maskMode: cfg.maskMode,
        fastPath: cfg.attention === "auto" ? undefined : cfg.attention === "split",
      };
      const amp = <T>(fn: () => T): T =>
        precise
          ? fn()
          : autocast(fn, { device: dev, dtype: cfg.precision === "fp16" ? "float16" : "bfloat16" });
      const teacherOut = noGrad(() =>
        amp(() => this.teacher.forward(views.slice(0, G), tPts, fwd))
      );
      const studentOut = amp(() => this.student.forward(views, sPts, fwd));
      const out = this.loss.forward(
        {
          teacherCls: teacherOut.cls,
          studentCls: studentOut.cls,
          teacherRef: teacherOut.ref,
          studentRef: studentOut.ref,
        },
        this.epoch,
        { entropy: true },
      );
      const [loss, cls, ref] = [out.total.item(), out.cls.item(), out.ref.item()];
      if (!Number.isFinite(loss)) {
        throw new TrainError(
          `the loss is ${loss} at epoch ${this.epoch}, iteration ${it} (class ${cls}, reference ${ref}): ` +
            `training stopped; the last good checkpoint in ${cfg.out} is kept. Lower --lr, check the data, ` +
            `or use --precision fp32`,
        );
      }
      zeroGrads(this.#studentParams, true);
      (this.scaler ? this.scaler.scaleLoss(out.total) : out.total).backward();
      let skipped = false;
      if (this.scaler) skipped = this.scaler.unscale(this.#studentParams);
      if (cfg.clipGrad > 0) clipGradNorms(this.#studentParams, cfg.clipGrad);
      if (this.epoch < cfg.freezeLastLayer) zeroGrads(this.#lastLayer, true); // as cancel_gradients_last_layer
      if (!skipped) this.optimizer.step();
      this.scaler?.update(skipped);
      emaUpdate(this.#teacherParams, this.#studentParams, m);
      return {
        loss,
        cls,
        ref,
        entropy: out.entropy ? out.entropy.item() : NaN,
        lr,
        wd,
        momentum: m,
        teacherTemp: out.temperature,
        skipped,
      };
    });
  }

  /** Trains to the end (or `maxIters`), checkpointing and logging; returns the summary. */
  async run(): Promise<TrainSummary> {
    const cfg = this.config;
    const t0 = performance.now();
    const log = new JsonlLog(`${cfg.out}/log.jsonl`);
    const total = this.totalIterations;
    const progress = new Progress({
      label: cfg.method,
      total,
      unit: "it",
      initial: this.iteration,
      enabled: this.#hooks.progress ?? true,
    });
    let images = 0, wait = 0;
    let last: StepStats | null = null;
    let collapsedWarned = -1;
    const liveAtStart = liveTensors();
    try {
      while (this.epoch < cfg.epochs && this.iteration < total) {
        const e = this.epoch;
        const sums = { loss: 0, cls: 0, ref: 0, n: 0 };
        const epochStart = performance.now();
        for await (const batch of this.loader.epoch(e, { start: this.position })) {
          try {
            const stats = this.step(batch);
            images += batch.indices.length;
            this.iteration++;
            this.position = this.loader.stats.nextPosition;
            last = stats;
            sums.loss += stats.loss;
            sums.cls += stats.cls;
            sums.ref += stats.ref;
            sums.n++;
            this.#hooks.onStep?.(this.iteration, stats);
            if (isCollapsed(stats.entropy, cfg.outDim) && collapsedWarned !== e) {
              collapsedWarned = e;
              progress.log(
                `warning: the teacher's outputs are near uniform (entropy ${
                  stats.entropy.toFixed(3)
                } ≈ ` +
                  `ln(${cfg.outDim}) = ${
                    Math.log(cfg.outDim).toFixed(3)
                  }): the model may be collapsing; ` +
                  `consider a lower --teacher-temp, a smaller --out-dim or a lower --lr`,
              );
            }
            const elapsed = (performance.now() - t0) / 1e3;
            progress.tick(1, {
              epoch: e,
              loss: stats.loss,
              cls: stats.cls,
              ref: stats.ref,
              lr: stats.lr,
              wd: stats.wd,
              m: stats.momentum,
              "img/s": images / Math.max(elapsed, 1e-9),
            });
            if (this.iteration % cfg.logEvery === 0 || this.iteration === total) {
              log.write({
                type: "iter",
                epoch: e,
                iteration: this.iteration,
                ...stats,
                imagesPerSec: images / elapsed,
              });
            }
            if (cfg.saveEvery > 0 && this.iteration % cfg.saveEvery === 0) {
              await this.saveCheckpoint();
            }
          } finally {
            batch.free();
          }
          if (cfg.maxIters > 0 && this.iteration >= cfg.maxIters) break; // a smoke run's end
        }
        wait += this.loader.stats.waitSeconds;
        // a maxIters stop on the epoch's last batch leaves the loader unfinished, yet no full
        // batch is left (drop_last): the epoch is complete (so the checkpoint says the next epoch)
        const finished = this.loader.stats.complete ||
          this.position >= this.itersPerEpoch * cfg.batchSize;
        if (finished) {
          this.epoch++;
          this.position = 0;
        }
        log.write({
          type: "epoch",
          epoch: e,
          iteration: this.iteration,
          complete: finished,
          loss: sums.n ? sums.loss / sums.n : null,
          cls: sums.n ? sums.cls / sums.n : null,
          ref: sums.n ? sums.ref / sums.n : null,
          skipped: this.loader.stats.skipped,
          dataWaitSeconds: this.loader.stats.waitSeconds,
          seconds: (performance.now() - epochStart) / 1e3,
          liveTensors: liveTensors() - liveAtStart,
        });
        await this.saveCheckpoint();
        if (!finished) break; // maxIters reached mid-epoch
      }
    } finally {
      log.close();
      progress.done();
      await this.loader.close();
    }
    const seconds = (performance.now() - t0) / 1e3;
    const lossCurve = `${cfg.out}/loss.png`;
    // the plot is a by-product: failing to draw it must not fail a finished run
    await this.#plotLoss(lossCurve).catch((e) =>
      this.#log(`warning: could not draw ${lossCurve}: ${(e as Error).message}`)
    );
    return {
      epochs: this.epoch,
      iterations: this.iteration,
      final: last ? { loss: last.loss, cls: last.cls, ref: last.ref } : null,
      imagesPerSec: images / Math.max(seconds, 1e-9),
      dataWaitShare: seconds > 0 ? wait / seconds : 0,
      outputs: {
        checkpoint: `${cfg.out}/${CHECKPOINT}`,
        sidecar: `${cfg.out}/${SIDECAR}`,
        teacherBackbone: `${cfg.out}/${TEACHER_BACKBONE}`,
        log: `${cfg.out}/log.jsonl`,
        config: `${cfg.out}/config.json`,
        lossCurve,
      },
      seconds,
    };
  }

  /** Writes the checkpoint, its sidecar and the teacher backbone (each atomically). */
  async saveCheckpoint(): Promise<void> {
    const cfg = this.config;
    const tensors: Record<string, Tensor> = {};
    for (const [k, v] of this.student.namedParameters()) tensors[`student.${k}`] = v;
    for (const [k, v] of this.teacher.namedParameters()) tensors[`teacher.${k}`] = v;
    const ls = this.loss.state();
    tensors["dino_loss.center"] = ls.center;
    tensors["dino_loss.ref_center"] = ls.ref_center;
    const opt = this.optimizer.stateDict();
    for (const [k, v] of Object.entries(opt.tensors)) tensors[`optimizer.${k}`] = v;
    const rng = getRngState();
    tensors["rng.cpu"] = rng;
    const sidecar = {
      format: "densedino-checkpoint",
      version: 1,
      epoch: this.epoch,
      iteration: this.iteration,
      position: this.position,
      config: cfg,
      optimizer: opt.meta,
      scaler: this.scaler?.state() ?? null,
      threads: getNumThreads(),
      savedAt: new Date().toISOString(),
    };
    const text = JSON.stringify(sidecar, null, 2) + "\n";
    try {
      // the sidecar also travels inside the safetensors metadata, so the checkpoint file alone is
      // self-consistent even if a crash separates the writes; the sidecar comes last, so once it
      // exists all three files do (a crash leaves the sidecar no newer than the checkpoint and
      // the teacher backbone at most one save ahead of it)
      await saveModule(`${cfg.out}/${TEACHER_BACKBONE}`, this.teacher.backbone);
      await saveSafetensors(`${cfg.out}/${CHECKPOINT}`, tensors, { densedino: text });
      await writeFileAtomic(`${cfg.out}/${SIDECAR}`, text);
    } finally {
      rng.free();
    }
  }

  async #restore(): Promise<void> {
    const cfg = this.config;
    const path = `${cfg.out}/${CHECKPOINT}`;
    const { tensors, metadata } = await loadSafetensors(path).catch((e) => {
      throw new TrainError(`--resume: cannot read ${path}: ${(e as Error).message}`);
    });
    try {
      const meta = JSON.parse(metadata.densedino ?? "null");
      if (!meta || meta.format !== "densedino-checkpoint") {
        throw new TrainError(
          `--resume: ${path} is not a densedino training checkpoint (no sidecar metadata)`,
        );
      }
      checkResumable(meta.config, cfg, path);
      const pick = (prefix: string) =>
        Object.fromEntries(
          Object.entries(tensors).filter(([k]) => k.startsWith(prefix)).map((
            [k, v],
          ) => [k.slice(prefix.length), v]),
        );
      this.student.loadStateDict(pick("student."));
      this.teacher.loadStateDict(pick("teacher."));
      this.loss.loadState({
        center: tensors["dino_loss.center"],
        ref_center: tensors["dino_loss.ref_center"],
      });
      this.optimizer.loadStateDict({ tensors: pick("optimizer."), meta: meta.optimizer });
      setRngState(tensors["rng.cpu"]);
      if (this.scaler && meta.scaler) this.scaler.loadState(meta.scaler);
      this.epoch = meta.epoch;
      this.iteration = meta.iteration;
      this.position = meta.position;
      if (meta.threads && cfg.threads === 0 && meta.threads !== getNumThreads()) {
        this.#log(
          `note: the checkpoint was written with ${meta.threads} intra-op threads, this run has ` +
            `${getNumThreads()}; results may differ in the last bits (--threads ${meta.threads} matches)`,
        );
      }
      this.#log(`resumed from ${path}: epoch ${this.epoch}, iteration ${this.iteration}`);
    } finally {
      freeAll(tensors);
    }
  }

  async #plotLoss(path: string): Promise<void> {
    const cfg = this.config;
    const its = iterationRecords(await readJsonl(`${cfg.out}/log.jsonl`));
    if (its.length === 0) return;
    const x = its.map((r) => Number(r.iteration));
    const series = [{ name: "total", x, y: its.map((r) => Number(r.loss)) }];
    if (cfg.method === "densedino" && cfg.loss === "both") {
      series.push({ name: "class", x, y: its.map((r) => Number(r.cls)) });
      series.push({ name: "reference", x, y: its.map((r) => Number(r.ref)) });
    }
    await saveLinePlot(path, {
      series,
      title: `${cfg.method} training loss (${cfg.arch}/${cfg.patchSize}, ${cfg.data})`,
      xLabel: "iteration",
      yLabel: "loss",
    });
  }

  /** Frees models, loss centres and optimiser state. */
  free(): void {
    this.student.free();
    this.teacher.free();
    this.loss.free();
    this.optimizer.free();
  }
}

async function prepareOut(cfg: TrainConfig): Promise<void> {
  try {
    await Deno.mkdir(cfg.out, { recursive: true });
    const probe = `${cfg.out}/.write-test-${Deno.pid}`;
    await Deno.writeTextFile(probe, "");
    await Deno.remove(probe);
  } catch (e) {
    throw new ConfigError(`--out ${cfg.out} is not a writable directory: ${(e as Error).message}`);
  }
  if (!cfg.resume) {
    try {
      await Deno.stat(`${cfg.out}/${CHECKPOINT}`);
      throw new ConfigError(
        `--out ${cfg.out} already holds a checkpoint: pass --resume to continue it, or choose another --out`,
      );
    } catch (e) {
      if (e instanceof ConfigError) throw e;
    }
  }
}

/**
 * The per-iteration records of a training log (`log.jsonl`), in iteration order. Iterations
 * redone after a resume were logged twice: the last record of each counts.
 */
export function iterationRecords(
  records: readonly Record<string, unknown>[],
): Record<string, unknown>[] {
  const byIteration = new Map<number, Record<string, unknown>>();
  for (const r of records) if (r.type === "iter") byIteration.set(Number(r.iteration), r);
  return [...byIteration.values()].sort((a, b) => Number(a.iteration) - Number(b.iteration));
}

/**
 * Removes the temporary files of checkpoint writes that a killed run left behind (they are never
 * read: only the renamed files count). A file whose writer is still alive (Linux `/proc`) stays.
 */
async function removeStaleTemporaries(out: string, log: (m: string) => void): Promise<void> {
  const names = [CHECKPOINT, SIDECAR, TEACHER_BACKBONE].map((n) => n.replaceAll(".", "\\."));
  const pattern = new RegExp(`^(?:${names.join("|")})\\.tmp-(\\d+)-`);
  for await (const e of Deno.readDir(out)) {
    const m = pattern.exec(e.name);
    if (!m || !e.isFile || Number(m[1]) === Deno.pid) continue;
    if (await Deno.stat(`/proc/${m[1]}`).then(() => true, () => false)) continue;
    await Deno.remove(`${out}/${e.name}`).then(
      () => log(`removed ${out}/${e.name}, left by an interrupted checkpoint write`),
      () => {},
    );
  }
}

/** Truncates `path` after its last newline (a record cut off by a crash); no file: nothing. */
async function dropPartialLine(path: string): Promise<void> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch {
    return;
  }
  if (bytes.length > 0 && bytes[bytes.length - 1] !== 0x0a) {
    await Deno.truncate(path, bytes.lastIndexOf(0x0a) + 1);
  }
}

/**
 * The sidecar's contents; null when it is missing but the checkpoint exists (a crash between the
 * two writes: the checkpoint's metadata holds the same record).
 */
async function readSidecar(out: string): Promise<{ config: TrainConfig } | null> {
  const path = `${out}/${SIDECAR}`;
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    if (
      e instanceof Deno.errors.NotFound &&
      await Deno.stat(`${out}/${CHECKPOINT}`).then(() => true, () => false)
    ) {
      return null;
    }
    throw new ConfigError(`--resume: cannot read ${path}: ${(e as Error).message}`);
  }
}
