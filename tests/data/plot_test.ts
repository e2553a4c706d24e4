/**
 * The plot renderer (lib/data/plot.ts): every plot is decoded back with the project's PNG
 * decoder and checked pixel by pixel where it matters — the image size and background, the
 * series' colour along the data (y = x, a log-scale power law), gaps at NaN, shaded mean ± std
 * bands, error bars, markers for lone points, the legend, nice ticks, bars — and the bitmap font
 * draws its glyphs exactly.
 */
import assert from "node:assert/strict";
import {
  barPlot,
  Canvas,
  contactSheet,
  decodePng,
  linePlot,
  linePlotLayout,
  type LinePlotSpec,
  meanStd,
  parseColor,
  pngToRgb8,
  saveLinePlot,
  TAB10,
  textHeight,
  textWidth,
} from "../../mod.ts";

/** A decoded plot with a pixel accessor. */
async function decode(bytes: Uint8Array) {
  const img = await decodePng(bytes);
  const rgb = pngToRgb8(img);
  const at = (x: number, y: number): [number, number, number] => {
    const o = 3 * (y * img.width + x);
    return [rgb[o], rgb[o + 1], rgb[o + 2]];
  };
  return { width: img.width, height: img.height, at, rgb };
}

type Img = Awaited<ReturnType<typeof decode>>;

const same = (a: readonly number[], b: readonly number[]) => a.every((v, i) => v === b[i]);

/** Whether some pixel within `r` of the (fractional) position has exactly `color`. */
function near(img: Img, [px, py]: [number, number], color: readonly number[], r = 1): boolean {
  for (let dy = -r; dy <= r; dy++) {
    for (let dx = -r; dx <= r; dx++) {
      const x = Math.round(px) + dx, y = Math.round(py) + dy;
      if (x >= 0 && y >= 0 && x < img.width && y < img.height && same(img.at(x, y), color)) {
        return true;
      }
    }
  }
  return false;
}

/** How many pixels in the rectangle have exactly `color`. */
function count(img: Img, x0: number, y0: number, x1: number, y1: number, color: number[]): number {
  let n = 0;
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      n += same(img.at(x, y), color) ? 1 : 0;
    }
  }
  return n;
}

const BLUE = parseColor(TAB10[0]);
const ORANGE = parseColor(TAB10[1]);
const TEXT = [34, 34, 34];
const WHITE = [255, 255, 255];
const xs = (n: number, a: number, b: number) =>
  Array.from({ length: n }, (_, i) => a + ((b - a) * i) / (n - 1));

Deno.test("y = x: size, white background, and the line colour along the diagonal only", async () => {
  const x = xs(21, 0, 1);
  const spec: LinePlotSpec = { series: [{ name: "y = x", x, y: x }], title: "diagonal" };
  const img = await decode(await linePlot(spec));
  assert.equal(img.width, 800);
  assert.equal(img.height, 480);
  assert.deepEqual(img.at(0, 0), WHITE);
  assert.deepEqual(img.at(799, 479), WHITE);
  const L = linePlotLayout(spec);
  assert.ok(L.area.x0 > 0 && L.area.x1 < 799 && L.area.y0 > 0 && L.area.y1 < 479);
  for (const t of xs(17, 0.02, 0.98)) {
    assert.ok(near(img, L.toPixel(t, t), BLUE), `line colour near (${t}, ${t})`);
  }
  // off the diagonal (and away from the legend): no line colour
  for (const t of [0.15, 0.3, 0.7, 0.85]) {
    assert.ok(!near(img, L.toPixel(t, 1 - t), BLUE, 2), `no line near (${t}, ${1 - t})`);
  }
  // the x data range is padded by 5% each side
  assert.ok(Math.abs(L.x.min + 0.05) < 1e-9 && Math.abs(L.x.max - 1.05) < 1e-9);
});

Deno.test("the legend names the series in text pixels, and is absent without names", async () => {
  const x = xs(11, 0, 1);
  const base: LinePlotSpec = { series: [{ name: "DenseDINO", x, y: x }], legend: "upper left" };
  const L = linePlotLayout(base);
  const box = [L.area.x0, L.area.y0, L.area.x0 + 250, L.area.y0 + 60] as const;
  const named = await decode(await linePlot(base));
  assert.ok(count(named, ...box, TEXT) > 40, "legend text");
  assert.ok(count(named, ...box, BLUE) > 10, "legend line swatch");
  const anon = await decode(await linePlot({ ...base, series: [{ name: "", x, y: x }] }));
  assert.equal(count(anon, ...box, TEXT), 0);
  // "best" avoids the data: y = x leaves the upper-left and lower-right corners free
  const best = await decode(await linePlot({ ...base, legend: "best" }));
  const up = count(best, ...box, TEXT);
  const lowRight = count(best, L.area.x1 - 250, L.area.y1 - 60, L.area.x1, L.area.y1, TEXT);
  assert.ok(up > 40 || lowRight > 40);
});

Deno.test("non-finite points leave gaps; a lone point gets a marker", async () => {
  const x = xs(11, 0, 10);
  const y = x.map((v) => (v === 5 ? NaN : 1));
  const spec: LinePlotSpec = {
    series: [
      { name: "", x, y },
      { name: "", x: [2, 8], y: [3, Infinity] },
    ],
    yRange: [0, 4],
  };
  const img = await decode(await linePlot(spec));
  const L = linePlotLayout(spec);
  assert.ok(near(img, L.toPixel(2.5, 1), BLUE));
  assert.ok(near(img, L.toPixel(7.5, 1), BLUE));
  for (const v of [4.5, 5, 5.5]) assert.ok(!near(img, L.toPixel(v, 1), BLUE, 1), `gap at ${v}`);
  // (2, 3) has no finite neighbour: drawn as a dot, exactly orange at its centre
  const [px, py] = L.toPixel(2, 3);
  assert.deepEqual(img.at(Math.round(px), Math.round(py)), ORANGE);
  assert.ok(!near(img, L.toPixel(5, 3), ORANGE, 2));
});

Deno.test("empty series, no series and a single point render", async () => {
  for (
    const spec of [
      { series: [] },
      { series: [{ name: "nothing", x: [], y: [] }] },
      { series: [{ name: "nan", x: [1, 2], y: [NaN, NaN] }] },
      { series: [{ name: "one", x: [3], y: [7] }], width: 200, height: 120 },
    ] as LinePlotSpec[]
  ) {
    const img = await decode(await linePlot(spec));
    assert.equal(img.width, spec.width ?? 800);
    const L = linePlotLayout(spec);
    assert.ok(L.x.min < L.x.max && L.y.min < L.y.max);
    assert.ok(L.y.ticks.length >= 2);
  }
  const spec: LinePlotSpec = { series: [{ name: "one", x: [3], y: [7] }] };
  const L = linePlotLayout(spec);
  assert.ok(L.x.min < 3 && L.x.max > 3 && L.y.min < 7 && L.y.max > 7);
  const [px, py] = L.toPixel(3, 7);
  assert.deepEqual((await decode(await linePlot(spec))).at(Math.round(px), Math.round(py)), BLUE);
});

Deno.test("log scale: powers of ten as ticks, a power law is straight, y ≤ 0 is a gap", async () => {
  const x = xs(41, 0, 4);
  const y = x.map((v) => 10 ** v);
  y[20] = 0; // x = 2: not drawable on a log axis
  const spec: LinePlotSpec = { series: [{ name: "10^x", x, y }], logY: true, yLabel: "value" };
  const L = linePlotLayout(spec);
  assert.equal(L.y.log, true);
  assert.deepEqual(L.y.ticks, [1, 10, 100, 1000, 10000]);
  assert.deepEqual(L.y.labels, ["1", "10", "100", "1000", "10000"]);
  // evenly spaced in pixels
  const rows = L.y.ticks.map((t) => L.toPixel(0, t)[1]);
  for (let k = 2; k < rows.length; k++) {
    assert.ok(Math.abs(rows[k] - rows[k - 1] - (rows[1] - rows[0])) < 1e-6);
  }
  const img = await decode(await linePlot(spec));
  for (const v of [0.5, 1, 1.5, 2.5, 3, 3.5]) assert.ok(near(img, L.toPixel(v, 10 ** v), BLUE));
  assert.ok(!near(img, L.toPixel(2, 100), BLUE, 1), "gap where y = 0");
  // a wide range is labelled with exponents
  const wide = linePlotLayout({ series: [{ name: "", x: [0, 1], y: [1e-7, 1e-1] }], logY: true });
  assert.ok(wide.y.labels.includes("1e-5"), wide.y.labels.join(" "));
  assert.throws(() => linePlotLayout({ ...spec, yRange: [0, 10] }), RangeError);
});

Deno.test("given x ticks: at those values with their labels, out-of-range ones left out", () => {
  const x = [0, 1, 2, 3, 4]; // log2 of 1, 2, 4, 8, 16
  const spec: LinePlotSpec = {
    series: [{ name: "", x, y: [3, 1, 4, 1, 5] }],
    xTicks: [...x, 9],
    xTickLabels: ["1", "2", "4", "8", "16", "512"],
  };
  const L = linePlotLayout(spec);
  assert.deepEqual(L.x.ticks, x);
  assert.deepEqual(L.x.labels, ["1", "2", "4", "8", "16"]);
  // without labels: the values
  assert.deepEqual(linePlotLayout({ ...spec, xTickLabels: undefined }).x.labels, [
    "0",
    "1",
    "2",
    "3",
    "4",
  ]);
  assert.throws(
    () => linePlotLayout({ ...spec, xTickLabels: ["1"] }),
    /one label per x tick: 1 labels, 6 ticks/,
  );
  assert.throws(() => linePlotLayout({ ...spec, xTicks: undefined }), /6 labels, no ticks/);
});

Deno.test("an x label wider than the plot is shortened and stays inside the image", async () => {
  const xLabel = "a very long axis label that cannot fit under a narrow plot at all";
  const W = 240, H = 180;
  const img = await decode(
    await linePlot({ series: [{ name: "", x: [0, 1], y: [0, 1] }], xLabel, width: W, height: H }),
  );
  // the label's rows: the bottom band below the tick labels; ink there, but not at the edges
  let ink = 0;
  for (let y = H - 24; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const dark = img.at(x, y)[0] < 128;
      if (dark) ink++;
      if (x < 4 || x >= W - 4) assert.ok(!dark, `ink at the edge (${x}, ${y})`);
    }
  }
  assert.ok(ink > 100, `the label is drawn (${ink} dark pixels)`);
});

Deno.test("nice linear ticks: 1, 2, 2.5 or 5 × 10^k steps with matching labels", () => {
  for (const [a, b] of [[0, 1], [0, 1000], [-3.7, 12.2], [0.001, 0.0042], [5e5, 3e6], [-1, -0.5]]) {
    const L = linePlotLayout({ series: [{ name: "", x: [0, 1], y: [a, b] }] });
    const t = L.y.ticks;
    assert.ok(t.length >= 3 && t.length <= 12, `${a}..${b}: ${t}`);
    assert.ok(t.every((v) => v >= L.y.min && v <= L.y.max));
    const step = t[1] - t[0];
    const mant = step / 10 ** Math.floor(Math.log10(step));
    assert.ok([1, 2, 2.5, 5].some((m) => Math.abs(mant - m) < 1e-6), `step ${step}`);
    L.y.labels.forEach((l, k) =>
      assert.ok(Math.abs(Number(l) - t[k]) <= 1e-9 * Math.abs(step) * 1e3)
    );
    assert.equal(new Set(L.y.labels).size, t.length);
  }
});

Deno.test("mean ± std: a shaded band (20% of the colour) and error bars", async () => {
  const x = xs(11, 0, 1);
  const { mean, std } = meanStd([x.map(() => 0.4), x.map(() => 0.6)]);
  assert.ok(mean.every((m) => Math.abs(m - 0.5) < 1e-12));
  assert.ok(std.every((s) => Math.abs(s - Math.sqrt(0.02)) < 1e-12));
  const spec: LinePlotSpec = { series: [{ name: "mean", x, y: mean, std }], yRange: [0, 1] };
  const L = linePlotLayout(spec);
  const img = await decode(await linePlot(spec));
  const tint = BLUE.map((c) => Math.round(255 + (c - 255) * 0.2));
  // inside the band, off the grid lines: the tint (±1 for rounding), outside: white
  const [px, py] = L.toPixel(0.33, 0.5 + 0.09);
  const inside = img.at(Math.round(px), Math.round(py));
  assert.ok(inside.every((v, i) => Math.abs(v - tint[i]) <= 1), `${inside} vs ${tint}`);
  const [qx, qy] = L.toPixel(0.33, 0.5 + 0.25);
  assert.deepEqual(img.at(Math.round(qx), Math.round(qy)), WHITE);
  assert.ok(near(img, L.toPixel(0.33, 0.5), BLUE));
  // as error bars: whiskers at x = 0.5 reach y ± std, nothing between points
  const bars = { ...spec, series: [{ ...spec.series[0], bandStyle: "bars" as const }] };
  const eb = await decode(await linePlot(bars));
  assert.ok(near(eb, L.toPixel(0.5, 0.5 + std[0] - 0.02), BLUE, 1));
  assert.ok(near(eb, L.toPixel(0.5, 0.5 - std[0] + 0.02), BLUE, 1));
  const [rx, ry] = L.toPixel(0.55, 0.59);
  assert.deepEqual(eb.at(Math.round(rx), Math.round(ry)), WHITE);
  // a point without a finite std breaks the band (the line too, with a NaN y)
  const gx = [0, 1, 2, 3, 4];
  const gapSpec: LinePlotSpec = {
    series: [{ name: "", x: gx, y: gx.map(() => 0.5), std: [0.1, 0.1, NaN, 0.1, 0.1] }],
    yRange: [0, 1],
  };
  const G = linePlotLayout(gapSpec);
  const gap = await decode(await linePlot(gapSpec));
  const tinted = (x: number) => {
    const [u, v] = G.toPixel(x, 0.57);
    return gap.at(Math.round(u), Math.round(v)).every((c, i) => Math.abs(c - tint[i]) <= 1);
  };
  assert.ok(tinted(0.6) && tinted(3.4));
  assert.ok(!tinted(1.6) && !tinted(2.4));
  assert.ok(near(gap, G.toPixel(1.6, 0.5), BLUE), "the line itself continues");
  // explicit lower/upper edges
  const lu = linePlotLayout({
    series: [{ name: "", x: [0, 1], y: [1, 1], lower: [0, 0], upper: [5, 5] }],
  });
  assert.ok(lu.y.min < 0 && lu.y.max > 5);
});

Deno.test("meanStd skips non-finite values and handles ragged runs", () => {
  const { mean, std } = meanStd([[1, 2, NaN], [3, NaN], [5]]);
  assert.deepEqual(mean, [3, 2, NaN]);
  assert.deepEqual(std, [2, 0, NaN]);
  assert.deepEqual(meanStd([]), { mean: [], std: [] });
});

Deno.test("bad input: mismatched lengths, ranges and sizes throw RangeError", () => {
  assert.throws(() => linePlotLayout({ series: [{ name: "a", x: [1, 2], y: [1] }] }), RangeError);
  assert.throws(
    () => linePlotLayout({ series: [{ name: "a", x: [1, 2], y: [1, 2], std: [1] }] }),
    RangeError,
  );
  assert.throws(() => linePlotLayout({ series: [], yRange: [1, 1] }), RangeError);
  assert.throws(() => linePlotLayout({ series: [], width: 50 }), RangeError);
  assert.throws(() => parseColor("#12345"), RangeError);
  assert.deepEqual(parseColor("#abc"), [0xaa, 0xbb, 0xcc]);
  assert.deepEqual(parseColor([1, 2, 3]), [1, 2, 3]);
});

Deno.test("the bitmap font draws its glyphs exactly, at any scale", () => {
  const A = [
    ".###.",
    "#...#",
    "#...#",
    "#...#",
    "#####",
    "#...#",
    "#...#",
    ".....",
  ];
  const g = [
    ".....",
    ".....",
    ".####",
    "#...#",
    "#...#",
    ".####",
    "....#",
    "####.",
  ];
  for (const [ch, rows] of [["A", A], ["g", g]] as const) {
    for (const scale of [1, 3]) {
      const c = new Canvas(8 * scale, 10 * scale);
      c.text(ch, scale, scale, { scale, color: "#000000" });
      for (let y = 0; y < c.height; y++) {
        for (let x = 0; x < c.width; x++) {
          const gx = Math.floor(x / scale) - 1, gy = Math.floor(y / scale) - 1;
          const on = gx >= 0 && gx < 5 && gy >= 0 && gy < 8 && rows[gy][gx] === "#";
          assert.deepEqual(
            c.get(x, y),
            on ? [0, 0, 0] : [255, 255, 255],
            `${ch}×${scale} (${x},${y})`,
          );
        }
      }
    }
  }
  // unknown characters draw as "?"; widths and alignment
  const q = new Canvas(12, 10), u = new Canvas(12, 10);
  q.text("?", 0, 0);
  u.text("\u4e2d", 0, 0);
  assert.deepEqual(q.data, u.data);
  assert.equal(textWidth("ab", 2), 22);
  assert.equal(textWidth(""), 0);
  assert.equal(textHeight(3), 21);
  const r = new Canvas(40, 12);
  r.text("I", 39, 0, { align: "right" }); // columns 35..39; "I" inks column 3 at rows 0 and 6
  assert.deepEqual(r.get(37, 0), [34, 34, 34]);
  assert.deepEqual(r.get(38, 0), [255, 255, 255]);
  // vertical text is rotated counter-clockwise: the bar of "-" becomes one column of 5 pixels
  const v = new Canvas(20, 20);
  v.text("-", 10, 10, { vertical: true });
  let ink = 0;
  for (let y = 0; y < 20; y++) ink += same(v.get(10, y), [34, 34, 34]) ? 1 : 0;
  assert.equal(ink, 5);
});

Deno.test("grouped bars: one colour per series, NaN draws no bar, value labels", async () => {
  const spec = {
    groups: ["k-NN", "linear"],
    series: [
      { name: "DINO", values: [70, NaN] },
      { name: "DenseDINO", values: [72.5, 40], errors: [1, 2] },
    ],
    yLabel: "accuracy",
  };
  const img = await decode(await barPlot(spec));
  assert.equal(img.width, 800);
  const half = img.width / 2;
  assert.ok(count(img, 0, 0, half - 1, img.height - 1, BLUE) > 1000);
  assert.equal(count(img, half, 0, img.width - 1, img.height - 1, BLUE) > 200, false);
  assert.ok(count(img, 0, 0, half - 1, img.height - 1, ORANGE) > 1000);
  assert.ok(count(img, half, 0, img.width - 1, img.height - 1, ORANGE) > 500);
  await assert.rejects(
    () => barPlot({ groups: ["a"], series: [{ name: "x", values: [1, 2] }] }),
    RangeError,
  );
  const bare = await decode(await barPlot({ ...spec, valueLabels: false }));
  const textPixels = (im: Img) => count(im, 0, 0, im.width - 1, im.height - 1, TEXT);
  assert.ok(textPixels(img) > textPixels(bare) + 3 * 20, "value labels add text");
  // given decimals: "70.000" has more ink than "70"
  const d0 = await decode(await barPlot({ ...spec, valueDecimals: 0 }));
  const d3 = await decode(await barPlot({ ...spec, valueDecimals: 3 }));
  assert.ok(textPixels(d3) > textPixels(d0) + 3 * 20, "three decimals on each of 3 labels");
  await assert.rejects(() => barPlot({ ...spec, valueDecimals: -1 }), /valueDecimals/);
  const neg = await decode(
    await barPlot({ groups: ["a", "b"], series: [{ name: "", values: [-1, 2] }] }),
  );
  assert.ok(count(neg, 0, 0, 799, 479, BLUE) > 1000);
});

Deno.test("saveLinePlot writes a decodable PNG atomically, leaving no temporary file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/curve.png`;
    await Deno.writeTextFile(path, "old");
    await saveLinePlot(path, { series: [{ name: "a", x: [0, 1, 2], y: [3, 1, 2] }] });
    const img = await decode(await Deno.readFile(path));
    assert.equal(img.width, 800);
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names, ["curve.png"]);
    await assert.rejects(
      () => saveLinePlot(`${dir}/missing/curve.png`, { series: [] }),
      /could not write/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("contact sheet: columns as wide as their widest tile, titles above; paste clips", async () => {
  const tile = (w: number, h: number) => new Canvas(w, h, "#000000");
  const sheet = contactSheet([
    [{ canvas: tile(10, 20), title: "a" }, { canvas: tile(30, 10), title: "a long title" }],
    [{ canvas: tile(20, 5) }],
  ], { pad: 2 });
  const titleH = 7 + 4;
  assert.equal(sheet.width, 2 + 20 + 2 + 30 + 2);
  assert.equal(sheet.height, 2 + (20 + titleH) + 2 + (5 + titleH) + 2);
  assert.deepEqual(sheet.get(2, 2 + titleH), [0, 0, 0]); // first tile's corner
  assert.deepEqual(sheet.get(24, 2 + titleH), [0, 0, 0]); // second column starts at 2 + 20 + 2
  assert.deepEqual(sheet.get(23, 2 + titleH), [255, 255, 255]);
  const dir = await Deno.makeTempDir({ prefix: "dd-sheet-" });
  try {
    await sheet.save(`${dir}/sheet.png`);
    const back = await decodePng(await Deno.readFile(`${dir}/sheet.png`));
    assert.equal(back.width, sheet.width);
    assert.equal(back.height, sheet.height);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert.throws(() => contactSheet([]), /no tiles/);
  assert.throws(() => contactSheet([[{ canvas: tile(2, 2) }]], { pad: -1 }), /pad/);
  // paste: partly outside on every side, only the overlap is copied
  const dst = new Canvas(4, 3, "#ffffff");
  dst.paste(tile(3, 3), -1, 1);
  dst.paste(tile(1, 1), 3, -1);
  dst.paste(tile(2, 2), 9, 9);
  dst.paste(tile(1, 1), 2.6, -0.4); // rounded to (3, 0)
  const black = [];
  for (let y = 0; y < 3; y++) {
    for (let x = 0; x < 4; x++) if (dst.get(x, y)[0] === 0) black.push(`${x},${y}`);
  }
  assert.deepEqual(black, ["3,0", "0,1", "1,1", "0,2", "1,2"]);
});
