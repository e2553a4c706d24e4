/**
 * ImageFolder: the ImageNet directory layout `root/<class>/<image>`, as torchvision's
 * `datasets.ImageFolder` reads it, with its file list cached on disk.
 *
 * - Classes are the sub-directories of the root (symbolic links followed), sorted by name as
 *   Python sorts strings (by code point); class `k` is the `k`-th name, so labels agree with
 *   torchvision's `class_to_idx`.
 * - Images are the files under each class folder, searched recursively (links followed, as
 *   torchvision's `os.walk(followlinks=True)`; a link back to an enclosing folder is not
 *   followed again) whose name ends in `.jpg`, `.jpeg` or `.png` in any case; other files are
 *   ignored. Order: folders sorted by path, files sorted by name within each folder — the order
 *   of torchvision's `make_dataset`, restricted to the formats this toolkit decodes.
 * - The file list is cached as JSON in the per-user cache (`$DENSEDINO_CACHE`, else
 *   `$XDG_CACHE_HOME/densedino`, else `~/.cache/densedino`), under `imagefolder/` with a name
 *   hashed from the root's real path, never next to the data (which is often read-only or
 *   shared). The cache records the modification time of every folder it listed and is used only
 *   while all of them are unchanged: adding, removing or renaming an image or a folder changes
 *   its parent folder's time, so the list is redone. A listing taken while a folder had changed
 *   in the last 2 s is not cached (file systems with coarse timestamps could otherwise hide a
 *   change made right after it). Replacing a file's contents in place keeps the list valid, as it
 *   should. Pass `cacheDir: false` to always list, or another directory to cache there.
 *
 * @module
 */
import { userCacheDir } from "../../native/paths.ts";
import { checkIndex, type Dataset, type Sample } from "./dataset.ts";
import { loadImage } from "./image.ts";

/**
 * A data set that could not be opened: a missing or malformed directory layout, a split file
 * naming missing files. `path` names the file or directory at fault; the message starts with
 * it. (Images that fail to decode later are `ImageError`s.)
 */
export class DatasetError extends Error {
  /** the file or directory at fault */
  readonly path: string;

  /** An error about the data set file or directory at `path`. */
  constructor(path: string, detail: string) {
    super(`${path}: ${detail}`);
    this.name = "DatasetError";
    this.path = path;
  }
}

/** The file extensions {@link ImageFolder} takes as images (compared in lower case). */
export const IMAGE_EXTENSIONS: readonly string[] = [".jpg", ".jpeg", ".png"];

/** Options of {@link ImageFolder.open}. */
export interface ImageFolderOptions {
  /**
   * Where the file-list cache lives: a directory, or `false` for no cache. Default: `imagefolder/`
   * in the per-user cache directory (see the module notes).
   */
  cacheDir?: string | false;
  /**
   * Accept class folders without images (they keep their class index and have no examples),
   * as torchvision's `allow_empty`. Default false: an empty class folder is an error.
   */
  allowEmpty?: boolean;
}

/** Bumped whenever the cache's content or meaning changes. */
const CACHE_VERSION = 1;
/** Folders changed this recently (ms) when listed make a listing too fresh to cache. */
const RACY_MS = 2000;
/** How many folders are read or checked at once. */
const CONCURRENCY = 32;

/** The listing of a root, as cached. */
interface Listing {
  /** every folder listed, relative to the root ("" for the root), with its mtime in ms */
  dirs: [string, number][];
  /** per class, in class order: its name and its images relative to the class folder */
  classes: { name: string; files: string[] }[];
}

/** Python's string order: by code point (JavaScript's `<` compares UTF-16 code units). */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    // a surrogate (0xD800–0xDFFF) encodes a code point above every BMP character
    const xs = x >= 0xd800 && x <= 0xdfff;
    const ys = y >= 0xd800 && y <= 0xdfff;
    if (xs !== ys) return xs ? 1 : -1;
    return x - y;
  }
  return a.length - b.length;
}

function isImageName(name: string): boolean {
  const lower = name.toLowerCase();
  return IMAGE_EXTENSIONS.some((ext) => lower.endsWith(ext));
}

function mtimeOf(info: Deno.FileInfo): number {
  return info.mtime?.getTime() ?? -1;
}

function join(dir: string, rel: string): string {
  return rel === "" ? dir : `${dir}/${rel}`;
}

/** `fn` over `items` with at most `limit` calls in flight; results in input order. */
async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Whether a directory entry is (or links to) a directory; a broken link counts as a file. */
async function entryIsDir(dir: string, e: Deno.DirEntry): Promise<boolean> {
  if (e.isDirectory) return true;
  if (!e.isSymlink) return false;
  try {
    return (await Deno.stat(`${dir}/${e.name}`)).isDirectory;
  } catch {
    return false;
  }
}

function readFailure(path: string, e: unknown): DatasetError {
  if (e instanceof DatasetError) return e;
  if (e instanceof Deno.errors.NotFound) return new DatasetError(path, "not found");
  return new DatasetError(path, `could not read: ${(e as Error)?.message ?? e}`);
}

/** Reads one folder: its sub-folders and image names (both unsorted). */
async function readFolder(path: string): Promise<{ dirs: string[]; images: string[] }> {
  const dirs: string[] = [];
  const images: string[] = [];
  try {
    for await (const e of Deno.readDir(path)) {
      if (await entryIsDir(path, e)) dirs.push(e.name);
      else if (isImageName(e.name)) images.push(e.name);
    }
  } catch (e) {
    throw readFailure(path, e);
  }
  return { dirs, images };
}

/** Lists one class folder recursively (torchvision's sorted `os.walk`). */
async function walkClass(
  root: string,
  realRoot: string,
  name: string,
): Promise<{ dirs: [string, number][]; files: string[] }> {
  const dirs: [string, number][] = [];
  const groups: [string, string[]][] = [];
  const visit = async (rel: string, ancestors: Set<string>): Promise<void> => {
    const path = join(root, rel);
    let info: Deno.FileInfo;
    let real: string;
    try {
      info = await Deno.stat(path);
      real = await Deno.realPath(path);
    } catch (e) {
      throw readFailure(path, e);
    }
    if (ancestors.has(real)) return; // a link back to an enclosing folder
    // the time is taken before reading, so a change made while reading shows up next time
    dirs.push([rel, mtimeOf(info)]);
    const { dirs: subdirs, images } = await readFolder(path);
    images.sort(compareCodePoints);
    groups.push([rel, images]);
    const inner = new Set(ancestors).add(real);
    for (const d of subdirs.sort(compareCodePoints)) await visit(`${rel}/${d}`, inner);
  };
  await visit(name, new Set([realRoot]));
  groups.sort((a, b) => compareCodePoints(a[0], b[0]));
  const files: string[] = [];
  for (const [rel, images] of groups) {
    const sub = rel.slice(name.length + 1); // "" for the class folder itself
    for (const f of images) files.push(sub === "" ? f : `${sub}/${f}`);
  }
  return { dirs, files };
}

/** Lists the root; `fresh` is true when a folder changed too recently for the list to be cached. */
async function listRoot(
  root: string,
  realRoot: string,
): Promise<{ listing: Listing; fresh: boolean }> {
  const start = Date.now();
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(root);
  } catch (e) {
    throw readFailure(root, e);
  }
  const { dirs: names, images: loose } = await readFolder(root);
  if (names.length === 0) {
    throw new DatasetError(
      root,
      "no class folders: ImageFolder expects one folder of images per class " +
        "(root/<class>/<image>)" +
        (loose.length > 0
          ? `; found ${loose.length} image file(s) directly in the root, e.g. ${loose[0]}: ` +
            "move them into a folder named after their class"
          : ""),
    );
  }
  names.sort(compareCodePoints);
  const walked = await mapLimit(names, CONCURRENCY, (name) => walkClass(root, realRoot, name));
  const dirs: [string, number][] = [["", mtimeOf(info)]];
  const classes = names.map((name, k) => {
    dirs.push(...walked[k].dirs);
    return { name, files: walked[k].files };
  });
  const fresh = dirs.some(([, m]) => m < 0 || m >= start - RACY_MS);
  return { listing: { dirs, classes }, fresh };
}

function isListing(x: unknown): x is Listing {
  const c = x as Listing;
  return Array.isArray(c?.dirs) && Array.isArray(c?.classes) &&
    c.dirs.every((d) => Array.isArray(d) && typeof d[0] === "string" && typeof d[1] === "number") &&
    c.classes.every((k) =>
      typeof k?.name === "string" && Array.isArray(k.files) &&
      k.files.every((f) => typeof f === "string")
    );
}

/** The cached listing of `root` when the cache exists and every listed folder is unchanged. */
async function readCache(file: string, root: string): Promise<Listing | null> {
  let cached: { version?: number; root?: string; listing?: unknown };
  try {
    cached = JSON.parse(await Deno.readTextFile(file));
  } catch {
    return null; // no cache, unreadable or corrupt: list again
  }
  if (cached?.version !== CACHE_VERSION || cached.root !== root) return null;
  const listing = cached.listing;
  if (!isListing(listing)) return null;
  const same = await mapLimit(listing.dirs, CONCURRENCY * 2, async ([rel, m]) => {
    try {
      const info = await Deno.stat(join(root, rel));
      return info.isDirectory && mtimeOf(info) === m;
    } catch {
      return false;
    }
  });
  return same.every((s) => s) ? listing : null;
}

/** Writes the cache atomically; failures (read-only cache, no permission) are ignored. */
async function writeCache(file: string, root: string, listing: Listing): Promise<boolean> {
  const dir = file.slice(0, file.lastIndexOf("/"));
  const rnd = Math.floor(Math.random() * 0x100000000).toString(16);
  const tmp = `${file}.tmp-${Deno.pid}-${Date.now()}-${rnd}`;
  try {
    await Deno.mkdir(dir, { recursive: true });
    const text = JSON.stringify({ version: CACHE_VERSION, root, listing });
    await Deno.writeTextFile(tmp, text, { createNew: true });
    await Deno.rename(tmp, file);
    return true;
  } catch {
    await Deno.remove(tmp).catch(() => {});
    return false;
  }
}

async function cacheName(realRoot: string): Promise<string> {
  const key = `${CACHE_VERSION}\0${realRoot}\0${IMAGE_EXTENSIONS.join(",")}`;
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(key));
  const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 32)}.json`;
}

/**
 * Images in one folder per class (`root/<class>/<image>`), the ImageNet layout, as torchvision's
 * `ImageFolder` (see the module notes for the order, the extensions and the cache). Open with
 * {@link ImageFolder.open}; `get(i)` decodes image `i` to a float32 [3, H, W] tensor in [0, 1]
 * with its class index as `label` and its path as `name`.
 *
 * ```ts
 * const ds = await ImageFolder.open("/data/imagenet/train");
 * const { image, label, name } = await ds.get(0);
 * image.free();
 * ```
 */
export class ImageFolder implements Dataset {
  /** the root folder, as given */
  readonly root: string;
  /** class names (the folder names), sorted; class `k` is `classes[k]` */
  readonly classes: readonly string[];
  /** number of images */
  readonly length: number;
  /** whether the file list came from the cache */
  readonly fromCache: boolean;
  /** the cache file used (read or written), or null when caching is off */
  readonly cacheFile: string | null;
  #paths: string[];
  #labels: Int32Array;

  private constructor(
    root: string,
    listing: Listing,
    fromCache: boolean,
    cacheFile: string | null,
  ) {
    this.root = root;
    this.classes = Object.freeze(listing.classes.map((c) => c.name));
    const n = listing.classes.reduce((a, c) => a + c.files.length, 0);
    this.#paths = new Array<string>(n);
    this.#labels = new Int32Array(n);
    let i = 0;
    listing.classes.forEach((c, k) => {
      for (const f of c.files) {
        this.#paths[i] = `${root}/${c.name}/${f}`;
        this.#labels[i++] = k;
      }
    });
    this.length = n;
    this.fromCache = fromCache;
    this.cacheFile = cacheFile;
  }

  /**
   * Lists (or takes from the cache) the images under `root`. Throws {@link DatasetError} naming
   * the path when the root is missing or not a folder, when it holds no class folders, or when
   * a class folder holds no images (unless `allowEmpty`).
   */
  static async open(root: string, opts: ImageFolderOptions = {}): Promise<ImageFolder> {
    if (typeof root !== "string" || root === "") {
      throw new DatasetError(String(root), "ImageFolder needs a root folder path");
    }
    root = root.length > 1 ? root.replace(/\/+$/, "") : root;
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(root);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new DatasetError(root, "ImageFolder root folder not found");
      }
      throw readFailure(root, e);
    }
    if (!info.isDirectory) {
      throw new DatasetError(root, "ImageFolder root is a file, not a folder of class folders");
    }
    const real = await Deno.realPath(root);
    const cacheDir = opts.cacheDir ?? `${userCacheDir()}/imagefolder`;
    const cacheFile = cacheDir === false ? null : `${cacheDir}/${await cacheName(real)}`;

    let listing = cacheFile === null ? null : await readCache(cacheFile, real);
    const fromCache = listing !== null;
    if (listing === null) {
      const listed = await listRoot(root, real);
      listing = listed.listing;
      if (cacheFile !== null) {
        if (listed.fresh) await Deno.remove(cacheFile).catch(() => {});
        else await writeCache(cacheFile, real, listing);
      }
    }

    const empty = listing.classes.filter((c) => c.files.length === 0).map((c) => c.name);
    if (empty.length > 0 && !opts.allowEmpty) {
      const more = empty.length > 1
        ? `; ${empty.length - 1} more empty class folder(s): ${empty.slice(1, 6).join(", ")}` +
          (empty.length > 6 ? ", …" : "")
        : "";
      throw new DatasetError(
        `${root}/${empty[0]}`,
        `class folder holds no images (${IMAGE_EXTENSIONS.join(", ")}, any case)${more}; ` +
          "remove it or pass allowEmpty",
      );
    }
    return new ImageFolder(root, listing, fromCache, cacheFile);
  }

  /** The path of image `i` (`root/<class>/<file>`). */
  pathOf(i: number): string {
    checkIndex(this, i, `ImageFolder ${this.root}`);
    return this.#paths[i];
  }

  /** The class index of image `i`, without loading it. */
  labelOf(i: number): number {
    checkIndex(this, i, `ImageFolder ${this.root}`);
    return this.#labels[i];
  }

  /** Every image's class index, in order (a copy). */
  labels(): Int32Array {
    return this.#labels.slice();
  }

  /** The path of image `i`. */
  nameOf(i: number): string {
    return this.pathOf(i);
  }

  /**
   * Image `i` as a float32 [3, H, W] tensor in [0, 1], its class index and its path. Rejects
   * with an `ImageError` naming the file when it cannot be read or decoded.
   */
  async get(i: number): Promise<Sample> {
    const name = this.pathOf(i);
    const image = await loadImage(name);
    return { image, label: this.#labels[i], name };
  }
}
