/**
 * The DINO / DenseDINO trainer (issue 5): one step's EMA, per-parameter clipping and AdamW
 * against a computation done here; the frozen last layer; the lr / wd / momentum schedules as
 * logged against their closed forms; exact (bitwise) resume at an epoch end and mid-epoch
 * (`maxIters`, `saveEvery`); a short run that lowers the loss and a teacher backbone that loads
 * back into a fresh ViT; no tensor leaks across a create → run → free cycle.
 *
 * Everything runs on tiny configs (vit_micro, 32-px global views, 32 fashion-scenes) with one
 * intra-op thread, so CPU results are deterministic.
 */
import assert from "node:assert/strict";
import {
  createViT,
  keep,
  liveTensors,
  loadModule,
  loadSafetensors,
  manualSeed,
  type MultiCropBatch,
  noGrad,
  randn,
  readJsonl,
  scope,
  type Tensor,
  type TrainConfig,
  Trainer,
  type TrainerHooks,
} from "../../mod.ts";

/** 32 scenes, batch 8: 4 iterations per epoch; 2 epochs with one epoch of lr warm-up. */
const TINY: Partial<TrainConfig> = {
  arch: "vit_micro",
  patchSize: 8,
  outDim: 256,
  epochs: 2,
  batchSize: 8,
  scenes: 32,
  views: { globalSize: 32, localCrops: 2, localSize: 16, numRef: 2 },
  warmupEpochs: 1,
  workers: 0,
  threads: 1,
  logEvery: 1,
};

const QUIET: TrainerHooks = { progress: false, log: () => {} };

/** Runs `fn` with $DENSEDINO_CACHE in a temporary directory (the generated scenes go there). */
async function withCache(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dd-trainer-" });
  const saved = Deno.env.get("DENSEDINO_CACHE");
  Deno.env.set("DENSEDINO_CACHE", `${dir}/cache`);
  try {
    await fn(dir);
  } finally {
    if (saved === undefined) Deno.env.delete("DENSEDINO_CACHE");
    else Deno.env.set("DENSEDINO_CACHE", saved);
    await Deno.remove(dir, { recursive: true });
  }
}

/** The first batch of epoch 0 from the trainer's own loader (the loader is closed after). */
async function firstBatch(trainer: Trainer): Promise<MultiCropBatch> {
  const it = trainer.loader.epoch(0);
  const first = await it.next();
  await it.return();
  await trainer.loader.close();
  assert.ok(!first.done);
  return first.value;
}

/** Copies of tensors (kept outside any scope; free them). */
function snapshot(ts: readonly Tensor[]): Tensor[] {
  return scope(() => ts.map((t) => t.detach().clone()));
}

function freeAll(ts: Iterable<Tensor | null>): void {
  for (const t of ts) t?.free();
}

function maxAbsDiff(a: Tensor, b: Tensor): number {
  return scope(() => a.sub(b).abs().amax().item());
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** The official `cosine_scheduler` value at iteration i, computed directly. */
function cosineAt(
  base: number,
  final: number,
  total: number,
  warmup: number,
  i: number,
): number {
  if (i < warmup) return warmup > 1 ? (i * base) / (warmup - 1) : 0; // linspace(0, base, warmup)
  const n = total - warmup;
  return final + 0.5 * (base - final) * (1 + Math.cos((Math.PI * (i - warmup)) / n));
}

function assertNear(got: number, want: number, rel: number, what: string): void {
  assert.ok(
    Math.abs(got - want) <= rel * Math.max(Math.abs(want), 1e-30),
    `${what}: got ${got}, expected ${want}`,
  );
}

/** Compares two checkpoint files tensor by tensor, byte for byte; returns the differing keys. */
async function checkpointDiff(a: string, b: string): Promise<string[]> {
  const x = await loadSafetensors(a), y = await loadSafetensors(b);
  try {
    const keys = new Set([...Object.keys(x.tensors), ...Object.keys(y.tensors)]);
    const diff: string[] = [];
    for (const k of keys) {
      const p = x.tensors[k], q = y.tensors[k];
      if (!p || !q || !sameBytes(p.toBytes(), q.toBytes())) diff.push(k);
    }
    const mx = JSON.parse(x.metadata.densedino), my = JSON.parse(y.metadata.densedino);
    for (const k of ["epoch", "iteration", "position"]) {
      if (mx[k] !== my[k]) diff.push(`sidecar ${k}: ${mx[k]} vs ${my[k]}`);
    }
    if (JSON.stringify(mx.optimizer) !== JSON.stringify(my.optimizer)) {
      diff.push("sidecar optimizer meta");
    }
    return diff;
  } finally {
    freeAll(Object.values(x.tensors));
    freeAll(Object.values(y.tensors));
  }
}

async function train(cfg: Partial<TrainConfig>, hooks: TrainerHooks = {}) {
  const t = await Trainer.create(cfg, { ...QUIET, ...hooks });
  try {
    return await t.run();
  } finally {
    t.free();
  }
}

Deno.test("Trainer.step: EMA, per-parameter clipping, AdamW on the clipped gradients, frozen last layer", async () => {
  await withCache(async (dir) => {
    const live = liveTensors();
    // no warm-up, so iteration 0 has a non-zero lr; one run unclipped, one with a tiny clip
    const cfg = { ...TINY, warmupEpochs: 0, lr: 0.01 };
    const clip = 1e-3;
    const stepOnce = async (clipGrad: number, out: string) => {
      const t = await Trainer.create({ ...cfg, clipGrad, out }, QUIET);
      const batch = await firstBatch(t);
      const named = t.student.namedParameters();
      const studentBefore = snapshot(named.map(([, p]) => p));
      const teacherBefore = snapshot(t.teacher.parameters());
      const stats = t.step(batch);
      batch.free();
      const grads = named.map(([, p]) => p.grad);
      return { t, stats, named, studentBefore, teacherBefore, grads };
    };
    const raw = await stepOnce(0, `${dir}/raw`);
    const clipped = await stepOnce(clip, `${dir}/clipped`);
    try {
      for (const r of [raw, clipped]) {
        const { t, stats, named, studentBefore, teacherBefore } = r;
        // the schedules' iteration-0 values
        assert.equal(stats.momentum, 0.996);
        assertNear(stats.lr, 0.01 * 8 / 256, 1e-12, "lr[0]");
        assertNear(stats.wd, 0.04, 1e-12, "wd[0]");
        assert.ok(Number.isFinite(stats.loss) && stats.loss > 0);
        // EMA: teacher = m·t_before + (1 − m)·s_after, parameter by parameter
        const m = stats.momentum;
        const teacher = t.teacher.namedParameters();
        teacher.forEach(([name, p], i) => {
          const s = named[i][1];
          assert.equal(named[i][0], name);
          const want = scope(() => teacherBefore[i].mul(m).add(s, 1 - m));
          assert.ok(maxAbsDiff(p, want) <= 1e-7, `EMA of ${name}`);
          want.free();
          assert.equal(p.grad, null, `the teacher's ${name} has no gradient`);
        });
        // the student moved (lr > 0) except for the frozen last layer and weight_g
        named.forEach(([name, p], i) => {
          const moved = maxAbsDiff(p, studentBefore[i]) > 0;
          if (name.includes("last_layer")) {
            assert.ok(!moved, `${name} is frozen in epoch 0`);
            assert.equal(r.grads[i], null, `${name}: its gradient was dropped`);
          } else {
            assert.ok(moved, `${name} was updated`);
          }
        });
      }
      // the same seed, batch and drop-path draws: the raw gradients are the clipped run's
      // gradients before clipping, so clipping must be g · min(1, clip / (‖g‖ + 1e-6)) per tensor
      let clippedCount = 0;
      const norms: number[] = [];
      raw.named.forEach(([name], i) => {
        const g = raw.grads[i], c = clipped.grads[i];
        if (!g) {
          assert.equal(c, null, name);
          return;
        }
        assert.ok(c, name);
        const n = scope(() => g.norm().item());
        const coef = Math.min(1, clip / (n + 1e-6));
        const want = scope(() => g.mul(coef));
        assert.ok(
          maxAbsDiff(c, want) <= 1e-6 * Math.max(1e-3, scope(() => want.abs().amax().item())),
          `${name}: clipped gradient`,
        );
        want.free();
        const cn = scope(() => c.norm().item());
        norms.push(cn);
        assert.ok(cn <= clip * (1 + 1e-5), `${name}: norm ${cn} ≤ ${clip}`);
        if (coef < 1) {
          clippedCount++;
          assertNear(cn, clip * n / (n + 1e-6), 1e-4, `${name}: clipped norm`);
        }
      });
      assert.ok(clippedCount >= 10, `most parameters were clipped (${clippedCount})`);
      // per parameter, not globally: many tensors each reach the full clip norm (a global clip
      // would make the norms' root sum of squares equal the clip)
      const rss = Math.sqrt(norms.reduce((a, b) => a + b * b, 0));
      assert.ok(rss > 3 * clip, `root sum of squares ${rss} ≫ ${clip}`);
      // AdamW's first step (torch.optim.AdamW arithmetic) on the clipped gradients
      const t = clipped.t;
      const [b1, b2] = t.optimizer.betas, eps = t.optimizer.eps;
      for (const group of t.optimizer.groups) {
        for (const p of group.params) {
          const i = clipped.named.findIndex(([, q]) => q === p);
          const g = clipped.grads[i];
          if (!g) continue;
          const want = scope(() => {
            const mHat = g.mul(1 - b1).div(1 - b1);
            const v = g.mul(g).mul(1 - b2);
            const denom = v.sqrt().div(Math.sqrt(1 - b2)).add(eps);
            return clipped.studentBefore[i].mul(1 - group.lr * group.weightDecay)
              .sub(mHat.div(denom).mul(group.lr));
          });
          assert.ok(maxAbsDiff(p, want) <= 1e-6, `AdamW update of ${clipped.named[i][0]}`);
          want.free();
        }
      }
    } finally {
      for (const r of [raw, clipped]) {
        freeAll([...r.studentBefore, ...r.teacherBefore, ...r.grads]);
        r.t.free();
      }
    }
    assert.equal(liveTensors(), live, "no tensor outlives the trainers");
  });
});

Deno.test("Trainer.run: schedules, frozen last layer, no leaks, and bitwise-exact resume", async (t) => {
  await withCache(async (dir) => {
    const ipe = 4, total = 8;
    const A = `${dir}/straight`, D = `${dir}/from-save-every`;
    const live = liveTensors();
    const names = [
      "head.last_layer.weight_v",
      "head.last_layer.weight_g",
      "ref_head.last_layer.weight_v",
      "ref_head.last_layer.weight_g",
    ];
    const afterEpoch0: Tensor[] = [];
    let lastLayer = (): Tensor[] => [];
    // the straight run: 2 epochs, a mid-epoch checkpoint every 3 iterations
    const trainer = await Trainer.create({ ...TINY, out: A, saveEvery: 3 }, {
      ...QUIET,
      onStep: (it) => {
        if (it === ipe) afterEpoch0.push(...snapshot(lastLayer()));
        // the checkpoint of iteration 3 (mid epoch 0), copied before iteration 6 replaces it
        // (synchronously: the epoch-end checkpoint of iteration 4 is written right after this hook)
        if (it === 4) copyCheckpoint(A, D);
      },
    });
    const params = new Map(trainer.student.namedParameters());
    lastLayer = () => names.map((n) => params.get(n)!);
    assert.equal(trainer.itersPerEpoch, ipe);
    assert.equal(trainer.totalIterations, total);
    const initial = snapshot(lastLayer());
    let summary;
    try {
      summary = await trainer.run();
      await t.step(
        "the heads' last layer: frozen in epoch 0, trained in epoch 1; weight_g never",
        () => {
          const final = lastLayer();
          names.forEach((n, i) => {
            assert.equal(maxAbsDiff(afterEpoch0[i], initial[i]), 0, `${n} unchanged in epoch 0`);
            if (n.endsWith("weight_g")) {
              assert.equal(maxAbsDiff(final[i], initial[i]), 0, `${n} never changes`);
            } else {
              assert.ok(maxAbsDiff(final[i], afterEpoch0[i]) > 0, `${n} changes in epoch 1`);
            }
          });
        },
      );
    } finally {
      freeAll([...initial, ...afterEpoch0]);
      trainer.free();
    }
    assert.equal(summary.epochs, 2);
    assert.equal(summary.iterations, total);
    assert.equal(liveTensors(), live, "create → run → free returns to the starting tensor count");

    await t.step("logged lr / wd / momentum follow the cosine closed forms", async () => {
      const records = (await readJsonl(`${A}/log.jsonl`)) as Record<string, number | string>[];
      const iters = records.filter((r) => r.type === "iter");
      assert.deepEqual(iters.map((r) => r.iteration), [1, 2, 3, 4, 5, 6, 7, 8]);
      const baseLr = 0.0005 * 8 / 256;
      for (const i of [0, ipe - 1, ipe, 5, 6, total - 1]) { // first, warm-up end, middle, last
        const r = iters[i];
        assertNear(Number(r.lr), cosineAt(baseLr, 1e-6, total, ipe, i), 1e-12, `lr[${i}]`);
        assertNear(Number(r.wd), cosineAt(0.04, 0.4, total, 0, i), 1e-12, `wd[${i}]`);
        assertNear(Number(r.momentum), cosineAt(0.996, 1, total, 0, i), 1e-12, `m[${i}]`);
        assert.equal(r.epoch, i < ipe ? 0 : 1);
      }
      assert.equal(iters[0].lr, 0, "the warm-up starts at 0");
      assert.equal(iters[ipe - 1].lr, baseLr, "the warm-up ends at the scaled lr");
      assert.equal(iters[ipe].lr, baseLr, "the cosine starts at the scaled lr");
      const epochs = records.filter((r) => r.type === "epoch");
      assert.deepEqual(epochs.map((r) => r.epoch), [0, 1]);
      // liveTensors counts from the run's start (this test's own 4 snapshots of iteration 4
      // included): epoch 1 adds none
      assert.equal(
        Number(epochs[1].liveTensors) - Number(epochs[0].liveTensors),
        0,
        "no tensors accumulate over an epoch after warm-up",
      );
      for (const f of ["config.json", "loss.png", "teacher_backbone.safetensors"]) {
        assert.ok((await Deno.stat(`${A}/${f}`)).size > 0, f);
      }
    });

    await t.step(
      "1 epoch, then resume in a new Trainer: bitwise identical to 2 epochs",
      async () => {
        const B = `${dir}/epoch-resume`;
        const first = await train({ ...TINY, out: B, maxIters: ipe });
        assert.deepEqual([first.epochs, first.iterations], [1, ipe]);
        // a log record cut off by a crash: dropped on resume, not glued to the next record
        await Deno.writeTextFile(`${B}/log.jsonl`, '{"type":"iter","itera', { append: true });
        const messages: string[] = [];
        const second = await train({ ...TINY, out: B, resume: true }, {
          log: (m) => messages.push(m),
        });
        assert.deepEqual([second.epochs, second.iterations], [2, total]);
        assert.ok(
          messages.some((m) => /resumed from .*epoch 1, iteration 4/.test(m)),
          messages.join(),
        );
        const iters = (await readJsonl(`${B}/log.jsonl`)).filter((r) => r.type === "iter");
        assert.deepEqual(iters.map((r) => r.iteration), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert.ok(messages.every((m) => !m.startsWith("warning")), messages.join());
        assert.deepEqual(
          await checkpointDiff(`${A}/checkpoint.safetensors`, `${B}/checkpoint.safetensors`),
          [],
        );
      },
    );

    await t.step(
      "stops in the middle of epochs (maxIters 2, then 6), resumed twice: identical",
      async () => {
        const C = `${dir}/mid-resume`;
        // the log of an earlier run that never reached a checkpoint: a fresh run starts anew
        await Deno.mkdir(C);
        await Deno.writeTextFile(`${C}/log.jsonl`, '{"type":"iter","iteration":99}\n');
        await train({ ...TINY, out: C, maxIters: 2 });
        const side = JSON.parse(await Deno.readTextFile(`${C}/checkpoint.json`));
        assert.deepEqual([side.epoch, side.iteration, side.position], [0, 2, 16]);
        await train({ ...TINY, out: C, maxIters: 6, resume: true });
        await train({ ...TINY, out: C, resume: true });
        const iters = (await readJsonl(`${C}/log.jsonl`)).filter((r) => r.type === "iter");
        assert.deepEqual(iters.map((r) => r.iteration), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert.deepEqual(
          await checkpointDiff(`${A}/checkpoint.safetensors`, `${C}/checkpoint.safetensors`),
          [],
        );
      },
    );

    await t.step(
      "the saveEvery checkpoint of iteration 3 (mid epoch 0), resumed: identical",
      async () => {
        const side = JSON.parse(await Deno.readTextFile(`${D}/checkpoint.json`));
        assert.equal(side.iteration, 3);
        const s = await train({ ...TINY, out: D, saveEvery: 3, resume: true });
        assert.equal(s.iterations, total);
        assert.deepEqual(
          await checkpointDiff(`${A}/checkpoint.safetensors`, `${D}/checkpoint.safetensors`),
          [],
        );
        const tb = await Deno.readFile(`${D}/teacher_backbone.safetensors`);
        assert.ok(sameBytes(tb, await Deno.readFile(`${A}/teacher_backbone.safetensors`)));
      },
    );
  });
});

function copyCheckpoint(from: string, to: string): void {
  Deno.mkdirSync(to, { recursive: true });
  for (const f of ["checkpoint.safetensors", "checkpoint.json"]) {
    Deno.copyFileSync(`${from}/${f}`, `${to}/${f}`);
  }
}

Deno.test("Trainer: a short fashion-scenes run lowers the loss; the teacher backbone loads into a ViT", async () => {
  await withCache(async (dir) => {
    // a high lr and a fast-following teacher: in a dozen iterations the student learns to match
    // the sharpened teacher (on this scale this measures the direction of the optimisation, not
    // feature quality); one data-loading worker
    const out = `${dir}/learn`;
    const losses: { loss: number; cls: number; ref: number }[] = [];
    const trainer = await Trainer.create({
      ...TINY,
      epochs: 3,
      warmupEpochs: 0,
      lr: 0.02,
      momentumTeacher: 0.9,
      workers: 1,
      threads: 0,
      out,
    }, { ...QUIET, onStep: (_, s) => losses.push(s) });
    let expected: Tensor | null = null;
    manualSeed(3);
    const images = keep(randn([2, 3, 32, 32]));
    try {
      const summary = await trainer.run();
      assert.equal(summary.iterations, 12);
      expected = noGrad(() => trainer.teacher.backbone.forward(images, { patchTokens: false }).cls);
    } finally {
      trainer.free();
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    for (const k of ["loss", "cls", "ref"] as const) {
      const first = mean(losses.slice(0, 2).map((s) => s[k]));
      const last = mean(losses.slice(-4).map((s) => s[k]));
      assert.ok(last < 0.75 * first, `${k}: the last iterations' mean ${last} < 0.75 × ${first}`);
    }
    const vit = createViT("vit_micro", { patchSize: 8, imgSize: 32 });
    try {
      await loadModule(`${out}/teacher_backbone.safetensors`, vit); // strict
      vit.eval();
      const got = noGrad(() => vit.forward(images, { patchTokens: false }).cls);
      assert.ok(scope(() => got.isfinite().all().item()), "finite features");
      assert.deepEqual(got.shape, [2, vit.embedDim]);
      assert.equal(maxAbsDiff(got, expected!), 0, "the same features as the trainer's teacher");
      got.free();
    } finally {
      vit.free();
      images.free();
      expected?.free();
    }
  });
});
