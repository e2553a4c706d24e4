/**
 * `scripts/launch.ts` (issue 8): torchrun's environment for each rank (one and several
 * machines), rank 0's stdout untouched and other output prefixed, a failing rank stopping the
 * others with a message naming it, forwarded signals, no orphan when the launcher itself is
 * killed, and bad flags exiting 2 with a message naming the flag.
 */
import assert from "node:assert/strict";
import { parseLaunchArgs } from "../../scripts/launch.ts";
import { assertUsageError, runScript, scriptPath } from "./_run.ts";
import { alive, denoCommand } from "../_process.ts";

const LAUNCH = scriptPath("launch.ts");
const PROBE = new URL("./_launch_probe.ts", import.meta.url).pathname;

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dd-launch-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function pids(dir: string, n: number): Promise<number[]> {
  const t0 = performance.now();
  while (true) {
    const got = await Promise.all(
      Array.from({ length: n }, (_, r) => Deno.readTextFile(`${dir}/pid-${r}`).catch(() => "")),
    );
    if (got.every((s) => s !== "")) return got.map(Number);
    assert.ok(performance.now() - t0 < 60_000, "the ranks did not start within 60 s");
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function gone(ps: number[], withinMs: number): Promise<void> {
  const t0 = performance.now();
  while (ps.some(alive)) {
    assert.ok(performance.now() - t0 < withinMs, `still running: ${ps.filter(alive)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function spawnLaunch(args: string[], env: Record<string, string>): Deno.ChildProcess {
  return denoCommand(LAUNCH, args, env).spawn();
}

Deno.test("each rank gets torchrun's environment; rank 0's stdout passes unchanged", async () => {
  await withDir(async (dir) => {
    const r = await runScript(
      LAUNCH,
      ["--nproc", "2", "--dist-timeout", "1234", PROBE, "--x", "1"],
      { PROBE_DIR: dir },
    );
    assert.equal(r.code, 0, r.stderr);
    const rank0 = JSON.parse(r.stdout.trim());
    const port = rank0.MASTER_PORT;
    assert.match(port, /^\d+$/, "a free port was chosen");
    assert.deepEqual(rank0, {
      RANK: "0",
      WORLD_SIZE: "2",
      LOCAL_RANK: "0",
      LOCAL_WORLD_SIZE: "2",
      MASTER_ADDR: "127.0.0.1",
      MASTER_PORT: port,
      OMP_NUM_THREADS: Deno.env.get("OMP_NUM_THREADS") ?? "1",
      DENSEDINO_DIST_TIMEOUT_MS: "1234",
      args: ["--x", "1"],
    });
    const line = r.stderr.split("\n").find((l) => l.startsWith("[rank 1] {"));
    assert.ok(line, `rank 1's stdout is prefixed on stderr:\n${r.stderr}`);
    assert.equal(JSON.parse(line.slice("[rank 1] ".length)).RANK, "1");
    assert.ok(r.stderr.includes("[rank 0] progress of rank 0\r[rank 0] still rank 0"));
  });
});

Deno.test("several machines: ranks R·N … R·N+N−1 of N·M", async () => {
  await withDir(async (dir) => {
    const r = await runScript(LAUNCH, [
      "--nproc",
      "2",
      "--nnodes",
      "3",
      "--node-rank",
      "1",
      "--master-addr",
      "10.1.2.3",
      "--master-port",
      "29555",
      PROBE,
    ], { PROBE_DIR: dir });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "", "rank 0 runs on another machine");
    const envs = r.stderr.split("\n").filter((l) => /^\[rank \d\] \{/.test(l)).map((l) =>
      JSON.parse(l.replace(/^\[rank \d\] /, ""))
    ).sort((a, b) => Number(a.RANK) - Number(b.RANK));
    assert.deepEqual(envs.map((e) => [e.RANK, e.LOCAL_RANK, e.WORLD_SIZE]), [
      ["2", "0", "6"],
      ["3", "1", "6"],
    ]);
    assert.ok(envs.every((e) => e.MASTER_ADDR === "10.1.2.3" && e.MASTER_PORT === "29555"));
  });
});

Deno.test("a failing rank stops the others, naming the rank; no orphan", async () => {
  await withDir(async (dir) => {
    const t0 = performance.now();
    const r = await runScript(LAUNCH, ["--nproc", "3", "--grace-ms", "3000", PROBE], {
      PROBE_DIR: dir,
      PROBE_MODE: "fail1",
    });
    const seconds = (performance.now() - t0) / 1e3;
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /launch: rank 1 \(pid \d+\) exited with code 3; stopping ranks 0, 2/);
    assert.ok(seconds < 40, `took ${seconds} s (the others sleep 60 s)`);
    await gone(await pids(dir, 3), 5000);
  });
});

Deno.test("SIGTERM is forwarded to every rank; exit 128+15", async () => {
  await withDir(async (dir) => {
    const child = spawnLaunch(["--nproc", "2", PROBE], { PROBE_DIR: dir, PROBE_MODE: "sleep" });
    const ranks = await pids(dir, 2);
    child.kill("SIGTERM");
    const out = await child.output();
    assert.equal(out.code, 143, new TextDecoder().decode(out.stderr));
    await gone(ranks, 5000);
  });
});

Deno.test("a killed launcher leaves no rank behind", async () => {
  await withDir(async (dir) => {
    const child = spawnLaunch(["--nproc", "2", PROBE], { PROBE_DIR: dir, PROBE_MODE: "sleep" });
    const ranks = await pids(dir, 2);
    child.kill("SIGKILL");
    await child.output();
    await gone(ranks, 10_000); // each rank's guard reads EOF and sends SIGTERM
  });
});

Deno.test("bad launcher flags exit 2 naming the flag", async () => {
  const cases: [string[], RegExp][] = [
    [[PROBE], /--nproc is required/],
    [["--nproc", "0", PROBE], /--nproc must be an integer ≥ 1, got "0"/],
    [["--nproc", "two", PROBE], /--nproc must be an integer ≥ 1, got "two"/],
    [["--nproc", "2"], /no script given/],
    [["--nproc", "2", "--bogus", "1", PROBE], /unknown flag --bogus/],
    [
      ["--nproc", "2", "--nnodes", "2", "--node-rank", "2", "--master-addr", "h", PROBE],
      /--node-rank 2 is outside 0…1/,
    ],
    [["--nproc", "2", "--nnodes", "2", PROBE], /--master-addr is required with --nnodes 2/],
    [
      ["--nproc", "2", "--master-port", "70000", PROBE],
      /--master-port must be an integer in 1…65535/,
    ],
    [["--nproc", "2", "/no/such/script.ts"], /the script \/no\/such\/script\.ts does not exist/],
    [["--nproc"], /--nproc needs a value/],
  ];
  for (const [args, pattern] of cases) {
    assert.throws(() => parseLaunchArgs(args), pattern, args.join(" "));
  }
  assert.equal(parseLaunchArgs(["--help"]), null);
  // the contract end to end: exit 2, the message, nothing on stdout
  assertUsageError(await runScript(LAUNCH, ["--nproc", "0", PROBE]), /--nproc must be an integer/);
  assertUsageError(await runScript(LAUNCH, ["--bogus", PROBE]), /unknown flag --bogus/);
  const help = await runScript(LAUNCH, ["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--nproc N/);
  assert.match(help.stdout, /GLOO_SOCKET_IFNAME/);
});
