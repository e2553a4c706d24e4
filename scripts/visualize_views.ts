/**
 * Visualises the DenseDINO view sampler on one image: every view as a PNG with its reference
 * points drawn, a contact sheet, and `views.json` with the geometry.
 *
 * ```sh
 * deno run -A scripts/visualize_views.ts --image photo.jpg --out runs/views --seed 0
 * deno run -A scripts/visualize_views.ts --image photo.jpg --out runs/views --local-crops 0 \
 *   --global-crops 4 --num-ref 9 --sampling grid
 * deno run -A scripts/visualize_views.ts --data fashion-scenes --index 17 --out runs/scene17 \
 *   --global-size 64 --local-size 32
 * ```
 *
 * The image is `--image PATH` (PNG or JPEG), or with `--data fashion-scenes --index I` scene I
 * of the generated fashion-scenes set given by `--split`, `--count`, `--scene-seed` and
 * `--scene-size` (the data set's defaults: the cached set is reused, or generated once and
 * cached under $DENSEDINO_CACHE).
 *
 * The geometry's seed: with `--image`, `new GeometryRng(seed)`. With `--data`, the seed the
 * training loader gives that example, `new GeometryRng(exampleSeed(epochSeed(seed, epoch),
 * index))`: the views are exactly the geometry (crops, flips, reference points) that
 * `multiCropTransform` draws for scene I in epoch `--epoch` of a `DataLoader` with `seed:
 * --seed` and the same view options; the photometric augmentations are not applied here.
 *
 * Writes into `--out` (created if missing):
 * - `view_NN_global.png` / `view_NN_local.png`: each view (crop, bicubic antialiased resize,
 *   flip; no photometric augmentation) with its reference points as dots. The point of pair
 *   (global view i, view j) number m has one colour, drawn in view i (where it is
 *   `teacher_points[i][j][m]`) and in view j (`student_points[j][i][m]`): the same colour marks
 *   the same image point across views.
 * - `contact_sheet.png`: the original image with every crop box outlined in its view's colour,
 *   then the views (each framed in that colour): the global views beside the original, the local
 *   views in rows below.
 * - `views.json`: `{"image": {"width", "height"}, "views": [{"kind", "box": [x1, y1, x2, y2],
 *   "size": [h, w], "flip", "file"}], "teacher_points": [G][G+L][M][2], "student_points":
 *   [G+L][G][M][2], "stats", "seed", "geometry_seed", "geometry", "source", "options"}`,
 *   points as (x, y) in the view's grid_sample coordinates ([−1, 1], align_corners=false, after
 *   the flip). `geometry_seed` is the GeometryRng's seed and `geometry` how it came from `seed`;
 *   `source` is `{"kind": "image", "name": PATH}` or, for a scene, `{"kind": "fashion-scenes",
 *   "name": "fashion-scenes/SPLIT/I", "index", "epoch", "label", "class", "items", "options",
 *   "cache"}` (the scene's image label and class, its items in drawing order, the set's options
 *   and its cache file).
 *
 * Progress goes to stderr; the last line on stdout is JSON: `{"out", "views", "files",
 * "contact_sheet", "json", "stats", "seconds"}`. Exit code 2 on bad flags or input, 1 on other
 * failures.
 *
 * @module
 */
import {
  applyViews,
  DEFAULT_VIEW_OPTIONS,
  epochSeed,
  exampleSeed,
  type FashionScenesOptions,
  fromTypedArray,
  GeometryRng,
  ImageError,
  interpolate,
  loadImage,
  type RefSampling,
  type ResolvedViewOptions,
  resolveViewOptions,
  sampleViews,
  savePng,
  scope,
  type Tensor,
  type ViewPlan,
  viewPlanToJson,
  type ViewSamplerOptions,
} from "../mod.ts";
import {
  COMMON_FLAGS,
  type FlagTable,
  integer,
  logger,
  number,
  openScenes,
  printHelp,
  readFlags,
  readImageOrData,
  readSceneFlags,
  runMain,
  SCENE_FLAGS,
  UsageError,
  usageOn,
} from "./_cli.ts";

const NAME = "visualize_views";

const D = DEFAULT_VIEW_OPTIONS;
const pairText = (r: readonly [number, number]) => `${r[0]},${r[1]}`;

const FLAGS = {
  "image": {
    arg: "PATH",
    type: "string",
    help: "the image to sample views of (PNG or JPEG)",
    shown: "required unless --data",
  },
  "data": {
    arg: "NAME",
    type: "string",
    help: "take the image from a data set instead: fashion-scenes (with --index)",
    shown: "none",
  },
  "index": {
    arg: "I",
    type: "string",
    help: "--data: the example to take, 0 ≤ I < the set's size",
    shown: "required with --data",
  },
  "split": {
    arg: "S",
    type: "string",
    default: "train",
    help: "--data fashion-scenes: train (Fashion-MNIST train items) or val (test items)",
  },
  "count": {
    arg: "N",
    type: "string",
    help: "--data fashion-scenes: scenes in the set (a set is generated once per split, count, " +
      "seed and size, then read from the cache)",
    shown: "the data set's: 10000 for train, 2000 for val",
  },
  "scene-seed": {
    arg: "N",
    type: "string",
    default: "0",
    help: "--data fashion-scenes: seed of the generated set (not of the views)",
  },
  "scene-size": {
    arg: "N",
    type: "string",
    default: "96",
    help: "--data fashion-scenes: canvas side in pixels",
  },
  "epoch": {
    arg: "E",
    type: "string",
    default: "0",
    help: "--data: show the views the training loader draws for the example in epoch E " +
      "(geometry seed exampleSeed(epochSeed(--seed, E), I))",
  },
  "out": {
    arg: "DIR",
    type: "string",
    help: "output directory (created if missing; files in it are overwritten)",
    shown: "required",
  },
  "seed": {
    arg: "N",
    type: "string",
    default: "0",
    help: "seed of the view geometry (with --data: the loader's seed, ≥ 0)",
  },
  "global-crops": {
    arg: "G",
    type: "string",
    default: String(D.globalCrops),
    help: "global (teacher) views",
  },
  "global-size": {
    arg: "N",
    type: "string",
    default: String(D.globalSize),
    help: "side of a global view in pixels",
  },
  "global-scale": {
    arg: "LO,HI",
    type: "string",
    default: pairText(D.globalScale),
    help: "area range of a global crop, a fraction of the image (0 < LO ≤ HI ≤ 1)",
  },
  "local-crops": {
    arg: "L",
    type: "string",
    default: String(D.localCrops),
    help: "local views (0 for none)",
  },
  "local-size": {
    arg: "N",
    type: "string",
    default: String(D.localSize),
    help: "side of a local view in pixels",
  },
  "local-scale": {
    arg: "LO,HI",
    type: "string",
    default: pairText(D.localScale),
    help: "area range of a local crop (0 < LO ≤ HI ≤ 1)",
  },
  "ratio": {
    arg: "LO,HI",
    type: "string",
    default: "0.75,1.3333",
    shown: "0.75,1.3333 (3/4, 4/3)",
    help: "aspect-ratio range (width/height) of every crop",
  },
  "num-ref": {
    arg: "M",
    type: "string",
    default: String(D.numRef),
    help: "reference points per (global view, view) pair; a perfect square with --sampling grid",
  },
  "sampling": {
    arg: "MODE",
    type: "string",
    default: D.sampling,
    help: "reference points: random (uniform in the crops' intersection) or grid (√M×√M centres)",
  },
  "min-intersection": {
    arg: "F",
    type: "string",
    default: String(D.minIntersection),
    help: "a crop must overlap every earlier global crop by more than F of the image area " +
      "(2F between global crops)",
  },
  "max-redraws": {
    arg: "N",
    type: "string",
    default: String(D.maxRedraws),
    help: "redraws of a crop breaking the overlap rule before the fallback places it",
  },
  "flip-prob": {
    arg: "P",
    type: "string",
    default: String(D.flipProb),
    help: "probability of a horizontal flip per view",
  },
  "help": COMMON_FLAGS.help,
} satisfies FlagTable;

const HELP_INTRO = [
  `Usage: deno run -A scripts/${NAME}.ts --image PATH --out DIR [flags]`,
  `       deno run -A scripts/${NAME}.ts --data fashion-scenes --index I --out DIR [flags]`,
  "",
  "Samples DenseDINO views (crops, flips, reference points) of one image and writes each view",
  "with its reference points drawn, a contact sheet and views.json. Progress on stderr; the",
  "last stdout line is JSON.",
  "",
  "Geometry seed: with --image, GeometryRng(--seed); with --data, the training loader's seed",
  "for the example, GeometryRng(exampleSeed(epochSeed(--seed, --epoch), --index)), so the",
  "views are the geometry multiCropTransform draws for it in that epoch of a DataLoader with",
  "seed --seed (photometric augmentations are not applied).",
];

const log = logger(NAME);

function numberPair(flag: string, value: string): [number, number] {
  const parts = value.split(",");
  if (parts.length !== 2) {
    throw new UsageError(`--${flag} must be two numbers "LO,HI", got "${value}"`);
  }
  return [number(flag, parts[0]), number(flag, parts[1])];
}

/** The data sets `--data` takes. */
const DATA_SETS = ["fashion-scenes"] as const;

/** Where the image comes from: one variant per source. */
type Source =
  | { kind: "image"; path: string }
  | { kind: "fashion-scenes"; index: number; epoch: number; scenes: FashionScenesOptions };

interface Config {
  source: Source;
  out: string;
  seed: number;
  views: ResolvedViewOptions;
}

function parseFlags(args: string[]): Config | null {
  const v = readFlags(FLAGS, args);
  if (v === null) return null;

  const { image, data } = readImageOrData(v, ["index", ...SCENE_FLAGS, "epoch"]);
  let source: Source;
  if (image !== undefined) {
    source = { kind: "image", path: image };
  } else {
    if (!(DATA_SETS as readonly string[]).includes(data)) {
      throw new UsageError(`--data must be one of ${DATA_SETS.join(", ")}, got "${data}"`);
    }
    const index = v.str("index");
    if (index === null) throw new UsageError(`--data ${data} needs --index I`);
    source = {
      kind: "fashion-scenes",
      scenes: readSceneFlags(v),
      index: integer("index", index, 0),
      epoch: integer("epoch", v.get("epoch"), 0),
    };
  }
  const out = v.str("out");
  if (out === null || out === "") throw new UsageError("--out DIR is required");

  // only the flags given override the sampler's defaults (so --ratio's shown default does not
  // round 4/3)
  type IntFlag = "global-crops" | "global-size" | "local-crops" | "local-size" | "num-ref";
  const int = (k: IntFlag | "max-redraws", min: number) =>
    v.given(k) ? integer(k, v.get(k), min) : undefined;
  const real = (k: "min-intersection" | "flip-prob") =>
    v.given(k) ? number(k, v.get(k)) : undefined;
  const pair = (k: "global-scale" | "local-scale" | "ratio") =>
    v.given(k) ? numberPair(k, v.get(k)) : undefined;
  const opts: ViewSamplerOptions = {
    globalCrops: int("global-crops", 1),
    globalSize: int("global-size", 1),
    globalScale: pair("global-scale"),
    localCrops: int("local-crops", 0),
    localSize: int("local-size", 1),
    localScale: pair("local-scale"),
    ratio: pair("ratio"),
    numRef: int("num-ref", 1),
    sampling: v.given("sampling") ? v.get("sampling") as RefSampling : undefined,
    minIntersection: real("min-intersection"),
    maxRedraws: int("max-redraws", 0),
    flipProb: real("flip-prob"),
  };
  const views = usageOn([RangeError], "", () => resolveViewOptions(opts));
  const seedMin = source.kind === "image" ? -Infinity : 0;
  return { source, out, seed: integer("seed", v.get("seed"), seedMin), views };
}

/** What {@link loadSource} returns. */
interface Loaded {
  /** the image [3, H, W] in [0, 1] (the caller frees it) */
  image: Tensor;
  /** a name for it (a path, or the data set's name of the example) */
  name: string;
  /** the seed of the view geometry's GeometryRng and how it was derived */
  geometrySeed: number;
  geometry: string;
  /** facts about the example for views.json's `source` */
  details: Record<string, unknown>;
}

/** The image, its name and the geometry's seed (see the module notes). */
async function loadSource(src: Source, seed: number): Promise<Loaded> {
  switch (src.kind) {
    case "image":
      return {
        image: await usageOn([ImageError], "--image: ", () => loadImage(src.path)),
        name: src.path,
        geometrySeed: seed,
        geometry: "GeometryRng(seed)",
        details: {},
      };
    case "fashion-scenes": {
      const ds = await openScenes(src.scenes, [src.index]);
      const { image, mask, label } = await ds.get(src.index);
      mask?.free();
      return {
        image,
        name: ds.nameOf(src.index),
        geometrySeed: exampleSeed(epochSeed(seed, src.epoch), src.index),
        geometry: "GeometryRng(exampleSeed(epochSeed(seed, epoch), index))",
        details: {
          index: src.index,
          epoch: src.epoch,
          label,
          class: label === undefined ? null : ds.classes[label],
          items: ds.items(src.index),
          options: ds.options,
          cache: ds.cachePath,
        },
      };
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Drawing on [3, H, W] float32 pixel arrays

type Rgb = [number, number, number];

interface Picture {
  width: number;
  height: number;
  /** planar RGB, [3, height, width], values in [0, 1] */
  data: Float32Array;
}

function hsv(h: number, s: number, v: number): Rgb {
  const i = Math.floor(h * 6);
  const f = h * 6 - i;
  const p = v * (1 - s), q = v * (1 - f * s), t = v * (1 - (1 - f) * s);
  return ([[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]] as Rgb[])[i % 6];
}

/** The colour of pair (i, j) point m: hues spread by the golden ratio. */
function pointColour(i: number, j: number, m: number, N: number, M: number): Rgb {
  const k = (i * N + j) * M + m;
  return hsv((k * 0.6180339887498949) % 1, 0.85, 1);
}

/** The colour of view v (crop outlines and tile frames). */
function viewColour(v: number): Rgb {
  return hsv((0.08 + v * 0.6180339887498949) % 1, 1, 0.9);
}

function toPicture(x: Tensor): Picture {
  const data = scope(() => x.to({ dtype: "float32" }).contiguous().toTypedArray()) as Float32Array;
  return { width: x.size(2), height: x.size(1), data };
}

function setPixel(p: Picture, x: number, y: number, c: Rgb): void {
  if (x < 0 || y < 0 || x >= p.width || y >= p.height) return;
  const n = p.width * p.height, o = y * p.width + x;
  p.data[o] = c[0];
  p.data[n + o] = c[1];
  p.data[2 * n + o] = c[2];
}

/** A dot of radius r at grid_sample point (x, y), with a dark rim. */
function drawDot(p: Picture, pt: readonly number[], r: number, c: Rgb): void {
  const cx = ((pt[0] + 1) / 2) * p.width - 0.5;
  const cy = ((pt[1] + 1) / 2) * p.height - 0.5;
  const R = r + 1;
  for (let y = Math.floor(cy - R); y <= Math.ceil(cy + R); y++) {
    for (let x = Math.floor(cx - R); x <= Math.ceil(cx + R); x++) {
      const d = Math.hypot(x - cx, y - cy);
      if (d <= r) setPixel(p, x, y, c);
      else if (d <= R) setPixel(p, x, y, [0, 0, 0]);
    }
  }
}

function drawRect(
  p: Picture,
  x1: number,
  y1: number,
  x2: number,
  y2: number,
  c: Rgb,
  t: number,
): void {
  for (let k = 0; k < t; k++) {
    for (let x = x1; x <= x2; x++) {
      setPixel(p, x, y1 + k, c);
      setPixel(p, x, y2 - k, c);
    }
    for (let y = y1; y <= y2; y++) {
      setPixel(p, x1 + k, y, c);
      setPixel(p, x2 - k, y, c);
    }
  }
}

function paste(dst: Picture, src: Picture, x0: number, y0: number): void {
  const nd = dst.width * dst.height, ns = src.width * src.height;
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < src.height; y++) {
      const so = c * ns + y * src.width;
      const d = c * nd + (y0 + y) * dst.width + x0;
      dst.data.set(src.data.subarray(so, so + src.width), d);
    }
  }
}

async function savePicture(path: string, p: Picture): Promise<void> {
  using t = fromTypedArray(p.data, [3, p.height, p.width]);
  await savePng(path, t);
}

/** The views with their reference points drawn. */
function drawViews(views: Tensor[], plan: ViewPlan): Picture[] {
  const G = plan.globalCrops, N = views.length, M = plan.numRef;
  return views.map((v, j) => {
    const pic = toPicture(v);
    const r = Math.max(1.5, Math.min(pic.width, pic.height) / 48);
    // as the student view j of every global view i …
    for (let i = 0; i < G; i++) {
      for (let m = 0; m < M; m++) {
        drawDot(pic, plan.studentPoints[j][i][m], r, pointColour(i, j, m, N, M));
      }
    }
    // … and, for a global view, as the teacher of every view
    if (j < G) {
      for (let k = 0; k < N; k++) {
        for (let m = 0; m < M; m++) {
          drawDot(pic, plan.teacherPoints[j][k][m], r, pointColour(j, k, m, N, M));
        }
      }
    }
    return pic;
  });
}

const PAD = 8;
const FRAME = 2;

/** The original with the crop boxes, then the globals in a row, the locals in rows below. */
function contactSheet(image: Tensor, plan: ViewPlan, pics: Picture[]): Picture {
  const { width: W, height: H } = plan.image;
  const G = plan.globalCrops;
  const rowH = Math.max(...pics.slice(0, G).map((p) => p.height), 64);
  const s = Math.min(rowH / H, (4 * rowH) / W);
  const w = Math.max(1, Math.round(W * s)), h = Math.max(1, Math.round(H * s));
  const scaled = w === W && h === H
    ? image
    : scope(() =>
      interpolate(image.unsqueeze(0), { size: [h, w], mode: "bicubic", antialias: true })
        .clamp(0, 1).squeeze(0)
    );
  const orig = toPicture(scaled);
  if (scaled !== image) scaled.free();
  const sx = w / W, sy = h / H;
  plan.views.forEach((v, k) => {
    const [x1, y1, x2, y2] = v.box;
    drawRect(
      orig,
      Math.round(x1 * sx),
      Math.round(y1 * sy),
      Math.max(Math.round(x2 * sx) - 1, Math.round(x1 * sx)),
      Math.max(Math.round(y2 * sy) - 1, Math.round(y1 * sy)),
      viewColour(k),
      FRAME,
    );
  });
  // layout: tiles are framed pictures; row 0 = original + globals, then locals wrapped
  const tile = (p: Picture) => [p.width + 2 * FRAME, p.height + 2 * FRAME];
  const places: [number, number][] = [];
  let x = PAD + w + PAD;
  let rowTop = PAD;
  let rowHeight = h;
  for (let k = 0; k < G; k++) {
    places.push([x, rowTop]);
    x += tile(pics[k])[0] + PAD;
    rowHeight = Math.max(rowHeight, tile(pics[k])[1]);
  }
  let sheetW = x;
  const wrapW = Math.max(sheetW, 4 * rowH);
  rowTop += rowHeight + PAD;
  x = PAD;
  rowHeight = 0;
  for (let k = G; k < pics.length; k++) {
    const [tw, th] = tile(pics[k]);
    if (x > PAD && x + tw + PAD > wrapW) {
      rowTop += rowHeight + PAD;
      x = PAD;
      rowHeight = 0;
    }
    places.push([x, rowTop]);
    x += tw + PAD;
    sheetW = Math.max(sheetW, x);
    rowHeight = Math.max(rowHeight, th);
  }
  const sheetH = rowTop + rowHeight + (rowHeight > 0 ? PAD : 0);
  const sheet: Picture = {
    width: sheetW,
    height: sheetH,
    data: new Float32Array(3 * sheetW * sheetH).fill(1),
  };
  paste(sheet, orig, PAD, PAD);
  pics.forEach((p, k) => {
    const [px, py] = places[k];
    const [tw, th] = tile(p);
    drawRect(sheet, px, py, px + tw - 1, py + th - 1, viewColour(k), FRAME);
    paste(sheet, p, px + FRAME, py + FRAME);
  });
  return sheet;
}

async function main(args: string[]): Promise<number> {
  const cfg = parseFlags(args);
  if (cfg === null) return printHelp(FLAGS, HELP_INTRO);
  const t0 = performance.now();
  try {
    await Deno.mkdir(cfg.out, { recursive: true });
  } catch (e) {
    throw new UsageError(`--out: cannot create directory ${cfg.out}: ${(e as Error).message}`);
  }
  const { image, name, geometrySeed, geometry, details } = await loadSource(cfg.source, cfg.seed);
  try {
    const [H, W] = [image.size(1), image.size(2)];
    log(
      `${name}: ${W}×${H}, seed ${cfg.seed}` +
        (cfg.source.kind === "image" ? "" : ` (geometry seed ${geometrySeed} = ${geometry})`),
    );
    const plan = sampleViews(W, H, cfg.views, new GeometryRng(geometrySeed));
    const { redraws, fallbacks, unmet } = plan.stats;
    log(
      `${plan.globalCrops} global + ${plan.localCrops} local views, ${plan.numRef} points per ` +
        `pair; ${redraws} redraws, ${fallbacks} fallbacks (${unmet} below the overlap rule)`,
    );
    const views = applyViews(image, plan);
    let pics: Picture[];
    try {
      pics = drawViews(views, plan);
    } finally {
      for (const v of views) v.free();
    }
    const files: string[] = [];
    for (const [k, v] of plan.views.entries()) {
      const file = `view_${String(k).padStart(2, "0")}_${v.kind}.png`;
      await savePicture(`${cfg.out}/${file}`, pics[k]);
      files.push(file);
    }
    const sheetFile = "contact_sheet.png";
    await savePicture(`${cfg.out}/${sheetFile}`, contactSheet(image, plan, pics));
    const json = viewPlanToJson(plan);
    const doc = {
      image: json.image,
      views: json.views.map((v, k) => ({ ...v, file: files[k] })),
      teacher_points: json.teacher_points,
      student_points: json.student_points,
      stats: json.stats,
      seed: cfg.seed,
      geometry_seed: geometrySeed,
      geometry,
      source: { kind: cfg.source.kind, name, ...details },
      options: cfg.views,
      contact_sheet: sheetFile,
    };
    const jsonFile = "views.json";
    const tmp = `${cfg.out}/${jsonFile}.tmp-${Deno.pid}`;
    await Deno.writeTextFile(tmp, JSON.stringify(doc) + "\n");
    await Deno.rename(tmp, `${cfg.out}/${jsonFile}`);
    const seconds = (performance.now() - t0) / 1000;
    log(`wrote ${files.length} views, ${sheetFile} and ${jsonFile} to ${cfg.out}`);
    console.log(JSON.stringify({
      out: cfg.out,
      views: files.length,
      files,
      contact_sheet: sheetFile,
      json: jsonFile,
      stats: plan.stats,
      seconds: Number(seconds.toFixed(3)),
    }));
    return 0;
  } finally {
    image.free();
  }
}

if (import.meta.main) await runMain(NAME, main);
