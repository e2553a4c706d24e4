/**
 * scripts/eval_seg.ts run as a subprocess on tiny subsets: fashion-scenes with a random-init
 * vit_micro/8 (the JSON line, the Markdown report, the disk cache reused with the same numbers,
 * the recompute mode), a briefly trained run directory, Pascal VOC fixtures in the real layout
 * (a run, a missing split, a label out of range), a feature cache of another model, bad flags
 * (exit 2 naming the flag or file) and --help.
 */
import assert from "node:assert/strict";
import { encodeJpeg, encodePngPixels, fromTypedArray, vocColormap } from "../../mod.ts";
import { assertUsageError, lastJson, runScript, scriptPath } from "./_run.ts";

const SCRIPT = scriptPath("eval_seg.ts");
const TRAIN = scriptPath("train.ts");
const MICRO = ["--arch", "vit_micro", "--patch-size", "8", "--threads", "1"];
const TINY = [
  "--scene-size",
  "64",
  "--input-size",
  "32",
  "--scenes",
  "24",
  "--val-scenes",
  "8",
  "--epochs",
  "3",
  "--quiet",
];

const run = (script: string, args: string[], cache: string) =>
  runScript(script, args, { DENSEDINO_CACHE: cache });
const seg = (args: string[], cache: string) => run(SCRIPT, args, cache);

type PerClass = { class: string; iou: number | null }[];

async function cacheFiles(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for await (const e of Deno.readDir(dir)) {
    if (e.name.endsWith(".safetensors")) {
      out.set(e.name, (await Deno.stat(`${dir}/${e.name}`)).size);
    }
  }
  return out;
}

/** A VOC 2012 fixture: JPEGs, palette masks (classes 0, 15, k and a 255 border), split files. */
async function writeVoc(root: string, splits: Record<string, string[]>, badLabel = false) {
  const voc = `${root}/VOCdevkit/VOC2012`;
  for (const d of ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"]) {
    await Deno.mkdir(`${voc}/${d}`, { recursive: true });
  }
  const ids = [...new Set(Object.values(splits).flat())];
  for (const [n, id] of ids.entries()) {
    const W = 40 + 8 * (n % 2), H = 36;
    const m = new Uint8Array(W * H);
    const rgb = new Float32Array(3 * W * H);
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const k = y < 10 ? 0 : x < W / 2 - 1 ? 15 : x < W / 2 + 1 ? 255 : 1 + (n % 20);
        m[y * W + x] = k;
        for (let c = 0; c < 3; c++) {
          rgb[c * W * H + y * W + x] = k === 0 ? 0.2 : (k * (c + 1) % 7) / 7;
        }
      }
    }
    if (badLabel && n === 1) m[3] = 30;
    const img = fromTypedArray(rgb, [3, H, W]);
    try {
      await Deno.writeFile(`${voc}/JPEGImages/${id}.jpg`, await encodeJpeg(img));
    } finally {
      img.free();
    }
    const png = await encodePngPixels({
      width: W,
      height: H,
      channels: 1,
      data: m,
      palette: vocColormap(),
    });
    await Deno.writeFile(`${voc}/SegmentationClass/${id}.png`, png);
  }
  for (const [split, list] of Object.entries(splits)) {
    await Deno.writeTextFile(`${voc}/ImageSets/Segmentation/${split}.txt`, list.join("\n") + "\n");
  }
  return voc;
}

Deno.test("eval_seg", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "dd-eval-seg-" });
  const cache = `${dir}/cache`;
  try {
    await t.step("--help lists the flags with their defaults", async () => {
      const r = await seg(["--help"], cache);
      assert.equal(r.code, 0, r.stderr);
      for (
        const s of [
          "--weights PATH",
          "--data SPEC",
          "--input-size N",
          "--mask-size N",
          "--milestone N",
          "--no-cache",
          "--cache DIR",
          "--report FILE.md",
          "(default: 25)",
          "(default: trainaug)",
          "0.1 for fashion-scenes",
          "Exit codes: 0 done, 2 bad flags or input, 1 other failures.",
        ]
      ) assert.ok(r.stdout.includes(s), `help lacks ${s}`);
    });

    const feats = `${dir}/feats`;
    let first: Record<string, unknown> = {};
    await t.step("fashion-scenes, random-init vit_micro/8: JSON line, report, cache", async () => {
      const report = `${dir}/seg.md`;
      const r = await seg([...MICRO, ...TINY, "--cache", feats, "--report", report], cache);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /epoch 3\/3: loss [\d.]+ \(class prior [\d.]+\), lr 0\.1, [\d.]+ s/);
      assert.match(r.stderr, /probe train features: cached in /);
      const j = lastJson(r.stdout);
      first = j;
      for (const k of ["miou", "pixel_acc", "train_loss", "prior_loss", "seconds"]) {
        assert.equal(typeof j[k], "number", `${k}: ${j[k]}`);
      }
      assert.equal(typeof j.fitted, "boolean");
      const per = j.per_class as PerClass;
      assert.equal(per.length, 11);
      assert.deepEqual(per.slice(0, 2).map((c) => c.class), ["background", "T-shirt/top"]);
      // mIoU is the mean of the per-class IoUs that exist (background included), in %
      const present = per.map((c) => c.iou).filter((v): v is number => v !== null);
      const mean = present.reduce((a, b) => a + b, 0) / present.length;
      assert.ok(Math.abs(mean - (j.miou as number)) < 1e-3, `${mean} vs ${j.miou}`);
      assert.ok((j.pixel_acc as number) >= 0 && (j.pixel_acc as number) <= 100);
      assert.ok((j.prior_loss as number) > 0);
      assert.deepEqual(
        [j.mode, j.train, j.val, j.epochs, j.input_size, j.mask_size, j.data],
        ["cached", 24, 8, 3, 32, 16, "fashion-scenes"],
      );
      assert.equal(j.source, "random init vit_micro/8 (seed 0)");
      const md = await Deno.readTextFile(report);
      assert.match(md, /^# Linear segmentation probe/);
      assert.ok(md.includes(`| mIoU (%) | ${(j.miou as number).toFixed(2)} |`), md);
      assert.ok(md.includes(`| final train loss | ${(j.train_loss as number).toFixed(4)} |`));
      assert.ok(md.includes(`| class-prior loss | ${(j.prior_loss as number).toFixed(4)} |`));
      assert.match(md, /\| background \| [\d.]+ \| \d+ \|/);
      assert.match(md, /\| 3 \| 0\.1 \| [\d.]+ \| [\d.]+ \| [\d.]+ \|/);
      assert.equal((await cacheFiles(feats)).size, 2); // train and val features
    });

    await t.step("the disk cache is reused and gives the same numbers", async () => {
      const r = await seg([...MICRO, ...TINY, "--cache", feats], cache);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /probe train features: 24 from the cache /);
      assert.match(r.stderr, /probe val features: 8 from the cache /);
      const j = lastJson(r.stdout);
      for (const k of ["miou", "pixel_acc", "per_class", "train_loss", "prior_loss", "fitted"]) {
        assert.deepEqual(j[k], first[k], k);
      }
    });

    await t.step("a feature cache of another model is an error naming the file", async () => {
      const before = await cacheFiles(feats);
      const r = await seg([...MICRO, ...TINY, "--seed", "1", "--cache", feats], cache);
      assert.equal(r.code, 0, r.stderr);
      const after = await cacheFiles(feats);
      const added = [...after.keys()].filter((k) => !before.has(k));
      assert.equal(added.length, 2);
      // put seed 0's training features where seed 1's belong
      const trainNew = added.sort((a, b) => after.get(b)! - after.get(a)!)[0];
      const trainOld = [...before.keys()].sort((a, b) => before.get(b)! - before.get(a)!)[0];
      await Deno.copyFile(`${feats}/${trainOld}`, `${feats}/${trainNew}`);
      const bad = await seg([...MICRO, ...TINY, "--seed", "1", "--cache", feats], cache);
      assert.equal(bad.code, 2, bad.stderr);
      assert.ok(bad.stderr.includes(`${feats}/${trainNew}`), bad.stderr);
      assert.match(
        bad.stderr,
        /was written for other features \(fingerprint: the file has "random-init:vit_micro\/8\/32:seed0", this run "random-init:vit_micro\/8\/32:seed1"\)/,
      );
    });

    await t.step("--no-cache recomputes the backbone every epoch", async () => {
      const r = await seg([...MICRO, ...TINY, "--no-cache", "--epochs", "2"], cache);
      assert.equal(r.code, 0, r.stderr);
      const j = lastJson(r.stdout);
      assert.deepEqual([j.mode, j.epochs, j.feature_seconds], ["recompute", 2, 0]);
      assert.equal((j.per_class as PerClass).length, 11);
    });

    await t.step("a briefly trained run directory (teacher and student)", async () => {
      const out = `${dir}/run`;
      const tr = await run(TRAIN, [
        ...MICRO,
        ..."--out-dim 256 --batch-size 8 --scenes 16 --global-size 32 --local-crops 2".split(" "),
        ..."--local-size 16 --num-ref 2 --warmup-epochs 0 --workers 0 --epochs 1".split(" "),
        "--max-iters",
        "2",
        "--out",
        out,
      ], cache);
      assert.equal(tr.code, 0, tr.stderr);
      for (const which of ["teacher", "student"]) {
        const r = await seg(
          ["--weights", out, "--which", which, ...TINY, "--epochs", "2", "--threads", "1"],
          cache,
        );
        assert.equal(r.code, 0, r.stderr);
        const j = lastJson(r.stdout);
        assert.match(
          j.source as string,
          which === "teacher"
            ? /teacher_backbone\.safetensors/
            : /checkpoint\.safetensors \(student/,
        );
        assert.match(j.fingerprint as string, /^[0-9a-f]{64}$/);
        assert.equal(typeof j.miou, "number");
      }
    });

    await t.step("Pascal VOC fixtures: a run, a missing split, a label out of range", async () => {
      const root = `${dir}/voc`;
      const voc = await writeVoc(root, {
        train: ["2007_000001", "2007_000002", "2007_000003"],
        val: ["2007_000004", "2007_000005"],
      });
      const VOC = ["--data", `voc:${root}`, "--input-size", "32", "--epochs", "2", "--quiet"];
      const ok = await seg([...MICRO, ...VOC, "--train-split", "train"], cache);
      assert.equal(ok.code, 0, ok.stderr);
      const j = lastJson(ok.stdout);
      assert.equal(j.data, `voc:${root}`);
      assert.deepEqual([j.train, j.val, j.mask_size], [3, 2, 100]);
      const per = j.per_class as PerClass;
      assert.equal(per.length, 21);
      assert.deepEqual([per[0].class, per[15].class], ["background", "person"]);
      // chair is in no mask: no IoU (null) unless predicted somewhere (then 0)
      assert.ok(per[9].iou === null || per[9].iou === 0, String(per[9].iou));
      // the default training split, trainaug, is missing from the fixture
      const miss = await seg([...MICRO, ...VOC], cache);
      assert.equal(miss.code, 2, miss.stderr);
      assert.ok(
        miss.stderr.includes(`${voc}/ImageSets/Segmentation/trainaug.txt`),
        miss.stderr,
      );
      assert.match(miss.stderr, /split file for "trainaug" not found/);
      // a mask with label 30 (21 classes, 255 ignore)
      const badRoot = `${dir}/voc-bad`;
      const badVoc = await writeVoc(badRoot, { train: ["a1", "a2", "a3"], val: ["b1"] }, true);
      const bad = await seg([
        ...MICRO,
        ...VOC.map((a) => a === `voc:${root}` ? `voc:${badRoot}` : a),
        "--train-split",
        "train",
      ], cache);
      assert.equal(bad.code, 2, bad.stderr);
      assert.ok(
        bad.stderr.includes(
          `${badVoc}/SegmentationClass/a2.png: label 30 is outside the class range 0..20`,
        ),
        bad.stderr,
      );
    });

    await t.step("bad flags exit 2 naming the flag", async () => {
      for (
        const [args, re] of [
          [["--data", "coco"], /--data must be fashion-scenes or voc:PATH, got "coco"/],
          [["--lr=-1"], /--lr must be a positive number, got "-1"/],
          [["--epochs", "0"], /--epochs must be a positive integer, got "0"/],
          [["--crop-scale", "0.8"], /--crop-scale must be "lo,hi"/],
          [["--cache", `${dir}/c`, "--no-cache"], /--cache and --no-cache contradict/],
          [
            [...MICRO, "--input-size", "36"],
            /--input-size 36 is not a multiple of the patch size 8/,
          ],
          [["--train-split", "train"], /--train-split applies to --data voc:PATH only/],
          [["--data", `voc:${dir}/nowhere`], /nowhere: Pascal VOC root folder not found/],
          [["--weights", `${dir}/none.safetensors`], /--weights: .*none\.safetensors: not found/],
          [["--bogus"], /bogus/],
        ] as const
      ) {
        assertUsageError(await seg([...args], cache), re, args.join(" "));
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
