/**
 * Pascal VOC 2012 semantic segmentation, read from its own layout:
 *
 * ```
 * VOCdevkit/VOC2012/
 *   JPEGImages/<id>.jpg
 *   SegmentationClass/<id>.png        palette PNGs: the palette index is the class, 255 = ignore
 *   SegmentationClassAug/<id>.png     grey PNGs of class indices (the SBD-augmented set)
 *   ImageSets/Segmentation/{train,val,trainval,trainaug}.txt
 * ```
 *
 * - **Root**: the folder holding `JPEGImages/` (`VOC2012`), or a folder above it: `root/VOC2012`
 *   and `root/VOCdevkit/VOC2012` are tried too.
 * - **Split files**: `ImageSets/Segmentation/<split>.txt`, else `ImageSets/SegmentationAug/
 *   <split>.txt`; `trainaug` is also found as `train_aug.txt` in either folder (the DeepLab /
 *   SBD distributions). A line holds an image id (`2007_000032`) or, as in DeepLab's lists,
 *   paths (`/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`): the id is the
 *   first field's file name without its extension. Empty lines and `#` comments are skipped.
 *   Other split names are accepted when such a file exists (a custom split).
 * - **Masks** (`masks: "auto"`, the default): the `trainaug` split reads `SegmentationClassAug/`
 *   (the original `SegmentationClass/` lacks most of its images); the other splits read the
 *   original `SegmentationClass/` annotations, the reference for evaluation. Either way, when the
 *   preferred folder is missing or lacks some of the split's masks and the other folder holds
 *   them all, the other one is used (the two agree on the images both annotate); `maskDir`
 *   says which was chosen. `masks: "SegmentationClass" | "SegmentationClassAug"` forces one,
 *   `"none"` reads images only (e.g. for self-supervised training on VOC images).
 * - Every image and mask the split names is checked to exist when the data set is opened; a
 *   missing one is a {@link DatasetError} listing the first few and the count.
 * - Masks are read as class indices (see `decodeIndexMask`); their values are not checked
 *   against the 21 classes. An RGB rendering of the masks is rejected unless
 *   `colormap: vocColormap()` is passed.
 *
 * @module
 */
import { checkIndex, type Dataset, type Sample } from "./dataset.ts";
import { ImageError, loadImage, loadIndexMask } from "./image.ts";
import { DatasetError } from "./imagefolder.ts";
import type { Tensor } from "../torch/mod.ts";

/** The 21 Pascal VOC classes by index (0 background); 255 in masks is "ignore". */
export const VOC_CLASSES: readonly string[] = Object.freeze([
  "background",
  "aeroplane",
  "bicycle",
  "bird",
  "boat",
  "bottle",
  "bus",
  "car",
  "cat",
  "chair",
  "cow",
  "diningtable",
  "dog",
  "horse",
  "motorbike",
  "person",
  "pottedplant",
  "sheep",
  "sofa",
  "train",
  "tvmonitor",
]);

/** The mask value VOC uses for borders and unlabelled pixels, ignored by losses and mIoU. */
export const VOC_IGNORE_INDEX = 255;

/** The standard VOC 2012 segmentation splits. */
export const VOC_SPLITS: readonly string[] = Object.freeze([
  "train",
  "val",
  "trainval",
  "trainaug",
]);

/** Which masks {@link PascalVOC} reads (see the module notes). */
export type VocMasks = "auto" | "SegmentationClass" | "SegmentationClassAug" | "none";

/** Options of {@link PascalVOC.open}. */
export interface PascalVOCOptions {
  /** `train` (default), `val`, `trainval`, `trainaug`, or the name of another split file */
  split?: string;
  /** which mask folder to read; default `"auto"` (see the module notes) */
  masks?: VocMasks;
  /**
   * a colormap through which RGB mask PNGs are mapped to class indices (e.g. `vocColormap()`);
   * by default RGB masks are an error
   */
  colormap?: Uint8Array;
}

const MASK_DIRS = ["SegmentationClass", "SegmentationClassAug"] as const;

async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** The names in a folder. */
async function names(dir: string): Promise<Set<string>> {
  const out = new Set<string>();
  try {
    for await (const e of Deno.readDir(dir)) out.add(e.name);
  } catch (e) {
    throw new DatasetError(dir, `could not read: ${(e as Error)?.message ?? e}`);
  }
  return out;
}

function isAugSplit(split: string): boolean {
  return split === "trainaug" || split === "train_aug";
}

/** Candidate split files, relative to the VOC folder, in lookup order. */
function splitCandidates(split: string): string[] {
  const files = isAugSplit(split) ? ["trainaug", "train_aug"] : [split];
  const out: string[] = [];
  for (const dir of ["Segmentation", "SegmentationAug"]) {
    for (const f of files) out.push(`ImageSets/${dir}/${f}.txt`);
  }
  return out;
}

/** The ids listed by a split file. */
function parseSplit(text: string): string[] {
  const ids: string[] = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const first = line.split(/\s+/)[0];
    const base = first.slice(first.lastIndexOf("/") + 1);
    const dot = base.lastIndexOf(".");
    ids.push(dot > 0 ? base.slice(0, dot) : base);
  }
  return ids;
}

/** "a, b, c, … (k of n)" */
function listSome(items: string[], total: number): string {
  const shown = items.slice(0, 5).join(", ");
  return `${shown}${items.length > 5 ? ", …" : ""} (${items.length} of ${total})`;
}

/**
 * Pascal VOC 2012 segmentation (see the module notes for the layout, the split files and which
 * masks are read). Open with {@link PascalVOC.open}; `get(i)` decodes image `i` to a float32
 * [3, H, W] tensor in [0, 1] with its mask, a uint8 [H, W] tensor of class indices (255 =
 * ignore), and the image path as `name`.
 *
 * ```ts
 * const val = await PascalVOC.open("/data/VOCdevkit", { split: "val" });
 * const { image, mask } = await val.get(0);
 * image.free();
 * mask?.free();
 * ```
 */
export class PascalVOC implements Dataset {
  /** the VOC 2012 folder (the one holding `JPEGImages/`) */
  readonly root: string;
  /** the split read */
  readonly split: string;
  /** the split file read */
  readonly splitFile: string;
  /** the mask folder read, or null with `masks: "none"` */
  readonly maskDir: string | null;
  /** the image ids of the split, in the file's order */
  readonly ids: readonly string[];
  /** the 21 VOC class names ({@link VOC_CLASSES}) */
  readonly classes: readonly string[] = VOC_CLASSES;
  /** number of images */
  readonly length: number;
  #colormap: Uint8Array | undefined;

  private constructor(
    root: string,
    split: string,
    splitFile: string,
    maskDir: string | null,
    ids: string[],
    colormap: Uint8Array | undefined,
  ) {
    this.root = root;
    this.split = split;
    this.splitFile = splitFile;
    this.maskDir = maskDir;
    this.ids = Object.freeze(ids);
    this.length = ids.length;
    this.#colormap = colormap;
  }

  /**
   * Finds the VOC folder under `root`, reads the split file and checks that every image (and
   * mask) it names exists. Throws {@link DatasetError} naming the path for a missing root,
   * `JPEGImages/`, mask folder or split file, an unknown split, an empty split, or a split
   * naming missing images or masks.
   */
  static async open(root: string, opts: PascalVOCOptions = {}): Promise<PascalVOC> {
    const split = opts.split ?? "train";
    const masks = opts.masks ?? "auto";
    if (typeof root !== "string" || root === "") {
      throw new DatasetError(String(root), "PascalVOC needs a root folder path");
    }
    root = root.length > 1 ? root.replace(/\/+$/, "") : root;
    if (!["auto", "none", ...MASK_DIRS].includes(masks)) {
      throw new DatasetError(
        root,
        `unknown masks option ${JSON.stringify(masks)}: expected auto, SegmentationClass, ` +
          "SegmentationClassAug or none",
      );
    }
    if (typeof split !== "string" || !/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(split)) {
      throw new DatasetError(
        root,
        `invalid split name ${JSON.stringify(split)}: expected ${VOC_SPLITS.join(", ")} or ` +
          "the name of a split file in ImageSets/Segmentation/",
      );
    }
    if (!(await isDir(root))) {
      const exists = await Deno.stat(root).then(() => true, () => false);
      throw new DatasetError(
        root,
        exists ? "Pascal VOC root is a file, not a folder" : "Pascal VOC root folder not found",
      );
    }

    // the VOC 2012 folder
    const places = [root, `${root}/VOC2012`, `${root}/VOCdevkit/VOC2012`];
    let voc: string | null = null;
    for (const p of places) {
      if (await isDir(`${p}/JPEGImages`)) {
        voc = p;
        break;
      }
    }
    if (voc === null) {
      throw new DatasetError(
        `${root}/JPEGImages`,
        "not found: expected the Pascal VOC 2012 folder (VOCdevkit/VOC2012), which holds " +
          "JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/ (also looked for " +
          `${places.slice(1).map((p) => `${p}/JPEGImages`).join(" and ")})`,
      );
    }

    // the split file
    const candidates = splitCandidates(split).map((f) => `${voc}/${f}`);
    let splitFile: string | null = null;
    for (const c of candidates) {
      if (await isFile(c)) {
        splitFile = c;
        break;
      }
    }
    if (splitFile === null) {
      if (!VOC_SPLITS.includes(split) && !isAugSplit(split)) {
        throw new DatasetError(
          root,
          `unknown split ${JSON.stringify(split)}: expected ${VOC_SPLITS.join(", ")}, or a ` +
            `split file at ${candidates[0]}`,
        );
      }
      throw new DatasetError(
        candidates[0],
        `split file for "${split}" not found (also looked for ` +
          `${candidates.slice(1).join(", ")})`,
      );
    }
    let ids: string[];
    try {
      ids = parseSplit(await Deno.readTextFile(splitFile));
    } catch (e) {
      throw new DatasetError(splitFile, `could not read: ${(e as Error)?.message ?? e}`);
    }
    if (ids.length === 0) throw new DatasetError(splitFile, "the split file names no images");

    // every image exists
    const jpegDir = `${voc}/JPEGImages`;
    const jpegs = await names(jpegDir);
    const noImage = ids.filter((id) => !jpegs.has(`${id}.jpg`));
    if (noImage.length > 0) {
      throw new DatasetError(
        splitFile,
        `names images missing from ${jpegDir}/: ${listSome(noImage, ids.length)}`,
      );
    }

    // the mask folder, and every mask exists
    let maskDir: string | null = null;
    if (masks !== "none") {
      const order: string[] = masks === "auto"
        ? (isAugSplit(split) ? [MASK_DIRS[1], MASK_DIRS[0]] : [MASK_DIRS[0], MASK_DIRS[1]])
        : [masks];
      const missing = new Map<string, string[] | null>(); // null: no such folder
      for (const d of order) {
        const dir = `${voc}/${d}`;
        if (!(await isDir(dir))) {
          missing.set(dir, null);
          continue;
        }
        const pngs = await names(dir);
        const lacking = ids.filter((id) => !pngs.has(`${id}.png`));
        if (lacking.length === 0) {
          maskDir = dir;
          break;
        }
        missing.set(dir, lacking);
      }
      if (maskDir === null) {
        // report on the preferred folder when it exists, else on the first folder that does
        const [dir, lacking] = [...missing].find(([, l]) => l !== null) ?? [...missing][0];
        if (lacking === null) {
          throw new DatasetError(
            dir,
            "mask folder not found" +
              (order.length > 1 ? ` (nor ${voc}/${order[1]})` : "") +
              `; pass masks: "none" to read the images without masks`,
          );
        }
        throw new DatasetError(
          splitFile,
          `names images with no mask in ${dir}/: ${listSome(lacking, ids.length)}`,
        );
      }
    }
    return new PascalVOC(voc, split, splitFile, maskDir, ids, opts.colormap);
  }

  /** The JPEG of image `i`. */
  imagePathOf(i: number): string {
    checkIndex(this, i, `PascalVOC ${this.split}`);
    return `${this.root}/JPEGImages/${this.ids[i]}.jpg`;
  }

  /** The mask PNG of image `i`, or null without masks. */
  maskPathOf(i: number): string | null {
    checkIndex(this, i, `PascalVOC ${this.split}`);
    return this.maskDir === null ? null : `${this.maskDir}/${this.ids[i]}.png`;
  }

  /** The JPEG path of image `i`. */
  nameOf(i: number): string {
    return this.imagePathOf(i);
  }

  /**
   * Image `i` as a float32 [3, H, W] tensor in [0, 1] with its mask (uint8 [H, W], 255 =
   * ignore; absent with `masks: "none"`) and its JPEG path as `name`. Rejects with an
   * `ImageError` naming the file when the image or the mask cannot be read or decoded, or when
   * their sizes differ; nothing is left allocated then.
   */
  async get(i: number): Promise<Sample> {
    const name = this.imagePathOf(i);
    const maskPath = this.maskPathOf(i);
    const [image, mask] = await Promise.allSettled([
      loadImage(name),
      maskPath === null ? Promise.resolve(null) : loadIndexMask(maskPath, {
        colormap: this.#colormap,
      }),
    ]);
    const free = () => {
      if (image.status === "fulfilled") image.value.free();
      if (mask.status === "fulfilled") mask.value?.free();
    };
    if (image.status === "rejected" || mask.status === "rejected") {
      free();
      throw image.status === "rejected" ? image.reason : (mask as PromiseRejectedResult).reason;
    }
    const img: Tensor = image.value;
    const m: Tensor | null = mask.value;
    if (m === null) return { image: img, name };
    const [H, W] = [img.size(1), img.size(2)];
    if (m.size(0) !== H || m.size(1) !== W) {
      const [h, w] = [m.size(0), m.size(1)];
      free();
      throw new ImageError(
        maskPath as string,
        `the mask is ${w}×${h} but its image ${name} is ${W}×${H}`,
      );
    }
    return { image: img, mask: m, name };
  }
}
