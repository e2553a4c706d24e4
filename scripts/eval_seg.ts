/**
 * Linear segmentation probe of a frozen backbone (Leopart's protocol, as the DenseDINO paper
 * uses it, §4.1): frozen patch tokens upsampled to the mask size, a 1×1 convolution trained
 * with SGD and cross-entropy (ignore 255), mIoU over all classes (background included) and
 * pixel accuracy from one confusion matrix over the whole validation set.
 *
 * ```sh
 * deno run -A scripts/eval_seg.ts --weights runs/x --data fashion-scenes --report seg.md
 * deno run -A scripts/eval_seg.ts --arch vit_mini --patch-size 8 --data fashion-scenes  # random init
 * deno run -A scripts/eval_seg.ts --weights teacher_backbone.safetensors \
 *   --data voc:/data/VOCdevkit --cache feats/        # trainaug → val, 448-px input, 100-px masks
 * ```
 *
 * Training features are computed once and reused every epoch, with the crop and flip applied to
 * the cached feature maps and masks (see lib/eval/segmentation.ts); `--no-cache` recomputes the
 * backbone on augmented images every epoch instead (Leopart-exact, one backbone pass per image
 * and epoch). `--cache DIR` also keeps the features on disk for later runs.
 *
 * Progress on stderr (a line per epoch: loss, class-prior loss, lr, time); the last line on
 * stdout is JSON: `{"miou": …, "pixel_acc": …, "per_class": [{"class", "iou"}], "train_loss": …,
 * "prior_loss": …, "fitted": true|false, "seconds": …, …}` (mIoU, accuracy and IoUs in %, null
 * for a class absent from both targets and predictions; losses in nats). Exit code 2 on bad
 * flags or input (a VOC folder missing a split, labels out of range, a cache of another model:
 * the message names the file), 1 on other failures.
 *
 * @module
 */
import { resolve } from "node:path";
import {
  type Dataset,
  DatasetError,
  type Device,
  FASHION_SCENES_MASK_CLASSES,
  FashionScenes,
  getNumThreads,
  ImageError,
  PascalVOC,
  setNumThreads,
  VOC_CLASSES,
  writeFileAtomic,
} from "../mod.ts";
import { EvalError } from "../lib/eval/backbone.ts";
import {
  FASHION_SCENES_PROBE,
  LEOPART_PROBE,
  linearSegProbe,
  probeReportMarkdown,
  type SegProbeResult,
} from "../lib/eval/segmentation.ts";
import {
  type BackboneFlags,
  checkDevice,
  checkDeviceAvailable,
  checkOutputDir,
  checkOutputFile,
  COMMON_FLAGS,
  type FlagTable,
  loadBackboneFromFlags,
  logger,
  nonNegativeInt,
  number,
  positiveInt,
  printHelp,
  RANDOM_BACKBONE,
  readBackboneFlags,
  readFlags,
  runMain,
  UsageError,
} from "./_cli.ts";

const NAME = "eval_seg";

const F = FASHION_SCENES_PROBE;
const L = LEOPART_PROBE;

const FLAGS = {
  "weights": {
    arg: "PATH",
    type: "string",
    help: "a training run directory (its teacher_backbone.safetensors and config.json), a bare " +
      "ViT file, or a training checkpoint.safetensors (teacher.backbone.* keys, or " +
      "student.backbone.* with --which student); without it the backbone is randomly " +
      "initialised from --seed (the random-init baseline)",
    shown: "none (random init)",
  },
  "which": COMMON_FLAGS.which,
  "arch": COMMON_FLAGS.arch,
  "patch-size": COMMON_FLAGS["patch-size"],
  "img-size": {
    arg: "N",
    type: "string",
    help: "the model's trained image side, i.e. its positional grid × patch (as --arch)",
    shown: "from the weights; --input-size for random init",
  },
  "learnable-ref-token": {
    type: "boolean",
    help: "random init only: the model has a learnable reference token (no effect here)",
    shown: "false",
  },
  "seed": {
    arg: "N",
    type: "string",
    default: "0",
    help: "seed of the random initialisation (without --weights) and of the probe (head " +
      "initialisation, batch order, crops and flips)",
  },
  "data": {
    arg: "SPEC",
    type: "string",
    default: "fashion-scenes",
    help: "fashion-scenes (11 mask classes: background + the 10 Fashion-MNIST classes; train → " +
      "val scenes) or voc:PATH (Pascal VOC 2012, 21 classes; --train-split → --val-split)",
  },
  "train-split": {
    arg: "NAME",
    type: "string",
    default: "trainaug",
    help: "voc: the training split (SegmentationClassAug masks for trainaug)",
  },
  "val-split": { arg: "NAME", type: "string", default: "val", help: "voc: the evaluation split" },
  "scenes": {
    arg: "N",
    type: "string",
    default: "1000",
    help: "fashion-scenes: training scenes (scene i is the same whatever the count)",
  },
  "val-scenes": {
    arg: "N",
    type: "string",
    default: "500",
    help: "fashion-scenes: validation scenes",
  },
  "scene-size": {
    arg: "N",
    type: "string",
    default: "96",
    help: "fashion-scenes: canvas side in pixels",
  },
  "scene-seed": { arg: "N", type: "string", default: "0", help: "fashion-scenes: generation seed" },
  "input-size": {
    arg: "N",
    type: "string",
    help: "side of the square backbone input (images resized bilinearly, masks by the nearest " +
      "rule; a multiple of the patch size)",
    shown: `--scene-size for fashion-scenes, ${L.inputSize} for voc`,
  },
  "mask-size": {
    arg: "N",
    type: "string",
    help: "side of the training masks and logits",
    shown: `half the input size for fashion-scenes, ${L.maskSize} for voc`,
  },
  "epochs": { arg: "N", type: "string", default: String(L.epochs), help: "training epochs" },
  "lr": {
    arg: "X",
    type: "string",
    help: "SGD learning rate",
    shown: `${F.lr} for fashion-scenes (so that the probe fits on ~1000 scenes), ${L.lr} for voc`,
  },
  "momentum": { arg: "X", type: "string", default: String(L.momentum), help: "SGD momentum" },
  "weight-decay": {
    arg: "X",
    type: "string",
    default: String(L.weightDecay),
    help: "SGD weight decay (weight and bias)",
  },
  "milestone": {
    arg: "N",
    type: "string",
    default: String(L.milestone),
    help: "the lr is multiplied by --gamma every N epochs (0: never)",
  },
  "gamma": { arg: "X", type: "string", default: String(L.gamma), help: "lr factor at a milestone" },
  "batch-size": {
    arg: "N",
    type: "string",
    help: "images per SGD step",
    shown: `${F.batchSize} for fashion-scenes, ${L.batchSize} for voc`,
  },
  "crop-scale": {
    arg: "LO,HI",
    type: "string",
    default: L.scale.join(","),
    help: "RandomResizedCrop area range of the training augmentation",
  },
  "flip": {
    arg: "P",
    type: "string",
    default: String(L.flip),
    help: "probability of a horizontal flip in training",
  },
  "fit-margin": {
    arg: "X",
    type: "string",
    default: String(L.fitMargin),
    help: "the probe counts as fitted when its final training loss ≤ (1 − X) × the class-prior " +
      "loss (the cross-entropy of predicting the training class frequencies everywhere)",
  },
  "cache": {
    arg: "DIR",
    type: "string",
    help: "also keep the frozen features in DIR (safetensors named by a hash of the model " +
      "fingerprint, data and input size) and reuse them when all of these match",
    shown: "none (features kept in memory for the run)",
  },
  "no-cache": {
    type: "boolean",
    help: "recompute the backbone on the augmented images every epoch (Leopart-exact; one " +
      "backbone pass per image and epoch) instead of cropping cached feature maps",
    shown: "false",
  },
  "feature-dtype": {
    arg: "TYPE",
    type: "string",
    default: "float32",
    help: "float32 or float16: how cached training features are stored (float16 halves the " +
      "memory; the head always trains in float32)",
  },
  "extract-batch-size": {
    arg: "N",
    type: "string",
    default: "32",
    help: "images per backbone pass when extracting features",
  },
  "threads": COMMON_FLAGS.threads,
  "device": COMMON_FLAGS.device,
  "limit-train": COMMON_FLAGS["limit-train"],
  "limit-val": COMMON_FLAGS["limit-val"],
  "report": {
    arg: "FILE.md",
    type: "string",
    help: "also write a Markdown summary (mIoU, pixel accuracy, train loss vs the class prior, " +
      "per-class IoU, per-epoch losses)",
    shown: "none",
  },
  "quiet": COMMON_FLAGS.quiet,
  "help": COMMON_FLAGS.help,
} satisfies FlagTable;

const HELP_INTRO = [
  `Usage: deno run -A scripts/${NAME}.ts [--weights PATH] [--data SPEC] [flags]`,
  "",
  "Linear segmentation probe of a frozen ViT (Leopart's protocol): patch tokens upsampled to",
  "the mask size, a 1×1 convolution trained with SGD and cross-entropy (ignoring 255), then",
  "mIoU (all classes, background included) and pixel accuracy over the validation set.",
  "The probe also reports its final training loss next to the class-prior baseline's; when it",
  "does not beat it clearly it is flagged fitted: false (its mIoU then measures nothing).",
  "Progress on stderr; the last stdout line is JSON (mIoU, accuracy, IoUs in %).",
];

interface Config extends BackboneFlags {
  data: "fashion-scenes" | "voc";
  root: string | null;
  trainSplit: string;
  valSplit: string;
  scenes: number;
  valScenes: number;
  sceneSize: number;
  sceneSeed: number;
  inputSize: number;
  maskSize: number;
  epochs: number;
  lr: number;
  momentum: number;
  weightDecay: number;
  milestone: number;
  gamma: number;
  batchSize: number;
  scale: [number, number];
  flip: number;
  fitMargin: number;
  cache: string | null;
  recompute: boolean;
  featureDtype: "float32" | "float16";
  extractBatchSize: number;
  threads: number;
  device: Device;
  limitTrain: number | undefined;
  limitVal: number | undefined;
  report: string | null;
  quiet: boolean;
}

function parseFlags(args: string[]): Config | null {
  const v = readFlags(FLAGS, args);
  if (v === null) return null;

  const bb = readBackboneFlags(v);
  if (bb.weights !== null && bb.learnableRefToken) {
    throw new UsageError("--learnable-ref-token applies to random init only; drop it or --weights");
  }

  const spec = v.get("data");
  let data: Config["data"];
  let root: string | null = null;
  if (spec === "fashion-scenes") data = spec;
  else if (spec.startsWith("voc:") && spec.length > 4) {
    data = "voc";
    root = spec.slice(4);
  } else {
    throw new UsageError(`--data must be fashion-scenes or voc:PATH, got "${spec}"`);
  }
  const fs = data === "fashion-scenes";
  for (const f of ["scenes", "val-scenes", "scene-size", "scene-seed"] as const) {
    if (v.given(f) && !fs) throw new UsageError(`--${f} applies to --data fashion-scenes only`);
  }
  for (const f of ["train-split", "val-split"] as const) {
    if (v.given(f) && fs) throw new UsageError(`--${f} applies to --data voc:PATH only`);
  }
  const sceneSize = positiveInt("scene-size", v.get("scene-size"));
  if (sceneSize < 8 || sceneSize > 1024) {
    throw new UsageError(`--scene-size must be in 8..1024, got ${sceneSize}`);
  }
  const inputSize = v.given("input-size")
    ? positiveInt("input-size", v.get("input-size"))
    : (fs ? sceneSize : L.inputSize);
  const maskSize = v.given("mask-size")
    ? positiveInt("mask-size", v.get("mask-size"))
    : (fs ? Math.max(1, Math.round(inputSize / 2)) : L.maskSize);
  const base = fs ? F : L;
  const scaleText = v.get("crop-scale");
  const scale = scaleText.split(",").map((s) => Number(s.trim()));
  if (
    scale.length !== 2 || scale.some((x) => !Number.isFinite(x)) || !(scale[0] > 0) ||
    !(scale[0] <= scale[1]) || !(scale[1] <= 1)
  ) {
    throw new UsageError(
      `--crop-scale must be "lo,hi" with 0 < lo ≤ hi ≤ 1 (e.g. 0.8,1), got "${scaleText}"`,
    );
  }
  const featureDtype = v.get("feature-dtype");
  if (featureDtype !== "float32" && featureDtype !== "float16") {
    throw new UsageError(`--feature-dtype must be float32 or float16, got "${featureDtype}"`);
  }
  const device = checkDevice(v.get("device"));
  const cache = v.path("cache", "a directory");
  const recompute = v.bool("no-cache");
  if (recompute && cache !== null) {
    throw new UsageError("--cache and --no-cache contradict each other: give one");
  }
  if (recompute && v.given("feature-dtype")) {
    throw new UsageError("--feature-dtype applies to cached features; drop it with --no-cache");
  }
  const report = v.path("report", "a file name");
  const nonNeg = (x: number) => x >= 0;

  return {
    ...bb,
    data,
    root,
    trainSplit: v.get("train-split"),
    valSplit: v.get("val-split"),
    scenes: positiveInt("scenes", v.get("scenes")),
    valScenes: positiveInt("val-scenes", v.get("val-scenes")),
    sceneSize,
    sceneSeed: nonNegativeInt("scene-seed", v.get("scene-seed")),
    inputSize,
    maskSize,
    epochs: positiveInt("epochs", v.get("epochs")),
    lr: v.given("lr") ? number("lr", v.get("lr"), (x) => x > 0, "a positive number") : base.lr,
    momentum: number("momentum", v.get("momentum"), nonNeg, "a non-negative number"),
    weightDecay: number("weight-decay", v.get("weight-decay"), nonNeg, "a non-negative number"),
    milestone: nonNegativeInt("milestone", v.get("milestone")),
    gamma: number("gamma", v.get("gamma"), nonNeg, "a non-negative number"),
    batchSize: v.given("batch-size")
      ? positiveInt("batch-size", v.get("batch-size"))
      : base.batchSize,
    scale: [scale[0], scale[1]],
    flip: number("flip", v.get("flip"), (x) => x >= 0 && x <= 1, "a probability in [0, 1]"),
    fitMargin: number("fit-margin", v.get("fit-margin"), (x) => x >= 0 && x < 1, "in [0, 1)"),
    cache,
    recompute,
    featureDtype,
    extractBatchSize: positiveInt("extract-batch-size", v.get("extract-batch-size")),
    threads: nonNegativeInt("threads", v.get("threads")),
    device,
    limitTrain: v.given("limit-train")
      ? positiveInt("limit-train", v.get("limit-train"))
      : undefined,
    limitVal: v.given("limit-val") ? positiveInt("limit-val", v.get("limit-val")) : undefined,
    report,
    quiet: v.bool("quiet"),
  };
}

const log = logger(NAME);

async function checkPaths(cfg: Config): Promise<void> {
  if (cfg.report !== null) await checkOutputFile("report", cfg.report);
  if (cfg.cache !== null) await checkOutputDir("cache", cfg.cache);
  checkDeviceAvailable(cfg.device);
}

interface Data {
  train: Dataset;
  val: Dataset;
  ids: { train: string; val: string };
  classes: readonly string[];
  describe: string;
}

async function openData(cfg: Config): Promise<Data> {
  const lim = (n: number | undefined) => `first=${n ?? "all"}`;
  if (cfg.data === "fashion-scenes") {
    const common = { seed: cfg.sceneSeed, size: cfg.sceneSize, quiet: cfg.quiet };
    const train = await FashionScenes.open({ ...common, split: "train", count: cfg.scenes });
    const val = await FashionScenes.open({ ...common, split: "val", count: cfg.valScenes });
    return {
      train,
      val,
      ids: { train: `${train.id}:${lim(cfg.limitTrain)}`, val: `${val.id}:${lim(cfg.limitVal)}` },
      classes: FASHION_SCENES_MASK_CLASSES,
      describe:
        `fashion-scenes (${cfg.sceneSize} px, seed ${cfg.sceneSeed}; ${cfg.scenes} train, ` +
        `${cfg.valScenes} val scenes)`,
    };
  }
  const root = cfg.root!;
  const train = await PascalVOC.open(root, { split: cfg.trainSplit });
  const val = await PascalVOC.open(root, { split: cfg.valSplit });
  const id = (v: PascalVOC, limit: number | undefined) =>
    `voc:${resolve(v.splitFile)}:n=${v.length}:masks=${resolve(v.maskDir ?? "")}:${lim(limit)}`;
  return {
    train,
    val,
    ids: { train: id(train, cfg.limitTrain), val: id(val, cfg.limitVal) },
    classes: VOC_CLASSES,
    describe: `Pascal VOC ${train.root} (${cfg.trainSplit} → ${cfg.valSplit})`,
  };
}

function pct(v: number | null): number | null {
  return v === null || !Number.isFinite(v) ? null : Number((100 * v).toFixed(4));
}

function round(v: number, digits = 6): number | null {
  return Number.isFinite(v) ? Number(v.toFixed(digits)) : null;
}

async function main(args: string[]): Promise<number> {
  const cfg = parseFlags(args);
  if (cfg === null) return printHelp(FLAGS, HELP_INTRO);
  await checkPaths(cfg);
  const t0 = performance.now();
  if (cfg.threads > 0) setNumThreads(cfg.threads);

  const random = cfg.weights === null;
  // random init: the model's image size defaults to the input size, which must fit the patch
  const patch = cfg.patchSize ?? RANDOM_BACKBONE.patchSize;
  if (random && cfg.imgSize === null && cfg.inputSize % patch !== 0) {
    throw new UsageError(
      `--input-size ${cfg.inputSize} is not a multiple of the patch size ${patch}`,
    );
  }
  const backbone = await loadBackboneFromFlags(cfg, cfg.inputSize, cfg.device);
  try {
    log(
      `backbone: ${backbone.source} (${backbone.arch}/${backbone.patchSize}, trained at ` +
        `${backbone.imgSize} px); ${getNumThreads()} intra-op thread(s), ${cfg.device}`,
    );
    if (cfg.inputSize % backbone.patchSize !== 0) {
      throw new UsageError(
        `--input-size ${cfg.inputSize} is not a multiple of the patch size ${backbone.patchSize}`,
      );
    }
    const d = await openData(cfg);
    const mode = cfg.recompute ? "recompute" : "cached";
    log(
      `data: ${d.describe}; input ${cfg.inputSize} px, masks ${cfg.maskSize} px; ${cfg.epochs} ` +
        `epochs, batch ${cfg.batchSize}, lr ${cfg.lr}; training features ${mode}` +
        (cfg.cache ? ` (disk cache ${cfg.cache})` : ""),
    );
    const r: SegProbeResult = await linearSegProbe(backbone, d.train, d.val, {
      numClasses: d.classes.length,
      classes: d.classes,
      defaults: cfg.data === "fashion-scenes" ? F : L,
      inputSize: cfg.inputSize,
      maskSize: cfg.maskSize,
      epochs: cfg.epochs,
      lr: cfg.lr,
      momentum: cfg.momentum,
      weightDecay: cfg.weightDecay,
      milestone: cfg.milestone,
      gamma: cfg.gamma,
      batchSize: cfg.batchSize,
      scale: cfg.scale,
      flip: cfg.flip,
      fitMargin: cfg.fitMargin,
      seed: cfg.seed,
      device: cfg.device,
      features: mode,
      cacheDir: cfg.cache,
      datasetIds: d.ids,
      limitTrain: cfg.limitTrain,
      limitVal: cfg.limitVal,
      featureDtype: cfg.featureDtype,
      extractBatchSize: cfg.extractBatchSize,
      progress: !cfg.quiet,
      log,
    });
    const seconds = (performance.now() - t0) / 1000;
    log(
      `mIoU ${pct(r.miou)}%, pixel accuracy ${pct(r.pixelAccuracy)}%; final train loss ` +
        `${r.trainLoss.toFixed(4)} vs class prior ${r.priorLoss.toFixed(4)} (` +
        `${r.fitted ? "fitted" : "NOT fitted"}); ${seconds.toFixed(1)} s`,
    );
    const epochSeconds = r.history.reduce((a, e) => a + e.seconds, 0) / r.history.length;
    if (cfg.report !== null) {
      const md = probeReportMarkdown(r, {
        backbone: `${backbone.source} (${backbone.arch}/${backbone.patchSize}, trained at ` +
          `${backbone.imgSize} px)`,
        "weights fingerprint": `\`${backbone.fingerprint}\``,
        data: d.describe,
        command: `\`deno run -A scripts/${NAME}.ts ${args.join(" ")}\``,
        date: new Date().toISOString(),
      });
      await writeFileAtomic(cfg.report, md);
      log(`wrote ${cfg.report}`);
    }
    console.log(JSON.stringify({
      miou: pct(r.miou),
      pixel_acc: pct(r.pixelAccuracy),
      per_class: r.perClass.map((c) => ({ class: c.class, iou: pct(c.iou) })),
      train_loss: round(r.trainLoss),
      prior_loss: round(r.priorLoss),
      fitted: r.fitted,
      seconds: Number(seconds.toFixed(3)),
      mode,
      train: r.counts.train,
      val: r.counts.val,
      epochs: r.history.length,
      epoch_seconds: Number(epochSeconds.toFixed(4)),
      feature_seconds: Number(r.seconds.features.toFixed(3)),
      source: backbone.source,
      fingerprint: backbone.fingerprint,
      data: cfg.data === "voc" ? `voc:${cfg.root}` : cfg.data,
      input_size: cfg.inputSize,
      mask_size: cfg.maskSize,
      warnings: r.warnings,
    }));
    return 0;
  } finally {
    backbone.free();
  }
}

if (import.meta.main) {
  await runMain(
    NAME,
    main,
    (e) =>
      e instanceof EvalError || e instanceof DatasetError || e instanceof ImageError ||
      (e instanceof RangeError && /^fashion-scenes:/.test(e.message)),
  );
}
