/**
 * scripts/visualize_attention.ts run as a subprocess: on fashion-scenes with a random-init
 * vit_micro/8 and on an --image file with a saved weights file, every PNG decodes back with the
 * size attention.json records, the raw maps equal an in-process computation on the same input,
 * the last stdout line is the JSON contract; --help lists every flag; bad input exits 2 naming
 * the flag or file.
 */
import assert from "node:assert/strict";
import {
  createViT,
  decodePng,
  FashionScenes,
  Generator,
  imagenetNormalize,
  loadImage,
  loadSafetensors,
  rand,
  resizeImage,
  saveModule,
  savePng,
  scope,
  type Tensor,
  tensor,
  type VisionTransformer,
} from "../../mod.ts";
import { attentionMaps } from "../../lib/eval/attention.ts";
import { loadBackbone } from "../../lib/eval/backbone.ts";
import { assertUsageError, lastJson, runScript, scriptPath } from "./_run.ts";

const SCRIPT = scriptPath("visualize_attention.ts");
const MICRO = ["--arch", "vit_micro", "--patch-size", "8", "--img-size", "32"];

const run = (args: string[], cache: string) => runScript(SCRIPT, args, { DENSEDINO_CACHE: cache });

async function pngSize(path: string): Promise<[number, number]> {
  const png = await decodePng(await Deno.readFile(path), path);
  return [png.height, png.width];
}

function maxAbsDiff(a: Tensor, b: Tensor): number {
  return scope(() => a.sub(b).abs().amax().item());
}

/** The maps of an image [3, H, W] in [0, 1] at `size`, computed in-process. */
function expected(vit: VisionTransformer, image: Tensor, size: number, pts: number[][]) {
  return scope(() => {
    const x = imagenetNormalize(resizeImage(image, size));
    return attentionMaps(vit, x, { points: pts.length ? tensor(pts) : undefined });
  });
}

Deno.test("visualize_attention", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "dd-vis-attn-" });
  const cache = `${dir}/cache`;
  try {
    await t.step("--help lists every flag with its default", async () => {
      const r = await run(["--help"], cache);
      assert.equal(r.code, 0, r.stderr);
      for (
        const f of [
          "--weights",
          "--which",
          "--arch",
          "--patch-size",
          "--img-size",
          "--seed",
          "--image",
          "--data",
          "--index",
          "--size",
          "--points",
          "--num-points",
          "--point-sampling",
          "--mask-mode",
          "--threshold",
          "--upsample",
          "--zoom",
          "--out",
        ]
      ) {
        assert.match(r.stdout, new RegExp(`  ${f}\\b.*\\n.*\\(default: `), f);
      }
    });

    await t.step("fashion-scenes, random init: files, sizes, raw maps", async () => {
      const out = `${dir}/scenes`;
      const r = await run([
        ...MICRO,
        "--data",
        "fashion-scenes",
        "--index",
        "0,2",
        "--count",
        "4",
        "--scene-size",
        "32",
        "--size",
        "32",
        "--threshold",
        "0.6",
        "--seed",
        "3",
        "--out",
        out,
      ], cache);
      assert.equal(r.code, 0, r.stderr);
      const j = lastJson(r.stdout);
      assert.equal(j.out, out);
      assert.equal(j.heads, 2);
      assert.equal(j.points, 4); // default: a 2×2 grid
      assert.equal(j.images, 2);
      const files = j.files as string[];
      for (const name of ["train_0", "train_2"]) {
        for (
          const f of [
            "cls_mean",
            "cls_head0",
            "cls_head1",
            "cls_head0_mask",
            "cls_head1_mask",
            "ref0",
            "ref3",
            "sheet",
          ]
        ) {
          assert.ok(files.includes(`${name}_${f}.png`), `${name}_${f}.png in ${files}`);
        }
      }
      assert.ok(files.includes("attention.json") && files.includes("attention.safetensors"));
      const doc = JSON.parse(await Deno.readTextFile(`${out}/attention.json`));
      assert.equal(doc.options.zoom, 4); // 32 px → ≥ 128 px
      assert.deepEqual(doc.points, [[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]);
      assert.equal(doc.model.fingerprint, "random-init:vit_micro/8/32:seed3");
      for (const img of doc.images) {
        assert.deepEqual(img.grid, [4, 4]);
        assert.deepEqual(img.maps, { cls: [2, 4, 4], ref: [4, 2, 4, 4] });
        assert.equal(img.mask_kept.length, 2);
        assert.ok(img.mask_kept.every((f: number) => f > 0 && f <= 1));
        for (const f of img.files as string[]) {
          const want = f.endsWith("_sheet.png") ? img.sheet_size : [128, 128];
          assert.deepEqual(await pngSize(`${out}/${f}`), want, f);
        }
      }
      // the raw maps equal an in-process computation on the same scene and model
      const bb = await loadBackbone({ arch: "vit_micro", patchSize: 8, imgSize: 32, seed: 3 });
      const ds = await FashionScenes.open({ count: 4, size: 32, cacheDir: null, quiet: true });
      const { tensors } = await loadSafetensors(`${out}/attention.safetensors`);
      try {
        for (const i of [0, 2]) {
          const { image, mask } = await ds.get(i);
          mask?.free();
          const m = expected(bb.vit, image, 32, doc.points);
          image.free();
          try {
            assert.ok(maxAbsDiff(tensors[`train_${i}.cls`], m.cls) <= 1e-6);
            assert.ok(maxAbsDiff(tensors[`train_${i}.ref`], m.ref!) <= 1e-6);
          } finally {
            m.cls.free();
            m.ref?.free();
          }
        }
      } finally {
        for (const v of Object.values(tensors)) v.free();
        bb.free();
      }
    });

    await t.step("--image with a weights file and --points", async () => {
      const img = `${dir}/photo one.png`;
      const weights = `${dir}/vit.safetensors`;
      using g = new Generator(5);
      const vit = createViT("vit_micro", { patchSize: 8, imgSize: 32, generator: g }).eval();
      try {
        await saveModule(weights, vit);
        using pixels = rand([3, 40, 48], { generator: g });
        await savePng(img, pixels);
        const out = `${dir}/image`;
        const pts = [[0, 0], [-0.5, 0.25]];
        const r = await run([
          "--weights",
          weights,
          "--image",
          img,
          "--size",
          "24",
          "--points",
          "0,0; -0.5,0.25",
          "--zoom",
          "1",
          "--upsample",
          "bilinear",
          "--out",
          out,
        ], cache);
        assert.equal(r.code, 0, r.stderr);
        const j = lastJson(r.stdout);
        assert.equal(j.points, 2);
        const files = j.files as string[];
        assert.ok(files.includes("photo_one_ref1.png") && !files.includes("photo_one_ref2.png"));
        assert.deepEqual(await pngSize(`${out}/photo_one_cls_head1.png`), [24, 24]);
        assert.deepEqual(await pngSize(`${out}/photo_one_ref0.png`), [24, 24]);
        const doc = JSON.parse(await Deno.readTextFile(`${out}/attention.json`));
        assert.equal(doc.model.arch, "vit_micro");
        assert.match(doc.model.fingerprint, /^[0-9a-f]{64}$/);
        assert.deepEqual(doc.images[0].image_size, [40, 48]);
        assert.deepEqual(doc.images[0].grid, [3, 3]);
        assert.equal(doc.images[0].mask_kept, null);
        // the same maps in-process (the PNG round trip is lossless only to 8 bits: reload it)
        using back = await loadImage(img);
        const m = expected(vit, back, 24, pts);
        const { tensors } = await loadSafetensors(`${out}/attention.safetensors`);
        try {
          assert.ok(maxAbsDiff(tensors["photo_one.cls"], m.cls) <= 1e-6);
          assert.ok(maxAbsDiff(tensors["photo_one.ref"], m.ref!) <= 1e-6);
          assert.deepEqual([...tensors["photo_one.points"].toTypedArray()], pts.flat());
        } finally {
          for (const v of Object.values(tensors)) v.free();
          m.cls.free();
          m.ref?.free();
        }
      } finally {
        vit.free();
      }
    });

    await t.step("bad input exits 2 naming the flag or file", async () => {
      await Deno.writeTextFile(`${dir}/notes.txt`, "not an image");
      const out = ["--out", `${dir}/bad`];
      const scenes = ["--data", "fashion-scenes", "--count", "4", "--scene-size", "32"];
      const cases: [string[], RegExp][] = [
        [["--bogus"], /bogus/],
        [[...MICRO, ...out], /--image PATH .* is required/],
        [
          [...MICRO, "--image", `${dir}/missing.png`, ...out],
          /--image: .*missing\.png: file not found/,
        ],
        [[...MICRO, "--image", `${dir}/notes.txt`, ...out], /--image: .*notes\.txt/],
        [
          [...MICRO, ...scenes, "--index", "0", "--size", "30", ...out],
          /--size 30 is not a multiple of the patch size 8/,
        ],
        [
          [...MICRO, ...scenes, "--index", "0", "--points", "0,2", ...out],
          /--points: \(0, 2\) lies outside/,
        ],
        [
          [...MICRO, ...scenes, "--index", "0", "--num-points", "3", ...out],
          /--num-points 3 is not a perfect square/,
        ],
        [[...MICRO, ...scenes, "--index", "0,9", ...out], /--index 9 is out of range/],
        [
          [...MICRO, ...scenes, "--index", "0", "--threshold", "0", ...out],
          /--threshold must be a number in \(0, 1\]/,
        ],
        [
          [...MICRO, ...scenes, "--index", "0", "--mask-mode", "diag", ...out],
          /unknown mask mode "diag"/,
        ],
        [
          ["--weights", `${dir}/nope.safetensors`, ...scenes, "--index", "0", ...out],
          /--weights: .*nope\.safetensors: not found/,
        ],
        [
          ["--arch", "vit_huge", ...scenes, "--index", "0", ...out],
          /--arch: unknown architecture "vit_huge"/,
        ],
      ];
      for (const [args, re] of cases) {
        assertUsageError(await run(args, cache), re, args.join(" "));
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
