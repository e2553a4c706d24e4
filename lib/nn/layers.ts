/**
 * Basic layers with PyTorch's parameter names, layouts and default initialisations:
 * Linear, LayerNorm, GELU, Dropout, DropPath, Sequential, PatchEmbed (Conv2d with stride =
 * patch) and the transformer MLP.
 *
 * Every `forward` frees its own intermediates (it runs in a {@link scope}); the caller owns the
 * returned tensor.
 *
 * @module
 */
import {
  conv2d,
  dropout,
  empty,
  type Generator,
  layerNorm,
  linear,
  noGrad,
  ones,
  rand,
  scope,
  type Tensor,
  TorchError,
  zeros,
} from "../torch/mod.ts";
import { Module } from "./module.ts";

/** A module mapping one tensor to one tensor. */
export abstract class Layer extends Module {
  /** Applies the layer. */
  abstract forward(x: Tensor): Tensor;
}

/** Initialisation shared by the layers' constructors. */
export interface InitOptions {
  /** generator for reproducible initial weights (default: libtorch's default generator) */
  generator?: Generator;
}

/** PyTorch's default Linear / Conv initialisation: U(−1/√fan_in, 1/√fan_in). */
function uniformFanIn(shape: number[], fanIn: number, g?: Generator): Tensor {
  const bound = 1 / Math.sqrt(fanIn);
  return noGrad(() => empty(shape).uniform_(-bound, bound, g));
}

/** Fills `t` with a normal of std `std` truncated to [−2, 2] (timm / DINO `trunc_normal_`). */
export function truncNormalInit(t: Tensor, std = 0.02, g?: Generator): Tensor {
  return noGrad(() => t.truncNormal_(std, 0, -2, 2, g));
}

/** y = x·Wᵀ + b; weight [out, in], bias [out]. */
export class Linear extends Layer {
  /** [out, in] */
  readonly weight: Tensor;
  /** [out], or null without bias */
  readonly bias: Tensor | null;
  /** input features */
  readonly inFeatures: number;
  /** output features */
  readonly outFeatures: number;

  /** PyTorch's default initialisation; see {@link initTruncNormal} for the ViT one. */
  constructor(
    inFeatures: number,
    outFeatures: number,
    opts: InitOptions & { bias?: boolean } = {},
  ) {
    super();
    for (const [k, v] of [["inFeatures", inFeatures], ["outFeatures", outFeatures]] as const) {
      if (!Number.isInteger(v) || v < 1) {
        throw new TorchError("Linear", `${k} must be a positive integer, got ${v}`);
      }
    }
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    this.weight = this.registerParameter(
      "weight",
      uniformFanIn([outFeatures, inFeatures], inFeatures, opts.generator),
    );
    this.bias = opts.bias === false
      ? null
      : this.registerParameter("bias", uniformFanIn([outFeatures], inFeatures, opts.generator));
  }

  /** Re-initialises as the ViT / DINO code does: weight trunc-normal std 0.02, bias 0. */
  initTruncNormal(g?: Generator): this {
    truncNormalInit(this.weight, 0.02, g);
    if (this.bias) noGrad(() => this.bias!.zero_());
    return this;
  }

  /** x [..., in] → [..., out]. */
  forward(x: Tensor): Tensor {
    return linear(x, this.weight, this.bias);
  }
}

/** Layer normalisation over the last dimension; weight ones, bias zeros. */
export class LayerNorm extends Layer {
  /** [dim] */
  readonly weight: Tensor;
  /** [dim] */
  readonly bias: Tensor;
  /** normalised size */
  readonly dim: number;
  /** variance epsilon */
  readonly eps: number;

  /** Normalises the last dimension of size `dim`. */
  constructor(dim: number, eps = 1e-5) {
    super();
    this.dim = dim;
    this.eps = eps;
    this.weight = this.registerParameter("weight", ones([dim]));
    this.bias = this.registerParameter("bias", zeros([dim]));
  }

  /** Normalises x [..., dim]. */
  forward(x: Tensor): Tensor {
    return layerNorm(x, [this.dim], this.weight, this.bias, this.eps);
  }
}

/** The exact (erf) GELU. */
export class GELU extends Layer {
  /** Applies GELU elementwise. */
  forward(x: Tensor): Tensor {
    return x.gelu();
  }
}

/** Dropout with probability p in training mode; the identity in eval mode. */
export class Dropout extends Layer {
  /** drop probability */
  readonly p: number;
  /** generator for the masks (default: libtorch's default) */
  generator?: Generator;

  /** Drops elements with probability `p`. */
  constructor(p = 0.5) {
    super();
    if (!(p >= 0 && p <= 1)) throw new TorchError("Dropout", `p must be in [0, 1], got ${p}`);
    this.p = p;
  }

  /** Dropout in training mode; the identity otherwise. */
  forward(x: Tensor): Tensor {
    return dropout(x, this.p, this.training, this.generator);
  }
}

/**
 * Stochastic depth: in training, each sample's residual branch is dropped with probability p
 * and kept ones are scaled by 1/(1−p) (timm / DINO `drop_path`); the identity otherwise.
 */
export class DropPath extends Layer {
  /** drop probability */
  readonly p: number;
  /** generator for the per-sample draws (default: libtorch's default) */
  generator?: Generator;

  /** Drops a sample's branch with probability `p`. */
  constructor(p = 0) {
    super();
    if (!(p >= 0 && p < 1)) throw new TorchError("DropPath", `p must be in [0, 1), got ${p}`);
    this.p = p;
  }

  /**
   * The per-sample draw of one residual branch: x ↦ x / (1 − p) · mask with mask [B, 1, …] of
   * 0 / 1 (null in eval mode or when p = 0). Apply one draw to every token of a sample.
   */
  sampleScale(x: Tensor): { keepP: number; mask: Tensor } | null {
    if (this.p === 0 || !this.training) return null;
    const keepP = 1 - this.p;
    const shape = [x.size(0), ...new Array(x.ndim - 1).fill(1)];
    const mask = scope(() =>
      rand(shape, { dtype: x.dtype, device: x.device, generator: this.generator }).add(keepP)
        .floor()
    );
    return { keepP, mask };
  }

  /** Applies stochastic depth to x [B, …] (an alias of x in eval mode or with p = 0). */
  forward(x: Tensor): Tensor {
    return scope(() => {
      const s = this.sampleScale(x);
      return s === null ? x.alias() : x.div(s.keepP).mul(s.mask);
    });
  }
}

/** Modules applied in order, named "0", "1", … as torch.nn.Sequential. */
export class Sequential extends Layer {
  /** the layers */
  readonly layers: readonly Layer[];

  /** The layers, registered as "0", "1", …. */
  constructor(...layers: Layer[]) {
    super();
    this.layers = layers;
    layers.forEach((l, i) => this.registerModule(String(i), l));
  }

  /** Applies the layers in order. */
  forward(x: Tensor): Tensor {
    return scope(() => {
      let y = x;
      for (const l of this.layers) y = l.forward(y);
      return y === x ? x.alias() : y;
    });
  }
}

/** Image to patch tokens: a Conv2d with kernel = stride = patch, then [B, N, D]. */
export class PatchEmbed extends Layer {
  /** the convolution: `proj.weight` [D, C, p, p], `proj.bias` [D] */
  readonly proj: Conv2dParams;
  /** patch side in pixels */
  readonly patchSize: number;
  /** token width */
  readonly embedDim: number;
  /** input channels */
  readonly inChans: number;

  /** A patch embedding of `inChans` channels into `embedDim`-wide tokens. */
  constructor(patchSize: number, inChans: number, embedDim: number, opts: InitOptions = {}) {
    super();
    this.patchSize = patchSize;
    this.embedDim = embedDim;
    this.inChans = inChans;
    this.proj = this.registerModule(
      "proj",
      new Conv2dParams(inChans, embedDim, patchSize, opts.generator),
    );
  }

  /** [B, C, H, W] → [B, (H/p)·(W/p), D]; H and W must be multiples of the patch size. */
  forward(x: Tensor): Tensor {
    const s = x.shape;
    if (s.length !== 4 || s[1] !== this.inChans) {
      throw new TorchError(
        "PatchEmbed",
        `images must be [B, ${this.inChans}, H, W], got [${s.join(", ")}]`,
      );
    }
    const p = this.patchSize;
    if (s[2] % p !== 0 || s[3] % p !== 0) {
      throw new TorchError(
        "PatchEmbed",
        `image size ${s[2]}×${
          s[3]
        } is not divisible by the patch size ${p}: resize or crop to a multiple of ${p}`,
      );
    }
    return scope(() =>
      conv2d(x, this.proj.weight, this.proj.bias, { stride: p }).flatten(2).transpose(1, 2)
    );
  }
}

/** The parameters of a square Conv2d (weight [out, in, k, k], bias [out]), default init. */
export class Conv2dParams extends Module {
  /** [out, in, k, k] */
  readonly weight: Tensor;
  /** [out] */
  readonly bias: Tensor;

  /** A `kernel`×`kernel` convolution's parameters, PyTorch's default initialisation. */
  constructor(inChans: number, outChans: number, kernel: number, g?: Generator) {
    super();
    const fanIn = inChans * kernel * kernel;
    this.weight = this.registerParameter(
      "weight",
      uniformFanIn([outChans, inChans, kernel, kernel], fanIn, g),
    );
    this.bias = this.registerParameter("bias", uniformFanIn([outChans], fanIn, g));
  }
}

/** The transformer MLP: fc1 → GELU → dropout → fc2 → dropout. */
export class Mlp extends Layer {
  /** first projection */
  readonly fc1: Linear;
  /** second projection */
  readonly fc2: Linear;
  /** dropout after each projection */
  readonly drop: Dropout;

  /** fc1: in → hidden, fc2: hidden → out. */
  constructor(
    inFeatures: number,
    hiddenFeatures: number,
    outFeatures = inFeatures,
    opts: InitOptions & { drop?: number } = {},
  ) {
    super();
    this.fc1 = this.registerModule("fc1", new Linear(inFeatures, hiddenFeatures, opts));
    this.fc2 = this.registerModule("fc2", new Linear(hiddenFeatures, outFeatures, opts));
    this.drop = this.registerModule("drop", new Dropout(opts.drop ?? 0));
  }

  /** x [..., in] → [..., out]. */
  forward(x: Tensor): Tensor {
    return scope(() => {
      const h = this.drop.forward(this.fc1.forward(x).gelu());
      return this.drop.forward(this.fc2.forward(h));
    });
  }
}
