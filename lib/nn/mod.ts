/**
 * The model layer: modules, layers, the DenseDINO ViT with reference tokens and masked
 * attention, the DINO head, and checkpoint interchange.
 *
 * @module
 */
export { type LoadResult, type LoadStateDictOptions, Module, StateDictError } from "./module.ts";
export {
  Conv2dParams,
  Dropout,
  DropPath,
  GELU,
  type InitOptions,
  Layer,
  LayerNorm,
  Linear,
  Mlp,
  PatchEmbed,
  Sequential,
  truncNormalInit,
} from "./layers.ts";
export {
  Attention,
  attentionMask,
  type AttentionOptions,
  type AttentionOutput,
  Block,
  type BlockOptions,
  checkMaskMode,
  DEFAULT_MASK_MODE,
  isSplitMode,
  MASK_MODES,
  type MaskMode,
} from "./attention.ts";
export {
  ARCHS,
  type ArchSpec,
  createViT,
  type CreateViTOptions,
  type ForwardOptions,
  VisionTransformer,
  type ViTConfig,
  type ViTOutput,
  type ViTTrainOutput,
} from "./vit.ts";
export { DINOHead, type DINOHeadOptions, WeightNormLinear } from "./head.ts";
export {
  describeViTStateDict,
  loadModule,
  type LoadModuleOptions,
  saveModule,
  selectPrefix,
  splitPosEmbed,
} from "./checkpoint.ts";
