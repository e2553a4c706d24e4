/**
 * Atomic file writes: the bytes go to a temporary file next to the target, which is then renamed
 * over it, so a reader (or a crash) never sees a half-written file. Every writer of results,
 * caches and checkpoints in the toolkit goes through here. Also the existence check the scripts
 * and the study runner share.
 *
 * @module
 */

/** Whether something (a file, a folder, a link's target) exists at `path`. */
export async function pathExists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** The temporary name `writeFileAtomic` writes to before renaming (unique per call). */
export function temporaryName(path: string): string {
  const rnd = Math.floor(Math.random() * 0x100000000).toString(16).padStart(8, "0");
  return `${path}.tmp-${Deno.pid}-${Date.now()}-${rnd}`;
}

/**
 * Writes `data` (bytes, or text as UTF-8) to `path` atomically. On failure the temporary file is
 * removed and the original error is rethrown (its message names the operation; callers wrap it
 * with the path and what to do).
 */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = temporaryName(path);
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  try {
    await Deno.writeFile(tmp, bytes, { createNew: true });
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}
