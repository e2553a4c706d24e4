/**
 * The DINO photometric augmentations against torchvision / PIL values computed once offline
 * (`tests/fixtures/augment_reference.safetensors`, written by
 * `tests/fixtures/make_augment_reference.py` with /usr/bin/python3), with the same factors; the
 * per-image random order against sequential application; the probabilities; determinism;
 * memory; bad input.
 */
import assert from "node:assert/strict";
import {
  adjustBrightness,
  adjustContrast,
  adjustHue,
  adjustSaturation,
  applyColorJitter,
  blurWithRadii,
  cat,
  colorJitter,
  type ColorJitterParams,
  dinoPhotometric,
  type DinoViewKind,
  freeAll,
  gaussianBlur,
  Generator,
  hsvToRgb,
  liveTensors,
  loadSafetensors,
  pilBoxBlur,
  rand,
  randomGrayscale,
  rgbToHsv,
  sampleColorJitter,
  scope,
  solarize,
  solarizeAbove,
  type Tensor,
  toGrayscale,
  TorchError,
} from "../../mod.ts";

const FIXTURE = new URL("../fixtures/augment_reference.safetensors", import.meta.url).pathname;
const fixture = await loadSafetensors(FIXTURE);
const ref = fixture.tensors;
const params = JSON.parse(fixture.metadata.params);
const x = ref.x;

/** max |a − b| and mean |a − b|. */
function diff(a: Tensor, b: Tensor): { max: number; mean: number } {
  assert.deepEqual(a.shape, b.shape);
  return scope(() => {
    const d = a.sub(b).abs();
    return { max: d.max().item(), mean: d.mean().item() };
  });
}

function assertClose(a: Tensor, b: Tensor, tol: number, what: string): void {
  const { max } = diff(a, b);
  assert.ok(max <= tol, `${what}: max |diff| ${max} > ${tol}`);
}

function assertNoLeak(fn: () => void, what: string): void {
  const before = liveTensors();
  fn();
  assert.equal(liveTensors(), before, `${what} leaked tensors`);
}

/** Images whose pixels are random in [0, 1]. */
function randomImages(b: number, h: number, w: number, seed: number): Tensor {
  using g = new Generator(seed);
  return rand([b, 3, h, w], { generator: g });
}

// ---- the four jitter ops with explicit factors ----------------------------------------------

Deno.test("brightness, contrast, saturation, hue match torchvision's tensor ops per image", () => {
  const ops: [string, (t: Tensor, f: number[]) => Tensor][] = [
    ["brightness", adjustBrightness],
    ["contrast", adjustContrast],
    ["saturation", adjustSaturation],
    ["hue_a", adjustHue],
    ["hue_b", adjustHue],
  ];
  for (const [name, fn] of ops) {
    scope(() => assertClose(fn(x, params[name]), ref[name], 1e-6, name));
  }
  // one number for every image = the same number per image
  scope(() => {
    const a = adjustHue(x, 0.07);
    const b = adjustHue(x, [0.07, 0.07, 0.07]);
    assert.deepEqual(a.toBytes(), b.toBytes());
  });
});

Deno.test("HSV round trip and the colour wheel", () => {
  scope(() => {
    const t = randomImages(4, 9, 11, 3);
    assertClose(hsvToRgb(rgbToHsv(t)), t, 2e-6, "rgb → hsv → rgb");
    // pure red / yellow / green / cyan / blue / magenta at hue 0, 1/6, …, 5/6; grey → h = s = 0
    const px = [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1], [0.5, 0.5, 0.5]];
    const img = cat(px.map(([r, g, b]) => rand([1, 3, 1, 1]).mul(0).add(tensorOf(r, g, b))), 3);
    const hsv = rgbToHsv(img).toArray() as number[][][][];
    const hues = hsv[0][0][0];
    [0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 0].forEach((h, i) => {
      assert.ok(Math.abs(hues[i] - h) < 1e-6, `hue ${i}: ${hues[i]} vs ${h}`);
    });
    assert.equal(hsv[0][1][0][6], 0);
  });
});

function tensorOf(r: number, g: number, b: number): Tensor {
  return cat([r, g, b].map((v) => rand([1, 1, 1, 1]).mul(0).add(v)), 1);
}

// ---- colour jitter: order and probabilities ------------------------------------------------

Deno.test("colour jitter with fixed orders and factors matches torchvision's ColorJitter body", () => {
  for (const name of ["jitter_a", "jitter_b"]) {
    const p = params[name];
    const jp: ColorJitterParams = {
      apply: p.apply.map(Boolean),
      order: p.order,
      brightness: p.brightness,
      contrast: p.contrast,
      saturation: p.saturation,
      hue: p.hue,
    };
    scope(() => assertClose(applyColorJitter(x, jp), ref[name], 2e-6, name));
  }
});

/** Image i through the ops of `order[i]`, one image and one op at a time. */
function sequential(t: Tensor, jp: ColorJitterParams): Tensor {
  const fns = [adjustBrightness, adjustContrast, adjustSaturation, adjustHue];
  const fs = [jp.brightness, jp.contrast, jp.saturation, jp.hue];
  return scope(() => {
    const out: Tensor[] = [];
    for (let i = 0; i < t.size(0); i++) {
      let img = t.narrow(0, i, 1);
      if (jp.apply[i]) {
        for (const op of jp.order[i]) {
          const f = fs[op];
          if (f !== null) img = fns[op](img, [f[i]]);
        }
      }
      out.push(img);
    }
    return cat(out);
  });
}

Deno.test("per-image random order: both batchings equal sequential application", () => {
  using g = new Generator(11);
  scope(() => {
    const t = randomImages(40, 12, 10, 5);
    for (const strength of [undefined, { brightness: 0.4, hue: 0.3 }, { saturation: [0, 2] }]) {
      const jp = sampleColorJitter(40, strength as never, 0.8, g);
      // every permutation present in a batch this size is likely; check several occur
      assert.ok(new Set(jp.order.map((o) => o.join())).size >= 10);
      const want = sequential(t, jp);
      for (const grouping of ["auto", "orders", "slots"] as const) {
        const got = applyColorJitter(t, jp, grouping);
        assertClose(got, want, 1e-6, `${grouping}, strength ${JSON.stringify(strength)}`);
      }
    }
  });
});

Deno.test("colour jitter draws: p, uniform orders, factor ranges", () => {
  using g = new Generator(1);
  const n = 24000;
  const jp = sampleColorJitter(n, undefined, 0.8, g);
  const applied = jp.apply.filter(Boolean).length / n;
  assert.ok(Math.abs(applied - 0.8) < 4 * Math.sqrt(0.16 / n), `apply fraction ${applied}`);
  const counts = new Map<string, number>();
  for (const o of jp.order) counts.set(o.join(), (counts.get(o.join()) ?? 0) + 1);
  assert.equal(counts.size, 24);
  for (const c of counts.values()) assert.ok(Math.abs(c - 1000) < 5 * Math.sqrt(1000), `${c}`);
  const range = (v: number[]) => [Math.min(...v), Math.max(...v)];
  const [b0, b1] = range(jp.brightness!);
  assert.ok(b0 >= 0.6 && b0 < 0.61 && b1 <= 1.4 && b1 > 1.39, `brightness ${b0}..${b1}`);
  const [s0, s1] = range(jp.saturation!);
  assert.ok(s0 >= 0.8 && s0 < 0.81 && s1 <= 1.2 && s1 > 1.19, `saturation ${s0}..${s1}`);
  const [h0, h1] = range(jp.hue!);
  assert.ok(h0 >= -0.1 && h0 < -0.09 && h1 <= 0.1 && h1 > 0.09, `hue ${h0}..${h1}`);
  // a zero strength leaves the op out
  const none = sampleColorJitter(3, { brightness: 0.4 }, 1, g);
  assert.equal(none.contrast, null);
  assert.equal(none.hue, null);
  // and jitter with p = 0 changes nothing
  scope(() => assert.deepEqual(colorJitter(x, undefined, g, 0).toBytes(), x.toBytes()));
});

// ---- grayscale, blur, solarisation, normalisation ------------------------------------------

Deno.test("grayscale: ITU-R 601-2 luma, PIL's convert('L') within rounding", () => {
  scope(() => {
    const g = toGrayscale(x);
    assertClose(g, ref.gray_601, 1e-6, "0.299 R + 0.587 G + 0.114 B");
    assertClose(g, ref.gray_pil, 0.5 / 255 + 1e-6, "PIL convert('L')");
    using gen = new Generator(0);
    assert.deepEqual(randomGrayscale(x, 1, gen).toBytes(), g.toBytes());
    assert.deepEqual(randomGrayscale(x, 0, gen).toBytes(), x.toBytes());
  });
});

Deno.test("PIL's box blur parameters", () => {
  // Pillow 9.4: radius 2 → σ² = 4/3 → R = 1 + 0.375, one full tap each side plus the outer taps
  const k = pilBoxBlur(2.0);
  assert.equal(k.boxRadius, 1.375);
  assert.equal(k.taps, 1);
  assert.equal(k.weight, Math.trunc(Math.fround(16777216 / 3.75)) / 16777216);
  assert.ok(Math.abs(3 * k.weight + 2 * k.edgeWeight - 1) < 1e-6);
  // PIL's float32 arithmetic gives R = 0.25 + 2⁻²⁵ at radius 1 and the full-tap weight
  // ⌊fl32(2²⁴ / 1.5)⌋ = 11184811 (11184810 in double): needed to match PIL bit for bit
  assert.equal(pilBoxBlur(1.0).boxRadius, 0.25 + 2 ** -25);
  assert.equal(pilBoxBlur(1.0).weight * 16777216, 11184811);
});

Deno.test("Gaussian blur = PIL's extended box blur (exact in float, PIL within its rounding)", () => {
  const report: string[] = [];
  (params.blur_radii as number[]).forEach((r, i) => {
    const key = params.blur_keys[i];
    scope(() => {
      const y = blurWithRadii(x, r);
      assertClose(y, ref[`blur_float_${key}`], 2e-6, `radius ${r} vs float model`);
      const d = diff(y, ref[`blur_pil_${key}`]);
      report.push(`r=${r}: max ${(d.max * 255).toFixed(2)} mean ${(d.mean * 255).toFixed(3)}`);
      assert.ok(d.max <= 3.0 / 255 && d.mean <= 1.0 / 255, `radius ${r} vs PIL: ${d.max * 255}`);
    });
  });
  scope(() => {
    const y = blurWithRadii(x, params.blur_mixed);
    assertClose(y, ref.blur_float_mixed, 2e-6, "per-image radii vs float model");
    const d = diff(y, ref.blur_pil_mixed);
    assert.ok(d.max <= 3.0 / 255 && d.mean <= 1.0 / 255, `mixed radii vs PIL: ${d.max * 255}`);
    // each image blurred with its own radius = each image alone
    for (let i = 0; i < 3; i++) {
      const one = blurWithRadii(x.narrow(0, i, 1), params.blur_mixed[i]);
      assertClose(y.narrow(0, i, 1), one, 1e-6, `image ${i} alone`);
    }
  });
  console.log(`blur vs PIL (8-bit levels): ${report.join("; ")}`);
  // the constant image stays constant (weights sum to ~1; edges replicated)
  scope(() => {
    const c = x.mul(0).add(0.5);
    assertClose(blurWithRadii(c, 1.7), c, 1e-6, "constant image");
  });
});

/** PIL's passes on one channel [h, w] in plain JS, edges clamped (for tiny images). */
function pilBlurChannel(v: Float64Array, h: number, w: number, radius: number): Float64Array {
  const k = pilBoxBlur(radius);
  const pass = (a: Float64Array, n: number, at: (a: Float64Array, i: number) => number[]) => {
    const out = new Float64Array(a.length);
    for (let line = 0; line < a.length / n; line++) {
      const src = at(a, line);
      for (let j = 0; j < n; j++) {
        const px = (d: number) => src[Math.min(n - 1, Math.max(0, j + d))];
        let acc = 0;
        for (let d = -k.taps; d <= k.taps; d++) acc += px(d) * k.weight;
        acc += (px(-k.taps - 1) + px(k.taps + 1)) * k.edgeWeight;
        out[line * n + j] = acc;
      }
    }
    return out;
  };
  let a = v;
  for (let p = 0; p < 3; p++) a = pass(a, w, (t, y) => [...t.subarray(y * w, y * w + w)]);
  // transpose, blur the columns as rows, transpose back
  const tr = (t: Float64Array, r: number, c: number) => {
    const o = new Float64Array(t.length);
    for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) o[j * r + i] = t[i * c + j];
    return o;
  };
  a = tr(a, h, w);
  for (let p = 0; p < 3; p++) a = pass(a, h, (t, col) => [...t.subarray(col * h, col * h + h)]);
  return tr(a, w, h);
}

Deno.test("blur on tiny images (sides below the box reach) = PIL's passes", () => {
  for (const [h, w] of [[1, 1], [1, 3], [2, 5], [4, 2], [3, 3]]) {
    scope(() => {
      const t = randomImages(2, h, w, h * 10 + w);
      const radii = [1.9, 0.4];
      const got = blurWithRadii(t, radii).toTypedArray() as Float32Array;
      const src = t.toTypedArray() as Float32Array;
      for (let i = 0; i < 2; i++) {
        for (let c = 0; c < 3; c++) {
          const off = (i * 3 + c) * h * w;
          const want = pilBlurChannel(
            Float64Array.from(src.subarray(off, off + h * w)),
            h,
            w,
            radii[i],
          );
          want.forEach((v, j) => {
            assert.ok(
              Math.abs(got[off + j] - v) < 1e-6,
              `${h}x${w} image ${i}: ${got[off + j]} vs ${v}`,
            );
          });
        }
      }
    });
  }
});

Deno.test("solarisation = PIL's ImageOps.solarize(128); normalisation = torchvision Normalize", () => {
  scope(() => {
    assertClose(solarizeAbove(x), ref.solarize_pil, 1e-6, "solarize");
    using g = new Generator(0);
    assert.deepEqual(solarize(x, 1, g).toBytes(), solarizeAbove(x).toBytes());
    const off = { jitterP: 0, grayscaleP: 0, blurP: 0, solarizeP: 0 };
    for (const kind of ["global1", "global2", "local"] as DinoViewKind[]) {
      assertClose(dinoPhotometric(x, kind, g, off), ref.normalize, 1e-6, `normalize ${kind}`);
    }
  });
});

// ---- probabilities -------------------------------------------------------------------------

/** Fraction of images changed by `fn` (any element differs). */
function changedFraction(t: Tensor, fn: (t: Tensor) => Tensor): number {
  return scope(() => {
    const changed = fn(t).ne(t).flatten(1).any(1).float();
    return changed.mean().item();
  });
}

function assertFraction(got: number, p: number, n: number, what: string): void {
  const tol = 4.5 * Math.sqrt((p * (1 - p)) / n) + 1e-9;
  assert.ok(Math.abs(got - p) <= tol, `${what}: ${got} vs ${p} ± ${tol}`);
}

Deno.test("per-image probabilities: grayscale, blur, solarize, jitter", () => {
  const n = 3000;
  using g = new Generator(21);
  scope(() => {
    // colourful images: grayscale, blur and jitter always change them; all values ≥ 0.6 so
    // solarisation always does too
    const t = randomImages(n, 4, 4, 9).mul(0.4).add(0.6);
    assertFraction(changedFraction(t, (v) => randomGrayscale(v, 0.2, g)), 0.2, n, "grayscale");
    for (const p of [1.0, 0.1, 0.5]) {
      const f = changedFraction(t, (v) => gaussianBlur(v, p, g, { radiusMin: 1, radiusMax: 2 }));
      assertFraction(f, p, n, `blur p ${p}`);
    }
    assertFraction(changedFraction(t, (v) => solarize(v, 0.2, g)), 0.2, n, "solarize");
    const jit = changedFraction(t, (v) => colorJitter(v, { brightness: 0.4 }, g, 0.8));
    assertFraction(jit, 0.8, n, "jitter");
    // grayscale images have equal channels; the fraction of grey views in the global1 pipeline
    // (jitter never makes a colourful image grey): 0.2
    const y = dinoPhotometric(t, "global1", g, { normalize: false });
    const grey = y.narrow(1, 0, 1).eq(y.narrow(1, 1, 1)).logicalAnd(
      y.narrow(1, 1, 1).eq(y.narrow(1, 2, 1)),
    ).flatten(1).all(1).float().mean().item();
    assertFraction(grey, 0.2, n, "grey views in dinoPhotometric");
  });
});

// ---- determinism, memory, bad input ---------------------------------------------------------

Deno.test("determinism: the same seed gives the same bytes", () => {
  scope(() => {
    const t = randomImages(16, 24, 20, 2);
    for (const kind of ["global1", "global2", "local"] as DinoViewKind[]) {
      const run = (seed: number) => {
        using g = new Generator(seed);
        return dinoPhotometric(t, kind, g).toBytes();
      };
      assert.deepEqual(run(5), run(5), kind);
      assert.notDeepEqual(run(5), run(6), kind);
    }
  });
});

Deno.test("no leaks, inputs untouched", () => {
  using g = new Generator(4);
  const t = randomImages(8, 16, 16, 1);
  const before = t.toBytes();
  const jp = sampleColorJitter(8, undefined, 0.8, g);
  const cases: [string, () => Tensor][] = [
    ["colorJitter", () => colorJitter(t, undefined, g)],
    ["applyColorJitter", () => applyColorJitter(t, jp)],
    ["colorJitter p 0", () => colorJitter(t, undefined, g, 0)],
    ["randomGrayscale", () => randomGrayscale(t, 0.5, g)],
    ["gaussianBlur", () => gaussianBlur(t, 0.5, g)],
    ["gaussianBlur p 0", () => gaussianBlur(t, 0, g)],
    ["solarize", () => solarize(t, 0.5, g)],
    ["adjustHue", () => adjustHue(t, 0.1)],
    ["global1", () => dinoPhotometric(t, "global1", g)],
    ["global2", () => dinoPhotometric(t, "global2", g)],
    ["local", () => dinoPhotometric(t, "local", g)],
  ];
  for (const [what, fn] of cases) {
    assertNoLeak(() => {
      const out = fn();
      assert.deepEqual(out.shape, t.shape);
      assert.notEqual(out, t);
      out.free();
    }, what);
  }
  assert.deepEqual(t.toBytes(), before);
  // a failing call frees what it made
  assertNoLeak(() => assert.throws(() => adjustHue(t, [0.1, 0.2])), "bad factor count");
  freeAll(t);
});

Deno.test("bad input: clear errors", () => {
  using g = new Generator(0);
  scope(() => {
    const gray = rand([2, 1, 4, 4]);
    assert.throws(() => colorJitter(gray, undefined, g), /RGB batch \[B, 3, H, W\]/);
    assert.throws(() => toGrayscale(rand([3, 4, 4])), /RGB batch/);
    assert.throws(() => randomGrayscale(x.to("int64"), 0.2, g), /floating/);
    assert.throws(() => randomGrayscale(x, 1.5, g), /probability/);
    assert.throws(() => adjustHue(x, 0.7), /\[-0.5, 0.5\]/);
    assert.throws(() => adjustBrightness(x, -1), /≥ 0/);
    assert.throws(() => colorJitter(x, { hue: 0.6 }, g), /hue range/);
    assert.throws(() => colorJitter(x, { contrast: [1.5, 0.5] }, g), /not ordered/);
    assert.throws(() => gaussianBlur(x, 0.5, g, { radiusMin: 2, radiusMax: 1 }), /radius range/);
    assert.throws(() => blurWithRadii(x, [1, 2]), /one per image/);
    assert.throws(
      () => dinoPhotometric(x, "global3" as DinoViewKind, g),
      (e: Error) => e instanceof TorchError && /view kind/.test(e.message),
    );
    const jp = sampleColorJitter(3, undefined, 1, g);
    assert.throws(() => applyColorJitter(x, jp, "rows" as never), /unknown grouping/);
    jp.order[1] = [0, 1, 1, 3];
    assert.throws(() => applyColorJitter(x, jp), /not a permutation/);
  });
});
