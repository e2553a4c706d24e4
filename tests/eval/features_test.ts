/**
 * Feature passes and the feature cache: evalTransform is resize + centre crop + ImageNet
 * normalisation; forEachBatch goes in order, in batches, with `limit`, and names a failing
 * example; extractClassFeatures equals one direct forward of the frozen ViT; cache files round
 * trip and refuse to be reused for another model, data set, transform or kind.
 */
import assert from "node:assert/strict";
import {
  type Dataset,
  freeAll,
  Generator,
  ImageError,
  imagenetNormalize,
  liveTensors,
  noGrad,
  rand,
  resizeImage,
  type Sample,
  saveSafetensors,
  scope,
  stack,
  type Tensor,
  tensor,
} from "../../mod.ts";
import { EvalError, loadBackbone } from "../../lib/eval/backbone.ts";
import {
  cachedClassFeatures,
  evalTransform,
  evalTransformId,
  extractClassFeatures,
  featureCacheFile,
  type FeatureCacheKey,
  forEachBatch,
  loadFeatureCache,
  saveFeatureCache,
} from "../../lib/eval/features.ts";

/** n random images of varied sizes (the same on every get), labels i % 3 except every 4th (none). */
class Pics implements Dataset {
  readonly classes = ["a", "b", "c"];
  constructor(readonly length: number, readonly bad: number[] = []) {}
  nameOf(i: number): string {
    return `pics/${i}.png`;
  }
  get(i: number): Promise<Sample> {
    if (this.bad.includes(i)) {
      return Promise.reject(new ImageError(this.nameOf(i), "corrupt or truncated PNG"));
    }
    using g = new Generator(100 + i);
    const image = rand([3, 40 + (i % 3) * 4, 36 + (i % 2) * 8], { generator: g });
    return Promise.resolve({
      image,
      label: i % 4 === 3 ? undefined : i % 3,
      name: this.nameOf(i),
    });
  }
}

function maxAbsDiff(a: Tensor, b: Tensor): number {
  return scope(() => a.sub(b).abs().amax().item());
}

Deno.test("evalTransform: resize (bicubic, antialiased) + centre crop + ImageNet normalisation", () => {
  const x = rand([3, 50, 70]);
  const got = evalTransform(40, 32)(x);
  const want = scope(() => imagenetNormalize(resizeImage(x, 40, 32)));
  assert.deepEqual(got.shape, [3, 32, 32]);
  assert.equal(maxAbsDiff(got, want), 0);
  freeAll([x, got, want]);
  assert.equal(evalTransformId(256, 224), "resize256-bicubic-aa/centercrop224/imagenet-norm");
  assert.throws(() => evalTransform(24, 32), /resize 24 is smaller than the crop 32/);
});

Deno.test("forEachBatch: in order, in batches, limit, nothing skipped silently", async () => {
  const live = liveTensors();
  const ds = new Pics(11);
  const seen: number[][] = [];
  const labels: (number | undefined)[] = [];
  await forEachBatch(
    ds,
    { transform: evalTransform(32, 32), batchSize: 4, progress: false, limit: 10 },
    ({ images, samples, indices }) => {
      assert.deepEqual(images.shape, [indices.length, 3, 32, 32]);
      assert.equal(samples.length, indices.length);
      assert.deepEqual(samples.map((s) => s.name), indices.map((i) => `pics/${i}.png`));
      // the batch holds exactly the transformed samples
      const want = scope(() => stack(samples.map((s) => evalTransform(32, 32)(s.image))));
      assert.equal(maxAbsDiff(images, want), 0);
      want.free();
      seen.push(indices);
      labels.push(...samples.map((s) => s.label));
    },
  );
  assert.deepEqual(seen, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]);
  assert.deepEqual(labels, [0, 1, 2, undefined, 1, 2, 0, undefined, 2, 0]);
  assert.equal(liveTensors(), live, "batches and samples are freed");

  await assert.rejects(
    () =>
      forEachBatch(
        new Pics(8, [5]),
        { transform: evalTransform(32, 32), batchSize: 4, progress: false },
        () => {},
      ),
    (e: unknown) =>
      e instanceof EvalError &&
      /cannot load example 5 \(pics\/5\.png\): pics\/5\.png: corrupt/.test(e.message),
  );
  // a transform that does not give one size for every image
  await assert.rejects(
    () =>
      forEachBatch(
        new Pics(4),
        { transform: (x) => x.clone(), batchSize: 4, progress: false },
        () => {},
      ),
    /cannot transform example 1 \(pics\/1\.png.*the transform gave \[3, 44, 44\] but the batch's first image is \[3, 40, 36\]/,
  );
  assert.equal(liveTensors(), live, "nothing leaks on errors");
});

Deno.test("extractClassFeatures and the feature cache", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "dd-features-" });
  const live = liveTensors();
  const b = await loadBackbone({ arch: "vit_micro", patchSize: 8, imgSize: 32, seed: 5 });
  const ds = new Pics(7);
  const tf = evalTransform(36, 32);
  try {
    const r = await extractClassFeatures(b, ds, { transform: tf, batchSize: 3, progress: false });
    await t.step("equals one direct forward of every image", async () => {
      const xs: Tensor[] = [];
      for (let i = 0; i < ds.length; i++) {
        const s = await ds.get(i);
        xs.push(tf(s.image));
        s.image.free();
      }
      const want = noGrad(() => scope(() => b.vit.forward(stack(xs)).cls));
      freeAll(xs);
      assert.deepEqual(r.features.shape, [7, 64]);
      assert.equal(r.features.dtype, "float32");
      // batches of 3 vs 7 take other BLAS paths: a few float32 ulps
      assert.ok(maxAbsDiff(r.features, want) <= 1e-5);
      want.free();
      assert.equal(r.labels.dtype, "int64");
      assert.deepEqual(Array.from(r.labels.toTypedArray(), Number), [0, 1, 2, -1, 1, 2, 0]);
    });

    const key: FeatureCacheKey = {
      fingerprint: b.fingerprint,
      dataset: "pics:7",
      transform: evalTransformId(36, 32),
      kind: "cls",
    };
    const file = featureCacheFile(`${dir}/cache`, key);

    await t.step("cache: absent → null, round trip, other keys refused", async () => {
      assert.match(file, /\/cache\/cls-[0-9a-f]{16}\.safetensors$/);
      assert.equal(await loadFeatureCache(file, key), null);
      await saveFeatureCache(file, key, r);
      const back = await loadFeatureCache(file, key);
      assert.ok(back);
      assert.deepEqual(Object.keys(back).sort(), ["features", "labels"]);
      assert.equal(maxAbsDiff(back.features, r.features), 0);
      assert.equal(maxAbsDiff(back.labels, r.labels), 0);
      freeAll(back);
      for (
        const [field, value] of [
          ["fingerprint", "random-init:vit_micro/8/32:seed6"],
          ["dataset", "pics:8"],
          ["transform", evalTransformId(32, 32)],
          ["kind", "patch"],
        ] as const
      ) {
        await assert.rejects(
          () => loadFeatureCache(file, { ...key, [field]: value }),
          (e: unknown) => {
            assert.ok(e instanceof EvalError);
            assert.match(e.message, new RegExp(`feature cache .*${file.split("/").pop()}`));
            assert.match(e.message, new RegExp(`${field}: the file has "${key[field]}"`));
            assert.match(e.message, /not reused: delete it or choose another cache directory/);
            return true;
          },
        );
      }
      // a safetensors file that is no feature cache, and a file that is not safetensors
      const plain = `${dir}/plain.safetensors`;
      const x = tensor([1, 2]);
      await saveSafetensors(plain, { x });
      x.free();
      await assert.rejects(() => loadFeatureCache(plain, key), /format: "none"/);
      await Deno.writeTextFile(`${dir}/junk.safetensors`, "junk");
      await assert.rejects(
        () => loadFeatureCache(`${dir}/junk.safetensors`, key),
        /junk\.safetensors is unreadable/,
      );
    });

    await t.step("cachedClassFeatures: computes and writes, then reads", async () => {
      const cacheDir = `${dir}/c2`;
      const opts = {
        transform: tf,
        batchSize: 4,
        progress: false,
        cacheDir,
        dataset: "pics:7",
        transformId: evalTransformId(36, 32),
      };
      const first = await cachedClassFeatures(b, ds, opts);
      assert.equal(first.cached, false);
      const second = await cachedClassFeatures(b, new Pics(7, [0, 1, 2, 3, 4, 5, 6]), opts);
      assert.equal(second.cached, true, "read from the cache, not from the data set");
      assert.equal(second.cacheFile, first.cacheFile);
      assert.equal(maxAbsDiff(first.features, second.features), 0);
      freeAll([first, second]);
    });
    freeAll(r);
  } finally {
    b.free();
    await Deno.remove(dir, { recursive: true });
  }
  assert.equal(liveTensors(), live);
});
