/**
 * scripts/extract_features.ts run as a subprocess: its output equals an in-process forward of
 * the same model (from --input with reference points, from a training checkpoint with
 * --key-prefix, from --images, and randomly initialised from --seed), its last stdout line is
 * the JSON contract, and bad input exits with code 2 and a message naming the flag.
 */
import assert from "node:assert/strict";
import {
  createViT,
  imagenetNormalize,
  loadImage,
  loadSafetensors,
  manualSeed,
  noGrad,
  rand,
  resizeImage,
  saveModule,
  savePng,
  saveSafetensors,
  scope,
  stack,
  type Tensor,
  tensor,
  type VisionTransformer,
} from "../../mod.ts";
import { assertUsageError, lastJson, runScript, scriptPath } from "./_run.ts";

const SCRIPT = scriptPath("extract_features.ts");
const MICRO = ["--arch", "vit_micro", "--patch-size", "8", "--img-size", "32"];

const run = (args: string[]) => runScript(SCRIPT, args);

function maxAbsDiff(a: Tensor, b: Tensor): number {
  return scope(() => a.sub(b).abs().amax().item());
}

Deno.test("extract_features", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "dd-extract-" });
  manualSeed(7);
  const model: VisionTransformer = createViT("vit_micro", { patchSize: 8, imgSize: 32 });
  model.eval();
  const images = rand([2, 3, 32, 32]).mul(2).sub(1);
  const points = tensor([
    [[0, 0], [-0.9, 0.5], [0.99, -1]],
    [[0.25, 0.25], [-0.125, 0.75], [1, 1]],
  ]);
  const [weights, ckpt, input] = ["w", "ckpt", "in"].map((n) => `${dir}/${n}.safetensors`);
  try {
    await saveModule(weights, model);
    // a training checkpoint: the teacher's backbone among other keys
    await saveModule(ckpt, model, { prefix: "teacher.backbone." });
    await saveSafetensors(input, { images, ref_points: points });

    const expect = noGrad(() => model.forward(images, { points }));

    await t.step("--input with ref_points equals an in-process forward", async () => {
      const out = `${dir}/out.safetensors`;
      const r = await run([
        ...MICRO,
        "--weights",
        weights,
        "--input",
        input,
        "--out",
        out,
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /images\/s/);
      const j = lastJson(r.stdout);
      assert.deepEqual(
        { ...j, seconds: typeof j.seconds },
        {
          out,
          cls: [2, 64],
          patch: [2, 16, 64],
          ref: [2, 3, 64],
          images: 2,
          skipped: 0,
          seconds: "number",
        },
      );
      const { tensors, metadata } = await loadSafetensors(out);
      try {
        assert.deepEqual(Object.keys(tensors).sort(), ["cls", "patch", "ref"]);
        assert.ok(maxAbsDiff(tensors.cls, expect.cls) <= 1e-6);
        assert.ok(maxAbsDiff(tensors.patch, expect.patch) <= 1e-6);
        assert.ok(maxAbsDiff(tensors.ref, expect.ref!) <= 1e-6);
        assert.equal(metadata.arch, "vit_micro");
        assert.equal(metadata.mask_mode, "all2pos_pos2cls_eye");
      } finally {
        for (const v of Object.values(tensors)) v.free();
      }
    });

    await t.step("no --weights: random init from --seed, as manualSeed + createViT", async () => {
      const out = `${dir}/out_random.safetensors`;
      const r = await run([...MICRO, "--seed", "7", "--input", input, "--out", out]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /no --weights: random initialisation \(seed 7\)/);
      const { tensors } = await loadSafetensors(out);
      try {
        assert.ok(maxAbsDiff(tensors.cls, expect.cls) <= 1e-6);
        assert.ok(maxAbsDiff(tensors.ref, expect.ref!) <= 1e-6);
      } finally {
        for (const v of Object.values(tensors)) v.free();
      }
    });

    await t.step("a training checkpoint with --key-prefix, one image per batch", async () => {
      const out = `${dir}/out_ckpt.safetensors`;
      const r = await run([
        ...MICRO,
        "--weights",
        ckpt,
        "--key-prefix",
        "teacher.backbone.",
        "--input",
        input,
        "--out",
        out,
        "--batch-size",
        "1",
      ]);
      assert.equal(r.code, 0, r.stderr);
      const { tensors } = await loadSafetensors(out);
      try {
        // batches of 1 vs 2 take other BLAS paths: a few float32 ulps on outputs of size ~4
        assert.ok(maxAbsDiff(tensors.cls, expect.cls) <= 1e-5);
        assert.ok(maxAbsDiff(tensors.patch, expect.patch) <= 1e-5);
        assert.ok(maxAbsDiff(tensors.ref, expect.ref!) <= 1e-5);
      } finally {
        for (const v of Object.values(tensors)) v.free();
      }
      // without the prefix the error names --weights and suggests it
      const bad = await run([...MICRO, "--weights", ckpt, "--input", input, "--out", out]);
      assertUsageError(bad, /--weights: .*ckpt\.safetensors/);
      assert.match(bad.stderr, /--key-prefix teacher\.backbone\./);
    });

    await t.step(
      "--images: sorted PNGs, resized, cropped, normalised; corrupt ones skipped",
      async () => {
        const imgDir = `${dir}/imgs`;
        await Deno.mkdir(imgDir);
        const b = rand([3, 40, 48]);
        const a = rand([3, 36, 32]);
        try {
          await savePng(`${imgDir}/b.png`, b);
          await savePng(`${imgDir}/a.png`, a);
        } finally {
          a.free();
          b.free();
        }
        await Deno.writeTextFile(`${imgDir}/c.png`, "not a png");
        await Deno.writeTextFile(`${imgDir}/notes.txt`, "ignored");
        const out = `${dir}/out_imgs.safetensors`;
        const r = await run([
          ...MICRO,
          "--weights",
          weights,
          "--images",
          imgDir,
          "--size",
          "32",
          "--out",
          out,
        ]);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stderr, /warning: skipping .*c\.png: unsupported image format/);
        const j = lastJson(r.stdout);
        assert.deepEqual([j.cls, j.patch, j.ref, j.images, j.skipped], [
          [2, 64],
          [2, 16, 64],
          null,
          2,
          1,
        ]);
        const x = [];
        for (const n of ["a.png", "b.png"]) {
          const raw = await loadImage(`${imgDir}/${n}`);
          x.push(scope(() => imagenetNormalize(resizeImage(raw, 32))));
          raw.free();
        }
        const batch = stack(x);
        for (const v of x) v.free();
        const want = noGrad(() => model.forward(batch));
        batch.free();
        const { tensors, metadata } = await loadSafetensors(out);
        try {
          assert.deepEqual(Object.keys(tensors).sort(), ["cls", "patch"]);
          assert.deepEqual(JSON.parse(metadata.names), ["a.png", "b.png"]);
          assert.ok(maxAbsDiff(tensors.cls, want.cls) <= 1e-6);
          assert.ok(maxAbsDiff(tensors.patch, want.patch) <= 1e-6);
        } finally {
          for (const v of Object.values(tensors)) v.free();
          want.cls.free();
          want.patch.free();
        }
      },
    );

    await t.step("bad input: exit code 2 and a message naming the flag", async () => {
      const bad = `${dir}/bad.safetensors`;
      await saveSafetensors(bad, { images: scope(() => rand([2, 1, 32, 32])) });
      const mini = createViT("vit_mini", { patchSize: 8, imgSize: 32 });
      const miniWeights = `${dir}/mini.safetensors`;
      await saveModule(miniWeights, mini);
      mini.free();
      const out = `${dir}/never.safetensors`;
      const cases: [string[], RegExp][] = [
        [[...MICRO, "--weights", weights, "--input", input], /--out .*required/],
        [
          [...MICRO, "--input", input, "--images", dir, "--out", out],
          /either --input or --images/,
        ],
        [[...MICRO, "--out", out], /one of --input .* or --images/],
        [[...MICRO, "--input", `${dir}/missing.safetensors`, "--out", out], /--input: .*not found/],
        [
          [...MICRO, "--weights", weights, "--input", bad, "--out", out],
          /--input: "images" must be \[B, 3, H, W\].*\[2, 1, 32, 32\]/,
        ],
        [
          [...MICRO, "--weights", miniWeights, "--input", input, "--out", out],
          /--weights: .*vit_mini.* does not fit this model .*vit_micro/s,
        ],
        [[...MICRO, "--mask-mode", "diagonal", "--input", input, "--out", out], /--mask-mode/],
        [["--arch", "vit_huge", "--input", input, "--out", out], /--arch: unknown/],
      ];
      for (const [args, re] of cases) {
        assertUsageError(await run(args), re, args.join(" "));
      }
      await assert.rejects(() => Deno.stat(out), Deno.errors.NotFound);
    });

    await t.step("--help lists every flag with its default", async () => {
      const r = await run(["--help"]);
      assert.equal(r.code, 0);
      for (
        const [flag, def] of [
          ["--arch", "vit_small"],
          ["--patch-size", "16"],
          ["--img-size", "224"],
          ["--weights", "none"],
          ["--key-prefix", '""'],
          ["--input", "none"],
          ["--images", "none"],
          ["--size", "224"],
          ["--mask-mode", "all2pos_pos2cls_eye"],
          ["--learnable-ref-token", "false"],
          ["--batch-size", "32"],
          ["--out", "required"],
        ]
      ) {
        assert.match(r.stdout, new RegExp(`${flag}\\b[^\\n]*\\n[^\\n]*\\(default: ${def}`), flag);
      }
    });

    expect.cls.free();
    expect.patch.free();
    expect.ref?.free();
  } finally {
    model.free();
    images.free();
    points.free();
    await Deno.remove(dir, { recursive: true });
  }
});
