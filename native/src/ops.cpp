// Elementwise, reduction, shape/indexing and neural-network operators.
#include <cmath>
#include <limits>

#include "common.h"

#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif

using dd::get;
using dd::put;

namespace {

[[noreturn]] void bad_op(const char* family, int32_t op) {
  throw std::invalid_argument(std::string("unknown ") + family + " op code " + std::to_string(op));
}

at::Tensor unary(int32_t op, const at::Tensor& a) {
  switch (op) {
    case DD_NEG: return a.neg();
    case DD_ABS: return a.abs();
    case DD_SQRT: return a.sqrt();
    case DD_RSQRT: return a.rsqrt();
    case DD_EXP: return a.exp();
    case DD_LOG: return a.log();
    case DD_LOG1P: return a.log1p();
    case DD_FLOOR: return a.floor();
    case DD_CEIL: return a.ceil();
    case DD_ROUND: return a.round();
    case DD_TRUNC: return a.trunc();
    case DD_SIGN: return a.sign();
    case DD_SIGMOID: return a.sigmoid();
    case DD_TANH: return a.tanh();
    case DD_RELU: return a.relu();
    case DD_GELU: return at::gelu(a, "none");
    case DD_GELU_TANH: return at::gelu(a, "tanh");
    case DD_SILU: return at::silu(a);
    case DD_SIN: return a.sin();
    case DD_COS: return a.cos();
    case DD_RECIPROCAL: return a.reciprocal();
    case DD_ERF: return a.erf();
    case DD_ERFINV: return a.erfinv();
    case DD_SQUARE: return a.square();
    case DD_LOGICAL_NOT: return a.logical_not();
    case DD_ISNAN: return a.isnan();
    case DD_ISFINITE: return a.isfinite();
    case DD_CONTIGUOUS: return a.contiguous();
    case DD_CLONE: return a.clone();
    case DD_DETACH: return a.detach();
    case DD_EXPM1: return a.expm1();
    case DD_ALIAS: return a;
    default: bad_op("unary", op);
  }
}

at::Tensor binary(int32_t op, const at::Tensor& a, const at::Tensor& b, double alpha) {
  switch (op) {
    case DD_ADD: return alpha == 1.0 ? at::add(a, b) : at::add(a, b, alpha);
    case DD_SUB: return alpha == 1.0 ? at::sub(a, b) : at::sub(a, b, alpha);
    case DD_MUL: return at::mul(a, b);
    case DD_DIV: return at::div(a, b);
    case DD_POW: return at::pow(a, b);
    case DD_MAXIMUM: return at::maximum(a, b);
    case DD_MINIMUM: return at::minimum(a, b);
    case DD_EQ: return at::eq(a, b);
    case DD_NE: return at::ne(a, b);
    case DD_LT: return at::lt(a, b);
    case DD_LE: return at::le(a, b);
    case DD_GT: return at::gt(a, b);
    case DD_GE: return at::ge(a, b);
    case DD_LOGICAL_AND: return at::logical_and(a, b);
    case DD_LOGICAL_OR: return at::logical_or(a, b);
    case DD_REMAINDER: return at::remainder(a, b);
    case DD_ATAN2: return at::atan2(a, b);
    case DD_FLOOR_DIVIDE: return at::div(a, b, "floor");
    default: bad_op("binary", op);
  }
}

// A JS number as a libtorch Scalar: whole numbers that fit in int64 become integer scalars, so
// that integer tensors keep their dtype (PyTorch's rule for Python ints); others stay double.
at::Scalar js_scalar(double v) {
  if (std::isfinite(v) && v == std::trunc(v) && std::fabs(v) < 9.2e18) {
    return at::Scalar(static_cast<int64_t>(v));
  }
  return at::Scalar(v);
}

// A JS number as a 0-dim tensor on a's device (for the reflected forms s - a, s / a).
at::Tensor js_scalar_tensor(double v, const at::Tensor& a) {
  at::Scalar s = js_scalar(v);
  return at::scalar_tensor(s, a.options().dtype(s.isIntegral(false) ? at::kLong : at::kDouble));
}

at::Tensor binary_scalar(int32_t op, const at::Tensor& a, double v) {
  at::Scalar s = js_scalar(v);
  switch (op) {
    case DD_ADD: return at::add(a, s);
    case DD_SUB: return at::sub(a, s);
    case DD_MUL: return at::mul(a, s);
    case DD_DIV: return at::div(a, s);
    case DD_POW: return at::pow(a, s);
    case DD_MAXIMUM: return at::clamp_min(a, s);
    case DD_MINIMUM: return at::clamp_max(a, s);
    case DD_EQ: return at::eq(a, s);
    case DD_NE: return at::ne(a, s);
    case DD_LT: return at::lt(a, s);
    case DD_LE: return at::le(a, s);
    case DD_GT: return at::gt(a, s);
    case DD_GE: return at::ge(a, s);
    case DD_REMAINDER: return at::remainder(a, s);
    case DD_FLOOR_DIVIDE: return at::div(a, js_scalar_tensor(v, a), "floor");
    case DD_RSUB: return at::rsub(a, s);
    case DD_RDIV: return at::div(js_scalar_tensor(v, a), a);
    case DD_RPOW: return at::pow(s, a);
    default: bad_op("scalar", op);
  }
}

// prod / all / any reduce one dimension per call in libtorch 1.13: apply `fn` over `dims` from
// the last to the first so the remaining indices stay valid. A repeated dimension would
// silently reduce a different one, so it is rejected, as sum / mean do.
template <typename F>
at::Tensor one_dim_at_a_time(const at::Tensor& a, std::vector<int64_t> dims, F fn) {
  for (auto& x : dims) x = c10::maybe_wrap_dim(x, a.dim());
  std::sort(dims.rbegin(), dims.rend());
  for (size_t i = 1; i < dims.size(); i++) {
    if (dims[i] == dims[i - 1])
      throw std::invalid_argument("dim " + std::to_string(dims[i]) +
                                  " appears multiple times in the list of dims");
  }
  at::Tensor r = a;
  for (auto x : dims) r = fn(r, x);
  return r;
}

c10::optional<at::Scalar> bound(double v, int32_t has) {
  if (!has) return c10::nullopt;
  return js_scalar(v);
}

}  // namespace

extern "C" {

dd_tensor dd_unary(int32_t op, dd_tensor a) {
  try {
    auto& x = get(a);
    // detach's meaning lives in its autograd kernel: never skip that layer for it
    c10::optional<at::AutoDispatchBelowAutograd> fast;
    if (op != DD_DETACH && !dd::grad_needed(x)) fast.emplace();
    return put(unary(op, x));
  }
  DD_CATCH(0u)
}
dd_tensor dd_binary(int32_t op, dd_tensor a, dd_tensor b, double alpha) {
  try {
    auto& x = get(a);
    auto& y = get(b);
    c10::optional<at::AutoDispatchBelowAutograd> fast;
    if (!dd::grad_needed(x, y)) fast.emplace();
    return put(binary(op, x, y, alpha));
  }
  DD_CATCH(0u)
}
dd_tensor dd_binary_scalar(int32_t op, dd_tensor a, double s) {
  try {
    auto& x = get(a);
    c10::optional<at::AutoDispatchBelowAutograd> fast;
    if (!dd::grad_needed(x)) fast.emplace();
    return put(binary_scalar(op, x, s));
  }
  DD_CATCH(0u)
}
dd_tensor dd_clamp(dd_tensor a, double min, double max, int32_t has_min, int32_t has_max) {
  try {
    if (!has_min && !has_max) throw std::invalid_argument("clamp needs min, max or both");
    return put(at::clamp(get(a), bound(min, has_min), bound(max, has_max)));
  }
  DD_CATCH(0u)
}
dd_tensor dd_clamp_tensor(dd_tensor a, dd_tensor min, dd_tensor max) {
  try {
    if (!min && !max) throw std::invalid_argument("clamp needs min, max or both");
    return put(at::clamp(get(a), dd::opt(min), dd::opt(max)));
  }
  DD_CATCH(0u)
}
dd_tensor dd_where(dd_tensor cond, dd_tensor a, dd_tensor b) {
  DD_RET(at::where(get(cond), get(a), get(b)))
}
dd_tensor dd_masked_fill(dd_tensor a, dd_tensor mask, double value) {
  DD_RET(get(a).masked_fill(get(mask), value))
}
dd_tensor dd_lerp(dd_tensor a, dd_tensor b, double weight) { DD_RET(at::lerp(get(a), get(b), weight)) }

dd_tensor dd_to(dd_tensor h, int32_t dtype, int32_t device_type, int32_t device_index,
                int32_t non_blocking, int32_t copy) {
  try {
    auto& a = get(h);
    auto dt = dtype >= 0 ? dd::scalar_type(dtype) : a.scalar_type();
    if (device_type < 0) return put(a.to(dt, non_blocking != 0, copy != 0));
    auto dev = dd::options(DD_F32, device_type, device_index).device();
    return put(a.to(dev, dt, non_blocking != 0, copy != 0));
  }
  DD_CATCH(0u)
}
dd_tensor dd_pin_memory(dd_tensor a) { DD_RET(get(a).pin_memory()) }

// ---- in-place ---------------------------------------------------------------------------
int32_t dd_binary_(int32_t op, dd_tensor a, dd_tensor b, double alpha) {
  DD_STATUS({
    auto& x = get(a);
    auto& y = get(b);
    switch (op) {
      case DD_ADD: x.add_(y, alpha); break;
      case DD_SUB: x.sub_(y, alpha); break;
      case DD_MUL: x.mul_(y); break;
      case DD_DIV: x.div_(y); break;
      case DD_MAXIMUM: at::maximum_out(x, x, y); break;
      case DD_MINIMUM: at::minimum_out(x, x, y); break;
      default: bad_op("in-place binary", op);
    }
    return 0;
  })
}
int32_t dd_binary_scalar_(int32_t op, dd_tensor a, double s) {
  DD_STATUS({
    auto& x = get(a);
    at::Scalar v = js_scalar(s);
    switch (op) {
      case DD_ADD: x.add_(v); break;
      case DD_SUB: x.sub_(v); break;
      case DD_MUL: x.mul_(v); break;
      case DD_DIV: x.div_(v); break;
      case DD_POW: x.pow_(v); break;
      default: bad_op("in-place scalar", op);
    }
    return 0;
  })
}
int32_t dd_copy_(dd_tensor dst, dd_tensor src) {
  DD_STATUS({
    get(dst).copy_(get(src));
    return 0;
  })
}
int32_t dd_fill_(dd_tensor a, double value) {
  DD_STATUS({
    get(a).fill_(value);
    return 0;
  })
}
int32_t dd_zero_(dd_tensor a) {
  DD_STATUS({
    get(a).zero_();
    return 0;
  })
}
int32_t dd_clamp_(dd_tensor a, double min, double max, int32_t has_min, int32_t has_max) {
  DD_STATUS({
    if (!has_min && !has_max) throw std::invalid_argument("clamp_ needs min, max or both");
    get(a).clamp_(bound(min, has_min), bound(max, has_max));
    return 0;
  })
}
int32_t dd_masked_fill_(dd_tensor a, dd_tensor mask, double value) {
  DD_STATUS({
    get(a).masked_fill_(get(mask), value);
    return 0;
  })
}
int32_t dd_lerp_(dd_tensor a, dd_tensor b, double weight) {
  DD_STATUS({
    get(a).lerp_(get(b), weight);
    return 0;
  })
}
int32_t dd_addcmul_(dd_tensor a, dd_tensor b, dd_tensor c, double value) {
  DD_STATUS({
    get(a).addcmul_(get(b), get(c), value);
    return 0;
  })
}
int32_t dd_addcdiv_(dd_tensor a, dd_tensor b, dd_tensor c, double value) {
  DD_STATUS({
    get(a).addcdiv_(get(b), get(c), value);
    return 0;
  })
}

// ---- reductions -------------------------------------------------------------------------
dd_tensor dd_reduce(int32_t op, dd_tensor h, const int32_t* dims, int32_t ndims, int32_t keepdim,
                    double correction) {
  try {
    auto& a = get(h);
    auto d = dd::dim_list(dims, ndims);
    bool all = ndims == 0;
    bool kd = keepdim != 0;
    if (all) {
      d.clear();
      for (int64_t i = 0; i < a.dim(); i++) d.push_back(i);
    }
    switch (op) {
      case DD_SUM: return put(all && !kd ? a.sum() : a.sum(d, kd));
      case DD_MEAN: return put(all && !kd ? a.mean() : a.mean(d, kd));
      case DD_AMAX: return put(all && !kd ? a.max() : a.amax(d, kd));
      case DD_AMIN: return put(all && !kd ? a.min() : a.amin(d, kd));
      case DD_LOGSUMEXP: return put(a.dim() == 0 ? a.clone() : at::logsumexp(a, d, kd));
      case DD_PROD:
        if (all && !kd) return put(a.prod());
        return put(one_dim_at_a_time(a, d, [&](const at::Tensor& r, int64_t x) { return r.prod(x, kd); }));
      case DD_ALL:
        if (all && !kd) return put(a.all());
        return put(one_dim_at_a_time(a, d, [&](const at::Tensor& r, int64_t x) { return r.all(x, kd); }));
      case DD_ANY:
        if (all && !kd) return put(a.any());
        return put(one_dim_at_a_time(a, d, [&](const at::Tensor& r, int64_t x) { return r.any(x, kd); }));
      case DD_VAR:
      case DD_STD: {
        if (correction != 0 && correction != 1)
          throw std::invalid_argument("var / std support correction 0 or 1");
        bool unbiased = correction == 1;
        return put(op == DD_VAR ? at::var(a, at::OptionalIntArrayRef(d), unbiased, kd)
                                : at::std(a, at::OptionalIntArrayRef(d), unbiased, kd));
      }
      default: bad_op("reduce", op);
    }
  }
  DD_CATCH(0u)
}

int32_t dd_max_min_dim(int32_t op, dd_tensor h, int32_t dim, int32_t keepdim, dd_tensor* out) {
  DD_STATUS({
    auto& a = get(h);
    std::tuple<at::Tensor, at::Tensor> r;
    if (op == DD_AMAX) r = a.max(dim, keepdim != 0);
    else if (op == DD_AMIN) r = a.min(dim, keepdim != 0);
    else bad_op("max/min", op);
    out[0] = put(std::get<0>(r));
    out[1] = put(std::get<1>(r));
    return 2;
  })
}

dd_tensor dd_arg_reduce(int32_t op, dd_tensor h, int32_t dim, int32_t has_dim, int32_t keepdim) {
  try {
    auto& a = get(h);
    c10::optional<int64_t> d = has_dim ? c10::optional<int64_t>(dim) : c10::nullopt;
    if (op == DD_AMAX) return put(a.argmax(d, keepdim != 0));
    if (op == DD_AMIN) return put(a.argmin(d, keepdim != 0));
    bad_op("arg-reduce", op);
  }
  DD_CATCH(0u)
}

dd_tensor dd_norm(dd_tensor h, double p, const int32_t* dims, int32_t ndims, int32_t keepdim) {
  try {
    auto& a = get(h);
    if (ndims == 0) {
      if (keepdim) {
        std::vector<int64_t> d;
        for (int64_t i = 0; i < a.dim(); i++) d.push_back(i);
        return put(at::linalg_vector_norm(a, p, d, true));
      }
      return put(at::linalg_vector_norm(a, p));
    }
    return put(at::linalg_vector_norm(a, p, dd::dim_list(dims, ndims), keepdim != 0));
  }
  DD_CATCH(0u)
}

dd_tensor dd_dim_op(int32_t op, dd_tensor h, int32_t dim) {
  try {
    auto& a = get(h);
    switch (op) {
      case 0: return put(at::softmax(a, dim));
      case 1: return put(at::log_softmax(a, dim));
      case 2: return put(at::cumsum(a, dim));
      case 3: return put(at::cumprod(a, dim));
      default: bad_op("dim", op);
    }
  }
  DD_CATCH(0u)
}

int32_t dd_topk(dd_tensor h, int64_t k, int32_t dim, int32_t largest, int32_t sorted,
                dd_tensor* out) {
  DD_STATUS({
    auto r = at::topk(get(h), k, dim, largest != 0, sorted != 0);
    out[0] = put(std::get<0>(r));
    out[1] = put(std::get<1>(r));
    return 2;
  })
}
int32_t dd_sort(dd_tensor h, int32_t dim, int32_t descending, int32_t stable, dd_tensor* out) {
  DD_STATUS({
    auto r = at::sort(get(h), c10::optional<bool>(stable != 0), dim, descending != 0);
    out[0] = put(std::get<0>(r));
    out[1] = put(std::get<1>(r));
    return 2;
  })
}
dd_tensor dd_bincount(dd_tensor a, dd_tensor weights, int64_t minlength) {
  DD_RET(at::bincount(get(a), dd::opt(weights), minlength))
}

// ---- shape and indexing -------------------------------------------------------------------
dd_tensor dd_reshape(dd_tensor a, const int64_t* shape, int32_t ndim) {
  DD_RET(get(a).reshape(dd::int_list(shape, ndim)))
}
dd_tensor dd_view(dd_tensor a, const int64_t* shape, int32_t ndim) {
  DD_RET(get(a).view(dd::int_list(shape, ndim)))
}
dd_tensor dd_expand(dd_tensor a, const int64_t* shape, int32_t ndim) {
  DD_RET(get(a).expand(dd::int_list(shape, ndim)))
}
dd_tensor dd_repeat(dd_tensor a, const int64_t* reps, int32_t ndim) {
  DD_RET(get(a).repeat(dd::int_list(reps, ndim)))
}
dd_tensor dd_permute(dd_tensor a, const int32_t* dims, int32_t ndims) {
  DD_RET(get(a).permute(dd::dim_list(dims, ndims)))
}
dd_tensor dd_flip(dd_tensor a, const int32_t* dims, int32_t ndims) {
  DD_RET(get(a).flip(dd::dim_list(dims, ndims)))
}
dd_tensor dd_transpose(dd_tensor a, int32_t d0, int32_t d1) { DD_RET(get(a).transpose(d0, d1)) }
dd_tensor dd_squeeze(dd_tensor a, int32_t dim, int32_t has_dim) {
  DD_RET(has_dim ? get(a).squeeze(dim) : get(a).squeeze())
}
dd_tensor dd_unsqueeze(dd_tensor a, int32_t dim) { DD_RET(get(a).unsqueeze(dim)) }
dd_tensor dd_flatten(dd_tensor a, int32_t start, int32_t end) { DD_RET(get(a).flatten(start, end)) }
dd_tensor dd_narrow(dd_tensor a, int32_t dim, int64_t start, int64_t length) {
  DD_RET(get(a).narrow(dim, start, length))
}
dd_tensor dd_slice(dd_tensor a, int32_t dim, int64_t start, int64_t end, int64_t step) {
  DD_RET(get(a).slice(dim, start, end, step))
}
dd_tensor dd_select(dd_tensor a, int32_t dim, int64_t index) { DD_RET(get(a).select(dim, index)) }
dd_tensor dd_index_select(dd_tensor a, int32_t dim, dd_tensor index) {
  DD_RET(get(a).index_select(dim, get(index)))
}
dd_tensor dd_gather(dd_tensor a, int32_t dim, dd_tensor index) {
  DD_RET(get(a).gather(dim, get(index)))
}
dd_tensor dd_scatter(dd_tensor a, int32_t dim, dd_tensor index, dd_tensor src, double value,
                     int32_t reduce) {
  try {
    auto& x = get(a);
    auto& idx = get(index);
    if (reduce == 1) {
      if (src) return put(x.scatter_add(dim, idx, get(src)));
      return put(x.scatter_add(dim, idx, at::full_like(idx, value, x.options())));
    }
    if (reduce != 0) bad_op("scatter reduce", reduce);
    if (src) return put(x.scatter(dim, idx, get(src)));
    return put(x.scatter(dim, idx, value));
  }
  DD_CATCH(0u)
}
dd_tensor dd_index_add(dd_tensor a, int32_t dim, dd_tensor index, dd_tensor src, double alpha) {
  DD_RET(get(a).index_add(dim, get(index), get(src), alpha))
}
dd_tensor dd_masked_select(dd_tensor a, dd_tensor mask) { DD_RET(get(a).masked_select(get(mask))) }
dd_tensor dd_nonzero(dd_tensor a) { DD_RET(get(a).nonzero()) }
dd_tensor dd_tri(dd_tensor a, int64_t diagonal, int32_t upper) {
  DD_RET(upper ? get(a).triu(diagonal) : get(a).tril(diagonal))
}
dd_tensor dd_one_hot(dd_tensor a, int64_t num_classes) { DD_RET(at::one_hot(get(a), num_classes)) }

dd_tensor dd_cat(const dd_tensor* ts, int32_t n, int32_t dim) {
  DD_RET(at::cat(dd::tensor_list(ts, n), dim))
}
dd_tensor dd_stack(const dd_tensor* ts, int32_t n, int32_t dim) {
  DD_RET(at::stack(dd::tensor_list(ts, n), dim))
}

namespace {
int32_t put_list(const std::vector<at::Tensor>& parts, dd_tensor* out, int32_t out_cap) {
  if (static_cast<int64_t>(parts.size()) > out_cap)
    throw std::invalid_argument("result has " + std::to_string(parts.size()) +
                                " tensors but the output list holds " + std::to_string(out_cap));
  int32_t i = 0;
  try {
    for (; i < static_cast<int32_t>(parts.size()); i++) out[i] = put(parts[i]);
  } catch (...) {
    for (int32_t j = 0; j < i; j++) dd::release(out[j]);
    throw;
  }
  return i;
}
}  // namespace

int32_t dd_chunk(dd_tensor a, int32_t chunks, int32_t dim, dd_tensor* out, int32_t out_cap) {
  DD_STATUS({ return put_list(get(a).chunk(chunks, dim), out, out_cap); })
}
int32_t dd_split(dd_tensor a, const int64_t* sizes, int32_t nsizes, int32_t dim, dd_tensor* out,
                 int32_t out_cap) {
  DD_STATUS({ return put_list(get(a).split_with_sizes(dd::int_list(sizes, nsizes), dim), out, out_cap); })
}

dd_tensor dd_pad(dd_tensor h, const int64_t* pads, int32_t npads, int32_t mode, double value) {
  try {
    auto& a = get(h);
    auto p = dd::int_list(pads, npads);
    if (npads % 2 != 0 || npads / 2 > a.dim())
      throw std::invalid_argument("pad needs an even number of values, at most 2 per dimension");
    if (mode == 0) return put(at::constant_pad_nd(a, p, value));
    int64_t k = npads / 2;
    if (mode == 1) {
      if (k == 1) return put(at::reflection_pad1d(a, p));
      if (k == 2) return put(at::reflection_pad2d(a, p));
      if (k == 3) return put(at::reflection_pad3d(a, p));
    } else if (mode == 2) {
      if (k == 1) return put(at::replication_pad1d(a, p));
      if (k == 2) return put(at::replication_pad2d(a, p));
      if (k == 3) return put(at::replication_pad3d(a, p));
    } else if (mode == 3) {
      return put(at::_pad_circular(a, p));
    } else {
      bad_op("pad mode", mode);
    }
    throw std::invalid_argument("reflect / replicate padding supports 1 to 3 padded dimensions");
  }
  DD_CATCH(0u)
}

// ---- linear algebra and nn ------------------------------------------------------------------
dd_tensor dd_matmul(dd_tensor a, dd_tensor b) { DD_RET(at::matmul(get(a), get(b))) }
dd_tensor dd_bmm(dd_tensor a, dd_tensor b) { DD_RET(at::bmm(get(a), get(b))) }
dd_tensor dd_linear(dd_tensor x, dd_tensor w, dd_tensor b) {
  DD_RET(at::linear(get(x), get(w), dd::opt(b)))
}
dd_tensor dd_einsum(const char* equation, const dd_tensor* ts, int32_t n) {
  try {
    if (equation == nullptr) throw std::invalid_argument("einsum needs an equation");
    return put(at::einsum(equation, dd::tensor_list(ts, n)));
  }
  DD_CATCH(0u)
}
dd_tensor dd_layer_norm(dd_tensor x, const int64_t* shape, int32_t ndim, dd_tensor w, dd_tensor b,
                        double eps) {
  DD_RET(at::layer_norm(get(x), dd::int_list(shape, ndim), dd::opt(w), dd::opt(b), eps))
}
dd_tensor dd_conv2d(dd_tensor x, dd_tensor w, dd_tensor b, int64_t sh, int64_t sw, int64_t ph,
                    int64_t pw, int64_t dh, int64_t dw, int64_t groups) {
  DD_RET(at::conv2d(get(x), get(w), dd::opt(b), {sh, sw}, {ph, pw}, {dh, dw}, groups))
}
dd_tensor dd_pool2d(int32_t op, dd_tensor x, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                    int64_t ph, int64_t pw, int32_t ceil_mode) {
  try {
    if (op == 0) return put(at::avg_pool2d(get(x), {kh, kw}, {sh, sw}, {ph, pw}, ceil_mode != 0));
    if (op == 1)
      return put(at::max_pool2d(get(x), {kh, kw}, {sh, sw}, {ph, pw}, {1, 1}, ceil_mode != 0));
    bad_op("pool", op);
  }
  DD_CATCH(0u)
}
dd_tensor dd_adaptive_avg_pool2d(dd_tensor x, int64_t oh, int64_t ow) {
  DD_RET(at::adaptive_avg_pool2d(get(x), {oh, ow}))
}

dd_tensor dd_interpolate(dd_tensor h, int32_t mode, int64_t oh, int64_t ow, double sh, double sw,
                         int32_t align_corners, int32_t antialias) {
  try {
    auto& x = get(h);
    if (x.dim() != 4)
      throw std::invalid_argument("interpolate expects a 4-D [N, C, H, W] input, got shape " +
                                  c10::str(x.sizes()));
    bool by_size = oh > 0 && ow > 0;
    bool by_scale = sh > 0 && sw > 0;
    if (by_size == by_scale)
      throw std::invalid_argument("interpolate needs either an output size or a scale factor");
    std::vector<int64_t> size_v = {oh, ow};
    std::vector<double> scale_v = {sh, sw};
    at::OptionalIntArrayRef size = by_size ? at::OptionalIntArrayRef(size_v) : c10::nullopt;
    c10::optional<at::ArrayRef<double>> scale =
        by_scale ? c10::optional<at::ArrayRef<double>>(scale_v) : c10::nullopt;
    bool ac = align_corners != 0;
    if ((mode == 0 || mode == 3) && ac)
      throw std::invalid_argument("align_corners only applies to bilinear / bicubic modes");
    if (antialias && mode != 1 && mode != 2)
      throw std::invalid_argument("antialias only applies to bilinear / bicubic modes");
    switch (mode) {
      case 0: return put(at::upsample_nearest2d(x, size, scale));
      case 1:
        return put(antialias ? at::_upsample_bilinear2d_aa(x, size, ac, scale)
                             : at::upsample_bilinear2d(x, size, ac, scale));
      case 2:
        return put(antialias ? at::_upsample_bicubic2d_aa(x, size, ac, scale)
                             : at::upsample_bicubic2d(x, size, ac, scale));
      case 3: return put(at::_upsample_nearest_exact2d(x, size, scale));
      default: bad_op("interpolate mode", mode);
    }
  }
  DD_CATCH(0u)
}

dd_tensor dd_grid_sample(dd_tensor x, dd_tensor grid, int32_t mode, int32_t padding,
                         int32_t align_corners) {
  try {
    if (mode < 0 || mode > 2) bad_op("grid_sample mode", mode);
    if (padding < 0 || padding > 2) bad_op("grid_sample padding", padding);
    return put(at::grid_sampler(get(x), get(grid), mode, padding, align_corners != 0));
  }
  DD_CATCH(0u)
}

dd_tensor dd_cross_entropy(dd_tensor logits, dd_tensor target, dd_tensor weight, int32_t reduction,
                           int64_t ignore_index, double label_smoothing) {
  try {
    if (reduction < 0 || reduction > 2) bad_op("reduction", reduction);
    return put(at::cross_entropy_loss(get(logits), get(target), dd::opt(weight), reduction,
                                      ignore_index, label_smoothing));
  }
  DD_CATCH(0u)
}

dd_tensor dd_normalize(dd_tensor h, double p, int32_t dim, double eps) {
  try {
    auto& x = get(h);
    auto n = at::linalg_vector_norm(x, p, {static_cast<int64_t>(dim)}, true).clamp_min(eps);
    return put(x / n.expand_as(x));
  }
  DD_CATCH(0u)
}

dd_tensor dd_dropout(dd_tensor h, double p, int32_t train, dd_generator g) {
  try {
    auto& x = get(h);
    if (p < 0 || p > 1) throw std::invalid_argument("dropout probability must be in [0, 1]");
    if (!train || p == 0) return put(x);
    if (g == 0) return put(at::dropout(x, p, true));
    if (p == 1) return put(x * 0);
    auto keep = at::empty_like(x, x.options().requires_grad(false)).bernoulli_(1 - p, dd::generator(g));
    return put(x * keep / (1 - p));
  }
  DD_CATCH(0u)
}

dd_tensor dd_weight_norm(dd_tensor hv, dd_tensor hg, int32_t dim) {
  try {
    auto& v = get(hv);
    auto& g = get(hg);
    // libtorch's fused CPU kernel (dim 0 or last) sizes its norm buffer from g but writes
    // v.size(dim) entries into it without checking g's shape: a short g corrupts the heap.
    // Require g shaped as torch.nn.utils.weight_norm makes it: v.size(dim) along dim, 1
    // elsewhere (dim -1: one element, the norm over the whole tensor).
    if (v.dim() == 0) throw std::invalid_argument("weight_norm needs v with at least 1 dimension");
    if (g.scalar_type() != v.scalar_type() || g.device() != v.device())
      throw std::invalid_argument("weight_norm needs g of v's dtype and device, got " +
                                  std::string(c10::toString(g.scalar_type())) + " vs " +
                                  c10::toString(v.scalar_type()));
    if (dim == -1) {
      if (g.numel() != 1)
        throw std::invalid_argument("weight_norm with dim -1 needs a one-element g, got shape " +
                                    c10::str(g.sizes()));
    } else {
      if (dim < 0 || dim >= v.dim())
        throw std::invalid_argument("weight_norm dim " + std::to_string(dim) +
                                    " out of range for v of shape " + c10::str(v.sizes()) +
                                    " (expected -1 or 0.." + std::to_string(v.dim() - 1) + ")");
      bool ok = g.dim() == v.dim();
      for (int64_t i = 0; ok && i < v.dim(); i++) ok = g.size(i) == (i == dim ? v.size(dim) : 1);
      if (!ok) {
        std::vector<int64_t> want(v.dim(), 1);
        want[dim] = v.size(dim);
        throw std::invalid_argument("weight_norm needs g of shape " + c10::str(at::IntArrayRef(want)) +
                                    " for v of shape " + c10::str(v.sizes()) + " and dim " +
                                    std::to_string(dim) + ", got " + c10::str(g.sizes()));
      }
    }
    return put(at::_weight_norm(v, g, dim));
  }
  DD_CATCH(0u)
}

dd_tensor dd_sdpa(dd_tensor q, dd_tensor k, dd_tensor v, dd_tensor mask, double dropout,
                  int32_t is_causal, double scale) {
  try {
#if defined(TORCH_VERSION_MAJOR) && TORCH_VERSION_MAJOR >= 2
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 1
    c10::optional<double> s = scale > 0 ? c10::optional<double>(scale) : c10::nullopt;
    return put(at::scaled_dot_product_attention(get(q), get(k), get(v), dd::opt(mask), dropout,
                                                is_causal != 0, s));
#else
    if (scale > 0) throw std::invalid_argument("sdpa scale needs libtorch >= 2.1");
    return put(at::scaled_dot_product_attention(get(q), get(k), get(v), dd::opt(mask), dropout,
                                                is_causal != 0));
#endif
#else
    (void)q; (void)k; (void)v; (void)mask; (void)dropout; (void)is_causal; (void)scale;
    throw std::runtime_error(
        "scaled_dot_product_attention needs libtorch >= 2.0 (this shim was built against " +
        std::string(TORCH_VERSION) + "); use the explicit attention path");
#endif
  }
  DD_CATCH(0u)
}

}  // extern "C"
