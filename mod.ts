/**
 * densedino — a Deno/TypeScript toolkit for dense self-supervised learning (DINO and
 * DenseDINO) on libtorch.
 *
 * Import it from a checkout or a URL:
 *
 * ```ts
 * import * as dd from "https://…/mod.ts";
 * const x = dd.randn([2, 3]);
 * ```
 *
 * The native shim must be built once: `deno task setup` in a checkout, or
 * `deno run -A https://…/native/setup.ts` when importing from a URL (it builds into the
 * per-user cache).
 *
 * @module
 */
export * from "./lib/torch/mod.ts";
export * from "./lib/nn/mod.ts";
export * from "./lib/data/mod.ts";
export * from "./lib/densedino/mod.ts";
export * from "./lib/eval/mod.ts";
export * from "./lib/study/study.ts";
