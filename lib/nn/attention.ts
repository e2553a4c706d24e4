/**
 * Multi-head self-attention with DenseDINO's reference-token masks, and the transformer block.
 *
 * Token order (as the official DenseDINO code): `[cls, ref_1 … ref_R, patch_1 … patch_N]`.
 * Mask modes (which keys each query may attend; "ref" = reference tokens):
 *
 * | mode                  | cls & patch queries        | ref queries                    |
 * | --------------------- | -------------------------- | ------------------------------ |
 * | `none`                | everything                 | everything                     |
 * | `all2pos`             | cls + patches              | cls + patches                  |
 * | `all2pos_pos2cls`     | cls + patches              | patches                        |
 * | `all2pos_pos2cls_eye` | cls + patches              | patches + itself  (default)    |
 * | `all_query`           | cls: itself + patches; patches: patches | itself + patches  |
 *
 * Under the three `all2pos*` modes nothing attends to a reference token except (with `eye`)
 * itself, so class and patch outputs are exactly those of the model without reference tokens.
 * That is the fast path: plain self-attention over class + patch tokens, plus a small attention
 * of the reference queries over their allowed keys ({@link Block.forwardSplit}); it is exact,
 * not an approximation, and is tested against the explicit-mask computation.
 *
 * @module
 */
import {
  cat,
  type Device,
  fromTypedArray,
  hasScaledDotProductAttention,
  scaledDotProductAttention,
  scope,
  type Tensor,
  TorchError,
} from "../torch/mod.ts";
import { Module } from "./module.ts";
import { Dropout, DropPath, type InitOptions, LayerNorm, Linear, Mlp } from "./layers.ts";

/** The attention mask modes of DenseDINO (see the module documentation). */
export const MASK_MODES = [
  "none",
  "all2pos",
  "all2pos_pos2cls",
  "all2pos_pos2cls_eye",
  "all_query",
] as const;

/** A DenseDINO attention mask mode. */
export type MaskMode = typeof MASK_MODES[number];

/** The paper's and official code's default mask mode. */
export const DEFAULT_MASK_MODE: MaskMode = "all2pos_pos2cls_eye";

/** Throws a TorchError naming the argument when `mode` is not a mask mode. */
export function checkMaskMode(mode: string, op = "maskMode"): MaskMode {
  if (!(MASK_MODES as readonly string[]).includes(mode)) {
    throw new TorchError(
      op,
      `unknown mask mode "${mode}"; expected one of ${MASK_MODES.join(", ")}`,
    );
  }
  return mode as MaskMode;
}

/** True for the modes that the split (fast) path computes exactly. */
export function isSplitMode(mode: MaskMode): boolean {
  return mode === "all2pos" || mode === "all2pos_pos2cls" || mode === "all2pos_pos2cls_eye";
}

/**
 * The additive attention mask [T, T] (0 = may attend, −∞ = may not) for `numCls` class tokens
 * (0 or 1) followed by `numRef` reference tokens and the patch tokens, or null for "none".
 * Same construction as the official `prepare_attn_mask`.
 */
export function attentionMask(
  numTokens: number,
  numCls: number,
  numRef: number,
  mode: MaskMode,
  device: Device = "cpu",
): Tensor | null {
  checkMaskMode(mode, "attentionMask");
  if (mode === "none") return null;
  const T = numTokens;
  const m = new Float32Array(T * T);
  const r0 = numCls, r1 = numCls + numRef;
  for (let i = 0; i < T; i++) {
    for (let j = 0; j < T; j++) {
      let blocked = false;
      if (mode === "all_query") {
        blocked = j < r1 && i !== j;
      } else {
        blocked = j >= r0 && j < r1; // nobody attends reference tokens …
        if (mode !== "all2pos" && i >= r0 && i < r1 && j === 0 && numCls > 0) blocked = true; // … refs skip cls
        if (mode === "all2pos_pos2cls_eye" && i === j) blocked = false; // … but see themselves
      }
      if (blocked) m[i * T + j] = -Infinity;
    }
  }
  return fromTypedArray(m, [T, T], { device });
}

/**
 * Throws a TorchError naming `dim` and `numHeads` unless `dim` splits into `numHeads` heads.
 * Constructors call it before registering any parameter: a constructor that throws half way
 * would leak the parameters it had registered (they are excluded from scopes).
 */
export function checkHeads(dim: number, numHeads: number, op: string): void {
  if (
    !Number.isInteger(dim) || dim < 1 || !Number.isInteger(numHeads) || numHeads < 1 ||
    dim % numHeads !== 0
  ) {
    throw new TorchError(op, `dim ${dim} must be divisible by numHeads ${numHeads}`);
  }
}

/** Options of {@link Attention}. */
export interface AttentionOptions extends InitOptions {
  /** bias in the qkv projection (default true, as the ViT archs) */
  qkvBias?: boolean;
  /** dropout on attention weights (default 0) */
  attnDrop?: number;
  /** dropout after the output projection (default 0) */
  projDrop?: number;
}

/** The result of an attention call: outputs, and the weights when asked for. */
export interface AttentionOutput {
  /** [B, T, C] */
  out: Tensor;
  /** [B, heads, T, T] attention weights (with `returnAttention`) */
  attn?: Tensor;
}

/** Multi-head attention with a fused qkv projection (`qkv.*`, `proj.*`). */
export class Attention extends Module {
  /** dim → 3·dim */
  readonly qkv: Linear;
  /** dim → dim */
  readonly proj: Linear;
  /** number of heads */
  readonly numHeads: number;
  /** 1/√head_dim */
  readonly scale: number;
  /** dropout on the attention weights */
  readonly attnDrop: Dropout;
  /** dropout after the projection */
  readonly projDrop: Dropout;

  /** Fused qkv and output projections of width `dim`, split over `numHeads` heads. */
  constructor(dim: number, numHeads: number, opts: AttentionOptions = {}) {
    super();
    checkHeads(dim, numHeads, "Attention");
    this.numHeads = numHeads;
    this.scale = (dim / numHeads) ** -0.5;
    this.qkv = this.registerModule(
      "qkv",
      new Linear(dim, dim * 3, { ...opts, bias: opts.qkvBias ?? true }),
    );
    this.attnDrop = this.registerModule("attn_drop", new Dropout(opts.attnDrop ?? 0));
    this.proj = this.registerModule("proj", new Linear(dim, dim, opts));
    this.projDrop = this.registerModule("proj_drop", new Dropout(opts.projDrop ?? 0));
  }

  /** q, k, v [B, heads, T, d] of tokens x [B, T, C]. */
  qkvHeads(x: Tensor): [Tensor, Tensor, Tensor] {
    const [B, T, C] = x.shape;
    const parts = this.qkv.forward(x).reshape([B, T, 3, this.numHeads, C / this.numHeads]).permute([
      2,
      0,
      3,
      1,
      4,
    ]);
    const out: [Tensor, Tensor, Tensor] = [
      parts.select(0, 0),
      parts.select(0, 1),
      parts.select(0, 2),
    ];
    parts.free();
    return out;
  }

  /** [B, heads, T, d] → projected [B, T, C]. */
  merge(o: Tensor): Tensor {
    return scope(() => {
      const [B, H, T, d] = o.shape;
      return this.projDrop.forward(this.proj.forward(o.transpose(1, 2).reshape([B, T, H * d])));
    });
  }

  /**
   * Attention over all tokens with an optional additive mask [T, T] (the explicit path, as the
   * official code). Uses the fused kernel of libtorch ≥ 2.0 when no weights are requested.
   */
  forward(
    x: Tensor,
    mask: Tensor | null = null,
    opts: { returnAttention?: boolean; queries?: number } = {},
  ): AttentionOutput {
    return scope(() => {
      let [q, k, v] = this.qkvHeads(x);
      // only the first `queries` tokens' outputs (the others' would be computed and dropped)
      if (opts.queries !== undefined && opts.queries < x.size(1)) {
        q = q.narrow(2, 0, opts.queries);
        if (mask) mask = mask.narrow(0, 0, opts.queries);
      }
      if (!opts.returnAttention && this.attnDrop.p === 0 && hasScaledDotProductAttention()) {
        const o = scaledDotProductAttention(q, k, v, {
          mask: mask ?? undefined,
          scale: this.scale,
        });
        return { out: this.merge(o) };
      }
      let logits = q.matmul(k.transpose(-2, -1)).mul(this.scale);
      if (mask) logits = logits.add(mask);
      const attn = logits.softmax(-1);
      const o = this.attnDrop.forward(attn).matmul(v);
      return opts.returnAttention ? { out: this.merge(o), attn } : { out: this.merge(o) };
    });
  }

  /**
   * The split path over tokens x [B, M+R, C] laid out as the M class/patch tokens followed by
   * the R reference tokens: one qkv and one output projection for all tokens (as the explicit
   * path), but the class/patch queries attend only to each other and each reference query only
   * to the keys `mode` allows (see the module table) — exactly the explicit computation under
   * the `all2pos*` masks, without the (M+R)² masked score matrix.
   */
  forwardRefTail(
    x: Tensor,
    numMain: number,
    numCls: number,
    mode: MaskMode,
    mainQueries = numMain,
  ): Tensor {
    if (!isSplitMode(mode)) {
      throw new TorchError("Attention", `mask mode "${mode}" has no split path`);
    }
    return scope(() => {
      const [q, k, v] = this.qkvHeads(x);
      const R = x.size(1) - numMain;
      const [km, vm] = [k, v].map((t) => t.narrow(2, 0, numMain));
      // only the first `mainQueries` class/patch outputs are produced (e.g. the class token)
      const qm = q.narrow(2, 0, mainQueries);
      let mainOut: Tensor;
      if (this.attnDrop.p === 0 && hasScaledDotProductAttention()) {
        mainOut = scaledDotProductAttention(qm, km, vm, { scale: this.scale });
      } else {
        const attn = qm.matmul(km.transpose(-2, -1)).mul(this.scale).softmax(-1);
        mainOut = this.attnDrop.forward(attn).matmul(vm);
      }
      if (R === 0) return this.merge(mainOut);
      const [qr, kr, vr] = [q, k, v].map((t) => t.narrow(2, numMain, R));
      // keys the reference queries may see: cls + patches (all2pos) or patches only
      const skip = mode === "all2pos" ? 0 : numCls;
      const keys = km.narrow(2, skip, numMain - skip);
      const vals = vm.narrow(2, skip, numMain - skip);
      let logits = qr.matmul(keys.transpose(-2, -1)).mul(this.scale); // [B, H, R, Nk]
      let refOut: Tensor;
      if (mode === "all2pos_pos2cls_eye") {
        const self = qr.mul(kr).sum(-1, { keepdim: true }).mul(this.scale); // [B, H, R, 1]
        logits = cat([logits, self], -1);
        const attn = this.attnDrop.forward(logits.softmax(-1));
        const nk = keys.size(2);
        refOut = attn.narrow(-1, 0, nk).matmul(vals).add(attn.narrow(-1, nk, 1).mul(vr));
      } else {
        refOut = this.attnDrop.forward(logits.softmax(-1)).matmul(vals);
      }
      return this.merge(cat([mainOut, refOut], 2));
    });
  }

  /**
   * The split path on two streams: `main` [B, M, C] (class and patch tokens) and `ref`
   * [B, R, C]; see {@link forwardRefTail}.
   */
  forwardSplit(
    main: Tensor,
    ref: Tensor,
    numCls: number,
    mode: MaskMode,
  ): { main: Tensor; ref: Tensor } {
    return scope(() => {
      const M = main.size(1);
      const out = this.forwardRefTail(cat([main, ref], 1), M, numCls, mode);
      return { main: out.narrow(1, 0, M), ref: out.narrow(1, M, ref.size(1)) };
    });
  }
}

/** Options of {@link Block}. */
export interface BlockOptions extends AttentionOptions {
  /** MLP hidden size = mlpRatio · dim (default 4) */
  mlpRatio?: number;
  /** dropout in the MLP and after the attention projection (default 0) */
  drop?: number;
  /** stochastic-depth probability of this block (default 0) */
  dropPath?: number;
  /** LayerNorm epsilon (default 1e-6, as the ViT archs) */
  eps?: number;
}

/** A pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)). */
export class Block extends Module {
  /** pre-attention norm */
  readonly norm1: LayerNorm;
  /** the attention */
  readonly attn: Attention;
  /** stochastic depth on both residual branches */
  readonly dropPath: DropPath;
  /** pre-MLP norm */
  readonly norm2: LayerNorm;
  /** the MLP */
  readonly mlp: Mlp;

  /** A block of width `dim` with `numHeads` heads (LayerNorm eps 1e-6 by default). */
  constructor(dim: number, numHeads: number, opts: BlockOptions = {}) {
    super();
    checkHeads(dim, numHeads, "Block");
    const hidden = Math.trunc(dim * (opts.mlpRatio ?? 4));
    if (!(hidden >= 1)) {
      throw new TorchError("Block", `mlpRatio ${opts.mlpRatio} gives an MLP of ${hidden} units`);
    }
    const eps = opts.eps ?? 1e-6;
    this.norm1 = this.registerModule("norm1", new LayerNorm(dim, eps));
    this.attn = this.registerModule(
      "attn",
      new Attention(dim, numHeads, { ...opts, projDrop: opts.projDrop ?? opts.drop ?? 0 }),
    );
    this.dropPath = this.registerModule("drop_path", new DropPath(opts.dropPath ?? 0));
    this.norm2 = this.registerModule("norm2", new LayerNorm(dim, eps));
    this.mlp = this.registerModule(
      "mlp",
      new Mlp(dim, hidden, dim, { ...opts, drop: opts.drop ?? 0 }),
    );
  }

  /**
   * The block over all tokens with an optional additive mask (the explicit path). With
   * `queries`, only the first `queries` tokens' outputs are computed and returned (every token
   * still serves as a key and value): the last block of a forward that needs no patch outputs.
   */
  forward(x: Tensor, mask: Tensor | null = null, queries?: number): Tensor {
    return scope(() => {
      const rows = queries !== undefined && queries < x.size(1) ? x.narrow(1, 0, queries) : x;
      const x1 = this.residual(
        rows,
        x,
        (xs) => this.attn.forward(this.norm1.forward(xs), mask, { queries }).out,
      );
      return this.residual(x1, x1, (xs) => this.mlp.forward(this.norm2.forward(xs)));
    });
  }

  /**
   * base + dropPath(branch(input)). In training on CPU the branch runs only on the samples
   * whose draw keeps it (`index_select` in, `index_add` out): the dropped samples' branch output
   * would be multiplied by 0, so skipping it changes no value or gradient and saves about p of
   * the branch's work. The draws are the same as without skipping. (On GPUs the kept samples
   * would need a device sync to find, so the branch runs on all of them there.)
   */
  private residual(base: Tensor, input: Tensor, branch: (x: Tensor) => Tensor): Tensor {
    const s = this.dropPath.sampleScale(input);
    if (s === null) return base.add(branch(input));
    const B = input.size(0);
    if (input.device === "cpu") {
      const kept = s.mask.flatten().nonzero().flatten();
      const k = kept.size(0);
      if (k === B) return base.add(branch(input).div(s.keepP));
      // k = 0 still runs the branch (below) so that its parameters get (zero) gradients as in
      // PyTorch, where the optimiser then still applies weight decay and momentum to them
      if (k > 0) {
        // under autocast the branch may come back in bf16: index_add needs base's dtype
        const out = branch(input.indexSelect(0, kept)).div(s.keepP);
        return base.indexAdd(0, kept, out.dtype === base.dtype ? out : out.to(base.dtype));
      }
    }
    return base.add(branch(input).div(s.keepP).mul(s.mask));
  }

  /** The last block's attention weights [B, heads, T, T] (explicit path, mask applied). */
  attention(x: Tensor, mask: Tensor | null = null): Tensor {
    return scope(() =>
      this.attn.forward(this.norm1.forward(x), mask, { returnAttention: true }).attn!
    );
  }

  /**
   * The block on tokens [class/patch tokens (numMain), then reference tokens] under an
   * `all2pos*` mode, through the split attention ({@link Attention.forwardRefTail}).
   */
  forwardRefTail(
    x: Tensor,
    numMain: number,
    numCls: number,
    mode: MaskMode,
    mainQueries = numMain,
  ): Tensor {
    return scope(() => {
      const R = x.size(1) - numMain;
      // with mainQueries < numMain only those class/patch rows (and every reference row) go on
      const rows = mainQueries < numMain
        ? cat([x.narrow(1, 0, mainQueries), x.narrow(1, numMain, R)], 1)
        : x;
      const x1 = this.residual(
        rows,
        x,
        (xs) =>
          this.attn.forwardRefTail(this.norm1.forward(xs), numMain, numCls, mode, mainQueries),
      );
      return this.residual(x1, x1, (xs) => this.mlp.forward(this.norm2.forward(xs)));
    });
  }

  /** {@link forwardRefTail} on two streams: `main` [B, M, C] and `ref` [B, R, C]. */
  forwardSplit(
    main: Tensor,
    ref: Tensor,
    numCls: number,
    mode: MaskMode,
  ): { main: Tensor; ref: Tensor } {
    return scope(() => {
      const M = main.size(1);
      const out = this.forwardRefTail(cat([main, ref], 1), M, numCls, mode);
      return { main: out.narrow(1, 0, M), ref: out.narrow(1, M, ref.size(1)) };
    });
  }
}
