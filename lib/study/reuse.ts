/**
 * Reusing finished runs of other studies: the shipped studies share runs (Table 3's "class +
 * reference loss", Fig. 5's M = 4 and Table 2's DenseDINO 6×48 are one training; every study
 * has the same random-init row), and a training costs hours on a CPU. `scripts/ablate.ts
 * --reuse DIR` takes such a run over instead of repeating it.
 *
 * A run directory of this study that has not started (missing or empty) takes over a finished
 * run directory `DIR/<run>/seed<k>` of another study (any run name, the same seed) when
 *
 * - the training is the same: with a {@link TrainResolver} (the toolkit's own `train.ts`), the
 *   resolved configuration equals the one the other run recorded in `train/config.json`, up to
 *   the settings that do not change results (output folder, threads, loader workers, logging and
 *   checkpoint cadence); without one (another training script), the flags are equal up to
 *   {@link VOLATILE_FLAGS}; its `train.json` exists (the training finished); and the embedded
 *   data set's generator is the same;
 * - or, for a random-init run, the other one is random-init too.
 *
 * Evaluations whose flags are equal (up to {@link VOLATILE_FLAGS}) and finished are taken over
 * with it; the others then run on the reused weights. The files are hard-linked (copied where
 * links are impossible) into a temporary folder that is renamed into place, so a killed reuse
 * leaves nothing half-made; the new `run.json` carries this study's identity and the source
 * (`reusedFrom`, `reusedSteps`), which the report notes.
 *
 * @module
 */
import { join, resolve } from "node:path";
import { camelCase, StudyError } from "./format.ts";
import {
  argMap,
  displayPath,
  readJson,
  resumedSteps,
  type RunIdentity,
  type Study,
  TIMES,
  type TrainResolver,
  type UnitPlan,
  VOLATILE_FLAGS,
} from "./runner.ts";
import { pathExists, writeFileAtomic } from "../torch/files.ts";

/** A run directory of this study that can take over a finished one of another study. */
export interface ReuseMatch {
  /** the (run, seed) of this study */
  unit: UnitPlan;
  /** the other study's run directory */
  source: string;
  /** the steps taken over: "train" (unless random-init) and the evaluations with equal flags */
  steps: string[];
}

/** Options of {@link findReuse}. */
export interface FindReuseOptions {
  /** resolves training flags into the configuration (compared with `train/config.json`) */
  resolveTrain?: TrainResolver;
}

/** Configuration keys that do not change a training's results (besides the volatile flags). */
const MECHANICS = ["out", "resume", ...VOLATILE_FLAGS.train.map(camelCase)];

/** Arguments as a comparable text, without the given flags. */
function argKey(args: readonly string[] | null | undefined, drop: readonly string[]): string {
  const m = argMap(args ? [...args] : null);
  for (const f of drop) m.delete(`--${f}`);
  return JSON.stringify([...m.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** JSON with the keys of every object sorted (so that key order does not matter). */
function canonical(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(canonical);
  if (v === null || typeof v !== "object") return v;
  const o = v as Record<string, unknown>;
  return Object.keys(o).sort().map((k) => [k, canonical(o[k])]);
}

/** A configuration as a comparable text, without the settings that do not change results. */
function configKey(config: Record<string, unknown>): string {
  const kept = Object.fromEntries(Object.entries(config).filter(([k]) => !MECHANICS.includes(k)));
  return JSON.stringify(canonical(kept));
}

interface Candidate {
  dir: string;
  id: Partial<RunIdentity>;
}

async function candidates(source: string, seed: number): Promise<Candidate[]> {
  const found: Candidate[] = [];
  const runs: string[] = [];
  for await (const e of Deno.readDir(source)) if (e.isDirectory) runs.push(e.name);
  for (const r of runs.sort()) {
    const dir = join(source, r, `seed${seed}`);
    const id = await readJson(join(dir, "run.json"));
    if (id && id.seed === seed) found.push({ dir, id: id as Partial<RunIdentity> });
  }
  return found;
}

async function isFresh(dir: string): Promise<boolean> {
  try {
    for await (const _ of Deno.readDir(dir)) return false;
    return true;
  } catch {
    return true; // not there yet
  }
}

/**
 * The run directories of `units` (of `study`) that can take over a finished run directory under
 * one of `sources` (other studies' output folders, searched in order: the first source with a
 * match wins, and in it the matching run with the most finished steps). Only units whose
 * directory is missing or empty are considered. Throws a {@link StudyError} for a source that
 * is not a folder or is this study's own output.
 */
export async function findReuse(
  study: Study,
  units: readonly UnitPlan[],
  sources: readonly string[],
  opts: FindReuseOptions = {},
): Promise<ReuseMatch[]> {
  for (const s of sources) {
    const st = await Deno.stat(s).catch(() => null);
    if (!st?.isDirectory) {
      throw new StudyError(
        `--reuse ${s}: no such folder; give another study's output folder (e.g. ` +
          `runs/studies/table3)`,
      );
    }
    if (resolve(s) === resolve(study.out)) {
      throw new StudyError(
        `--reuse ${s} is this study's own output folder; its finished runs are kept anyway`,
      );
    }
  }
  const matches: ReuseMatch[] = [];
  for (const u of units) {
    if (!(await isFresh(u.dir))) continue;
    const want = u.identity;
    let wantConfig: string | null = null;
    if (want.train && opts.resolveTrain) {
      wantConfig = configKey(opts.resolveTrain([...want.train, "--out", join(u.dir, "train")]));
    }
    let best: ReuseMatch | null = null;
    for (const source of sources) {
      for (const c of await candidates(source, u.seed)) {
        const data = c.id.data === undefined ? "fashion-scenes/v1" : c.id.data;
        if (data !== want.data) continue;
        const steps: string[] = [];
        if (want.train === null) {
          if (c.id.train !== null) continue;
        } else {
          if (!c.id.train || !(await pathExists(join(c.dir, "train.json")))) continue;
          if (wantConfig !== null) {
            const saved = await readJson(join(c.dir, "train", "config.json"));
            if (!saved || configKey(saved) !== wantConfig) continue;
          } else {
            const drop = [...VOLATILE_FLAGS.train, "out"];
            if (argKey(c.id.train, drop) !== argKey(want.train, drop)) continue;
          }
          steps.push("train");
        }
        for (const [e, args] of Object.entries(want.evals)) {
          const theirs = c.id.evals?.[e];
          if (!theirs || !(await pathExists(join(c.dir, `eval_${e}.json`)))) continue;
          const drop = [...VOLATILE_FLAGS.eval, "weights"];
          if (argKey(theirs, drop) === argKey(args, drop)) steps.push(e);
        }
        if (steps.length === 0) continue;
        if (!best || steps.length > best.steps.length) best = { unit: u, source: c.dir, steps };
      }
      if (best) break;
    }
    if (best) matches.push(best);
  }
  return matches;
}

/** Hard-links (or, across file systems, copies) a folder tree. */
async function linkTree(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    const a = join(from, e.name), b = join(to, e.name);
    if (e.isDirectory) await linkTree(a, b);
    else if (e.isFile) await Deno.link(a, b).catch(() => Deno.copyFile(a, b));
  }
}

async function linkIfThere(from: string, to: string): Promise<void> {
  if (await pathExists(from)) await Deno.link(from, to).catch(() => Deno.copyFile(from, to));
}

/**
 * Makes each match's run directory from its source: the training folder, `train.json` and the
 * matching evaluations' results and logs, their wall times, and a `run.json` with this study's
 * identity plus `reusedFrom` / `reusedSteps`. Everything is assembled in a temporary folder next
 * to the run directory and renamed into place. `log` gets one line per match.
 */
export async function applyReuse(
  matches: readonly ReuseMatch[],
  log: (line: string) => void = () => {},
): Promise<void> {
  for (const m of matches) {
    const dir = m.unit.dir;
    const tmp = `${dir}.reuse-${Deno.pid}`;
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    await Deno.mkdir(tmp, { recursive: true });
    try {
      const times = (await readJson(join(m.source, TIMES))) ?? {};
      const kept: Record<string, unknown> = {};
      for (const step of m.steps) {
        const base = step === "train" ? "train" : `eval_${step}`;
        if (step === "train") await linkTree(join(m.source, "train"), join(tmp, "train"));
        await linkIfThere(join(m.source, `${base}.json`), join(tmp, `${base}.json`));
        await linkIfThere(join(m.source, `${base}.log`), join(tmp, `${base}.log`));
        if (typeof times[step] === "number") kept[step] = times[step];
      }
      const partial = [...resumedSteps(times)].filter((k) => m.steps.includes(k));
      if (partial.length) kept.resumed = partial;
      await writeFileAtomic(join(tmp, TIMES), JSON.stringify(kept, null, 2) + "\n");
      const id = { ...m.unit.identity, reusedFrom: resolve(m.source), reusedSteps: m.steps };
      await writeFileAtomic(join(tmp, "run.json"), JSON.stringify(id, null, 2) + "\n");
      await Deno.remove(dir).catch(() => {}); // an empty directory; a full one makes rename fail
      await Deno.rename(tmp, dir);
    } catch (e) {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
      throw new StudyError(
        `could not take over ${displayPath(m.source)} as ${displayPath(dir)}: ` +
          `${(e as Error).message}`,
      );
    }
    log(
      `${m.unit.run.name} seed${m.unit.seed}: reused ${m.steps.join(", ")} from ` +
        displayPath(m.source),
    );
  }
}
