/**
 * `deno task compat`: compiles the shim's sources (syntax and types only) against newer
 * libtorch headers than the one installed — Debian unstable's `libtorch-dev` (CPU) and
 * contrib's `libtorch-cuda-dev` (CUDA, with `-DDD_WITH_CUDA`) — so that API drift in libtorch
 * 2.x is caught on a CPU-only machine. `dist.cpp` is checked with sid's Gloo headers
 * (`libgloo-dev`, unpacked likewise); its NCCL part only where `nccl.h` is found. The packages
 * are downloaded into `~/.cache/densedino/compat/` and unpacked there; nothing is installed.
 *
 * Needs network access to deb.debian.org, `dpkg-deb`, `xz` and g++; for the CUDA variant the
 * CUDA runtime headers (`$CUDA_HOME/include` or `/usr/local/cuda/include`).
 *
 * @module
 */
import { userCacheDir } from "./paths.ts";

const MIRROR = "http://deb.debian.org/debian";
const VARIANTS = [
  { name: "cpu", component: "main", pkg: "libtorch-dev", cuda: false },
  { name: "cuda", component: "contrib", pkg: "libtorch-cuda-dev", cuda: true },
];
const SOURCES = ["core.cpp", "ops.cpp", "train.cpp", "cuda.cpp", "dist.cpp"];

async function sh(
  cmd: string,
  args: string[],
  cwd?: string,
): Promise<{ ok: boolean; out: string }> {
  const r = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { ok: r.success, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

async function download(url: string, path: string): Promise<void> {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
  await Deno.writeFile(path, new Uint8Array(await res.arrayBuffer()));
}

async function locate(
  component: string,
  pkg: string,
  dir: string,
): Promise<{ version: string; file: string }> {
  const index = `${dir}/Packages-${component}`;
  await download(`${MIRROR}/dists/sid/${component}/binary-amd64/Packages.xz`, `${index}.xz`);
  const r = await sh("xz", ["-d", "-f", `${index}.xz`]);
  if (!r.ok) throw new Error(`xz: ${r.out}`);
  const text = await Deno.readTextFile(index);
  const block = text.split("\n\n").find((b) => b.startsWith(`Package: ${pkg}\n`));
  if (!block) throw new Error(`${pkg} not found in sid/${component}`);
  const field = (k: string) => block.match(new RegExp(`^${k}: (.*)$`, "m"))?.[1] ?? "";
  return { version: field("Version"), file: field("Filename") };
}

/** Downloads and unpacks `pkg` from sid/`component` into the cache (once); returns its root. */
async function unpack(component: string, pkg: string, dir: string): Promise<string> {
  const { version, file } = await locate(component, pkg, dir);
  const root = `${dir}/${pkg}_${version}`;
  try {
    Deno.statSync(`${root}/usr/include`);
  } catch {
    const deb = `${dir}/${file.split("/").pop()}`;
    console.error(`[compat] downloading ${pkg} ${version}…`);
    await download(`${MIRROR}/${file}`, deb);
    const r = await sh("dpkg-deb", ["-x", deb, root]);
    if (!r.ok) throw new Error(`dpkg-deb: ${r.out}`);
  }
  return root;
}

async function main(): Promise<number> {
  const dir = `${userCacheDir()}/compat`;
  await Deno.mkdir(dir, { recursive: true });
  const gloo = `${await unpack("main", "libgloo-dev", dir)}/usr/include`;
  const here = new URL(".", import.meta.url).pathname;
  const cudaInc = [Deno.env.get("CUDA_HOME"), "/usr/local/cuda"].filter(Boolean)
    .map((h) => `${h}/include`)
    .find((d) => {
      try {
        Deno.statSync(`${d}/cuda_runtime_api.h`);
        return true;
      } catch {
        return false;
      }
    });
  let failures = 0;
  for (const v of VARIANTS) {
    const { version, file } = await locate(v.component, v.pkg, dir);
    const root = `${dir}/${v.pkg}_${version}`;
    try {
      Deno.statSync(`${root}/usr/include/ATen/ATen.h`);
    } catch {
      const deb = `${dir}/${file.split("/").pop()}`;
      console.error(`[compat] downloading ${v.pkg} ${version}…`);
      await download(`${MIRROR}/${file}`, deb);
      const r = await sh("dpkg-deb", ["-x", deb, root]);
      if (!r.ok) throw new Error(`dpkg-deb: ${r.out}`);
    }
    const inc = `${root}/usr/include`;
    const aten = await Deno.readTextFile(`${inc}/ATen/ATen.h`);
    const std = /C\+\+20 or later/.test(aten) ? "c++20" : "c++17";
    const flags = [`-std=${std}`, "-fsyntax-only", "-Wall", `-I${here}include`, `-I${here}src`];
    flags.push("-isystem", inc, "-isystem", `${inc}/torch/csrc/api/include`, "-isystem", gloo);
    if (v.cuda) {
      if (!cudaInc) {
        console.error(`[compat] ${v.name}: skipped (no CUDA runtime headers; set CUDA_HOME)`);
        continue;
      }
      flags.push("-DDD_WITH_CUDA", "-isystem", cudaInc);
    }
    for (const src of SOURCES) {
      const r = await sh("g++", [...flags, `${here}src/${src}`]);
      const status = r.ok ? "ok" : "FAILED";
      if (!r.ok) failures++;
      console.log(
        `${v.pkg} ${version} (${std}${v.cuda ? ", DD_WITH_CUDA" : ""}) ${src}: ${status}`,
      );
      if (!r.ok) {
        console.log(r.out.split("\n").filter((l) => l.includes("error")).slice(0, 10).join("\n"));
      }
    }
  }
  return failures === 0 ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());
