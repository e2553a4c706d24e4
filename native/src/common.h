// Internal helpers shared by the shim's translation units: the handle table, the
// thread-local error slot and the PROTECT macros that keep exceptions inside the library.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>  // at::AutoDispatchBelowAutograd
#include <ATen/core/grad_mode.h>  // at::GradMode, at::NoGradGuard (not pulled in by ATen.h in 2.x)

#include <stdexcept>
#include <string>
#include <vector>

#include "densedino.h"

namespace dd {

// Stores the message for dd_last_error() on the calling thread.
void set_error(const std::string& msg);
void clear_error();

// The handle table. A handle is (generation << 24) | slot index; slot 0 is never used.
uint32_t put(at::Tensor t);
at::Tensor& get(uint32_t h);              // throws std::invalid_argument on a bad handle
void release(uint32_t h);                 // throws on a bad handle
int64_t live_count();

// True when an operation on these inputs must be recorded for autograd. Elementwise operations
// whose inputs need no gradient skip libtorch's autograd dispatch layer entirely (as
// c10::InferenceMode does, without marking the outputs as inference tensors): the autograd
// kernel would only have forwarded the call, and skipping it saves ~65 ns per operation.
inline bool grad_needed(const at::Tensor& a) {
  return a.requires_grad() && at::GradMode::is_enabled();
}
inline bool grad_needed(const at::Tensor& a, const at::Tensor& b) {
  return (a.requires_grad() || b.requires_grad()) && at::GradMode::is_enabled();
}

// An optional tensor argument: handle 0 means "not given".
inline c10::optional<at::Tensor> opt(uint32_t h) {
  if (h == 0) return c10::nullopt;
  return get(h);
}

at::TensorOptions options(int32_t dtype, int32_t device_type, int32_t device_index);
at::ScalarType scalar_type(int32_t dtype);  // validates the code
std::vector<at::Tensor> tensor_list(const uint32_t* ts, int32_t n);
std::vector<int64_t> int_list(const int64_t* xs, int32_t n);
std::vector<int64_t> dim_list(const int32_t* xs, int32_t n);
c10::optional<at::Generator> generator(uint32_t g);

}  // namespace dd

#define DD_CATCH(ret)                                              \
  catch (const c10::Error& e) {                                    \
    dd::set_error(e.what_without_backtrace());                     \
    return ret;                                                    \
  }                                                                \
  catch (const std::exception& e) {                                \
    dd::set_error(e.what());                                       \
    return ret;                                                    \
  }                                                                \
  catch (...) {                                                    \
    dd::set_error("unknown C++ exception");                        \
    return ret;                                                    \
  }

// Body returns an at::Tensor; the function returns its new handle, or 0 on failure.
#define DD_TENSOR(...) \
  try {                 \
    __VA_ARGS__         \
  }                     \
  DD_CATCH(0u)

// Body returns an int32 status (>= 0 success); failure returns -1.
#define DD_STATUS(...) \
  try {                 \
    __VA_ARGS__         \
  }                     \
  DD_CATCH(-1)

// One-expression form: returns the handle of the tensor `expr` evaluates to.
#define DD_RET(...)                \
  try {                      \
    return dd::put((__VA_ARGS__)); \
  }                          \
  DD_CATCH(0u)
