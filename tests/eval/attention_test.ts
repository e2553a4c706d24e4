/**
 * Attention and reference maps: the maps equal a softmax computed by hand from the last block's
 * weights (token order, mask, patch layout); they are parts of probability rows; hand-built
 * weights that make a head attend to a known patch (class token) or to the patch under the
 * reference point (reference tokens) put the peak there; reference tokens leave the class maps
 * unchanged under the default mask; DINO's mass threshold matches its ascending-cumsum
 * formulation; rendered heat maps, masks and sheets decode back with the right sizes and colours.
 */
import assert from "node:assert/strict";
import {
  decodePng,
  fromTypedArray,
  full,
  Generator,
  liveTensors,
  noGrad,
  pngToRgb8,
  rand,
  randn,
  scope,
  type Tensor,
  tensor,
  VisionTransformer,
  type ViTConfig,
  zeros,
} from "../../mod.ts";
import {
  attentionMaps,
  attentionMassMask,
  classAttentionMaps,
  colorize,
  imageCanvas,
  referenceAttentionMaps,
  renderHeatmap,
  renderMask,
} from "../../lib/eval/attention.ts";

function vit(seed: number, cfg: Partial<ViTConfig> = {}): VisionTransformer {
  using g = new Generator(seed);
  return new VisionTransformer({
    embedDim: 16,
    depth: 2,
    numHeads: 2,
    patchSize: 4,
    imgSize: 16,
    generator: g,
    ...cfg,
  }).eval();
}

function values(t: Tensor): number[] {
  return [...(scope(() => t.to({ dtype: "float64" }).contiguous().toTypedArray()) as Float64Array)];
}

/** Sets parameters by name (values as flat arrays, shapes from the parameters). */
function setParams(m: VisionTransformer, vals: Record<string, ArrayLike<number>>): void {
  const sd = m.stateDict();
  noGrad(() => {
    for (const [k, v] of Object.entries(vals)) {
      const p = sd[k];
      assert.ok(p, `no parameter ${k}`);
      using t = fromTypedArray(Float32Array.from(v), p.shape);
      p.copy_(t);
    }
  });
}

/** The centre of grid cell (row i, col j) of an h×w grid, in grid_sample coordinates. */
function centre(i: number, j: number, h: number, w: number): [number, number] {
  return [((j + 0.5) / w) * 2 - 1, ((i + 0.5) / h) * 2 - 1];
}

function argmax(v: number[]): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

/** Rows of the 8×8 Sylvester–Hadamard matrix: rows 1–7 are ±1, mean zero, orthogonal. */
function hadamard8(): number[][] {
  let h = [[1]];
  for (let k = 0; k < 3; k++) {
    h = [...h.map((r) => [...r, ...r]), ...h.map((r) => [...r, ...r.map((x) => -x)])];
  }
  return h;
}

const START = liveTensors();

Deno.test("the maps equal a hand-computed softmax of the last block (mask, order, layout)", () => {
  // depth 1: the last block's input is the token embedding, computed here by hand
  const m = vit(3, { depth: 1, embedDim: 8, numHeads: 2, patchSize: 4, imgSize: 16 });
  const D = 8, nh = 2, dh = 4, p = 4;
  // zero patch-embedding weights: a patch token is its bias + its positional embedding, so the
  // tokens need no convolution; a 4×4 grid (trained size: no interpolation)
  setParams(m, { "patch_embed.proj.weight": new Float32Array(D * 3 * p * p) });
  const sd = m.stateDict();
  const get = (k: string) => values(sd[k]);
  const bias = get("patch_embed.proj.bias"), pos = get("patch_pos_embed");
  const cls = get("cls_token").map((v, d) => v + get("cls_pos_embed")[d]);
  const [h, w] = [4, 4], N = h * w;
  // reference points at patch centres: bicubic sampling at a grid node returns the node
  const cells = [[1, 2], [3, 0], [0, 0]];
  const K = cells.length;
  const patches = Array.from(
    { length: N },
    (_, j) => pos.slice(j * D, (j + 1) * D).map((v, d) => v + bias[d]),
  );
  const refs = cells.map(([i, j]) => pos.slice((i * w + j) * D, (i * w + j + 1) * D));
  const tokens = [cls, ...refs, ...patches]; // [cls, refs, patches]
  const [g1, b1] = [get("blocks.0.norm1.weight"), get("blocks.0.norm1.bias")];
  const ln = (x: number[]) => {
    const mu = x.reduce((a, b) => a + b) / D;
    const va = x.reduce((a, b) => a + (b - mu) ** 2, 0) / D;
    return x.map((v, d) => ((v - mu) / Math.sqrt(va + 1e-6)) * g1[d] + b1[d]);
  };
  const W = get("blocks.0.attn.qkv.weight"), Bq = get("blocks.0.attn.qkv.bias");
  const lin = (x: number[], row0: number) =>
    Array.from(
      { length: D },
      (_, o) => x.reduce((a, v, i) => a + v * W[(row0 + o) * D + i], Bq[row0 + o]),
    );
  const xs = tokens.map(ln);
  const q = xs.map((x) => lin(x, 0)), k = xs.map((x) => lin(x, D));
  const T = tokens.length;
  // the default mask: the class row skips the reference columns; a reference row sees the
  // patches and itself
  const allowed = (r: number, c: number) => r === 0 ? !(c >= 1 && c <= K) : c > K || c === r;
  const row = (head: number, r: number) => {
    const logits = Array.from({ length: T }, (_, c) => {
      if (!allowed(r, c)) return -Infinity;
      let s = 0;
      for (let e = 0; e < dh; e++) s += q[r][head * dh + e] * k[c][head * dh + e];
      return s / Math.sqrt(dh);
    });
    const mx = Math.max(...logits);
    const ex = logits.map((l) => Math.exp(l - mx));
    const z = ex.reduce((a, b) => a + b);
    return ex.map((e) => e / z);
  };
  using image = zeros([3, 16, 16]); // content is irrelevant with zero patch weights
  using points = tensor(cells.map(([i, j]) => centre(i, j, h, w)));
  const maps = attentionMaps(m, image, { points });
  try {
    assert.deepEqual(maps.cls.shape, [nh, h, w]);
    assert.deepEqual(maps.ref!.shape, [K, nh, h, w]);
    assert.deepEqual(maps.grid, [h, w]);
    assert.equal(maps.heads, nh);
    const gotCls = values(maps.cls), gotRef = values(maps.ref!);
    let worst = 0;
    for (let head = 0; head < nh; head++) {
      const r0 = row(head, 0);
      for (let j = 0; j < N; j++) {
        worst = Math.max(worst, Math.abs(gotCls[head * N + j] - r0[1 + K + j]));
      }
      for (let r = 0; r < K; r++) {
        const rr = row(head, 1 + r);
        for (let j = 0; j < N; j++) {
          worst = Math.max(worst, Math.abs(gotRef[(r * nh + head) * N + j] - rr[1 + K + j]));
        }
      }
    }
    assert.ok(worst < 1e-5, `max |map − hand softmax| = ${worst}`);
  } finally {
    maps.cls.free();
    maps.ref?.free();
    m.free();
  }
});

Deno.test("class and reference maps are parts of probability rows", () => {
  const m = vit(5);
  using image = randn([3, 16, 24]); // a 4×6 grid, interpolated positional embedding
  using points = tensor([[0, 0], [-0.7, 0.3], [0.9, -0.9]]);
  const maps = attentionMaps(m, image, { points });
  using full = noGrad(() =>
    scope(() => m.lastSelfAttention(image.unsqueeze(0), { points: points.unsqueeze(0) }))
  );
  try {
    const K = 3, N = 24, nh = 2;
    assert.deepEqual(maps.cls.shape, [nh, 4, 6]);
    const rows = values(full), T = 1 + K + N;
    const cls = values(maps.cls), ref = values(maps.ref!);
    for (let head = 0; head < nh; head++) {
      const base = head * T * T;
      const patchSum = cls.slice(head * N, (head + 1) * N).reduce((a, b) => a + b);
      assert.ok(cls.slice(head * N, (head + 1) * N).every((v) => v >= 0));
      assert.ok(patchSum <= 1 + 1e-6 && patchSum > 0);
      // patches + cls + refs = the whole row = 1; the refs get nothing under the default mask
      const refCols = rows.slice(base + 1, base + 1 + K);
      assert.deepEqual(refCols, [0, 0, 0]);
      const total = patchSum + rows[base] + refCols.reduce((a, b) => a + b);
      assert.ok(Math.abs(total - 1) < 1e-5, `class row sums to ${total}`);
      for (let r = 0; r < K; r++) {
        const part = ref.slice((r * nh + head) * N, (r * nh + head + 1) * N);
        assert.ok(part.every((v) => v >= 0));
        const s = part.reduce((a, b) => a + b);
        const self = rows[base + (1 + r) * T + 1 + r];
        assert.ok(s <= 1 + 1e-6 && Math.abs(s + self - 1) < 1e-5, `ref row ${r}: ${s} + ${self}`);
      }
    }
  } finally {
    maps.cls.free();
    maps.ref?.free();
    m.free();
  }
});

Deno.test("hand-built weights: each head's class token attends to its own marked patch", () => {
  // 8 wide, 2 heads of 4. The red channel turns a patch token into pattern B, the green into
  // pattern C (Hadamard rows), everything else is pattern A; head 0's keys read pattern B and
  // head 1's pattern C, every query is a constant: head 0 looks at the red patch, head 1 at the
  // green one.
  const D = 8, p = 4;
  const [, A, B, C, Dc] = hadamard8();
  const m = vit(0, { depth: 1, embedDim: D, numHeads: 2, patchSize: p, imgSize: 16 });
  const proj = new Float32Array(D * 3 * p * p);
  for (let d = 0; d < D; d++) {
    for (let k = 0; k < p * p; k++) {
      proj[(d * 3 + 0) * p * p + k] = (B[d] - A[d]) / (p * p);
      proj[(d * 3 + 1) * p * p + k] = (C[d] - A[d]) / (p * p);
    }
  }
  const qkvW = new Float32Array(3 * D * D), qkvB = new Float32Array(3 * D);
  const s = 4;
  qkvB[0] = s; // head 0 query (dims 0..3) = s·e0
  qkvB[4] = s; // head 1 query (dims 4..7) = s·e4
  for (let i = 0; i < D; i++) {
    qkvW[(D + 0) * D + i] = B[i]; // head 0 key dim 0 = B·x
    qkvW[(D + 4) * D + i] = C[i]; // head 1 key dim 4 = C·x
  }
  setParams(m, {
    "patch_embed.proj.weight": proj,
    "patch_embed.proj.bias": A,
    "patch_pos_embed": new Float32Array(16 * D),
    "cls_token": Dc,
    "cls_pos_embed": new Float32Array(D),
    "blocks.0.attn.qkv.weight": qkvW,
    "blocks.0.attn.qkv.bias": qkvB,
  });
  // an 8×16 image: a 2×4 grid (also checks rows vs columns); red patch at (1, 2), green at (0, 3)
  const [h, w] = [2, 4];
  const img = new Float32Array(3 * 8 * 16);
  const paint = (c: number, i: number, j: number) => {
    for (let y = i * p; y < (i + 1) * p; y++) {
      for (let x = j * p; x < (j + 1) * p; x++) img[c * 128 + y * 16 + x] = 1;
    }
  };
  paint(0, 1, 2);
  paint(1, 0, 3);
  using image = fromTypedArray(img, [3, 8, 16]);
  using maps = classAttentionMaps(m, image);
  try {
    assert.deepEqual(maps.shape, [2, h, w]);
    const v = values(maps);
    assert.equal(argmax(v.slice(0, 8)), 1 * w + 2);
    assert.equal(argmax(v.slice(8, 16)), 0 * w + 3);
    // logits 0.5·4·8 = 16 above the rest: nearly all the mass
    assert.ok(v[1 * w + 2] > 0.99 && v[8 + 3] > 0.99, `${v}`);
  } finally {
    m.free();
  }
});

Deno.test("hand-built weights: a reference token attends to the patch under its point", () => {
  // tokens are their positional embeddings (zero patch weights); q = k = 3·x in every head, so
  // a reference token (the positional grid sampled at its point) attends to the patch whose
  // embedding it most resembles: the one under the point
  const D = 32;
  const m = vit(11, { depth: 1, embedDim: D, numHeads: 2, patchSize: 8, imgSize: 32 });
  const qkvW = new Float32Array(3 * D * D);
  for (let i = 0; i < D; i++) qkvW[i * D + i] = qkvW[(D + i) * D + i] = 3;
  using g = new Generator(1);
  using pos = randn([16 * D], { generator: g });
  setParams(m, {
    "patch_embed.proj.weight": new Float32Array(D * 3 * 64),
    "patch_embed.proj.bias": new Float32Array(D),
    "blocks.0.attn.qkv.weight": qkvW,
    "blocks.0.attn.qkv.bias": new Float32Array(3 * D),
    "patch_pos_embed": values(pos),
  });
  const [h, w] = [4, 4];
  const cells = [[0, 0], [1, 2], [3, 1], [2, 3], [3, 3]];
  // at the centres, and a quarter-patch off them
  const pts = cells.flatMap(([i, j]) => {
    const [x, y] = centre(i, j, h, w);
    return [[x, y], [x + 0.25 * (2 / w), y - 0.2 * (2 / h)]];
  });
  using points = tensor(pts);
  using image = zeros([3, 32, 32]);
  using maps = referenceAttentionMaps(m, image, points);
  try {
    assert.deepEqual(maps.shape, [pts.length, 2, h, w]);
    const v = values(maps), N = h * w;
    pts.forEach((_, r) => {
      const [i, j] = cells[Math.floor(r / 2)];
      for (let head = 0; head < 2; head++) {
        const row = v.slice((r * 2 + head) * N, (r * 2 + head + 1) * N);
        assert.equal(argmax(row), i * w + j, `point ${pts[r]} head ${head}: ${row}`);
      }
    });
  } finally {
    m.free();
  }
});

Deno.test("reference tokens leave the class maps unchanged under the default mask", () => {
  const m = vit(9);
  using image = randn([3, 16, 16]);
  using points = scope(() => rand([5, 2]).mul(2).sub(1));
  using plain = classAttentionMaps(m, image);
  using withRefs = classAttentionMaps(m, image, { points });
  using unmasked = classAttentionMaps(m, image, { points, maskMode: "none" });
  try {
    const d = scope(() => plain.sub(withRefs).abs().amax().item());
    assert.ok(d < 1e-6, `class maps moved by ${d}`);
    // without the mask the refs do take part (so the check above can fail)
    const d2 = scope(() => plain.sub(unmasked).abs().amax().item());
    assert.ok(d2 > 1e-4, `unmasked class maps moved only ${d2}`);
    // a model in training mode is evaluated in eval mode and left in training mode
    m.train();
    using again = classAttentionMaps(m, image);
    assert.ok(scope(() => plain.sub(again).abs().amax().item()) === 0);
    assert.equal(m.training, true);
  } finally {
    m.free();
  }
});

Deno.test("bad inputs name the problem", () => {
  const m = vit(1);
  try {
    using odd = zeros([3, 18, 16]);
    assert.throws(
      () => classAttentionMaps(m, odd),
      /18×16 is not a positive multiple of the patch size 4/,
    );
    using batch = zeros([1, 3, 16, 16]);
    assert.throws(() => classAttentionMaps(m, batch), /expected one normalised image \[3, H, W\]/);
    using img = zeros([3, 16, 16]);
    using pts = zeros([1, 2, 2]);
    assert.throws(() => referenceAttentionMaps(m, img, pts), /points must be \[K, 2\]/);
    using far = tensor([[1.5, 0]]);
    assert.throws(() => referenceAttentionMaps(m, img, far), /\[-1, 1\]/);
    using map = zeros([4, 4]);
    assert.throws(() => attentionMassMask(map, 0), /keep must be in \(0, 1\]/);
    assert.throws(() => renderHeatmap(img, map, { zoom: 1.5 }), /zoom must be a positive integer/);
  } finally {
    m.free();
  }
});

Deno.test("attentionMassMask: hand cases and DINO's ascending-cumsum formulation", () => {
  using a = tensor([[5, 3], [1, 1]]);
  using k6 = attentionMassMask(a, 0.6);
  assert.deepEqual(values(k6), [1, 1, 0, 0]); // 0.5 + 0.3 ≥ 0.6
  using k5 = attentionMassMask(a, 0.5);
  assert.deepEqual(values(k5), [1, 0, 0, 0]); // 0.5 alone holds 0.5
  using k1 = attentionMassMask(a, 1);
  assert.deepEqual(values(k1), [1, 1, 1, 1]);
  // DINO: sort ascending, normalise, cumsum, keep where cumsum > 1 − keep
  using g = new Generator(4);
  using r = rand([3, 5, 7], { generator: g });
  using got = attentionMassMask(r, 0.6);
  const v = values(r), out = values(got);
  for (let m = 0; m < 3; m++) {
    const row = v.slice(m * 35, (m + 1) * 35);
    const total = row.reduce((x, y) => x + y);
    const order = row.map((_, i) => i).sort((x, y) => row[x] - row[y]);
    let cum = 0;
    const want = new Array(35).fill(0);
    for (const i of order) {
      cum += row[i] / total;
      want[i] = cum > 1 - 0.6 ? 1 : 0;
    }
    assert.deepEqual(out.slice(m * 35, (m + 1) * 35), want);
  }
});

Deno.test("rendering: heat maps, masks, markers and sheets decode back with the right pixels", async () => {
  using img = full([3, 8, 12], 0.5); // mid grey, a 2×3 grid of 4-px patches
  using map = tensor([[0, 1, 2], [3, 4, 5]]);
  const cv = renderHeatmap(img, map, { alpha: 1, zoom: 2 });
  assert.equal(cv.width, 24);
  assert.equal(cv.height, 16);
  // nearest upsampling: each patch an 8×8 block of one colour; min → the colour map's bottom,
  // max → its top
  assert.deepEqual(cv.get(0, 0), colorize(0));
  assert.deepEqual(cv.get(7, 7), colorize(0));
  assert.deepEqual(cv.get(8, 0), colorize(0.2));
  assert.deepEqual(cv.get(23, 15), colorize(1));
  assert.deepEqual(cv.get(16, 8), colorize(1));
  assert.deepEqual(colorize(1, "inferno"), [0xfc, 0xff, 0xa4]);
  const png = await decodePng(await cv.toPng());
  assert.equal(png.width, 24);
  assert.equal(png.height, 16);
  assert.deepEqual([...pngToRgb8(png).slice(0, 3)], colorize(0));
  // half alpha over grey 128
  const half = renderHeatmap(img, map, { alpha: 0.5 });
  const top = colorize(1);
  assert.deepEqual(half.get(11, 7), top.map((c) => Math.round(128 * 0.5 + c * 0.5)));
  // bilinear: smooth, differs from nearest inside the image but keeps the size
  const bil = renderHeatmap(img, map, { alpha: 1, upsample: "bilinear" });
  assert.equal(bil.width, 12);
  assert.notDeepEqual(bil.get(3, 1), bil.get(0, 1));
  // a marker at the centre of patch (1, 2) is cyan there
  const mk = renderHeatmap(img, map, {
    alpha: 1,
    zoom: 4,
    markers: [{ x: centre(1, 2, 2, 3)[0], y: centre(1, 2, 2, 3)[1], label: "0" }],
  });
  assert.deepEqual(mk.get(40, 24), [0, 255, 255]);
  // a mask: kept patches tinted, the rest dimmed
  using mask = tensor([[1, 0, 0], [0, 0, 1]]);
  const mc = renderMask(img, mask, { color: "#ff0000", alpha: 1, dim: 0.5 });
  assert.deepEqual(mc.get(0, 0), [255, 0, 0]);
  assert.deepEqual(mc.get(5, 0), [64, 64, 64]);
  assert.deepEqual(mc.get(11, 7), [255, 0, 0]);
  // the image alone
  const ic = imageCanvas(img, 3);
  assert.equal(ic.width, 36);
  assert.deepEqual(ic.get(35, 23), [128, 128, 128]);
});

Deno.test("no tensor leaks", () => {
  assert.equal(liveTensors(), START);
});
