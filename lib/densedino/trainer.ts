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
 * **Data parallelism** (with {@link TrainerHooks.group}, a c10d process group; `scripts/train.ts`
 * makes one from torchrun's environment, which `scripts/launch.ts` sets) follows the official
 * code: `batchSize` is per process (`--batch_size_per_gpu`), the global batch is
 * `batchSize · worldSize` (it scales the lr and sets the iterations per epoch); rank 0's
 * parameters are broadcast at the start; each rank loads a disjoint shard of every global batch
 * (the same order from the shared seed, reshuffled per epoch); after backward the gradients are
 * averaged over ranks (bucketed all-reduce of the flattened gradients) before unscaling,
 * clipping and AdamW; the loss centres are updated from the all-reduced batch centre; the logged
 * losses are global means. Only rank 0 writes OUT (config, log, checkpoints, plot) and shows
 * progress. A resume needs the same world size; rank 0 reads the checkpoint and sends it to the
 * others (no shared storage needed). With the same images, `dropPathRate` 0 and fp32, N
 * processes with batch b train the same model as one process with batch N·b, up to float
 * rounding (tests/densedino/dist_train_test.ts).
 *
 * @module
 */
import {
  AdamW,
  autocast,
  clipGradNorms,
  deserializeSafetensors,
  emaUpdate,
  freeAll,
  fromTypedArray,
  getNumThreads,
  getRngState,
  GradScaler,
  liveTensors,
  loadSafetensors,
  manualSeed,
  noGrad,
  type ParamGroup,
  type ProcessGroup,
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
  /**
   * The process group of data-parallel training (see the module documentation); absent or of
   * world size 1: a single process. The trainer does not destroy it.
   */
  group?: ProcessGroup;
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
  /** the process group when distributed (world size > 1), else null */
  readonly group: ProcessGroup | null;
  /** seconds spent in the gradient all-reduce during {@link run} (0 for one process) */
  commSeconds = 0;

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
    this.group = hooks.group && hooks.group.worldSize > 1 ? hooks.group : null;
  }

  /** Number of processes training together (1 without a group). */
  get worldSize(): number {
    return this.group?.worldSize ?? 1;
  }

  /** True on the process that writes OUT and reports (rank 0, or the only process). */
  get isMain(): boolean {
    return this.group === null || this.group.isMain;
  }

  /**
   * Checks the configuration, prepares OUT, builds data, models, loss, optimiser and
   * schedules, and (with `resume`) restores the checkpoint — every error before any training.
   */
  static async create(opts: Partial<TrainConfig>, hooks: TrainerHooks = {}): Promise<Trainer> {
    const cfg = resolveTrainConfig(opts);
    const log = hooks.log ?? ((m: string) => console.error(m));
    const group = hooks.group && hooks.group.worldSize > 1 ? hooks.group : null;
    const world = group?.worldSize ?? 1;
    const main = group === null || group.isMain;
    if (group) checkSameConfig(group, cfg);
    // OUT belongs to rank 0; its checks' outcome is shared so every rank stops on an error
    await onMainFirst(group, async () => {
      await prepareOut(cfg);
      await removeStaleTemporaries(cfg.out, log);
      if (cfg.resume) {
        // an early check against the sidecar; restoring checks the checkpoint's own copy again
        const saved = await readSidecar(cfg.out);
        if (saved) {
          checkResumable(saved.config, cfg, `${cfg.out}/${SIDECAR}`);
          checkWorldSize(saved.worldSize, world, `${cfg.out}/${SIDECAR}`);
        }
      }
    });
    if (cfg.threads > 0) setNumThreads(cfg.threads);
    manualSeed(cfg.seed);
    const views = cfg.views;
    const G = views.globalCrops!, N = G + views.localCrops!;
    const dense = cfg.method === "densedino";
    const source: TrainSourceOptions = {
      data: cfg.data,
      scenes: cfg.scenes,
      views,
      quiet: cfg.workers > 0 || !main,
    };
    // the data set is opened here first: a missing or empty data set fails before training, and
    // a generated data set is cached before the workers open it (by the first process of each
    // machine, before the others: no duplicated generation, no racing writers)
    const firstOnMachine = group === null || group.localRank === 0;
    const openProbe = async () => {
      const probe = await openTrainDataset({ ...source, quiet: !main });
      const n = probe.length;
      (probe as { [Symbol.dispose]?: () => void })[Symbol.dispose]?.();
      return n;
    };
    let n = firstOnMachine ? await openProbe() : 0;
    group?.barrier();
    if (!firstOnMachine) n = await openProbe();
    const globalBatch = cfg.batchSize * world;
    if (n < globalBatch) {
      throw new ConfigError(
        world === 1
          ? `--batch-size ${cfg.batchSize} is larger than the data set (${n} images) and the last ` +
            `short batch is dropped: no iteration would run`
          : `the global batch (--batch-size ${cfg.batchSize} × ${world} processes = ${globalBatch}) ` +
            `is larger than the data set (${n} images): no iteration would run`,
      );
    }
    const itersPerEpoch = Math.floor(n / globalBatch);
    const loader = new DataLoader<MultiCropItem, MultiCropBatch>({
      source: trainSourceSpec(source),
      batchSize: cfg.batchSize,
      seed: cfg.seed,
      workers: cfg.workers,
      dropLast: true,
      // on CUDA the batch is collated into pinned memory: its copies to the GPU run asynchronously
      collate: cfg.device === "cuda" ? collateMultiCropPinned : collateMultiCrop,
      warn: log,
      shard: group ? { rank: group.rank, world } : undefined,
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
    // every rank starts from rank 0's weights (seeded alike anyway; this makes it certain)
    group?.broadcast(student.parameters(), 0);
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
      linearScaledLr(cfg.lr, globalBatch),
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
      // the official code: the batch centre is all-reduced, then divided by (views · B · world)
      worldSize: world,
      reduce: group ? (sums) => group.allReduce(sums, "sum") : undefined,
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
    if (main) {
      await Deno.writeTextFile(`${cfg.out}/config.json`, JSON.stringify(cfg, null, 2) + "\n");
      // a fresh run starts a fresh log; a resumed one appends, after a line cut off by a crash
      // is dropped (else the next record would be glued to it)
      if (cfg.resume) await dropPartialLine(`${cfg.out}/log.jsonl`);
      else await Deno.remove(`${cfg.out}/log.jsonl`).catch(() => {});
    }
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
      let [loss, cls, ref] = [out.total.item(), out.cls.item(), out.ref.item()];
      let entropy = out.entropy ? out.entropy.item() : NaN;
      if (this.group) {
        // the global batch's means (each rank's loss is its shard's mean); all ranks then make
        // the same finiteness decision below
        const s = fromTypedArray(new Float64Array([loss, cls, ref, entropy]), [4]);
        this.group.allReduce(s, "avg");
        [loss, cls, ref, entropy] = Array.from(s.toTypedArray() as Float64Array);
      }
      if (!Number.isFinite(loss)) {
        throw new TrainError(
          `the loss is ${loss} at epoch ${this.epoch}, iteration ${it} (class ${cls}, reference ${ref}): ` +
            `training stopped; the last good checkpoint in ${cfg.out} is kept. Lower --lr, check the data, ` +
            `or use --precision fp32`,
        );
      }
      zeroGrads(this.#studentParams, true);
      (this.scaler ? this.scaler.scaleLoss(out.total) : out.total).backward();
      if (this.group) {
        // as DDP: the mean gradient over ranks, before unscaling and clipping (an inf on any
        // rank reaches every rank, so all make the same fp16 skip decision)
        const c0 = performance.now();
        this.group.allReduceGrads(this.#studentParams, { average: true });
        this.commSeconds += (performance.now() - c0) / 1e3;
      }
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
        entropy,
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
    const main = this.isMain;
    const group = this.group;
    const world = this.worldSize;
    // other ranks write nothing: their log goes nowhere
    const log = main ? new JsonlLog(`${cfg.out}/log.jsonl`) : { write() {}, close() {} };
    const total = this.totalIterations;
    const progress = new Progress({
      label: cfg.method,
      total,
      unit: "it",
      initial: this.iteration,
      enabled: main && (this.#hooks.progress ?? true),
    });
    this.commSeconds = 0;
    let images = 0, wait = 0;
    let last: StepStats | null = null;
    let collapsedWarned = -1;
    const liveAtStart = liveTensors();
    try {
      while (this.epoch < cfg.epochs && this.iteration < total) {
        const e = this.epoch;
        const sums = { loss: 0, cls: 0, ref: 0, n: 0 };
        const epochStart = performance.now();
        const batches = this.loader.epoch(e, { start: this.position });
        let exhausted = false; // some rank's shard ran out: the epoch ends on every rank
        try {
          while (true) {
            const next = await batches.next();
            // step agreement: a rank whose shard ran out (skipped examples) ends the epoch for all,
            // instead of leaving the others waiting in the next collective
            if (group && !agreeHaveBatch(group, !next.done)) {
              if (!next.done) next.value.free();
              exhausted = true;
              break;
            }
            if (next.done) break;
            const batch = next.value;
            try {
              const stats = this.step(batch);
              images += batch.indices.length * world;
              this.iteration++;
              this.position = this.loader.stats.nextPosition;
              last = stats;
              sums.loss += stats.loss;
              sums.cls += stats.cls;
              sums.ref += stats.ref;
              sums.n++;
              this.#hooks.onStep?.(this.iteration, stats);
              if (main && isCollapsed(stats.entropy, cfg.outDim) && collapsedWarned !== e) {
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
        } finally {
          await batches.return(undefined); // frees what the loader prefetched (as for-await does)
        }
        wait += this.loader.stats.waitSeconds;
        // a maxIters stop on the epoch's last batch leaves the loader unfinished, yet no full
        // batch is left (drop_last): the epoch is complete (so the checkpoint says the next epoch)
        const finished = this.loader.stats.complete || exhausted ||
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
    if (main) {
      await this.#plotLoss(lossCurve).catch((e) =>
        this.#log(`warning: could not draw ${lossCurve}: ${(e as Error).message}`)
      );
    }
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

  /**
   * Writes the checkpoint, its sidecar and the teacher backbone (each atomically). Distributed:
   * every rank must call it (the ranks' data positions are gathered); rank 0 writes, then all
   * wait for it.
   */
  async saveCheckpoint(): Promise<void> {
    let positions = [this.position];
    if (this.group) {
      using mine = fromTypedArray(new Float64Array([this.position]), [1]);
      using all = this.group.allGather(mine);
      positions = Array.from(all.toTypedArray() as Float64Array);
      if (!this.group.isMain) {
        this.group.barrier();
        return;
      }
    }
    try {
      await this.#writeCheckpoint(positions);
    } finally {
      // the others wait for the write: none runs ahead of the checkpoint a resume starts from
      this.group?.barrier();
    }
  }

  async #writeCheckpoint(positions: number[]): Promise<void> {
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
      worldSize: this.worldSize,
      positions,
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
    const read = async () =>
      await loadSafetensors(path).catch((e) => {
        throw new TrainError(`--resume: cannot read ${path}: ${(e as Error).message}`);
      });
    let content;
    if (this.group) {
      // rank 0 reads OUT and sends the file: the other ranks need no access to it
      const group = this.group;
      let bytes: Uint8Array | undefined;
      await onMainFirst(group, async () => {
        bytes = await Deno.readFile(path).catch((e) => {
          throw new TrainError(`--resume: cannot read ${path}: ${(e as Error).message}`);
        });
      });
      const got = group.broadcastBytes(bytes, 0);
      content = deserializeSafetensors(got, {}, path);
    } else {
      content = await read();
    }
    const { tensors, metadata } = content;
    try {
      const meta = JSON.parse(metadata.densedino ?? "null");
      if (!meta || meta.format !== "densedino-checkpoint") {
        throw new TrainError(
          `--resume: ${path} is not a densedino training checkpoint (no sidecar metadata)`,
        );
      }
      checkResumable(meta.config, cfg, path);
      checkWorldSize(meta.worldSize, this.worldSize, path);
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
      // each rank continues its own shard where it stopped
      this.position = this.group ? meta.positions[this.group.rank] : meta.position;
      if (meta.threads && cfg.threads === 0 && meta.threads !== getNumThreads()) {
        this.#log(
          `note: the checkpoint was written with ${meta.threads} intra-op threads, this run has ` +
            `${getNumThreads()}; results may differ in the last bits (--threads ${meta.threads} matches)`,
        );
      }
      if (this.isMain) {
        this.#log(`resumed from ${path}: epoch ${this.epoch}, iteration ${this.iteration}`);
      }
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

/** A resume needs the world size the checkpoint was written with (1 for older checkpoints). */
function checkWorldSize(saved: number | undefined, now: number, where: string): void {
  const s = saved ?? 1;
  if (s !== now) {
    throw new ConfigError(
      `cannot resume from ${where}: it was written by ${s} process${
        s === 1 ? "" : "es"
      } and this ` +
        `run has ${now}; resume with the same number of processes (scripts/launch.ts --nproc / ` +
        `--nnodes) so that the data shards and the global batch stay the same`,
    );
  }
}

/**
 * Runs `fn` on rank 0 only (all of it without a group), then tells every rank whether it
 * failed: a failure is rethrown on rank 0 and reported on the others as the same kind of error
 * naming rank 0, so every rank stops instead of waiting in the next collective.
 */
async function onMainFirst(group: ProcessGroup | null, fn: () => Promise<void>): Promise<void> {
  if (group === null) return await fn();
  let failure: unknown = null;
  if (group.isMain) {
    try {
      await fn();
    } catch (e) {
      failure = e;
    }
  }
  const shared = group.broadcastJson<{ kind: string; message: string } | null>(
    failure === null ? null : {
      kind: failure instanceof ConfigError ? "config" : "train",
      message: (failure as Error).message ?? String(failure),
    },
  );
  if (group.isMain && failure !== null) throw failure;
  if (shared !== null) {
    const msg = `rank 0 stopped: ${shared.message}`;
    throw shared.kind === "config" ? new ConfigError(msg) : new TrainError(msg);
  }
}

/** Options that may differ between ranks (they change no result). */
const PER_RANK_OPTIONS = new Set(["out", "workers", "threads"]);

/** Every rank must train with rank 0's configuration (but for {@link PER_RANK_OPTIONS}). */
function checkSameConfig(group: ProcessGroup, cfg: TrainConfig): void {
  const strip = (c: TrainConfig) =>
    Object.fromEntries(Object.entries(c).filter(([k]) => !PER_RANK_OPTIONS.has(k)));
  const mine = strip(cfg);
  const rank0 = group.broadcastJson(group.isMain ? mine : undefined, 0);
  const diffs = Object.keys({ ...rank0, ...mine }).filter((k) =>
    JSON.stringify(rank0[k]) !== JSON.stringify(mine[k])
  ).map((k) =>
    `${k}: rank 0 ${JSON.stringify(rank0[k])}, rank ${group.rank} ${JSON.stringify(mine[k])}`
  );
  // every rank learns whether any rank differs, so all stop together
  using bad = fromTypedArray(new Float64Array([diffs.length > 0 ? 1 : 0]), [1]);
  group.allReduce(bad, "max");
  if (bad.item() > 0) {
    throw new ConfigError(
      diffs.length > 0
        ? `rank ${group.rank} was started with other training options than rank 0: ${
          diffs.join("; ")
        }`
        : "another rank was started with other training options than rank 0 (its output says which)",
    );
  }
}

/** True when every rank has a batch (a MIN all-reduce of one flag). */
function agreeHaveBatch(group: ProcessGroup, have: boolean): boolean {
  using flag = fromTypedArray(new Float64Array([have ? 1 : 0]), [1]);
  group.allReduce(flag, "min");
  return flag.item() > 0;
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
async function readSidecar(
  out: string,
): Promise<{ config: TrainConfig; worldSize?: number } | null> {
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
