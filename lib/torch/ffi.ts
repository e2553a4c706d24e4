/**
 * The binding to the native shim: symbol table, library lookup and the last-error slot.
 * This file is the only place that knows about pointers; everything above sees numbers
 * (opaque handles) and typed arrays.
 *
 * @module
 */
import { libraryCandidates, NATIVE_ENV } from "../../native/paths.ts";

/** The ABI version this binding expects (DD_ABI_VERSION in native/include/densedino.h). */
export const ABI_VERSION = 5;

const H = "u32" as const; // tensor / generator handle
const I = "i32" as const;
const L = "i64" as const;
const F = "f64" as const;
const B = "buffer" as const;

const SYMBOLS = {
  dd_abi_version: { parameters: [], result: I },
  dd_last_error: { parameters: [], result: "pointer" },
  dd_torch_version: { parameters: [], result: "pointer" },
  dd_has_sdpa: { parameters: [], result: I },
  dd_cuda_built: { parameters: [], result: I },
  dd_cuda_is_available: { parameters: [], result: I },
  dd_cuda_device_count: { parameters: [], result: I },
  dd_cuda_synchronize: { parameters: [I], result: I },
  dd_cuda_memory_stats: { parameters: [I, B], result: I },
  dd_cuda_reset_peak_memory: { parameters: [I], result: I },
  dd_cuda_empty_cache: { parameters: [], result: I },
  dd_set_num_threads: { parameters: [I], result: I },
  dd_get_num_threads: { parameters: [], result: I },
  dd_manual_seed: { parameters: ["u64"], result: I },
  dd_live_tensors: { parameters: [], result: L },

  dd_from_buffer: { parameters: [B, L, I, B, I], result: H },
  dd_to_buffer: { parameters: [H, B, L], result: I },
  dd_free: { parameters: [H], result: I },
  dd_ndim: { parameters: [H], result: I },
  dd_shape: { parameters: [H, B], result: I },
  dd_strides: { parameters: [H, B], result: I },
  dd_dtype: { parameters: [H], result: I },
  dd_device: { parameters: [H, B], result: I },
  dd_requires_grad: { parameters: [H], result: I },
  dd_is_contiguous: { parameters: [H], result: I },
  dd_is_leaf: { parameters: [H], result: I },
  dd_numel: { parameters: [H], result: L },
  dd_item: { parameters: [H, B], result: I },
  dd_same_storage: { parameters: [H, H], result: I },

  dd_full: { parameters: [B, I, F, I, I, I], result: H },
  dd_empty: { parameters: [B, I, I, I, I], result: H },
  dd_arange: { parameters: [F, F, F, I, I, I], result: H },
  dd_linspace: { parameters: [F, F, L, I, I, I], result: H },
  dd_eye: { parameters: [L, L, I, I, I], result: H },
  dd_like: { parameters: [I, H, I], result: H },
  dd_full_like: { parameters: [H, F, I], result: H },

  dd_generator_new: { parameters: ["u64", I, I], result: H },
  dd_generator_free: { parameters: [H], result: I },
  dd_generator_seed: { parameters: [H, "u64"], result: I },
  dd_generator_get_state: { parameters: [H], result: H },
  dd_generator_set_state: { parameters: [H, H], result: I },
  dd_random: { parameters: [I, B, I, I, I, I, H], result: H },
  dd_randint: { parameters: [L, L, B, I, I, I, I, H], result: H },
  dd_randperm: { parameters: [L, I, I, I, H], result: H },
  dd_bernoulli: { parameters: [H, H], result: H },
  dd_random_: { parameters: [I, H, F, F, F, F, H], result: I },

  dd_unary: { parameters: [I, H], result: H },
  dd_binary: { parameters: [I, H, H, F], result: H },
  dd_binary_scalar: { parameters: [I, H, F], result: H },
  dd_clamp: { parameters: [H, F, F, I, I], result: H },
  dd_clamp_tensor: { parameters: [H, H, H], result: H },
  dd_where: { parameters: [H, H, H], result: H },
  dd_masked_fill: { parameters: [H, H, F], result: H },
  dd_lerp: { parameters: [H, H, F], result: H },
  dd_to: { parameters: [H, I, I, I, I, I], result: H },
  dd_pin_memory: { parameters: [H], result: H },

  dd_binary_: { parameters: [I, H, H, F], result: I },
  dd_binary_scalar_: { parameters: [I, H, F], result: I },
  dd_copy_: { parameters: [H, H], result: I },
  dd_fill_: { parameters: [H, F], result: I },
  dd_zero_: { parameters: [H], result: I },
  dd_clamp_: { parameters: [H, F, F, I, I], result: I },
  dd_masked_fill_: { parameters: [H, H, F], result: I },
  dd_lerp_: { parameters: [H, H, F], result: I },
  dd_addcmul_: { parameters: [H, H, H, F], result: I },
  dd_addcdiv_: { parameters: [H, H, H, F], result: I },

  dd_reduce: { parameters: [I, H, B, I, I, F], result: H },
  dd_max_min_dim: { parameters: [I, H, I, I, B], result: I },
  dd_arg_reduce: { parameters: [I, H, I, I, I], result: H },
  dd_norm: { parameters: [H, F, B, I, I], result: H },
  dd_dim_op: { parameters: [I, H, I], result: H },
  dd_topk: { parameters: [H, L, I, I, I, B], result: I },
  dd_sort: { parameters: [H, I, I, I, B], result: I },
  dd_bincount: { parameters: [H, H, L], result: H },

  dd_reshape: { parameters: [H, B, I], result: H },
  dd_view: { parameters: [H, B, I], result: H },
  dd_expand: { parameters: [H, B, I], result: H },
  dd_repeat: { parameters: [H, B, I], result: H },
  dd_permute: { parameters: [H, B, I], result: H },
  dd_flip: { parameters: [H, B, I], result: H },
  dd_transpose: { parameters: [H, I, I], result: H },
  dd_squeeze: { parameters: [H, I, I], result: H },
  dd_unsqueeze: { parameters: [H, I], result: H },
  dd_flatten: { parameters: [H, I, I], result: H },
  dd_narrow: { parameters: [H, I, L, L], result: H },
  dd_slice: { parameters: [H, I, L, L, L], result: H },
  dd_select: { parameters: [H, I, L], result: H },
  dd_index_select: { parameters: [H, I, H], result: H },
  dd_gather: { parameters: [H, I, H], result: H },
  dd_scatter: { parameters: [H, I, H, H, F, I], result: H },
  dd_index_add: { parameters: [H, I, H, H, F], result: H },
  dd_masked_select: { parameters: [H, H], result: H },
  dd_nonzero: { parameters: [H], result: H },
  dd_tri: { parameters: [H, L, I], result: H },
  dd_one_hot: { parameters: [H, L], result: H },
  dd_cat: { parameters: [B, I, I], result: H },
  dd_stack: { parameters: [B, I, I], result: H },
  dd_chunk: { parameters: [H, I, I, B, I], result: I },
  dd_split: { parameters: [H, B, I, I, B, I], result: I },
  dd_pad: { parameters: [H, B, I, I, F], result: H },

  dd_matmul: { parameters: [H, H], result: H },
  dd_bmm: { parameters: [H, H], result: H },
  dd_linear: { parameters: [H, H, H], result: H },
  dd_einsum: { parameters: [B, B, I], result: H },
  dd_layer_norm: { parameters: [H, B, I, H, H, F], result: H },
  dd_conv2d: { parameters: [H, H, H, L, L, L, L, L, L, L], result: H },
  dd_pool2d: { parameters: [I, H, L, L, L, L, L, L, I], result: H },
  dd_adaptive_avg_pool2d: { parameters: [H, L, L], result: H },
  dd_interpolate: { parameters: [H, I, L, L, F, F, I, I], result: H },
  dd_grid_sample: { parameters: [H, H, I, I, I], result: H },
  dd_cross_entropy: { parameters: [H, H, H, I, L, F], result: H },
  dd_normalize: { parameters: [H, F, I, F], result: H },
  dd_dropout: { parameters: [H, F, I, H], result: H },
  dd_weight_norm: { parameters: [H, H, I], result: H },
  dd_sdpa: { parameters: [H, H, H, H, F, I, F], result: H },

  dd_set_requires_grad: { parameters: [H, I], result: I },
  dd_backward: { parameters: [H, H, I], result: I },
  dd_grad: { parameters: [H, B], result: I },
  dd_set_grad: { parameters: [H, H], result: I },
  dd_set_grad_enabled: { parameters: [I], result: I },
  dd_set_data: { parameters: [H, H], result: I },
  dd_is_grad_enabled: { parameters: [], result: I },

  dd_autocast_enter: { parameters: [I, I, B], result: I },
  dd_autocast_exit: { parameters: [I, I, I], result: I },
  dd_unscale_grads_: { parameters: [B, I, F], result: I },
  dd_ema_: { parameters: [B, B, I, F], result: I },
  dd_clip_grad_norms_: { parameters: [B, I, F, B], result: I },
  dd_clip_grad_norm_total_: { parameters: [B, I, F, B], result: I },
  dd_zero_grads: { parameters: [B, I, I], result: I },
  dd_adamw_step: { parameters: [B, B, B, B, I, F, F, F, F, F], result: I },
  dd_sgd_step: { parameters: [B, B, I, F, F, F, F, I], result: I },

  dd_dist_available: { parameters: [I], result: I },
  dd_dist_init: { parameters: [I, I, B, I, L, I, I], result: H },
  dd_dist_destroy: { parameters: [H], result: I },
  dd_dist_info: { parameters: [H, B], result: I },
  dd_dist_allreduce: { parameters: [H, B, I, I, L], result: I },
  dd_dist_allreduce_grads: { parameters: [H, B, I, I, L], result: I },
  dd_dist_broadcast: { parameters: [H, B, I, I, L], result: I },
  dd_dist_allgather: { parameters: [H, H], result: H },
  dd_dist_barrier: { parameters: [H], result: I },
} as const;

type Raw = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
// Deno accepts a JS number for an i64 / u64 parameter (exact below 2^53) although its
// declarations say bigint; widening the parameter types avoids a BigInt per call.
type Widen<A> = { [K in keyof A]: A[K] extends bigint ? bigint | number : A[K] };
type Relax<F> = F extends (...args: infer A) => infer R ? (...args: Widen<A>) => R : F;

/** The type of the loaded symbol table. */
export type Native = { [K in keyof Raw]: Relax<Raw[K]> };

/** Raised when the native library cannot be found or loaded. */
export class NativeLoadError extends Error {
  /** An error with the given message (which says where the library was looked for). */
  constructor(message: string) {
    super(message);
    this.name = "NativeLoadError";
  }
}

const BUILD_HINT =
  "Build it with `deno task setup` in a checkout, or, when importing the toolkit " +
  "from a URL, `deno run -A <base-url>/native/setup.ts` (builds into the per-user cache).";

function open(): Native {
  const explicit = (() => {
    try {
      return Deno.env.get(NATIVE_ENV);
    } catch {
      return undefined;
    }
  })();
  const candidates = explicit
    ? [{ path: explicit, source: `$${NATIVE_ENV}` }]
    : libraryCandidates();
  const tried: string[] = [];
  for (const c of candidates) {
    try {
      Deno.statSync(c.path);
    } catch {
      tried.push(`${c.path} (${c.source}: not found)`);
      continue;
    }
    let lib: Deno.DynamicLibrary<typeof SYMBOLS>;
    try {
      lib = Deno.dlopen(c.path, SYMBOLS);
    } catch (e) {
      throw new NativeLoadError(
        `could not load the densedino native library ${c.path} (${c.source}): ${
          (e as Error).message
        }. It may be stale or built for another libtorch. ${BUILD_HINT}`,
      );
    }
    const abi = lib.symbols.dd_abi_version();
    if (abi !== ABI_VERSION) {
      lib.close();
      throw new NativeLoadError(
        `the native library ${c.path} has ABI version ${abi}, this code expects ${ABI_VERSION}. ` +
          `Rebuild it. ${BUILD_HINT}`,
      );
    }
    return lib.symbols as unknown as Native;
  }
  throw new NativeLoadError(
    `the densedino native library was not found. Looked in:\n  ${
      tried.join("\n  ")
    }\n${BUILD_HINT}`,
  );
}

let loaded: Native | null = null;

/** The native symbols, loaded on first use. */
export function native(): Native {
  if (loaded === null) loaded = open();
  return loaded;
}

/** This thread's last native error message. */
export function lastError(): string {
  const p = native().dd_last_error();
  return p === null ? "" : Deno.UnsafePointerView.getCString(p);
}

/** The libtorch version the shim was built against. */
export function torchVersion(): string {
  const p = native().dd_torch_version();
  return p === null ? "unknown" : Deno.UnsafePointerView.getCString(p);
}

/** Encodes a string as a NUL-terminated byte buffer for `const char*` parameters. */
export function cString(s: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(s);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}
