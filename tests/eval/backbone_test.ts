/**
 * loadBackbone: random init (deterministic, the trainer's initial student), bare ViT files
 * (shape read from the weights), training checkpoints with teacher./student. prefixes, run
 * directories (a tiny real training run and a hand-made one), fingerprints, and the errors
 * (missing file, not safetensors, another arch, options that disagree with the run).
 */
import assert from "node:assert/strict";
import {
  createViT,
  liveTensors,
  manualSeed,
  saveModule,
  saveSafetensors,
  scope,
  type Tensor,
  type TrainConfig,
  Trainer,
  type VisionTransformer,
} from "../../mod.ts";
import { EvalError, loadBackbone, stateDictFingerprint } from "../../lib/eval/backbone.ts";

/** Max |a − b| over two state dicts with the same keys (asserts the keys match). */
function sdDiff(a: Record<string, Tensor>, b: Record<string, Tensor>): number {
  assert.deepEqual(Object.keys(a).sort(), Object.keys(b).sort());
  let m = 0;
  for (const k of Object.keys(a)) {
    m = Math.max(m, scope(() => a[k].sub(b[k]).abs().amax().item()));
  }
  return m;
}

function micro(seed: number, opts: { learnableRefToken?: boolean } = {}): VisionTransformer {
  manualSeed(seed);
  return createViT("vit_micro", { patchSize: 8, imgSize: 32, ...opts });
}

async function rejectsEval(fn: () => Promise<unknown>, re: RegExp): Promise<void> {
  await assert.rejects(fn, (e: unknown) => {
    assert.ok(e instanceof EvalError, `expected an EvalError, got ${e}`);
    assert.match((e as Error).message, re);
    return true;
  });
}

Deno.test("loadBackbone: random init", async () => {
  const live = liveTensors();
  const a = await loadBackbone({ arch: "vit_micro", patchSize: 8, imgSize: 32, seed: 3 });
  const b = await loadBackbone({ arch: "vit_micro", patchSize: 8, imgSize: 32, seed: 3 });
  const c = await loadBackbone({ arch: "vit_micro", patchSize: 8, imgSize: 32, seed: 4 });
  // the initial student backbone of a training run with seed 3 (manualSeed, then createViT)
  const ref = micro(3);
  try {
    assert.equal(a.source, "random init vit_micro/8 (seed 3)");
    assert.equal(a.fingerprint, "random-init:vit_micro/8/32:seed3");
    assert.equal(c.fingerprint, "random-init:vit_micro/8/32:seed4");
    assert.deepEqual([a.arch, a.patchSize, a.imgSize, a.file], ["vit_micro", 8, 32, null]);
    assert.equal(sdDiff(a.vit.stateDict(), b.vit.stateDict()), 0);
    assert.equal(sdDiff(a.vit.stateDict(), ref.stateDict()), 0);
    assert.ok(sdDiff(a.vit.stateDict(), c.vit.stateDict()) > 0);
    assert.equal(a.vit.training, false, "eval mode");
    assert.ok(a.vit.parameters().every((p) => !p.requiresGrad), "no parameter requires grad");
  } finally {
    for (const x of [a, b, c]) x.free();
    ref.free();
  }
  assert.equal(liveTensors(), live);
  await rejectsEval(() => loadBackbone({ arch: "vit_micro" }), /patchSize.*imgSize.*weights/s);
  await rejectsEval(
    () => loadBackbone({ arch: "vit_giant", patchSize: 8, imgSize: 32 }),
    /unknown architecture "vit_giant"/,
  );
});

Deno.test("loadBackbone: files, checkpoints, run directories and their errors", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "dd-backbone-" });
  const live = liveTensors();
  const teacher = micro(1, { learnableRefToken: true });
  const student = micro(2, { learnableRefToken: true });
  try {
    const bare = `${dir}/teacher_backbone.safetensors`;
    await saveModule(bare, teacher);
    // a training checkpoint: both backbones plus other keys
    const ckpt = `${dir}/checkpoint.safetensors`;
    {
      const tensors: Record<string, Tensor> = {};
      for (const [k, v] of student.namedParameters()) tensors[`student.backbone.${k}`] = v;
      for (const [k, v] of teacher.namedParameters()) tensors[`teacher.backbone.${k}`] = v;
      const other = micro(9);
      await saveSafetensors(ckpt, { ...tensors, "student.head.w": other.patchEmbed.proj.weight });
      other.free();
    }

    await t.step("a bare ViT file: shape read from the weights, weights equal", async () => {
      const b = await loadBackbone({ weights: bare });
      try {
        assert.deepEqual(
          [b.arch, b.patchSize, b.imgSize, b.learnableRefToken, b.keyPrefix],
          ["vit_micro", 8, 32, true, ""],
        );
        assert.equal(b.source, bare);
        assert.equal(sdDiff(b.vit.stateDict(), teacher.stateDict()), 0);
        assert.equal(b.fingerprint, stateDictFingerprint(teacher.stateDict()));
        assert.match(b.fingerprint, /^[0-9a-f]{64}$/);
        assert.ok(b.vit.parameters().every((p) => !p.requiresGrad));
        // the same options given explicitly are accepted
        const c = await loadBackbone({ weights: bare, arch: "vit_micro", patchSize: 8 });
        assert.equal(c.fingerprint, b.fingerprint);
        c.free();
      } finally {
        b.free();
      }
      await rejectsEval(() => loadBackbone({ weights: bare, which: "student" }), /bare ViT/);
    });

    await t.step("a training checkpoint: teacher by default, student on request", async () => {
      const tb = await loadBackbone({ weights: ckpt });
      const sb = await loadBackbone({ weights: ckpt, which: "student" });
      try {
        assert.equal(tb.keyPrefix, "teacher.backbone.");
        assert.equal(sb.keyPrefix, "student.backbone.");
        assert.match(sb.source, /checkpoint\.safetensors \(student backbone/);
        assert.equal(sdDiff(tb.vit.stateDict(), teacher.stateDict()), 0);
        assert.equal(sdDiff(sb.vit.stateDict(), student.stateDict()), 0);
        // the fingerprint is of the weights, not of the file they came from
        assert.equal(tb.fingerprint, stateDictFingerprint(teacher.stateDict()));
        assert.notEqual(tb.fingerprint, sb.fingerprint);
      } finally {
        tb.free();
        sb.free();
      }
      // an explicit key prefix (extract_features' --key-prefix): exactly those keys
      const kp = await loadBackbone({ weights: ckpt, keyPrefix: "student.backbone." });
      assert.equal(sdDiff(kp.vit.stateDict(), student.stateDict()), 0);
      kp.free();
      await rejectsEval(
        () => loadBackbone({ weights: ckpt, keyPrefix: "" }),
        /checkpoint\.safetensors: no bare ViT keys .*hint: .*"student\.backbone\.", "teacher\.backbone\."/s,
      );
    });

    await t.step("a hand-made run directory: config.json checked against the options", async () => {
      const run = `${dir}/run`;
      await Deno.mkdir(run);
      await Deno.copyFile(bare, `${run}/teacher_backbone.safetensors`);
      await Deno.copyFile(ckpt, `${run}/checkpoint.safetensors`);
      const cfg = { arch: "vit_micro", patchSize: 8, imgSize: 32, learnableRefToken: true };
      await Deno.writeTextFile(`${run}/config.json`, JSON.stringify(cfg));
      const tb = await loadBackbone({ weights: run });
      const sb = await loadBackbone({ weights: run, which: "student" });
      try {
        assert.equal(tb.file, `${run}/teacher_backbone.safetensors`);
        assert.equal(sb.file, `${run}/checkpoint.safetensors`);
        assert.equal(sdDiff(tb.vit.stateDict(), teacher.stateDict()), 0);
        assert.equal(sdDiff(sb.vit.stateDict(), student.stateDict()), 0);
      } finally {
        tb.free();
        sb.free();
      }
      await rejectsEval(
        () => loadBackbone({ weights: run, arch: "vit_mini" }),
        /arch \(--arch\) is vit_mini but .*run\/config\.json says vit_micro/,
      );
      await rejectsEval(
        () => loadBackbone({ weights: run, patchSize: 16 }),
        /patchSize \(--patch-size\) is 16 but .*config\.json says 8/,
      );
      // a config that does not describe the weights
      await Deno.writeTextFile(`${run}/config.json`, JSON.stringify({ ...cfg, arch: "vit_mini" }));
      await rejectsEval(
        () => loadBackbone({ weights: run }),
        /teacher_backbone\.safetensors: the checkpoint \(.*vit_micro\/8.*\) does not fit this model.*a vit_mini\/8 at 32 px ViT, as .*config\.json say/s,
      );
      await Deno.remove(`${run}/config.json`);
      await rejectsEval(() => loadBackbone({ weights: run }), /run\/config\.json: not found/);
    });

    await t.step("errors: missing file, not safetensors, another arch", async () => {
      await rejectsEval(
        () => loadBackbone({ weights: `${dir}/nope.safetensors` }),
        /nope\.safetensors: not found/,
      );
      const text = `${dir}/notes.safetensors`;
      await Deno.writeTextFile(text, "these are not weights, just some text in a file");
      await rejectsEval(
        () => loadBackbone({ weights: text }),
        /notes\.safetensors is not a readable safetensors file/,
      );
      const mini = createViT("vit_mini", { patchSize: 8, imgSize: 32 });
      const miniFile = `${dir}/mini.safetensors`;
      await saveModule(miniFile, mini, { prefix: "teacher.backbone." });
      mini.free();
      await rejectsEval(
        () => loadBackbone({ weights: miniFile, arch: "vit_micro" }),
        /mini\.safetensors \(keys "teacher\.backbone\.\*"\): the checkpoint \(.*vit_mini\/8.*\) does not fit this model \(.*vit_micro\/8\).*a vit_micro\/8 at 32 px ViT/s,
      );
      await rejectsEval(
        () => loadBackbone({ weights: miniFile, patchSize: 16 }),
        /mini\.safetensors.*vit_mini\/8.*does not fit.*a vit_mini\/16 at 32 px/s,
      );
      const other = `${dir}/other.safetensors`;
      await saveModule(other, teacher, { prefix: "ema." });
      await rejectsEval(
        () => loadBackbone({ weights: other }),
        /other\.safetensors: no ViT weights found .*"teacher\.backbone\.\*".*ema\.blocks\./s,
      );
    });
  } finally {
    teacher.free();
    student.free();
    await Deno.remove(dir, { recursive: true });
  }
  assert.equal(liveTensors(), live);
});

Deno.test("loadBackbone: the run directory of a real (tiny) training run", async () => {
  const dir = await Deno.makeTempDir({ prefix: "dd-backbone-run-" });
  const saved = Deno.env.get("DENSEDINO_CACHE");
  Deno.env.set("DENSEDINO_CACHE", `${dir}/cache`);
  try {
    const cfg: Partial<TrainConfig> = {
      arch: "vit_micro",
      patchSize: 8,
      outDim: 256,
      epochs: 1,
      batchSize: 8,
      scenes: 32,
      views: { globalSize: 32, localCrops: 2, localSize: 16, numRef: 2 },
      warmupEpochs: 0,
      lr: 0.01,
      workers: 0,
      threads: 1,
      maxIters: 2,
      out: `${dir}/run`,
    };
    const trainer = await Trainer.create(cfg, { progress: false, log: () => {} });
    try {
      await trainer.run();
      const tb = await loadBackbone({ weights: `${dir}/run` });
      const sb = await loadBackbone({ weights: `${dir}/run`, which: "student" });
      try {
        assert.deepEqual([tb.arch, tb.patchSize, tb.imgSize], ["vit_micro", 8, 32]);
        assert.equal(sdDiff(tb.vit.stateDict(), trainer.teacher.backbone.stateDict()), 0);
        assert.equal(sdDiff(sb.vit.stateDict(), trainer.student.backbone.stateDict()), 0);
        // the EMA teacher has moved away from the student
        assert.ok(sdDiff(tb.vit.stateDict(), sb.vit.stateDict()) > 0);
        // the checkpoint file alone: its metadata carries the configuration
        const fromCkpt = await loadBackbone({ weights: `${dir}/run/checkpoint.safetensors` });
        assert.equal(fromCkpt.fingerprint, tb.fingerprint);
        fromCkpt.free();
      } finally {
        tb.free();
        sb.free();
      }
    } finally {
      trainer.free();
    }
  } finally {
    if (saved === undefined) Deno.env.delete("DENSEDINO_CACHE");
    else Deno.env.set("DENSEDINO_CACHE", saved);
    await Deno.remove(dir, { recursive: true });
  }
});
