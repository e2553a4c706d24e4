/**
 * Weighted k-nearest-neighbour classification of frozen features, the protocol of DINO's
 * `eval_knn` (Caron et al. 2021, after Wu et al. 2018) that the DenseDINO paper reports (§4.1):
 *
 * 1. train (memory bank) and test features are L2-normalised;
 * 2. each chunk of test queries is compared with the whole bank by cosine similarity (a matrix
 *    product) and its k most similar bank entries are taken;
 * 3. neighbour j votes for its label with weight `exp(sim_j / T)` (T = 0.07);
 * 4. classes are ranked by their summed votes; top-1 / top-5 accuracy (in %) count queries whose
 *    label ranks first / among the first five.
 *
 * Ties between classes' vote sums (in practice: classes without votes) rank by class index,
 * lower first — what a stable descending sort of the votes gives.
 *
 * @module
 */
import { arange, noGrad, normalize, scope, type Tensor, zeros } from "../torch/mod.ts";
import { EvalError } from "./backbone.ts";

/** The k values DINO reports (the paper quotes k = 20). */
export const DEFAULT_KNN_KS: readonly number[] = Object.freeze([10, 20, 100, 200]);
/** The vote temperature T of `exp(sim / T)`. */
export const DEFAULT_KNN_TEMPERATURE = 0.07;
/** Test queries per similarity chunk. */
export const DEFAULT_KNN_CHUNK = 256;

/** Options of {@link knnClassify}. */
export interface KnnOptions {
  /** the k values to evaluate (default 10, 20, 100, 200); each is clamped to the bank size */
  ks?: readonly number[];
  /** vote temperature T (default 0.07) */
  temperature?: number;
  /** test queries compared with the bank at a time (default 256; results do not depend on it) */
  chunk?: number;
  /** number of classes (default: 1 + the largest label of train and test) */
  numClasses?: number;
  /** receives notes (e.g. a k clamped to the bank size) */
  log?: (message: string) => void;
}

/** Accuracy for one k. */
export interface KnnResult {
  /** the k used (the requested one, clamped to the bank size) */
  k: number;
  /** top-1 accuracy in % */
  top1: number;
  /** top-5 accuracy in % (null with fewer than 5 classes) */
  top5: number | null;
  /** the requested k when it was clamped to the bank size */
  requested?: number;
}

/** Labelled features: `features` [N, D] (floating), `labels` [N] (integer class indices). */
export interface LabelledFeatures {
  /** [N, D] */
  features: Tensor;
  /** [N], integers in [0, numClasses) */
  labels: Tensor;
}

function checkSet(s: LabelledFeatures, what: string): { n: number; d: number } {
  const f = s.features, l = s.labels;
  if (f.ndim !== 2) {
    throw new EvalError(`k-NN: ${what} features must be [N, D], got [${f.shape.join(", ")}]`);
  }
  if (!["float32", "float64", "float16", "bfloat16"].includes(f.dtype)) {
    throw new EvalError(`k-NN: ${what} features must be floating point, got ${f.dtype}`);
  }
  if (l.ndim !== 1 || l.size(0) !== f.size(0)) {
    throw new EvalError(
      `k-NN: ${what} labels must be [N] with N = ${f.size(0)} (one per feature row), got [${
        l.shape.join(", ")
      }]`,
    );
  }
  if (!["int64", "int32", "int16", "int8", "uint8"].includes(l.dtype)) {
    throw new EvalError(`k-NN: ${what} labels must be integers, got ${l.dtype}`);
  }
  return { n: f.size(0), d: f.size(1) };
}

function labelRange(l: Tensor): [number, number] {
  return scope(() => [l.amin().item(), l.amax().item()]);
}

/**
 * Weighted k-NN accuracy of `test` against the memory bank `train` for every k in `opts.ks`
 * (see the module description). Both feature sets are L2-normalised here (already normalised
 * input is fine). Returns one {@link KnnResult} per requested k, in order; a k larger than the
 * bank is clamped to it (with a note through `opts.log`).
 *
 * Errors ({@link EvalError}): an empty bank or test set, feature widths that differ, labels
 * that are not integers in [0, numClasses) (e.g. −1 for "no label"), a bad k or temperature.
 */
export function knnClassify(
  train: LabelledFeatures,
  test: LabelledFeatures,
  opts: KnnOptions = {},
): KnnResult[] {
  const bank = checkSet(train, "train");
  const query = checkSet(test, "test");
  if (bank.n === 0) throw new EvalError("k-NN: the memory bank (train features) is empty");
  if (query.n === 0) throw new EvalError("k-NN: there are no test features");
  if (bank.d !== query.d) {
    throw new EvalError(
      `k-NN: train features have ${bank.d} dimensions but test features ${query.d}: they must ` +
        `come from the same model and layer`,
    );
  }
  const T = opts.temperature ?? DEFAULT_KNN_TEMPERATURE;
  if (!(T > 0) || !Number.isFinite(T)) {
    throw new EvalError(`k-NN: temperature must be a positive number, got ${T}`);
  }
  const chunk = opts.chunk ?? DEFAULT_KNN_CHUNK;
  if (!Number.isInteger(chunk) || chunk < 1) {
    throw new EvalError(`k-NN: chunk must be a positive integer, got ${chunk}`);
  }
  const requested = [...(opts.ks ?? DEFAULT_KNN_KS)];
  if (requested.length === 0) throw new EvalError("k-NN: no k given");
  for (const k of requested) {
    if (!Number.isInteger(k) || k < 1) {
      throw new EvalError(`k-NN: every k must be a positive integer, got ${k}`);
    }
  }
  const [trMin, trMax] = labelRange(train.labels);
  const [teMin, teMax] = labelRange(test.labels);
  const C = opts.numClasses ?? Math.max(trMax, teMax) + 1;
  if (!Number.isInteger(C) || C < 1) {
    throw new EvalError(`k-NN: numClasses must be a positive integer, got ${C}`);
  }
  for (const [what, lo, hi] of [["train", trMin, trMax], ["test", teMin, teMax]] as const) {
    if (lo < 0 || hi >= C) {
      throw new EvalError(
        `k-NN: ${what} labels must lie in [0, ${C - 1}] (${C} classes), found ${lo < 0 ? lo : hi}` +
          (lo < 0 ? " (examples without a label cannot be classified or vote)" : ""),
      );
    }
  }
  const ks = requested.map((k) => Math.min(k, bank.n));
  requested.forEach((k, i) => {
    if (ks[i] !== k) {
      opts.log?.(`note: k = ${k} exceeds the memory bank (${bank.n} examples): using k = ${ks[i]}`);
    }
  });
  const kMax = Math.max(...ks);
  const top5 = C >= 5;
  const correct1 = new Float64Array(ks.length);
  const correct5 = new Float64Array(ks.length);

  noGrad(() => {
    const device = train.features.device;
    const bankF = scope(() =>
      normalize(train.features.float(), { dim: 1 }).transpose(0, 1).contiguous()
    );
    const bankL = scope(() => train.labels.long().to(device));
    const classIdx = scope(() => arange(0, C, 1, { device }).long().unsqueeze(0)); // [1, C]
    try {
      for (let start = 0; start < query.n; start += chunk) {
        const B = Math.min(chunk, query.n - start);
        scope(() => {
          const q = normalize(test.features.narrow(0, start, B).float().to(device), { dim: 1 });
          const target = test.labels.narrow(0, start, B).long().to(device).unsqueeze(1); // [B,1]
          const sim = q.matmul(bankF); // [B, N]
          const { values, indices } = sim.topk(kMax, { dim: 1, largest: true, sorted: true });
          const neighbourLabels = bankL.unsqueeze(0).expand([B, bank.n]).gather(1, indices);
          const weights = values.div(T).exp(); // [B, kMax]
          ks.forEach((k, i) => {
            const votes = zeros([B, C], { device }).scatterAdd(
              1,
              neighbourLabels.narrow(1, 0, k),
              weights.narrow(1, 0, k),
            );
            // rank of the true class: classes with more votes, plus equal ones of lower index
            const own = votes.gather(1, target); // [B, 1]
            const rank = votes.gt(own).sum(1).add(
              votes.eq(own).logicalAnd(classIdx.lt(target)).sum(1),
            );
            correct1[i] += rank.eq(0).sum().item();
            if (top5) correct5[i] += rank.lt(5).sum().item();
          });
        });
      }
    } finally {
      bankF.free();
      bankL.free();
      classIdx.free();
    }
  });

  return ks.map((k, i) => {
    const r: KnnResult = {
      k,
      top1: (100 * correct1[i]) / query.n,
      top5: top5 ? (100 * correct5[i]) / query.n : null,
    };
    if (k !== requested[i]) r.requested = requested[i];
    return r;
  });
}
