/**
 * Tests of `lib/torch/dist.ts`: c10d collectives between two processes on 127.0.0.1 (Gloo),
 * checked against closed forms; a dead peer and a stuck peer turn into errors within the
 * timeout (no hang, no orphan); rendezvous failures and a bad environment name the fix.
 */
import assert from "node:assert/strict";
import { distEnv, DistError, initProcessGroup, ProcessGroup, tensor } from "../../lib/torch/mod.ts";
import { alive, freePort, spawnDeno } from "../_process.ts";

const WORKER = new URL("./_dist_worker.ts", import.meta.url).pathname;

function startRank(rank: number, world: number, port: number, mode: string, timeoutMs: number) {
  return spawnDeno(WORKER, [mode], {
    RANK: String(rank),
    WORLD_SIZE: String(world),
    MASTER_ADDR: "127.0.0.1",
    MASTER_PORT: String(port),
    DENSEDINO_DIST_TIMEOUT_MS: String(timeoutMs),
  });
}

function json(stdout: string): Record<string, unknown> {
  return JSON.parse(stdout.trim().split("\n").pop()!);
}

Deno.test("the shim has Gloo (the build found its headers); NCCL only in CUDA builds", () => {
  assert.equal(
    ProcessGroup.available("gloo"),
    true,
    "built without Gloo: run `deno task setup` (it installs or fetches libgloo-dev)",
  );
  assert.equal(typeof ProcessGroup.available("nccl"), "boolean");
});

Deno.test("two ranks: all_reduce (sum/avg/min/max, bucketed), broadcast, all_gather, gradients, JSON", async () => {
  const port = freePort();
  const ranks = [0, 1].map((r) => startRank(r, 2, port, "collectives", 20_000));
  const res = await Promise.all(ranks.map((r) => r.done));
  for (const [r, o] of res.entries()) {
    assert.equal(o.code, 0, `rank ${r} failed:\n${o.stderr}`);
    const out = json(o.stdout);
    assert.equal(out.rank, r);
    assert.equal(out.world, 2);
    assert.equal(out.leaked, 0);
  }
});

Deno.test("a killed peer makes the survivor's next collective fail at once, naming the cause", async () => {
  const port = freePort();
  const ranks = [0, 1].map((r) => startRank(r, 2, port, "die", 10_000));
  const [r0, r1] = await Promise.all(ranks.map((r) => r.done));
  assert.equal(r1.code, 9, r1.stderr);
  assert.equal(r0.code, 0, r0.stderr);
  const out = json(r0.stdout);
  assert.equal(out.isDistError, true);
  assert.match(String(out.error), /all_reduce failed \(rank 0 of 2, gloo/);
  assert.match(String(out.error), /another rank probably crashed or was killed/);
  assert.ok((out.failSeconds as number) < 5, `detected after ${out.failSeconds} s (timeout 10 s)`);
  assert.equal(out.broken, true);
  // the group is broken: the next call fails immediately with the first error
  assert.match(String(out.second), /broken process group.*earlier collective failed/);
  assert.ok((out.secondSeconds as number) < 0.5);
  for (const r of ranks) assert.equal(alive(r.child.pid), false, "no orphan");
});

Deno.test("a stuck peer makes the other rank fail after the timeout, not hang", async () => {
  const port = freePort();
  const ranks = [0, 1].map((r) => startRank(r, 2, port, "stuck", 2000));
  try {
    const r0 = await ranks[0].done;
    assert.equal(r0.code, 0, r0.stderr);
    const out = json(r0.stdout);
    assert.equal(out.isDistError, true);
    assert.match(String(out.error), /Timed out waiting 2000ms/);
    assert.match(String(out.error), /raise the timeout/);
    const s = out.failSeconds as number;
    assert.ok(s >= 1.5 && s < 10, `failed after ${s} s with a 2 s timeout`);
  } finally {
    ranks[1].child.kill("SIGKILL");
    await ranks[1].done;
  }
  for (const r of ranks) assert.equal(alive(r.child.pid), false, "no orphan");
});

Deno.test("rendezvous without rank 0 fails within the timeout, saying what to check", async () => {
  const port = freePort();
  const r1 = await startRank(1, 2, port, "join", 1500).done;
  assert.notEqual(r1.code, 0);
  assert.match(
    r1.stderr,
    /DistError: initProcessGroup: rendezvous at 127\.0\.0\.1:\d+ \(rank 1 of 2, timeout 1500 ms\) failed/,
  );
  assert.match(r1.stderr, /not all WORLD_SIZE=2 ranks joined/);
  assert.ok(r1.seconds < 15, `took ${r1.seconds} s`);
});

Deno.test("rank 0 alone times out waiting for the others, naming the rendezvous", async () => {
  const port = freePort();
  const r0 = await startRank(0, 2, port, "join", 1500).done;
  assert.notEqual(r0.code, 0);
  assert.match(r0.stderr, /rendezvous at 127\.0\.0\.1:\d+ \(rank 0 of 2, timeout 1500 ms\) failed/);
  assert.match(r0.stderr, /not all WORLD_SIZE=2 ranks joined/);
  assert.ok(r0.seconds < 15, `took ${r0.seconds} s`);
});

Deno.test("a MASTER_PORT in use is reported as such", async () => {
  const l = Deno.listen({ hostname: "0.0.0.0", port: 0 });
  try {
    const port = (l.addr as Deno.NetAddr).port;
    const r0 = await startRank(0, 2, port, "join", 1500).done;
    assert.notEqual(r0.code, 0);
    assert.match(r0.stderr, new RegExp(`MASTER_PORT ${port} is in use on this machine`));
  } finally {
    l.close();
  }
});

Deno.test("a group of one works in-process, and a destroyed group refuses calls", () => {
  const pg = initProcessGroup({ rank: 0, worldSize: 1, masterPort: freePort(), timeoutMs: 5000 });
  try {
    assert.equal(pg.isMain, true);
    assert.equal(pg.backend, "gloo");
    using t = tensor([1, 2], { dtype: "float32" });
    pg.allReduce(t, "avg");
    assert.deepEqual(Array.from(t.toTypedArray() as Float32Array), [1, 2]);
    using g = pg.allGather(t);
    assert.deepEqual(g.shape, [1, 2]);
    assert.deepEqual(pg.broadcastJson({ a: 1 }), { a: 1 });
    pg.barrier();
  } finally {
    pg.destroy();
  }
  assert.equal(pg.isDestroyed, true);
  using t = tensor([1], { dtype: "float32" });
  assert.throws(() => pg.allReduce(t), /already destroyed/);
});

Deno.test("distEnv reads torchrun's variables and names a bad one", () => {
  assert.equal(distEnv({}), null);
  assert.deepEqual(
    distEnv({
      RANK: "1",
      WORLD_SIZE: "4",
      LOCAL_RANK: "1",
      LOCAL_WORLD_SIZE: "2",
      MASTER_PORT: "1234",
    }),
    {
      rank: 1,
      worldSize: 4,
      localRank: 1,
      localWorldSize: 2,
      masterAddr: "127.0.0.1",
      masterPort: 1234,
    },
  );
  assert.throws(() => distEnv({ WORLD_SIZE: "2" }), /RANK is not/);
  assert.throws(() => distEnv({ WORLD_SIZE: "2", RANK: "2" }), /RANK=2 is outside 0…1/);
  assert.throws(() => distEnv({ WORLD_SIZE: "two", RANK: "0" }), /WORLD_SIZE="two"/);
  assert.throws(
    () => distEnv({ WORLD_SIZE: "2", RANK: "0", MASTER_PORT: "70000" }),
    /MASTER_PORT="70000" is not an integer in 1…65535/,
  );
  assert.throws(() => initProcessGroup({ rank: 2, worldSize: 2 }), DistError);
  assert.throws(() => initProcessGroup({ rank: 0, worldSize: 1, timeoutMs: 0 }), /timeoutMs/);
});
