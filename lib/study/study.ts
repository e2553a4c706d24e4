/**
 * Ablation studies as declarative files run by `scripts/ablate.ts`: a study lists runs (flags
 * for `scripts/train.ts` and which evaluations to run, over a list of seeds) and the table and
 * figure to produce; the runner executes each (run, seed) in its own directory as subprocesses,
 * skips finished steps so that a killed study resumes where it stopped, and writes a Markdown
 * report with mean ± std over seeds, `results.json` and a PNG.
 *
 * ```ts
 * import { loadStudy, runStudy } from "./study.ts";
 *
 * const study = await loadStudy("studies/table3.json", { seeds: [0], out: "runs/t3" });
 * const outcome = await runStudy(study, { jobs: 1 });
 * console.log(outcome.report); // runs/t3/report.md
 * ```
 *
 * The file format is described in `studies/README.md` and {@link StudyFile}.
 *
 * @module
 */
export {
  camelCase,
  flagArgs,
  type FlagOverride,
  type Flags,
  type FlagValue,
  formatMeanStd,
  kebabCase,
  mergeFlags,
  parseOverride,
  parseSeeds,
  parseStudy,
  selectRuns,
  shellQuote,
  type StudyColumn,
  StudyError,
  type StudyFile,
  type StudyOverrides,
  type StudyPlot,
  type StudyRun,
  suggest,
  summarize,
  toArgs,
} from "./format.ts";
export {
  checkRunDirs,
  collectResults,
  commandLine,
  DEFAULT_SCRIPTS,
  displayPath,
  type EtaInput,
  loadStudy,
  type LoadStudyOptions,
  parseHelpFlags,
  planStudy,
  readStudyFile,
  type ResolvedRun,
  runFlagValue,
  type RunIdentity,
  runIdentity,
  runStudy,
  type RunStudyOptions,
  scriptFlags,
  SEED_PLACEHOLDER,
  type StepFailure,
  type StepPlan,
  type Study,
  studyEta,
  StudyInterrupted,
  type StudyOutcome,
  type TrainResolver,
  type UnitPlan,
  VOLATILE_FLAGS,
} from "./runner.ts";
export { applyReuse, findReuse, type FindReuseOptions, type ReuseMatch } from "./reuse.ts";
export {
  markdownTable,
  type MetricSummary,
  metricValue,
  type RunResult,
  type SeedResult,
  type StudyReport,
  type TableRow,
  tableRows,
  writeReport,
  type WriteReportOptions,
} from "./report.ts";
