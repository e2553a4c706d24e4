/**
 * A stand-in for a training script under `scripts/launch.ts` (a helper of launch_test.ts, no
 * tests of its own): writes its pid to `$PROBE_DIR/pid-$RANK`, prints its torchrun environment
 * as one JSON line on stdout, then behaves as `$PROBE_MODE` says: `ok` exits 0, `fail1` makes
 * rank 1 exit 3 once every rank has written its pid (the others sleep), `sleep` sleeps a minute.
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
if (mode === "fail1" && env.RANK === "1") {
  // fail only once every rank has started (written its pid): a rank stopped before that would
  // leave the test no pid to check for orphans (process start-up takes seconds under load)
  const world = Number(env.WORLD_SIZE);
  const started = () =>
    Array.from({ length: world }, (_, r) => `${env.PROBE_DIR}/pid-${r}`).every((f) => {
      try {
        return Deno.statSync(f).isFile;
      } catch {
        return false;
      }
    });
  for (let i = 0; i < 1200 && !started(); i++) await new Promise((r) => setTimeout(r, 50));
  Deno.exit(3);
}
if (mode !== "ok") await new Promise((r) => setTimeout(r, 60_000));
