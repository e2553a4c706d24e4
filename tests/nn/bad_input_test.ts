/**
 * Bad input to the model layer: each case throws a TorchError (or StateDictError) whose message
 * names the offending argument, and leaves no tensor behind.
 */
import assert from "node:assert/strict";
import {
  Attention,
  Block,
  createViT,
  DINOHead,
  Dropout,
  DropPath,
  Generator,
  Linear,
  liveTensors,
  loadModule,
  type MaskMode,
  rand,
  randn,
  saveSafetensors,
  scope,
  StateDictError,
  type Tensor,
  tensor,
  TorchError,
  VisionTransformer,
  zeros,
} from "../../mod.ts";

const START = liveTensors();

/** Asserts that `fn` throws an error of `cls` (default TorchError) matching every pattern. */
function throwsNaming(
  fn: () => unknown,
  patterns: RegExp[],
  cls: typeof TorchError | typeof StateDictError = TorchError,
): void {
  const before = liveTensors();
  assert.throws(() => scope(fn), (e: unknown) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e}`);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
  assert.equal(liveTensors(), before, `tensors leaked by ${fn}`);
}

function micro(): VisionTransformer {
  using g = new Generator(1);
  return createViT("vit_micro", { patchSize: 8, imgSize: 32, generator: g }).eval();
}

Deno.test("bad input: reference points", () => {
  const m = micro();
  try {
    const x = randn([2, 3, 32, 32]);
    const p = (v: number[][][]) => tensor(v);
    const fwd = (points: () => Tensor, more = {}) => () =>
      m.forward(x, { points: points(), ...more });
    try {
      // outside [-1, 1], in x or in y, and NaN; also through the other entry points
      for (const bad of [1.5, -1.0001, Number.NaN, Number.POSITIVE_INFINITY]) {
        for (
          const v of [[[[0, 0], [bad, 0]], [[0, 0], [0, 0]]], [[[0, 0], [0, 0]], [[0, bad], [
            0,
            0,
          ]]]]
        ) {
          throwsNaming(fwd(() => p(v)), [/^points:/, /\[-1, 1\]/, /reference points/]);
        }
      }
      throwsNaming(fwd(() => rand([2, 3, 2]).add(1.01), { fastPath: false }), [/\[-1, 1\]/]);
      throwsNaming(() => m.lastSelfAttention(x, { points: rand([2, 3, 2]).mul(3) }), [
        /^points:/,
        /\[-1, 1\]/,
      ]);
      throwsNaming(() => m.intermediateLayers(x, 1, { points: rand([2, 3, 2]).mul(-3) }), [
        /^points:/,
      ]);
      // the boundary itself is fine
      scope(() => {
        const o = m.forward(x, { points: p([[[1, -1]], [[-1, 1]]]) });
        assert.deepEqual(o.ref?.shape, [2, 1, 64]);
      });
      // wrong rank / last dimension
      for (const shape of [[2, 3], [2, 3, 3], [2, 3, 1], [2, 3, 2, 1], [6]]) {
        throwsNaming(fwd(() => zeros(shape)), [
          /^points:/,
          /\[B, K, 2\]/,
          new RegExp(`got \\[${shape.join(", ")}\\]`),
        ]);
      }
      // batch mismatch
      throwsNaming(fwd(() => zeros([3, 4, 2])), [/^points:/, /batch 3/, /images 2/]);
      throwsNaming(fwd(() => zeros([1, 4, 2])), [/^points:/, /batch 1/]);
      // integer and boolean points
      for (const dtype of ["int64", "int32", "uint8", "bool"] as const) {
        throwsNaming(fwd(() => zeros([2, 4, 2], { dtype })), [
          /^points:/,
          /floating point/,
          new RegExp(dtype),
        ]);
      }
    } finally {
      x.free();
    }
  } finally {
    m.free();
  }
});

Deno.test("bad input: images", () => {
  const m = micro();
  try {
    // sizes not divisible by the patch, in either dimension
    for (const [h, w] of [[36, 32], [32, 30], [7, 7]]) {
      throwsNaming(() => m.forward(randn([1, 3, h, w])), [
        new RegExp(`image size ${h}×${w}`),
        /patch size 8/,
      ]);
      throwsNaming(() => m.lastSelfAttention(randn([1, 3, h, w])), [/patch size 8/]);
      throwsNaming(() => m.intermediateLayers(randn([1, 3, h, w])), [/patch size 8/]);
    }
    // wrong channel count and rank
    throwsNaming(() => m.forward(randn([1, 1, 32, 32])), [
      /images must be \[B, 3, H, W\]/,
      /got \[1, 1, 32, 32\]/,
    ]);
    throwsNaming(() => m.forward(randn([3, 32, 32])), [/images must be \[B, C, H, W\]/]);
    throwsNaming(() => m.intermediateLayers(randn([2, 4, 32, 32])), [/images must be/]);
    throwsNaming(() => m.interpolatePosEncoding(30, 32), [/image size 30×32/, /patch size 8/]);
  } finally {
    m.free();
  }
});

Deno.test("bad input: mask modes, archs and layer sizes", () => {
  const m = micro();
  try {
    const x = randn([1, 3, 32, 32]);
    try {
      for (const mode of ["all2cls", "", "ALL2POS", "default"]) {
        const maskMode = mode as MaskMode;
        for (const points of [undefined, () => zeros([1, 2, 2])]) {
          throwsNaming(() => m.forward(x, { maskMode, points: points?.() }), [
            /^maskMode:/,
            new RegExp(`unknown mask mode "${mode}"`),
            /all2pos_pos2cls_eye/,
          ]);
        }
        throwsNaming(() => m.lastSelfAttention(x, { maskMode }), [/^maskMode:/]);
        throwsNaming(() => m.intermediateLayers(x, 1, { maskMode }), [/^maskMode:/]);
      }
      // the split path only exists for the all2pos* modes
      const blk = m.blocks[0];
      throwsNaming(() => blk.forwardSplit(randn([1, 17, 64]), randn([1, 2, 64]), 1, "none"), [
        /mask mode "none" has no split path/,
      ]);
    } finally {
      x.free();
    }
  } finally {
    m.free();
  }
  throwsNaming(() => createViT("vit_huge"), [/^arch:/, /"vit_huge"/, /vit_micro/]);
  throwsNaming(() => createViT("vit_micro", { patchSize: 7, imgSize: 32 }), [
    /imgSize 32/,
    /patchSize 7/,
  ]);
  for (const [i, o] of [[2.5, 3], [3, 0], [-1, 2], [Number.NaN, 2]]) {
    throwsNaming(() => new Linear(i, o), [
      /^Linear:/,
      Number.isInteger(i) && i > 0 ? /outFeatures must be a positive integer/ : /inFeatures/,
    ]);
  }
  for (const [dim, heads] of [[10, 3], [8, 0], [8, 2.5]]) {
    throwsNaming(() => new Attention(dim, heads), [
      /^Attention:/,
      new RegExp(`dim ${dim}`),
      new RegExp(`numHeads ${heads}`),
    ]);
    throwsNaming(() => new Block(dim, heads), [/numHeads/]);
  }
  throwsNaming(() => new Block(8, 2, { mlpRatio: 0.01 }), [/^Block:/, /mlpRatio 0\.01/]);
  throwsNaming(() => new VisionTransformer({ embedDim: 10, depth: 2, numHeads: 3 }), [
    /^VisionTransformer:/,
    /dim 10 must be divisible by numHeads 3/,
  ]);
  throwsNaming(() => new VisionTransformer({ embedDim: 8, depth: 0, numHeads: 2 }), [
    /depth must be a positive integer, got 0/,
  ]);
  throwsNaming(() => new DINOHead(8, 0), [/^DINOHead:/, /outDim must be a positive integer/]);
  for (const k of ["hiddenDim", "bottleneckDim"]) {
    throwsNaming(() => new DINOHead(8, 4, { [k]: 2.5 }), [
      new RegExp(`${k} must be a positive integer, got 2\\.5`),
    ]);
  }
  throwsNaming(() => new DINOHead(0, 4), [/inDim must be a positive integer/]);
  throwsNaming(() => new Dropout(-0.1), [/^Dropout: p/]);
  throwsNaming(() => new DropPath(1.2), [/^DropPath: p/]);
});

Deno.test("bad input: checkpoints", async () => {
  const before = liveTensors();
  const dir = await Deno.makeTempDir({ prefix: "dd_nn_bad_input_" });
  const m = micro();
  try {
    // a key of the right name with the wrong shape: StateDictError naming the key
    const sd = { ...m.stateDict() };
    const wrong = zeros([1, 25, 64]);
    sd["patch_pos_embed"] = wrong;
    const path = `${dir}/wrong.safetensors`;
    try {
      await saveSafetensors(path, sd);
    } finally {
      wrong.free();
    }
    await assert.rejects(() => loadModule(path, m), (e: unknown) => {
      assert.ok(e instanceof StateDictError);
      assert.match(e.message, /patch_pos_embed: \[1, 25, 64\] in the state dict vs \[1, 16, 64\]/);
      assert.match(e.message, /5×5 patch grid/);
      assert.match(e.message, /4×4 patch grid/);
      return true;
    });
    // a malformed official pos_embed names it
    const sd2: Record<string, Tensor> = {};
    for (const [k, t] of m.namedParameters()) {
      if (k !== "cls_pos_embed" && k !== "patch_pos_embed") sd2[k] = t;
    }
    const pe = zeros([17, 64]);
    sd2["pos_embed"] = pe;
    try {
      await saveSafetensors(`${dir}/pe.safetensors`, sd2);
    } finally {
      pe.free();
    }
    await assert.rejects(
      () => loadModule(`${dir}/pe.safetensors`, m),
      /pos_embed must be \[1, 1\+N, D\]/,
    );
    // a missing file names the path
    await assert.rejects(() => loadModule(`${dir}/absent.safetensors`, m), /absent\.safetensors/);
  } finally {
    m.free();
    await Deno.remove(dir, { recursive: true });
  }
  assert.equal(liveTensors(), before);
});

Deno.test("nn bad-input tests leave no live tensors", () => {
  assert.equal(liveTensors(), START);
});
