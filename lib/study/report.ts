/**
 * The study's report: `report.md` (a Markdown table with one row per run, mean ± sample std
 * over seeds for each column metric, the figure, the commands that produced the numbers and
 * the time each step took), `results.json` (every run × seed × step result and the table's
 * numbers) and the PNG figure (a bar plot, or a line plot with ± std bands).
 *
 * @module
 */
import {
  contactSheet,
  type LineSeries,
  renderBarPlot,
  renderLinePlot,
  TAB10,
} from "../data/plot.ts";
import { formatDuration } from "../data/progress.ts";
import { writeFileAtomic } from "../torch/files.ts";
import { formatMeanStd, type StudyColumn, summarize } from "./format.ts";
import type { StepFailure, Study, UnitPlan } from "./runner.ts";
import { commandLine, displayPath } from "./runner.ts";

/** Colours of a line plot's reference lines (runs without an x value). */
const GREYS = ["#505050", "#909090", "#b0b0b0"];

/** The finished steps of one seed of a run. */
export interface SeedResult {
  /** the seed */
  seed: number;
  /** step name → the JSON it printed */
  steps: Record<string, Record<string, unknown>>;
  /** step name → its wall time in seconds (process start to exit), when recorded */
  times?: Record<string, number>;
  /** steps resumed from a checkpoint: their `times` cover only the last attempt */
  resumed?: string[];
  /** steps taken over from another study's run directory (`scripts/ablate.ts --reuse`) */
  reused?: { from: string; steps: string[] };
}

/** The results of one run over its seeds. */
export interface RunResult {
  /** the run's name */
  name: string;
  /** its label */
  label: string;
  /** a random-init run */
  evalOnly: boolean;
  /** its x value for a line plot (`plot.x`), null when it has none */
  x: number | null;
  /** the seeds with results */
  seeds: SeedResult[];
  /** seeds whose directory holds another version of the study (left out) */
  foreign?: number[];
}

/** A metric over the seeds of one run. */
export interface MetricSummary {
  /** mean over the seeds where the metric exists */
  mean: number;
  /** sample standard deviation (n − 1); NaN with fewer than two values */
  std: number;
  /** how many seeds have it */
  n: number;
  /** the value of each seed (scaled by the column's `scale`) */
  values: { seed: number; value: number }[];
}

/** One row of the study's table. */
export interface TableRow {
  /** the run */
  run: string;
  /** its label */
  label: string;
  /** seeds with at least one result */
  n: number;
  /** column metric → summary */
  metrics: Record<string, MetricSummary>;
}

/** Where the report went, and the table's numbers. */
export interface StudyReport {
  /** `OUT/report.md` */
  report: string;
  /** `OUT/results.json` */
  results: string;
  /** the PNG figure, null when there was nothing to draw */
  plot: string | null;
  /** the table */
  table: TableRow[];
}

/**
 * The value of a metric path (`knn.top1`, `train.final.loss`, `knn.results.0.top1`) in one
 * seed's step results; NaN when it is missing or not a finite number.
 */
export function metricValue(steps: Record<string, unknown>, metric: string): number {
  let v: unknown = steps;
  for (const part of metric.split(".")) {
    if (typeof v !== "object" || v === null) return NaN;
    v = (v as Record<string, unknown>)[part];
  }
  return typeof v === "number" && Number.isFinite(v) ? v : NaN;
}

/** The table: one row per run, each column metric summarised over the seeds. */
export function tableRows(columns: readonly StudyColumn[], results: RunResult[]): TableRow[] {
  return results.map((r) => {
    const metrics: Record<string, MetricSummary> = {};
    for (const c of columns) {
      const values = r.seeds
        .map((s) => ({ seed: s.seed, value: metricValue(s.steps, c.metric) * (c.scale ?? 1) }))
        .filter((v) => Number.isFinite(v.value));
      metrics[c.metric] = { ...summarize(values.map((v) => v.value)), values };
    }
    const n = r.seeds.filter((s) => Object.keys(s.steps).length > 0).length;
    return { run: r.name, label: r.label, n, metrics };
  });
}

const cell = (s: string) => s.replaceAll("|", "\\|");

/** The Markdown table: `| run | n | <column label> … |`, cells "mean ± std". */
export function markdownTable(columns: readonly StudyColumn[], rows: TableRow[]): string {
  const head = ["run", "n", ...columns.map((c) => c.label ?? c.metric)];
  const lines = [
    `| ${head.map(cell).join(" | ")} |`,
    `| ${head.map((_, i) => (i < 2 ? (i === 0 ? "---" : "--:") : "--:")).join(" | ")} |`,
  ];
  for (const r of rows) {
    const cells = [
      r.label,
      String(r.n),
      ...columns.map((c) => formatMeanStd(r.metrics[c.metric], c.digits ?? 1, r.n)),
    ];
    lines.push(`| ${cells.map(cell).join(" | ")} |`);
  }
  return lines.join("\n");
}

async function drawPlot(
  study: Study,
  rows: TableRow[],
  results: RunResult[],
  path: string,
): Promise<boolean> {
  const spec = study.spec;
  const p = spec.plot ?? {};
  const columns = spec.table.columns.filter((c) => !p.metrics || p.metrics.includes(c.metric));
  const mean = (r: TableRow, c: StudyColumn) => r.metrics[c.metric].mean;
  if (!rows.some((r) => columns.some((c) => Number.isFinite(mean(r, c))))) return false;
  const label = (c: StudyColumn) => c.label ?? c.metric;
  // the error bar or band: the std over seeds, none for a single seed
  const std = (r: TableRow, c: StudyColumn) => {
    const sd = r.metrics[c.metric].std;
    return Number.isFinite(sd) ? sd : 0;
  };
  if ((p.kind ?? "bar") === "bar") {
    // one row per metric (its own y axis; one legend-free series), room for group names of
    // ~22 characters
    const width = Math.max(800, 150 * rows.length + 160);
    const panels = columns.map((c, k) => [{
      canvas: renderBarPlot({
        title: label(c),
        groups: rows.map((r) => r.label),
        series: [{
          name: "",
          values: rows.map((r) => mean(r, c)),
          errors: rows.map((r) => std(r, c)),
          color: TAB10[k % TAB10.length],
        }],
        valueDecimals: c.digits ?? 1,
        xLabel: p.xLabel,
        yLabel: p.yLabel,
        width,
        height: 360,
      }),
    }]);
    await contactSheet(panels, { title: p.title ?? spec.title, pad: 8 }).save(path);
    return true;
  }
  // line: one panel per metric, each with its own y range (a 0.2-point mIoU difference would
  // vanish on an axis shared with a 60% k-NN); runs with an x value in x order, the others
  // (a random-init baseline) as flat thin lines named in the legend
  const tx = (x: number) => (p.logX ? Math.log2(x) : x);
  const withX = rows
    .map((r, i) => ({ r, x: results[i].x, evalOnly: results[i].evalOnly }))
    .filter((e) => !e.evalOnly && e.x !== null && (!p.logX || e.x > 0))
    .sort((a, b) => a.x! - b.x!);
  const others = rows.filter((_, i) => !withX.some((e) => e.r === rows[i]));
  const xs = withX.map((e) => tx(e.x!));
  if (xs.length === 0) return false;
  const lo = Math.min(...xs), hi = Math.max(...xs);
  // ticks at the runs' own x values, labelled with them (1, 2, 4, … on a log2 axis)
  const xValues = [...new Set(withX.map((e) => e.x!))];
  const flag = (p.x ?? "").replace(/^train\./, "");
  const panels = columns.map((c, k) => {
    const color = TAB10[k % TAB10.length];
    const series: LineSeries[] = [{
      name: "",
      x: xs,
      y: withX.map((e) => mean(e.r, c)),
      std: withX.map((e) => std(e.r, c)),
      color,
      markers: true,
    }];
    for (const [j, o] of others.entries()) {
      const m = mean(o, c);
      if (!Number.isFinite(m)) continue;
      series.push({
        name: o.label,
        x: [lo, hi],
        y: [m, m],
        color: GREYS[j % GREYS.length],
        lineWidth: 1,
        markers: false,
      });
    }
    return {
      canvas: renderLinePlot({
        title: label(c),
        series,
        xLabel: p.xLabel ?? flag,
        yLabel: p.yLabel,
        xTicks: xValues.map(tx),
        xTickLabels: xValues.map(String),
        markers: true,
        width: columns.length === 1 ? 800 : 440,
        height: 400,
      }),
    };
  });
  await contactSheet([panels], { title: p.title ?? spec.title, pad: 8 }).save(path);
  return true;
}

function machine(): string {
  return `${navigator.hardwareConcurrency} CPU threads, ${Deno.build.os}/${Deno.build.arch}, ` +
    `deno ${Deno.version.deno}`;
}

/** Options of {@link writeReport}. */
export interface WriteReportOptions {
  /** the command that ran the study */
  invocation?: string;
  /** the plan of every (run, seed), for the commands section */
  commands: UnitPlan[];
  /** steps that failed in this call */
  failed?: StepFailure[];
}

/** Writes `OUT/report.md`, `OUT/results.json` and the figure (atomically). */
export async function writeReport(
  study: Study,
  results: RunResult[],
  opts: WriteReportOptions,
): Promise<StudyReport> {
  const spec = study.spec;
  const columns = spec.table.columns;
  const rows = tableRows(columns, results);
  const plotName = spec.plot?.file ?? `${spec.name}.png`;
  const plotPath = `${study.out}/${plotName}`;
  const drawn = await drawPlot(study, rows, results, plotPath);
  const seeds = study.seeds.join(", ");
  const md: string[] = [`# ${spec.title}`, ""];
  if (spec.description) md.push(spec.description, "");
  md.push(
    `Study \`${spec.name}\` version ${spec.version} (${
      displayPath(study.file)
    }), seeds ${seeds}; ` +
      `results in \`${displayPath(study.out)}\`. Generated ${new Date().toISOString()} on ` +
      `${machine()}.`,
    "",
    markdownTable(columns, rows),
    "",
    `Each cell: mean ± sample standard deviation (n − 1) over the seeds that finished; "—" ` +
      `where only one seed ran, "n/a" where none did; (n=k) marks a cell with fewer seeds than ` +
      `its row.`,
    "",
  );
  const notes: string[] = [];
  for (const c of columns) {
    if ((c.scale ?? 1) === 1) continue;
    const big = rows.some((r) =>
      r.metrics[c.metric].values.some((v) => Math.abs(v.value / c.scale!) > 1.5)
    );
    if (big) {
      notes.push(
        `column "${c.label ?? c.metric}" multiplies ${c.metric} by ${c.scale}, but some raw ` +
          `values exceed 1: the script may already report it in %`,
      );
    }
  }
  for (const r of results) {
    if (r.foreign?.length) {
      notes.push(
        `${r.label}: seed${r.foreign.length > 1 ? "s" : ""} ${r.foreign.join(", ")} left out: ` +
          `made by another version of the study or other flags (rerun without --only to see why)`,
      );
    }
  }
  for (const r of results) {
    for (const s of r.seeds) {
      if (s.reused) {
        notes.push(
          `${r.label} seed ${s.seed}: ${s.reused.steps.join(", ")} reused from ` +
            `\`${displayPath(s.reused.from)}\` (the same ${
              s.reused.steps.includes("train") ? "training configuration" : "evaluation flags"
            } and seed)`,
        );
      }
    }
  }
  // a step may flag its own result as meaningless (eval_seg: a probe that did not fit)
  for (const r of results) {
    for (const s of r.seeds) {
      for (const [name, v] of Object.entries(s.steps)) {
        if (v.fitted === false) {
          notes.push(`${r.label} seed ${s.seed}: ${name} reports "fitted": false`);
        }
      }
    }
  }
  if (notes.length) md.push(...notes.map((n) => `> Note: ${n}`), "");
  if (drawn) md.push(`![${spec.title}](${plotName})`, "");
  // time per step
  const stepNames = [...new Set(opts.commands.flatMap((u) => u.steps.map((s) => s.name)))];
  md.push(
    "## Time per step",
    "",
    'Wall time of each step (process start to exit), mean over seeds; "> " where a seed\'s step ' +
      "was resumed from its checkpoint and only its last attempt was timed.",
    "",
  );
  md.push(
    `| run | ${stepNames.join(" | ")} |`,
    `| --- | ${stepNames.map(() => "--:").join(" | ")} |`,
  );
  for (const r of results) {
    const cells = stepNames.map((name) => {
      const t = r.seeds.map((s) => s.times?.[name] ?? s.steps[name]?.seconds).filter((
        x,
      ): x is number => typeof x === "number" && Number.isFinite(x));
      if (!t.length) return "—";
      const partial = r.seeds.some((s) => s.resumed?.includes(name));
      return `${partial ? "> " : ""}${formatDuration(t.reduce((a, b) => a + b, 0) / t.length)}`;
    });
    md.push(`| ${cell(r.label)} | ${cells.join(" | ")} |`);
  }
  md.push("");
  md.push("## Commands", "");
  if (opts.invocation) md.push("The study:", "", "```sh", opts.invocation, "```", "");
  md.push(
    `Each run's steps for seed ${study.seeds[0]} (the other seeds change \`--seed\` and the ` +
      `\`seed<k>\` directory):`,
    "",
  );
  for (const run of study.runs) {
    const u = opts.commands.find((x) => x.run.name === run.name && x.seed === study.seeds[0]);
    if (!u) continue;
    md.push(
      `**${cell(run.label)}** (\`${run.name}\`)${run.description ? `: ${run.description}` : ""}`,
      "",
    );
    md.push("```sh", ...u.steps.map((s) => commandLine(s.script, s.args)), "```", "");
  }
  const failed = opts.failed ?? [];
  if (failed.length) {
    md.push("## Failed steps", "");
    for (const f of failed) {
      md.push(`- ${f.run} seed ${f.seed} ${f.step}: ${f.message.split("\n")[0]}`);
    }
    md.push("");
  }
  const reportPath = `${study.out}/report.md`;
  await writeFileAtomic(reportPath, md.join("\n"));
  const resultsPath = `${study.out}/results.json`;
  const json = {
    study: {
      name: spec.name,
      version: spec.version,
      title: spec.title,
      file: study.file,
      seeds: study.seeds,
      sets: study.sets.map((s) => s.text),
    },
    generated: new Date().toISOString(),
    machine: machine(),
    columns,
    runs: results.map((r, i) => {
      const run = study.runs.find((x) => x.name === r.name)!;
      return {
        name: r.name,
        label: r.label,
        evalOnly: r.evalOnly,
        x: r.x,
        flags: { train: run.train, evals: run.evals },
        summary: Object.fromEntries(
          Object.entries(rows[i].metrics).map((
            [m, s],
          ) => [m, { mean: s.mean, std: s.std, n: s.n }]),
        ),
        seeds: r.seeds.map((s) => ({
          seed: s.seed,
          metrics: Object.fromEntries(
            columns.map((
              c,
            ) => [c.metric, nullIfNaN(metricValue(s.steps, c.metric) * (c.scale ?? 1))]),
          ),
          steps: s.steps,
        })),
      };
    }),
    failed,
  };
  await writeFileAtomic(resultsPath, JSON.stringify(json, nanToNull, 2) + "\n");
  return { report: reportPath, results: resultsPath, plot: drawn ? plotPath : null, table: rows };
}

function nullIfNaN(v: number): number | null {
  return Number.isFinite(v) ? v : null;
}

function nanToNull(_k: string, v: unknown): unknown {
  return typeof v === "number" && !Number.isFinite(v) ? null : v;
}
