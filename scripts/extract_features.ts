/**
 * Feature extraction with a (DenseDINO / DINO) ViT: class, patch and reference-token features
 * of a batch of images, written as safetensors.
 *
 * ```sh
 * deno run -A scripts/extract_features.ts --arch vit_small --patch-size 16 \
 *   --weights runs/x/teacher_backbone.safetensors --images photos/ --out feats.safetensors
 * deno run -A scripts/extract_features.ts --arch vit_small \
 *   --weights runs/x/checkpoint.safetensors --key-prefix teacher.backbone. \
 *   --input views.safetensors --out feats.safetensors
 * ```
 *
 * Progress goes to stderr; the last line on stdout is JSON:
 * `{"out": path, "cls": [B, D], "patch": [B, N, D], "ref": [B, K, D] | null, "images": B,
 * "skipped": n, "seconds": t}`. Exit code 2 on bad flags or input, 1 on other failures.
 *
 * @module
 */
import {
  ARCHS,
  cat,
  DEFAULT_MASK_MODE,
  type Device,
  freeAll,
  ImageError,
  imagenetNormalize,
  loadImage,
  loadSafetensors,
  MASK_MODES,
  type MaskMode,
  noGrad,
  resizeImage,
  saveSafetensors,
  scope,
  stack,
  type Tensor,
  type VisionTransformer,
} from "../mod.ts";
import { EvalError, loadBackbone } from "../lib/eval/backbone.ts";
import {
  checkArch,
  checkDevice,
  checkDeviceAvailable,
  checkMaskModeFlag,
  checkOutputFile,
  COMMON_FLAGS,
  type FlagTable,
  integer,
  logger,
  positiveInt,
  printHelp,
  readFlags,
  runMain,
  statOrNull,
  UsageError,
  usageOn,
} from "./_cli.ts";

const NAME = "extract_features";

const FLAGS = {
  "arch": {
    arg: "NAME",
    type: "string",
    default: "vit_small",
    help: `architecture: ${Object.keys(ARCHS).join(", ")}`,
  },
  "patch-size": { arg: "N", type: "string", default: "16", help: "patch side in pixels" },
  "img-size": {
    arg: "N",
    type: "string",
    default: "224",
    help: "the model's trained image side: sets the positional grid (img-size / patch-size)²",
  },
  "weights": {
    arg: "FILE",
    type: "string",
    help: "weights FILE.safetensors: bare ViT keys (e.g. teacher_backbone.safetensors), or a " +
      "training checkpoint with --key-prefix teacher.backbone.; without it the model is " +
      "randomly initialised (a baseline) from --seed",
    shown: "none (random init)",
  },
  "key-prefix": {
    arg: "PREFIX",
    type: "string",
    default: "",
    help: 'use only the weights keys with this prefix (e.g. "teacher.backbone.")',
    shown: '""',
  },
  "input": {
    arg: "FILE",
    type: "string",
    help: "X.safetensors with `images` [B,3,H,W] (floating, already normalised; H, W multiples " +
      "of --patch-size) and optional `ref_points` [B,K,2] ((x, y) in [-1, 1], grid_sample " +
      "convention). Exactly one of --input / --images",
    shown: "none",
  },
  "images": {
    arg: "DIR",
    type: "string",
    help: "DIR: every .jpg/.jpeg/.png in it (not recursive), sorted by name, resized (shorter " +
      "side to --resize, bicubic, antialiased), centre-cropped to --size and normalised with " +
      "ImageNet mean/std. Unreadable images are skipped with a warning",
    shown: "none",
  },
  "size": {
    arg: "N",
    type: "string",
    default: "224",
    help: "with --images: crop side (a multiple of --patch-size)",
  },
  "resize": {
    arg: "N",
    type: "string",
    help: "with --images: shorter side before the centre crop (e.g. 256 with --size 224)",
    shown: "--size",
  },
  "mask-mode": {
    arg: "MODE",
    type: "string",
    default: DEFAULT_MASK_MODE,
    help: `attention mask for reference tokens: ${MASK_MODES.join(", ")}`,
  },
  "learnable-ref-token": {
    type: "boolean",
    help: "the model has a learnable reference content token (ref_learn_token)",
    shown: "false",
  },
  "batch-size": { arg: "N", type: "string", default: "32", help: "images per forward pass" },
  "device": COMMON_FLAGS.device,
  "seed": {
    arg: "N",
    type: "string",
    default: "0",
    help: "seed of the random initialisation when no --weights are given",
  },
  "out": {
    arg: "FILE",
    type: "string",
    help: "Y.safetensors to write (atomically): cls [B,D], patch [B,N,D], and ref [B,K,D] " +
      "when points were given; metadata holds the settings and, with --images, `names` " +
      "(a JSON array of the file names in row order)",
    shown: "required",
  },
  "help": COMMON_FLAGS.help,
} satisfies FlagTable;

const HELP_INTRO = [
  `Usage: deno run -A scripts/${NAME}.ts (--input X.safetensors | --images DIR) ` +
  `--out Y.safetensors [flags]`,
  "",
  "Class, patch and reference-token features of a ViT, in eval mode without gradients.",
  "Progress on stderr; the last stdout line is JSON with the output shapes.",
];

const log = logger(NAME);

interface Config {
  arch: string;
  patchSize: number;
  imgSize: number;
  weights: string | null;
  keyPrefix: string;
  input: string | null;
  images: string | null;
  size: number;
  resize: number;
  maskMode: MaskMode;
  learnableRefToken: boolean;
  batchSize: number;
  device: Device;
  seed: number;
  out: string;
}

function parseFlags(args: string[]): Config | null {
  const v = readFlags(FLAGS, args);
  if (v === null) return null;

  const arch = checkArch(v.get("arch"));
  const patchSize = positiveInt("patch-size", v.get("patch-size"));
  const imgSize = positiveInt("img-size", v.get("img-size"));
  if (imgSize % patchSize !== 0) {
    throw new UsageError(`--img-size ${imgSize} is not a multiple of --patch-size ${patchSize}`);
  }
  const maskMode = checkMaskModeFlag(v.get("mask-mode"));
  const input = v.str("input");
  const images = v.str("images");
  if (input !== null && images !== null) {
    throw new UsageError("give either --input or --images, not both");
  }
  if (input === null && images === null) {
    throw new UsageError("give one of --input X.safetensors or --images DIR");
  }
  if (input === "" || images === "") {
    throw new UsageError(`--${input === "" ? "input" : "images"} needs a path`);
  }
  const out = v.str("out");
  if (out === null || out === "") {
    throw new UsageError("--out Y.safetensors is required");
  }
  const size = positiveInt("size", v.get("size"));
  const resize = v.str("resize") === null ? size : positiveInt("resize", v.str("resize")!);
  if (images !== null) {
    if (size % patchSize !== 0) {
      throw new UsageError(`--size ${size} is not a multiple of --patch-size ${patchSize}`);
    }
    if (resize < size) {
      throw new UsageError(`--resize ${resize} is smaller than the crop --size ${size}`);
    }
  }
  const device = checkDevice(v.get("device"));
  const weights = v.path("weights");
  if (weights === null && v.str("key-prefix")) {
    throw new UsageError("--key-prefix selects keys of --weights, which is not given");
  }
  if (input !== null && (v.str("size") !== null || v.str("resize") !== null)) {
    log("warning: --size and --resize apply to --images only; ignored with --input");
  }
  return {
    arch,
    patchSize,
    imgSize,
    weights,
    keyPrefix: v.get("key-prefix"),
    input,
    images,
    size,
    resize,
    maskMode,
    learnableRefToken: v.bool("learnable-ref-token"),
    batchSize: positiveInt("batch-size", v.get("batch-size")),
    device,
    seed: integer("seed", v.get("seed")),
    out,
  };
}

async function checkPaths(cfg: Config): Promise<void> {
  if (cfg.weights !== null) {
    const st = await statOrNull(cfg.weights);
    if (st === null) throw new UsageError(`--weights: ${cfg.weights}: file not found`);
    if (!st.isFile) throw new UsageError(`--weights: ${cfg.weights} is not a file`);
  }
  if (cfg.input !== null) {
    const st = await statOrNull(cfg.input);
    if (st === null) throw new UsageError(`--input: ${cfg.input}: file not found`);
    if (!st.isFile) throw new UsageError(`--input: ${cfg.input} is not a file`);
  }
  if (cfg.images !== null) {
    const st = await statOrNull(cfg.images);
    if (st === null) throw new UsageError(`--images: ${cfg.images}: directory not found`);
    if (!st.isDirectory) throw new UsageError(`--images: ${cfg.images} is not a directory`);
  }
  await checkOutputFile("out", cfg.out);
  checkDeviceAvailable(cfg.device);
}

async function buildModel(cfg: Config): Promise<VisionTransformer> {
  if (cfg.weights === null) log(`no --weights: random initialisation (seed ${cfg.seed})`);
  // the one loader of frozen backbones: random init from the seed, or exactly the keys
  // under --key-prefix; the flags (with their defaults) must describe the weights
  const b = await usageOn([EvalError], "--weights: ", () =>
    loadBackbone({
      weights: cfg.weights ?? undefined,
      keyPrefix: cfg.weights === null ? undefined : cfg.keyPrefix,
      arch: cfg.arch,
      patchSize: cfg.patchSize,
      imgSize: cfg.imgSize,
      learnableRefToken: cfg.learnableRefToken,
      seed: cfg.seed,
      device: cfg.device,
    }));
  if (cfg.weights !== null) {
    log(`loaded ${cfg.weights}${cfg.keyPrefix ? ` (keys under "${cfg.keyPrefix}")` : ""}`);
  }
  return b.vit;
}

const FLOATING = ["float32", "float64", "float16", "bfloat16"];

/** Loads and validates --input: images [B,3,H,W] and optional ref_points [B,K,2], as float32. */
async function readInput(
  cfg: Config,
): Promise<{ images: Tensor; points: Tensor | null }> {
  const path = cfg.input!;
  const { tensors } = await usageOn([Error], "--input: ", () => loadSafetensors(path));
  try {
    const names = Object.keys(tensors);
    const images = tensors["images"];
    if (!images) {
      throw new UsageError(
        `--input: ${path} has no tensor "images" (it has ${
          names.length
            ? names.slice(0, 6).map((n) => `"${n}"`).join(", ") +
              (names.length > 6 ? `, … ${names.length} in all` : "")
            : "none"
        })`,
      );
    }
    const s = images.shape;
    if (s.length !== 4 || s[1] !== 3 || s[0] < 1) {
      throw new UsageError(
        `--input: "images" must be [B, 3, H, W] with B ≥ 1, got [${s.join(", ")}]`,
      );
    }
    if (!FLOATING.includes(images.dtype)) {
      throw new UsageError(
        `--input: "images" must be floating point (float32), got ${images.dtype}`,
      );
    }
    const p = cfg.patchSize;
    if (s[2] % p !== 0 || s[3] % p !== 0) {
      throw new UsageError(
        `--input: images are ${s[2]}×${s[3]}, not multiples of --patch-size ${p}`,
      );
    }
    const pts = tensors["ref_points"] ?? null;
    if (pts) {
      const ps = pts.shape;
      if (ps.length !== 3 || ps[2] !== 2 || ps[0] !== s[0]) {
        throw new UsageError(
          `--input: "ref_points" must be [B, K, 2] with B = ${s[0]} (as "images"), got [${
            ps.join(", ")
          }]`,
        );
      }
      if (!FLOATING.includes(pts.dtype)) {
        throw new UsageError(
          `--input: "ref_points" must be floating point (float32), got ${pts.dtype}`,
        );
      }
      if (pts.numel > 0) {
        const m = scope(() => pts.abs().amax().item());
        if (!(m <= 1)) {
          throw new UsageError(
            `--input: "ref_points" must lie in [-1, 1] (grid_sample convention, x first); ` +
              `found |coordinate| = ${m}`,
          );
        }
      }
    }
    const nonFinite = scope(() => images.isfinite().logicalNot().any().item());
    if (nonFinite) throw new UsageError(`--input: "images" holds NaN or infinite values`);
    for (const n of names) {
      if (n !== "images" && n !== "ref_points") log(`warning: ignoring tensor "${n}" of ${path}`);
    }
    return scope(() => ({
      images: images.to({ dtype: "float32", device: cfg.device }),
      points: pts ? pts.to({ dtype: "float32", device: cfg.device }) : null,
    }));
  } finally {
    freeAll(tensors);
  }
}

async function listImages(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (!/\.(jpe?g|png)$/i.test(e.name)) continue;
    if (e.isFile) names.push(e.name);
    else if (e.isSymlink && (await statOrNull(`${dir}/${e.name}`))?.isFile) names.push(e.name);
  }
  return names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

interface Batch {
  x: Tensor;
  points: Tensor | null;
  names: string[];
}

class Progress {
  #start = performance.now();
  #last = 0;
  constructor(readonly total: number) {}
  update(done: number, force = false): void {
    const now = performance.now();
    if (!force && now - this.#last < 1000) return;
    this.#last = now;
    const secs = (now - this.#start) / 1000;
    const rate = secs > 0 ? done / secs : 0;
    log(`${done}/${this.total} images, ${rate.toFixed(1)} images/s`);
  }
}

async function* inputBatches(
  cfg: Config,
  images: Tensor,
  points: Tensor | null,
): AsyncGenerator<Batch> {
  const B = images.size(0);
  for (let i = 0; i < B; i += cfg.batchSize) {
    const n = Math.min(cfg.batchSize, B - i);
    yield {
      x: images.narrow(0, i, n),
      points: points ? points.narrow(0, i, n) : null,
      names: [],
    };
  }
}

async function* imageBatches(
  cfg: Config,
  files: string[],
  skipped: string[],
): AsyncGenerator<Batch> {
  for (let i = 0; i < files.length; i += cfg.batchSize) {
    const xs: Tensor[] = [];
    const names: string[] = [];
    try {
      for (const name of files.slice(i, i + cfg.batchSize)) {
        let raw: Tensor;
        try {
          raw = await loadImage(`${cfg.images}/${name}`);
        } catch (e) {
          if (!(e instanceof ImageError)) throw e;
          log(`warning: skipping ${e.message}`);
          skipped.push(name);
          continue;
        }
        try {
          xs.push(scope(() => imagenetNormalize(resizeImage(raw, cfg.resize, cfg.size))));
        } finally {
          raw.free();
        }
        names.push(name);
      }
      if (xs.length === 0) continue;
      const x = scope(() => stack(xs, 0).to(cfg.device));
      yield { x, points: null, names };
    } finally {
      freeAll(xs);
    }
  }
}

async function main(args: string[]): Promise<number> {
  const cfg = parseFlags(args);
  if (cfg === null) return printHelp(FLAGS, HELP_INTRO);
  await checkPaths(cfg);

  // inputs are validated before the (possibly slow) model load
  let input: { images: Tensor; points: Tensor | null } | null = null;
  let files: string[] = [];
  if (cfg.input !== null) {
    input = await readInput(cfg);
  } else {
    files = await listImages(cfg.images!);
    if (files.length === 0) {
      throw new UsageError(`--images: no .jpg, .jpeg or .png files in ${cfg.images}`);
    }
  }

  let model: VisionTransformer | null = null;
  const outputs: { cls: Tensor[]; patch: Tensor[]; ref: Tensor[] } = {
    cls: [],
    patch: [],
    ref: [],
  };
  try {
    model = await buildModel(cfg);
    const total = input ? input.images.size(0) : files.length;
    const skipped: string[] = [];
    const names: string[] = [];
    const source = input
      ? inputBatches(cfg, input.images, input.points)
      : imageBatches(cfg, files, skipped);
    log(
      `${total} images, ${cfg.arch}/${cfg.patchSize}, mask ${cfg.maskMode}, batch ${cfg.batchSize}` +
        `, ${cfg.device}`,
    );
    const t0 = performance.now();
    const progress = new Progress(total);
    let done = 0;
    for await (const batch of source) {
      const m = model;
      try {
        const o = noGrad(() =>
          scope(() => {
            const f = m.forward(batch.x, {
              points: batch.points ?? undefined,
              maskMode: cfg.maskMode,
            });
            // compact CPU copies, so that the batch's activations can be freed
            return {
              cls: f.cls.to("cpu").contiguous(),
              patch: f.patch.to("cpu").contiguous(),
              ref: f.ref ? f.ref.to("cpu").contiguous() : null,
            };
          })
        );
        outputs.cls.push(o.cls);
        outputs.patch.push(o.patch);
        if (o.ref) outputs.ref.push(o.ref);
      } finally {
        batch.x.free();
        batch.points?.free();
      }
      names.push(...batch.names);
      done += outputs.cls[outputs.cls.length - 1].size(0);
      progress.update(done + skipped.length);
    }
    progress.update(done + skipped.length, true);
    if (done === 0) {
      throw new UsageError(
        `--images: none of the ${files.length} images in ${cfg.images} could be read`,
      );
    }

    const result = scope(() => ({
      cls: cat(outputs.cls, 0),
      patch: cat(outputs.patch, 0),
      ref: outputs.ref.length ? cat(outputs.ref, 0) : null,
    }));
    try {
      const metadata: Record<string, string> = {
        format: "densedino-features",
        arch: cfg.arch,
        patch_size: String(cfg.patchSize),
        img_size: String(cfg.imgSize),
        mask_mode: cfg.maskMode,
        learnable_ref_token: String(cfg.learnableRefToken),
        weights: cfg.weights ?? "",
        key_prefix: cfg.keyPrefix,
      };
      if (cfg.input !== null) metadata.input = cfg.input;
      else {
        metadata.images = cfg.images!;
        metadata.size = String(cfg.size);
        metadata.resize = String(cfg.resize);
        metadata.names = JSON.stringify(names);
      }
      const tensors: Record<string, Tensor> = { cls: result.cls, patch: result.patch };
      if (result.ref) tensors.ref = result.ref;
      await saveSafetensors(cfg.out, tensors, metadata);
      const seconds = (performance.now() - t0) / 1000;
      log(`wrote ${cfg.out} in ${seconds.toFixed(2)} s (${(done / seconds).toFixed(1)} images/s)`);
      console.log(JSON.stringify({
        out: cfg.out,
        cls: result.cls.shape,
        patch: result.patch.shape,
        ref: result.ref ? result.ref.shape : null,
        images: done,
        skipped: skipped.length,
        seconds: Number(seconds.toFixed(3)),
      }));
    } finally {
      freeAll(result);
    }
    return 0;
  } finally {
    freeAll(outputs);
    if (input) freeAll(input);
    model?.free();
  }
}

if (import.meta.main) await runMain(NAME, main);
