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
