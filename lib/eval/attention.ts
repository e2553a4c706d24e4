/**
 * Attention and reference maps of a ViT (the paper's Fig. 6): the last block's class-token
 * attention over the patches, per head; each reference token's attention over the patches; DINO's
 * "keep a fraction of the attention mass" masks; and their rendering as colour-mapped heat maps
 * overlaid on the image, with a titled contact sheet.
 *
 * ```ts
 * import { createViT, imagenetNormalize, loadImage, resizeImage, tensor } from "../../mod.ts";
 * import { attentionMaps, renderHeatmap } from "./attention.ts";
 *
 * const vit = createViT("vit_small", { patchSize: 16 }).eval();
 * const rgb = resizeImage(await loadImage("photo.jpg"), 224); // [3, 224, 224] in [0, 1]
 * const maps = attentionMaps(vit, imagenetNormalize(rgb), { points: tensor([[0, 0]]) });
 * await renderHeatmap(rgb, maps.cls.select(0, 0)).save("head0.png"); // maps.cls: [6, 14, 14]
 * ```
 *
 * The maps come from {@link VisionTransformer.lastSelfAttention}: the softmax rows of the last
 * block, over the tokens [cls, refs, patches], with the reference-token mask applied (the
 * official `get_last_selfattention` passes no mask to the last block; with the default mask
 * `all2pos_pos2cls_eye` nothing attends to a reference token, so the class row is the same as
 * without reference tokens, while a reference row puts its mass on the patches and on itself).
 * A class map sums to 1 minus the class token's attention to itself; a reference map (default
 * mask) to 1 minus the reference token's attention to itself.
 *
 * @module
 */
import {
  fromTypedArray,
  interpolate,
  noGrad,
  scope,
  type Tensor,
  TorchError,
} from "../torch/mod.ts";
import { DEFAULT_MASK_MODE, type MaskMode, type VisionTransformer } from "../nn/mod.ts";
import { Canvas, type Color, parseColor, textHeight, textWidth } from "../data/mod.ts";

// ---- the maps ------------------------------------------------------------------------------

/** Options of {@link attentionMaps} and the functions built on it. */
export interface AttentionMapOptions {
  /**
   * Reference points [K, 2], (x, y) in [−1, 1] (grid_sample convention, align_corners false,
   * relative to the image): one reference token each. Optional for the class maps.
   */
  points?: Tensor;
  /** the reference-token mask mode (default `all2pos_pos2cls_eye`, the paper's) */
  maskMode?: MaskMode;
}

/** The last block's attention over the patches (see {@link attentionMaps}). */
export interface AttentionMaps {
  /** the class token's attention to each patch, per head: [heads, h, w] */
  cls: Tensor;
  /** each reference token's attention to each patch, per head: [K, heads, h, w] (null without points) */
  ref: Tensor | null;
  /** the patch grid [h, w] (image side / patch side) */
  grid: [number, number];
  /** number of heads */
  heads: number;
}

function checkInputs(
  vit: VisionTransformer,
  image: Tensor,
  points: Tensor | undefined,
  op: string,
) {
  const s = image.shape;
  if (s.length !== 3 || s[0] !== vit.config.inChans) {
    throw new TorchError(
      op,
      `expected one normalised image [${vit.config.inChans}, H, W], got [${s.join(", ")}]`,
    );
  }
  const p = vit.patchSize;
  if (s[1] < p || s[2] < p || s[1] % p !== 0 || s[2] % p !== 0) {
    throw new TorchError(
      op,
      `image size ${s[1]}×${s[2]} is not a positive multiple of the patch size ${p}: resize or ` +
        `crop it first`,
    );
  }
  if (points !== undefined) {
    const ps = points.shape;
    if (ps.length !== 2 || ps[1] !== 2) {
      throw new TorchError(op, `points must be [K, 2] (x, y), got [${ps.join(", ")}]`);
    }
  }
}

/**
 * The last block's attention of one image [C, H, W] (normalised as the model expects; H and W
 * multiples of the patch size), from the class token and from each reference token (one per
 * point), over the patch tokens, per head. One forward pass without gradients; a model in
 * training mode is switched to evaluation mode for it (no drop-path or dropout) and back.
 * The tensors returned are the caller's to free.
 */
export function attentionMaps(
  vit: VisionTransformer,
  image: Tensor,
  opts: AttentionMapOptions = {},
): AttentionMaps {
  checkInputs(vit, image, opts.points, "attentionMaps");
  const p = vit.patchSize;
  const h = image.size(1) / p, w = image.size(2) / p;
  const N = h * w;
  const K = opts.points?.size(0) ?? 0;
  const heads = vit.config.numHeads;
  const wasTraining = vit.training;
  if (wasTraining) vit.eval();
  try {
    const [cls, ref] = noGrad(() =>
      scope(() => {
        const pts = K > 0 ? opts.points!.unsqueeze(0) : undefined;
        const attn = vit.lastSelfAttention(image.unsqueeze(0), {
          points: pts,
          maskMode: opts.maskMode ?? DEFAULT_MASK_MODE,
        }).select(0, 0); // [heads, T, T], tokens [cls, refs, patches]
        const rows = attn.to({ dtype: "float32" });
        const cls = rows.select(1, 0).narrow(1, 1 + K, N).reshape([heads, h, w]).contiguous();
        const ref = K > 0
          ? rows.narrow(1, 1, K).narrow(2, 1 + K, N).permute([1, 0, 2]).reshape([K, heads, h, w])
            .contiguous()
          : null;
        return [cls, ref] as const;
      })
    );
    return { cls, ref, grid: [h, w], heads };
  } finally {
    if (wasTraining) vit.train(true);
  }
}

/**
 * The last block's class-token attention over the patches of one normalised image [C, H, W],
 * per head: [heads, H/p, W/p] (DINO's attention maps). With `points`, reference tokens take
 * part in the forward pass (under the default mask they change nothing here).
 */
export function classAttentionMaps(
  vit: VisionTransformer,
  image: Tensor,
  opts: AttentionMapOptions = {},
): Tensor {
  const m = attentionMaps(vit, image, opts);
  m.ref?.free();
  return m.cls;
}

/**
 * Each reference token's attention over the patches of one normalised image [C, H, W], per
 * head: [K, heads, H/p, W/p] for points [K, 2] ((x, y) in [−1, 1], grid_sample convention),
 * under `maskMode` (default `all2pos_pos2cls_eye`).
 */
export function referenceAttentionMaps(
  vit: VisionTransformer,
  image: Tensor,
  points: Tensor,
  opts: { maskMode?: MaskMode } = {},
): Tensor {
  if (points.ndim !== 2 || points.size(0) < 1) {
    throw new TorchError(
      "referenceAttentionMaps",
      `points must be [K, 2] with K ≥ 1, got [${points.shape.join(", ")}]`,
    );
  }
  const m = attentionMaps(vit, image, { ...opts, points });
  m.cls.free();
  return m.ref!;
}

/**
 * DINO's thresholded attention: for each map (the last two dimensions of `maps`, e.g.
 * [heads, h, w]), normalised to sum 1, the smallest set of largest values holding at least
 * `keep` of the mass (default 0.6, DINO's): a patch is kept when the mass of the patches ranked
 * above it is below `keep`. Returns a float32 tensor of 0/1 of the same shape.
 */
export function attentionMassMask(maps: Tensor, keep = 0.6): Tensor {
  if (!(keep > 0 && keep <= 1)) {
    throw new TorchError("attentionMassMask", `keep must be in (0, 1], got ${keep}`);
  }
  if (maps.ndim < 2) {
    throw new TorchError(
      "attentionMassMask",
      `expected maps [..., h, w], got [${maps.shape.join(", ")}]`,
    );
  }
  const shape = maps.shape;
  const n = shape[shape.length - 1] * shape[shape.length - 2];
  const v = scope(() =>
    maps.to({ dtype: "float32", device: "cpu" }).contiguous().toTypedArray()
  ) as Float32Array;
  const out = new Float32Array(v.length);
  const order = new Array<number>(n);
  for (let o = 0; o < v.length; o += n) {
    let total = 0;
    for (let i = 0; i < n; i++) total += v[o + i];
    for (let i = 0; i < n; i++) order[i] = i;
    order.sort((a, b) => v[o + b] - v[o + a] || a - b);
    let above = 0;
    for (const i of order) {
      if (!(total > 0) || above / total >= keep) break;
      out[o + i] = 1;
      above += v[o + i];
    }
  }
  return fromTypedArray(out, shape, { device: maps.device });
}

// ---- colour maps -----------------------------------------------------------------------------

/** The colour maps of {@link colorize}. */
export const COLORMAPS = ["inferno", "viridis", "jet", "gray"] as const;

/** A colour map name. */
export type ColormapName = typeof COLORMAPS[number];

type Rgb = [number, number, number];

const hex = (s: string): Rgb => parseColor(s);

/** Anchors at 0, 1/8, …, 1 (matplotlib's perceptually uniform maps, sampled). */
const ANCHORS: Record<"inferno" | "viridis", Rgb[]> = {
  inferno: [
    "#000004",
    "#210c4a",
    "#57106e",
    "#89226a",
    "#bc3754",
    "#e55c30",
    "#f98e09",
    "#f6d746",
    "#fcffa4",
  ].map(hex),
  viridis: [
    "#440154",
    "#472d7b",
    "#3b528b",
    "#2c728e",
    "#21918c",
    "#27ad81",
    "#5ec962",
    "#aadc32",
    "#fde725",
  ].map(hex),
};

/** The colour of `t` in [0, 1] (clamped; NaN as 0) under colour map `name`, as RGB bytes. */
export function colorize(t: number, name: ColormapName = "inferno"): [number, number, number] {
  const u = t > 0 ? (t < 1 ? t : 1) : 0;
  switch (name) {
    case "gray": {
      const g = Math.round(255 * u);
      return [g, g, g];
    }
    case "jet": {
      const ch = (c: number) =>
        Math.round(255 * Math.max(0, Math.min(1, 1.5 - Math.abs(4 * u - c))));
      return [ch(3), ch(2), ch(1)];
    }
    case "inferno":
    case "viridis": {
      const a = ANCHORS[name];
      const x = u * (a.length - 1);
      const i = Math.min(a.length - 2, Math.floor(x));
      const f = x - i;
      return [0, 1, 2].map((c) => Math.round(a[i][c] + (a[i + 1][c] - a[i][c]) * f)) as Rgb;
    }
    default:
      throw new RangeError(
        `unknown colour map "${name}"; expected one of ${COLORMAPS.join(", ")}`,
      );
  }
}

// ---- rendering -------------------------------------------------------------------------------

/** A marker drawn on a rendered map: a point in grid_sample coordinates, optionally labelled. */
export interface Marker {
  /** x in [−1, 1] (left to right) */
  x: number;
  /** y in [−1, 1] (top to bottom) */
  y: number;
  /** text drawn beside the marker (e.g. the reference index) */
  label?: string;
  /** fill colour (default cyan) */
  color?: Color;
}

/** Options of {@link renderHeatmap}. */
export interface HeatmapOptions {
  /** upsampling of the patch map to the image: "nearest" (default, DINO's) or "bilinear" */
  upsample?: "nearest" | "bilinear";
  /** opacity of the heat map over the image, 0–1 (default 0.6; 1 shows the map alone) */
  alpha?: number;
  /** colour map (default "inferno") */
  colormap?: ColormapName;
  /**
   * map values to [0, 1] for the colour map: "minmax" per map (default), "max" (divide by the
   * maximum) or "none" (values used as they are, clamped)
   */
  normalize?: "minmax" | "max" | "none";
  /** whole-number magnification of the output (default 1: the image's size) */
  zoom?: number;
  /** markers to draw (e.g. the reference point) */
  markers?: readonly Marker[];
}

function checkZoom(zoom: number | undefined, op: string): number {
  const z = zoom ?? 1;
  if (!Number.isInteger(z) || z < 1) {
    throw new TorchError(op, `zoom must be a positive integer, got ${zoom}`);
  }
  return z;
}

function checkRgb(image: Tensor, op: string): [number, number] {
  const s = image.shape;
  if (s.length !== 3 || s[0] !== 3) {
    throw new TorchError(op, `expected an image [3, H, W] in [0, 1], got [${s.join(", ")}]`);
  }
  return [s[1], s[2]];
}

/**
 * The image [3, H, W] (values in [0, 1], clamped) on a {@link Canvas} of H·zoom × W·zoom,
 * magnified by pixel replication.
 */
export function imageCanvas(image: Tensor, zoom = 1): Canvas {
  const [H, W] = checkRgb(image, "imageCanvas");
  const z = checkZoom(zoom, "imageCanvas");
  const v = scope(() =>
    image.to({ dtype: "float32", device: "cpu" }).contiguous().toTypedArray()
  ) as Float32Array;
  const cv = new Canvas(W * z, H * z);
  const n = H * W, d = cv.data, CW = W * z;
  for (let y = 0; y < H * z; y++) {
    const sy = Math.floor(y / z);
    for (let x = 0; x < CW; x++) {
      const s = sy * W + Math.floor(x / z), o = 3 * (y * CW + x);
      for (let c = 0; c < 3; c++) {
        const u = v[c * n + s];
        d[o + c] = u > 0 ? (u >= 1 ? 255 : Math.floor(u * 255 + 0.5)) : 0;
      }
    }
  }
  return cv;
}

/** A map [h, w] upsampled to [H, W] as a Float32Array. */
function upsampleMap(
  map: Tensor,
  H: number,
  W: number,
  mode: "nearest" | "bilinear",
): Float32Array {
  if (map.ndim !== 2) {
    throw new TorchError("renderHeatmap", `expected a map [h, w], got [${map.shape.join(", ")}]`);
  }
  if (mode !== "nearest" && mode !== "bilinear") {
    throw new TorchError("renderHeatmap", `upsample must be nearest or bilinear, got "${mode}"`);
  }
  return scope(() => {
    const m = map.to({ dtype: "float32", device: "cpu" }).reshape([1, 1, map.size(0), map.size(1)]);
    const up = map.size(0) === H && map.size(1) === W
      ? m
      : interpolate(m, { size: [H, W], mode, alignCorners: false });
    return up.contiguous().toTypedArray();
  }) as Float32Array;
}

function normalizeValues(v: Float32Array, how: "minmax" | "max" | "none"): void {
  if (how === "none") return;
  let lo = Infinity, hi = -Infinity;
  for (const x of v) {
    if (x < lo) lo = x;
    if (x > hi) hi = x;
  }
  if (how === "max") lo = 0;
  const span = hi - lo;
  for (let i = 0; i < v.length; i++) v[i] = span > 0 ? (v[i] - lo) / span : 0;
}

/** Draws the markers on a canvas showing an image of the canvas's size. */
export function drawMarkers(cv: Canvas, markers: readonly Marker[]): void {
  const r = Math.max(2, Math.min(cv.width, cv.height) / 40);
  for (const m of markers) {
    const cx = ((m.x + 1) / 2) * cv.width - 0.5;
    const cy = ((m.y + 1) / 2) * cv.height - 0.5;
    cv.disc(cx, cy, r + 1.5, "#000000");
    cv.disc(cx, cy, r, m.color ?? "#00ffff");
    if (m.label !== undefined && m.label !== "") {
      const gap = r + 4;
      const tx = cx + gap + textWidth(m.label) <= cv.width ? cx + gap : cx - gap;
      const align = tx > cx ? "left" : "right";
      const ty = Math.max(0, Math.min(cv.height - textHeight(), cy - textHeight() / 2));
      // a dark halo keeps the label readable on any background
      for (const [dx, dy] of [[-1, 0], [1, 0], [0, -1], [0, 1]]) {
        cv.text(m.label, tx + dx, ty + dy, { color: "#000000", align });
      }
      cv.text(m.label, tx, ty, { color: m.color ?? "#00ffff", align });
    }
  }
}

/**
 * A patch map [h, w] (e.g. one head of {@link AttentionMaps.cls}) colour-mapped, upsampled to
 * the image and blended over the image [3, H, W] in [0, 1] (the un-normalised pixels the model
 * saw): a Canvas of H·zoom × W·zoom. Save it with `canvas.save(path)`.
 */
export function renderHeatmap(image: Tensor, map: Tensor, opts: HeatmapOptions = {}): Canvas {
  const [H, W] = checkRgb(image, "renderHeatmap");
  const z = checkZoom(opts.zoom, "renderHeatmap");
  const alpha = opts.alpha ?? 0.6;
  if (!(alpha >= 0 && alpha <= 1)) {
    throw new TorchError("renderHeatmap", `alpha must be in [0, 1], got ${opts.alpha}`);
  }
  const cmap = opts.colormap ?? "inferno";
  if (!(COLORMAPS as readonly string[]).includes(cmap)) {
    throw new TorchError(
      "renderHeatmap",
      `unknown colour map "${cmap}"; expected one of ${COLORMAPS.join(", ")}`,
    );
  }
  const values = upsampleMap(map, H * z, W * z, opts.upsample ?? "nearest");
  normalizeValues(values, opts.normalize ?? "minmax");
  const cv = imageCanvas(image, z);
  const d = cv.data;
  // 256-entry lookup table of the colour map
  const lut = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) lut.set(colorize(i / 255, cmap), 3 * i);
  for (let i = 0; i < values.length; i++) {
    const u = values[i];
    const k = 3 * (u > 0 ? (u < 1 ? Math.round(u * 255) : 255) : 0);
    for (let c = 0; c < 3; c++) {
      d[3 * i + c] = Math.round(d[3 * i + c] * (1 - alpha) + lut[k + c] * alpha);
    }
  }
  if (opts.markers) drawMarkers(cv, opts.markers);
  return cv;
}

/** Options of {@link renderMask}. */
export interface MaskRenderOptions {
  /** colour of the kept patches (default "#ff3030") */
  color?: Color;
  /** opacity of that colour (default 0.5) */
  alpha?: number;
  /** how much the rest of the image is darkened, 0–1 (default 0.5) */
  dim?: number;
  /** whole-number magnification (default 1) */
  zoom?: number;
  /** markers to draw */
  markers?: readonly Marker[];
}

/**
 * A 0/1 patch mask [h, w] (e.g. from {@link attentionMassMask}) over the image [3, H, W]:
 * kept patches tinted, the rest darkened (nearest upsampling: each patch a block).
 */
export function renderMask(image: Tensor, mask: Tensor, opts: MaskRenderOptions = {}): Canvas {
  const [H, W] = checkRgb(image, "renderMask");
  const z = checkZoom(opts.zoom, "renderMask");
  const values = upsampleMap(mask, H * z, W * z, "nearest");
  const cv = imageCanvas(image, z);
  const c = parseColor(opts.color ?? "#ff3030");
  const alpha = opts.alpha ?? 0.5, dim = opts.dim ?? 0.5;
  const d = cv.data;
  for (let i = 0; i < values.length; i++) {
    for (let k = 0; k < 3; k++) {
      const o = 3 * i + k;
      d[o] = values[i] > 0.5
        ? Math.round(d[o] * (1 - alpha) + c[k] * alpha)
        : Math.round(d[o] * (1 - dim));
    }
  }
  if (opts.markers) drawMarkers(cv, opts.markers);
  return cv;
}
