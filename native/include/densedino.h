/*
 * densedino.h — the C ABI of the densedino native shim over libtorch.
 *
 * Plain C types only: tensors and generators are opaque 32-bit handles, lists are
 * pointer + length, scalars are doubles. No C++ type and no exception crosses this
 * boundary. Every function catches everything; failure is reported as:
 *   - a handle-returning function returns 0 (DD_NONE);
 *   - a status-returning function returns a negative value;
 * and the message is read with dd_last_error() on the SAME thread (the error slot,
 * like libtorch's grad mode, is thread-local).
 *
 * Handles are owned by the caller: every handle returned must be released exactly once
 * with dd_free(). A freed or never-issued handle is detected (generation check) and
 * reported as an error instead of touching freed memory.
 *
 * Integer conventions: sizes (shapes) are int64_t arrays; dimensions (axes) are int32_t
 * arrays; boolean flags are int32_t (0 / non-zero).
 */
#ifndef DENSEDINO_H
#define DENSEDINO_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DD_ABI_VERSION 5

#if defined(_WIN32)
#define DD_API __declspec(dllexport)
#else
#define DD_API __attribute__((visibility("default")))
#endif

typedef uint32_t dd_tensor;    /* 0 = none / error */
typedef uint32_t dd_generator; /* 0 = the default CPU generator */
#define DD_NONE 0u

/* dtype codes (equal to c10::ScalarType values) */
enum {
  DD_U8 = 0, DD_I8 = 1, DD_I16 = 2, DD_I32 = 3, DD_I64 = 4, DD_F16 = 5, DD_F32 = 6,
  DD_F64 = 7, DD_BOOL = 11, DD_BF16 = 15
};
/* device types (equal to c10::DeviceType values) */
enum { DD_CPU = 0, DD_CUDA = 1 };

/* ---- library, errors, runtime --------------------------------------------------- */
DD_API int32_t dd_abi_version(void);
DD_API const char* dd_last_error(void);       /* message of this thread's last failure */
DD_API const char* dd_torch_version(void);    /* e.g. "1.13.0" */
DD_API int32_t dd_has_sdpa(void);             /* 1 when built with scaled_dot_product_attention */
DD_API int32_t dd_cuda_built(void);           /* 1 when the shim was built with CUDA support */
DD_API int32_t dd_cuda_is_available(void);
DD_API int32_t dd_cuda_device_count(void);
DD_API int32_t dd_cuda_synchronize(int32_t device);            /* <0: error (e.g. no CUDA) */
/* out[0..3] = allocated, peak allocated, reserved, peak reserved (bytes) */
DD_API int32_t dd_cuda_memory_stats(int32_t device, double* out);
DD_API int32_t dd_cuda_reset_peak_memory(int32_t device);
DD_API int32_t dd_cuda_empty_cache(void);
DD_API int32_t dd_set_num_threads(int32_t n);
DD_API int32_t dd_get_num_threads(void);
DD_API int32_t dd_manual_seed(uint64_t seed);                  /* seeds all default generators */
DD_API int64_t dd_live_tensors(void);                          /* handles issued and not freed */

/* ---- tensor lifecycle, host IO, metadata ---------------------------------------- */
/* copies nbytes from data; nbytes must equal numel * element size of dtype */
DD_API dd_tensor dd_from_buffer(const void* data, int64_t nbytes, int32_t dtype,
                                const int64_t* shape, int32_t ndim);
/* copies the tensor's elements (contiguous, row-major) into out; nbytes must match */
DD_API int32_t dd_to_buffer(dd_tensor t, void* out, int64_t nbytes);
DD_API int32_t dd_free(dd_tensor t);
DD_API int32_t dd_ndim(dd_tensor t);
DD_API int32_t dd_shape(dd_tensor t, int64_t* out);          /* writes ndim sizes */
DD_API int32_t dd_strides(dd_tensor t, int64_t* out);
DD_API int32_t dd_dtype(dd_tensor t);
DD_API int32_t dd_device(dd_tensor t, int32_t* out);         /* out[0] = type, out[1] = index */
DD_API int32_t dd_requires_grad(dd_tensor t);
DD_API int32_t dd_is_contiguous(dd_tensor t);
DD_API int32_t dd_is_leaf(dd_tensor t);
DD_API int64_t dd_numel(dd_tensor t);
DD_API int32_t dd_item(dd_tensor t, double* out);            /* one-element tensor */
DD_API int32_t dd_same_storage(dd_tensor a, dd_tensor b);    /* 1 if they share storage */

/* ---- creation ------------------------------------------------------------------- */
DD_API dd_tensor dd_full(const int64_t* shape, int32_t ndim, double value, int32_t dtype,
                         int32_t device_type, int32_t device_index);
DD_API dd_tensor dd_empty(const int64_t* shape, int32_t ndim, int32_t dtype,
                          int32_t device_type, int32_t device_index);
DD_API dd_tensor dd_arange(double start, double end, double step, int32_t dtype,
                           int32_t device_type, int32_t device_index);
DD_API dd_tensor dd_linspace(double start, double end, int64_t steps, int32_t dtype,
                             int32_t device_type, int32_t device_index);
DD_API dd_tensor dd_eye(int64_t n, int64_t m, int32_t dtype, int32_t device_type,
                        int32_t device_index);
/* like_op: 0 zeros_like, 1 ones_like, 2 empty_like; dtype -1 keeps the input's */
DD_API dd_tensor dd_like(int32_t like_op, dd_tensor t, int32_t dtype);
DD_API dd_tensor dd_full_like(dd_tensor t, double value, int32_t dtype);

/* ---- random (gen 0 = default generator of the target device) --------------------- */
DD_API dd_generator dd_generator_new(uint64_t seed, int32_t device_type, int32_t device_index);
DD_API int32_t dd_generator_free(dd_generator g);
DD_API int32_t dd_generator_seed(dd_generator g, uint64_t seed);
DD_API dd_tensor dd_generator_get_state(dd_generator g);    /* uint8 CPU tensor */
DD_API int32_t dd_generator_set_state(dd_generator g, dd_tensor state);
/* kind: 0 rand U[0,1), 1 randn N(0,1) */
DD_API dd_tensor dd_random(int32_t kind, const int64_t* shape, int32_t ndim, int32_t dtype,
                           int32_t device_type, int32_t device_index, dd_generator g);
DD_API dd_tensor dd_randint(int64_t low, int64_t high, const int64_t* shape, int32_t ndim,
                            int32_t dtype, int32_t device_type, int32_t device_index,
                            dd_generator g);
DD_API dd_tensor dd_randperm(int64_t n, int32_t dtype, int32_t device_type,
                             int32_t device_index, dd_generator g);
DD_API dd_tensor dd_bernoulli(dd_tensor probs, dd_generator g);
/* in-place fills. kind: 0 uniform_(a,b), 1 normal_(mean=a,std=b), 2 bernoulli_(p=a),
 * 3 trunc_normal_(mean=a, std=b, lo=c, hi=d) as torch.nn.init.trunc_normal_ */
DD_API int32_t dd_random_(int32_t kind, dd_tensor t, double a, double b, double c, double d,
                          dd_generator g);

/* ---- elementwise ---------------------------------------------------------------- */
enum {
  DD_NEG = 0, DD_ABS, DD_SQRT, DD_RSQRT, DD_EXP, DD_LOG, DD_LOG1P, DD_FLOOR, DD_CEIL,
  DD_ROUND, DD_TRUNC, DD_SIGN, DD_SIGMOID, DD_TANH, DD_RELU, DD_GELU, DD_GELU_TANH, DD_SILU,
  DD_SIN, DD_COS, DD_RECIPROCAL, DD_ERF, DD_ERFINV, DD_SQUARE, DD_LOGICAL_NOT, DD_ISNAN,
  DD_ISFINITE, DD_CONTIGUOUS, DD_CLONE, DD_DETACH, DD_EXPM1, DD_ALIAS, DD_UNARY_COUNT
};
/* DD_ALIAS: a new handle to the same tensor (same data and autograd identity) */
DD_API dd_tensor dd_unary(int32_t op, dd_tensor a);

enum {
  DD_ADD = 0, DD_SUB, DD_MUL, DD_DIV, DD_POW, DD_MAXIMUM, DD_MINIMUM, DD_EQ, DD_NE, DD_LT,
  DD_LE, DD_GT, DD_GE, DD_LOGICAL_AND, DD_LOGICAL_OR, DD_REMAINDER, DD_ATAN2, DD_FLOOR_DIVIDE,
  DD_RSUB, DD_RDIV, DD_RPOW, DD_BINARY_COUNT
};
/* alpha scales b for add/sub (a + alpha*b); ignored otherwise */
DD_API dd_tensor dd_binary(int32_t op, dd_tensor a, dd_tensor b, double alpha);
/* a (op) scalar; DD_RSUB: s - a, DD_RDIV: s / a, DD_RPOW: s ** a */
DD_API dd_tensor dd_binary_scalar(int32_t op, dd_tensor a, double s);
/* has_min / has_max select which bounds apply */
DD_API dd_tensor dd_clamp(dd_tensor a, double min, double max, int32_t has_min, int32_t has_max);
DD_API dd_tensor dd_clamp_tensor(dd_tensor a, dd_tensor min, dd_tensor max); /* either may be 0 */
DD_API dd_tensor dd_where(dd_tensor cond, dd_tensor a, dd_tensor b);
DD_API dd_tensor dd_masked_fill(dd_tensor a, dd_tensor mask, double value);
DD_API dd_tensor dd_lerp(dd_tensor a, dd_tensor b, double weight);
/* dtype cast and/or device move; dtype -1 keeps, device_type -1 keeps */
DD_API dd_tensor dd_to(dd_tensor a, int32_t dtype, int32_t device_type, int32_t device_index,
                       int32_t non_blocking, int32_t copy);
DD_API dd_tensor dd_pin_memory(dd_tensor a);

/* ---- in-place (for optimisers, EMA, initialisation) ------------------------------ */
/* ops: DD_ADD (a += alpha*b), DD_SUB, DD_MUL, DD_DIV, DD_MAXIMUM(→ a = max(a,b)); plus copy */
DD_API int32_t dd_binary_(int32_t op, dd_tensor a, dd_tensor b, double alpha);
DD_API int32_t dd_binary_scalar_(int32_t op, dd_tensor a, double s);   /* add/sub/mul/div/pow */
DD_API int32_t dd_copy_(dd_tensor dst, dd_tensor src);
DD_API int32_t dd_fill_(dd_tensor a, double value);
DD_API int32_t dd_zero_(dd_tensor a);
DD_API int32_t dd_clamp_(dd_tensor a, double min, double max, int32_t has_min, int32_t has_max);
DD_API int32_t dd_masked_fill_(dd_tensor a, dd_tensor mask, double value);
DD_API int32_t dd_lerp_(dd_tensor a, dd_tensor b, double weight);
DD_API int32_t dd_addcmul_(dd_tensor a, dd_tensor b, dd_tensor c, double value);
DD_API int32_t dd_addcdiv_(dd_tensor a, dd_tensor b, dd_tensor c, double value);

/* ---- reductions ------------------------------------------------------------------ */
enum {
  DD_SUM = 0, DD_MEAN, DD_AMAX, DD_AMIN, DD_LOGSUMEXP, DD_PROD, DD_ALL, DD_ANY, DD_VAR, DD_STD,
  DD_REDUCE_COUNT
};
/* ndims == 0 reduces over every dimension. correction (0 or 1) is used by var/std only. */
DD_API dd_tensor dd_reduce(int32_t op, dd_tensor a, const int32_t* dims, int32_t ndims,
                           int32_t keepdim, double correction);
/* values + indices along dim: op DD_AMAX → max, DD_AMIN → min; out[0..1] */
DD_API int32_t dd_max_min_dim(int32_t op, dd_tensor a, int32_t dim, int32_t keepdim,
                              dd_tensor* out);
/* argmax / argmin (op DD_AMAX / DD_AMIN); has_dim 0 flattens */
DD_API dd_tensor dd_arg_reduce(int32_t op, dd_tensor a, int32_t dim, int32_t has_dim,
                               int32_t keepdim);
/* vector p-norm (p = inf allowed) over dims (ndims 0: all) */
DD_API dd_tensor dd_norm(dd_tensor a, double p, const int32_t* dims, int32_t ndims,
                         int32_t keepdim);
/* op: 0 softmax, 1 log_softmax, 2 cumsum, 3 cumprod */
DD_API dd_tensor dd_dim_op(int32_t op, dd_tensor a, int32_t dim);
DD_API int32_t dd_topk(dd_tensor a, int64_t k, int32_t dim, int32_t largest, int32_t sorted,
                       dd_tensor* out);
DD_API int32_t dd_sort(dd_tensor a, int32_t dim, int32_t descending, int32_t stable,
                       dd_tensor* out);
DD_API dd_tensor dd_bincount(dd_tensor a, dd_tensor weights, int64_t minlength);

/* ---- shape and indexing ---------------------------------------------------------- */
DD_API dd_tensor dd_reshape(dd_tensor a, const int64_t* shape, int32_t ndim);
DD_API dd_tensor dd_view(dd_tensor a, const int64_t* shape, int32_t ndim);
DD_API dd_tensor dd_expand(dd_tensor a, const int64_t* shape, int32_t ndim);
DD_API dd_tensor dd_repeat(dd_tensor a, const int64_t* reps, int32_t ndim);
DD_API dd_tensor dd_permute(dd_tensor a, const int32_t* dims, int32_t ndims);
DD_API dd_tensor dd_flip(dd_tensor a, const int32_t* dims, int32_t ndims);
DD_API dd_tensor dd_transpose(dd_tensor a, int32_t d0, int32_t d1);
DD_API dd_tensor dd_squeeze(dd_tensor a, int32_t dim, int32_t has_dim);
DD_API dd_tensor dd_unsqueeze(dd_tensor a, int32_t dim);
DD_API dd_tensor dd_flatten(dd_tensor a, int32_t start, int32_t end);
DD_API dd_tensor dd_narrow(dd_tensor a, int32_t dim, int64_t start, int64_t length);
DD_API dd_tensor dd_slice(dd_tensor a, int32_t dim, int64_t start, int64_t end, int64_t step);
DD_API dd_tensor dd_select(dd_tensor a, int32_t dim, int64_t index);
DD_API dd_tensor dd_index_select(dd_tensor a, int32_t dim, dd_tensor index);
DD_API dd_tensor dd_gather(dd_tensor a, int32_t dim, dd_tensor index);
/* reduce: 0 replace, 1 add. src 0 → fill with value */
DD_API dd_tensor dd_scatter(dd_tensor a, int32_t dim, dd_tensor index, dd_tensor src,
                            double value, int32_t reduce);
/* a copy of a with alpha * src added at `index` along dim (torch.index_add) */
DD_API dd_tensor dd_index_add(dd_tensor a, int32_t dim, dd_tensor index, dd_tensor src,
                              double alpha);
DD_API dd_tensor dd_masked_select(dd_tensor a, dd_tensor mask);
DD_API dd_tensor dd_nonzero(dd_tensor a);
DD_API dd_tensor dd_tri(dd_tensor a, int64_t diagonal, int32_t upper);
DD_API dd_tensor dd_one_hot(dd_tensor a, int64_t num_classes);
/* lists: in = array of handles; outputs written to out (capacity out_cap); returns count */
DD_API dd_tensor dd_cat(const dd_tensor* ts, int32_t n, int32_t dim);
DD_API dd_tensor dd_stack(const dd_tensor* ts, int32_t n, int32_t dim);
DD_API int32_t dd_chunk(dd_tensor a, int32_t chunks, int32_t dim, dd_tensor* out, int32_t out_cap);
DD_API int32_t dd_split(dd_tensor a, const int64_t* sizes, int32_t nsizes, int32_t dim,
                        dd_tensor* out, int32_t out_cap);
/* pads as torch.nn.functional.pad (last dim first); mode 0 constant, 1 reflect, 2 replicate,
 * 3 circular */
DD_API dd_tensor dd_pad(dd_tensor a, const int64_t* pads, int32_t npads, int32_t mode,
                        double value);

/* ---- linear algebra and neural-network ops --------------------------------------- */
DD_API dd_tensor dd_matmul(dd_tensor a, dd_tensor b);
DD_API dd_tensor dd_bmm(dd_tensor a, dd_tensor b);
DD_API dd_tensor dd_linear(dd_tensor x, dd_tensor w, dd_tensor b);        /* b may be 0 */
DD_API dd_tensor dd_einsum(const char* equation, const dd_tensor* ts, int32_t n);
DD_API dd_tensor dd_layer_norm(dd_tensor x, const int64_t* shape, int32_t ndim, dd_tensor w,
                               dd_tensor b, double eps);
DD_API dd_tensor dd_conv2d(dd_tensor x, dd_tensor w, dd_tensor b, int64_t sh, int64_t sw,
                           int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups);
/* op: 0 avg, 1 max */
DD_API dd_tensor dd_pool2d(int32_t op, dd_tensor x, int64_t kh, int64_t kw, int64_t sh,
                           int64_t sw, int64_t ph, int64_t pw, int32_t ceil_mode);
DD_API dd_tensor dd_adaptive_avg_pool2d(dd_tensor x, int64_t oh, int64_t ow);
/* mode: 0 nearest, 1 bilinear, 2 bicubic, 3 nearest-exact. Either size (oh,ow > 0) or scale
 * (sh, sw > 0), as torch.nn.functional.interpolate with recompute_scale_factor=None. */
DD_API dd_tensor dd_interpolate(dd_tensor x, int32_t mode, int64_t oh, int64_t ow, double sh,
                                double sw, int32_t align_corners, int32_t antialias);
/* mode: 0 bilinear, 1 nearest, 2 bicubic; padding: 0 zeros, 1 border, 2 reflection */
DD_API dd_tensor dd_grid_sample(dd_tensor x, dd_tensor grid, int32_t mode, int32_t padding,
                                int32_t align_corners);
/* reduction: 0 none, 1 mean, 2 sum */
DD_API dd_tensor dd_cross_entropy(dd_tensor logits, dd_tensor target, dd_tensor weight,
                                  int32_t reduction, int64_t ignore_index,
                                  double label_smoothing);
DD_API dd_tensor dd_normalize(dd_tensor x, double p, int32_t dim, double eps);
DD_API dd_tensor dd_dropout(dd_tensor x, double p, int32_t train, dd_generator g);
DD_API dd_tensor dd_weight_norm(dd_tensor v, dd_tensor g, int32_t dim);
/* scaled_dot_product_attention (libtorch >= 2.0; else an error). mask may be 0. scale <= 0:
 * default 1/sqrt(head_dim) */
DD_API dd_tensor dd_sdpa(dd_tensor q, dd_tensor k, dd_tensor v, dd_tensor mask,
                         double dropout, int32_t is_causal, double scale);

/* ---- autograd -------------------------------------------------------------------- */
DD_API int32_t dd_set_requires_grad(dd_tensor t, int32_t flag);
DD_API int32_t dd_backward(dd_tensor t, dd_tensor grad, int32_t retain_graph);
/* writes the gradient handle to out; returns 1 defined, 0 undefined (None), <0 error */
DD_API int32_t dd_grad(dd_tensor t, dd_tensor* out);
DD_API int32_t dd_set_grad(dd_tensor t, dd_tensor grad);   /* grad 0 → None */
DD_API int32_t dd_set_grad_enabled(int32_t flag);          /* returns the previous state */
/* replaces t's data with src's (same handle, autograd identity kept; as `p.data = src` in
 * PyTorch): how a module moves its parameters to another device or dtype in place */
DD_API int32_t dd_set_data(dd_tensor t, dd_tensor src);
DD_API int32_t dd_is_grad_enabled(void);

/* ---- mixed precision ------------------------------------------------------------------- */
/* autocast on device_type (DD_CPU / DD_CUDA) to dtype (DD_BF16 / DD_F16) on this thread;
 * state_out[0..1] receive the previous enabled flag and dtype, for dd_autocast_exit */
DD_API int32_t dd_autocast_enter(int32_t device_type, int32_t dtype, int32_t* state_out);
/* restores the state dd_autocast_enter returned; clears the cast cache when leaving the
 * outermost region */
DD_API int32_t dd_autocast_exit(int32_t device_type, int32_t prev_enabled, int32_t prev_dtype);
/* grads ← grads·inv_scale for every parameter with a gradient; returns 1 when any gradient
 * holds an inf or NaN (one device sync), 0 otherwise (fp16 loss scaling) */
DD_API int32_t dd_unscale_grads_(const dd_tensor* params, int32_t n, double inv_scale);

/* ---- per-parameter loops: one call over a list ----------------------------------- */
/* teacher = m*teacher + (1-m)*student, without autograd */
DD_API int32_t dd_ema_(const dd_tensor* teacher, const dd_tensor* student, int32_t n,
                       double momentum);
/* each parameter's gradient is scaled to norm <= max_norm (coef max_norm/(norm+1e-6)) as the
 * official DINO clip_gradients. Parameters without gradient are skipped. If norms_out is
 * non-null it receives a float32 tensor of the norms before clipping (one per gradient). */
DD_API int32_t dd_clip_grad_norms_(const dd_tensor* params, int32_t n, double max_norm,
                                   dd_tensor* norms_out);
/* global-norm clipping (torch.nn.utils.clip_grad_norm_); writes the total norm tensor */
DD_API int32_t dd_clip_grad_norm_total_(const dd_tensor* params, int32_t n, double max_norm,
                                        dd_tensor* norm_out);
/* set_to_none: 1 drops the gradients (as p.grad = None), 0 zeros them in place */
DD_API int32_t dd_zero_grads(const dd_tensor* params, int32_t n, int32_t set_to_none);
/* One AdamW step (torch.optim.AdamW, amsgrad=False) over a parameter group. Parameters whose
 * gradient is undefined are skipped and their step count is not advanced. steps[i] holds each
 * parameter's step count (read and updated). */
DD_API int32_t dd_adamw_step(const dd_tensor* params, const dd_tensor* exp_avg,
                             const dd_tensor* exp_avg_sq, double* steps, int32_t n, double lr,
                             double beta1, double beta2, double eps, double weight_decay);
/* One SGD step with momentum / weight decay / nesterov (torch.optim.SGD); bufs[i] may be 0
 * on the first step: a new buffer handle is then written back into bufs[i]. */
DD_API int32_t dd_sgd_step(const dd_tensor* params, dd_tensor* bufs, int32_t n, double lr,
                           double momentum, double dampening, double weight_decay,
                           int32_t nesterov);

/* ---- distributed: c10d (TCPStore rendezvous + Gloo / NCCL process group) ------------ */
typedef uint32_t dd_group; /* 0 = none / error */
enum { DD_GLOO = 0, DD_NCCL = 1 };
/* DD_RED_AVG is computed as SUM then / world (Gloo has no AVG), floating tensors only */
enum { DD_RED_SUM = 0, DD_RED_AVG = 1, DD_RED_PRODUCT = 2, DD_RED_MIN = 3, DD_RED_MAX = 4 };

/* 1 when the backend (DD_GLOO / DD_NCCL) was compiled in, 0 when not */
DD_API int32_t dd_dist_available(int32_t backend);
/* Rendezvous at master_addr:port (rank 0 hosts the TCPStore and waits until all world ranks
 * connected), checks that the ranks are distinct and agree on world, then builds the group.
 * timeout_ms bounds the rendezvous and every later collective (a dead or stuck peer becomes
 * an error). device_index: this rank's CUDA device (NCCL; ignored by Gloo). Gloo binds the
 * interfaces named in GLOO_SOCKET_IFNAME when set, loopback when master_addr is loopback, else
 * the address of this host's name. Without the backend compiled in: an error saying how to
 * rebuild. */
DD_API dd_group dd_dist_init(int32_t rank, int32_t world, const char* master_addr,
                             int32_t port, int64_t timeout_ms, int32_t backend,
                             int32_t device_index);
/* releases the group (NCCL: shutdown first) and its store; works on a broken group */
DD_API int32_t dd_dist_destroy(dd_group g);
/* out[0..3] = rank, world, backend, broken (1 after a failed collective) */
DD_API int32_t dd_dist_info(dd_group g, int32_t* out);
/* In place over all ranks. The n tensors are packed into contiguous flat buckets of at most
 * bucket_bytes (<= 0: 25 MiB), grouped by dtype and device in the given order, one collective
 * per bucket; a single contiguous tensor is reduced directly. After any failure the group is
 * broken: every later call fails at once with the first error. */
DD_API int32_t dd_dist_allreduce(dd_group g, const dd_tensor* ts, int32_t n, int32_t op,
                                 int64_t bucket_bytes);
/* The gradients of params summed (average 0) or averaged over ranks, bucketed as above. A
 * parameter without gradient on this rank contributes zeros; it ends with a gradient iff some
 * rank had one (one small MAX all_reduce of per-parameter flags first). */
DD_API int32_t dd_dist_allreduce_grads(dd_group g, const dd_tensor* params, int32_t n,
                                       int32_t average, int64_t bucket_bytes);
/* root's values to every rank, in place (bucketed as above; parameters: without autograd) */
DD_API int32_t dd_dist_broadcast(dd_group g, const dd_tensor* ts, int32_t n, int32_t root,
                                 int64_t bucket_bytes);
/* a new tensor [world, ...t.shape] holding every rank's t, in rank order */
DD_API dd_tensor dd_dist_allgather(dd_group g, dd_tensor t);
DD_API int32_t dd_dist_barrier(dd_group g);

#ifdef __cplusplus
}
#endif

#endif /* DENSEDINO_H */
