/**
 * `deno task setup`: find libtorch (installing Debian's when it is missing and we may), then
 * build the native shim when its sources, the libtorch or the flags changed.
 *
 * Works from a checkout (builds into `native/build/`) and from a URL
 * (`deno run -A https://…/native/setup.ts` fetches the sources next to this file and builds
 * into the per-user cache, where the binding looks for it).
 *
 * libtorch lookup order:
 *   1. `LIBTORCH` or `TORCH_DIR`: an unpacked libtorch or a PyTorch package directory
 *      (either holds `include/` and `lib/`);
 *   2. the PyTorch of `python3` when it is a CUDA build (GPU machines);
 *   3. Debian's `libtorch-dev`;
 *   4. the PyTorch of `python3` (CPU wheel).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { cacheBuildDir, LIB_FILE, localBuildDir, userCacheDir } from "./paths.ts";

/**
 * Debian packages the toolkit relies on (`libgloo-dev`: the Gloo headers that distributed
 * training over libtorch's c10d needs at build time; its library comes with libtorch).
 */
export const DEBIAN_PACKAGES = [
  "libtorch-dev",
  "libopenblas0-pthread",
  "dataset-fashion-mnist",
  "libgloo-dev",
];

const SOURCES = ["src/core.cpp", "src/ops.cpp", "src/train.cpp", "src/cuda.cpp", "src/dist.cpp"];
const HEADERS = ["include/densedino.h", "src/common.h"];

/** A libtorch found on this machine. */
export interface Libtorch {
  /** how it was found */
  source: string;
  /** include directories */
  includes: string[];
  /** directory holding libtorch.so */
  libDir: string;
  /** "1" / "0" when the build must force the CXX11 ABI flag, null for the compiler default */
  cxx11Abi: string | null;
  /** true when libtorch_cuda is present */
  cuda: boolean;
  /** CUDA runtime include directories (needed by c10/cuda headers) */
  cudaIncludes: string[];
  /** libtorch version, e.g. "1.13.0" */
  version: string;
  /** the C++ standard its headers need: c++17, or c++20 for recent releases */
  cxxStd: string;
  /**
   * include directories holding `gloo/algorithm.h` (beyond `includes`) when they are not
   * among the libtorch's own; empty or absent: none needed, or none found (see `gloo`)
   */
  glooIncludes?: string[];
  /** where the Gloo headers were found, null when none were: the shim is then built without Gloo */
  gloo?: string | null;
  /** false when the libtorch has no c10d (built without USE_DISTRIBUTED): dist.cpp stubs out */
  distributed?: boolean;
}

/** Options of {@link setup}. */
export interface SetupOptions {
  /** rebuild even when the stamp matches */
  force?: boolean;
  /** where to build; default: native/build in a checkout, else the per-user cache */
  outDir?: string;
  /** print progress to stderr */
  verbose?: boolean;
  /** install missing Debian packages when root with apt-get (default true) */
  install?: boolean;
  /** prefix for probing system paths (tests point it at an empty directory) */
  sysroot?: string;
  /** parallel compiler jobs (default: the number of cores) */
  jobs?: number;
}

/** Raised when setup cannot proceed; its message says what to do. */
export class SetupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SetupError";
  }
}

function log(opts: SetupOptions, msg: string) {
  if (opts.verbose !== false) console.error(`[setup] ${msg}`);
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

async function run(
  cmd: string,
  args: string[],
  opts: { env?: Record<string, string>; quiet?: boolean } = {},
): Promise<{ ok: boolean; stdout: string; stderr: string }> {
  try {
    const out = await new Deno.Command(cmd, {
      args,
      env: opts.env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { ok: out.success, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } catch (e) {
    return { ok: false, stdout: "", stderr: String(e) };
  }
}

function versionFromHeader(includeDir: string): string {
  for (const rel of ["torch/csrc/api/include/torch/version.h", "torch/version.h"]) {
    try {
      const text = Deno.readTextFileSync(`${includeDir}/${rel}`);
      const get = (k: string) => text.match(new RegExp(`#define TORCH_VERSION_${k} (\\d+)`))?.[1];
      const [a, b, c] = [get("MAJOR"), get("MINOR"), get("PATCH")];
      if (a && b && c) return `${a}.${b}.${c}`;
      const whole = text.match(/#define TORCH_VERSION "(\d+\.\d+\.\d+)/)?.[1];
      if (whole) return whole;
    } catch { /* try next */ }
  }
  return "unknown";
}

/** Recent libtorch headers refuse to compile below C++20; they say so in ATen/ATen.h. */
function cxxStandard(includeDir: string): string {
  try {
    return /C\+\+20 or later/.test(Deno.readTextFileSync(`${includeDir}/ATen/ATen.h`))
      ? "c++20"
      : "c++17";
  } catch {
    return "c++17";
  }
}

/** A libtorch laid out as `root/include` + `root/lib` (unpacked libtorch or a torch package). */
function fromRoot(root: string, source: string, cxx11Abi: string | null = null): Libtorch | null {
  const inc = `${root}/include`;
  const libDir = `${root}/lib`;
  if (!exists(`${inc}/ATen/ATen.h`) || !exists(`${libDir}/libtorch.so`)) return null;
  return {
    source,
    includes: [inc, `${inc}/torch/csrc/api/include`],
    libDir,
    cxx11Abi,
    cuda: exists(`${libDir}/libtorch_cuda.so`),
    cudaIncludes: [],
    version: versionFromHeader(inc),
    cxxStd: cxxStandard(inc),
  };
}

function debianLibtorch(sysroot: string): Libtorch | null {
  const inc = `${sysroot}/usr/include`;
  for (const arch of ["x86_64-linux-gnu", "aarch64-linux-gnu"]) {
    const libDir = `${sysroot}/usr/lib/${arch}`;
    if (exists(`${inc}/ATen/ATen.h`) && exists(`${libDir}/libtorch.so`)) {
      return {
        source: "Debian libtorch-dev",
        includes: [inc, `${inc}/torch/csrc/api/include`],
        libDir,
        cxx11Abi: null,
        cuda: exists(`${libDir}/libtorch_cuda.so`),
        cudaIncludes: [],
        version: versionFromHeader(inc),
        cxxStd: cxxStandard(inc),
      };
    }
  }
  return null;
}

const PY_PROBE = `
import os, sys, json
try:
    import torch
except Exception as e:
    print(json.dumps({"error": str(e)})); sys.exit(0)
info = {"root": os.path.dirname(torch.__file__), "cuda": torch.version.cuda,
        "abi": int(torch._C._GLIBCXX_USE_CXX11_ABI), "version": torch.__version__}
try:
    from torch.utils import cpp_extension as ce
    info["cuda_home"] = ce.CUDA_HOME
except Exception:
    info["cuda_home"] = None
print(json.dumps(info))
`;

async function pythonLibtorch(
  python: string,
): Promise<(Libtorch & { hasCudaRuntime: boolean }) | null> {
  const r = await run(python, ["-c", PY_PROBE]);
  if (!r.ok) return null;
  let info: {
    root?: string;
    cuda?: string | null;
    abi?: number;
    cuda_home?: string | null;
    version?: string;
    error?: string;
  };
  try {
    info = JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}");
  } catch {
    return null;
  }
  if (!info.root) return null;
  const lt = fromRoot(info.root, `PyTorch of ${python}`, String(info.abi ?? 1));
  if (!lt) return null;
  if (lt.cuda) lt.cudaIncludes = cudaIncludeDirs(info.root, info.cuda_home ?? null);
  if (lt.version === "unknown" && info.version) lt.version = info.version.replace(/\+.*$/, "");
  return { ...lt, hasCudaRuntime: !!info.cuda };
}

/** CUDA runtime headers: CUDA_HOME, the toolkit, or the nvidia pip packages next to torch. */
function cudaIncludeDirs(torchRoot: string | null, cudaHome: string | null): string[] {
  const candidates: string[] = [];
  const envHome = Deno.env.get("CUDA_HOME") ?? Deno.env.get("CUDA_PATH");
  for (const home of [envHome, cudaHome, "/usr/local/cuda"]) {
    if (home) candidates.push(`${home}/include`);
  }
  if (torchRoot) {
    const nvidia = `${torchRoot}/../nvidia`;
    try {
      for (const e of Deno.readDirSync(nvidia)) {
        candidates.push(`${nvidia}/${e.name}/include`);
      }
    } catch { /* no pip CUDA packages */ }
  }
  const found = candidates.filter((d) => exists(`${d}/cuda_runtime_api.h`));
  // other runtime headers (e.g. cublas, cusparse) may live in sibling package dirs: add them all
  if (found.length === 0) return [];
  return [...new Set([...found, ...candidates.filter((d) => exists(d))])];
}

/** Finds a libtorch without installing anything; null when there is none. */
export async function findLibtorch(sysroot = ""): Promise<Libtorch | null> {
  for (const name of ["LIBTORCH", "TORCH_DIR"]) {
    const root = Deno.env.get(name);
    if (!root) continue;
    const lt = fromRoot(root, `$${name}`);
    if (!lt) {
      throw new SetupError(
        `$${name}=${root} does not look like a libtorch: expected ${root}/include/ATen/ATen.h and ` +
          `${root}/lib/libtorch.so (an unpacked libtorch, or a PyTorch package directory)`,
      );
    }
    if (lt.cuda) lt.cudaIncludes = cudaIncludeDirs(root, null);
    return lt;
  }
  const pythons = ["python3", `${sysroot}/usr/bin/python3`];
  const pyFound: Libtorch[] = [];
  for (const py of pythons) {
    const lt = await pythonLibtorch(py);
    if (lt?.hasCudaRuntime) return lt;
    if (lt) pyFound.push(lt);
  }
  return debianLibtorch(sysroot) ?? pyFound[0] ?? null;
}

function isRoot(): boolean {
  try {
    return Deno.uid() === 0;
  } catch {
    return false;
  }
}

/** True when an executable named `cmd` is on PATH. */
function haveCommand(cmd: string): boolean {
  const path = Deno.env.get("PATH") ?? "";
  for (const dir of path.split(":")) {
    if (!dir) continue;
    try {
      const st = Deno.statSync(`${dir}/${cmd}`);
      if (st.isFile && ((st.mode ?? 0o111) & 0o111) !== 0) return true;
    } catch { /* not here */ }
  }
  return false;
}

async function aptInstall(opts: SetupOptions, pkgs: string[]): Promise<boolean> {
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  log(opts, `installing ${pkgs.join(" ")} with apt-get…`);
  let r = await run("apt-get", ["install", "-y", "-q", "--no-install-recommends", ...pkgs], {
    env,
  });
  if (!r.ok) {
    log(opts, "apt-get install failed; refreshing the package lists and retrying…");
    await run("apt-get", ["update", "-q"], { env });
    r = await run("apt-get", ["install", "-y", "-q", "--no-install-recommends", ...pkgs], { env });
  }
  if (!r.ok) log(opts, `apt-get failed:\n${r.stderr.trim().split("\n").slice(-5).join("\n")}`);
  return r.ok;
}

function manualInstallMessage(missing: string[]): string {
  return [
    `missing: ${missing.join(", ")}.`,
    `Install them with:  sudo apt-get install ${missing.join(" ")}`,
    "(Debian/Ubuntu; libopenblas0-pthread matters: with the reference BLAS a training step is ~30x",
    "slower), or point LIBTORCH at an unpacked libtorch / TORCH_DIR at a PyTorch install, then run",
    "`deno task setup` again.",
  ].join("\n");
}

/** Makes sure libtorch, OpenBLAS, the Fashion-MNIST package and a C++ compiler are present. */
export async function ensureDependencies(opts: SetupOptions = {}): Promise<Libtorch> {
  const sysroot = opts.sysroot ?? "";
  const canInstall = opts.install !== false && isRoot() && haveCommand("apt-get");
  let lt = await findLibtorch(sysroot);
  const want: string[] = [];
  if (!lt) want.push("libtorch-dev");
  const debian = !lt || lt.source === "Debian libtorch-dev";
  if (
    debian && !exists(`${sysroot}/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3`) &&
    !exists(`${sysroot}/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3`)
  ) {
    want.push("libopenblas0-pthread");
  }
  if (!exists(`${sysroot}/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz`)) {
    want.push("dataset-fashion-mnist");
  }
  const needCxx = !(haveCommand("g++")) && !(haveCommand("c++"));
  if (needCxx) want.push("g++");
  // the Gloo headers: with Debian's libtorch, from libgloo-dev (pinned by apt to the libgloo0
  // that libtorch already uses)
  if (debian && !findGlooHeaders(lt, sysroot)) want.push("libgloo-dev");
  if (want.length > 0 && canInstall) {
    await aptInstall(opts, want);
    lt = await findLibtorch(sysroot);
  }
  if (!lt) throw new SetupError(`libtorch not found. ${manualInstallMessage(want)}`);
  if (!(haveCommand("g++")) && !(haveCommand("c++"))) {
    throw new SetupError(`no C++ compiler found. ${manualInstallMessage(["g++"])}`);
  }
  for (const pkg of want.filter((p) => !["libtorch-dev", "g++", "libgloo-dev"].includes(p))) {
    const still = pkg === "dataset-fashion-mnist"
      ? !exists(`${sysroot}/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz`)
      : !exists(`${sysroot}/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3`);
    if (still) log(opts, `warning: ${pkg} is not installed. ${manualInstallMessage([pkg])}`);
  }
  await resolveGloo(lt, opts);
  lt.distributed = await hasC10d(lt);
  return lt;
}

/** The first directory (libtorch's own include dirs, then /usr/include) with the Gloo headers. */
function findGlooHeaders(lt: Libtorch | null, sysroot: string): string | null {
  const dirs = [...(lt?.includes ?? []), `${sysroot}/usr/include`];
  return dirs.find((d) => exists(`${d}/gloo/algorithm.h`)) ?? null;
}

/** The Gloo headers unpacked into the cache by an earlier setup, for this libgloo0 version. */
function cachedGlooDir(version: string): string {
  return `${userCacheDir()}/gloo/libgloo-dev_${version.replaceAll(/[^A-Za-z0-9.+~_-]/g, "_")}`;
}

/**
 * Makes the Gloo headers available for the build: libtorch's own (PyTorch ships them in some
 * releases), the system's (Debian libgloo-dev), or — when not root — Debian's libgloo-dev of
 * the installed libgloo0's version, downloaded with `apt-get download` and unpacked into the
 * cache (`dpkg-deb -x`; nothing is installed). Sets `lt.gloo` / `lt.glooIncludes`; when none
 * can be had, warns: the shim is then built without Gloo and distributed calls say so.
 */
async function resolveGloo(lt: Libtorch, opts: SetupOptions): Promise<void> {
  const sysroot = opts.sysroot ?? "";
  const found = findGlooHeaders(lt, sysroot);
  if (found) {
    lt.gloo = found;
    lt.glooIncludes = lt.includes.includes(found) || found === "/usr/include" ? [] : [found];
    return;
  }
  lt.gloo = null;
  lt.glooIncludes = [];
  if (lt.source !== "Debian libtorch-dev") {
    log(
      opts,
      `warning: the Gloo headers (gloo/algorithm.h) are not in ${lt.includes[0]}: the shim is ` +
        "built without Gloo (no distributed training on CPU). Debian/Ubuntu: apt-get install " +
        "libgloo-dev, then `deno task setup` again",
    );
    return;
  }
  const q = await run("dpkg-query", ["-W", "-f=${Version}", "libgloo0"]);
  const version = q.ok ? q.stdout.trim() : "";
  if (version) {
    const dir = cachedGlooDir(version);
    const inc = `${dir}/usr/include`;
    if (!exists(`${inc}/gloo/algorithm.h`) && opts.install !== false) {
      await downloadGloo(version, dir, opts);
    }
    if (exists(`${inc}/gloo/algorithm.h`)) {
      lt.gloo = `libgloo-dev ${version} unpacked in ${dir}`;
      lt.glooIncludes = [inc];
      return;
    }
  }
  log(
    opts,
    "warning: the Gloo headers were not found and could not be fetched: the shim is built " +
      "without Gloo (no distributed training). Install them with `sudo apt-get install " +
      "libgloo-dev` (or allow `apt-get download` to reach the package mirror), then run " +
      "`deno task setup` again",
  );
}

/** `apt-get download libgloo-dev=VERSION` into a temporary directory, unpacked into `dir`. */
async function downloadGloo(version: string, dir: string, opts: SetupOptions): Promise<void> {
  if (!haveCommand("apt-get") || !haveCommand("dpkg-deb")) return;
  log(opts, `fetching the Gloo headers (libgloo-dev ${version}) into ${dir}…`);
  const tmp = Deno.makeTempDirSync({ prefix: "densedino-gloo-" });
  try {
    const dl = await new Deno.Command("apt-get", {
      args: ["download", "-q", `libgloo-dev=${version}`],
      cwd: tmp,
      stdout: "piped",
      stderr: "piped",
    }).output().catch(() => null);
    const deb = [...Deno.readDirSync(tmp)].find((e) => e.name.endsWith(".deb"));
    if (!dl?.success || !deb) {
      const err = dl ? new TextDecoder().decode(dl.stderr).trim().split("\n").slice(-2) : [];
      log(opts, `apt-get download libgloo-dev failed${err.length ? `: ${err.join(" ")}` : ""}`);
      return;
    }
    const staged = `${tmp}/x`;
    const r = await run("dpkg-deb", ["-x", `${tmp}/${deb.name}`, staged]);
    if (!r.ok || !exists(`${staged}/usr/include/gloo/algorithm.h`)) {
      log(opts, `dpkg-deb -x failed: ${r.stderr.trim()}`);
      return;
    }
    Deno.mkdirSync(`${dir}/..`, { recursive: true });
    try {
      Deno.renameSync(staged, dir); // atomic: a half-unpacked directory is never used
    } catch {
      // another setup unpacked it meanwhile
    }
  } finally {
    Deno.removeSync(tmp, { recursive: true });
  }
}

/** True unless libtorch_cpu visibly lacks c10d (nm finds no TCPStore); true when unsure. */
async function hasC10d(lt: Libtorch): Promise<boolean> {
  const lib = `${lt.libDir}/libtorch_cpu.so`;
  if (!exists(lib) || !haveCommand("nm")) return true;
  const r = await run("nm", ["-D", "--defined-only", lib]);
  if (!r.ok) return true;
  return r.stdout.includes("_ZN4c10d8TCPStore");
}

async function readSource(rel: string): Promise<string> {
  const url = new URL(rel, import.meta.url);
  if (url.protocol === "file:") return await Deno.readTextFile(url);
  const res = await fetch(url);
  if (!res.ok) throw new SetupError(`could not fetch ${url}: HTTP ${res.status}`);
  return await res.text();
}

async function sha256(text: string): Promise<string> {
  const buf = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function compileFlags(lt: Libtorch, srcDir: string): string[] {
  const flags = [
    "-O2",
    "-std=c++17",
    "-fPIC",
    "-fvisibility=hidden",
    "-Wall",
    "-Wno-unused-parameter",
  ];
  flags.push(`-I${srcDir}/include`, `-I${srcDir}/src`);
  // /usr/include is already a system directory; naming it again breaks #include_next
  for (const inc of lt.includes) if (inc !== "/usr/include") flags.push(`-isystem`, inc);
  if (lt.cxx11Abi !== null) flags.push(`-D_GLIBCXX_USE_CXX11_ABI=${lt.cxx11Abi}`);
  if (lt.cuda && lt.cudaIncludes.length > 0) {
    flags.push("-DDD_WITH_CUDA");
    for (const inc of lt.cudaIncludes) flags.push("-isystem", inc);
  }
  // dist.cpp enables Gloo (and NCCL) itself when their headers are visible (__has_include)
  for (const inc of lt.glooIncludes ?? []) flags.push("-isystem", inc);
  if (lt.distributed === false) flags.push("-DDD_NO_DIST");
  return flags;
}

function linkFlags(lt: Libtorch): string[] {
  const flags = ["-shared", `-L${lt.libDir}`, `-Wl,-rpath,${lt.libDir}`];
  if (lt.cuda) {
    // without --no-as-needed the linker drops libtorch_cuda (nothing references it directly)
    // and CUDA then reports itself unavailable at run time
    flags.push("-Wl,--no-as-needed", "-ltorch_cuda", "-lc10_cuda", "-Wl,--as-needed");
  }
  flags.push("-ltorch", "-ltorch_cpu", "-lc10");
  return flags;
}

/**
 * The fingerprint of a build: the sources, the libtorch (paths, version, ABI, CUDA), the
 * compile and link flags and the compiler. The shim is rebuilt exactly when it changes.
 */
export async function buildStamp(
  lt: Libtorch,
  sources: string[],
  compiler: string,
): Promise<string> {
  return await sha256(JSON.stringify({
    sources,
    libtorch: { ...lt, source: undefined },
    compile: compileFlags(lt, "SRC"),
    link: linkFlags(lt),
    compiler,
  }));
}

/** Result of {@link setup}. */
export interface SetupResult {
  /** path of the built library */
  library: string;
  /** false when the existing build was up to date */
  rebuilt: boolean;
  libtorch: Libtorch;
}

/** Finds (or installs) libtorch and builds the shim if needed. */
export async function setup(opts: SetupOptions = {}): Promise<SetupResult> {
  const lt = await ensureDependencies(opts);
  log(opts, `libtorch ${lt.version} (${lt.source}; ${lt.cuda ? "CUDA" : "CPU"}) in ${lt.libDir}`);
  if (lt.gloo) log(opts, `Gloo headers: ${lt.gloo}`);
  if (lt.distributed === false) {
    log(opts, "warning: this libtorch has no c10d (distributed): the shim is built without it");
  }
  if (lt.cuda && lt.cudaIncludes.length === 0) {
    log(
      opts,
      "warning: CUDA runtime headers not found (set CUDA_HOME): CUDA tensors work, but " +
        "CUDA memory statistics and synchronize will report themselves unavailable",
    );
  }
  const outDir = opts.outDir ?? localBuildDir() ?? cacheBuildDir();
  const library = `${outDir}/${LIB_FILE}`;
  const files = [...SOURCES, ...HEADERS];
  const texts = await Promise.all(files.map(readSource));
  const cxx = (haveCommand("g++")) ? "g++" : "c++";
  const cxxVersion = (await run(cxx, ["--version"])).stdout.split("\n")[0];
  const stamp = await buildStamp(lt, texts, cxxVersion);
  const stampFile = `${outDir}/stamp.txt`;
  if (!opts.force && exists(library)) {
    try {
      if (Deno.readTextFileSync(stampFile).trim() === stamp) {
        log(opts, `shim up to date: ${library}`);
        return { library, rebuilt: false, libtorch: lt };
      }
    } catch { /* no stamp: rebuild */ }
  }
  Deno.mkdirSync(outDir, { recursive: true });
  // stage the sources in a private directory (from disk or fetched), so URL builds work too
  const srcDir = Deno.makeTempDirSync({ prefix: "densedino-src-" });
  try {
    Deno.mkdirSync(`${srcDir}/src`, { recursive: true });
    Deno.mkdirSync(`${srcDir}/include`, { recursive: true });
    files.forEach((f, i) => Deno.writeTextFileSync(`${srcDir}/${f}`, texts[i]));
    const flags = compileFlags(lt, srcDir);
    const t0 = performance.now();
    log(opts, `compiling ${SOURCES.length} files with ${cxx}…`);
    const jobs = Math.max(1, opts.jobs ?? navigator.hardwareConcurrency ?? 2);
    const queue = [...SOURCES];
    const failures: string[] = [];
    await Promise.all(Array.from({ length: Math.min(jobs, queue.length) }, async () => {
      for (let f = queue.shift(); f !== undefined; f = queue.shift()) {
        const r = await run(cxx, [...flags, "-c", `${srcDir}/${f}`, "-o", `${srcDir}/${f}.o`]);
        if (!r.ok) failures.push(`${f}:\n${r.stderr}`);
      }
    }));
    if (failures.length > 0) throw new SetupError(`compilation failed:\n${failures.join("\n")}`);
    // link to a temporary name, then rename: a half-written library is never loaded
    const tmp = `${library}.tmp-${Deno.pid}`;
    const objs = SOURCES.map((f) => `${srcDir}/${f}.o`);
    const r = await run(cxx, [...objs, "-o", tmp, ...linkFlags(lt)]);
    if (!r.ok) throw new SetupError(`linking failed:\n${r.stderr}`);
    Deno.renameSync(tmp, library);
    Deno.writeTextFileSync(`${stampFile}.tmp`, stamp + "\n");
    Deno.renameSync(`${stampFile}.tmp`, stampFile);
    log(opts, `built ${library} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return { library, rebuilt: true, libtorch: lt };
  } finally {
    Deno.removeSync(srcDir, { recursive: true });
  }
}

const HELP = `deno task setup — find or install libtorch and build the native shim

Usage: deno run -A native/setup.ts [options]

Options:
  --force         rebuild even when the build is up to date (default: false)
  --out-dir DIR   build directory (default: native/build in a checkout, else the per-user
                  cache ~/.cache/densedino/native, or $DENSEDINO_CACHE/native)
  --no-install    never run apt-get, only report what is missing (default: install when root;
                  when not root, the Gloo headers are fetched with apt-get download into the
                  cache)
  --jobs N        parallel compiler jobs (default: the number of cores)
  --quiet         no progress on stderr (default: false)
  --help          this text

Environment: LIBTORCH / TORCH_DIR (a libtorch or PyTorch install to build against),
CUDA_HOME (CUDA headers for a CUDA build).
Prints one JSON line on stdout: {"library": …, "rebuilt": …, "libtorch": …, "cuda": …}.`;

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      force: { type: "boolean", default: false },
      "out-dir": { type: "string" },
      "no-install": { type: "boolean", default: false },
      quiet: { type: "boolean", default: false },
      jobs: { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  const jobs = values.jobs === undefined ? undefined : Number(values.jobs);
  if (jobs !== undefined && !(Number.isSafeInteger(jobs) && jobs >= 1)) {
    console.error(`setup: --jobs must be an integer ≥ 1, got ${values.jobs}`);
    Deno.exit(2);
  }
  if (values.help) {
    console.log(HELP);
    Deno.exit(0);
  }
  try {
    const r = await setup({
      force: values.force,
      outDir: values["out-dir"],
      install: !values["no-install"],
      verbose: !values.quiet,
      jobs,
      sysroot: Deno.env.get("DENSEDINO_SYSROOT") ?? "",
    });
    console.log(JSON.stringify({
      library: r.library,
      rebuilt: r.rebuilt,
      libtorch: r.libtorch.version,
      source: r.libtorch.source,
      cuda: r.libtorch.cuda,
      gloo: r.libtorch.gloo != null,
    }));
  } catch (e) {
    if (e instanceof SetupError) {
      console.error(`setup failed: ${e.message}`);
      Deno.exit(1);
    }
    throw e;
  }
}
