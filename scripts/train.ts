/**
 * `scripts/train.ts` — train DINO or DenseDINO.
 *
 *   deno run -A scripts/train.ts --data fashion-scenes --arch vit_mini --patch-size 8 \
 *     --global-size 64 --local-crops 4 --local-size 32 --out-dim 4096 --epochs 20 --out runs/x
 *
 * Progress on stderr; the last stdout line is a JSON summary (epochs, iterations, final losses,
 * images/s, output paths). `--help` lists every flag with its default.
 *
 * Data-parallel over several processes or machines: start it through `scripts/launch.ts`
 * (or any launcher that sets torchrun's RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT). With
 * WORLD_SIZE > 1 it joins a c10d process group (Gloo on CPU, NCCL with --device cuda);
 * `--batch-size` is then per process and only rank 0 writes OUT and prints the summary.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  ConfigError,
  DEFAULT_TRAIN_CONFIG,
  TRAIN_PRESETS,
  type TrainConfig,
  Trainer,
  TrainError,
} from "../lib/densedino/mod.ts";
import { DEFAULT_VIEW_OPTIONS, type ViewSamplerOptions } from "../lib/densedino/views.ts";
import {
  DEFAULT_DIST_TIMEOUT_MS,
  distEnv,
  DistError,
  initProcessGroup,
  type ProcessGroup,
} from "../lib/torch/mod.ts";

type Kind = "string" | "number" | "boolean" | "pair";
interface FlagSpec {
  key: string;
  kind: Kind;
  help: string;
  view?: boolean;
}

const D = DEFAULT_TRAIN_CONFIG;
const V = DEFAULT_VIEW_OPTIONS;

const FLAGS: FlagSpec[] = [
  {
    key: "preset",
    kind: "string",
    help: `a named starting point: ${
      Object.keys(TRAIN_PRESETS).join(" | ")
    } (demo: the embedded CPU benchmark); explicit flags override it`,
  },
  {
    key: "method",
    kind: "string",
    help: "densedino | dino (dino: no reference tokens, class loss only)",
  },
  {
    key: "loss",
    kind: "string",
    help: "cls | ref | both",
  },
  { key: "data", kind: "string", help: "fashion-scenes | imagefolder:PATH | voc:PATH" },
  { key: "scenes", kind: "number", help: "fashion-scenes: training scenes" },
  { key: "arch", kind: "string", help: "vit_tiny | vit_small | vit_base | vit_mini | vit_micro" },
  { key: "patchSize", kind: "number", help: "patch size in pixels" },
  {
    key: "imgSize",
    kind: "number",
    help: "trained positional grid side in pixels",
  },
  { key: "outDim", kind: "number", help: "DINO head output width" },
  { key: "headHiddenDim", kind: "number", help: "DINO head MLP hidden width" },
  { key: "headBottleneckDim", kind: "number", help: "DINO head bottleneck width" },
  {
    key: "normLastLayer",
    kind: "boolean",
    help: "freeze the last head layer's gain at 1 (--no-norm-last-layer frees it)",
  },
  { key: "sharedRefHead", kind: "boolean", help: "one head for class and reference tokens" },
  {
    key: "learnableRefToken",
    kind: "boolean",
    help: "learnable reference content token instead of zeros",
  },
  {
    key: "maskMode",
    kind: "string",
    help: "none | all2pos | all2pos_pos2cls | all2pos_pos2cls_eye | all_query",
  },
  {
    key: "attention",
    kind: "string",
    help: "auto | split | explicit (split: fused class/patch attention + reference attention; " +
      "explicit: one masked attention, as the official code)",
  },
  {
    key: "allCropsCls",
    kind: "boolean",
    help: "class loss over every student view",
  },
  { key: "allCropsRef", kind: "boolean", help: "reference loss over every student view" },
  { key: "alpha", kind: "number", help: "loss weight: alpha·L_cls + (1−alpha)·L_ref" },
  { key: "epochs", kind: "number", help: "training epochs" },
  {
    key: "batchSize",
    kind: "number",
    help: "images per batch and process (global batch: processes × this, as the official " +
      "--batch_size_per_gpu)",
  },
  { key: "lr", kind: "number", help: "base learning rate (scaled by batch/256)" },
  { key: "minLr", kind: "number", help: "final learning rate" },
  { key: "warmupEpochs", kind: "number", help: "linear learning-rate warm-up epochs" },
  { key: "weightDecay", kind: "number", help: "initial weight decay" },
  { key: "weightDecayEnd", kind: "number", help: "final weight decay" },
  { key: "momentumTeacher", kind: "number", help: "initial teacher EMA momentum (cosine to 1)" },
  { key: "clipGrad", kind: "number", help: "per-parameter gradient norm clip (0: off)" },
  { key: "freezeLastLayer", kind: "number", help: "epochs with the heads' last layer frozen" },
  { key: "dropPathRate", kind: "number", help: "student stochastic depth" },
  { key: "teacherTemp", kind: "number", help: "teacher temperature" },
  { key: "warmupTeacherTemp", kind: "number", help: "initial teacher temperature of the warm-up" },
  { key: "warmupTeacherTempEpochs", kind: "number", help: "teacher temperature warm-up epochs" },
  { key: "studentTemp", kind: "number", help: "student temperature" },
  { key: "centerMomentum", kind: "number", help: "centre momentum" },
  { key: "seed", kind: "number", help: "seed of initialisation, data order and augmentation" },
  { key: "threads", kind: "number", help: "libtorch intra-op threads (0: library default)" },
  { key: "device", kind: "string", help: "cpu | cuda" },
  {
    key: "precision",
    kind: "string",
    help: "fp32 | bf16 | fp16",
  },
  { key: "out", kind: "string", help: "output directory" },
  { key: "resume", kind: "boolean", help: "continue from OUT/checkpoint.safetensors" },
  { key: "maxIters", kind: "number", help: "stop after this many iterations (0: all epochs)" },
  {
    key: "saveEvery",
    kind: "number",
    help: "also checkpoint every N iterations (0: epoch ends only)",
  },
  { key: "logEvery", kind: "number", help: "log record every N iterations" },
  { key: "workers", kind: "number", help: "data-loading Deno workers (0: main thread)" },
  { key: "globalCrops", kind: "number", help: "global (teacher) views", view: true },
  { key: "globalSize", kind: "number", help: "global view side in pixels", view: true },
  { key: "globalScale", kind: "pair", help: "global crop area range lo,hi", view: true },
  { key: "localCrops", kind: "number", help: "local views", view: true },
  { key: "localSize", kind: "number", help: "local view side in pixels", view: true },
  { key: "localScale", kind: "pair", help: "local crop area range lo,hi", view: true },
  {
    key: "numRef",
    kind: "number",
    help: "reference points per (global view, view) pair",
    view: true,
  },
  { key: "sampling", kind: "string", help: "random | grid (grid: a √M×√M grid)", view: true },
  {
    key: "minIntersection",
    kind: "number",
    help: "crop overlap rule (fraction of the image)",
    view: true,
  },
];

const kebab = (k: string) => k.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());

function defaultOf(f: FlagSpec): string {
  const v = f.view
    ? (V as unknown as Record<string, unknown>)[f.key]
    : (D as unknown as Record<string, unknown>)[f.key];
  if (f.key === "loss") return "both (densedino) / cls (dino)";
  if (f.key === "allCropsCls") return "false (densedino) / true (dino)";
  if (f.key === "precision") return "fp32 (cpu) / bf16 (cuda)";
  if (f.key === "imgSize") return "the global view size";
  return Array.isArray(v) ? v.join(",") : String(v);
}

function help(): string {
  const lines = FLAGS.map((f) => {
    const name = `--${kebab(f.key)}${f.kind === "boolean" ? "" : " X"}`;
    return `  ${name.padEnd(30)} ${f.help} (default ${defaultOf(f)})`;
  });
  return [
    "Usage: deno run -A scripts/train.ts [flags]",
    "",
    "Trains DINO or DenseDINO (paper §3; defaults are the paper's and the official code's).",
    "Writes OUT/checkpoint.safetensors + checkpoint.json, OUT/teacher_backbone.safetensors,",
    "OUT/log.jsonl, OUT/config.json and OUT/loss.png; prints a JSON summary as the last line.",
    "",
    ...lines,
    `  ${"--dist-timeout X".padEnd(30)} several processes: rendezvous and per-collective ` +
    `timeout in ms, else DENSEDINO_DIST_TIMEOUT_MS (default ${DEFAULT_DIST_TIMEOUT_MS})`,
    "  --help                         this text",
    "",
    "Several processes or machines: deno run -A scripts/launch.ts --nproc N [--nnodes M",
    "--node-rank R --master-addr A --master-port P] scripts/train.ts [flags] (see the README).",
  ].join("\n");
}

/** Parses the command line into training options (exported for tests). */
export function parseTrainArgs(args: string[]): Partial<TrainConfig> | "help" {
  return parseTrainCommandLine(args).options;
}

/** The training options and the distributed timeout (`--dist-timeout`, ms) of a command line. */
export function parseTrainCommandLine(
  args: string[],
): { options: Partial<TrainConfig> | "help"; distTimeoutMs?: number } {
  const options: Record<string, { type: "string" | "boolean" }> = {
    help: { type: "boolean" },
    "dist-timeout": { type: "string" },
  };
  for (const f of FLAGS) {
    options[kebab(f.key)] = { type: f.kind === "boolean" ? "boolean" : "string" };
    if (f.kind === "boolean") options[`no-${kebab(f.key)}`] = { type: "boolean" };
  }
  let parsed;
  try {
    parsed = parseArgs({ args, options, strict: true, allowPositionals: false });
  } catch (e) {
    throw new ConfigError(`${(e as Error).message} (see --help)`);
  }
  const v = parsed.values as Record<string, string | boolean | undefined>;
  if (v.help) return { options: "help" };
  let distTimeoutMs: number | undefined;
  if (v["dist-timeout"] !== undefined) {
    distTimeoutMs = Number(v["dist-timeout"]);
    if (!(Number.isSafeInteger(distTimeoutMs) && distTimeoutMs > 0)) {
      throw new ConfigError(
        `--dist-timeout must be a positive integer (milliseconds), got "${v["dist-timeout"]}"`,
      );
    }
  }
  const cfg: Record<string, unknown> = {};
  const views: Record<string, unknown> = {};
  for (const f of FLAGS) {
    const k = kebab(f.key);
    let value: unknown = v[k];
    if (f.kind === "boolean" && v[`no-${k}`]) value = false;
    if (value === undefined) continue;
    if (f.kind === "number") {
      const n = Number(value);
      if (value === "" || !Number.isFinite(n)) {
        throw new ConfigError(`--${k} must be a number, got "${value}"`);
      }
      value = n;
    } else if (f.kind === "pair") {
      const parts = String(value).split(",").map(Number);
      if (parts.length !== 2 || parts.some((x) => !Number.isFinite(x))) {
        throw new ConfigError(`--${k} must be two numbers "lo,hi", got "${value}"`);
      }
      value = parts;
    }
    (f.view ? views : cfg)[f.key] = value;
  }
  if (Object.keys(views).length) cfg.views = views as ViewSamplerOptions;
  return { options: cfg as Partial<TrainConfig>, distTimeoutMs };
}

if (import.meta.main) {
  let code = 0;
  let group: ProcessGroup | null = null;
  let prefix = "train: ";
  try {
    const { options: opts, distTimeoutMs } = parseTrainCommandLine(Deno.args);
    if (opts === "help") {
      console.log(help());
    } else {
      const env = distEnv();
      if (env && env.worldSize > 1) {
        prefix = `train [rank ${env.rank}]: `;
        group = initProcessGroup({
          ...env,
          device: opts.device === "cuda" ? "cuda" : "cpu",
          timeoutMs: distTimeoutMs,
        });
      }
      const trainer = await Trainer.create(opts, { group: group ?? undefined });
      try {
        const summary = await trainer.run();
        if (trainer.isMain) {
          console.log(
            JSON.stringify(
              group
                ? { ...summary, worldSize: group.worldSize, commSeconds: trainer.commSeconds }
                : summary,
            ),
          );
        }
      } finally {
        trainer.free();
      }
    }
  } catch (e) {
    if (e instanceof ConfigError || e instanceof RangeError) {
      console.error(`${prefix}${e.message}`);
      code = 2;
    } else if (e instanceof TrainError || e instanceof DistError) {
      console.error(`${prefix}${e.message}`);
      code = 1;
    } else {
      throw e;
    }
  } finally {
    group?.destroy();
  }
  Deno.exit(code);
}
