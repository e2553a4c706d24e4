// Autograd and the per-parameter loops of training (EMA, clipping, optimiser steps), each one
// call over a list of tensors.
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <cmath>

#include "common.h"

using dd::get;
using dd::put;

namespace {

void check_lists(int32_t n) {
  if (n < 0) throw std::invalid_argument("negative list length");
}

// The parameters of a list that have a defined gradient, with their positions.
struct WithGrad {
  std::vector<at::Tensor> params, grads;
  std::vector<int32_t> index;
};

WithGrad with_grad(const dd_tensor* params, int32_t n) {
  check_lists(n);
  WithGrad r;
  for (int32_t i = 0; i < n; i++) {
    auto& p = get(params[i]);
    const auto& g = p.grad();
    if (!g.defined()) continue;
    r.params.push_back(p);
    r.grads.push_back(g);
    r.index.push_back(i);
  }
  return r;
}

}  // namespace

extern "C" {

int32_t dd_set_requires_grad(dd_tensor t, int32_t flag) {
  DD_STATUS({
    get(t).set_requires_grad(flag != 0);
    return 0;
  })
}

int32_t dd_backward(dd_tensor t, dd_tensor grad, int32_t retain_graph) {
  DD_STATUS({
    auto& x = get(t);
    at::Tensor g = grad ? get(grad) : at::Tensor();
    x.backward(g, c10::optional<bool>(retain_graph != 0), false);
    return 0;
  })
}

int32_t dd_grad(dd_tensor t, dd_tensor* out) {
  DD_STATUS({
    const auto& g = get(t).grad();
    if (!g.defined()) {
      out[0] = 0;
      return 0;
    }
    out[0] = put(g);
    return 1;
  })
}

int32_t dd_set_grad(dd_tensor t, dd_tensor grad) {
  DD_STATUS({
    auto& x = get(t);
    if (!grad) {
      x.mutable_grad() = at::Tensor();
      return 0;
    }
    auto& g = get(grad);
    if (g.sizes() != x.sizes() || g.scalar_type() != x.scalar_type() || g.device() != x.device())
      throw std::invalid_argument("gradient " + c10::str(g.sizes()) + " " +
                                  c10::toString(g.scalar_type()) + " does not match the tensor " +
                                  c10::str(x.sizes()) + " " + c10::toString(x.scalar_type()));
    x.mutable_grad() = g.detach();
    return 0;
  })
}

int32_t dd_set_data(dd_tensor t, dd_tensor src) {
  DD_STATUS({
    auto& x = get(t);
    auto& y = get(src);
    if (&x == &y) return 0;
    x.set_data(y);
    return 0;
  })
}

int32_t dd_set_grad_enabled(int32_t flag) {
  DD_STATUS({
    bool prev = at::GradMode::is_enabled();
    at::GradMode::set_enabled(flag != 0);
    return prev ? 1 : 0;
  })
}
int32_t dd_is_grad_enabled(void) { return at::GradMode::is_enabled() ? 1 : 0; }

namespace {
at::DeviceType autocast_device(int32_t device_type) {
  if (device_type == DD_CPU) return at::kCPU;
  if (device_type == DD_CUDA) return at::kCUDA;
  throw std::invalid_argument("autocast: unknown device type " + std::to_string(device_type));
}

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool autocast_enabled(at::DeviceType d) { return at::autocast::is_autocast_enabled(d); }
at::ScalarType autocast_dtype(at::DeviceType d) { return at::autocast::get_autocast_dtype(d); }
void set_autocast(at::DeviceType d, bool on, at::ScalarType t) {
  at::autocast::set_autocast_dtype(d, t);
  at::autocast::set_autocast_enabled(d, on);
}
#else
bool autocast_enabled(at::DeviceType d) {
  return d == at::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
}
at::ScalarType autocast_dtype(at::DeviceType d) {
  return d == at::kCUDA ? at::autocast::get_autocast_gpu_dtype()
                        : at::autocast::get_autocast_cpu_dtype();
}
void set_autocast(at::DeviceType d, bool on, at::ScalarType t) {
  if (d == at::kCUDA) {
    at::autocast::set_autocast_gpu_dtype(t);
    at::autocast::set_enabled(on);
  } else {
    at::autocast::set_autocast_cpu_dtype(t);
    at::autocast::set_cpu_enabled(on);
  }
}
#endif
}  // namespace

int32_t dd_autocast_enter(int32_t device_type, int32_t dtype, int32_t* state_out) {
  DD_STATUS({
    auto d = autocast_device(device_type);
    auto t = dd::scalar_type(dtype);
    if (t != at::kBFloat16 && t != at::kHalf)
      throw std::invalid_argument("autocast dtype must be bfloat16 or float16");
    state_out[0] = autocast_enabled(d) ? 1 : 0;
    state_out[1] = static_cast<int32_t>(autocast_dtype(d));
    set_autocast(d, true, t);
    at::autocast::increment_nesting();
    return 0;
  })
}

int32_t dd_autocast_exit(int32_t device_type, int32_t prev_enabled, int32_t prev_dtype) {
  DD_STATUS({
    auto d = autocast_device(device_type);
    set_autocast(d, prev_enabled != 0, dd::scalar_type(prev_dtype));
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    return 0;
  })
}

int32_t dd_unscale_grads_(const dd_tensor* params, int32_t n, double inv_scale) {
  DD_STATUS({
    at::NoGradGuard no_grad;
    auto w = with_grad(params, n);
    if (w.grads.empty()) return 0;
    at::_foreach_mul_(w.grads, inv_scale);
    // one reduction over all gradients, one sync: any non-finite value anywhere
    std::vector<at::Tensor> bad;
    for (auto& g : w.grads) bad.push_back(g.isfinite().logical_not().any().reshape({1}));
    return at::cat(bad).any().item<bool>() ? 1 : 0;
  })
}

int32_t dd_ema_(const dd_tensor* teacher, const dd_tensor* student, int32_t n, double momentum) {
  DD_STATUS({
    check_lists(n);
    at::NoGradGuard no_grad;
    auto t = dd::tensor_list(teacher, n);
    auto s = dd::tensor_list(student, n);
    for (int32_t i = 0; i < n; i++) {
      if (t[i].sizes() != s[i].sizes())
        throw std::invalid_argument("EMA pair " + std::to_string(i) + ": teacher " +
                                    c10::str(t[i].sizes()) + " vs student " + c10::str(s[i].sizes()));
      // checked up front: a failure inside the _foreach calls would leave some teachers updated
      if (t[i].device() != s[i].device())
        throw std::invalid_argument("EMA pair " + std::to_string(i) + ": teacher on " +
                                    t[i].device().str() + ", student on " + s[i].device().str());
      s[i] = s[i].detach();
    }
    if (n == 0) return 0;
    at::_foreach_mul_(t, momentum);
    at::_foreach_add_(t, s, 1.0 - momentum);
    return 0;
  })
}

int32_t dd_clip_grad_norms_(const dd_tensor* params, int32_t n, double max_norm,
                            dd_tensor* norms_out) {
  DD_STATUS({
    at::NoGradGuard no_grad;
    auto w = with_grad(params, n);
    if (w.grads.empty()) {
      if (norms_out) norms_out[0] = put(at::zeros({0}));
      return 0;
    }
    auto norms = at::_foreach_norm(w.grads, 2);
    for (size_t i = 0; i < w.grads.size(); i++) {
      // coef = max / (norm + 1e-6), applied only when < 1 (min(coef, 1) is exact otherwise)
      auto coef = (max_norm / (norms[i] + 1e-6)).clamp_max(1.0);
      w.grads[i].mul_(coef);
    }
    if (norms_out) norms_out[0] = put(at::stack(norms).to(at::kFloat));
    return static_cast<int32_t>(w.grads.size());
  })
}

int32_t dd_clip_grad_norm_total_(const dd_tensor* params, int32_t n, double max_norm,
                                 dd_tensor* norm_out) {
  DD_STATUS({
    at::NoGradGuard no_grad;
    auto w = with_grad(params, n);
    at::Tensor total = w.grads.empty()
                           ? at::zeros({})
                           : at::linalg_vector_norm(at::stack(at::_foreach_norm(w.grads, 2)), 2);
    if (!w.grads.empty()) {
      auto coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
      at::_foreach_mul_(w.grads, coef.item());
    }
    if (norm_out) norm_out[0] = put(total);
    return static_cast<int32_t>(w.grads.size());
  })
}

int32_t dd_zero_grads(const dd_tensor* params, int32_t n, int32_t set_to_none) {
  DD_STATUS({
    check_lists(n);
    at::NoGradGuard no_grad;
    for (int32_t i = 0; i < n; i++) {
      auto& p = get(params[i]);
      if (!p.grad().defined()) continue;
      if (set_to_none) {
        p.mutable_grad() = at::Tensor();
      } else {
        p.mutable_grad().detach_();
        p.mutable_grad().zero_();
      }
    }
    return 0;
  })
}

int32_t dd_adamw_step(const dd_tensor* params, const dd_tensor* exp_avg,
                      const dd_tensor* exp_avg_sq, double* steps, int32_t n, double lr,
                      double beta1, double beta2, double eps, double weight_decay) {
  DD_STATUS({
    if (!(lr >= 0)) throw std::invalid_argument("AdamW lr must be >= 0");
    if (!(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1))
      throw std::invalid_argument("AdamW betas must be in [0, 1)");
    if (!(eps >= 0)) throw std::invalid_argument("AdamW eps must be >= 0");
    at::NoGradGuard no_grad;
    auto w = with_grad(params, n);
    if (w.params.empty()) return 0;
    std::vector<at::Tensor> m, v;
    for (size_t j = 0; j < w.index.size(); j++) {
      int32_t i = w.index[j];
      m.push_back(get(exp_avg[i]));
      v.push_back(get(exp_avg_sq[i]));
      if (m.back().sizes() != w.params[j].sizes() || v.back().sizes() != w.params[j].sizes())
        throw std::invalid_argument("AdamW state " + std::to_string(i) + " does not match its parameter " +
                                    c10::str(w.params[j].sizes()));
    }
    std::vector<at::Scalar> step_size, bc2_sqrt;
    for (size_t j = 0; j < w.index.size(); j++) {
      double step = steps[w.index[j]] + 1;
      double bc1 = 1 - std::pow(beta1, step);
      double bc2 = 1 - std::pow(beta2, step);
      step_size.push_back(-lr / bc1);
      bc2_sqrt.push_back(std::sqrt(bc2));
    }
    // torch.optim.AdamW (single-tensor form). On CPU one parameter at a time, so each
    // parameter's tensors stay in cache across the update's passes (measured faster than the
    // _foreach form there); on GPUs the _foreach kernels batch the launches. Same arithmetic.
    bool cpu = w.params.front().device().is_cpu();
    if (cpu) {
      for (size_t j = 0; j < w.params.size(); j++) {
        auto& p = w.params[j];
        auto& g = w.grads[j];
        if (weight_decay != 0) p.mul_(1 - lr * weight_decay);
        m[j].mul_(beta1).add_(g, 1 - beta1);
        v[j].mul_(beta2).addcmul_(g, g, 1 - beta2);
        auto denom = v[j].sqrt().div_(bc2_sqrt[j]).add_(eps);
        p.addcdiv_(m[j], denom, step_size[j]);
      }
    } else {
      if (weight_decay != 0) at::_foreach_mul_(w.params, 1 - lr * weight_decay);
      at::_foreach_mul_(m, beta1);
      at::_foreach_add_(m, w.grads, 1 - beta1);
      at::_foreach_mul_(v, beta2);
      at::_foreach_addcmul_(v, w.grads, w.grads, 1 - beta2);
      auto denom = at::_foreach_sqrt(v);
      at::_foreach_div_(denom, bc2_sqrt);
      at::_foreach_add_(denom, eps);
      at::_foreach_addcdiv_(w.params, m, denom, step_size);
    }
    for (auto i : w.index) steps[i] += 1;
    return static_cast<int32_t>(w.index.size());
  })
}

int32_t dd_sgd_step(const dd_tensor* params, dd_tensor* bufs, int32_t n, double lr,
                    double momentum, double dampening, double weight_decay, int32_t nesterov) {
  DD_STATUS({
    if (nesterov && (momentum <= 0 || dampening != 0))
      throw std::invalid_argument("Nesterov momentum requires a momentum and zero dampening");
    at::NoGradGuard no_grad;
    auto w = with_grad(params, n);
    for (size_t j = 0; j < w.index.size(); j++) {
      int32_t i = w.index[j];
      at::Tensor& p = w.params[j];
      at::Tensor d = w.grads[j];
      if (weight_decay != 0) d = d.add(p, weight_decay);
      if (momentum != 0) {
        if (bufs[i] == 0) {
          bufs[i] = put(d.clone().detach());
        } else {
          get(bufs[i]).mul_(momentum).add_(d, 1 - dampening);
        }
        at::Tensor& buf = get(bufs[i]);
        d = nesterov ? d.add(buf, momentum) : buf;
      }
      p.add_(d, -lr);
    }
    return static_cast<int32_t>(w.index.size());
  })
}

}  // extern "C"
