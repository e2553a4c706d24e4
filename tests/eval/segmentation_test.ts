/**
 * The linear segmentation probe: near-perfect mIoU on synthetic features that encode the class
 * and chance level (with `fitted: false`) on features that carry nothing; the cached mode's
 * crop resampling equals `gridSample` (and plain bilinear upsampling without a crop); mask
 * targets equal Leopart's crop → PIL-nearest → flip → torch-nearest chain run with libtorch's
 * own kernels; the class-prior loss equals the cross-entropy of constant log-frequency logits;
 * the StepLR schedule; cached and recompute modes train the same head when the augmentation
 * and the features commute; labels out of range name the file; the feature cache refuses
 * another model's file; the whole probe on a random-init ViT leaks nothing.
 */
import assert from "node:assert/strict";
import {
  crossEntropy,
  type Dataset,
  FASHION_SCENES_MASK_CLASSES,
  FashionScenes,
  fromTypedArray,
  Generator,
  gridSample,
  interpolate,
  keep,
  liveTensors,
  manualSeed,
  rand,
  randn,
  type Sample,
  scope,
  type Tensor,
  tensor,
} from "../../mod.ts";
import { EvalError, loadBackbone } from "../../lib/eval/backbone.ts";
import { featureCacheFile, saveFeatureCache } from "../../lib/eval/features.ts";
import { LabelError } from "../../lib/eval/metrics.ts";
import {
  cachedSegFeatures,
  type CropFlip,
  cropMasks,
  cropSampleGrid,
  evaluateProbe,
  evaluateProbeOnFeatures,
  extractSegFeatures,
  FASHION_SCENES_PROBE,
  freeFeatureSet,
  fullCrop,
  type GridExtractor,
  LEOPART_PROBE,
  LinearSegHead,
  linearSegProbe,
  priorCrossEntropy,
  probeFitted,
  probeLrAt,
  resampleCrops,
  resolveProbeOptions,
  sampleCropFlip,
  segCacheKey,
  type SegFeatureSet,
  tokensToGrid,
  trainProbeOnFeatures,
  trainProbeRecompute,
} from "../../lib/eval/segmentation.ts";
import { GeometryRng } from "../../lib/densedino/views.ts";

function maxAbsDiff(a: Tensor, b: Tensor): number {
  return scope(() => a.sub(b).abs().amax().item());
}

/** A deterministic LCG in [0, 1). */
function lcg(seed: number): () => number {
  let s = seed;
  return () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
}

/**
 * N synthetic examples: a g×g grid of D-dim features over a (g·cell)-px image whose class
 * regions are 2×2-cell blocks (60% background, the rest of K − 1 classes); the features are
 * `signal` · one-hot(class) + N(0, 0.5²) noise (signal 0: noise only).
 */
function synthetic(
  N: number,
  K: number,
  signal: number,
  seed: number,
  g = 8,
  cell = 4,
  D = 16,
): SegFeatureSet {
  const rnd = lcg(seed);
  const S = g * cell;
  const cls = new Int32Array(N * g * g);
  for (let i = 0; i < cls.length; i++) {
    cls[i] = rnd() < 0.6 ? 0 : 1 + Math.floor(rnd() * (K - 1));
  }
  const feat = new Float32Array(N * D * g * g);
  const mask = new Uint8Array(N * S * S);
  for (let n = 0; n < N; n++) {
    for (let y = 0; y < g; y++) {
      for (let x = 0; x < g; x++) {
        const c = cls[n * g * g + (y & ~1) * g + (x & ~1)];
        feat[((n * D + c) * g + y) * g + x] = signal;
        for (let yy = 0; yy < cell; yy++) {
          for (let xx = 0; xx < cell; xx++) {
            mask[n * S * S + (y * cell + yy) * S + x * cell + xx] = c;
          }
        }
      }
    }
  }
  using gen = new Generator(seed);
  return scope(() => ({
    features: keep(
      fromTypedArray(feat, [N, D, g, g]).add(randn([N, D, g, g], { generator: gen }).mul(0.5)),
    ),
    masks: keep(fromTypedArray(mask, [N, S, S])),
  }));
}

const SYNTH = {
  numClasses: 4,
  inputSize: 32,
  maskSize: 32,
  epochs: 12,
  batchSize: 8,
  lr: 0.05,
  milestone: 10,
};

Deno.test("probe: near-perfect on features that encode the class, chance on noise", () => {
  const live = liveTensors();
  // features that encode the class
  const tr = synthetic(64, 4, 4, 1);
  const va = synthetic(32, 4, 4, 2);
  const r = trainProbeOnFeatures(tr, SYNTH);
  const m = evaluateProbeOnFeatures(r.head, va, { numClasses: 4 }).compute();
  r.head.free();
  freeFeatureSet(tr);
  freeFeatureSet(va);
  assert.ok(m.miou > 0.95, `mIoU ${m.miou}`);
  assert.ok(m.pixelAccuracy > 0.98, `pixel accuracy ${m.pixelAccuracy}`);
  assert.ok(r.fitted);
  assert.deepEqual(r.warnings, []);
  assert.ok(r.trainLoss < 0.3 * r.priorLoss, `${r.trainLoss} vs ${r.priorLoss}`);
  assert.equal(r.history.length, 12);

  // features that carry nothing: the class prior is not beaten, the probe predicts background
  const tn = synthetic(64, 4, 0, 1);
  const vn = synthetic(32, 4, 0, 2);
  const n = trainProbeOnFeatures(tn, SYNTH);
  const mn = evaluateProbeOnFeatures(n.head, vn, { numClasses: 4 }).compute();
  n.head.free();
  freeFeatureSet(tn);
  freeFeatureSet(vn);
  assert.equal(n.fitted, false);
  assert.ok(n.trainLoss > 0.9 * n.priorLoss, `${n.trainLoss} vs ${n.priorLoss}`);
  assert.match(n.warnings.join("\n"), /did not fit.*class-prior baseline/);
  // chance: background everywhere gives IoU(bg) ≈ its share (~0.6) and 0 for the others
  assert.ok(mn.miou < 0.25, `mIoU ${mn.miou}`);
  assert.ok(Math.abs(mn.pixelAccuracy - mn.perClass[0].pixels / mn.pixels) < 0.05);
  assert.equal(liveTensors(), live);
});

Deno.test("probe: the prior loss is the cross-entropy of constant log-frequency logits", () => {
  const live = liveTensors();
  const counts = [830, 100, 50, 20, 0];
  const prior = priorCrossEntropy(counts);
  // independent: crossEntropy of logits = log(frequency) at every pixel of those labels
  const labels: number[] = [];
  counts.forEach((c, k) => {
    for (let i = 0; i < c; i++) labels.push(k);
  });
  const ce = scope(() => {
    const n = labels.length;
    const logp = tensor(counts.map((c) => Math.log(Math.max(c, 1e-30) / n)));
    const logits = logp.unsqueeze(0).expand([n, counts.length]);
    return crossEntropy(logits, tensor(labels, { dtype: "int64" })).item();
  });
  assert.ok(Math.abs(prior - ce) < 1e-5, `${prior} vs ${ce}`);
  assert.equal(priorCrossEntropy([7, 0]), 0);
  assert.ok(Number.isNaN(priorCrossEntropy([0, 0])));
  assert.ok(probeFitted(0.8, 1, 0.1) && !probeFitted(0.95, 1, 0.1) && !probeFitted(NaN, 1));
  assert.equal(liveTensors(), live);
});

Deno.test("probe: StepLR schedule and option checks", () => {
  const lrs = Array.from({ length: 25 }, (_, e) => probeLrAt(e, LEOPART_PROBE));
  assert.deepEqual(lrs.slice(0, 20), new Array(20).fill(0.01));
  for (const v of lrs.slice(20)) assert.ok(Math.abs(v - 0.001) < 1e-15);
  assert.ok(Math.abs(probeLrAt(45, LEOPART_PROBE) - 1e-4) < 1e-15); // StepLR: every 20 epochs
  assert.equal(probeLrAt(24, { ...LEOPART_PROBE, milestone: 0 }), 0.01);
  const o = resolveProbeOptions({ numClasses: 21 });
  assert.deepEqual(
    [o.inputSize, o.maskSize, o.epochs, o.lr, o.momentum, o.weightDecay, o.milestone, o.batchSize],
    [448, 100, 25, 0.01, 0.9, 1e-4, 20, 60],
  );
  assert.deepEqual([o.scale, o.initStd, o.ignoreIndex, o.flip], [[0.8, 1], 0.01, 255, 0.5]);
  const f = resolveProbeOptions({ numClasses: 11 }, FASHION_SCENES_PROBE);
  assert.deepEqual([f.inputSize, f.maskSize, f.batchSize, f.lr, f.epochs], [96, 48, 16, 0.1, 25]);
  for (
    const [bad, re] of [
      [{ lr: 0 }, /lr must be a positive number/],
      [{ epochs: 1.5 }, /epochs must be a positive integer/],
      [{ scale: [0.5, 1.5] }, /scale must be a range/],
      [{ ignoreIndex: 3 }, /ignoreIndex 3 is one of the 21 classes/],
      [{ classes: ["a"] }, /1 class names for 21 classes/],
    ] as const
  ) {
    assert.throws(() => resolveProbeOptions({ numClasses: 21, ...bad }), re);
  }
});

Deno.test("head: a 1×1 convolution, normal(0, 0.01) weights and zero bias", () => {
  const live = liveTensors();
  using g = new Generator(3);
  const head = new LinearSegHead(192, 21, { generator: g });
  const [std, bias] = scope(() => [head.weight.std().item(), head.bias.abs().amax().item()]);
  assert.ok(Math.abs(std - 0.01) < 0.0005, `std ${std}`);
  assert.equal(bias, 0);
  assert.deepEqual(head.weight.shape, [21, 192, 1, 1]);
  assert.deepEqual(head.stateDict() && Object.keys(head.stateDict()), ["weight", "bias"]);
  // logits = W·x + b at every position (an einsum as independent truth)
  const d = scope(() => {
    head.bias.detach().copy_(rand([21]));
    const x = randn([2, 192, 3, 4]);
    const want = x.permute([0, 2, 3, 1]).matmul(head.weight.reshape([21, 192]).transpose(0, 1))
      .add(head.bias).permute([0, 3, 1, 2]);
    return maxAbsDiff(head.forward(x), want);
  });
  assert.ok(d < 1e-5, `diff ${d}`);
  // patch tokens [B, N, D] → grid [B, D, h, w], row-major patches
  const grid = scope(() => {
    const p = tensor([[[1, 10], [2, 20], [3, 30], [4, 40], [5, 50], [6, 60]]]); // N = 2×3
    return tokensToGrid(p, 2, 3).toArray();
  });
  assert.deepEqual(grid, [[[[1, 2, 3], [4, 5, 6]], [[10, 20, 30], [40, 50, 60]]]]);
  head.free();
  assert.equal(liveTensors(), live);
});

Deno.test("cached-mode crops: resampling equals gridSample, and bilinear upsampling uncropped", () => {
  const live = liveTensors();
  const rng = new GeometryRng(5);
  const S = 96, out = 40;
  const crops: CropFlip[] = Array.from(
    { length: 6 },
    () => sampleCropFlip(S, S, { scale: [0.08, 1], ratio: [0.5, 2], flip: 0.5 }, rng),
  );
  assert.ok(crops.some((c) => c.flip) && crops.some((c) => !c.flip));
  const d = scope(() => {
    const maps = randn([6, 5, 6, 6]);
    const a = resampleCrops(maps, crops, S, out);
    const b = gridSample(maps, cropSampleGrid(crops, S, out), {
      mode: "bilinear",
      paddingMode: "border",
      alignCorners: false,
    });
    // the whole image, not flipped: plain bilinear upsampling (align_corners false)
    const full = [fullCrop(S, S), fullCrop(S, S)];
    const m2 = maps.narrow(0, 0, 2);
    const c = resampleCrops(m2, full, S, out);
    const e = interpolate(m2, { size: [out, out], mode: "bilinear" });
    // a flipped whole image reads the mirrored map
    const f = resampleCrops(m2, full.map((x) => ({ ...x, flip: true })), S, out);
    return [maxAbsDiff(a, b), maxAbsDiff(c, e), maxAbsDiff(f, e.flip([3]))];
  });
  for (const v of d) assert.ok(v < 1e-5, `diffs ${d}`);
  assert.equal(liveTensors(), live);
});

Deno.test("mask targets: Leopart's crop → PIL nearest → flip → torch nearest chain", () => {
  const live = liveTensors();
  const rng = new GeometryRng(9);
  const H = 37, W = 53, In = 48, out = 20;
  using g = new Generator(4);
  const mask = scope(() => keep(rand([H, W], { generator: g }).mul(21).floor().to("uint8")));
  for (let trial = 0; trial < 8; trial++) {
    const c = sampleCropFlip(W, H, { scale: [0.3, 1], ratio: [3 / 4, 4 / 3], flip: 0.5 }, rng);
    const d = scope(() => {
      const got = cropMasks([mask], [c], In, out);
      // independent: libtorch's kernels. PIL's NEAREST resize is "nearest-exact"; Leopart's
      // downsampling of the 448-px mask to 100 px is F.interpolate's legacy "nearest"
      const crop = mask.narrow(0, c.top, c.height).narrow(1, c.left, c.width).float()
        .unsqueeze(0).unsqueeze(0);
      let x = interpolate(crop, { size: [In, In], mode: "nearest-exact" });
      if (c.flip) x = x.flip([3]);
      const want = interpolate(x, { size: [out, out], mode: "nearest" }).squeeze(0).long();
      return maxAbsDiff(got.float(), want.float());
    });
    assert.equal(d, 0, `crop ${JSON.stringify(c)}`);
  }
  mask.free();
  assert.equal(liveTensors(), live);
});

/** In-memory examples: images [3, S, S] and masks [S, S] with 2 classes + some 255. */
class Blobs implements Dataset {
  readonly classes = ["bg", "a", "b"];
  constructor(readonly length: number, readonly S = 16, readonly badLabel: number | null = null) {}
  nameOf(i: number): string {
    return `blobs/${i}.png`;
  }
  maskPathOf(i: number): string {
    return `blobs/masks/${i}.png`;
  }
  get(i: number): Promise<Sample> {
    const S = this.S;
    const m = new Uint8Array(S * S);
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        const v = ((x >> 2) + (y >> 2) + i) % 3;
        m[y * S + x] = (x + y + i) % 11 === 0 ? 255 : v;
      }
    }
    if (this.badLabel !== null && i === 2) m[5] = this.badLabel;
    return Promise.resolve(scope(() => {
      const mask = fromTypedArray(m, [S, S]);
      // colour encodes the class (plus a little noise)
      using g = new Generator(i);
      const image = mask.float().div(2).clamp(0, 1).unsqueeze(0).expand([3, S, S])
        .add(rand([3, S, S], { generator: g }).mul(0.05)).clamp(0, 1).contiguous();
      return { image, mask, name: this.nameOf(i) };
    }));
  }
}

/** A frozen "backbone" that commutes with flips: 4×4 average pooling of the image. */
function poolExtractor(): GridExtractor {
  return {
    dim: 3,
    device: "cpu",
    extract: (x) =>
      scope(() =>
        interpolate(x, { size: [x.size(2) / 4, x.size(3) / 4], mode: "bilinear", antialias: true })
      ),
  };
}

Deno.test("cached and recompute modes train the same head when crops are whole images", async () => {
  const live = liveTensors();
  const ds = new Blobs(10);
  const ex = poolExtractor();
  const opts = {
    numClasses: 3,
    inputSize: 16,
    maskSize: 8,
    epochs: 3,
    batchSize: 4,
    lr: 0.5,
    scale: [1, 1] as [number, number],
    ratio: [1, 1] as [number, number],
    flip: 0.5, // flips commute with this extractor and are applied identically by both modes
    seed: 3,
  };
  const set = await cachedSegFeatures(ds, ex, {
    numClasses: 3,
    inputSize: 16,
    fingerprint: "pool",
    dataset: "blobs",
  });
  const a = trainProbeOnFeatures(set, opts);
  const b = await trainProbeRecompute(ds, ex, opts);
  const d = [maxAbsDiff(a.head.weight, b.head.weight), maxAbsDiff(a.head.bias, b.head.bias)];
  assert.ok(d[0] < 1e-4 && d[1] < 1e-4, `head diffs ${d}`);
  a.history.forEach((e, k) => {
    assert.ok(Math.abs(e.loss - b.history[k].loss) < 1e-4);
    assert.ok(Math.abs(e.priorLoss - b.history[k].priorLoss) < 1e-9);
  });
  // evaluating from cached features equals evaluating through the extractor
  const ca = evaluateProbeOnFeatures(a.head, set, { numClasses: 3 }).counts();
  const cb = (await evaluateProbe(a.head, ds, ex, { numClasses: 3, inputSize: 16 })).counts();
  assert.deepEqual(ca, cb);
  assert.ok(ca.flat().reduce((x, y) => x + y, 0) > 0);
  // float16 storage of the cached features: the head still trains in float32, nearly the same
  const half = await extractSegFeatures(ds, ex, { numClasses: 3, inputSize: 16, dtype: "float16" });
  assert.equal(half.features.dtype, "float16");
  const h = trainProbeOnFeatures(half, opts);
  assert.equal(h.head.weight.dtype, "float32");
  assert.ok(maxAbsDiff(h.head.weight, a.head.weight) < 1e-2);
  h.head.free();
  freeFeatureSet(half);
  a.head.free();
  b.head.free();
  freeFeatureSet(set);
  assert.equal(liveTensors(), live);
});

Deno.test("labels out of range name the mask file; the cache refuses another model's file", async () => {
  const live = liveTensors();
  const ex = poolExtractor();
  await assert.rejects(
    () =>
      cachedSegFeatures(new Blobs(4, 16, 40), ex, {
        numClasses: 3,
        inputSize: 16,
        fingerprint: "p",
        dataset: "b",
      }),
    (e: unknown) => {
      assert.ok(e instanceof LabelError && e instanceof EvalError);
      assert.match(
        (e as Error).message,
        /^blobs\/masks\/2\.png: label 40 is outside the class range 0\.\.2/,
      );
      return true;
    },
  );
  await assert.rejects(
    () =>
      trainProbeRecompute(new Blobs(4, 16, 9), ex, {
        numClasses: 3,
        inputSize: 16,
        maskSize: 8,
        epochs: 1,
      }),
    /blobs\/masks\/2\.png: label 9/,
  );
  assert.equal(liveTensors(), live);

  const dir = await Deno.makeTempDir({ prefix: "dd-seg-cache-" });
  try {
    const ds = new Blobs(6);
    const opts = {
      numClasses: 3,
      inputSize: 16,
      cacheDir: dir,
      dataset: "blobs",
      fingerprint: "model-a",
    };
    const first = await cachedSegFeatures(ds, ex, opts);
    assert.equal(first.fromCache, false);
    const again = await cachedSegFeatures(ds, ex, opts);
    assert.equal(again.fromCache, true);
    assert.equal(again.cacheFile, first.cacheFile);
    assert.equal(maxAbsDiff(first.features, again.features), 0);
    assert.equal(scope(() => maxAbsDiff(first.masks.float(), again.masks.float())), 0);
    // another model's features at this model's cache file
    const keyB = segCacheKey("model-b", "blobs", 16);
    const fileB = featureCacheFile(dir, keyB);
    await saveFeatureCache(fileB, segCacheKey("model-a", "blobs", 16), {
      features: first.features,
      masks: first.masks,
    });
    await assert.rejects(
      () => cachedSegFeatures(ds, ex, { ...opts, fingerprint: "model-b" }),
      (e: unknown) => {
        assert.ok(e instanceof EvalError);
        assert.ok((e as Error).message.includes(fileB), (e as Error).message);
        assert.match(
          (e as Error).message,
          /fingerprint: the file has "model-a", this run "model-b"/,
        );
        return true;
      },
    );
    freeFeatureSet(first);
    freeFeatureSet(again);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert.equal(liveTensors(), live);
});

Deno.test("linearSegProbe: a random-init ViT on fashion-scenes, both modes, nothing leaked", async () => {
  const dir = await Deno.makeTempDir({ prefix: "dd-seg-" });
  const saved = Deno.env.get("DENSEDINO_CACHE");
  Deno.env.set("DENSEDINO_CACHE", `${dir}/cache`);
  try {
    const train = await FashionScenes.open({ split: "train", count: 16, size: 32, quiet: true });
    const val = await FashionScenes.open({ split: "val", count: 6, size: 32, quiet: true });
    manualSeed(0);
    const b = await loadBackbone({ arch: "vit_micro", patchSize: 8, imgSize: 32 });
    const live = liveTensors();
    const lines: string[] = [];
    const opts = {
      numClasses: 11,
      classes: FASHION_SCENES_MASK_CLASSES,
      defaults: FASHION_SCENES_PROBE,
      inputSize: 32,
      maskSize: 16,
      epochs: 2,
      log: (m: string) => lines.push(m),
    };
    const c = await linearSegProbe(b, train, val, opts);
    assert.equal(c.mode, "cached");
    assert.deepEqual(c.counts, { train: 16, val: 6 });
    assert.equal(c.perClass.length, 11);
    assert.equal(c.perClass[0].class, "background");
    assert.equal(c.metrics.pixels + c.metrics.ignored, 6 * 32 * 32);
    assert.equal(c.history.length, 2);
    assert.ok(c.priorLoss > 0 && c.trainLoss > 0);
    // fitted needs the prior beaten (and more than one class predicted)
    if (c.fitted) assert.ok(probeFitted(c.trainLoss, c.priorLoss, 0.1));
    if (!c.fitted) assert.ok(c.warnings.length > 0);
    assert.ok(
      lines.some((l) => /^epoch 2\/2: loss [\d.]+ \(class prior [\d.]+\), lr 0\.1/.test(l)),
    );
    const r = await linearSegProbe(b, train, val, {
      ...opts,
      features: "recompute",
      limitTrain: 8,
      limitVal: 4,
    });
    assert.equal(r.mode, "recompute");
    assert.deepEqual(r.counts, { train: 8, val: 4 });
    assert.ok(Number.isFinite(r.miou));
    assert.equal(liveTensors(), live);
    await assert.rejects(
      () => linearSegProbe(b, train, val, { ...opts, inputSize: 36 }),
      /input size 36 is not a multiple of the patch size 8/,
    );
    b.free();
  } finally {
    if (saved === undefined) Deno.env.delete("DENSEDINO_CACHE");
    else Deno.env.set("DENSEDINO_CACHE", saved);
    await Deno.remove(dir, { recursive: true });
  }
});
