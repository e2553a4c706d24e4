/**
 * Our ViT and DINO head against values computed with PyTorch: the fixture
 * `tests/fixtures/vit_reference.safetensors` is written by `tests/fixtures/make_vit_reference.py`
 * (run once with `/usr/bin/python3`; see its header). Every output must match within 1e-5 (max
 * absolute difference): each mask mode with the fast path on and off, another image size
 * (bicubic resize of the positional grid), the learnable reference token, the last block's
 * attention, the intermediate layers and the head. The fixture's weight names and shapes are the
 * official DenseDINO state dict, so the key set and shapes we save must equal them exactly.
 */
import assert from "node:assert/strict";
import {
  ARCHS,
  createViT,
  DINOHead,
  freeAll,
  liveTensors,
  loadSafetensors,
  MASK_MODES,
  type MaskMode,
  readSafetensorsHeader,
  saveModule,
  scope,
  selectPrefix,
  type Tensor,
  type VisionTransformer,
} from "../../mod.ts";

const TOL = 1e-5;
const FIXTURE = new URL("../fixtures/vit_reference.safetensors", import.meta.url).pathname;

/** The generation parameters the script stores in the metadata key "params". */
interface Params {
  vit: {
    arch: string;
    embedDim: number;
    depth: number;
    numHeads: number;
    mlpRatio: number;
    qkvBias: boolean;
    eps: number;
    patchSize: number;
    imgSize: number;
  };
  head: {
    inDim: number;
    outDim: number;
    hiddenDim: number;
    bottleneckDim: number;
    nlayers: number;
  };
  modes: string[];
  other_mode: MaskMode;
  learn_mode: MaskMode;
  attn_mode: MaskMode;
  inter_mode: MaskMode;
  inter_n: number;
  /** int8 keys hold q · 2^exponent */
  exponents: Record<string, number>;
}

const base = liveTensors();
const { tensors: raw, metadata } = await loadSafetensors(FIXTURE);
const P: Params = JSON.parse(metadata.params);

/** The fixture's tensors as float32: int8 entries are q · 2^e, exact in float32. */
const T: Record<string, Tensor> = {};
for (const [k, t] of Object.entries(raw)) {
  if (t.dtype === "int8") {
    const e = P.exponents[k];
    assert.ok(Number.isInteger(e), `no exponent for ${k}`);
    T[k] = scope(() => t.to("float32").mul(2 ** e));
    t.free();
  } else {
    assert.equal(t.dtype, "float32", k);
    T[k] = t;
  }
}

function fx(key: string): Tensor {
  const t = T[key];
  assert.ok(t, `fixture has no ${key}`);
  return t;
}

/** Max |a − b| after checking the shapes agree. */
function maxDiff(a: Tensor, b: Tensor, what: string): number {
  assert.deepEqual(a.shape, b.shape, `${what}: shape`);
  return scope(() => a.sub(b).abs().amax().item());
}

function assertClose(a: Tensor, key: string, what = key): void {
  const d = maxDiff(a, fx(key), what);
  assert.ok(d <= TOL, `${what}: max |ours − PyTorch| = ${d.toExponential(3)} > ${TOL}`);
}

function buildViT(learnable: boolean): VisionTransformer {
  const v = P.vit;
  const m = createViT(v.arch, {
    patchSize: v.patchSize,
    imgSize: v.imgSize,
    mlpRatio: v.mlpRatio,
    qkvBias: v.qkvBias,
    eps: v.eps,
    learnableRefToken: learnable,
  });
  const sd = selectPrefix(T, "weights.");
  if (learnable) Object.assign(sd, selectPrefix(T, "weights_learn."));
  m.loadStateDict(sd); // strict
  return m.eval();
}

function buildHead(): DINOHead {
  const h = P.head;
  const head = new DINOHead(h.inDim, h.outDim, {
    hiddenDim: h.hiddenDim,
    bottleneckDim: h.bottleneckDim,
    nlayers: h.nlayers,
  });
  head.loadStateDict(selectPrefix(T, "head.")); // strict
  return head.eval();
}

const vit = buildViT(false);
const vitLearn = buildViT(true);
const head = buildHead();
const images = fx("input.images");
const imagesOther = fx("input.images_other");
const points = fx("input.points");

Deno.test("reference fixture: its configuration is vit_micro/8 at 32 px and a 3-layer head", () => {
  assert.deepEqual(ARCHS[P.vit.arch], {
    embedDim: P.vit.embedDim,
    depth: P.vit.depth,
    numHeads: P.vit.numHeads,
  });
  assert.equal(vit.gridSize, 4);
  assert.deepEqual([...P.modes].sort(), [...MASK_MODES].sort());
  assert.deepEqual(images.shape, [2, 3, 32, 32]);
  assert.deepEqual(imagesOther.shape, [2, 3, 48, 40]);
  assert.deepEqual(points.shape, [2, 5, 2]);
});

for (const fastPath of [true, false]) {
  Deno.test(`reference: forward matches PyTorch in every mask mode (fastPath ${fastPath})`, () => {
    for (const mode of MASK_MODES) {
      scope(() => {
        const out = vit.forward(images, { points, maskMode: mode, fastPath });
        assertClose(out.cls, `out.${mode}.cls`, `${mode} cls`);
        assert.ok(out.ref);
        assertClose(out.ref, `out.${mode}.ref`, `${mode} ref`);
        assertClose(out.patch, `out.${mode}.patch`, `${mode} patch`);
      });
    }
  });

  Deno.test(`reference: a 48×40 input (bicubic resize of the positional grid) matches (fastPath ${fastPath})`, () => {
    scope(() => {
      const out = vit.forward(imagesOther, { points, maskMode: P.other_mode, fastPath });
      assert.deepEqual(out.patch.shape, [2, 30, 64]);
      assertClose(out.cls, "out.other.cls");
      assertClose(out.ref!, "out.other.ref");
      assertClose(out.patch, "out.other.patch");
    });
  });

  Deno.test(`reference: the learnable reference token variant matches (fastPath ${fastPath})`, () => {
    scope(() => {
      const out = vitLearn.forward(images, { points, maskMode: P.learn_mode, fastPath });
      assertClose(out.cls, "out.learn.cls");
      assertClose(out.ref!, "out.learn.ref");
      assertClose(out.patch, "out.learn.patch");
    });
  });
}

Deno.test("reference: under the all2pos* modes class and patch outputs equal those of mode none without points", () => {
  scope(() => {
    const plain = vit.forward(images);
    for (const mode of ["all2pos", "all2pos_pos2cls", "all2pos_pos2cls_eye"]) {
      assertClose(plain.cls, `out.${mode}.cls`, `no points vs ${mode} cls`);
      assertClose(plain.patch, `out.${mode}.patch`, `no points vs ${mode} patch`);
    }
    // … while under "none" the reference tokens change them
    assert.ok(maxDiff(plain.cls, fx("out.none.cls"), "none cls") > 1e-3);
  });
});

Deno.test("reference: lastSelfAttention (mask applied) matches", () => {
  scope(() => {
    const attn = vit.lastSelfAttention(images, { points, maskMode: P.attn_mode });
    assert.deepEqual(attn.shape, [2, 2, 22, 22]);
    assertClose(attn, "out.attn", `attention (${P.attn_mode})`);
  });
});

Deno.test("reference: intermediateLayers(n = 2) matches", () => {
  scope(() => {
    const layers = vit.intermediateLayers(images, P.inter_n, { points, maskMode: P.inter_mode });
    assert.equal(layers.length, P.inter_n);
    layers.forEach((t, i) => assertClose(t, `out.inter.${i}`, `${P.inter_mode} layer ${i}`));
  });
});

Deno.test("reference: the DINO head matches on class and reference tokens", () => {
  scope(() => {
    assertClose(head.forward(fx("out.all2pos_pos2cls_eye.cls")), "out.head.cls", "head(cls)");
    assertClose(head.forward(fx("out.all2pos_pos2cls_eye.ref")), "out.head.ref", "head(ref)");
  });
});

/** name → shape of the fixture's keys under `prefix` (prefix removed). */
function fixtureShapes(...prefixes: string[]): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const [k, t] of Object.entries(T)) {
    const p = prefixes.find((p) => k.startsWith(p));
    if (p) out[k.slice(p.length)] = t.shape;
  }
  return out;
}

Deno.test("reference: our saved state dicts have exactly the official names and shapes, float32", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cases: [string, VisionTransformer | DINOHead, Record<string, number[]>][] = [
      ["vit", vit, fixtureShapes("weights.")],
      ["vit_learn", vitLearn, fixtureShapes("weights.", "weights_learn.")],
      ["head", head, fixtureShapes("head.")],
    ];
    for (const [name, module, expected] of cases) {
      const path = `${dir}/${name}.safetensors`;
      await saveModule(path, module);
      const header = await readSafetensorsHeader(path);
      const saved = Object.fromEntries(header.tensors.map(([k, info]) => [k, info.shape]));
      assert.deepEqual(saved, expected, name);
      for (const [k, info] of header.tensors) assert.equal(info.dtype, "F32", `${name} ${k}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("reference: everything is freed", () => {
  vit.free();
  vitLearn.free();
  head.free();
  freeAll(T);
  assert.equal(liveTensors(), base);
});
