/**
 * Tests of `native/setup.ts`: failure without libtorch, the rebuild fingerprint, and the
 * no-op when the build is up to date.
 */
import assert from "node:assert/strict";
import { buildStamp, DEBIAN_PACKAGES, type Libtorch } from "../../native/setup.ts";

const SETUP = new URL("../../native/setup.ts", import.meta.url).pathname;

async function runSetup(args: string[], env: Record<string, string>, clearEnv = false) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SETUP, ...args],
    env,
    clearEnv,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("setup without libtorch, apt or root fails naming the packages to install", async () => {
  const empty = await Deno.makeTempDir({ prefix: "dd-sysroot-" });
  const bin = await Deno.makeTempDir({ prefix: "dd-bin-" });
  try {
    // a PATH with no apt-get, no python3 and no compiler; system paths probed under an empty root
    const r = await runSetup(["--out-dir", `${empty}/out`], {
      PATH: bin,
      HOME: empty,
      DENSEDINO_SYSROOT: empty,
    }, true);
    assert.equal(r.code, 1, `expected exit 1, got ${r.code}\n${r.stderr}`);
    assert.match(r.stderr, /setup failed: libtorch not found/);
    for (const pkg of DEBIAN_PACKAGES) {
      assert.ok(r.stderr.includes(pkg), `message names ${pkg}:\n${r.stderr}`);
    }
    assert.match(r.stderr, /apt-get install/);
    assert.match(r.stderr, /LIBTORCH/);
    assert.equal(r.stdout, "");
  } finally {
    await Deno.remove(empty, { recursive: true });
    await Deno.remove(bin, { recursive: true });
  }
});

Deno.test("setup rejects a LIBTORCH that is not a libtorch, naming what it expected", async () => {
  const dir = await Deno.makeTempDir({ prefix: "dd-notorch-" });
  try {
    const r = await runSetup(["--no-install", "--out-dir", `${dir}/out`], {
      LIBTORCH: dir,
      PATH: Deno.env.get("PATH") ?? "",
      HOME: dir,
    }, true);
    assert.equal(r.code, 1);
    assert.ok(r.stderr.includes(`$LIBTORCH=${dir} does not look like a libtorch`), r.stderr);
    assert.match(r.stderr, /include\/ATen\/ATen\.h/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the build fingerprint changes with the sources, the libtorch and the compiler", async () => {
  const lt: Libtorch = {
    source: "test",
    includes: ["/x/include"],
    libDir: "/x/lib",
    cxx11Abi: null,
    cuda: false,
    cudaIncludes: [],
    version: "1.13.0",
    cxxStd: "c++17",
  };
  const base = await buildStamp(lt, ["int a;", "int b;"], "g++ 12");
  assert.equal(await buildStamp(lt, ["int a;", "int b;"], "g++ 12"), base, "deterministic");
  assert.notEqual(await buildStamp(lt, ["int a;", "int c;"], "g++ 12"), base, "source change");
  assert.notEqual(
    await buildStamp({ ...lt, version: "2.11.0" }, ["int a;", "int b;"], "g++ 12"),
    base,
  );
  assert.notEqual(
    await buildStamp({ ...lt, libDir: "/y/lib" }, ["int a;", "int b;"], "g++ 12"),
    base,
  );
  assert.notEqual(await buildStamp({ ...lt, cuda: true }, ["int a;", "int b;"], "g++ 12"), base);
  assert.notEqual(
    await buildStamp({ ...lt, cxxStd: "c++20" }, ["int a;", "int b;"], "g++ 12"),
    base,
  );
  assert.notEqual(await buildStamp(lt, ["int a;", "int b;"], "g++ 13"), base, "compiler change");
  // the Gloo headers (found or not, and where) and a libtorch without c10d change the build
  assert.notEqual(
    await buildStamp(
      { ...lt, gloo: "/usr/include", glooIncludes: [] },
      ["int a;", "int b;"],
      "g++ 12",
    ),
    base,
    "Gloo headers found",
  );
  assert.notEqual(
    await buildStamp({ ...lt, gloo: "c", glooIncludes: ["/c/gloo/usr/include"] }, [
      "int a;",
      "int b;",
    ], "g++ 12"),
    await buildStamp({ ...lt, gloo: "c", glooIncludes: [] }, ["int a;", "int b;"], "g++ 12"),
    "Gloo include directory",
  );
  assert.notEqual(
    await buildStamp({ ...lt, distributed: false }, ["int a;", "int b;"], "g++ 12"),
    base,
    "libtorch without c10d",
  );
  // where the libtorch was found does not matter, only what it is
  assert.equal(
    await buildStamp({ ...lt, source: "elsewhere" }, ["int a;", "int b;"], "g++ 12"),
    base,
  );
});

Deno.test("setup is a no-op when the shim is up to date", async () => {
  const r = await runSetup(["--quiet", "--no-install"], {});
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split("\n").pop()!);
  assert.equal(out.rebuilt, false);
  assert.match(out.library, /libdensedino\.so$/);
});
