/**
 * Dependency-free plots written as PNG files: line plots (training curves, ablations with a
 * mean ± std band or error bars over seeds, log-scale losses) and grouped bar plots (tables of
 * results). Everything is drawn into an 8-bit RGB {@link Canvas} here — anti-aliased lines and
 * discs, rectangles, and text in a built-in 5×7 bitmap font (ASCII 32–126 and a few symbols
 * such as ± × µ σ °, scaled by whole numbers) — and encoded with this project's PNG codec.
 *
 * ```ts
 * import { meanStd, saveLinePlot } from "./plot.ts";
 *
 * const steps = [0, 100, 200, 300];
 * const { mean, std } = meanStd([[2.1, 1.5, 1.2, 1.1], [2.0, 1.6, 1.3, 1.0]]);
 * await saveLinePlot("runs/ablation.png", {
 *   title: "k-NN accuracy",
 *   xLabel: "step",
 *   series: [{ name: "DenseDINO (2 seeds)", x: steps, y: mean, std }],
 * });
 * ```
 *
 * Non-finite points (and, on a log axis, points ≤ 0) are skipped and leave a gap in the line;
 * a point with no drawable neighbour gets a marker so that it stays visible.
 *
 * @module
 */
import { writeFileAtomic } from "../torch/mod.ts";
import { ImageError } from "./error.ts";
import { encodePngPixels } from "./png.ts";
import { formatNumber } from "./progress.ts";

// ---- colours -----------------------------------------------------------------------------

/** A colour: `"#rrggbb"`, `"#rgb"`, a few names (black, white, grey/gray) or `[r, g, b]` bytes. */
export type Color = string | readonly [number, number, number];

/** Matplotlib's "tab10" palette, the default colours of successive series. */
export const TAB10: readonly string[] = [
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
];

type Rgb = [number, number, number];

const NAMED: Record<string, string> = {
  black: "#000000",
  white: "#ffffff",
  grey: "#808080",
  gray: "#808080",
};

/** Parses a {@link Color} into `[r, g, b]` bytes; throws `RangeError` for anything else. */
export function parseColor(c: Color): [number, number, number] {
  if (typeof c !== "string") {
    if (c.length === 3 && c.every((v) => Number.isInteger(v) && v >= 0 && v <= 255)) {
      return [c[0], c[1], c[2]];
    }
    throw new RangeError(`a colour needs three bytes 0..255, got [${c.join(", ")}]`);
  }
  const s = NAMED[c.trim().toLowerCase()] ?? c.trim();
  const m = /^#?([0-9a-f]{6}|[0-9a-f]{3})$/i.exec(s);
  if (m === null) throw new RangeError(`not a colour: ${JSON.stringify(c)}`);
  const h = m[1].length === 3 ? [...m[1]].map((d) => d + d).join("") : m[1];
  return [0, 2, 4].map((i) => parseInt(h.slice(i, i + 2), 16)) as Rgb;
}

const TEXT: Rgb = [34, 34, 34];
const FRAME: Rgb = [68, 68, 68];
const GRID: Rgb = [229, 229, 229];
const WHITE: Rgb = [255, 255, 255];

// ---- the 5×7 font ------------------------------------------------------------------------

/**
 * ASCII 32–126, five column bytes per glyph (least significant bit = top row; rows 0–6 hold
 * the glyph, row 7 the descenders of g j p q y), eight glyphs per string (the classic 5×7 LCD
 * font).
 */
const FONT_ASCII = [
  "0000000000 00005f0000 0007000700 147f147f14 242a7f2a12 2313086462 3649552250 0005030000", //  !"#$%&'
  "001c224100 0041221c00 082a1c2a08 08083e0808 0050300000 0808080808 0060600000 2010080402", // ()*+,-./
  "3e5149453e 00427f4000 4261514946 2141454b31 1814127f10 2745454539 3c4a494930 0171090503", // 01234567
  "3649494936 064949291e 0036360000 0056360000 0008142241 1414141414 4122140800 0201510906", // 89:;<=>?
  "324979413e 7e1111117e 7f49494936 3e41414122 7f4141221c 7f49494941 7f09090101 3e41415132", // @ABCDEFG
  "7f0808087f 00417f4100 2040413f01 7f08142241 7f40404040 7f0204027f 7f0408107f 3e4141413e", // HIJKLMNO
  "7f09090906 3e4151215e 7f09192946 4649494931 01017f0101 3f4040403f 1f2040201f 7f2018207f", // PQRSTUVW
  "6314081463 0304780403 6151494543 007f414100 0204081020 0041417f00 0402010204 4040404040", // XYZ[\]^_
  "0001020400 2054545478 7f48444438 3844444420 384444487f 3854545418 087e090102 98a4a4a47c", // `abcdefg
  "7f08040478 00447d4000 4080847d00 007f102844 00417f4000 7c04180478 7c08040478 3844444438", // hijklmno
  "fc24242418 18242424fc 7c08040408 4854545420 043f444020 3c4040207c 1c2040201c 3c4030403c", // pqrstuvw
  "4428102844 1ca0a0a07c 4464544c44 0008364100 00007f0000 0041360800 0804081008", //            xyz{|}~
].join("").replace(/\s+/g, "");

/** A few symbols beyond ASCII, same layout. */
const FONT_EXTRA: Record<string, string> = {
  "±": "44445f4444",
  "×": "2214081422",
  "·": "0000180000",
  "°": "0006090906",
  "µ": "fc4040207c",
  "μ": "fc4040207c",
  "σ": "3844443c04",
  "–": "0808080808",
  "—": "0808080808",
  "−": "0808080808",
  "→": "08082a1c08",
};

const FONT: Map<number, number[]> = (() => {
  const m = new Map<number, number[]>();
  const cols = (hex: string, at: number) =>
    [0, 1, 2, 3, 4].map((k) => parseInt(hex.slice(at + 2 * k, at + 2 * k + 2), 16));
  for (let i = 0; i < 95; i++) m.set(32 + i, cols(FONT_ASCII, 10 * i));
  for (const [ch, hex] of Object.entries(FONT_EXTRA)) m.set(ch.codePointAt(0)!, cols(hex, 0));
  return m;
})();

const UNKNOWN = FONT.get("?".codePointAt(0)!)!;

/** The width in pixels of `text` in the built-in font at `scale` (6 pixels a character). */
export function textWidth(text: string, scale = 1): number {
  const n = [...text].length;
  return n === 0 ? 0 : (6 * n - 1) * scale;
}

/** The height in pixels of a line of text at `scale` (7 pixels, descenders excluded). */
export function textHeight(scale = 1): number {
  return 7 * scale;
}

/** `text` cut to fit `width` pixels at `scale`, marked by a trailing "." (the font has no
 * ellipsis); "" when not even one character fits. */
function fitText(text: string, width: number, scale = 1): string {
  if (textWidth(text, scale) <= width) return text;
  const n = Math.floor((width / scale + 1) / 6) - 1;
  return n <= 0 ? "" : [...text].slice(0, n).join("") + ".";
}

/** Options of {@link Canvas.text}. */
export interface TextOptions {
  /** the text colour (default near-black) */
  color?: Color;
  /** a whole-number magnification of the 5×7 font (default 1) */
  scale?: number;
  /** where `x` is along the text: its left end (default), centre or right end */
  align?: "left" | "center" | "right";
  /** where `y` is: the top of the glyphs (default), their middle or their bottom */
  baseline?: "top" | "middle" | "bottom";
  /** rotate 90° counter-clockwise (reads bottom to top); the text is then centred on (x, y) */
  vertical?: boolean;
}

// ---- the canvas --------------------------------------------------------------------------

/** An axis-aligned pixel rectangle, inclusive: columns x0..x1, rows y0..y1. */
export interface PixelRect {
  /** the first column */
  x0: number;
  /** the first row */
  y0: number;
  /** the last column */
  x1: number;
  /** the last row */
  y1: number;
}

/**
 * An 8-bit RGB image to draw on: `data` holds `width · height · 3` bytes, row-major. Pixel
 * (i, j) has its centre at (i, j); everything drawn outside the image is clipped. Lines and
 * discs are anti-aliased (coverage from the distance to the shape), text and rectangles are
 * pixel-exact.
 */
export class Canvas {
  /** width in pixels */
  readonly width: number;
  /** height in pixels */
  readonly height: number;
  /** the RGB bytes, row-major, interleaved */
  readonly data: Uint8Array;

  /** A `width × height` canvas filled with `background` (default white). */
  constructor(width: number, height: number, background: Color = WHITE) {
    if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
      throw new RangeError(`a canvas needs a positive integer size, got ${width}×${height}`);
    }
    this.width = width;
    this.height = height;
    this.data = new Uint8Array(width * height * 3);
    this.fillRect(0, 0, width, height, background);
  }

  /** The colour of pixel (x, y) as `[r, g, b]`. */
  get(x: number, y: number): [number, number, number] {
    const o = 3 * (y * this.width + x);
    return [this.data[o], this.data[o + 1], this.data[o + 2]];
  }

  /** Blends `color` over pixel (x, y) with opacity `alpha` in [0, 1]; ignored outside. */
  blend(x: number, y: number, color: Color, alpha = 1): void {
    this.#blend(x, y, typeof color === "string" ? parseColor(color) : color, alpha);
  }

  #blend(x: number, y: number, c: readonly number[], a: number): void {
    if (x < 0 || y < 0 || x >= this.width || y >= this.height || !(a > 0)) return;
    const o = 3 * (y * this.width + x);
    const d = this.data;
    if (a >= 1) {
      d[o] = c[0];
      d[o + 1] = c[1];
      d[o + 2] = c[2];
    } else {
      d[o] = Math.round(d[o] + (c[0] - d[o]) * a);
      d[o + 1] = Math.round(d[o + 1] + (c[1] - d[o + 1]) * a);
      d[o + 2] = Math.round(d[o + 2] + (c[2] - d[o + 2]) * a);
    }
  }

  /** Fills the `w × h` rectangle whose top-left pixel is (x, y) (rounded), with opacity `alpha`. */
  fillRect(x: number, y: number, w: number, h: number, color: Color, alpha = 1): void {
    const c = parseColor(color);
    const x0 = Math.max(0, Math.round(x)), y0 = Math.max(0, Math.round(y));
    const x1 = Math.min(this.width, Math.round(x + w)),
      y1 = Math.min(this.height, Math.round(y + h));
    for (let j = y0; j < y1; j++) for (let i = x0; i < x1; i++) this.#blend(i, j, c, alpha);
  }

  /** Copies `src` onto this canvas with its top-left corner at (x, y) (rounded); what falls
   * outside is left out. */
  paste(src: Canvas, x: number, y: number): void {
    x = Math.round(x);
    y = Math.round(y);
    const i0 = Math.max(0, -x), i1 = Math.min(src.width, this.width - x);
    if (i1 <= i0) return;
    for (let j = Math.max(0, -y); j < Math.min(src.height, this.height - y); j++) {
      const from = 3 * (j * src.width + i0);
      this.data.set(
        src.data.subarray(from, from + 3 * (i1 - i0)),
        3 * ((y + j) * this.width + x + i0),
      );
    }
  }

  /** An anti-aliased line from (x0, y0) to (x1, y1), `width` pixels wide, with round ends. */
  line(x0: number, y0: number, x1: number, y1: number, color: Color, width = 1, alpha = 1): void {
    const c = parseColor(color);
    const clip = { x0: 0, y0: 0, x1: this.width - 1, y1: this.height - 1 };
    strokeSegment(
      x0,
      y0,
      x1,
      y1,
      width / 2,
      clip,
      (i, j, cov) => this.#blend(i, j, c, cov * alpha),
    );
  }

  /** An anti-aliased filled disc of radius `r` centred on (cx, cy). */
  disc(cx: number, cy: number, r: number, color: Color, alpha = 1): void {
    this.line(cx, cy, cx, cy, color, 2 * r, alpha);
  }

  /** Draws `text` in the built-in font; characters it lacks are drawn as "?". */
  text(text: string, x: number, y: number, opts: TextOptions = {}): void {
    const c = parseColor(opts.color ?? TEXT);
    const s = Math.max(1, Math.round(opts.scale ?? 1));
    const w = textWidth(text, s), h = textHeight(s);
    let ox: number, oy: number;
    if (opts.vertical) {
      ox = Math.round(x - h / 2);
      oy = Math.round(y + w / 2);
    } else {
      const align = opts.align ?? "left", base = opts.baseline ?? "top";
      ox = Math.round(align === "left" ? x : align === "center" ? x - w / 2 : x - w);
      oy = Math.round(base === "top" ? y : base === "middle" ? y - h / 2 : y - h);
    }
    let k = 0;
    for (const ch of text) {
      const g = FONT.get(ch.codePointAt(0)!) ?? UNKNOWN;
      for (let col = 0; col < 5; col++) {
        for (let row = 0; row < 8; row++) {
          if (((g[col] >> row) & 1) === 0) continue;
          const u = (6 * k + col) * s, v = row * s; // along the text, down the glyph
          for (let a = 0; a < s; a++) {
            for (let b = 0; b < s; b++) {
              if (opts.vertical) this.#blend(ox + v + b, oy - u - a, c, 1);
              else this.#blend(ox + u + a, oy + v + b, c, 1);
            }
          }
        }
      }
      k++;
    }
  }

  /**
   * Blends `color` wherever `mask` (one coverage in [0, 1] per pixel, row-major like the
   * canvas) is positive, with opacity coverage × `alpha`; only within `region` when given.
   */
  composite(mask: Float32Array, color: Color, alpha = 1, region?: PixelRect): void {
    const c = parseColor(color);
    const r = region ?? { x0: 0, y0: 0, x1: this.width - 1, y1: this.height - 1 };
    for (let j = r.y0; j <= r.y1; j++) {
      for (let i = r.x0; i <= r.x1; i++) {
        const m = mask[j * this.width + i];
        if (m > 0) this.#blend(i, j, c, m * alpha);
      }
    }
  }

  /** The canvas as PNG bytes (8-bit RGB). */
  async toPng(): Promise<Uint8Array> {
    return await encodePngPixels({
      width: this.width,
      height: this.height,
      channels: 3,
      data: this.data,
    });
  }

  /** Writes the canvas as a PNG file atomically (a temporary file, then a rename). */
  async save(path: string): Promise<void> {
    await writeAtomic(path, await this.toPng());
  }
}

/**
 * Calls `put(i, j, coverage)` for every pixel of `clip` within `halfW + 0.5` of the segment
 * (a, b): coverage is `halfW + 0.5 − distance`, at most 1 (a one-pixel anti-aliased edge).
 */
function strokeSegment(
  ax: number,
  ay: number,
  bx: number,
  by: number,
  halfW: number,
  clip: PixelRect,
  put: (i: number, j: number, cov: number) => void,
): void {
  const m = halfW + 1;
  const seg = clipSegment(ax, ay, bx, by, clip.x0 - m, clip.y0 - m, clip.x1 + m, clip.y1 + m);
  if (seg === null) return;
  [ax, ay, bx, by] = seg;
  const dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy;
  const i0 = Math.max(clip.x0, Math.floor(Math.min(ax, bx) - m));
  const i1 = Math.min(clip.x1, Math.ceil(Math.max(ax, bx) + m));
  const j0 = Math.max(clip.y0, Math.floor(Math.min(ay, by) - m));
  const j1 = Math.min(clip.y1, Math.ceil(Math.max(ay, by) + m));
  for (let j = j0; j <= j1; j++) {
    for (let i = i0; i <= i1; i++) {
      let t = len2 > 0 ? ((i - ax) * dx + (j - ay) * dy) / len2 : 0;
      t = t < 0 ? 0 : t > 1 ? 1 : t;
      const ex = ax + t * dx - i, ey = ay + t * dy - j;
      const cov = halfW + 0.5 - Math.sqrt(ex * ex + ey * ey);
      if (cov > 0) put(i, j, cov > 1 ? 1 : cov);
    }
  }
}

/** Liang–Barsky: the part of segment (a, b) inside the box, or null. */
function clipSegment(
  ax: number,
  ay: number,
  bx: number,
  by: number,
  xmin: number,
  ymin: number,
  xmax: number,
  ymax: number,
): [number, number, number, number] | null {
  const dx = bx - ax, dy = by - ay;
  let t0 = 0, t1 = 1;
  const p = [-dx, dx, -dy, dy], q = [ax - xmin, xmax - ax, ay - ymin, ymax - ay];
  for (let k = 0; k < 4; k++) {
    if (p[k] === 0) {
      if (q[k] < 0) return null;
    } else {
      const t = q[k] / p[k];
      if (p[k] < 0) t0 = Math.max(t0, t);
      else t1 = Math.min(t1, t);
    }
  }
  return t0 > t1 ? null : [ax + t0 * dx, ay + t0 * dy, ax + t1 * dx, ay + t1 * dy];
}

async function writeAtomic(path: string, bytes: Uint8Array): Promise<void> {
  try {
    await writeFileAtomic(path, bytes);
  } catch (e) {
    throw new ImageError(path, `could not write: ${(e as Error).message}`);
  }
}

// ---- axes and ticks ----------------------------------------------------------------------

/** One axis of a plot: its data range, scale and labelled ticks. */
export interface PlotAxis {
  /** the data value at the low end of the axis */
  min: number;
  /** the data value at the high end of the axis */
  max: number;
  /** logarithmic (base 10) */
  log: boolean;
  /** the tick positions, data values within [min, max] */
  ticks: number[];
  /** the tick labels, one per tick */
  labels: string[];
}

/** Where a plot's data went: the plot area in pixels and the two axes. */
export interface PlotLayout {
  /** image width in pixels */
  width: number;
  /** image height in pixels */
  height: number;
  /** the plot area's pixels, inclusive (the frame is drawn just outside) */
  area: PixelRect;
  /** the horizontal axis */
  x: PlotAxis;
  /** the vertical axis */
  y: PlotAxis;
  /** the pixel position (fractional) of a data point; NaN for a point a log axis cannot show */
  toPixel(x: number, y: number): [number, number];
}

/** The step of 1, 2, 2.5, 5 or 10 × 10^k nearest to `span / target`. */
function niceStep(span: number, target: number): number {
  const raw = span / Math.max(1, target);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  return (f <= 1.5 ? 1 : f <= 2.25 ? 2 : f <= 3.5 ? 2.5 : f <= 7.5 ? 5 : 10) * mag;
}

/** Multiples of a nice step within [min, max]: about `target` of them, and at least two. */
function linearTicks(min: number, max: number, target: number): number[] {
  for (let t = target;; t *= 2) {
    const step = niceStep(max - min, t);
    const out: number[] = [];
    for (let k = Math.ceil(min / step - 1e-9); k <= Math.floor(max / step + 1e-9); k++) {
      out.push(Number((k * step).toPrecision(12)) || 0);
    }
    if (out.length >= 2 || t > 64) return out;
  }
}

/** Labels for evenly spaced ticks: fixed decimals, or exponents for very large/small values. */
function linearLabels(ticks: number[]): string[] {
  if (ticks.length === 0) return [];
  const big = Math.max(...ticks.map(Math.abs));
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : big || 1;
  if (big >= 1e6 || (step < 1e-4 && big < 1e-3)) {
    for (let d = 0; d <= 6; d++) {
      const ls = ticks.map((t) => expLabel(t, d));
      if (new Set(ls).size === ls.length || d === 6) return ls;
    }
  }
  let d = 0;
  while (d < 12 && Math.abs(Math.round(step * 10 ** d) - step * 10 ** d) > 1e-6 * 10 ** d * step) {
    d++;
  }
  return ticks.map((t) => (t === 0 ? 0 : t).toFixed(d));
}

function expLabel(v: number, digits: number): string {
  if (v === 0) return "0";
  const [m, e] = v.toExponential(digits).split("e");
  return `${m}e${Number(e)}`;
}

/** Labels of ticks on a log axis: plain when all lie in [1e-3, 1e4], else all as "2e-5". */
function logLabels(ticks: number[]): string[] {
  const exps = ticks.map((v) => Math.floor(Math.log10(v) + 1e-9));
  if (exps.some((e) => e < -3 || e > 4)) return ticks.map((v) => expLabel(v, 0));
  return ticks.map((v, k) => Number(v.toPrecision(6)).toFixed(Math.max(0, -exps[k])));
}

function logTicks(min: number, max: number, target: number): number[] {
  const lo = Math.log10(min), hi = Math.log10(max);
  const decades: number[] = [];
  for (let e = Math.ceil(lo - 1e-9); e <= Math.floor(hi + 1e-9); e++) decades.push(e);
  if (decades.length >= 2) {
    const every = Math.max(1, Math.ceil(decades.length / target));
    return decades.filter((e) => e % every === 0).map((e) => Number((10 ** e).toPrecision(12)));
  }
  const out: number[] = [];
  for (let e = Math.floor(lo) - 1; e <= Math.ceil(hi); e++) {
    for (const m of [1, 2, 5]) {
      const v = Number((m * 10 ** e).toPrecision(12));
      if (v >= min * (1 - 1e-9) && v <= max * (1 + 1e-9)) out.push(v);
    }
  }
  return out;
}

/**
 * An axis over the data values `vals` (finite; positive for a log axis), or exactly `range`
 * when given; otherwise the data range padded by 5% (in log space for a log axis).
 */
function makeAxis(
  vals: number[],
  log: boolean,
  range: readonly [number, number] | undefined,
  what: string,
): { min: number; max: number } {
  if (range !== undefined) {
    const [a, b] = range;
    if (!Number.isFinite(a) || !Number.isFinite(b) || !(a < b) || (log && !(a > 0))) {
      throw new RangeError(`${what}Range must be finite with min < max (min > 0 on a log axis)`);
    }
    return { min: a, max: b };
  }
  const f = log ? Math.log10 : (v: number) => v, g = log ? (v: number) => 10 ** v : f;
  let lo = Infinity, hi = -Infinity;
  for (const v of vals) {
    const t = f(v);
    if (t < lo) lo = t;
    if (t > hi) hi = t;
  }
  if (lo > hi) return log ? { min: 1, max: 10 } : { min: 0, max: 1 };
  if (lo === hi) {
    const d = log ? 0.5 : lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= d;
    hi += d;
  }
  const pad = 0.05 * (hi - lo);
  return { min: g(lo - pad), max: g(hi + pad) };
}

// ---- shared plot furniture ---------------------------------------------------------------

/** Where the legend goes: a corner inside the plot area, "best" (the emptiest corner), to the
 * right of the plot area ("outside"), or nowhere. */
export type LegendPosition =
  | "best"
  | "upper right"
  | "upper left"
  | "lower right"
  | "lower left"
  | "outside"
  | "none";

interface LegendEntry {
  name: string;
  color: Rgb;
  kind: "line" | "bar";
  band: boolean;
  marker: boolean;
  lineWidth: number;
}

interface Frame {
  canvas: Canvas;
  layout: PlotLayout;
  scale: number;
  legendBox: { w: number; h: number } | null;
}

interface FrameSpec {
  width: number;
  height: number;
  title?: string;
  xLabel?: string;
  yLabel?: string;
  textScale?: number;
  legend: LegendPosition;
  entries: LegendEntry[];
}

function legendSize(entries: LegendEntry[], s: number): { w: number; h: number } | null {
  if (entries.length === 0) return null;
  const wText = Math.max(...entries.map((e) => textWidth(e.name, s)));
  return { w: 8 + 12 * s + 6 + wText + 8, h: 6 + entries.length * (textHeight(s) + 6) };
}

/**
 * Lays out the frame: margins from the title, labels and tick labels; the y axis is fixed
 * first (its labels set the left margin), then the x axis from the remaining width. `xAxis`
 * returns the x ticks and labels for a target tick count (categorical axes ignore it).
 */
function layoutFrame(
  spec: FrameSpec,
  yr: { min: number; max: number; log: boolean },
  xr: { min: number; max: number; log: boolean },
  xTicks: ((target: number) => { ticks: number[]; labels: string[] }) | null,
): Frame {
  const { width: W, height: H } = spec;
  if (!Number.isInteger(W) || !Number.isInteger(H) || W < 120 || H < 90) {
    throw new RangeError(`a plot needs an integer size of at least 120×90, got ${W}×${H}`);
  }
  const s = Math.max(1, Math.round(spec.textScale ?? (Math.min(W, H) >= 360 ? 2 : 1)));
  const fh = textHeight(s), pad = 4 + 4 * s, tick = 2 + 2 * s;
  const top = pad + (spec.title ? textHeight(s + 1) + pad : fh / 2);
  const bottom = H - 1 - (tick + 4 + fh + (spec.xLabel ? 6 + fh : 0) + pad);
  const y0 = Math.round(top), y1 = Math.round(bottom);
  // y ticks: about one per 40 px of text-scale-2 height
  const yt = yr.log
    ? logTicks(yr.min, yr.max, Math.max(2, (y1 - y0) / (4 * fh)))
    : linearTicks(yr.min, yr.max, Math.max(2, (y1 - y0) / (6 * fh)));
  const yl = yr.log ? logLabels(yt) : linearLabels(yt);
  const yw = Math.max(0, ...yl.map((l) => textWidth(l, s)));
  const x0 = pad + (spec.yLabel ? fh + 8 : 0) + yw + 4 + tick;
  const legendBox = spec.legend === "none" ? null : legendSize(spec.entries, s);
  const right = W - 1 - pad - 3 * s * 3 -
    (legendBox !== null && spec.legend === "outside" ? legendBox.w + pad : 0);
  const x1 = Math.round(right);
  if (x1 - x0 < 20 || y1 - y0 < 20) {
    throw new RangeError(`a ${W}×${H} plot leaves no room for the data; make it larger`);
  }
  let xt: { ticks: number[]; labels: string[] } = { ticks: [], labels: [] };
  if (xTicks !== null) {
    for (let target = Math.max(2, (x1 - x0) / 80); target >= 1; target = Math.floor(target / 1.5)) {
      xt = xTicks(target);
      const wMax = Math.max(0, ...xt.labels.map((l) => textWidth(l, s)));
      if ((wMax + 3 * 6 * s) * xt.ticks.length <= x1 - x0 || target <= 2) break;
    }
  }
  const lx = (v: number, a: { min: number; max: number; log: boolean }) =>
    a.log
      ? (v > 0 ? (Math.log10(v) - Math.log10(a.min)) / Math.log10(a.max / a.min) : NaN)
      : (v - a.min) / (a.max - a.min);
  const layout: PlotLayout = {
    width: W,
    height: H,
    area: { x0, y0, x1, y1 },
    x: { ...xr, ticks: xt.ticks, labels: xt.labels },
    y: { ...yr, ticks: yt, labels: yl },
    toPixel: (x, y) => [x0 + lx(x, xr) * (x1 - x0), y1 - lx(y, yr) * (y1 - y0)],
  };
  return { canvas: new Canvas(W, H), layout, scale: s, legendBox };
}

/** Grid lines (under the data). */
function drawGrid(f: Frame, vertical: boolean): void {
  const { canvas: c, layout: L } = f;
  const { x0, y0, x1, y1 } = L.area;
  for (const t of L.y.ticks) {
    const py = Math.round(L.toPixel(L.x.min, t)[1]);
    if (py >= y0 && py <= y1) c.fillRect(x0, py, x1 - x0 + 1, 1, GRID);
  }
  if (!vertical) return;
  for (const t of L.x.ticks) {
    const px = Math.round(L.toPixel(t, L.y.ticks[0] ?? L.y.min)[0]);
    if (px >= x0 && px <= x1) c.fillRect(px, y0, 1, y1 - y0 + 1, GRID);
  }
}

/** Frame, ticks, tick labels, axis labels and title (over the data). */
function drawFurniture(f: Frame, spec: FrameSpec, categorical: string[] | null): void {
  const { canvas: c, layout: L, scale: s } = f;
  const { x0, y0, x1, y1 } = L.area;
  const tick = 2 + 2 * s, fh = textHeight(s);
  c.fillRect(x0 - 1, y0 - 1, x1 - x0 + 3, 1, FRAME);
  c.fillRect(x0 - 1, y1 + 1, x1 - x0 + 3, 1, FRAME);
  c.fillRect(x0 - 1, y0 - 1, 1, y1 - y0 + 3, FRAME);
  c.fillRect(x1 + 1, y0 - 1, 1, y1 - y0 + 3, FRAME);
  if (L.y.log && Math.log10(L.y.max / L.y.min) <= 6) {
    // minor ticks at 2..9 × 10^k
    for (let e = Math.floor(Math.log10(L.y.min)); e <= Math.ceil(Math.log10(L.y.max)); e++) {
      for (let m = 2; m <= 9; m++) {
        const py = Math.round(L.toPixel(L.x.min, m * 10 ** e)[1]);
        if (py >= y0 && py <= y1) c.fillRect(x0 - 1 - tick / 2, py, tick / 2, 1, FRAME);
      }
    }
  }
  L.y.ticks.forEach((t, k) => {
    const py = Math.round(L.toPixel(L.x.min, t)[1]);
    c.fillRect(x0 - 1 - tick, py, tick, 1, FRAME);
    c.text(L.y.labels[k], x0 - tick - 4, py, { scale: s, align: "right", baseline: "middle" });
  });
  const ty = y1 + 2 + tick + 3;
  if (categorical !== null) {
    const slot = (x1 - x0 + 1) / categorical.length;
    // one size for every group name: the plot's when all fit their slots, else the smallest
    const sc = categorical.every((name) => textWidth(name, s) <= slot - 4) ? s : 1;
    categorical.forEach((name, g) => {
      const cx = x0 + (g + 0.5) * slot;
      const label = fitText(name, slot - 2, sc);
      c.text(label, cx, ty + (fh - textHeight(sc)) / 2, { scale: sc, align: "center" });
    });
  } else {
    L.x.ticks.forEach((t, k) => {
      const px = Math.round(L.toPixel(t, L.y.ticks[0] ?? L.y.min)[0]);
      c.fillRect(px, y1 + 2, 1, tick, FRAME);
      c.text(L.x.labels[k], px, ty, { scale: s, align: "center" });
    });
  }
  if (spec.xLabel) {
    // centred under the plot area, shortened and moved to stay within the image
    const margin = 4 + 4 * s, label = fitText(spec.xLabel, c.width - 2 * margin, s);
    const w = textWidth(label, s);
    const cx = Math.min(Math.max((x0 + x1) / 2, margin + w / 2), c.width - margin - w / 2);
    c.text(label, cx, ty + fh + 6, { scale: s, align: "center" });
  }
  if (spec.yLabel) {
    c.text(spec.yLabel, 4 + 4 * s + fh / 2, (y0 + y1) / 2, { scale: s, vertical: true });
  }
  if (spec.title) {
    c.text(spec.title, (x0 + x1) / 2, 4 + 4 * s, { scale: s + 1, align: "center" });
  }
}

/** The legend, in the corner of the plot area that covers the least of `occupied`. */
function drawLegend(f: Frame, spec: FrameSpec, occupied: Uint8Array): void {
  const box = f.legendBox;
  if (box === null) return;
  const { canvas: c, layout: L, scale: s } = f;
  const { x0, y0, x1, y1 } = L.area;
  const m = 6 + 2 * s;
  const corners: Record<string, [number, number]> = {
    "upper right": [x1 - m - box.w, y0 + m],
    "upper left": [x0 + m, y0 + m],
    "lower right": [x1 - m - box.w, y1 - m - box.h],
    "lower left": [x0 + m, y1 - m - box.h],
    outside: [x1 + 2 + 4 + 4 * s, y0],
  };
  let pos = spec.legend;
  if (pos === "best") {
    let best = Infinity;
    for (const k of ["upper right", "upper left", "lower right", "lower left"] as const) {
      const [bx, by] = corners[k];
      let n = 0;
      for (let j = Math.max(0, by); j < Math.min(c.height, by + box.h); j++) {
        for (let i = Math.max(0, bx); i < Math.min(c.width, bx + box.w); i++) {
          n += occupied[j * c.width + i];
        }
      }
      if (n < best) [best, pos] = [n, k];
    }
  }
  const [bx, by] = corners[pos];
  c.fillRect(bx, by, box.w, box.h, WHITE, 0.85);
  c.fillRect(bx, by, box.w, 1, GRID.map((v) => v - 40) as Rgb);
  c.fillRect(bx, by + box.h - 1, box.w, 1, GRID.map((v) => v - 40) as Rgb);
  c.fillRect(bx, by, 1, box.h, GRID.map((v) => v - 40) as Rgb);
  c.fillRect(bx + box.w - 1, by, 1, box.h, GRID.map((v) => v - 40) as Rgb);
  const fh = textHeight(s), sw = 12 * s;
  spec.entries.forEach((e, k) => {
    const cy = by + 6 + k * (fh + 6) + fh / 2, sx = bx + 8;
    if (e.kind === "bar") {
      c.fillRect(sx + sw / 2 - fh / 2, cy - fh / 2, fh, fh, e.color);
    } else {
      if (e.band) c.fillRect(sx, cy - fh / 2, sw, fh, e.color, 0.2);
      c.line(sx, cy, sx + sw - 1, cy, e.color, e.lineWidth);
      if (e.marker) c.disc(sx + sw / 2, cy, 1.5 + e.lineWidth, e.color);
    }
    c.text(e.name, sx + sw + 6, cy, { scale: s, baseline: "middle" });
  });
}

// ---- line plots --------------------------------------------------------------------------

/** One curve of a {@link linePlot}. */
export interface LineSeries {
  /** the legend entry ("" for none) */
  name: string;
  /** x values */
  x: ArrayLike<number>;
  /** y values, as many as x; a non-finite one (or one ≤ 0 on a log axis) leaves a gap */
  y: ArrayLike<number>;
  /** the colour (default: the next {@link TAB10} colour) */
  color?: Color;
  /** a band from y − std to y + std (e.g. over seeds, see {@link meanStd}) */
  std?: ArrayLike<number>;
  /** the band's lower edge (with `upper`; instead of `std`) */
  lower?: ArrayLike<number>;
  /** the band's upper edge (with `lower`; instead of `std`) */
  upper?: ArrayLike<number>;
  /** draw the band shaded (default) or as error bars at each point */
  bandStyle?: "fill" | "bars";
  /** the line width in pixels (default 2; 0 draws markers only) */
  lineWidth?: number;
  /** a dot at every point (default: the plot's `markers`) */
  markers?: boolean;
}

/** A line plot for {@link linePlot}. */
export interface LinePlotSpec {
  /** the curves, drawn in order */
  series: readonly LineSeries[];
  /** a title above the plot (drawn one text scale larger) */
  title?: string;
  /** the x axis label */
  xLabel?: string;
  /** the y axis label (drawn vertically) */
  yLabel?: string;
  /** image width in pixels (default 800) */
  width?: number;
  /** image height in pixels (default 480) */
  height?: number;
  /** a logarithmic y axis */
  logY?: boolean;
  /** the x range shown (default: the data's, padded by 5%) */
  xRange?: readonly [number, number];
  /** the y range shown (default: the data's and bands', padded by 5%) */
  yRange?: readonly [number, number];
  /** the x ticks, data values (default: about one "nice" value per 80 px); those outside the
   * x range are left out */
  xTicks?: readonly number[];
  /** the labels of `xTicks`, one each (default: the values as numbers) */
  xTickLabels?: readonly string[];
  /** a dot at every point of every series */
  markers?: boolean;
  /** where the legend goes (default "best") */
  legend?: LegendPosition;
  /** the font magnification of labels (default 2, or 1 for plots under 360 px) */
  textScale?: number;
  /** vertical and horizontal grid lines (default true) */
  grid?: boolean;
}

interface Prepared {
  s: LineSeries;
  color: Rgb;
  n: number;
  ok: (i: number) => boolean;
  lo: (i: number) => number;
  hi: (i: number) => number;
  band: boolean;
}

function prepare(spec: LinePlotSpec): Prepared[] {
  const log = spec.logY ?? false;
  return spec.series.map((s, k) => {
    const n = s.x.length;
    const label = `series ${k} (${JSON.stringify(s.name)})`;
    if (s.y.length !== n) {
      throw new RangeError(`${label}: x has ${n} values, y ${s.y.length}`);
    }
    for (const [key, arr] of [["std", s.std], ["lower", s.lower], ["upper", s.upper]] as const) {
      if (arr !== undefined && arr.length !== n) {
        throw new RangeError(`${label}: ${key} has ${arr.length} values, x ${n}`);
      }
    }
    if ((s.lower === undefined) !== (s.upper === undefined)) {
      throw new RangeError(`${label}: lower and upper go together`);
    }
    const okY = (v: number) => Number.isFinite(v) && (!log || v > 0);
    const ok = (i: number) => Number.isFinite(s.x[i]) && okY(s.y[i]);
    const lo = s.lower !== undefined
      ? (i: number) => s.lower![i]
      : s.std !== undefined
      ? (i: number) => s.y[i] - Math.abs(s.std![i])
      : (i: number) => s.y[i];
    const hi = s.upper !== undefined
      ? (i: number) => s.upper![i]
      : s.std !== undefined
      ? (i: number) => s.y[i] + Math.abs(s.std![i])
      : (i: number) => s.y[i];
    const band = s.std !== undefined || s.lower !== undefined;
    return { s, color: parseColor(s.color ?? TAB10[k % TAB10.length]), n, ok, lo, hi, band };
  });
}

/**
 * Lays out a {@link linePlot} without drawing it: the plot area and both axes, and the
 * data → pixel mapping (what tests and annotations need to find a point in the image).
 */
export function linePlotLayout(spec: LinePlotSpec): PlotLayout {
  return lineFrame(spec, prepare(spec)).layout;
}

function lineFrameSpec(spec: LinePlotSpec, ps: Prepared[]): FrameSpec {
  return {
    width: spec.width ?? 800,
    height: spec.height ?? 480,
    title: spec.title,
    xLabel: spec.xLabel,
    yLabel: spec.yLabel,
    textScale: spec.textScale,
    legend: spec.legend ?? "best",
    entries: ps.filter((p) => p.s.name !== "").map((p) => ({
      name: p.s.name,
      color: p.color,
      kind: "line",
      band: p.band && (p.s.bandStyle ?? "fill") === "fill",
      marker: p.s.markers ?? spec.markers ?? false,
      lineWidth: p.s.lineWidth ?? 2,
    })),
  };
}

function lineFrame(spec: LinePlotSpec, ps: Prepared[]): Frame {
  const log = spec.logY ?? false;
  const xs: number[] = [], ys: number[] = [];
  for (const p of ps) {
    for (let i = 0; i < p.n; i++) {
      if (!p.ok(i)) continue;
      xs.push(p.s.x[i]);
      ys.push(p.s.y[i]);
      for (const v of [p.lo(i), p.hi(i)]) if (Number.isFinite(v) && (!log || v > 0)) ys.push(v);
    }
  }
  const xr = { ...makeAxis(xs, false, spec.xRange, "x"), log: false };
  const yr = { ...makeAxis(ys, log, spec.yRange, "y"), log };
  const given = spec.xTicks;
  if (spec.xTickLabels !== undefined && spec.xTickLabels.length !== (given?.length ?? -1)) {
    throw new RangeError(
      `xTickLabels needs one label per x tick: ${spec.xTickLabels.length} labels, ` +
        `${given?.length ?? "no"} ticks`,
    );
  }
  return layoutFrame(lineFrameSpec(spec, ps), yr, xr, (target) => {
    if (given !== undefined) {
      const keep = [...given.keys()].filter((k) => given[k] >= xr.min && given[k] <= xr.max);
      return {
        ticks: keep.map((k) => given[k]),
        labels: keep.map((k) => spec.xTickLabels?.[k] ?? String(given[k])),
      };
    }
    const ticks = linearTicks(xr.min, xr.max, target);
    return { ticks, labels: linearLabels(ticks) };
  });
}

/** Renders a {@link LinePlotSpec} onto a new {@link Canvas} (what {@link linePlot} encodes). */
export function renderLinePlot(spec: LinePlotSpec): Canvas {
  const ps = prepare(spec);
  const f = lineFrame(spec, ps);
  const { canvas: c, layout: L } = f;
  const area = L.area, W = c.width;
  const fspec = lineFrameSpec(spec, ps);
  if (spec.grid ?? true) drawGrid(f, true);
  const mask = new Float32Array(W * c.height);
  const occupied = new Uint8Array(W * c.height);
  const flush = (color: Rgb, alpha: number) => {
    c.composite(mask, color, alpha, area);
    for (let j = area.y0; j <= area.y1; j++) {
      for (let i = area.x0; i <= area.x1; i++) {
        const o = j * W + i;
        if (mask[o] > 0.25) occupied[o] = 1;
        mask[o] = 0;
      }
    }
  };
  const put = (i: number, j: number, cov: number) => {
    const o = j * W + i;
    if (cov > mask[o]) mask[o] = cov;
  };
  const yPix = (v: number) => {
    const py = L.toPixel(L.x.min, v)[1];
    return Number.isNaN(py) ? area.y1 + 1 : py; // ≤ 0 on a log axis: below the axis
  };
  // bands first, under every line
  for (const p of ps) {
    if (!p.band || (p.s.bandStyle ?? "fill") !== "fill") continue;
    // in x order; a point without a finite band (or a drawable y) breaks the band
    const valid = (i: number) => p.ok(i) && Number.isFinite(p.lo(i)) && Number.isFinite(p.hi(i));
    const idx = [...Array(p.n).keys()].filter(p.ok).sort((a, b) => p.s.x[a] - p.s.x[b]);
    const yb = (v: number) => Math.min(area.y1 + 1, Math.max(area.y0 - 1, yPix(v)));
    for (let k = 0; k < idx.length; k++) {
      const a = idx[k];
      const next = k + 1 < idx.length && valid(idx[k + 1]);
      if (!valid(a) || (!next && k > 0 && valid(idx[k - 1]))) continue;
      const b = next ? idx[k + 1] : a; // a lone point: one column
      const pa = L.toPixel(p.s.x[a], 1)[0], pb = L.toPixel(p.s.x[b], 1)[0];
      if (!Number.isFinite(pa) || !Number.isFinite(pb)) continue;
      const c0 = Math.max(area.x0, Math.round(pa)), c1 = Math.min(area.x1, Math.round(pb));
      for (let col = c0; col <= c1; col++) {
        const t = pb > pa ? Math.min(1, Math.max(0, (col - pa) / (pb - pa))) : 0;
        const top = yb(p.hi(a)) * (1 - t) + yb(p.hi(b)) * t;
        const bot = yb(p.lo(a)) * (1 - t) + yb(p.lo(b)) * t;
        const r0 = Math.max(area.y0, Math.round(Math.min(top, bot)));
        const r1 = Math.min(area.y1, Math.round(Math.max(top, bot)));
        for (let row = r0; row <= r1; row++) mask[row * W + col] = 1;
      }
    }
    flush(p.color, 0.2);
  }
  for (const p of ps) {
    const lw = p.s.lineWidth ?? 2, markers = p.s.markers ?? spec.markers ?? false;
    // pixel positions; null for a gap (a point not drawable, or too far out to compute)
    const P = Array.from({ length: p.n }, (_, i) => {
      if (!p.ok(i)) return null;
      const q = L.toPixel(p.s.x[i], p.s.y[i]);
      return Number.isFinite(q[0]) && Number.isFinite(q[1]) ? q : null;
    });
    for (let i = 0; i < p.n; i++) {
      const a = P[i];
      if (a === null) continue;
      const b = i + 1 < p.n ? P[i + 1] : null, prev = i > 0 && P[i - 1] !== null;
      if (b !== null && lw > 0) strokeSegment(a[0], a[1], b[0], b[1], lw / 2, area, put);
      if (markers || lw === 0 || (b === null && !prev)) {
        strokeSegment(a[0], a[1], a[0], a[1], 1.5 + Math.max(lw, 1), area, put);
      }
      if (p.band && p.s.bandStyle === "bars") {
        // crisp whiskers, on whole pixels (clamped: a far-off end is drawn to the edge)
        const clampY = (v: number) => Math.round(Math.min(area.y1 + 1, Math.max(area.y0 - 1, v)));
        const lo = clampY(yPix(p.lo(i))), hi = clampY(yPix(p.hi(i)));
        if (Number.isNaN(lo) || Number.isNaN(hi)) continue;
        const bx = Math.round(a[0]), cap = 2 + 2 * f.scale;
        strokeSegment(bx, lo, bx, hi, 0.5, area, put);
        strokeSegment(bx - cap, lo, bx + cap, lo, 0.5, area, put);
        strokeSegment(bx - cap, hi, bx + cap, hi, 0.5, area, put);
      }
    }
    flush(p.color, 1);
  }
  if (!ps.some((p) => [...Array(p.n).keys()].some(p.ok))) {
    c.text("no data", (area.x0 + area.x1) / 2, (area.y0 + area.y1) / 2, {
      scale: f.scale,
      align: "center",
      baseline: "middle",
      color: "#808080",
    });
  }
  drawFurniture(f, fspec, null);
  drawLegend(f, fspec, occupied);
  return c;
}

/**
 * Draws a line plot and returns it as PNG bytes: axes with "nice" ticks (1, 2, 2.5, 5 × 10^k;
 * powers of ten on a log axis), light grid lines, a title, axis labels, a legend of the named
 * series, optional mean ± std bands or error bars and markers. Colours default to
 * {@link TAB10}. Throws `RangeError` for mismatched lengths, a bad range or a too small size.
 */
export async function linePlot(spec: LinePlotSpec): Promise<Uint8Array> {
  return await renderLinePlot(spec).toPng();
}

/** {@link linePlot} written to `path` atomically (a temporary file, then a rename). */
export async function saveLinePlot(path: string, spec: LinePlotSpec): Promise<void> {
  await writeAtomic(path, await linePlot(spec));
}

/**
 * The mean and the sample standard deviation (n − 1; 0 for a single value) across `runs`
 * (e.g. one curve per seed) at each index; non-finite values are left out, and an index with
 * none gives NaN. Runs may differ in length: the result is as long as the longest.
 */
export function meanStd(runs: readonly ArrayLike<number>[]): { mean: number[]; std: number[] } {
  const n = Math.max(0, ...runs.map((r) => r.length));
  const mean: number[] = [], std: number[] = [];
  for (let i = 0; i < n; i++) {
    const v = runs.filter((r) => i < r.length && Number.isFinite(r[i])).map((r) => r[i]);
    const m = v.reduce((a, b) => a + b, 0) / v.length;
    mean.push(v.length ? m : NaN);
    std.push(
      v.length > 1
        ? Math.sqrt(v.reduce((a, b) => a + (b - m) ** 2, 0) / (v.length - 1))
        : v.length
        ? 0
        : NaN,
    );
  }
  return { mean, std };
}

// ---- bar plots ---------------------------------------------------------------------------

/** One series of a {@link barPlot}: a value (and optional error) per group. */
export interface BarSeries {
  /** the legend entry ("" for none) */
  name: string;
  /** one value per group; a non-finite one draws no bar */
  values: ArrayLike<number>;
  /** half-lengths of error bars (e.g. std over seeds), one per group */
  errors?: ArrayLike<number>;
  /** the colour (default: the next {@link TAB10} colour) */
  color?: Color;
}

/** A grouped bar plot for {@link barPlot}. */
export interface BarPlotSpec {
  /** the group (category) names along the x axis */
  groups: readonly string[];
  /** the series; each draws one bar in every group */
  series: readonly BarSeries[];
  /** a title above the plot */
  title?: string;
  /** the x axis label */
  xLabel?: string;
  /** the y axis label (drawn vertically) */
  yLabel?: string;
  /** image width in pixels (default 800) */
  width?: number;
  /** image height in pixels (default 480) */
  height?: number;
  /** the y range shown (default: 0 and the data, with room for the value labels) */
  yRange?: readonly [number, number];
  /** write each value above its bar (default true) */
  valueLabels?: boolean;
  /** decimals of the value labels (default: up to 3, enough for 4 significant digits) */
  valueDecimals?: number;
  /** where the legend goes (default "best"; shown when a series has a name) */
  legend?: LegendPosition;
  /** the font magnification of labels (default 2, or 1 for plots under 360 px) */
  textScale?: number;
}

/** Renders a {@link BarPlotSpec} onto a new {@link Canvas} (what {@link barPlot} encodes). */
export function renderBarPlot(spec: BarPlotSpec): Canvas {
  const G = spec.groups.length, S = spec.series.length;
  if (G === 0) throw new RangeError("a bar plot needs at least one group");
  spec.series.forEach((s, k) => {
    if (s.values.length !== G || (s.errors !== undefined && s.errors.length !== G)) {
      throw new RangeError(
        `bar series ${k} (${JSON.stringify(s.name)}): needs ${G} values (and errors)`,
      );
    }
  });
  const colors = spec.series.map((s, k) => parseColor(s.color ?? TAB10[k % TAB10.length]));
  const err = (s: BarSeries, g: number) => {
    const e = s.errors === undefined ? 0 : Math.abs(s.errors[g]);
    return Number.isFinite(e) ? e : 0;
  };
  let lo = 0, hi = 0;
  for (const s of spec.series) {
    for (let g = 0; g < G; g++) {
      const v = s.values[g];
      if (!Number.isFinite(v)) continue;
      lo = Math.min(lo, v - err(s, g));
      hi = Math.max(hi, v + err(s, g));
    }
  }
  if (lo === hi) hi = 1;
  const labels = spec.valueLabels ?? true;
  const given = spec.valueDecimals;
  if (given !== undefined && !(Number.isInteger(given) && given >= 0 && given <= 12)) {
    throw new RangeError(`valueDecimals must be an integer in 0..12, got ${given}`);
  }
  // value labels: 4 significant digits, with the same number of decimals on every bar
  const decimals = given ?? Math.min(
    3,
    Math.max(
      0,
      ...spec.series.flatMap((s) =>
        Array.from(s.values, (v) => {
          const t = formatNumber(v);
          return t.includes("e") ? 0 : (t.split(".")[1] ?? "").length;
        })
      ),
    ),
  );
  const valueText = (v: number) =>
    Math.abs(v) >= 1e-3 && Math.abs(v) < 1e6 ? v.toFixed(decimals) : formatNumber(v);
  const room = labels ? 0.12 : 0.05;
  const yr = spec.yRange !== undefined
    ? { ...makeAxis([], false, spec.yRange, "y"), log: false }
    : {
      min: lo < 0 ? lo - room * (hi - lo) : 0,
      max: hi > 0 ? hi + room * (hi - lo) : 0,
      log: false,
    };
  const fspec: FrameSpec = {
    width: spec.width ?? 800,
    height: spec.height ?? 480,
    title: spec.title,
    xLabel: spec.xLabel,
    yLabel: spec.yLabel,
    textScale: spec.textScale,
    legend: spec.legend ?? "best",
    entries: spec.series.flatMap((s, k) =>
      s.name === "" ? [] : [{
        name: s.name,
        color: colors[k],
        kind: "bar" as const,
        band: false,
        marker: false,
        lineWidth: 0,
      }]
    ),
  };
  const f = layoutFrame(fspec, yr, { min: 0, max: G, log: false }, null);
  const { canvas: c, layout: L, scale: sc } = f;
  const { x0, y0, x1, y1 } = L.area;
  const W = c.width, occupied = new Uint8Array(W * c.height);
  drawGrid(f, false);
  const slot = (x1 - x0 + 1) / G, bw = (0.8 * slot) / Math.max(1, S);
  const yp = (v: number) => Math.min(y1 + 1, Math.max(y0, L.toPixel(0, v)[1]));
  const base = yp(Math.min(Math.max(0, yr.min), yr.max));
  // one size for every value label: the plot's when all fit their bars, else the smallest
  const texts = spec.series.flatMap((s) => Array.from(s.values).filter(Number.isFinite));
  const ts = texts.every((v) => textWidth(valueText(v), sc) <= bw + 6 * sc) ? sc : 1;
  spec.series.forEach((s, k) => {
    for (let g = 0; g < G; g++) {
      const v = s.values[g];
      if (!Number.isFinite(v)) continue;
      const bx0 = Math.round(x0 + g * slot + 0.1 * slot + k * bw);
      const bx1 = Math.round(x0 + g * slot + 0.1 * slot + (k + 1) * bw) - (bw > 6 ? 1 : 0);
      const top = Math.round(Math.min(base, yp(v))), bot = Math.round(Math.max(base, yp(v)));
      c.fillRect(bx0, top, bx1 - bx0, bot - top, colors[k]);
      for (let j = Math.max(0, top - textHeight(sc) - 6); j < bot; j++) {
        for (let i = bx0; i < bx1; i++) occupied[j * W + i] = 1;
      }
      const cx = (bx0 + bx1 - 1) / 2, e = err(s, g);
      if (e > 0) {
        const a = yp(v - e), b = yp(v + e), cap = Math.min(bw / 4, 3 + 2 * sc);
        c.line(cx, a, cx, b, FRAME, 1.5);
        c.line(cx - cap, a, cx + cap, a, FRAME, 1.5);
        c.line(cx - cap, b, cx + cap, b, FRAME, 1.5);
      }
      if (labels) {
        const text = valueText(v);
        const up = v >= 0;
        const edge = up ? Math.min(yp(v), yp(v + e)) - 3 : Math.max(yp(v), yp(v - e)) + 3;
        c.text(text, cx, edge, { scale: ts, align: "center", baseline: up ? "bottom" : "top" });
      }
    }
  });
  if (yr.min < 0 && yr.max > 0) c.fillRect(x0, Math.round(yp(0)), x1 - x0 + 1, 1, FRAME);
  drawFurniture(f, fspec, [...spec.groups]);
  drawLegend(f, fspec, occupied);
  return c;
}

/**
 * Draws a grouped bar plot (one group per row of a results table, one bar per series) and
 * returns it as PNG bytes: a y axis with nice ticks, group names under the groups (shrunk or
 * shortened to fit), optional error bars and value labels, a legend of the named series.
 * Throws `RangeError` for mismatched lengths or a too small size.
 */
export async function barPlot(spec: BarPlotSpec): Promise<Uint8Array> {
  return await renderBarPlot(spec).toPng();
}

/** {@link barPlot} written to `path` atomically (a temporary file, then a rename). */
export async function saveBarPlot(path: string, spec: BarPlotSpec): Promise<void> {
  await writeAtomic(path, await barPlot(spec));
}

// ---- contact sheets ----------------------------------------------------------------------

/** One tile of a {@link contactSheet}. */
export interface SheetTile {
  /** the picture */
  canvas: Canvas;
  /** a title drawn above it (cut to the tile's width) */
  title?: string;
}

/** Options of {@link contactSheet}. */
export interface SheetOptions {
  /** a title across the top of the sheet (smaller, then cut, when wider than the tiles) */
  title?: string;
  /** pixels between tiles and around the sheet (default 6) */
  pad?: number;
  /** background (default white) */
  background?: Color;
  /** magnification of the tile titles (default 2 when every column is ≥ 192 px wide, else 1) */
  titleScale?: number;
}

/**
 * Tiles laid out in rows (each inner array a row; a column's width is its widest tile), each
 * with its title above, on one canvas.
 */
export function contactSheet(
  rows: readonly (readonly SheetTile[])[],
  opts: SheetOptions = {},
): Canvas {
  const pad = opts.pad ?? 6;
  if (!Number.isInteger(pad) || pad < 0) {
    throw new RangeError(`contactSheet: pad must be a non-negative integer, got ${opts.pad}`);
  }
  const live = rows.filter((r) => r.length > 0);
  if (live.length === 0) throw new RangeError("contactSheet: no tiles to lay out");
  const cols = Math.max(...live.map((r) => r.length));
  const colW = Array.from(
    { length: cols },
    (_, j) => Math.max(0, ...live.map((r) => r[j]?.canvas.width ?? 0)),
  );
  const titled = live.some((r) => r.some((t) => t.title));
  const ts = Math.max(1, Math.round(opts.titleScale ?? (Math.min(...colW) >= 192 ? 2 : 1)));
  const titleH = titled ? textHeight(ts) + 4 : 0;
  const rowH = live.map((r) => Math.max(...r.map((t) => t.canvas.height)) + titleH);
  const headH = opts.title ? textHeight(2) + pad : 0;
  const x0 = colW.map((_, j) => pad + colW.slice(0, j).reduce((a, b) => a + b + pad, 0));
  const width = pad + colW.reduce((a, b) => a + b + pad, 0);
  const height = pad + headH + rowH.reduce((a, b) => a + b + pad, 0);
  const sheet = new Canvas(width, height, opts.background ?? "#ffffff");
  if (opts.title) {
    // scale 2 when it fits, else scale 1, cut to the sheet's width
    const big = textWidth(opts.title, 2) <= width - 2 * pad;
    const t = big ? opts.title : fitText(opts.title, width - 2 * pad);
    sheet.text(t, pad, pad + (big ? 0 : textHeight() / 2), { scale: big ? 2 : 1 });
  }
  let y = pad + headH;
  live.forEach((r, i) => {
    r.forEach((t, j) => {
      if (t.title) sheet.text(fitText(t.title, colW[j], ts), x0[j], y, { scale: ts });
      sheet.paste(t.canvas, x0[j], y + titleH);
    });
    y += rowH[i] + pad;
  });
  return sheet;
}
