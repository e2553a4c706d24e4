/**
 * scripts/eval_knn.ts run as a subprocess on small subsets: fashion-scenes with a random-init
 * vit_micro (its numbers equal an in-process extraction + knnClassify, the report holds the
 * same table, cached features are reused), the same weights from a file, an ImageFolder in the
 * train/val layout, Fashion-MNIST, bad flags and input (exit 2 naming the flag or file), and
 * --help.
 */
import assert from "node:assert/strict";
import { FashionScenes, freeAll, rand, saveModule, savePng } from "../../mod.ts";
import { loadBackbone } from "../../lib/eval/backbone.ts";
import { evalTransform, extractClassFeatures } from "../../lib/eval/features.ts";
import { knnClassify } from "../../lib/eval/knn.ts";
import { assertUsageError, lastJson, runScript, scriptPath } from "./_run.ts";

const SCRIPT = scriptPath("eval_knn.ts");
const MICRO = ["--arch", "vit_micro", "--patch-size", "8", "--threads", "1"];
const SMALL = ["--scenes", "48", "--val-scenes", "24", "--batch-size", "16"];

const run = (args: string[], cache: string) => runScript(SCRIPT, args, { DENSEDINO_CACHE: cache });

type Row = { k: number; top1: number; top5: number | null };

Deno.test("eval_knn", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "dd-eval-knn-" });
  const cache = `${dir}/cache`;
  const saved = Deno.env.get("DENSEDINO_CACHE");
  Deno.env.set("DENSEDINO_CACHE", cache);
  try {
    let first: Record<string, unknown> = {};

    await t.step("fashion-scenes, random-init vit_micro (96 px): JSON, report, cache", async () => {
      const report = `${dir}/knn.md`;
      const feats = `${dir}/feats`;
      const args = [
        ...MICRO,
        ...SMALL,
        "--k",
        "5,20,100",
        "--cache",
        feats,
        "--report",
        report,
      ];
      const r = await run(args, cache);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /train features .*48\/48 img .*img\/s/);
      assert.match(r.stderr, /k = 100 exceeds the memory bank \(48 examples\): using k = 48/);
      const j = lastJson(r.stdout);
      first = j;
      const results = j.results as Row[];
      assert.deepEqual(results.map((x) => x.k), [5, 20, 48]);
      assert.deepEqual([j.top1, j.top5, j.k], [results[1].top1, results[1].top5, 20]);
      assert.deepEqual(
        [
          j.train,
          j.val,
          j.classes,
          j.source,
          j.fingerprint,
          j.data,
          j.resize,
          j.crop,
          j.temperature,
        ],
        [
          48,
          24,
          10,
          "random init vit_micro/8 (seed 0)",
          "random-init:vit_micro/8/96:seed0",
          "fashion-scenes",
          96,
          96,
          0.07,
        ],
      );
      assert.equal(typeof j.seconds, "number");

      // the same numbers in-process: the model, the scenes, the features, the k-NN
      const b = await loadBackbone({ arch: "vit_micro", patchSize: 8, imgSize: 96, seed: 0 });
      const train = await FashionScenes.open({ split: "train", count: 48, quiet: true });
      const val = await FashionScenes.open({ split: "val", count: 24, quiet: true });
      const opts = { transform: evalTransform(96, 96), progress: false };
      const tr = await extractClassFeatures(b, train, opts);
      const va = await extractClassFeatures(b, val, opts);
      const want = knnClassify(tr, va, { ks: [5, 20, 100], numClasses: 10 })
        .map(({ k, top1, top5 }) => ({ k, top1, top5 }));
      freeAll([tr, va]);
      b.free();
      assert.deepEqual(results, want);

      const md = await Deno.readTextFile(report);
      assert.match(md, /\| backbone \| random init vit_micro\/8 \(seed 0\) \|/);
      assert.match(md, /\| memory bank \(train\) \| 48 images \|/);
      for (const x of results) {
        const k = x.k === 48 ? "48 \\(asked 100\\)" : String(x.k);
        assert.match(
          md,
          new RegExp(`\\| ${k} \\| ${x.top1.toFixed(2)} \\| ${x.top5!.toFixed(2)} \\|`),
        );
      }
      const files = [...Deno.readDirSync(feats)].map((e) => e.name);
      assert.equal(files.length, 2, files.join());

      // a second run reads both feature sets from the cache: same numbers
      const again = await run([...args, "--quiet"], cache);
      assert.equal(again.code, 0, again.stderr);
      assert.equal((again.stderr.match(/from the cache .*feats\/cls-/g) ?? []).length, 2);
      assert.doesNotMatch(again.stderr, /img\/s/);
      assert.deepEqual(lastJson(again.stdout).results, results);
    });

    await t.step("the same weights from a file: same numbers, file named as source", async () => {
      const b = await loadBackbone({ arch: "vit_micro", patchSize: 8, imgSize: 96, seed: 0 });
      const file = `${dir}/w.safetensors`;
      await saveModule(file, b.vit);
      const fingerprint = b.fingerprint;
      b.free();
      const r = await run(
        ["--weights", file, "--threads", "1", ...SMALL, "--k", "5,20,100", "--quiet"],
        cache,
      );
      assert.equal(r.code, 0, r.stderr);
      const j = lastJson(r.stdout);
      assert.deepEqual(j.results, first.results);
      assert.equal(j.source, file);
      assert.match(String(j.fingerprint), /^[0-9a-f]{64}$/);
      assert.notEqual(j.fingerprint, fingerprint);
      // a model trained at 32 px sees the scenes resized to 32 px (its training resolution)
      const small = await loadBackbone({ arch: "vit_micro", patchSize: 8, imgSize: 32 });
      const smallFile = `${dir}/w32.safetensors`;
      await saveModule(smallFile, small.vit);
      small.free();
      const r32 = await run(
        ["--weights", smallFile, ...SMALL, "--limit-train", "16", "--limit-val", "8", "--quiet"],
        cache,
      );
      assert.equal(r32.code, 0, r32.stderr);
      const j32 = lastJson(r32.stdout);
      assert.deepEqual([j32.resize, j32.crop, j32.train, j32.val], [32, 32, 16, 8]);
      // weights of another arch than --arch says
      const bad = await run(["--weights", file, "--arch", "vit_mini", ...SMALL], cache);
      assertUsageError(bad, /--weights: .*w\.safetensors.*vit_micro\/8.*does not fit .*vit_mini/s);
    });

    await t.step("imagefolder:PATH with train/ and val/ (resize + centre crop)", async () => {
      const root = `${dir}/folder`;
      for (const split of ["train", "val"]) {
        for (const cls of ["cat", "dog", "eel"]) {
          await Deno.mkdir(`${root}/${split}/${cls}`, { recursive: true });
          for (let i = 0; i < (split === "train" ? 3 : 1); i++) {
            const x = rand([3, 40 + 4 * i, 48]);
            await savePng(`${root}/${split}/${cls}/${i}.png`, x);
            x.free();
          }
        }
      }
      const r = await run(
        [...MICRO, "--data", `imagefolder:${root}`, "--crop", "32", "--k", "1,3", "--quiet"],
        cache,
      );
      assert.equal(r.code, 0, r.stderr);
      const j = lastJson(r.stdout);
      assert.deepEqual([j.train, j.val, j.classes, j.resize, j.crop], [9, 3, 3, 37, 32]);
      assert.deepEqual((j.results as Row[]).map((x) => [x.k, x.top5]), [[1, null], [3, null]]);
      assert.equal(j.data, `imagefolder:${root}`);
    });

    await t.step("fashion-mnist (items resized to the model's input), subsets", async () => {
      const r = await run(
        [
          ...MICRO,
          "--img-size",
          "32",
          "--data",
          "fashion-mnist",
          "--limit-train",
          "40",
          "--limit-val",
          "10",
          "--k",
          "20",
          "--quiet",
        ],
        cache,
      );
      assert.equal(r.code, 0, r.stderr);
      const j = lastJson(r.stdout);
      assert.deepEqual([j.train, j.val, j.classes, j.resize, j.crop], [40, 10, 10, 32, 32]);
    });

    await t.step("bad flags and input: exit 2 naming the flag or file", async () => {
      const cases: [string[], RegExp][] = [
        [["--k", "0,20"], /--k must be a comma-separated list of positive integers/],
        [["--k", "ten"], /--k must be/],
        [["--data", "cifar"], /--data must be fashion-scenes, fashion-mnist or imagefolder:PATH/],
        [["--temperature", "0"], /--temperature must be a positive number/],
        [["--which", "student"], /--which student needs --weights/],
        [[...MICRO, ...SMALL, "--crop", "90"], /--crop 90 .* not a multiple of the patch size 8/],
        [
          ["--data", "fashion-mnist", "--scenes", "10"],
          /--scenes applies to --data fashion-scenes/,
        ],
        [["--frobnicate"], /frobnicate/],
        [
          ["--weights", `${dir}/missing.safetensors`],
          /--weights: .*missing\.safetensors: not found/,
        ],
        [["--data", `imagefolder:${dir}/nowhere`], /nowhere\/train is not a directory/],
        [
          ["--report", `${dir}/no/such/dir/r.md`],
          /--report: directory .*no\/such\/dir does not exist/,
        ],
      ];
      for (const [args, re] of cases) {
        assertUsageError(await run(args, cache), re, args.join(" "));
      }
    });

    await t.step("--help lists every flag with its default", async () => {
      const r = await run(["--help"], cache);
      assert.equal(r.code, 0);
      for (
        const [flag, def] of [
          ["--weights", "none \\(random init\\)"],
          ["--which", "teacher"],
          ["--arch", "from the weights; vit_small for random init"],
          ["--data", "fashion-scenes"],
          ["--scenes", "10000"],
          ["--val-scenes", "2000"],
          ["--resize", "256 for imagefolder"],
          ["--crop", "224 for imagefolder"],
          ["--k", "10,20,100,200"],
          ["--temperature", "0.07"],
          ["--batch-size", "64"],
          ["--threads", "0"],
          ["--cache", "none"],
          ["--report", "none"],
          ["--limit-train", "all"],
          ["--limit-val", "all"],
          ["--device", "cpu"],
          ["--seed", "0"],
        ]
      ) {
        assert.match(r.stdout, new RegExp(`${flag}\\b[^\\n]*\\n[^\\n]*\\(default: ${def}`), flag);
      }
    });
  } finally {
    if (saved === undefined) Deno.env.delete("DENSEDINO_CACHE");
    else Deno.env.set("DENSEDINO_CACHE", saved);
    await Deno.remove(dir, { recursive: true });
  }
});
