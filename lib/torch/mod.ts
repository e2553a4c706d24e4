/**
 * The tensor layer: libtorch through a thin C shim, with deterministic memory.
 *
 * @module
 */
export { type Device, type DType, DTYPE_SIZE, isFloating } from "./dtype.ts";
export { TorchError } from "./errors.ts";
export { temporaryName, writeFileAtomic } from "./files.ts";
export { NativeLoadError, torchVersion } from "./ffi.ts";
export { freeAll, keep, liveHandles, NativeHandle, scope, scopeDepth } from "./memory.ts";
export {
  type NestedArray,
  type ReduceOptions,
  Tensor,
  type TensorData,
  /** The typed array {@link Tensor.toTypedArray} returns for a dtype. */
  type TypedArrayOf,
  type ValuesIndices,
} from "./tensor.ts";
export {
  arange,
  type CreateOptions,
  empty,
  emptyLike,
  eye,
  fromBytes,
  fromTypedArray,
  full,
  fullLike,
  linspace,
  ones,
  onesLike,
  scalarTensor,
  tensor,
  zeros,
  zerosLike,
} from "./creation.ts";
export {
  bernoulli,
  Generator,
  getRngState,
  manualSeed,
  rand,
  randint,
  randn,
  type RandomOptions,
  randperm,
  setRngState,
} from "./random.ts";
export {
  adaptiveAvgPool2d,
  avgPool2d,
  cat,
  conv2d,
  type Conv2dOptions,
  crossEntropy,
  type CrossEntropyOptions,
  dropout,
  einsum,
  gelu,
  gridSample,
  type GridSampleOptions,
  hasScaledDotProductAttention,
  interpolate,
  type InterpolateMode,
  type InterpolateOptions,
  layerNorm,
  linear,
  logSoftmax,
  matmul,
  maxPool2d,
  normalize,
  pad,
  type PadMode,
  type Pool2dOptions,
  scaledDotProductAttention,
  /** A 2-D size or step: one number, or [height, width]. */
  type Size2d,
  softmax,
  stack,
  weightNorm,
  where,
} from "./functional.ts";
export { enableGrad, isGradEnabled, noGrad, setGradEnabled } from "./autograd.ts";
export {
  AdamW,
  type AdamWOptions,
  clipGradNorms,
  clipGradNormTotal,
  emaUpdate,
  type LiveGroup,
  type OptimizerState,
  type ParamGroup,
  SGD,
  type SGDOptions,
  zeroGrads,
} from "./optim.ts";
export {
  /** The type of {@link cuda}: CUDA queries and controls. */
  type Cuda,
  cuda,
  type CudaMemoryStats,
  getNumThreads,
  liveTensors,
  setNumThreads,
} from "./runtime.ts";
export {
  deserializeSafetensors,
  type LoadOptions,
  loadSafetensors,
  parseSafetensorsHeader,
  readSafetensorsHeader,
  SAFETENSORS_DTYPE,
  type SafetensorsContent,
  type SafetensorsHeader,
  type SafetensorsInfo,
  saveSafetensors,
  serializeSafetensors,
} from "./safetensors.ts";
export {
  assertGradcheck,
  gradcheck,
  GradcheckError,
  type GradcheckInputReport,
  type GradcheckOptions,
  type GradcheckResult,
} from "./gradcheck.ts";
export { autocast, type AutocastOptions, GradScaler, type GradScalerOptions } from "./amp.ts";
export {
  DEFAULT_BUCKET_BYTES,
  DEFAULT_DIST_TIMEOUT_MS,
  type DistBackend,
  type DistEnv,
  distEnv,
  DistError,
  type DistInitOptions,
  initProcessGroup,
  ProcessGroup,
  type ReduceOp,
} from "./dist.ts";
