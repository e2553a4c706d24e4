/**
 * The data layer: image decoding and encoding, and the standard preprocessing.
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
