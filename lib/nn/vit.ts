/**
 * The Vision Transformer of DenseDINO: separate class and patch positional embeddings,
 * bicubic interpolation of the patch grid for views of another size, and reference tokens —
 * extra input tokens whose embedding is the (trained-size) patch positional grid sampled
 * bicubically at a point, read through a masked attention.
 *
 * Parameter names follow the official DenseDINO code (`cls_token`, `cls_pos_embed`,
 * `patch_pos_embed`, `ref_learn_token`, `patch_embed.proj.*`, `blocks.{i}.*`, `norm.*`), so
 * state dicts move between the two.
 *
 * @module
 */
import {
  cat,
  type Generator,
  gridSample,
  hasScaledDotProductAttention,
  interpolate,
  scope,
  type Tensor,
  TorchError,
  zeros,
} from "../torch/mod.ts";
import { Module } from "./module.ts";
import { Dropout, LayerNorm, PatchEmbed, truncNormalInit } from "./layers.ts";
import {
  attentionMask,
  Block,
  checkHeads,
  checkMaskMode,
  DEFAULT_MASK_MODE,
  isSplitMode,
  type MaskMode,
} from "./attention.ts";

/** Width, depth and heads of a named architecture. */
export interface ArchSpec {
  /** token width */
  embedDim: number;
  /** number of blocks */
  depth: number;
  /** attention heads */
  numHeads: number;
}

/**
 * The named architectures: the paper's ViT-T/S/B, and smaller ones for CPU work
 * (`vit_mini`: 128 wide × 4 deep; `vit_micro`: 64 wide × 2 deep, for tests).
 */
export const ARCHS: Readonly<Record<string, ArchSpec>> = {
  vit_tiny: { embedDim: 192, depth: 12, numHeads: 3 },
  vit_small: { embedDim: 384, depth: 12, numHeads: 6 },
  vit_base: { embedDim: 768, depth: 12, numHeads: 12 },
  vit_mini: { embedDim: 128, depth: 4, numHeads: 4 },
  vit_micro: { embedDim: 64, depth: 2, numHeads: 2 },
};

/** Configuration of a {@link VisionTransformer}. */
export interface ViTConfig {
  /** token width */
  embedDim: number;
  /** number of blocks */
  depth: number;
  /** attention heads */
  numHeads: number;
  /** patch side in pixels (default 16) */
  patchSize?: number;
  /** trained image side: the patch positional grid is imgSize/patchSize square (default 224) */
  imgSize?: number;
  /** input channels (default 3) */
  inChans?: number;
  /** MLP hidden = mlpRatio · embedDim (default 4) */
  mlpRatio?: number;
  /** bias in qkv (default true) */
  qkvBias?: boolean;
  /** dropout on tokens and in blocks (default 0) */
  dropRate?: number;
  /** dropout on attention weights (default 0) */
  attnDropRate?: number;
  /** stochastic depth, increasing linearly from 0 to this over the blocks (default 0; DINO trains with 0.1) */
  dropPathRate?: number;
  /** learnable reference content token `ref_learn_token` instead of zeros (default false) */
  learnableRefToken?: boolean;
  /** LayerNorm epsilon (default 1e-6) */
  eps?: number;
  /** generator for reproducible initialisation */
  generator?: Generator;
}

/** Options of a forward pass. */
export interface ForwardOptions {
  /**
   * Reference points [B, K, 2], (x, y) in [−1, 1] in grid_sample convention (x first,
   * align_corners false), relative to the input view.
   */
  points?: Tensor;
  /** attention mask mode for the reference tokens (default `all2pos_pos2cls_eye`) */
  maskMode?: MaskMode;
  /**
   * Use the split computation under the `all2pos*` modes: plain attention over class + patch
   * tokens and a small attention for the reference queries. Both paths are exact. Default: on
   * the CPU, true when libtorch has fused attention (≥ 2.0, where the split path lets the
   * class/patch attention run mask-free in the fused kernel) and false on libtorch 1.13, where
   * the explicit full-mask computation of the official code measured as fast or faster; on
   * CUDA false: the one masked call of the fused kernel (memory-efficient attention takes the
   * additive mask) measured faster and smaller than the split path (ViT-S/16 training step on
   * an H200: 64.4 vs 73.6 ms, 7.3 vs 8.1 GiB peak; `bench/gpu/README.md`).
   */
  fastPath?: boolean;
  /**
   * Compute the patch-token outputs (default true). Training needs only the class and
   * reference outputs: false skips the last block's attention, projection and MLP for the
   * patch rows (exact for the returned outputs) and returns `patch: null`.
   */
  patchTokens?: boolean;
}

/** Outputs of a forward pass with `patchTokens: false`. */
export interface ViTTrainOutput {
  /** class token [B, D] */
  cls: Tensor;
  /** reference tokens [B, K, D] (null without points) */
  ref: Tensor | null;
  /** not computed */
  patch: null;
}

/** Outputs of {@link VisionTransformer.forward}, after the final LayerNorm. */
export interface ViTOutput {
  /** class token [B, D] */
  cls: Tensor;
  /** reference tokens [B, K, D] (null without points) */
  ref: Tensor | null;
  /** patch tokens [B, N, D] */
  patch: Tensor;
}

/** The DenseDINO ViT. */
export class VisionTransformer extends Module {
  /** the configuration, with defaults filled in */
  readonly config: Required<Omit<ViTConfig, "generator">>;
  /** image → patch tokens */
  readonly patchEmbed: PatchEmbed;
  /** [1, 1, D] */
  readonly clsToken: Tensor;
  /** [1, 1, D] */
  readonly clsPosEmbed: Tensor;
  /** [1, 1, D] when learnable reference content is on */
  readonly refLearnToken: Tensor | null;
  /** [1, N, D] over the trained grid */
  readonly patchPosEmbed: Tensor;
  /** dropout on the input tokens */
  readonly posDrop: Dropout;
  /** the blocks */
  readonly blocks: Block[];
  /** final LayerNorm */
  readonly norm: LayerNorm;
  /** trained grid side (imgSize / patchSize) */
  readonly gridSize: number;

  /** A ViT of the given configuration, initialised as the official code. */
  constructor(cfg: ViTConfig) {
    super();
    const c = {
      patchSize: 16,
      imgSize: 224,
      inChans: 3,
      mlpRatio: 4,
      qkvBias: true,
      dropRate: 0,
      attnDropRate: 0,
      dropPathRate: 0,
      learnableRefToken: false,
      eps: 1e-6,
      ...cfg,
    };
    delete (c as ViTConfig).generator;
    this.config = c;
    const g = cfg.generator;
    const D = c.embedDim;
    checkHeads(D, c.numHeads, "VisionTransformer");
    if (!Number.isInteger(c.depth) || c.depth < 1) {
      throw new TorchError("VisionTransformer", `depth must be a positive integer, got ${c.depth}`);
    }
    if (!Number.isInteger(c.imgSize / c.patchSize)) {
      throw new TorchError(
        "VisionTransformer",
        `imgSize ${c.imgSize} is not a multiple of patchSize ${c.patchSize}`,
      );
    }
    this.gridSize = c.imgSize / c.patchSize;
    this.patchEmbed = this.registerModule(
      "patch_embed",
      new PatchEmbed(c.patchSize, c.inChans, D, { generator: g }),
    );
    this.clsToken = this.registerParameter("cls_token", truncNormalInit(zeros([1, 1, D]), 0.02, g));
    this.clsPosEmbed = this.registerParameter(
      "cls_pos_embed",
      truncNormalInit(zeros([1, 1, D]), 0.02, g),
    );
    this.refLearnToken = c.learnableRefToken
      ? this.registerParameter("ref_learn_token", truncNormalInit(zeros([1, 1, D]), 0.02, g))
      : null;
    const N = this.gridSize * this.gridSize;
    this.patchPosEmbed = this.registerParameter(
      "patch_pos_embed",
      truncNormalInit(zeros([1, N, D]), 0.02, g),
    );
    this.posDrop = this.registerModule("pos_drop", new Dropout(c.dropRate));
    const blocks = new BlockList();
    this.blocks = [];
    for (let i = 0; i < c.depth; i++) {
      const dpr = c.depth > 1 ? (c.dropPathRate * i) / (c.depth - 1) : 0;
      const b = new Block(D, c.numHeads, {
        mlpRatio: c.mlpRatio,
        qkvBias: c.qkvBias,
        drop: c.dropRate,
        attnDrop: c.attnDropRate,
        dropPath: dpr,
        eps: c.eps,
        generator: g,
      });
      // the ViT initialises every Linear with trunc-normal std 0.02 and zero bias
      for (const lin of [b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2]) lin.initTruncNormal(g);
      blocks.add(b);
      this.blocks.push(b);
    }
    this.registerModule("blocks", blocks);
    this.norm = this.registerModule("norm", new LayerNorm(D, c.eps));
  }

  /** Token width. */
  get embedDim(): number {
    return this.config.embedDim;
  }

  /** Patch side in pixels. */
  get patchSize(): number {
    return this.config.patchSize;
  }

  /**
   * The patch positional embedding for an h×w image [1, (h/p)·(w/p), D]: the trained grid, or
   * its bicubic interpolation (as the official `interpolate_pos_encoding`, including its +0.1).
   */
  interpolatePosEncoding(h: number, w: number): Tensor {
    const p = this.config.patchSize;
    if (!Number.isInteger(h / p) || !Number.isInteger(w / p) || h < p || w < p) {
      throw new TorchError(
        "interpolatePosEncoding",
        `image size ${h}×${w} is not a positive multiple of the patch size ${p}`,
      );
    }
    const [hp, wp] = [h / p, w / p];
    const G = this.gridSize;
    if (hp * wp === G * G && h === w) return this.patchPosEmbed.alias();
    const D = this.embedDim;
    return scope(() => {
      const grid = this.patchPosEmbed.reshape([1, G, G, D]).permute([0, 3, 1, 2]);
      const out = interpolate(grid, {
        mode: "bicubic",
        scaleFactor: [(hp + 0.1) / G, (wp + 0.1) / G],
      });
      const s = out.shape;
      if (s[2] !== hp || s[3] !== wp) {
        throw new TorchError(
          "interpolatePosEncoding",
          `interpolated grid ${s[2]}×${s[3]} != ${hp}×${wp}`,
        );
      }
      return out.permute([0, 2, 3, 1]).reshape([1, hp * wp, D]);
    });
  }

  /**
   * Positional embeddings of reference points [B, K, 2] → [B, K, D]: the trained patch
   * positional grid sampled bicubically at each point (align_corners false, zero padding).
   */
  referencePosEmbed(points: Tensor): Tensor {
    const [B, K] = points.shape;
    const G = this.gridSize;
    const D = this.embedDim;
    return scope(() => {
      const grid = this.patchPosEmbed.reshape([1, G, G, D]).permute([0, 3, 1, 2]).expand([
        B,
        D,
        G,
        G,
      ]);
      // grid_sample wants the grid's dtype and device: accept e.g. float64 points
      const pts = points.dtype === grid.dtype && points.device === grid.device
        ? points
        : points.to({ dtype: grid.dtype, device: grid.device });
      const sampled = gridSample(grid, pts.reshape([B, 1, K, 2]), {
        mode: "bicubic",
        alignCorners: false,
      });
      return sampled.flatten(2).transpose(1, 2); // [B, K, D]
    });
  }

  #checkPoints(x: Tensor, points: Tensor): void {
    const s = points.shape;
    if (s.length !== 3 || s[2] !== 2) {
      throw new TorchError(
        "points",
        `reference points must be [B, K, 2] (x, y), got [${s.join(", ")}]`,
      );
    }
    if (s[0] !== x.size(0)) {
      throw new TorchError("points", `points have batch ${s[0]} but the images ${x.size(0)}`);
    }
    if (
      points.dtype !== "float32" && points.dtype !== "float64" && points.dtype !== "float16" &&
      points.dtype !== "bfloat16"
    ) {
      throw new TorchError(
        "points",
        `reference points must be floating point, got ${points.dtype}`,
      );
    }
    if (s[1] > 0) {
      const m = scope(() => points.abs().amax().item());
      if (!(m <= 1)) {
        throw new TorchError(
          "points",
          `reference points must lie in [-1, 1] (grid_sample convention); found |coordinate| = ${m}`,
        );
      }
    }
  }

  /** The input tokens: [cls], [refs], [patches] with their positional embeddings (no dropout). */
  #tokens(
    x: Tensor,
    points: Tensor | undefined,
  ): { cls: Tensor; ref: Tensor | null; patch: Tensor } {
    const [B, , H, W] = x.shape;
    const D = this.embedDim;
    const patch = this.patchEmbed.forward(x).add(this.interpolatePosEncoding(H, W));
    const cls = this.clsToken.add(this.clsPosEmbed).expand([B, 1, D]);
    let ref: Tensor | null = null;
    if (points) {
      const pos = this.referencePosEmbed(points);
      ref = this.refLearnToken ? pos.add(this.refLearnToken) : pos;
    }
    return { cls, ref, patch };
  }

  /**
   * The forward pass: class token, reference tokens (when `points` are given) and patch tokens,
   * after the final LayerNorm.
   */
  forward(x: Tensor, opts: ForwardOptions & { patchTokens: false }): ViTTrainOutput;
  /** The forward pass with every output (see {@link ForwardOptions}). */
  forward(x: Tensor, opts?: ForwardOptions): ViTOutput;
  forward(x: Tensor, opts: ForwardOptions = {}): ViTOutput | ViTTrainOutput {
    const mode = checkMaskMode(opts.maskMode ?? DEFAULT_MASK_MODE, "maskMode");
    if (x.ndim !== 4) {
      throw new TorchError(
        "VisionTransformer",
        `images must be [B, C, H, W], got [${x.shape.join(", ")}]`,
      );
    }
    if (opts.points) this.#checkPoints(x, opts.points);
    const wantPatch = opts.patchTokens !== false;
    const last = this.blocks.length - 1;
    return scope(() => {
      const t = this.#tokens(x, opts.points);
      const N = t.patch.size(1);
      const K = t.ref?.size(1) ?? 0;
      const split = opts.fastPath ?? (x.device === "cpu" && hasScaledDotProductAttention());
      if (t.ref === null || (isSplitMode(mode) && split)) {
        // split path: tokens laid out [cls, patches, refs]; see Block.forwardRefTail
        let seq = this.posDrop.forward(cat(t.ref ? [t.cls, t.patch, t.ref] : [t.cls, t.patch], 1));
        this.blocks.forEach((b, i) => {
          const mainRows = !wantPatch && i === last ? 1 : 1 + N; // the last block may skip patches
          seq = t.ref === null
            ? b.forward(seq, null, mainRows)
            : b.forwardRefTail(seq, 1 + N, 1, mode, mainRows);
        });
        const out = this.norm.forward(seq);
        const M = wantPatch ? 1 + N : 1;
        return {
          cls: out.select(1, 0),
          ref: t.ref === null ? null : out.narrow(1, M, K),
          patch: wantPatch ? out.narrow(1, 1, N) : null,
        };
      }
      // explicit path (the official computation): tokens [cls, refs, patches] and a full mask
      let seq = this.posDrop.forward(cat([t.cls, t.ref, t.patch], 1));
      const mask = attentionMask(1 + K + N, 1, K, mode, x.device);
      this.blocks.forEach((b, i) => {
        seq = b.forward(seq, mask, !wantPatch && i === last ? 1 + K : undefined);
      });
      const out = this.norm.forward(seq);
      return {
        cls: out.select(1, 0),
        ref: out.narrow(1, 1, K),
        patch: wantPatch ? out.narrow(1, 1 + K, N) : null,
      };
    });
  }

  /**
   * The normalised outputs of the last `n` blocks, each [B, 1+K+N, D] in token order
   * [cls, refs, patches] (DINO's `get_intermediate_layers`).
   */
  intermediateLayers(x: Tensor, n = 1, opts: ForwardOptions = {}): Tensor[] {
    const mode = checkMaskMode(opts.maskMode ?? DEFAULT_MASK_MODE, "maskMode");
    if (opts.points) this.#checkPoints(x, opts.points);
    return scope(() => {
      const t = this.#tokens(x, opts.points);
      const K = t.ref?.size(1) ?? 0;
      let seq = this.posDrop.forward(cat(t.ref ? [t.cls, t.ref, t.patch] : [t.cls, t.patch], 1));
      const mask = K > 0 ? attentionMask(seq.size(1), 1, K, mode, x.device) : null;
      const out: Tensor[] = [];
      this.blocks.forEach((b, i) => {
        seq = b.forward(seq, mask);
        if (this.blocks.length - i <= n) out.push(this.norm.forward(seq));
      });
      return out;
    });
  }

  /**
   * The last block's attention weights [B, heads, T, T] over tokens [cls, refs, patches], with
   * the mask applied (the official `get_last_selfattention` omits the mask in that last call).
   */
  lastSelfAttention(x: Tensor, opts: ForwardOptions = {}): Tensor {
    const mode = checkMaskMode(opts.maskMode ?? DEFAULT_MASK_MODE, "maskMode");
    if (opts.points) this.#checkPoints(x, opts.points);
    return scope(() => {
      const t = this.#tokens(x, opts.points);
      const K = t.ref?.size(1) ?? 0;
      let seq = this.posDrop.forward(cat(t.ref ? [t.cls, t.ref, t.patch] : [t.cls, t.patch], 1));
      const mask = K > 0 ? attentionMask(seq.size(1), 1, K, mode, x.device) : null;
      const last = this.blocks.length - 1;
      for (let i = 0; i < last; i++) seq = this.blocks[i].forward(seq, mask);
      return this.blocks[last].attention(seq, mask);
    });
  }
}

/** The `blocks` container: sub-modules named "0", "1", … (torch.nn.ModuleList). */
class BlockList extends Module {
  #n = 0;
  add(b: Block): void {
    this.registerModule(String(this.#n++), b);
  }
}

/** Options of {@link createViT}: any {@link ViTConfig} field except the arch's own. */
export type CreateViTOptions = Omit<ViTConfig, "embedDim" | "depth" | "numHeads">;

/** A ViT of a named architecture (see {@link ARCHS}), e.g. `createViT("vit_small", { patchSize: 16 })`. */
export function createViT(arch: string, opts: CreateViTOptions = {}): VisionTransformer {
  const spec = ARCHS[arch];
  if (!spec) {
    throw new TorchError(
      "arch",
      `unknown architecture "${arch}"; expected one of ${Object.keys(ARCHS).join(", ")}`,
    );
  }
  return new VisionTransformer({ ...spec, ...opts });
}
