/**
 * Evaluations of frozen backbones (paper §4.1): the backbone loader every evaluation shares,
 * batched feature passes and their cache, weighted k-NN classification, the linear
 * segmentation probe with mIoU, and attention / reference-token maps.
 *
 * @module
 */
export * from "./backbone.ts";
export * from "./features.ts";
export * from "./knn.ts";
export * from "./metrics.ts";
export * from "./segmentation.ts";
export * from "./attention.ts";
