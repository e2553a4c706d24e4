/**
 * The CUDA test subset: runs where the shim was built against a CUDA libtorch and a GPU is
 * visible (`bench/gpu/run.sh` runs it on the GPU machine), and is reported as ignored elsewhere.
 *
 * Every check compares the GPU against the CPU computation of the same inputs (independent
 * kernels): elementwise and reduction ops, matmul, softmax, layer_norm, gelu, bicubic
 * grid_sample and interpolate, autograd gradients, AdamW / EMA / per-parameter clipping, the
 * fused attention kernel against the explicit softmax, the ViT forward (fp32 and bf16 autocast)
 * and its split (fused) path against the explicit-mask path, reference-token invariance, the
 * allocator's statistics, pinned asynchronous copies, a few trainer iterations in bf16 and
 * fp16 whose teacher loads on the CPU, and NCCL collectives in a group of one (the only case a
 * single-GPU machine has) against their closed forms.
 *
 * Tolerances: cuBLAS / cuDNN and the CPU sum in other orders, and cuDNN convolutions use TF32 by
 * default on Ampere and later (10-bit mantissa), so fp32 results agree to ~1e-3 relative after a
 * convolution and ~1e-5 without one; bf16 autocast to ~2e-2.
 */
import assert from "node:assert/strict";
import {
  AdamW,
  autocast,
  clipGradNorms,
  createViT,
  cuda,
  emaUpdate,
  gelu,
  Generator,
  gridSample,
  initProcessGroup,
  interpolate,
  keep,
  layerNorm,
  liveTensors,
  loadModule,
  noGrad,
  ProcessGroup,
  rand,
  randn,
  savePng,
  scaledDotProductAttention,
  scope,
  type Tensor,
  tensor,
  type TrainConfig,
  Trainer,
  type TrainerHooks,
  type VisionTransformer,
} from "../../mod.ts";
import { freePort } from "../_process.ts";

const ON_GPU = cuda.isAvailable();
const ignore = !ON_GPU;

/** Largest |a − b| / (max |b| + tiny), both read back to the host. */
function relErr(a: Tensor, b: Tensor): number {
  const x = a.toTypedArray() as Float32Array, y = b.toTypedArray() as Float32Array;
  assert.equal(x.length, y.length);
  let diff = 0, scale = 0;
  for (let i = 0; i < x.length; i++) {
    diff = Math.max(diff, Math.abs(x[i] - y[i]));
    scale = Math.max(scale, Math.abs(y[i]));
  }
  return diff / (scale + 1e-12);
}

function close(a: Tensor, b: Tensor, tol: number, what: string): void {
  const e = relErr(a, b);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(2)} > ${tol}`);
}

function micro(seed: number): VisionTransformer {
  using g = new Generator(seed);
  return createViT("vit_micro", { patchSize: 8, imgSize: 32, generator: g });
}

Deno.test({
  name: "cuda: the CUDA build reports the device",
  ignore,
  fn() {
    assert.ok(cuda.isBuilt());
    assert.ok(cuda.deviceCount() >= 1);
    cuda.synchronize();
  },
});

Deno.test({
  name:
    "cuda: ops match the CPU (elementwise, reductions, matmul, softmax, layer_norm, gelu, bicubic sampling)",
  ignore,
  fn() {
    const live = liveTensors();
    scope(() => {
      const x = randn([64, 96]), w = randn([96, 80]), g = randn([96]), b = randn([96]);
      const img = randn([2, 3, 12, 12]);
      const grid = rand([2, 5, 7, 2]).mul(2.2).sub(1.1);
      const ops: [string, (t: Tensor[]) => Tensor, Tensor[], number][] = [
        ["add/mul/exp", ([a]) => a.mul(0.5).add(1).exp(), [x], 1e-6],
        ["sum/mean", ([a]) => a.sum(1).add(a.mean(0).sum()), [x], 1e-5],
        ["matmul", ([a, m]) => a.matmul(m), [x, w], 1e-5],
        ["softmax", ([a]) => a.softmax(-1), [x], 1e-6],
        ["layer_norm", ([a, gg, bb]) => layerNorm(a, [96], gg, bb), [x, g, b], 1e-5],
        ["gelu", ([a]) => gelu(a), [x], 1e-6],
        [
          "grid_sample bicubic",
          ([i, gr]) => gridSample(i, gr, { mode: "bicubic", alignCorners: false }),
          [img, grid],
          1e-5,
        ],
        [
          "interpolate bicubic",
          ([i]) => interpolate(i, { size: [17, 9], mode: "bicubic" }),
          [img],
          1e-5,
        ],
      ];
      for (const [name, f, inputs, tol] of ops) {
        const cpu = f(inputs);
        const gpu = f(inputs.map((t) => t.to("cuda")));
        assert.equal(gpu.device, "cuda:0", name);
        close(gpu, cpu, tol, name);
      }
    });
    assert.equal(liveTensors(), live);
  },
});

Deno.test({
  name: "cuda: autograd gradients match the CPU",
  ignore,
  fn() {
    scope(() => {
      const x = randn([16, 24]), w = randn([24, 10]).mul(0.2);
      const grads = (dev: "cpu" | "cuda") => {
        const wd = w.to(dev).requiresGrad_();
        const y = gelu(x.to(dev).matmul(wd)).softmax(-1).log().mul(-1).mean();
        y.backward();
        return wd.grad!;
      };
      close(grads("cuda"), grads("cpu"), 1e-5, "d loss / d w");
    });
  },
});

Deno.test({
  name: "cuda: AdamW, EMA and per-parameter clipping match the CPU",
  ignore,
  fn() {
    scope(() => {
      const init = [randn([8, 6]), randn([6])];
      const gradsOf = (i: number) => [randn([8, 6]).mul(5 + i), randn([6]).mul(0.01)];
      const G = [0, 1, 2].map(gradsOf);
      const run = (dev: "cpu" | "cuda") => {
        const ps = init.map((t) => t.to({ device: dev, copy: true }).requiresGrad_());
        const teacher = init.map((t) => t.to({ device: dev, copy: true }).mul(0.5));
        const opt = new AdamW(ps, { lr: 0.01, weightDecay: 0.04 });
        for (const gs of G) {
          ps.forEach((p, k) => p.setGrad(gs[k].to(dev)));
          clipGradNorms(ps, 3.0);
          opt.step();
          emaUpdate(teacher, ps, 0.9);
        }
        return [...ps, ...teacher];
      };
      const cpu = run("cpu"), gpu = run("cuda");
      cpu.forEach((c, k) => close(gpu[k], c, 1e-5, `tensor ${k}`));
    });
  },
});

Deno.test({
  name: "cuda: fused scaled_dot_product_attention matches the explicit softmax (fp32 and bf16)",
  ignore,
  fn() {
    scope(() => {
      const [q, k, v] = [0, 1, 2].map(() => randn([4, 6, 197, 64]).to("cuda"));
      const scale = 0.125;
      const explicit = q.matmul(k.transpose(-2, -1)).mul(scale).softmax(-1).matmul(v);
      close(scaledDotProductAttention(q, k, v, { scale }), explicit, 1e-4, "fp32");
      const [qb, kb, vb] = [q, k, v].map((t) => t.to("bfloat16"));
      const fused = scaledDotProductAttention(qb, kb, vb, { scale });
      assert.equal(fused.dtype, "bfloat16");
      close(fused.float(), explicit, 3e-2, "bf16 (flash / memory-efficient kernel)");
    });
  },
});

Deno.test({
  name:
    "cuda: the ViT forward matches the CPU (fp32, bf16 autocast), split path = explicit mask, refs change nothing",
  ignore,
  fn() {
    const live = liveTensors();
    const cpuModel = micro(3), gpuModel = micro(3).to("cuda");
    cpuModel.eval();
    gpuModel.eval();
    try {
      noGrad(() =>
        scope(() => {
          const x = randn([4, 3, 32, 32]), pts = rand([4, 5, 2]).mul(2).sub(1);
          const xg = x.to("cuda"), pg = pts.to("cuda");
          const cpu = cpuModel.forward(x, { points: pts });
          const split = gpuModel.forward(xg, { points: pg, fastPath: true });
          const explicit = gpuModel.forward(xg, { points: pg, fastPath: false });
          // fp32 (the patch embedding's cuDNN convolution may run in TF32)
          close(split.cls, cpu.cls, 2e-3, "class token, GPU vs CPU");
          close(split.ref!, cpu.ref!, 2e-3, "reference tokens, GPU vs CPU");
          close(split.patch, cpu.patch, 2e-3, "patch tokens, GPU vs CPU");
          close(explicit.cls, split.cls, 1e-5, "class token, explicit vs split");
          close(explicit.ref!, split.ref!, 1e-5, "reference tokens, explicit vs split");
          // no reference tokens: class and patch outputs unchanged (nothing reads them)
          const plain = gpuModel.forward(xg);
          close(plain.cls, split.cls, 1e-5, "class token without references");
          close(plain.patch, split.patch, 1e-5, "patch tokens without references");
          // bf16 autocast
          const bf = autocast(
            () => gpuModel.forward(xg, { points: pg }),
            { device: "cuda", dtype: "bfloat16" },
          );
          close(bf.cls.float(), cpu.cls, 5e-2, "class token, bf16 autocast vs CPU fp32");
          close(bf.ref!.float(), cpu.ref!, 5e-2, "reference tokens, bf16 autocast vs CPU fp32");
        })
      );
    } finally {
      cpuModel.free();
      gpuModel.free();
    }
    assert.equal(liveTensors(), live);
  },
});

Deno.test({
  name: "cuda: memory statistics, peak reset, pinned asynchronous copies",
  ignore,
  fn() {
    cuda.synchronize();
    const before = cuda.memoryStats();
    const big = keep(scope(() => randn([16, 1024, 1024]).to("cuda"))); // 64 MiB
    const during = cuda.memoryStats();
    assert.ok(during.allocated - before.allocated >= 64 * 2 ** 20, JSON.stringify(during));
    assert.ok(during.peakAllocated >= during.allocated);
    big.free();
    cuda.resetPeakMemoryStats();
    const after = cuda.memoryStats();
    assert.ok(after.peakAllocated < during.peakAllocated);
    scope(() => {
      const host = randn([256, 1024]);
      const pinned = host.pinMemory();
      const dev = pinned.to({ device: "cuda", nonBlocking: true });
      const back = dev.mul(2).to("cpu");
      close(back, host.mul(2), 0, "pinned round trip");
    });
  },
});

/** A tiny ImageFolder of random images (the GPU machine has no Fashion-MNIST). */
async function randomImageFolder(dir: string, n: number): Promise<string> {
  for (let i = 0; i < n; i++) {
    await Deno.mkdir(`${dir}/c${i % 2}`, { recursive: true });
    using img = rand([3, 40, 40]);
    await savePng(`${dir}/c${i % 2}/${i}.png`, img);
  }
  return dir;
}

Deno.test({
  name: "cuda: the trainer runs in bf16 and fp16; its teacher loads on the CPU and matches",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "dd-cuda-" });
    const quiet: TrainerHooks = { progress: false, log: () => {} };
    try {
      const data = `imagefolder:${await randomImageFolder(`${dir}/images`, 32)}`;
      for (const precision of ["bf16", "fp16"] as const) {
        const live = liveTensors();
        const cfg: Partial<TrainConfig> = {
          data,
          device: "cuda",
          precision,
          arch: "vit_micro",
          patchSize: 8,
          outDim: 256,
          epochs: 2,
          batchSize: 8,
          views: { globalSize: 32, localCrops: 2, localSize: 16, numRef: 2 },
          warmupEpochs: 1,
          workers: 1,
          logEvery: 1,
          out: `${dir}/${precision}`,
        };
        const t = await Trainer.create(cfg, quiet);
        let summary;
        try {
          summary = await t.run();
        } finally {
          t.free();
        }
        assert.equal(summary.iterations, 8, precision);
        assert.ok(
          Number.isFinite(summary.final?.loss ?? NaN),
          `${precision}: ${summary.final?.loss}`,
        );
        // the teacher backbone, saved from the GPU, loads into a CPU model
        const cpuModel = micro(0);
        const gpuModel = micro(0);
        try {
          const saved = `${dir}/${precision}/teacher_backbone.safetensors`;
          await loadModule(saved, cpuModel);
          await loadModule(saved, gpuModel);
          gpuModel.to("cuda");
          cpuModel.eval();
          gpuModel.eval();
          noGrad(() =>
            scope(() => {
              const x = randn([2, 3, 32, 32]);
              close(
                gpuModel.forward(x.to("cuda")).cls,
                cpuModel.forward(x).cls,
                2e-3,
                `${precision} teacher, GPU vs CPU`,
              );
            })
          );
        } finally {
          cpuModel.free();
          gpuModel.free();
        }
        assert.equal(liveTensors(), live, `${precision}: live tensors`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "cuda: NCCL in a group of one (all_reduce, bucketed gradient average, broadcast, all_gather)",
  ignore,
  fn() {
    assert.ok(
      ProcessGroup.available("nccl"),
      "this CUDA build has no NCCL (nccl.h was not found when the shim was built)",
    );
    const pg = initProcessGroup({
      rank: 0,
      worldSize: 1,
      masterPort: freePort(),
      device: "cuda",
      timeoutMs: 60_000,
    });
    try {
      assert.equal(pg.backend, "nccl");
      scope(() => {
        const t = tensor([1, 2, 3], { dtype: "float32" }).to("cuda");
        pg.allReduce(t, "sum");
        pg.allReduce(t, "avg");
        assert.deepEqual(Array.from(t.toTypedArray() as Float32Array), [1, 2, 3]);
        const p = randn([5, 4]).to("cuda").requiresGrad_();
        p.mul(p).sum().backward(); // grad = 2p
        pg.allReduceGrads([p]);
        close(p.grad!, p.detach().mul(2), 1e-6, "averaged gradient of one rank");
        pg.broadcast([t], 0);
        const g = pg.allGather(t);
        assert.deepEqual(g.shape, [1, 3]);
        pg.barrier();
      });
    } finally {
      pg.destroy();
    }
  },
});
