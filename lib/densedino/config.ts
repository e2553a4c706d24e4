/**
 * The training configuration of DINO / DenseDINO: every option with the paper's and the
 * official code's default, validation of inconsistent combinations (before any work starts),
 * and the check that a resumed run agrees with the run it continues.
 *
 * @module
 */
import { ARCHS, checkMaskMode, DEFAULT_MASK_MODE, type MaskMode } from "../nn/mod.ts";
import type { LossKind } from "./loss.ts";
import { resolveViewOptions, type ViewSamplerOptions } from "./views.ts";

/** DINO (class loss only, no reference tokens) or DenseDINO. */
export type Method = "densedino" | "dino";

/** How attention with reference tokens is computed (see {@link TrainConfig.attention}). */
export type AttentionPath = "auto" | "split" | "explicit";

/** The values of {@link AttentionPath}. */
export const ATTENTION_PATHS: readonly AttentionPath[] = ["auto", "split", "explicit"];

/** Numeric precision of the forward pass. */
export type Precision = "fp32" | "bf16" | "fp16";

/** Every training option. Field names map to `--kebab-case` flags of `scripts/train.ts`. */
export interface TrainConfig {
  /**
   * a named starting point ({@link TRAIN_PRESETS}): `paper` (default: the paper's and the
   * official code's settings) or `demo` (the embedded CPU benchmark); explicit options win
   */
  preset: string;
  /** `densedino` (default) or `dino` (the baseline: no reference tokens, class loss only) */
  method: Method;
  /** which losses train: `both` (DenseDINO default), `cls` or `ref` (paper Table 3) */
  loss: LossKind;
  /** data: `fashion-scenes` (default), `imagefolder:PATH` or `voc:PATH` */
  data: string;
  /** fashion-scenes: number of training scenes (default 10000) */
  scenes: number;
  /** ViT architecture (default vit_small) */
  arch: string;
  /** patch size (default 16) */
  patchSize: number;
  /** side of the trained positional grid in pixels (default: the global view size) */
  imgSize: number;
  /** head output width (default 65536) */
  outDim: number;
  /** the DINO heads' MLP hidden width (default 2048, as the paper) */
  headHiddenDim: number;
  /** the DINO heads' bottleneck width before the last layer (default 256, as the paper) */
  headBottleneckDim: number;
  /** freeze the last head layer's gain at 1 (default true) */
  normLastLayer: boolean;
  /** one head for class and reference tokens (default false: separate, as the official code) */
  sharedRefHead: boolean;
  /** a learnable reference content token instead of zeros (default false) */
  learnableRefToken: boolean;
  /** attention mask mode for the reference tokens (default all2pos_pos2cls_eye) */
  maskMode: MaskMode;
  /**
   * how attention with reference tokens is computed (default `auto`): `split` runs the class and
   * patch tokens through plain (on libtorch ≥ 2.0 fused) attention and the reference queries
   * through a small attention of their own; `explicit` runs all tokens under the full additive
   * mask, as the official code; `auto` picks `split` on the CPU where libtorch has fused attention
   * and `explicit` elsewhere (on CUDA the masked fused kernel measured faster). Both
   * are exact (`fastPath` of the ViT forward options).
   */
  attention: AttentionPath;
  /** the view sampler: crops, sizes, scales, reference points (DESIGN.md §4 defaults) */
  views: ViewSamplerOptions;
  /** class loss over every student view (default: true for dino, false for densedino) */
  allCropsCls: boolean;
  /** reference loss over every student view (default true) */
  allCropsRef: boolean;
  /** loss weight: alpha·L_cls + (1−alpha)·L_ref (default 0.5) */
  alpha: number;
  /** training epochs (default 100) */
  epochs: number;
  /** images per batch (default 64) */
  batchSize: number;
  /** base learning rate before linear scaling by batch/256 (default 0.0005) */
  lr: number;
  /** final learning rate of the cosine schedule (default 1e-6) */
  minLr: number;
  /** linear lr warm-up in epochs (default 10) */
  warmupEpochs: number;
  /** initial weight decay (default 0.04) */
  weightDecay: number;
  /** final weight decay (default 0.4) */
  weightDecayEnd: number;
  /** initial teacher EMA momentum, cosine to 1 (default 0.996) */
  momentumTeacher: number;
  /** per-parameter gradient norm clip, 0 = off (default 3.0) */
  clipGrad: number;
  /** epochs during which the heads' last layer is frozen (default 1) */
  freezeLastLayer: number;
  /** student stochastic depth (default 0.1) */
  dropPathRate: number;
  /** final teacher temperature (default 0.04) */
  teacherTemp: number;
  /** initial teacher temperature of the warm-up (default 0.04) */
  warmupTeacherTemp: number;
  /** teacher temperature warm-up in epochs (default 0) */
  warmupTeacherTempEpochs: number;
  /** student temperature (default 0.1) */
  studentTemp: number;
  /** centre momentum (default 0.9) */
  centerMomentum: number;
  /** seed of initialisation, data order and augmentations (default 0) */
  seed: number;
  /** libtorch intra-op threads, 0 = library default (default 0) */
  threads: number;
  /** `cpu` or `cuda` (default cpu) */
  device: "cpu" | "cuda";
  /** `fp32`; on CUDA `bf16` (autocast, default there) or `fp16` (autocast + loss scaling) */
  precision: Precision;
  /** output directory (default runs/train) */
  out: string;
  /** continue from OUT/checkpoint.safetensors */
  resume: boolean;
  /** stop after this many iterations in total, 0 = run every epoch (for smoke runs) */
  maxIters: number;
  /** also checkpoint every this many iterations, 0 = at epoch ends only (default 0) */
  saveEvery: number;
  /** write a log record every this many iterations (default 10) */
  logEvery: number;
  /** data-loading workers (Deno workers), 0 = in the main thread (default 1) */
  workers: number;
}

/** The defaults (DESIGN.md §4, the paper and the official code). */
export const DEFAULT_TRAIN_CONFIG: Readonly<TrainConfig> = Object.freeze({
  preset: "paper",
  method: "densedino",
  loss: "both",
  data: "fashion-scenes",
  scenes: 10000,
  arch: "vit_small",
  patchSize: 16,
  imgSize: 0,
  outDim: 65536,
  headHiddenDim: 2048,
  headBottleneckDim: 256,
  normLastLayer: true,
  sharedRefHead: false,
  learnableRefToken: false,
  maskMode: DEFAULT_MASK_MODE,
  attention: "auto",
  views: {},
  allCropsCls: false,
  allCropsRef: true,
  alpha: 0.5,
  epochs: 100,
  batchSize: 64,
  lr: 0.0005,
  minLr: 1e-6,
  warmupEpochs: 10,
  weightDecay: 0.04,
  weightDecayEnd: 0.4,
  momentumTeacher: 0.996,
  clipGrad: 3.0,
  freezeLastLayer: 1,
  dropPathRate: 0.1,
  teacherTemp: 0.04,
  warmupTeacherTemp: 0.04,
  warmupTeacherTempEpochs: 0,
  studentTemp: 0.1,
  centerMomentum: 0.9,
  seed: 0,
  threads: 0,
  device: "cpu",
  precision: "fp32",
  out: "runs/train",
  resume: false,
  maxIters: 0,
  saveEvery: 0,
  logEvery: 10,
  workers: 1,
} as TrainConfig);

/** A configuration error: the message names the option (as its flag) and what to do. */
export class ConfigError extends Error {
  /** A configuration error. */
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/**
 * Named starting points for a training configuration (`--preset`). Explicit options override a
 * preset's values; a preset overrides the defaults.
 *
 * - `paper`: the paper's / official code's settings ({@link DEFAULT_TRAIN_CONFIG}): ViT-S/16,
 *   224-px global and 96-px local views, out_dim 65536, batch 64, 100 epochs.
 * - `demo`: the embedded benchmark that `deno task demo` trains on a 2-core CPU in minutes:
 *   fashion-scenes, a 4-block ViT with 8-px patches on 48-px global / 24-px local views, small
 *   heads (out_dim 256, hidden 256, bottleneck 64), batch 32, 4 epochs (1,248 iterations) with
 *   a one-epoch warm-up (docs/RESULTS.md gives the measurements behind each choice).
 */
export const TRAIN_PRESETS: Readonly<Record<string, Readonly<Partial<TrainConfig>>>> = Object
  .freeze({
    paper: Object.freeze({}),
    demo: Object.freeze({
      data: "fashion-scenes",
      scenes: 10000,
      arch: "vit_mini",
      patchSize: 8,
      outDim: 256,
      headHiddenDim: 256,
      headBottleneckDim: 64,
      batchSize: 32,
      epochs: 4,
      lr: 0.004,
      warmupEpochs: 1,
      momentumTeacher: 0.99,
      views: Object.freeze({ globalSize: 48, localCrops: 2, localSize: 24, numRef: 4 }),
    } as Partial<TrainConfig>),
  });

const flag = (k: string) => `--${k.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())}`;

/**
 * Fills defaults and checks the combination. Method-dependent defaults: `dino` trains the class
 * loss over all crops without reference tokens; `densedino` uses both losses, the class loss
 * over the global crops only (the official default) and the reference loss over all crops.
 * `given` lists the options the user set explicitly (to tell a default from a choice).
 */
export function resolveTrainConfig(given: Partial<TrainConfig> = {}): TrainConfig {
  const presetName = given.preset ?? DEFAULT_TRAIN_CONFIG.preset;
  const preset = TRAIN_PRESETS[presetName];
  if (!preset) {
    throw new ConfigError(
      `${flag("preset")} ${presetName} is unknown; expected one of ${
        Object.keys(TRAIN_PRESETS).join(", ")
      }`,
    );
  }
  const opts: Partial<TrainConfig> = {
    ...preset,
    ...given,
    preset: presetName,
    views: { ...(preset.views ?? {}), ...(given.views ?? {}) },
  };
  const method = opts.method ?? "densedino";
  if (method !== "densedino" && method !== "dino") {
    throw new ConfigError(`${flag("method")} must be densedino or dino, got ${method}`);
  }
  const cfg: TrainConfig = {
    ...DEFAULT_TRAIN_CONFIG,
    loss: method === "dino" ? "cls" : "both",
    allCropsCls: method === "dino",
    ...opts,
    method,
    views: { ...(opts.views ?? {}) },
  } as TrainConfig;
  if (method === "dino" && cfg.loss !== "cls") {
    throw new ConfigError(
      `${flag("method")} dino trains the class loss only; ${flag("loss")} ${cfg.loss} needs ` +
        `${flag("method")} densedino`,
    );
  }
  if (!["cls", "ref", "both"].includes(cfg.loss)) {
    throw new ConfigError(`${flag("loss")} must be cls, ref or both, got ${cfg.loss}`);
  }
  if (!(cfg.arch in ARCHS)) {
    throw new ConfigError(
      `${flag("arch")} ${cfg.arch} is unknown; expected one of ${Object.keys(ARCHS).join(", ")}`,
    );
  }
  checkMaskMode(cfg.maskMode, flag("maskMode"));
  if (!ATTENTION_PATHS.includes(cfg.attention)) {
    throw new ConfigError(
      `${flag("attention")} must be ${ATTENTION_PATHS.join(", ")}, got ${cfg.attention}`,
    );
  }
  let views;
  try {
    views = resolveViewOptions(cfg.views);
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  if (views.globalCrops < 1) throw new ConfigError(`${flag("globalCrops")} must be at least 1`);
  if (cfg.loss !== "cls" && views.globalCrops + views.localCrops < 2) {
    throw new ConfigError("the reference loss needs at least two views (global + local crops)");
  }
  const ints: (keyof TrainConfig)[] = [
    "patchSize",
    "outDim",
    "headHiddenDim",
    "headBottleneckDim",
    "epochs",
    "batchSize",
    "scenes",
    "warmupEpochs",
    "freezeLastLayer",
    "warmupTeacherTempEpochs",
    "threads",
    "maxIters",
    "saveEvery",
    "logEvery",
    "workers",
    "seed",
  ];
  for (const k of ints) {
    const v = cfg[k] as number;
    const min = k === "patchSize" || k === "outDim" || k === "headHiddenDim" ||
        k === "headBottleneckDim" || k === "epochs" || k === "batchSize" ||
        k === "logEvery" || k === "scenes"
      ? 1
      : 0;
    if (!Number.isSafeInteger(v) || v < min) {
      throw new ConfigError(`${flag(k)} must be an integer ≥ ${min}, got ${v}`);
    }
  }
  if (cfg.warmupEpochs > cfg.epochs) {
    throw new ConfigError(
      `${flag("warmupEpochs")} ${cfg.warmupEpochs} exceeds ${flag("epochs")} ${cfg.epochs}`,
    );
  }
  if (cfg.warmupTeacherTempEpochs > cfg.epochs) {
    throw new ConfigError(
      `${flag("warmupTeacherTempEpochs")} ${cfg.warmupTeacherTempEpochs} exceeds ${
        flag("epochs")
      } ${cfg.epochs}`,
    );
  }
  for (const k of ["alpha", "dropPathRate", "momentumTeacher", "centerMomentum"] as const) {
    if (!(cfg[k] >= 0 && cfg[k] <= 1)) {
      throw new ConfigError(`${flag(k)} must be in [0, 1], got ${cfg[k]}`);
    }
  }
  for (const k of ["lr", "minLr", "weightDecay", "weightDecayEnd", "clipGrad"] as const) {
    if (!(cfg[k] >= 0) || !Number.isFinite(cfg[k])) {
      throw new ConfigError(`${flag(k)} must be ≥ 0, got ${cfg[k]}`);
    }
  }
  for (const k of ["teacherTemp", "warmupTeacherTemp", "studentTemp"] as const) {
    if (!(cfg[k] > 0)) throw new ConfigError(`${flag(k)} must be > 0, got ${cfg[k]}`);
  }
  if (cfg.device !== "cpu" && cfg.device !== "cuda") {
    throw new ConfigError(`${flag("device")} must be cpu or cuda, got ${cfg.device}`);
  }
  if (!opts.precision) cfg.precision = cfg.device === "cuda" ? "bf16" : "fp32";
  if (!["fp32", "bf16", "fp16"].includes(cfg.precision)) {
    throw new ConfigError(`${flag("precision")} must be fp32, bf16 or fp16, got ${cfg.precision}`);
  }
  if (cfg.precision === "fp16" && cfg.device !== "cuda") {
    throw new ConfigError(
      `${flag("precision")} fp16 needs ${flag("device")} cuda (use fp32 or bf16 on the CPU)`,
    );
  }
  if (!(cfg.data === "fashion-scenes" || /^(imagefolder|voc):.+/.test(cfg.data))) {
    throw new ConfigError(
      `${flag("data")} must be fashion-scenes, imagefolder:PATH or voc:PATH, got ${cfg.data}`,
    );
  }
  if (cfg.imgSize === 0) cfg.imgSize = views.globalSize;
  if (cfg.imgSize % cfg.patchSize !== 0) {
    throw new ConfigError(
      `${flag("imgSize")} ${cfg.imgSize} is not a multiple of ${
        flag("patchSize")
      } ${cfg.patchSize}`,
    );
  }
  for (const s of [views.globalSize, views.localSize]) {
    if (s % cfg.patchSize !== 0) {
      throw new ConfigError(
        `view size ${s} (${flag("globalSize")} / ${flag("localSize")}) is not a multiple of ${
          flag("patchSize")
        } ${cfg.patchSize}`,
      );
    }
  }
  cfg.views = views as ViewSamplerOptions;
  return cfg;
}

/** The options a resumed run must share with the checkpoint's run (anything else may change). */
export const RESUME_INVARIANTS: readonly (keyof TrainConfig)[] = [
  "preset",
  "method",
  "loss",
  "data",
  "scenes",
  "arch",
  "patchSize",
  "imgSize",
  "outDim",
  "headHiddenDim",
  "headBottleneckDim",
  "normLastLayer",
  "sharedRefHead",
  "learnableRefToken",
  "batchSize",
  "seed",
];

/** Throws a ConfigError listing every invariant on which `now` and the checkpoint's `saved` differ. */
export function checkResumable(saved: TrainConfig, now: TrainConfig, where: string): void {
  const diffs: string[] = [];
  for (const k of RESUME_INVARIANTS) {
    if (JSON.stringify(saved[k]) !== JSON.stringify(now[k])) {
      diffs.push(
        `${flag(k)}: checkpoint ${JSON.stringify(saved[k])}, now ${JSON.stringify(now[k])}`,
      );
    }
  }
  const a = JSON.stringify(saved.views), b = JSON.stringify(now.views);
  if (a !== b) diffs.push(`view options: checkpoint ${a}, now ${b}`);
  if (diffs.length) {
    throw new ConfigError(
      `cannot resume from ${where}: the run differs on\n  ${diffs.join("\n  ")}`,
    );
  }
}
