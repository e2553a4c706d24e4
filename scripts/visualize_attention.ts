/**
 * Attention and reference maps of a frozen ViT (the paper's Fig. 6): for each image, the last
 * block's class-token attention over the patches per head and averaged over heads, and each
 * reference token's attention over the patches, as heat maps overlaid on the image, plus a
 * contact sheet and the raw maps.
 *
 * ```sh
 * deno run -A scripts/visualize_attention.ts --weights runs/x --image photo.jpg --out runs/attn
 * deno run -A scripts/visualize_attention.ts --weights runs/x --data fashion-scenes \
 *   --split val --index 0,1,2 --size 96 --num-points 9 --threshold 0.6 --out runs/attn
 * deno run -A scripts/visualize_attention.ts --arch vit_micro --patch-size 8 --img-size 32 \
 *   --image photo.png --points "0,0;-0.5,0.5" --out runs/attn-random   # random-init baseline
 * ```
 *
 * The backbone comes from `--weights` (a training run directory, its
 * `teacher_backbone.safetensors`, a `checkpoint.safetensors` with `--which`, or a bare ViT
 * file), or is randomly initialised from `--seed` when `--weights` is absent. The input is
 * `--image PATH` (PNG or JPEG) or scenes `--index I[,J…]` of the generated fashion-scenes set
 * (`--data fashion-scenes`, with `--split`, `--count`, `--scene-seed`, `--scene-size`); it is
 * resized (shorter side, bicubic, antialiased) and centre-cropped to `--size` (a multiple of the
 * patch size), then ImageNet-normalised. Reference points are `--points "x,y;x,y"` in the
 * grid_sample convention ((x, y) in [−1, 1], x to the right, y down, relative to the input), or
 * `--num-points N` drawn on a √N×√N grid of cell centres or uniformly at random (seeded by
 * `--seed`).
 *
 * The maps are the last block's softmax attention rows, with the reference-token mask
 * (`--mask-mode`, default the paper's `all2pos_pos2cls_eye`, under which reference tokens do not
 * change the class maps); the official `get_last_selfattention` passes no mask there.
 *
 * Writes into `--out` (created if missing), for each image NAME (the file's base name, or
 * `SPLIT_I` for scene I):
 * - `NAME_cls_head<h>.png`, `NAME_cls_mean.png`: the class-token maps per head and their mean;
 * - `NAME_ref<k>.png`: reference token k's map (mean over heads) with its point marked;
 * - with `--threshold F`: `NAME_cls_head<h>_mask.png`, DINO's masks of the patches holding a
 *   fraction F of each head's attention mass;
 * - `NAME_sheet.png`: the input with the points, the class maps (mean, heads), the masks, and one
 *   row per reference point (its maps: mean, heads), titled;
 * - `attention.safetensors`: the raw maps, `NAME.cls` [heads, h, w], `NAME.ref` [K, heads, h, w]
 *   and `NAME.points` [K, 2];
 * - `attention.json`: the model, the options, and per image its source, input and grid sizes,
 *   the points, the raw map shapes, the files and (with --threshold) the fraction of patches each
 *   head's mask keeps.
 *
 * Progress goes to stderr; the last line on stdout is JSON: `{"out", "files", "heads", "points",
 * "images", "json", "seconds"}`. Exit code 2 on bad flags or input (the message names the flag
 * or file), 1 on other failures.
 *
 * @module
 */
import {
  ARCHS,
  Canvas,
  DEFAULT_MASK_MODE,
  type Device,
  type FashionScenesOptions,
  freeAll,
  fromTypedArray,
  GeometryRng,
  ImageError,
  imagenetNormalize,
  loadImage,
  MASK_MODES,
  type MaskMode,
  resizeImage,
  saveSafetensors,
  scope,
  type Tensor,
  writeFileAtomic,
} from "../mod.ts";
import {
  attentionMaps,
  attentionMassMask,
  type ColormapName,
  COLORMAPS,
  drawMarkers,
  imageCanvas,
  type Marker,
  renderHeatmap,
  renderMask,
} from "../lib/eval/attention.ts";
import { contactSheet, type SheetTile } from "../lib/data/plot.ts";
import type { LoadedBackbone } from "../lib/eval/backbone.ts";
import {
  checkArch,
  checkDevice,
  checkDeviceAvailable,
  checkMaskModeFlag,
  checkWhich,
  COMMON_FLAGS,
  type FlagTable,
  integer,
  loadBackboneFromFlags,
  logger,
  number,
  openScenes,
  printHelp,
  RANDOM_BACKBONE,
  readFlags,
  readImageOrData,
  readSceneFlags,
  runMain,
  SCENE_FLAGS,
  UsageError,
  usageOn,
} from "./_cli.ts";

const NAME = "visualize_attention";

/** Random-init defaults (with --weights, the model's shape is read from the weights). */
const RANDOM_INIT = { ...RANDOM_BACKBONE, imgSize: 224 };

const FLAGS = {
  "weights": {
    arg: "PATH",
    type: "string",
    help: "a training run directory, its teacher_backbone.safetensors, a checkpoint.safetensors " +
      "(see --which) or a bare ViT file; absent: a randomly initialised ViT (seed --seed)",
    shown: "none (random init)",
  },
  "which": {
    arg: "NAME",
    type: "string",
    default: "teacher",
    help: "the backbone of a run directory or checkpoint: teacher or student",
  },
  "arch": {
    arg: "NAME",
    type: "string",
    help: `architecture: ${Object.keys(ARCHS).join(", ")}`,
    shown: `read from --weights; ${RANDOM_INIT.arch} for random init`,
  },
  "patch-size": {
    arg: "N",
    type: "string",
    help: "patch side in pixels",
    shown: `read from --weights; ${RANDOM_INIT.patchSize} for random init`,
  },
  "img-size": {
    arg: "N",
    type: "string",
    help: "the model's trained image side (its positional grid is img-size / patch-size square)",
    shown: `read from --weights; ${RANDOM_INIT.imgSize} for random init`,
  },
  "seed": {
    arg: "N",
    type: "string",
    default: "0",
    help: "seed of the random initialisation (without --weights) and of --point-sampling random",
  },
  "device": COMMON_FLAGS.device,
  "image": {
    arg: "PATH",
    type: "string",
    help: "the image (PNG or JPEG)",
    shown: "required unless --data",
  },
  "data": {
    arg: "NAME",
    type: "string",
    help: "take the images from a data set instead: fashion-scenes (with --index)",
    shown: "none",
  },
  "index": {
    arg: "I[,J…]",
    type: "string",
    help: "--data: the examples to show, comma-separated, each 0 ≤ I < the set's size",
    shown: "required with --data",
  },
  "split": {
    arg: "S",
    type: "string",
    default: "train",
    help: "--data fashion-scenes: train or val",
  },
  "count": {
    arg: "N",
    type: "string",
    help: "--data fashion-scenes: scenes in the set (generated once, then read from the cache " +
      "under $DENSEDINO_CACHE)",
    shown: "the data set's: 10000 for train, 2000 for val",
  },
  "scene-seed": {
    arg: "N",
    type: "string",
    default: "0",
    help: "--data fashion-scenes: seed of the generated set",
  },
  "scene-size": {
    arg: "N",
    type: "string",
    default: "96",
    help: "--data fashion-scenes: canvas side in pixels",
  },
  "size": {
    arg: "N",
    type: "string",
    help: "input side: the image is resized (shorter side, bicubic) and centre-cropped to N×N; " +
      "a multiple of the patch size",
    shown: "the model's --img-size",
  },
  "points": {
    arg: "X,Y;X,Y…",
    type: "string",
    help: "reference points in [-1, 1] (grid_sample convention: x right, y down, relative to " +
      "the input); overrides --num-points",
    shown: "none",
  },
  "num-points": {
    arg: "N",
    type: "string",
    default: "4",
    help: "reference points when --points is absent (0: class maps only)",
  },
  "point-sampling": {
    arg: "MODE",
    type: "string",
    default: "grid",
    help: "--num-points: grid (centres of a √N×√N grid; N a perfect square) or random " +
      "(uniform, seeded by --seed)",
  },
  "mask-mode": {
    arg: "MODE",
    type: "string",
    default: DEFAULT_MASK_MODE,
    help: `reference-token attention mask: ${MASK_MODES.join(", ")}`,
  },
  "threshold": {
    arg: "F",
    type: "string",
    help: "also write DINO's masks of the patches holding a fraction F of each head's class " +
      "attention (DINO shows 0.6)",
    shown: "none",
  },
  "upsample": {
    arg: "MODE",
    type: "string",
    default: "nearest",
    help: "upsampling of the patch maps to the image: nearest (patch blocks, DINO's) or bilinear",
  },
  "colormap": {
    arg: "NAME",
    type: "string",
    default: "inferno",
    help: `heat-map colours: ${COLORMAPS.join(", ")}`,
  },
  "alpha": {
    arg: "A",
    type: "string",
    default: "0.6",
    help: "opacity of the heat map over the image, 0–1 (1: the map alone)",
  },
  "zoom": {
    arg: "N",
    type: "string",
    help: "whole-number magnification of every PNG",
    shown: "the smallest that makes the input at least 128 px",
  },
  "out": {
    arg: "DIR",
    type: "string",
    help: "output directory (created if missing; files in it are overwritten)",
    shown: "required",
  },
  "help": COMMON_FLAGS.help,
} satisfies FlagTable;

const HELP_INTRO = [
  `Usage: deno run -A scripts/${NAME}.ts [--weights PATH] --image PATH --out DIR [flags]`,
  `       deno run -A scripts/${NAME}.ts [--weights PATH] --data fashion-scenes --index I[,J…] ` +
  `--out DIR [flags]`,
  "",
  "Writes the last block's class-token attention maps (per head and mean) and each reference",
  "token's attention map of a frozen ViT as heat maps over the image, DINO's thresholded masks",
  "(--threshold), a contact sheet per image, attention.safetensors (raw maps) and",
  "attention.json. Progress on stderr; the last stdout line is JSON.",
];

const log = logger(NAME);

/** Where the images come from. */
type Source =
  | { kind: "image"; path: string }
  | { kind: "fashion-scenes"; indices: number[]; scenes: FashionScenesOptions };

type PointSpec =
  | { kind: "given"; points: [number, number][] }
  | { kind: "grid" | "random"; n: number };

interface Config {
  weights?: string;
  which: "teacher" | "student";
  arch?: string;
  patchSize?: number;
  imgSize?: number;
  seed: number;
  device: Device;
  source: Source;
  size?: number;
  points: PointSpec;
  maskMode: MaskMode;
  threshold: number | null;
  upsample: "nearest" | "bilinear";
  colormap: ColormapName;
  alpha: number;
  zoom?: number;
  out: string;
}

function parsePoints(value: string): [number, number][] {
  const parts = value.split(";").map((s) => s.trim()).filter((s) => s !== "");
  if (parts.length === 0) throw new UsageError(`--points: no points in "${value}"`);
  return parts.map((p) => {
    const xy = p.split(",");
    if (xy.length !== 2) {
      throw new UsageError(`--points: each point is "x,y", got "${p}" in "${value}"`);
    }
    const [x, y] = xy.map((s) => Number(s));
    if (xy.some((s) => s.trim() === "") || !Number.isFinite(x) || !Number.isFinite(y)) {
      throw new UsageError(`--points: "${p}" is not two numbers`);
    }
    if (Math.abs(x) > 1 || Math.abs(y) > 1) {
      throw new UsageError(
        `--points: (${x}, ${y}) lies outside [-1, 1]² (grid_sample convention: -1 is the left / ` +
          `top edge, 1 the right / bottom edge)`,
      );
    }
    return [x, y];
  });
}

function parseFlags(args: string[]): Config | null {
  const v = readFlags(FLAGS, args);
  if (v === null) return null;

  const which = checkWhich(v.get("which"));
  const arch = v.given("arch") ? checkArch(v.get("arch")) : undefined;
  const weights = v.str("weights") ?? undefined;
  if (weights === "") throw new UsageError("--weights: an empty path was given");
  const device = checkDevice(v.get("device"));

  const { image, data } = readImageOrData(v, ["index", ...SCENE_FLAGS]);
  let source: Source;
  if (image !== undefined) {
    source = { kind: "image", path: image };
  } else {
    if (data !== "fashion-scenes") {
      throw new UsageError(`--data must be fashion-scenes, got "${data}"`);
    }
    const index = v.str("index");
    if (index === null) throw new UsageError(`--data ${data} needs --index I[,J…]`);
    // the list may have spaces after its commas ("0, 2")
    const indices = index.split(",").map((s) => integer("index", s.trim(), 0));
    if (new Set(indices).size !== indices.length) {
      throw new UsageError(`--index lists an example twice: "${index}"`);
    }
    source = { kind: "fashion-scenes", indices, scenes: readSceneFlags(v) };
  }

  let points: PointSpec;
  if (v.given("points")) {
    points = { kind: "given", points: parsePoints(v.get("points")) };
  } else {
    const n = integer("num-points", v.get("num-points"), 0);
    const mode = v.get("point-sampling");
    if (mode !== "grid" && mode !== "random") {
      throw new UsageError(`--point-sampling must be grid or random, got "${mode}"`);
    }
    if (mode === "grid" && Math.round(Math.sqrt(n)) ** 2 !== n) {
      throw new UsageError(
        `--num-points ${n} is not a perfect square, as --point-sampling grid needs (or use random)`,
      );
    }
    points = { kind: mode, n };
  }

  const maskMode = checkMaskModeFlag(v.get("mask-mode"));
  const upsample = v.get("upsample");
  if (upsample !== "nearest" && upsample !== "bilinear") {
    throw new UsageError(`--upsample must be nearest or bilinear, got "${upsample}"`);
  }
  const colormap = v.get("colormap");
  if (!(COLORMAPS as readonly string[]).includes(colormap)) {
    throw new UsageError(`--colormap must be one of ${COLORMAPS.join(", ")}, got "${colormap}"`);
  }
  const out = v.str("out");
  if (out === null || out === "") throw new UsageError("--out DIR is required");
  const optInt = (k: "patch-size" | "img-size" | "size" | "zoom") =>
    v.given(k) ? integer(k, v.get(k), 1) : undefined;
  return {
    weights,
    which,
    arch,
    patchSize: optInt("patch-size"),
    imgSize: optInt("img-size"),
    seed: integer("seed", v.get("seed"), 0),
    device,
    source,
    size: optInt("size"),
    points,
    maskMode,
    threshold: v.given("threshold")
      ? number("threshold", v.get("threshold"), (x) => x > 0 && x <= 1, "a number in (0, 1]")
      : null,
    upsample,
    colormap: colormap as ColormapName,
    alpha: number("alpha", v.get("alpha"), (x) => x >= 0 && x <= 1, "a number in [0, 1]"),
    zoom: optInt("zoom"),
    out,
  };
}

/** The reference points [K][2] the flags ask for. */
function makePoints(spec: PointSpec, seed: number): [number, number][] {
  switch (spec.kind) {
    case "given":
      return spec.points;
    case "grid": {
      const k = Math.round(Math.sqrt(spec.n));
      const out: [number, number][] = [];
      for (let i = 0; i < k; i++) {
        for (let j = 0; j < k; j++) out.push([((j + 0.5) / k) * 2 - 1, ((i + 0.5) / k) * 2 - 1]);
      }
      return out;
    }
    case "random": {
      const rng = new GeometryRng(seed);
      return Array.from({ length: spec.n }, () => [rng.uniform(-1, 1), rng.uniform(-1, 1)]);
    }
  }
}

/** One input image. */
interface Input {
  /** file-name stem of its outputs */
  name: string;
  /** [3, H, W] in [0, 1] (the caller frees it) */
  image: Tensor;
  /** facts for attention.json */
  source: Record<string, unknown>;
}

function stem(path: string): string {
  const base = path.replace(/\\/g, "/").split("/").pop() ?? "image";
  const s = base.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9._-]+/g, "_");
  return s === "" ? "image" : s;
}

async function loadInputs(src: Source): Promise<Input[]> {
  if (src.kind === "image") {
    const image = await usageOn([ImageError], "--image: ", () => loadImage(src.path));
    return [{ name: stem(src.path), image, source: { kind: "image", path: src.path } }];
  }
  const ds = await openScenes(src.scenes, src.indices);
  const out: Input[] = [];
  for (const i of src.indices) {
    const { image, mask, label } = await ds.get(i);
    mask?.free();
    out.push({
      name: `${ds.options.split}_${i}`,
      image,
      source: {
        kind: "fashion-scenes",
        name: ds.nameOf(i),
        index: i,
        label,
        class: label === undefined ? null : ds.classes[label],
        items: ds.items(i),
        options: ds.options,
        cache: ds.cachePath,
      },
    });
  }
  return out;
}

async function writeJson(path: string, doc: unknown): Promise<void> {
  await writeFileAtomic(path, new TextEncoder().encode(JSON.stringify(doc, null, 1) + "\n"));
}

const BLANK = (w: number, h: number) => new Canvas(w, h);

async function main(args: string[]): Promise<number> {
  const cfg = parseFlags(args);
  if (cfg === null) return printHelp(FLAGS, HELP_INTRO);
  const t0 = performance.now();
  checkDeviceAvailable(cfg.device);
  // the inputs first (a missing image fails before a large model loads)
  const inputs = await loadInputs(cfg.source);
  try {
    const bb = await loadBackboneFromFlags(cfg, RANDOM_INIT.imgSize, cfg.device);
    try {
      const result = await visualizeAll(cfg, inputs, bb);
      const seconds = (performance.now() - t0) / 1000;
      log(`wrote ${result.files.length} files to ${cfg.out} in ${seconds.toFixed(1)} s`);
      console.log(JSON.stringify({
        out: cfg.out,
        files: result.files,
        heads: result.heads,
        points: result.points,
        images: inputs.length,
        json: "attention.json",
        seconds: Number(seconds.toFixed(3)),
      }));
      return 0;
    } finally {
      bb.free();
    }
  } finally {
    for (const inp of inputs) inp.image.free();
  }
}

/** Every image's maps, attention.safetensors and attention.json. */
async function visualizeAll(
  cfg: Config,
  inputs: Input[],
  bb: LoadedBackbone,
): Promise<{ files: string[]; heads: number; points: number }> {
  const p = bb.patchSize;
  const size = cfg.size ?? bb.imgSize;
  if (size % p !== 0) {
    throw new UsageError(
      `--size ${size} is not a multiple of the patch size ${p} (try ${
        Math.max(p, Math.round(size / p) * p)
      })`,
    );
  }
  const zoom = cfg.zoom ?? Math.max(1, Math.ceil(128 / size));
  const heads = bb.vit.config.numHeads;
  const pts = makePoints(cfg.points, cfg.seed);
  const K = pts.length;
  log(
    `${bb.source}: ${bb.arch}/${p}, ${heads} heads; input ${size}×${size} ` +
      `(${size / p}×${size / p} patches), ${K} reference point${K === 1 ? "" : "s"}, ` +
      `mask ${cfg.maskMode}`,
  );
  try {
    await Deno.mkdir(cfg.out, { recursive: true });
  } catch (e) {
    throw new UsageError(`--out: cannot create directory ${cfg.out}: ${(e as Error).message}`);
  }
  const files: string[] = [];
  const raw: Record<string, Tensor> = {};
  const docs: Record<string, unknown>[] = [];
  try {
    const names = new Set<string>();
    for (const inp of inputs) {
      if (names.has(inp.name)) inp.name = `${inp.name}_${names.size}`;
      names.add(inp.name);
      const written = await visualize(inp, bb, cfg, { size, zoom, pts });
      files.push(...written.files);
      Object.assign(raw, written.raw);
      docs.push(written.doc);
      log(`${inp.name}: wrote ${written.files.length} files`);
    }
    const rawFile = "attention.safetensors";
    await saveSafetensors(`${cfg.out}/${rawFile}`, raw, {
      format: "densedino-attention-maps",
      arch: bb.arch,
      patch_size: String(p),
      fingerprint: bb.fingerprint,
      mask_mode: cfg.maskMode,
    });
    const jsonFile = "attention.json";
    await writeJson(`${cfg.out}/${jsonFile}`, {
      model: {
        arch: bb.arch,
        patch_size: p,
        img_size: bb.imgSize,
        heads,
        source: bb.source,
        which: cfg.weights === undefined ? null : cfg.which,
        fingerprint: bb.fingerprint,
      },
      options: {
        size,
        zoom,
        mask_mode: cfg.maskMode,
        threshold: cfg.threshold,
        upsample: cfg.upsample,
        colormap: cfg.colormap,
        alpha: cfg.alpha,
        point_sampling: cfg.points.kind,
        seed: cfg.seed,
      },
      points: pts,
      raw: rawFile,
      images: docs,
    });
    files.push(rawFile, jsonFile);
  } finally {
    freeAll(raw);
  }
  return { files, heads, points: K };
}

/** The maps of one image: PNGs, sheet, raw tensors and its attention.json entry. */
async function visualize(
  inp: Input,
  bb: LoadedBackbone,
  cfg: Config,
  o: { size: number; zoom: number; pts: [number, number][] },
): Promise<{ files: string[]; raw: Record<string, Tensor>; doc: Record<string, unknown> }> {
  const { size, zoom, pts } = o;
  const K = pts.length;
  const heads = bb.vit.config.numHeads;
  const rgb = scope(() => resizeImage(inp.image, size).to({ dtype: "float32" }));
  const raw: Record<string, Tensor> = {};
  try {
    const maps = scope(() => {
      const x = imagenetNormalize(rgb).to(bb.device);
      const points = K > 0
        ? fromTypedArray(Float32Array.from(pts.flat()), [K, 2], { device: bb.device })
        : undefined;
      const m = attentionMaps(bb.vit, x, { points, maskMode: cfg.maskMode });
      const cpu = (t: Tensor) => t.to("cpu");
      return [cpu(m.cls), m.ref ? cpu(m.ref) : null, m.grid] as const;
    });
    const [cls, ref, grid] = maps;
    raw[`${inp.name}.cls`] = cls;
    if (ref) raw[`${inp.name}.ref`] = ref;
    if (K > 0) raw[`${inp.name}.points`] = fromTypedArray(Float32Array.from(pts.flat()), [K, 2]);

    const files: string[] = [];
    const save = async (file: string, cv: Canvas) => {
      await cv.save(`${cfg.out}/${file}`);
      files.push(file);
    };
    const heat = { upsample: cfg.upsample, colormap: cfg.colormap, alpha: cfg.alpha, zoom };
    const markers = (ks: number[]): Marker[] =>
      ks.map((k) => ({ x: pts[k][0], y: pts[k][1], label: String(k) }));
    const all = pts.map((_, k) => k);

    const input = imageCanvas(rgb, zoom);
    drawMarkers(input, markers(all));
    const row0: SheetTile[] = [{ canvas: input, title: "input" }];
    const meanCls = scope(() => cls.mean(0));
    try {
      const cv = renderHeatmap(rgb, meanCls, heat);
      await save(`${inp.name}_cls_mean.png`, cv);
      row0.push({ canvas: cv, title: "cls mean" });
    } finally {
      meanCls.free();
    }
    for (let h = 0; h < heads; h++) {
      using m = cls.select(0, h);
      const cv = renderHeatmap(rgb, m, heat);
      await save(`${inp.name}_cls_head${h}.png`, cv);
      row0.push({ canvas: cv, title: `cls head ${h}` });
    }
    const rows: SheetTile[][] = [row0];

    let kept: number[] | null = null;
    if (cfg.threshold !== null) {
      using masks = attentionMassMask(cls, cfg.threshold);
      using meanMask = scope(() => attentionMassMask(cls.mean(0), cfg.threshold!));
      const pct = `${Math.round(cfg.threshold * 100)}%`;
      const side = size * zoom;
      const row: SheetTile[] = [
        { canvas: BLANK(side, side) },
        { canvas: renderMask(rgb, meanMask, { zoom }), title: `${pct} mean` },
      ];
      kept = [];
      for (let h = 0; h < heads; h++) {
        using m = masks.select(0, h);
        kept.push(scope(() => m.mean().item()));
        const cv = renderMask(rgb, m, { zoom });
        await save(`${inp.name}_cls_head${h}_mask.png`, cv);
        row.push({ canvas: cv, title: `${pct} head ${h}` });
      }
      rows.push(row);
    }

    for (let k = 0; k < K; k++) {
      using r = ref!.select(0, k); // [heads, h, w]
      using mean = scope(() => r.mean(0));
      const mk = { ...heat, markers: markers([k]) };
      const cv = renderHeatmap(rgb, mean, mk);
      await save(`${inp.name}_ref${k}.png`, cv);
      const only = imageCanvas(rgb, zoom);
      drawMarkers(only, markers([k]));
      const row: SheetTile[] = [
        { canvas: only, title: `point ${k}` },
        { canvas: cv, title: `ref ${k} mean` },
      ];
      for (let h = 0; h < heads; h++) {
        using m = r.select(0, h);
        row.push({ canvas: renderHeatmap(rgb, m, mk), title: `ref ${k} head ${h}` });
      }
      rows.push(row);
    }
    const sheet = contactSheet(rows, {
      title: `${inp.name} - ${bb.arch}/${bb.patchSize} - ${bb.source}`,
    });
    await save(`${inp.name}_sheet.png`, sheet);

    const doc = {
      name: inp.name,
      source: inp.source,
      image_size: [inp.image.size(1), inp.image.size(2)],
      input_size: [size, size],
      grid,
      png_size: [size * zoom, size * zoom],
      sheet_size: [sheet.height, sheet.width],
      maps: { cls: cls.shape, ref: ref?.shape ?? null },
      mask_kept: kept,
      files,
    };
    return { files, raw, doc };
  } catch (e) {
    freeAll(raw);
    throw e;
  } finally {
    rgb.free();
  }
}

if (import.meta.main) await runMain(NAME, main);
