/**
 * Where the native library lives: the one place both the build (`setup.ts`) and the binding
 * (`lib/torch/ffi.ts`) agree on file names and directories.
 *
 * @module
 */

/** File name of the built shim. */
export const LIB_FILE = "libdensedino.so";

/** Environment variable that names a built shim to load instead of searching. */
export const NATIVE_ENV = "DENSEDINO_NATIVE";

/** Environment variable that overrides the per-user cache directory. */
export const CACHE_ENV = "DENSEDINO_CACHE";

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined; // no --allow-env: behave as if unset
  }
}

/** The per-user cache directory used when the toolkit is imported from a URL. */
export function userCacheDir(): string {
  const explicit = env(CACHE_ENV);
  if (explicit) return explicit;
  const xdg = env("XDG_CACHE_HOME");
  const home = env("HOME") ?? "/tmp";
  return `${xdg ?? `${home}/.cache`}/densedino`;
}

/** Build directory of a local checkout (`native/build`), or null when loaded from a URL. */
export function localBuildDir(): string | null {
  const url = new URL("./build", import.meta.url);
  return url.protocol === "file:" ? decodeURIComponent(url.pathname) : null;
}

/** Build directory inside the per-user cache. */
export function cacheBuildDir(): string {
  return `${userCacheDir()}/native`;
}

/** The candidate library paths in lookup order, each with where it came from. */
export function libraryCandidates(): { path: string; source: string }[] {
  const out: { path: string; source: string }[] = [];
  const explicit = env(NATIVE_ENV);
  if (explicit) out.push({ path: explicit, source: `$${NATIVE_ENV}` });
  const local = localBuildDir();
  if (local) out.push({ path: `${local}/${LIB_FILE}`, source: "local checkout build" });
  out.push({ path: `${cacheBuildDir()}/${LIB_FILE}`, source: "per-user cache" });
  return out;
}
