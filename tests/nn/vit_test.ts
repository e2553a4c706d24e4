/**
 * The DenseDINO ViT: reference-token invariance under the `all2pos*` masks, the split fast path
 * against the explicit-mask computation (forward and gradients, with and without drop-path),
 * reference positional embeddings at patch centres, positional-grid interpolation, a float64
 * finite-difference check of one block, attention maps and intermediate layers, the learnable
 * reference token, the DINO head, and checkpoint interchange.
 */
import assert from "node:assert/strict";
import {
  ARCHS,
  assertGradcheck,
  attentionMask,
  autocast,
  Block,
  cat,
  createViT,
  type CreateViTOptions,
  DINOHead,
  freeAll,
  Generator,
  hasScaledDotProductAttention,
  liveTensors,
  loadModule,
  loadSafetensors,
  MASK_MODES,
  type MaskMode,
  noGrad,
  normalize,
  rand,
  randn,
  saveModule,
  saveSafetensors,
  scope,
  StateDictError,
  type Tensor,
  tensor,
  VisionTransformer,
  type ViTConfig,
  type ViTOutput,
} from "../../mod.ts";

const START = liveTensors();

const SPLIT_MODES: MaskMode[] = ["all2pos", "all2pos_pos2cls", "all2pos_pos2cls_eye"];
const OTHER_MODES: MaskMode[] = ["none", "all_query"];

/** vit_micro (64 wide, 2 deep, 2 heads), patch 8, trained on 32 px: a 4×4 grid. */
function micro(seed: number, opts: CreateViTOptions = {}): VisionTransformer {
  using g = new Generator(seed);
  return createViT("vit_micro", { patchSize: 8, imgSize: 32, generator: g, ...opts });
}

function custom(seed: number, cfg: Partial<ViTConfig> = {}): VisionTransformer {
  using g = new Generator(seed);
  return new VisionTransformer({
    embedDim: 32,
    depth: 3,
    numHeads: 2,
    patchSize: 8,
    imgSize: 32,
    generator: g,
    ...cfg,
  });
}

function images(b: number, seed: number, h = 32, w = 32): Tensor {
  using g = new Generator(seed);
  return randn([b, 3, h, w], { generator: g });
}

/** points [b, k, 2] uniform in [−0.95, 0.95]² */
function points(b: number, k: number, seed: number): Tensor {
  using g = new Generator(seed);
  return rand([b, k, 2], { generator: g }).mul(1.9).sub(0.95);
}

function maxDiff(a: Tensor, b: Tensor): number {
  assert.deepEqual(a.shape, b.shape);
  return scope(() => a.sub(b).abs().amax().item());
}

function maxAbs(a: Tensor): number {
  return scope(() => a.abs().amax().item());
}

/** Runs `fn` with `m`, freeing the model afterwards whatever happens. */
function withModel<T>(m: { free(): void }, fn: () => T): T {
  try {
    return scope(fn);
  } finally {
    m.free();
  }
}

// ---- invariance ------------------------------------------------------------------------------

Deno.test("vit: reference tokens leave cls and patch outputs unchanged under all2pos* masks", () => {
  const m = micro(1).eval();
  withModel(m, () => {
    const x = images(2, 2);
    const p = points(2, 5, 3);
    const base = m.forward(x);
    assert.equal(base.ref, null);
    assert.deepEqual(base.cls.shape, [2, 64]);
    assert.deepEqual(base.patch.shape, [2, 16, 64]);
    for (const maskMode of SPLIT_MODES) {
      for (const fastPath of [true, false]) {
        const o = m.forward(x, { points: p, maskMode, fastPath });
        const what = `${maskMode} fastPath=${fastPath}`;
        assert.deepEqual(o.ref?.shape, [2, 5, 64], what);
        // exact up to float rounding; the fast path runs one GEMM over [cls, patches, refs], so
        // BLAS blocking may round the class/patch rows differently from the reference-free run
        assert.ok(maxDiff(o.cls, base.cls) <= 1e-5, `${what}: cls ${maxDiff(o.cls, base.cls)}`);
        assert.ok(maxDiff(o.patch, base.patch) <= 1e-5, `${what}: patch`);
      }
    }
    // the default mask is all2pos_pos2cls_eye; the default path is the split one exactly when
    // libtorch has fused attention
    const d = m.forward(x, { points: p });
    const e = m.forward(x, {
      points: p,
      maskMode: "all2pos_pos2cls_eye",
      fastPath: hasScaledDotProductAttention(),
    });
    assert.deepEqual(d.ref!.toBytes(), e.ref!.toBytes());
    // moving the points moves nothing but the reference outputs
    const q = m.forward(x, { points: points(2, 5, 4) });
    assert.ok(maxDiff(q.cls, d.cls) <= 1e-5);
    assert.ok(maxDiff(q.ref!, d.ref!) > 1e-3);
    for (const maskMode of OTHER_MODES) {
      for (const fastPath of [true, false]) {
        const o = m.forward(x, { points: p, maskMode, fastPath });
        const what = `${maskMode} fastPath=${fastPath}`;
        assert.deepEqual(o.ref?.shape, [2, 5, 64], what);
        assert.ok(maxDiff(o.cls, base.cls) > 1e-3, `${what}: cls unchanged`);
        assert.ok(maxDiff(o.patch, base.patch) > 1e-3, `${what}: patch unchanged`);
      }
    }
  });
});

Deno.test("vit: the reference masks differ as documented (attentionMask)", () =>
  scope(() => {
    // [cls, r1, r2, p1, p2]: 1 = may attend
    const allowed = (mode: MaskMode) => {
      const m = attentionMask(5, 1, 2, mode);
      if (m === null) return null;
      return (m.eq(0).to("int32").toArray() as number[][]).map((r) => r.join(""));
    };
    assert.equal(allowed("none"), null);
    assert.deepEqual(allowed("all2pos"), ["10011", "10011", "10011", "10011", "10011"]);
    assert.deepEqual(allowed("all2pos_pos2cls"), ["10011", "00011", "00011", "10011", "10011"]);
    assert.deepEqual(allowed("all2pos_pos2cls_eye"), [
      "10011",
      "01011",
      "00111",
      "10011",
      "10011",
    ]);
    assert.deepEqual(allowed("all_query"), ["10011", "01011", "00111", "00011", "00011"]);
  }));

// ---- fast path vs explicit mask: outputs and gradients ---------------------------------------

interface RunResult {
  out: ViTOutput;
  grads: [string, Tensor][];
  gx: Tensor;
}

/**
 * Forward with `fastPath`, backward of Σ w·[cls, ref, patch], returning outputs and the
 * gradients w.r.t. every parameter and the images.
 */
function run(
  m: VisionTransformer,
  x: Tensor,
  p: Tensor,
  maskMode: MaskMode,
  fastPath: boolean,
  w: { cls: Tensor; ref: Tensor; patch: Tensor },
  g?: Generator,
): RunResult {
  for (const t of [x, ...m.parameters()]) t.setGrad(null);
  if (g) g.manualSeed(1234);
  const out = m.forward(x, { points: p, maskMode, fastPath });
  scope(() =>
    out.cls.mul(w.cls).sum().add(out.ref!.mul(w.ref).sum()).add(out.patch.mul(w.patch).sum())
      .backward()
  );
  const grads = m.namedParameters().map(([k, t]): [string, Tensor] => {
    const gr = t.grad;
    assert.ok(gr, `no gradient for ${k}`);
    return [k, gr];
  });
  return { out, grads, gx: x.grad! };
}

function compareRuns(a: RunResult, b: RunResult, what: string, tol = 1e-5): number {
  let worst = 0;
  const check = (u: Tensor, v: Tensor, name: string) => {
    // absolute 1e-5, scaled by the magnitude for large gradients
    const d = maxDiff(u, v);
    const scale = Math.max(1, maxAbs(v));
    worst = Math.max(worst, d / scale);
    assert.ok(d <= tol * scale, `${what}: ${name} differs by ${d} (max |value| ${scale})`);
  };
  check(a.out.cls, b.out.cls, "cls");
  check(a.out.ref!, b.out.ref!, "ref");
  check(a.out.patch, b.out.patch, "patch");
  check(a.gx, b.gx, "d/d images");
  a.grads.forEach(([k, ga], i) => check(ga, b.grads[i][1], `d/d ${k}`));
  return worst;
}

function weights(b: number, k: number, n: number, d: number, seed: number) {
  using g = new Generator(seed);
  return {
    cls: randn([b, d], { generator: g }),
    ref: randn([b, k, d], { generator: g }),
    patch: randn([b, n, d], { generator: g }),
  };
}

Deno.test("vit: fast path equals the explicit mask, forward and gradients (float32)", () => {
  const m = micro(5).eval();
  withModel(m, () => {
    const x = images(2, 6).requiresGrad_(true);
    const p = points(2, 6, 7);
    const w = weights(2, 6, 16, 64, 8);
    for (const mode of SPLIT_MODES) {
      scope(() => {
        const fast = run(m, x, p, mode, true, w);
        const slow = run(m, x, p, mode, false, w);
        assert.equal(fast.grads.length, m.parameters().length);
        compareRuns(fast, slow, mode);
        // the gradients are not trivially zero
        assert.ok(maxAbs(fast.gx) > 0 && maxAbs(fast.grads[2][1]) > 0);
      });
    }
    for (const t of [x, ...m.parameters()]) t.setGrad(null);
  });
});

Deno.test("vit: fast path equals the explicit mask with drop-path in training mode", () => {
  // depth 3 with dropPathRate 0.6: blocks 1 and 2 drop samples (p 0.3 and 0.6)
  const m = custom(9, { dropPathRate: 0.6 }).train();
  using g = new Generator(0);
  for (const b of m.blocks) b.dropPath.generator = g;
  withModel(m, () => {
    const B = 8;
    const x = images(B, 10).requiresGrad_(true);
    const p = points(B, 3, 11);
    const w = weights(B, 3, 16, 32, 12);
    for (const mode of SPLIT_MODES) {
      scope(() => {
        const fast = run(m, x, p, mode, true, w, g);
        const slow = run(m, x, p, mode, false, w, g);
        compareRuns(fast, slow, `${mode} + drop-path`);
        // drop-path did act: eval-mode outputs differ for some samples
        m.eval();
        const ev = m.forward(x, { points: p, maskMode: mode, fastPath: true });
        m.train();
        assert.ok(maxDiff(ev.cls, fast.out.cls) > 1e-3, "drop-path changed nothing");
        // and a different draw gives different outputs (the masks come from the generator)
        g.manualSeed(99);
        const other = m.forward(x, { points: p, maskMode: mode, fastPath: true });
        g.manualSeed(1234);
        const again = m.forward(x, { points: p, maskMode: mode, fastPath: true });
        assert.ok(maxDiff(other.cls, fast.out.cls) > 1e-3, "masks do not follow the generator");
        assert.deepEqual(again.cls.toBytes(), fast.out.cls.toBytes());
      });
    }
    for (const t of [x, ...m.parameters()]) t.setGrad(null);
    for (const b of m.blocks) b.dropPath.generator = undefined;
  });
});

// ---- reference positional embeddings ----------------------------------------------------------

/** The centres of a G×G grid's patches in grid_sample coordinates, row-major [1, G², 2]. */
function patchCentres(G: number): Tensor {
  const xy: number[][] = [];
  for (let i = 0; i < G; i++) {
    for (let j = 0; j < G; j++) xy.push([(2 * j + 1) / G - 1, (2 * i + 1) / G - 1]);
  }
  return tensor([xy]);
}

Deno.test("vit: a reference point at a patch centre gets exactly that patch's embedding", () => {
  const m = micro(13);
  withModel(m, () => {
    // G = 4: the centres are exact in binary, so bicubic sampling reproduces the grid bitwise
    const pe = m.referencePosEmbed(patchCentres(4));
    assert.deepEqual(pe.shape, [1, 16, 64]);
    assert.deepEqual(pe.toBytes(), m.patchPosEmbed.detach().toBytes());
    // a single point (x = column 2, y = row 1) → row 1·4 + 2; batch of two with other points
    const two = m.referencePosEmbed(tensor([[[0.25, -0.25], [-0.75, 0.75]], [[
      0.75,
      -0.75,
    ], [0.25, 0.25]]]));
    const pp = m.patchPosEmbed.select(0, 0);
    const at = (b: number, k: number) => two.select(0, b).select(0, k).toBytes();
    assert.deepEqual(at(0, 0), pp.select(0, 6).toBytes());
    assert.deepEqual(at(0, 1), pp.select(0, 12).toBytes());
    assert.deepEqual(at(1, 0), pp.select(0, 3).toBytes());
    assert.deepEqual(at(1, 1), pp.select(0, 10).toBytes());
    // between centres it interpolates: not equal to either neighbour
    const mid = m.referencePosEmbed(tensor([[[0, -0.25]]])).reshape([64]);
    assert.ok(maxDiff(mid, pp.select(0, 5)) > 1e-4 && maxDiff(mid, pp.select(0, 6)) > 1e-4);
    // float64 points are accepted (cast to the grid's dtype)
    const pe64 = m.referencePosEmbed(patchCentres(4).to("float64"));
    assert.deepEqual(pe64.toBytes(), pe.toBytes());
    // the reference tokens enter the model with that embedding (content zeros): a ref token
    // at a patch centre is the patch's positional embedding alone
    const x = images(1, 14);
    const o = m.eval().forward(x, { points: patchCentres(4) });
    assert.deepEqual(o.ref?.shape, [1, 16, 64]);
  });
  // G = 6 (48 px): centres are not exact in binary; still within float rounding
  const m6 = micro(15, { imgSize: 48 });
  withModel(m6, () => {
    const pe = m6.referencePosEmbed(patchCentres(6));
    assert.ok(maxDiff(pe, m6.patchPosEmbed) <= 1e-6, `G=6: ${maxDiff(pe, m6.patchPosEmbed)}`);
  });
});

Deno.test("vit: interpolatePosEncoding keeps the trained grid and resizes for other sizes", () => {
  const m = micro(16);
  withModel(m, () => {
    const same = m.interpolatePosEncoding(32, 32);
    assert.deepEqual(same.toBytes(), m.patchPosEmbed.detach().toBytes());
    assert.deepEqual(same.shape, [1, 16, 64]);
    assert.deepEqual(m.interpolatePosEncoding(48, 40).shape, [1, 6 * 5, 64]);
    assert.deepEqual(m.interpolatePosEncoding(64, 64).shape, [1, 64, 64]);
    assert.deepEqual(m.interpolatePosEncoding(16, 24).shape, [1, 2 * 3, 64]);
    // a constant grid interpolates to the same constant
    noGrad(() => m.patchPosEmbed.fill_(0.25));
    const c = m.interpolatePosEncoding(48, 40);
    assert.ok(maxDiff(c, c.mul(0).add(0.25)) <= 1e-6);
    // the model runs on views of other sizes, with reference points
    m.eval();
    const o = m.forward(images(2, 17, 48, 40), { points: points(2, 3, 18) });
    assert.deepEqual(o.patch.shape, [2, 30, 64]);
    assert.deepEqual(o.ref?.shape, [2, 3, 64]);
    for (const [h, w] of [[33, 32], [32, 36], [4, 8], [0, 8]]) {
      assert.throws(
        () => m.interpolatePosEncoding(h, w),
        new RegExp(`image size ${h}×${w} .*patch size 8`),
      );
    }
  });
});

// ---- one block in float64: finite differences -------------------------------------------------

Deno.test("vit: finite-difference gradient check of one block with reference tokens (float64)", () => {
  using g = new Generator(19);
  const blk = new Block(8, 2, { mlpRatio: 2, generator: g });
  blk.to("float64").eval();
  // LayerNorm weights ones / biases zeros would hide their gradients' paths: randomise them
  scope(() =>
    noGrad(() => {
      for (const n of [blk.norm1, blk.norm2]) {
        n.weight.copy_(randn([8], { dtype: "float64", generator: g }).mul(0.3).add(1));
        n.bias.copy_(randn([8], { dtype: "float64", generator: g }).mul(0.1));
      }
    })
  );
  withModel(blk, () => {
    const B = 2, R = 3, N = 4;
    const F64 = { dtype: "float64" as const, generator: g };
    const main = randn([B, 1 + N, 8], F64).requiresGrad_(true); // [cls, patches]
    const ref = randn([B, R, 8], F64).requiresGrad_(true);
    for (const mode of SPLIT_MODES) {
      assertGradcheck((mn, rf) => {
        const o = blk.forwardSplit(mn, rf, 1, mode);
        return cat([o.main, o.ref], 1);
      }, [main, ref]);
    }
    // the explicit path, tokens [cls, refs, patches]
    const seq = cat([main.narrow(1, 0, 1), ref, main.narrow(1, 1, N)], 1).detach()
      .requiresGrad_(true);
    for (const mode of MASK_MODES) {
      const mask = attentionMask(1 + R + N, 1, R, mode);
      assertGradcheck((s) => blk.forward(s, mask), [seq]);
    }
    // and the two paths agree to float64 rounding
    for (const mode of SPLIT_MODES) {
      const mask = attentionMask(1 + R + N, 1, R, mode);
      const e = blk.forward(seq, mask);
      const s = blk.forwardSplit(main, ref, 1, mode);
      assert.ok(maxDiff(s.ref, e.narrow(1, 1, R)) < 1e-12, mode);
      assert.ok(maxDiff(s.main, cat([e.narrow(1, 0, 1), e.narrow(1, 1 + R, N)], 1)) < 1e-12);
    }
  });
});

// ---- attention maps and intermediate layers ---------------------------------------------------

Deno.test("vit: lastSelfAttention and intermediateLayers", () => {
  const m = micro(20).eval();
  withModel(m, () => {
    const x = images(2, 21);
    const p = points(2, 3, 22);
    const T = 1 + 3 + 16;
    for (const maskMode of MASK_MODES) {
      const a = m.lastSelfAttention(x, { points: p, maskMode });
      assert.deepEqual(a.shape, [2, 2, T, T]);
      assert.ok(maxDiff(a.sum(-1), a.sum(-1).mul(0).add(1)) <= 1e-5, `${maskMode}: rows sum`);
      const mask = attentionMask(T, 1, 3, maskMode);
      const blocked = mask === null
        ? new Uint8Array(T * T)
        : mask.isfinite().logicalNot().toTypedArray() as Uint8Array;
      const vals = a.toTypedArray() as Float32Array;
      let zeros = 0, nonzero = 0;
      for (let i = 0; i < vals.length; i++) {
        if (blocked[i % (T * T)]) {
          assert.equal(vals[i], 0, `${maskMode}: masked entry ${i} is ${vals[i]}`);
          zeros++;
        } else if (vals[i] > 0) nonzero++;
      }
      assert.equal(nonzero, vals.length - zeros, `${maskMode}: allowed entries are positive`);
      if (maskMode !== "none") assert.ok(zeros > 0);
    }
    const a0 = m.lastSelfAttention(x);
    assert.deepEqual(a0.shape, [2, 2, 17, 17]);

    const out = m.forward(x, { points: p });
    const layers = m.intermediateLayers(x, 2, { points: p });
    assert.equal(layers.length, 2);
    for (const l of layers) assert.deepEqual(l.shape, [2, T, 64]);
    const last = layers[1];
    assert.ok(maxDiff(last.select(1, 0), out.cls) <= 1e-5);
    assert.ok(maxDiff(last.narrow(1, 1, 3), out.ref!) <= 1e-5);
    assert.ok(maxDiff(last.narrow(1, 4, 16), out.patch) <= 1e-5);
    assert.ok(maxDiff(layers[0], last) > 1e-3);
    const one = m.intermediateLayers(x);
    assert.equal(one.length, 1);
    assert.deepEqual(one[0].shape, [2, 17, 64]);
    assert.ok(maxDiff(one[0].select(1, 0), out.cls) <= 1e-5);
  });
});

// ---- learnable reference token ---------------------------------------------------------------

Deno.test("vit: learnable reference token changes ref outputs only", () => {
  const plain = micro(23).eval();
  const learn = micro(23, { learnableRefToken: true }).eval();
  try {
    scope(() => {
      assert.equal(plain.refLearnToken, null);
      assert.ok(!("ref_learn_token" in plain.stateDict()));
      const sd = learn.stateDict();
      assert.deepEqual(sd["ref_learn_token"].shape, [1, 1, 64]);
      assert.equal(sd["ref_learn_token"].requiresGrad, true);
      assert.deepEqual(
        Object.keys(sd).filter((k) => k !== "ref_learn_token"),
        Object.keys(plain.stateDict()),
      );
      // same weights otherwise
      const r = learn.loadStateDict(plain.stateDict(), { strict: false });
      assert.deepEqual(r, { missing: ["ref_learn_token"], unexpected: [] });
      assert.ok(maxAbs(learn.refLearnToken!) > 0);

      const x = images(2, 24);
      const p = points(2, 4, 25);
      const a = plain.forward(x, { points: p });
      const b = learn.forward(x, { points: p });
      assert.deepEqual(b.cls.toBytes(), a.cls.toBytes());
      assert.deepEqual(b.patch.toBytes(), a.patch.toBytes());
      assert.ok(maxDiff(b.ref!, a.ref!) > 1e-3);
      const bs = learn.forward(x, { points: p, fastPath: false });
      assert.ok(maxDiff(bs.ref!, b.ref!) <= 1e-5);
      // a zero learnable token is the zero content of the plain model
      noGrad(() => learn.refLearnToken!.zero_());
      assert.ok(maxDiff(learn.forward(x, { points: p }).ref!, a.ref!) === 0);
      // the token receives a gradient through the reference outputs
      // (a weighted sum: the plain sum of a LayerNorm output with unit gain is constant)
      using g = new Generator(26);
      noGrad(() => learn.refLearnToken!.normal_(0, 0.02, g));
      learn.forward(x, { points: p }).ref!.mul(randn([2, 4, 64], { generator: g })).sum()
        .backward();
      assert.ok(maxAbs(learn.refLearnToken!.grad!) > 0);
      for (const t of learn.parameters()) t.setGrad(null);
    });
  } finally {
    plain.free();
    learn.free();
  }
});

// ---- state-dict names --------------------------------------------------------------------------

Deno.test("vit: state-dict names and shapes follow the official code", () => {
  const m = micro(26);
  withModel(m, () => {
    const sd = m.stateDict();
    const expected = [
      "cls_token",
      "cls_pos_embed",
      "patch_pos_embed",
      "patch_embed.proj.weight",
      "patch_embed.proj.bias",
    ];
    for (let i = 0; i < 2; i++) {
      for (
        const n of [
          "norm1.weight",
          "norm1.bias",
          "attn.qkv.weight",
          "attn.qkv.bias",
          "attn.proj.weight",
          "attn.proj.bias",
          "norm2.weight",
          "norm2.bias",
          "mlp.fc1.weight",
          "mlp.fc1.bias",
          "mlp.fc2.weight",
          "mlp.fc2.bias",
        ]
      ) expected.push(`blocks.${i}.${n}`);
    }
    expected.push("norm.weight", "norm.bias");
    assert.deepEqual(Object.keys(sd).sort(), expected.sort());
    assert.deepEqual(sd["patch_embed.proj.weight"].shape, [64, 3, 8, 8]);
    assert.deepEqual(sd["patch_pos_embed"].shape, [1, 16, 64]);
    assert.deepEqual(sd["cls_pos_embed"].shape, [1, 1, 64]);
    assert.deepEqual(sd["blocks.1.attn.qkv.weight"].shape, [192, 64]);
    assert.deepEqual(sd["blocks.1.mlp.fc1.weight"].shape, [256, 64]);
    // initialisation: zero biases in blocks, LayerNorm ones, weights normal with std 0.02
    // (timm's trunc_normal_(std=0.02) truncates at ±2 absolute, i.e. effectively not at all)
    assert.equal(maxAbs(sd["blocks.0.attn.qkv.bias"]), 0);
    assert.equal(maxAbs(sd["blocks.0.norm1.weight"].sub(1)), 0);
    for (const k of ["blocks.0.mlp.fc1.weight", "patch_pos_embed", "blocks.1.attn.qkv.weight"]) {
      const std = scope(() => sd[k].std().item());
      assert.ok(std > 0.018 && std < 0.022, `${k}: init std ${std}`);
    }
    assert.equal(m.numParameters(), Object.values(sd).reduce((n, t) => n + t.numel, 0));
    assert.deepEqual(ARCHS.vit_micro, { embedDim: 64, depth: 2, numHeads: 2 });
  });
});

// ---- DINO head --------------------------------------------------------------------------------

Deno.test("vit: DINOHead names, shapes, frozen gain and weight normalisation", () => {
  using g = new Generator(27);
  const head = new DINOHead(64, 100, { hiddenDim: 48, bottleneckDim: 16, generator: g });
  const free = new DINOHead(64, 100, {
    hiddenDim: 48,
    bottleneckDim: 16,
    normLastLayer: false,
    generator: g,
  });
  const one = new DINOHead(64, 10, { nlayers: 1, bottleneckDim: 16, generator: g });
  const four = new DINOHead(8, 10, { nlayers: 4, hiddenDim: 12, bottleneckDim: 6, generator: g });
  try {
    scope(() => {
      const shapes = Object.fromEntries(
        head.namedParameters().map(([k, t]) => [k, t.shape]),
      );
      assert.deepEqual(shapes, {
        "mlp.0.weight": [48, 64],
        "mlp.0.bias": [48],
        "mlp.2.weight": [48, 48],
        "mlp.2.bias": [48],
        "mlp.4.weight": [16, 48],
        "mlp.4.bias": [16],
        "last_layer.weight_g": [100, 1],
        "last_layer.weight_v": [100, 16],
      });
      assert.equal(head.lastLayer.weightG.requiresGrad, false);
      assert.equal(free.lastLayer.weightG.requiresGrad, true);
      assert.deepEqual(head.lastLayer.weightG.toTypedArray(), new Float32Array(100).fill(1));
      assert.equal(maxAbs(head.stateDict()["mlp.2.bias"]), 0);

      const x = randn([5, 64], { generator: g });
      const y = head.forward(x);
      assert.deepEqual(y.shape, [5, 100]);
      assert.deepEqual(head.forward(randn([2, 3, 64])).shape, [2, 3, 100]);
      // y = normalize(mlp(x)) · (g v/‖v‖)ᵀ
      const h = normalize(head.mlp.forward(x), { dim: -1 });
      const wv = head.lastLayer.weightV;
      const manual = h.matmul(wv.div(wv.norm(2, 1, { keepdim: true })).transpose(0, 1));
      assert.ok(maxDiff(y, manual) <= 1e-5);

      // the effective weight's rows have norm weight_g
      noGrad(() => free.lastLayer.weightG.copy_(rand([100, 1], { generator: g }).add(0.5)));
      const W = free.lastLayer.weight();
      assert.ok(maxDiff(W.norm(2, 1, { keepdim: true }), free.lastLayer.weightG) <= 1e-5);
      assert.ok(maxDiff(head.lastLayer.weight().norm(2, 1), W.norm(2, 1).mul(0).add(1)) <= 1e-5);
      // gradients reach weight_g only when it is not frozen
      free.forward(x).sum().backward();
      head.forward(x).sum().backward();
      assert.ok(free.lastLayer.weightG.grad !== null);
      assert.equal(head.lastLayer.weightG.grad, null);
      assert.ok(head.lastLayer.weightV.grad !== null);
      for (const t of [...head.parameters(), ...free.parameters()]) t.setGrad(null);

      assert.deepEqual(one.namedParameters().map(([k, t]) => `${k} ${t.shape}`), [
        "mlp.weight 16,64",
        "mlp.bias 16",
        "last_layer.weight_g 10,1",
        "last_layer.weight_v 10,16",
      ]);
      assert.deepEqual(one.forward(x).shape, [5, 10]);
      assert.deepEqual(four.namedParameters().map(([k]) => k).slice(0, 8), [
        "mlp.0.weight",
        "mlp.0.bias",
        "mlp.2.weight",
        "mlp.2.bias",
        "mlp.4.weight",
        "mlp.4.bias",
        "mlp.6.weight",
        "mlp.6.bias",
      ]);
    });
  } finally {
    for (const m of [head, free, one, four]) m.free();
  }
});

// ---- checkpoints -------------------------------------------------------------------------------

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dd_vit_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function sameOutputs(a: VisionTransformer, b: VisionTransformer, what: string): void {
  scope(() => {
    a.eval();
    b.eval();
    const x = images(2, 28);
    const p = points(2, 3, 29);
    const oa = a.forward(x, { points: p }), ob = b.forward(x, { points: p });
    assert.deepEqual(ob.cls.toBytes(), oa.cls.toBytes(), what);
    assert.deepEqual(ob.ref!.toBytes(), oa.ref!.toBytes(), what);
    assert.deepEqual(ob.patch.toBytes(), oa.patch.toBytes(), what);
  });
}

Deno.test("vit: checkpoint save / load, key prefixes, official pos_embed, wrong arch", async (t) => {
  const src = micro(30);
  const dst = micro(31);
  const mini = createViT("vit_mini", { patchSize: 8, imgSize: 32 });
  try {
    await withTempDir(async (dir) => {
      await t.step("round trip", async () => {
        const path = `${dir}/bare.safetensors`;
        await saveModule(path, src, { metadata: { arch: "vit_micro" } });
        const r = await loadModule(path, dst);
        assert.deepEqual(r, { missing: [], unexpected: [] });
        for (const [k, p] of dst.namedParameters()) {
          assert.deepEqual(p.toBytes(), src.stateDict()[k].toBytes(), k);
        }
        sameOutputs(src, dst, "round trip");
      });

      await t.step("key prefix (teacher.backbone. inside a training checkpoint)", async () => {
        const path = `${dir}/train.safetensors`;
        await saveModule(path, src, { prefix: "teacher.backbone." });
        const fresh = micro(32);
        try {
          // an extra entry beside the prefixed backbone is ignored by the prefix selection
          const { tensors } = await loadSafetensors(path);
          try {
            assert.ok(Object.keys(tensors).every((k) => k.startsWith("teacher.backbone.")));
            tensors["student.center"] = randn([1, 4]);
            await saveSafetensors(path, tensors);
          } finally {
            freeAll(tensors);
          }
          await loadModule(path, fresh, { keyPrefix: "teacher.backbone." });
          sameOutputs(src, fresh, "prefixed");
          // without the prefix every key is missing / unexpected
          await assert.rejects(() => loadModule(path, fresh), (e: unknown) => {
            assert.ok(e instanceof StateDictError);
            assert.ok(e.missing.includes("cls_token"));
            assert.ok(e.unexpected.includes("teacher.backbone.cls_token"));
            assert.ok(e.message.startsWith(path));
            return true;
          });
          // a prefix that matches nothing names the prefix
          await assert.rejects(
            () => loadModule(path, fresh, { keyPrefix: "student.backbone." }),
            /no key starts with "student\.backbone\."/,
          );
        } finally {
          fresh.free();
        }
      });

      await t.step("official DINO file with one pos_embed [1, 1+N, D]", async () => {
        const path = `${dir}/dino.safetensors`;
        const sd: Record<string, Tensor> = {};
        for (const [k, v] of src.namedParameters()) {
          if (k !== "cls_pos_embed" && k !== "patch_pos_embed") sd[k] = v;
        }
        const pos = cat([src.clsPosEmbed, src.patchPosEmbed], 1);
        sd["pos_embed"] = pos;
        try {
          assert.deepEqual(pos.shape, [1, 17, 64]);
          await saveSafetensors(path, sd);
        } finally {
          pos.free();
        }
        const fresh = micro(33);
        try {
          const r = await loadModule(path, fresh);
          assert.deepEqual(r, { missing: [], unexpected: [] });
          assert.deepEqual(fresh.patchPosEmbed.toBytes(), src.patchPosEmbed.toBytes());
          assert.deepEqual(fresh.clsPosEmbed.toBytes(), src.clsPosEmbed.toBytes());
          sameOutputs(src, fresh, "pos_embed split");
        } finally {
          fresh.free();
        }
      });

      await t.step("a checkpoint of another arch names both and the offending keys", async () => {
        const path = `${dir}/mini.safetensors`;
        await saveModule(path, mini);
        const before = dst.stateDict()["cls_token"].toBytes();
        let err: StateDictError | undefined;
        try {
          await loadModule(path, dst);
        } catch (e) {
          assert.ok(e instanceof StateDictError, String(e));
          err = e;
        }
        assert.ok(err, "loading vit_mini into vit_micro must fail");
        for (
          const s of [
            path,
            "embed dim 128, depth 4, patch 8, 4×4 patch grid (vit_mini/8)",
            "embed dim 64, depth 2, patch 8, 4×4 patch grid (vit_micro/8)",
            "cls_token: [1, 1, 128] in the state dict vs [1, 1, 64] in the model",
            "blocks.0.attn.qkv.weight: [384, 128] in the state dict vs [192, 64] in the model",
            "blocks.3.mlp.fc2.bias",
          ]
        ) assert.ok(err.message.includes(s), `message lacks "${s}":\n${err.message}`);
        assert.ok(err.unexpected.includes("blocks.2.norm1.weight"));
        assert.deepEqual(err.missing, []);
        assert.ok(err.mismatched.length >= 20);
        assert.deepEqual(dst.stateDict()["cls_token"].toBytes(), before, "nothing copied");
        // non-strict still refuses the shape mismatches
        await assert.rejects(() => loadModule(path, dst, { strict: false }), StateDictError);
      });
    });
  } finally {
    src.free();
    dst.free();
    mini.free();
  }
});

Deno.test("vit tests leave no live tensors", () => {
  assert.equal(liveTensors(), START);
});

// ---- training forward without patch outputs ---------------------------------------------------

Deno.test("vit: patchTokens false gives the same class and reference outputs and gradients", () => {
  const m = custom(13, { dropPathRate: 0 }).train();
  withModel(m, () => {
    const x = images(3, 21).requiresGrad_(true);
    const p = points(3, 4, 22);
    for (const maskMode of [...SPLIT_MODES, ...OTHER_MODES]) {
      for (const fastPath of [true, false]) {
        for (const pts of [p, undefined]) {
          scope(() => {
            const what = `${maskMode} fastPath=${fastPath} points=${pts !== undefined}`;
            const full = m.forward(x, { points: pts, maskMode, fastPath });
            const lean = m.forward(x, { points: pts, maskMode, fastPath, patchTokens: false });
            assert.equal(lean.patch, null, what);
            assert.ok(maxDiff(lean.cls, full.cls) <= 1e-5, `${what}: cls`);
            if (pts) assert.ok(maxDiff(lean.ref!, full.ref!) <= 1e-5, `${what}: ref`);
            else assert.equal(lean.ref, null);
            // gradients of a loss on cls + ref agree
            const grads = (o: { cls: Tensor; ref: Tensor | null }) => {
              const loss = o.ref
                ? o.cls.square().sum().add(o.ref.mul(0.5).sum())
                : o.cls.square().sum();
              loss.backward();
              const g = [x.grad!, ...m.parameters().map((t) => t.grad ?? t.mul(0))];
              for (const t of [x, ...m.parameters()]) t.setGrad(null);
              return g;
            };
            const gf = grads(full), gl = grads(lean);
            gf.forEach((g, i) => assert.ok(maxDiff(g, gl[i]) <= 1e-4, `${what}: grad ${i}`));
          });
        }
      }
    }
  });
});

/** A training-mode block with drop-path 0.5 drawing from `g`. */
function dropPathBlock(g: Generator): Block {
  const b = new Block(32, 2, { dropPath: 0.5 });
  b.dropPath.generator = g;
  b.train();
  return b;
}

/** The block with both branches run on every sample, multiplied by the same draws. */
function everySampleReference(b: Block, x: Tensor): Tensor {
  const s1 = b.dropPath.sampleScale(x)!;
  const x1 = x.add(b.attn.forward(b.norm1.forward(x)).out.div(s1.keepP).mul(s1.mask));
  const s2 = b.dropPath.sampleScale(x1)!;
  return x1.add(b.mlp.forward(b.norm2.forward(x1)).div(s2.keepP).mul(s2.mask));
}

Deno.test("block: drop-path in training under bf16 autocast on the CPU (the skipped-branch path)", () => {
  // the kept samples' branch comes back in bf16 and is added into the fp32 residual stream:
  // the same values as the reference computation with every sample's branch, within bf16
  using g = new Generator(5);
  const b = dropPathBlock(g);
  const bf16 = { device: "cpu", dtype: "bfloat16" } as const;
  try {
    scope(() => {
      const x = randn([8, 6, 32]);
      g.manualSeed(7);
      const fast = autocast(() => b.forward(x), bf16);
      g.manualSeed(7);
      const ref = autocast(() => everySampleReference(b, x), bf16);
      assert.equal(fast.dtype, "float32");
      assert.ok(maxDiff(fast, ref.float()) <= 0.05, `values ${maxDiff(fast, ref.float())}`);
    });
  } finally {
    b.free();
  }
});

Deno.test("block: drop-path skips dropped samples' branches without changing values or gradients", () => {
  using g = new Generator(5);
  const b = dropPathBlock(g);
  try {
    scope(() => {
      const x = randn([8, 6, 32]).requiresGrad_(true);
      const w = randn([8, 6, 32]);
      const params = b.parameters();
      const gradsOf = (out: Tensor) => {
        out.mul(w).sum().backward();
        const gs = [x.grad!, ...params.map((p) => p.grad!)];
        for (const t of [x, ...params]) t.setGrad(null);
        return gs;
      };
      g.manualSeed(7);
      const fast = b.forward(x);
      const gFast = gradsOf(fast);
      // reference: both branches on every sample, multiplied by the same draws
      g.manualSeed(7);
      const kept = b.dropPath.sampleScale(x)!.mask.sum().item();
      g.manualSeed(7);
      const ref = everySampleReference(b, x);
      assert.ok(kept > 0 && kept < 8, `a mix of kept and dropped samples (kept ${kept})`);
      assert.ok(maxDiff(fast, ref) <= 1e-5, `values ${maxDiff(fast, ref)}`);
      const gRef = gradsOf(ref);
      gFast.forEach((gr, i) => assert.ok(maxDiff(gr, gRef[i]) <= 1e-5, `grad ${i}`));
      // every sample dropped: the parameters still get (zero) gradients, as in PyTorch
      const one = randn([1, 6, 32]);
      let dropped = false;
      for (let seed = 0; seed < 50 && !dropped; seed++) {
        g.manualSeed(seed);
        const probe = b.dropPath.sampleScale(one)!;
        if (probe.mask.sum().item() === 0) {
          g.manualSeed(seed);
          b.forward(one).sum().backward();
          for (const p of params) assert.ok(p.grad !== null, "parameter without gradient");
          for (const p of params) p.setGrad(null);
          dropped = true;
        }
      }
      assert.ok(dropped, "found a seed that drops the single sample's first branch");
    });
  } finally {
    b.free();
  }
});
