/**
 * The error of the data layer's file formats, shared by the image and PNG codecs.
 *
 * @module
 */

/**
 * An image that could not be read, decoded or written. `path` names the file (or the name
 * given for in-memory bytes); the message starts with it.
 */
export class ImageError extends Error {
  /** the file (or the name given to the bytes) */
  readonly path: string;

  /** An error about the image at `path`. */
  constructor(path: string, detail: string) {
    super(`${path}: ${detail}`);
    this.name = "ImageError";
    this.path = path;
  }
}
