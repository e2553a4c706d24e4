/**
 * `mod.ts` importable from a URL: serve this checkout on 127.0.0.1, build the shim from
 * sources fetched relative to `native/setup.ts`'s URL into an empty per-user cache, then import
 * `mod.ts` over HTTP in a subprocess with an empty Deno cache and compute something.
 */
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url).pathname;

function contentType(path: string): string {
  if (path.endsWith(".ts")) return "application/typescript; charset=utf-8";
  if (path.endsWith(".json")) return "application/json";
  return "text/plain; charset=utf-8";
}

async function run(args: string[], env: Record<string, string>, cwd: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    env,
    cwd,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("mod.ts imports from a URL with an empty Deno cache, after a URL-only setup", async () => {
  const served: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    if (path.includes("..")) return new Response("bad path", { status: 400 });
    served.push(path);
    try {
      const body = await Deno.readFile(`${ROOT}${path.slice(1)}`);
      return new Response(body, { headers: { "content-type": contentType(path) } });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  const base = `http://127.0.0.1:${server.addr.port}`;
  const work = await Deno.makeTempDir({ prefix: "dd-url-" });
  try {
    const env = (denoDir: string) => ({
      DENO_DIR: `${work}/${denoDir}`,
      DENSEDINO_CACHE: `${work}/cache`,
      DENSEDINO_NATIVE: "",
      NO_COLOR: "1",
    });
    const script = `${work}/use.ts`;
    await Deno.writeTextFile(
      script,
      `import * as dd from "${base}/mod.ts";\n` +
        `const a = dd.tensor([[1, 2], [3, 4]]);\n` +
        `const s = dd.scope(() => a.matmul(a).sum().item());\n` +
        `a.free();\n` +
        `console.log(JSON.stringify({ sum: s, live: dd.liveTensors(), torch: dd.torchVersion() }));\n`,
    );

    // 1. before setup: the import works but the first op names the command that builds the shim
    const before = await run(["run", "-A", script], env("deno-a"), work);
    assert.notEqual(before.code, 0);
    assert.match(before.stderr, /native library was not found/);
    assert.ok(before.stderr.includes("native/setup.ts"), before.stderr);

    // 2. setup from the URL: sources fetched next to setup.ts, built into the per-user cache
    const setup = await run(
      ["run", "-A", `${base}/native/setup.ts`, "--no-install", "--quiet"],
      env("deno-b"),
      work,
    );
    assert.equal(setup.code, 0, setup.stderr);
    const built = JSON.parse(setup.stdout.trim().split("\n").pop()!);
    assert.equal(built.library, `${work}/cache/native/libdensedino.so`);
    assert.ok(served.includes("/native/src/core.cpp"), "C++ sources were fetched over HTTP");
    assert.ok(served.includes("/native/include/densedino.h"));

    // 3. a fresh, empty Deno cache imports mod.ts over HTTP and loads the cached shim
    const r = await run(["run", "-A", script], env("deno-c"), work);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split("\n").pop()!);
    assert.equal(out.sum, 7 + 10 + 15 + 22);
    assert.equal(out.live, 0);
    assert.match(out.torch, /^\d+\.\d+/);
    assert.ok(served.includes("/mod.ts"));
  } finally {
    await server.shutdown();
    await Deno.remove(work, { recursive: true });
  }
});
