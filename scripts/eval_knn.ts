/**
 * Weighted k-NN evaluation of a frozen backbone (DINO's `eval_knn` protocol, paper §4.1):
 * L2-normalised class tokens of the teacher (by default), cosine similarity to the whole
 * training set, votes `exp(sim / T)` of the k nearest, top-1 / top-5 for every k.
 *
 * ```sh
 * deno run -A scripts/eval_knn.ts --weights runs/x --data fashion-scenes
 * deno run -A scripts/eval_knn.ts --arch vit_tiny --patch-size 16 --data fashion-scenes  # random init
 * deno run -A scripts/eval_knn.ts --weights teacher_backbone.safetensors \
 *   --data imagefolder:/data/imagenet --cache feats/ --report knn.md
 * ```
 *
 * Preprocessing: ImageFolder data follow the ImageNet protocol (resize 256 bicubic, centre crop
 * 224); fashion-scenes and Fashion-MNIST images are resized whole to the model's trained image
 * size (its `imgSize`, e.g. 64 for the demo preset), the resolution it was trained at. A
 * random-init baseline should be given the trained model's `--arch`, `--patch-size` and
 * `--img-size` so that both see the same inputs.
 *
 * Progress on stderr; the last line on stdout is JSON:
 * `{"top1": …, "top5": …, "k": 20, "results": [{"k", "top1", "top5"}], "train": N, "val": M,
 * "source": …, "fingerprint": …, "data": …, "resize": …, "crop": …, "temperature": …,
 * "seconds": …}` (accuracies in %; `top1` / `top5` are those of k = 20, or of the first k when
 * 20 is not in the list). Exit code 2 on bad flags or input, 1 on other failures.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { resolve } from "node:path";
import {
  type Dataset,
  DatasetError,
  type Device,
  FASHION_MNIST_DIR,
  FashionMNIST,
  FashionScenes,
  getNumThreads,
  ImageFolder,
  setNumThreads,
  type Tensor,
  writeFileAtomic,
} from "../mod.ts";
import { EvalError } from "../lib/eval/backbone.ts";
import { cachedClassFeatures, evalTransform, evalTransformId } from "../lib/eval/features.ts";
import {
  DEFAULT_KNN_CHUNK,
  DEFAULT_KNN_KS,
  DEFAULT_KNN_TEMPERATURE,
  knnClassify,
  type KnnResult,
} from "../lib/eval/knn.ts";
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
  statOrNull,
  UsageError,
} from "./_cli.ts";

const NAME = "eval_knn";

const FLAGS = {
  "weights": {
    arg: "PATH",
    type: "string",
    help: "a training run directory (its teacher_backbone.safetensors and config.json), a bare " +
      "ViT file (teacher_backbone.safetensors), or a training checkpoint.safetensors " +
      "(teacher.backbone.* keys, or student.backbone.* with --which student); without it the " +
      "backbone is randomly initialised from --seed (the random-init baseline)",
    shown: "none (random init)",
  },
  "which": COMMON_FLAGS.which,
  "arch": COMMON_FLAGS.arch,
  "patch-size": COMMON_FLAGS["patch-size"],
  "img-size": {
    arg: "N",
    type: "string",
    help: "the model's trained image side, i.e. its positional grid × patch (as --arch)",
    shown: "from the weights; for random init --crop, else 224 for imagefolder, " +
      "--scene-size (96) for fashion-scenes and 96 for fashion-mnist",
  },
  "learnable-ref-token": {
    type: "boolean",
    help: "random init only: the model has a learnable reference token (no effect on k-NN)",
    shown: "false",
  },
  "seed": {
    arg: "N",
    type: "string",
    default: "0",
    help: "seed of the random initialisation when no --weights are given (a training run with " +
      "this seed starts from the same backbone)",
  },
  "data": {
    arg: "SPEC",
    type: "string",
    default: "fashion-scenes",
    help: "fashion-scenes (image labels: the largest item's class; train / val scenes), " +
      "fashion-mnist (train / test items from " + FASHION_MNIST_DIR + "), or " +
      "imagefolder:PATH (PATH/train and PATH/val, one folder per class)",
  },
  "scenes": {
    arg: "N",
    type: "string",
    default: "10000",
    help: "fashion-scenes: training scenes (the memory bank); the same set a training run " +
      "with --scenes N uses",
  },
  "val-scenes": {
    arg: "N",
    type: "string",
    default: "2000",
    help: "fashion-scenes: validation scenes (the queries)",
  },
  "scene-size": {
    arg: "N",
    type: "string",
    default: "96",
    help: "fashion-scenes: canvas side in pixels",
  },
  "scene-seed": {
    arg: "N",
    type: "string",
    default: "0",
    help: "fashion-scenes: generation seed",
  },
  "resize": {
    arg: "N",
    type: "string",
    help: "shorter side after the bicubic (antialiased) resize, before the centre crop",
    shown: "256 for imagefolder (round(crop · 256 / 224) with --crop); --crop otherwise",
  },
  "crop": {
    arg: "N",
    type: "string",
    help: "centre-crop side = the model's input (a multiple of the patch size). The defaults " +
      "feed fashion-scenes and Fashion-MNIST at the model's trained image size (the whole " +
      "image resized bicubically, nothing cropped: the resolution the model was trained at, as " +
      "DINO evaluates ImageNet at its 224-px training size)",
    shown: "224 for imagefolder; the model's --img-size for fashion-scenes and fashion-mnist",
  },
  "k": {
    arg: "LIST",
    type: "string",
    default: DEFAULT_KNN_KS.join(","),
    help: "comma-separated numbers of neighbours (each clamped to the training set size)",
  },
  "temperature": {
    arg: "T",
    type: "string",
    default: String(DEFAULT_KNN_TEMPERATURE),
    help: "vote temperature: a neighbour at cosine similarity s votes exp(s / T)",
  },
  "chunk": {
    arg: "N",
    type: "string",
    default: String(DEFAULT_KNN_CHUNK),
    help: "queries compared with the memory bank at a time (memory only; same results)",
  },
  "batch-size": { arg: "N", type: "string", default: "64", help: "images per forward pass" },
  "threads": COMMON_FLAGS.threads,
  "limit-train": COMMON_FLAGS["limit-train"],
  "limit-val": COMMON_FLAGS["limit-val"],
  "cache": {
    arg: "DIR",
    type: "string",
    help: "cache the features in DIR (safetensors named by a hash of model fingerprint, data " +
      "and preprocessing) and reuse them when all of these match",
    shown: "none",
  },
  "report": {
    arg: "FILE.md",
    type: "string",
    help: "also write a Markdown summary (settings and a k / top-1 / top-5 table)",
    shown: "none",
  },
  "device": COMMON_FLAGS.device,
  "quiet": COMMON_FLAGS.quiet,
  "help": COMMON_FLAGS.help,
} satisfies FlagTable;

const HELP_INTRO = [
  `Usage: deno run -A scripts/${NAME}.ts [--weights PATH] [--data SPEC] [flags]`,
  "",
  "Weighted k-NN classification with the frozen class token (DINO's protocol): features",
  "L2-normalised, cosine similarity to every training example, the k nearest vote",
  "exp(similarity / T); top-1 and top-5 accuracy (%) for every k.",
  "Progress on stderr; the last stdout line is JSON with the accuracies.",
];

type DataKind = "fashion-scenes" | "fashion-mnist" | "imagefolder";

interface Config extends BackboneFlags {
  data: DataKind;
  root: string | null;
  scenes: number;
  valScenes: number;
  sceneSize: number;
  sceneSeed: number;
  resize: number | null;
  crop: number | null;
  ks: number[];
  temperature: number;
  chunk: number;
  batchSize: number;
  threads: number;
  limitTrain: number | undefined;
  limitVal: number | undefined;
  cache: string | null;
  report: string | null;
  device: Device;
  quiet: boolean;
}

function parseFlags(args: string[]): Config | null {
  const v = readFlags(FLAGS, args);
  if (v === null) return null;

  const bb = readBackboneFlags(v);
  if (bb.weights !== null && (v.given("seed") || bb.learnableRefToken)) {
    throw new UsageError(
      `--${v.given("seed") ? "seed" : "learnable-ref-token"} applies to random init only; ` +
        `drop it or drop --weights`,
    );
  }

  const spec = v.get("data");
  let data: DataKind;
  let root: string | null = null;
  if (spec === "fashion-scenes" || spec === "fashion-mnist") data = spec;
  else if (spec.startsWith("imagefolder:") && spec.length > "imagefolder:".length) {
    data = "imagefolder";
    root = spec.slice("imagefolder:".length);
  } else {
    throw new UsageError(
      `--data must be fashion-scenes, fashion-mnist or imagefolder:PATH, got "${spec}"`,
    );
  }
  for (const f of ["scenes", "val-scenes", "scene-size", "scene-seed"] as const) {
    if (v.given(f) && data !== "fashion-scenes") {
      throw new UsageError(`--${f} applies to --data fashion-scenes only`);
    }
  }
  const sceneSize = positiveInt("scene-size", v.get("scene-size"));
  if (sceneSize < 8 || sceneSize > 1024) {
    throw new UsageError(`--scene-size must be in 8..1024, got ${sceneSize}`);
  }
  const crop = v.given("crop") ? positiveInt("crop", v.get("crop")) : null;
  const resize = v.given("resize") ? positiveInt("resize", v.get("resize")) : null;
  if (crop !== null && resize !== null && resize < crop) {
    throw new UsageError(`--resize ${resize} is smaller than --crop ${crop}`);
  }

  const kText = v.get("k");
  const ks = kText.split(",").map((s) => s.trim());
  if (ks.length === 0 || ks.some((s) => !/^\d+$/.test(s) || Number(s) < 1)) {
    throw new UsageError(
      `--k must be a comma-separated list of positive integers (e.g. 10,20,100,200), got "${kText}"`,
    );
  }
  const temperature = number(
    "temperature",
    v.get("temperature"),
    (t) => t > 0,
    "a positive number",
  );
  const device = checkDevice(v.get("device"));
  const cache = v.path("cache", "a directory");
  const report = v.path("report", "a file name");

  return {
    ...bb,
    data,
    root,
    scenes: positiveInt("scenes", v.get("scenes")),
    valScenes: positiveInt("val-scenes", v.get("val-scenes")),
    sceneSize,
    sceneSeed: nonNegativeInt("scene-seed", v.get("scene-seed")),
    resize,
    crop,
    ks: ks.map(Number),
    temperature,
    chunk: positiveInt("chunk", v.get("chunk")),
    batchSize: positiveInt("batch-size", v.get("batch-size")),
    threads: nonNegativeInt("threads", v.get("threads")),
    limitTrain: v.given("limit-train")
      ? positiveInt("limit-train", v.get("limit-train"))
      : undefined,
    limitVal: v.given("limit-val") ? positiveInt("limit-val", v.get("limit-val")) : undefined,
    cache,
    report,
    device,
    quiet: v.bool("quiet"),
  };
}

const log = logger(NAME);

async function checkPaths(cfg: Config): Promise<void> {
  if (cfg.report !== null) await checkOutputFile("report", cfg.report);
  if (cfg.cache !== null) await checkOutputDir("cache", cfg.cache);
  if (cfg.root !== null) {
    for (const split of ["train", "val"]) {
      const p = `${cfg.root}/${split}`;
      const st = await statOrNull(p);
      if (st === null || !st.isDirectory) {
        throw new UsageError(
          `--data imagefolder:${cfg.root}: ${p} is not a directory (expected ${cfg.root}/train ` +
            `and ${cfg.root}/val, each with one folder per class)`,
        );
      }
    }
  }
  checkDeviceAvailable(cfg.device);
}

interface Split {
  ds: Dataset;
  /** identity of the data for the feature cache (without the limit) */
  id: string;
  limit: number | undefined;
}

function namesHash(ds: Dataset): string {
  const h = createHash("sha256");
  for (let i = 0; i < ds.length; i++) h.update(`${ds.nameOf(i)}\n`);
  return h.digest("hex").slice(0, 16);
}

async function openData(cfg: Config, modelImgSize: number): Promise<{
  train: Split;
  val: Split;
  resize: number;
  crop: number;
  describe: string;
}> {
  let train: Dataset, val: Dataset, trainId: string, valId: string, describe: string;
  let crop: number, resize: number;
  if (cfg.data === "fashion-scenes") {
    const common = { seed: cfg.sceneSeed, size: cfg.sceneSize, quiet: cfg.quiet };
    const scenesTrain = await FashionScenes.open({ ...common, split: "train", count: cfg.scenes });
    const scenesVal = await FashionScenes.open({ ...common, split: "val", count: cfg.valScenes });
    [train, val, trainId, valId] = [scenesTrain, scenesVal, scenesTrain.id, scenesVal.id];
    crop = cfg.crop ?? modelImgSize;
    resize = cfg.resize ?? crop;
    describe = `fashion-scenes (${cfg.sceneSize} px, seed ${cfg.sceneSeed})`;
  } else if (cfg.data === "fashion-mnist") {
    train = await FashionMNIST.open({ split: "train" });
    val = await FashionMNIST.open({ split: "test" });
    trainId = `fashion-mnist:train:${FASHION_MNIST_DIR}:n=${train.length}`;
    valId = `fashion-mnist:test:${FASHION_MNIST_DIR}:n=${val.length}`;
    crop = cfg.crop ?? modelImgSize;
    resize = cfg.resize ?? crop;
    describe = "Fashion-MNIST (train → test)";
  } else {
    const root = cfg.root!;
    train = await ImageFolder.open(`${root}/train`);
    val = await ImageFolder.open(`${root}/val`);
    const abs = resolve(root);
    trainId = `imagefolder:${abs}/train:n=${train.length}:names=${namesHash(train)}`;
    valId = `imagefolder:${abs}/val:n=${val.length}:names=${namesHash(val)}`;
    const tc = train.classes.join("\n"), vc = val.classes.join("\n");
    if (tc !== vc) {
      throw new UsageError(
        `--data imagefolder:${root}: train has ${train.classes.length} classes and val ` +
          `${val.classes.length}, or their names differ: both must hold the same class folders`,
      );
    }
    crop = cfg.crop ?? 224;
    resize = cfg.resize ?? (cfg.crop === null ? 256 : Math.round((crop * 256) / 224));
    describe = `ImageFolder ${root} (train → val)`;
  }
  if (resize < crop) {
    throw new UsageError(`--resize ${resize} is smaller than the crop ${crop}`);
  }
  return {
    train: { ds: train, id: trainId, limit: cfg.limitTrain },
    val: { ds: val, id: valId, limit: cfg.limitVal },
    resize,
    crop,
    describe,
  };
}

function fmt(v: number | null): string {
  return v === null ? "–" : v.toFixed(2);
}

function reportMarkdown(r: {
  source: string;
  fingerprint: string;
  describe: string;
  train: number;
  val: number;
  classes: number;
  resize: number;
  crop: number;
  temperature: number;
  results: KnnResult[];
  seconds: number;
  args: string[];
}): string {
  const lines = [
    "# Weighted k-NN evaluation",
    "",
    "| setting | value |",
    "|---|---|",
    `| backbone | ${r.source} |`,
    `| weights fingerprint | \`${r.fingerprint}\` |`,
    `| data | ${r.describe} |`,
    `| memory bank (train) | ${r.train} images |`,
    `| queries (val) | ${r.val} images |`,
    `| classes | ${r.classes} |`,
    `| preprocessing | resize ${r.resize} (bicubic, antialiased), centre crop ${r.crop}, ` +
    `ImageNet normalisation |`,
    `| features | class token after the final norm, L2-normalised |`,
    `| votes | exp(cosine similarity / ${r.temperature}) |`,
    "",
    "| k | top-1 (%) | top-5 (%) |",
    "|---:|---:|---:|",
    ...r.results.map((x) =>
      `| ${x.k}${x.requested ? ` (asked ${x.requested})` : ""} | ${fmt(x.top1)} | ${fmt(x.top5)} |`
    ),
    "",
    `Computed in ${r.seconds.toFixed(1)} s on ${new Date().toISOString()} with ` +
    `\`deno run -A scripts/${NAME}.ts ${r.args.join(" ")}\`.`,
    "",
  ];
  return lines.join("\n");
}

async function main(args: string[]): Promise<number> {
  const cfg = parseFlags(args);
  if (cfg === null) return printHelp(FLAGS, HELP_INTRO);
  await checkPaths(cfg);
  const t0 = performance.now();
  if (cfg.threads > 0) setNumThreads(cfg.threads);

  const random = cfg.weights === null;
  // random init: the model's image size is --img-size, else --crop, else the data's natural size
  const defaultCrop = cfg.crop ?? (cfg.data === "imagefolder" ? 224 : cfg.sceneSize);
  const patch = cfg.patchSize ?? RANDOM_BACKBONE.patchSize;
  if (random && cfg.imgSize === null && defaultCrop % patch !== 0) {
    throw new UsageError(
      `--crop ${defaultCrop} (the model input) is not a multiple of the patch size ${patch}`,
    );
  }
  const backbone = await loadBackboneFromFlags(cfg, defaultCrop, cfg.device);
  const feats: Tensor[] = [];
  try {
    log(
      `backbone: ${backbone.source} (${backbone.arch}/${backbone.patchSize}, trained at ` +
        `${backbone.imgSize} px); ${getNumThreads()} intra-op thread(s), ${cfg.device}`,
    );
    const d = await openData(cfg, backbone.imgSize);
    if (d.crop % backbone.patchSize !== 0) {
      throw new UsageError(
        `--crop ${d.crop} (the model input) is not a multiple of the patch size ` +
          `${backbone.patchSize}`,
      );
    }
    const transform = evalTransform(d.resize, d.crop);
    const transformId = evalTransformId(d.resize, d.crop);
    log(`data: ${d.describe}; resize ${d.resize} → crop ${d.crop}`);
    const pass = async (s: Split, label: string) => {
      const n = Math.min(s.ds.length, s.limit ?? Infinity);
      const r = await cachedClassFeatures(backbone, s.ds, {
        transform,
        transformId,
        batchSize: cfg.batchSize,
        label,
        progress: !cfg.quiet,
        limit: s.limit,
        cacheDir: cfg.cache,
        dataset: `${s.id}:first=${n}`,
        log,
      });
      feats.push(r.features, r.labels);
      return r;
    };
    const tr = await pass(d.train, "train features");
    const va = await pass(d.val, "val features");
    const classes = d.train.ds.classes.length;
    for (const [what, r] of [["train", tr], ["val", va]] as const) {
      const lo = r.labels.amin();
      const min = lo.item();
      lo.free();
      if (min < 0) {
        throw new UsageError(
          `--data ${cfg.data}: the ${what} examples include some without an image label; ` +
            `k-NN needs labelled data`,
        );
      }
    }
    const results = knnClassify(tr, va, {
      ks: cfg.ks,
      temperature: cfg.temperature,
      chunk: cfg.chunk,
      numClasses: classes,
      log,
    });
    const seconds = (performance.now() - t0) / 1000;
    const head = results[cfg.ks.indexOf(20)] ?? results[0];
    for (const r of results) {
      log(
        `k = ${r.k}${r.requested ? ` (asked ${r.requested})` : ""}: top-1 ${fmt(r.top1)}%` +
          (r.top5 === null ? "" : `, top-5 ${fmt(r.top5)}%`),
      );
    }
    const N = tr.features.size(0), M = va.features.size(0);
    if (cfg.report !== null) {
      await writeFileAtomic(
        cfg.report,
        reportMarkdown({
          source: backbone.source,
          fingerprint: backbone.fingerprint,
          describe: d.describe,
          train: N,
          val: M,
          classes,
          resize: d.resize,
          crop: d.crop,
          temperature: cfg.temperature,
          results,
          seconds,
          args,
        }),
      );
      log(`wrote ${cfg.report}`);
    }
    console.log(JSON.stringify({
      top1: head.top1,
      top5: head.top5,
      k: head.k,
      results: results.map((r) => ({ k: r.k, top1: r.top1, top5: r.top5 })),
      train: N,
      val: M,
      classes,
      source: backbone.source,
      fingerprint: backbone.fingerprint,
      data: cfg.data === "imagefolder" ? `imagefolder:${cfg.root}` : cfg.data,
      resize: d.resize,
      crop: d.crop,
      temperature: cfg.temperature,
      seconds: Number(seconds.toFixed(3)),
    }));
    return 0;
  } finally {
    for (const t of feats) t.free();
    backbone.free();
  }
}

if (import.meta.main) {
  await runMain(
    NAME,
    main,
    (e) =>
      e instanceof EvalError || e instanceof DatasetError ||
      (e instanceof RangeError && /^fashion-scenes:|^FashionMNIST:/.test(e.message)),
  );
}
