/**
 * A stand-in for a training script under `scripts/launch.ts` (a helper of launch_test.ts, no
 * tests of its own): writes its pid to `$PROBE_DIR/pid-$RANK`, prints its torchrun environment
 * as one JSON line on stdout, then behaves as `$PROBE_MODE` says: `ok` exits 0, `fail1` makes
 * rank 1 exit 3 at once (the others sleep), `sleep` sleeps a minute.
 *
 * @module
 */
const env = Deno.env.toObject();
const keys = [
  "RANK",
  "WORLD_SIZE",
  "LOCAL_RANK",
  "LOCAL_WORLD_SIZE",
  "MASTER_ADDR",
  "MASTER_PORT",
  "OMP_NUM_THREADS",
  "DENSEDINO_DIST_TIMEOUT_MS",
];
await Deno.writeTextFile(`${env.PROBE_DIR}/pid-${env.RANK}`, String(Deno.pid));
console.log(
  JSON.stringify({ ...Object.fromEntries(keys.map((k) => [k, env[k] ?? null])), args: Deno.args }),
);
console.error(`progress of rank ${env.RANK}\rstill rank ${env.RANK}`);
const mode = env.PROBE_MODE ?? "ok";
if (mode === "fail1" && env.RANK === "1") Deno.exit(3);
if (mode !== "ok") await new Promise((r) => setTimeout(r, 60_000));
