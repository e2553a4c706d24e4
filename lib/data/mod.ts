/**
 * The data layer: image decoding and encoding (PNG with this project's own codec, JPEG with
 * imagescript), and the standard preprocessing.
 *
 * @module
 */
export {
  centerCrop,
  decodeImage,
  decodeRgb,
  encodeJpeg,
  encodePng,
  ImageError,
  type ImageFormat,
  imageFormat,
  IMAGENET_MEAN,
  IMAGENET_STD,
  imagenetNormalize,
  loadImage,
  loadRgb,
  resizedSize,
  resizeImage,
  resizeShorterSide,
  type RgbImage,
  rgbToTensor,
  savePng,
} from "./image.ts";
export {
  decodePng,
  encodePngPixels,
  type PngBitDepth,
  type PngColorType,
  type PngEncodeOptions,
  type PngFilter,
  type PngImage,
  pngIndices,
  type PngPixels,
  pngToRgb8,
  pngToRgba8,
} from "./png.ts";
export { checkIndex, type Dataset, type Sample } from "./dataset.ts";
export { decodeIndexMask, type IndexMaskOptions, loadIndexMask, vocColormap } from "./image.ts";
export {
  DatasetError,
  IMAGE_EXTENSIONS,
  ImageFolder,
  type ImageFolderOptions,
} from "./imagefolder.ts";
export {
  PascalVOC,
  type PascalVOCOptions,
  VOC_CLASSES,
  VOC_IGNORE_INDEX,
  VOC_SPLITS,
  type VocMasks,
} from "./voc.ts";
export {
  type Collate,
  type Collated,
  collateSamples,
  DataLoader,
  type DefaultBatch,
  defaultCollate,
  epochSeed,
  type EpochStats,
  type ExampleRandom,
  exampleSeed,
  type LoaderOptions,
  type LoaderSource,
  SampleBatch,
  type SourceSpec,
  type Transform,
} from "./loader.ts";
export {
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_DIR,
  FASHION_MNIST_PACKAGE,
  FashionMNIST,
  type FashionMNISTArrays,
  type FashionMNISTOptions,
  type FashionMNISTSplit,
  type IdxArray,
  IdxError,
  loadFashionMNIST,
  parseIdx,
  readIdx,
} from "./fashion_mnist.ts";
export {
  FASHION_SCENES_MASK_CLASSES,
  FASHION_SCENES_VERSION,
  FashionScenes,
  type FashionScenesOptions,
  type FashionScenesSplit,
  generateFashionScenes,
  type ResolvedSceneOptions,
  resolveSceneOptions,
  saveScenePreview,
  SCENE_MASK_COLORS,
  type SceneArrays,
  sceneBackground,
  type SceneItem,
} from "./fashion_scenes.ts";
