/**
 * The DINO projection head: an MLP (Linear–GELU–Linear–GELU–Linear by default: hidden 2048,
 * bottleneck 256), L2 normalisation, and a weight-normalised last layer without bias whose
 * gain `weight_g` is fixed at 1 when `normLastLayer` (the official default).
 *
 * Parameter names as the official code: `mlp.0.*`, `mlp.2.*`, `mlp.4.*`,
 * `last_layer.weight_g` [out, 1], `last_layer.weight_v` [out, bottleneck].
 *
 * @module
 */
import {
  empty,
  type Generator,
  linear,
  noGrad,
  normalize,
  ones,
  scope,
  type Tensor,
  TorchError,
  weightNorm,
} from "../torch/mod.ts";
import { Module } from "./module.ts";
import { GELU, type Layer, Linear, Sequential } from "./layers.ts";

/** Options of {@link DINOHead}; defaults are the official code's. */
export interface DINOHeadOptions {
  /** freeze the last layer's gain at 1 (default true) */
  normLastLayer?: boolean;
  /** number of MLP layers (default 3) */
  nlayers?: number;
  /** MLP hidden width (default 2048) */
  hiddenDim?: number;
  /** bottleneck width before the last layer (default 256) */
  bottleneckDim?: number;
  /** generator for reproducible initialisation */
  generator?: Generator;
}

/** The weight-normalised last layer: y = x·(g·v/‖v‖)ᵀ, norms over each output row. */
export class WeightNormLinear extends Module {
  /** gain [out, 1] */
  readonly weightG: Tensor;
  /** direction [out, in] */
  readonly weightV: Tensor;

  /** Gain `weight_g` ones [out, 1] (frozen when `normLastLayer`), direction `weight_v` as torch.nn.Linear's default. */
  constructor(inFeatures: number, outFeatures: number, normLastLayer: boolean, g?: Generator) {
    super();
    const bound = 1 / Math.sqrt(inFeatures); // torch.nn.Linear's default initialisation of v
    this.weightG = this.registerParameter("weight_g", ones([outFeatures, 1]), !normLastLayer);
    this.weightV = this.registerParameter(
      "weight_v",
      noGrad(() => empty([outFeatures, inFeatures]).uniform_(-bound, bound, g)),
    );
  }

  /** The effective weight g·v/‖v‖ [out, in]. */
  weight(): Tensor {
    return weightNorm(this.weightV, this.weightG, 0);
  }

  /** x [..., in] → [..., out]. */
  forward(x: Tensor): Tensor {
    return scope(() => linear(x, this.weight()));
  }
}

/** The DINO head. */
export class DINOHead extends Module {
  /** the MLP (`mlp.0`, `mlp.2`, … with GELUs between) */
  readonly mlp: Layer;
  /** the weight-normalised output layer */
  readonly lastLayer: WeightNormLinear;
  /** output width (the number of prototypes) */
  readonly outDim: number;

  /** A head from `inDim` features to `outDim` logits. */
  constructor(inDim: number, outDim: number, opts: DINOHeadOptions = {}) {
    super();
    const nlayers = Math.max(opts.nlayers ?? 3, 1);
    const hidden = opts.hiddenDim ?? 2048;
    const bottleneck = opts.bottleneckDim ?? 256;
    const g = opts.generator;
    // check every size before creating a layer: a half-built head would leak its parameters
    const sizes = { inDim, outDim, hiddenDim: hidden, bottleneckDim: bottleneck };
    for (const [k, v] of Object.entries(sizes)) {
      if (!Number.isInteger(v) || v < 1) {
        throw new TorchError("DINOHead", `${k} must be a positive integer, got ${v}`);
      }
    }
    this.outDim = outDim;
    const lin = (i: number, o: number) => new Linear(i, o, { generator: g }).initTruncNormal(g);
    if (nlayers === 1) {
      this.mlp = this.registerModule("mlp", lin(inDim, bottleneck));
    } else {
      const layers: Layer[] = [lin(inDim, hidden), new GELU()];
      for (let i = 0; i < nlayers - 2; i++) layers.push(lin(hidden, hidden), new GELU());
      layers.push(lin(hidden, bottleneck));
      this.mlp = this.registerModule("mlp", new Sequential(...layers));
    }
    this.lastLayer = this.registerModule(
      "last_layer",
      new WeightNormLinear(bottleneck, outDim, opts.normLastLayer ?? true, g),
    );
  }

  /** x [..., inDim] → logits [..., outDim]. */
  forward(x: Tensor): Tensor {
    return scope(() => this.lastLayer.forward(normalize(this.mlp.forward(x), { dim: -1, p: 2 })));
  }
}
