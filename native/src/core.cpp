// The handle table, errors, runtime, tensor lifecycle / host IO, creation and random.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/version.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include "common.h"

namespace dd {

namespace {

thread_local std::string g_error;

constexpr uint32_t kIndexBits = 24;
constexpr uint32_t kIndexMask = (1u << kIndexBits) - 1;
constexpr uint32_t kChunkBits = 12;
constexpr uint32_t kChunkSize = 1u << kChunkBits;
constexpr uint32_t kMaxChunks = 1u << (kIndexBits - kChunkBits);

struct Slot {
  at::Tensor tensor;
  uint32_t gen = 1;  // 1..255; bumped on release so stale handles do not match
  int32_t next_free = -1;
  bool live = false;
};

// A tiny spinlock: the critical sections below are a few instructions long, where an
// uncontended std::mutex costs more than the work it protects (measured on the per-op path).
class SpinLock {
 public:
  void lock() {
    while (flag_.test_and_set(std::memory_order_acquire)) {
    }
  }
  void unlock() { flag_.clear(std::memory_order_release); }

 private:
  std::atomic_flag flag_ = ATOMIC_FLAG_INIT;
};

// Chunks never move once allocated, so lookups need no lock; allocation and release do.
Slot* g_chunks[kMaxChunks] = {nullptr};
SpinLock g_mutex;
std::atomic<uint32_t> g_used{1};  // slot 0 is reserved for "none"
// Freed slots wait in a FIFO queue and are reused only while more than kQuarantine are
// waiting. With the 8-bit generation, a stale handle that something kept as a raw integer
// (rather than through a Tensor, which zeroes its handle on free) could otherwise alias a new
// tensor after 255 frees of one hot slot; the queue makes that take ~255 * kQuarantine
// allocations, at a cost of kQuarantine idle slots (~100 KB, stays in cache).
constexpr uint32_t kQuarantine = 4096;
int32_t g_free_head = -1;
int32_t g_free_tail = -1;
uint32_t g_free_count = 0;
std::atomic<int64_t> g_live{0};

inline Slot& slot_at(uint32_t index) {
  return g_chunks[index >> kChunkBits][index & (kChunkSize - 1)];
}

Slot& checked_slot(uint32_t h) {
  uint32_t index = h & kIndexMask;
  if (h == 0)
    throw std::invalid_argument(
        "tensor handle is 0: no tensor was given, or the tensor was used after free()");
  if (index >= g_used.load(std::memory_order_acquire))
    throw std::invalid_argument("tensor handle " + std::to_string(h) + " was never issued");
  Slot& s = slot_at(index);
  if (!s.live || s.gen != (h >> kIndexBits))
    throw std::invalid_argument("tensor handle " + std::to_string(h) +
                                " refers to a freed tensor");
  return s;
}

}  // namespace

void set_error(const std::string& msg) { g_error = msg; }
void clear_error() { g_error.clear(); }

uint32_t put(at::Tensor t) {
  if (!t.defined()) throw std::runtime_error("operation produced an undefined tensor");
  std::lock_guard<SpinLock> lock(g_mutex);
  uint32_t index;
  if (g_free_count > kQuarantine ||
      (g_free_head >= 0 && g_used.load(std::memory_order_relaxed) > kIndexMask)) {
    index = static_cast<uint32_t>(g_free_head);
    g_free_head = slot_at(index).next_free;
    if (g_free_head < 0) g_free_tail = -1;
    g_free_count--;
  } else {
    index = g_used.load(std::memory_order_relaxed);
    if (index > kIndexMask) throw std::runtime_error("too many live tensors (16M handles)");
    uint32_t chunk = index >> kChunkBits;
    if (g_chunks[chunk] == nullptr) g_chunks[chunk] = new Slot[kChunkSize];
    g_used.store(index + 1, std::memory_order_release);
  }
  Slot& s = slot_at(index);
  s.tensor = std::move(t);
  s.live = true;
  s.next_free = -1;
  // writers hold the lock: a plain load/store keeps the count without a locked instruction
  g_live.store(g_live.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  return (s.gen << kIndexBits) | index;
}

at::Tensor& get(uint32_t h) { return checked_slot(h).tensor; }

void release(uint32_t h) {
  at::Tensor dropped;  // destroyed after the lock is released
  {
    std::lock_guard<SpinLock> lock(g_mutex);
    Slot& s = checked_slot(h);
    dropped = std::move(s.tensor);  // leaves the slot's tensor empty
    s.live = false;
    s.gen = s.gen == 255 ? 1 : s.gen + 1;
    s.next_free = -1;
    int32_t index = static_cast<int32_t>(h & kIndexMask);
    if (g_free_tail >= 0) slot_at(static_cast<uint32_t>(g_free_tail)).next_free = index;
    else g_free_head = index;
    g_free_tail = index;
    g_free_count++;
    g_live.store(g_live.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  }
}

int64_t live_count() { return g_live.load(std::memory_order_relaxed); }

at::ScalarType scalar_type(int32_t dtype) {
  switch (dtype) {
    case DD_U8: return at::kByte;
    case DD_I8: return at::kChar;
    case DD_I16: return at::kShort;
    case DD_I32: return at::kInt;
    case DD_I64: return at::kLong;
    case DD_F16: return at::kHalf;
    case DD_F32: return at::kFloat;
    case DD_F64: return at::kDouble;
    case DD_BOOL: return at::kBool;
    case DD_BF16: return at::kBFloat16;
    default: throw std::invalid_argument("unknown dtype code " + std::to_string(dtype));
  }
}

at::TensorOptions options(int32_t dtype, int32_t device_type, int32_t device_index) {
  at::TensorOptions o = at::TensorOptions().dtype(scalar_type(dtype));
  if (device_type == DD_CPU) return o.device(at::kCPU);
  if (device_type == DD_CUDA) {
    return o.device(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(
                                              device_index < 0 ? 0 : device_index)));
  }
  throw std::invalid_argument("unknown device type " + std::to_string(device_type));
}

std::vector<at::Tensor> tensor_list(const uint32_t* ts, int32_t n) {
  if (n < 0) throw std::invalid_argument("negative list length");
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int32_t i = 0; i < n; i++) out.push_back(get(ts[i]));
  return out;
}

std::vector<int64_t> int_list(const int64_t* xs, int32_t n) {
  if (n < 0) throw std::invalid_argument("negative list length");
  return std::vector<int64_t>(xs, xs + n);
}

std::vector<int64_t> dim_list(const int32_t* xs, int32_t n) {
  if (n < 0) throw std::invalid_argument("negative list length");
  return std::vector<int64_t>(xs, xs + n);
}

// ---- generators: a small table; slot 0 means "the default generator" ----------------
namespace {
std::mutex g_gen_mutex;
std::vector<std::unique_ptr<at::Generator>> g_gens(1);
std::vector<uint32_t> g_free_gens;  // freed slots, reused (FIFO order is not needed here)
}  // namespace

c10::optional<at::Generator> generator(uint32_t g) {
  if (g == 0) return c10::nullopt;
  std::lock_guard<std::mutex> lock(g_gen_mutex);
  if (g >= g_gens.size() || !g_gens[g])
    throw std::invalid_argument("generator handle " + std::to_string(g) + " is not live");
  return *g_gens[g];
}

}  // namespace dd

using dd::get;
using dd::put;

extern "C" {

int32_t dd_abi_version(void) { return DD_ABI_VERSION; }
const char* dd_last_error(void) { return dd::g_error.c_str(); }
const char* dd_torch_version(void) { return TORCH_VERSION; }

int32_t dd_has_sdpa(void) {
#if TORCH_VERSION_MAJOR >= 2
  return 1;
#else
  return 0;
#endif
}

int32_t dd_set_num_threads(int32_t n) {
  DD_STATUS({
    if (n < 1) throw std::invalid_argument("thread count must be >= 1, got " + std::to_string(n));
    // OpenMP starts every requested thread at the next parallel region: a huge count stalls
    // or exhausts the process's thread limit, so bound it well above any real machine.
    int32_t cap = std::max<int32_t>(256, 4 * static_cast<int32_t>(std::thread::hardware_concurrency()));
    if (n > cap)
      throw std::invalid_argument("thread count " + std::to_string(n) + " is above the limit " +
                                  std::to_string(cap) + " (4 x hardware threads, at least 256)");
    at::set_num_threads(n);
    return 0;
  })
}
int32_t dd_get_num_threads(void) { DD_STATUS({ return at::get_num_threads(); }) }
int32_t dd_manual_seed(uint64_t seed) {
  DD_STATUS({
    at::manual_seed(seed);
    return 0;
  })
}
int64_t dd_live_tensors(void) { return dd::live_count(); }

// ---- lifecycle ----------------------------------------------------------------------
dd_tensor dd_from_buffer(const void* data, int64_t nbytes, int32_t dtype, const int64_t* shape,
                         int32_t ndim) {
  try {
    auto sizes = dd::int_list(shape, ndim);
    at::Tensor t = at::empty(sizes, dd::options(dtype, DD_CPU, 0));
    int64_t expect = t.numel() * static_cast<int64_t>(t.element_size());
    if (nbytes != expect)
      throw std::invalid_argument("buffer holds " + std::to_string(nbytes) + " bytes but shape " +
                                  c10::str(t.sizes()) + " of " + c10::toString(t.scalar_type()) +
                                  " needs " + std::to_string(expect));
    if (expect > 0) {
      if (data == nullptr) throw std::invalid_argument("null data buffer");
      std::memcpy(t.data_ptr(), data, static_cast<size_t>(expect));
    }
    return put(t);
  }
  DD_CATCH(0u)
}

int32_t dd_to_buffer(dd_tensor h, void* out, int64_t nbytes) {
  DD_STATUS({
    at::Tensor t = get(h).detach();
    if (!t.device().is_cpu()) t = t.to(at::kCPU);
    t = t.contiguous();
    int64_t have = t.numel() * static_cast<int64_t>(t.element_size());
    if (nbytes != have)
      throw std::invalid_argument("output buffer holds " + std::to_string(nbytes) +
                                  " bytes but the tensor has " + std::to_string(have));
    if (have > 0) std::memcpy(out, t.data_ptr(), static_cast<size_t>(have));
    return 0;
  })
}

int32_t dd_free(dd_tensor h) {
  DD_STATUS({
    dd::release(h);
    return 0;
  })
}

int32_t dd_ndim(dd_tensor h) { DD_STATUS({ return static_cast<int32_t>(get(h).dim()); }) }
int32_t dd_shape(dd_tensor h, int64_t* out) {
  DD_STATUS({
    auto& t = get(h);
    for (int64_t i = 0; i < t.dim(); i++) out[i] = t.size(i);
    return static_cast<int32_t>(t.dim());
  })
}
int32_t dd_strides(dd_tensor h, int64_t* out) {
  DD_STATUS({
    auto& t = get(h);
    for (int64_t i = 0; i < t.dim(); i++) out[i] = t.stride(i);
    return static_cast<int32_t>(t.dim());
  })
}
int32_t dd_dtype(dd_tensor h) { DD_STATUS({ return static_cast<int32_t>(get(h).scalar_type()); }) }
int32_t dd_device(dd_tensor h, int32_t* out) {
  DD_STATUS({
    auto d = get(h).device();
    out[0] = static_cast<int32_t>(d.type());
    out[1] = d.has_index() ? d.index() : 0;
    return 0;
  })
}
int32_t dd_requires_grad(dd_tensor h) { DD_STATUS({ return get(h).requires_grad() ? 1 : 0; }) }
int32_t dd_is_contiguous(dd_tensor h) { DD_STATUS({ return get(h).is_contiguous() ? 1 : 0; }) }
int32_t dd_is_leaf(dd_tensor h) { DD_STATUS({ return get(h).is_leaf() ? 1 : 0; }) }
int64_t dd_numel(dd_tensor h) { DD_STATUS({ return get(h).numel(); }) }
int32_t dd_item(dd_tensor h, double* out) {
  DD_STATUS({
    auto& t = get(h);
    if (t.numel() != 1)
      throw std::invalid_argument("item() needs a tensor with one element, got shape " +
                                  c10::str(t.sizes()));
    out[0] = t.item<double>();
    return 0;
  })
}
int32_t dd_same_storage(dd_tensor a, dd_tensor b) {
  DD_STATUS({ return get(a).is_alias_of(get(b)) ? 1 : 0; })
}

// ---- creation ---------------------------------------------------------------------------
dd_tensor dd_full(const int64_t* shape, int32_t ndim, double value, int32_t dtype,
                  int32_t device_type, int32_t device_index) {
  DD_RET(at::full(dd::int_list(shape, ndim), value, dd::options(dtype, device_type, device_index)))
}
dd_tensor dd_empty(const int64_t* shape, int32_t ndim, int32_t dtype, int32_t device_type,
                   int32_t device_index) {
  DD_RET(at::empty(dd::int_list(shape, ndim), dd::options(dtype, device_type, device_index)))
}
dd_tensor dd_arange(double start, double end, double step, int32_t dtype, int32_t device_type,
                    int32_t device_index) {
  DD_RET(at::arange(start, end, step, dd::options(dtype, device_type, device_index)))
}
dd_tensor dd_linspace(double start, double end, int64_t steps, int32_t dtype, int32_t device_type,
                      int32_t device_index) {
  DD_RET(at::linspace(start, end, steps, dd::options(dtype, device_type, device_index)))
}
dd_tensor dd_eye(int64_t n, int64_t m, int32_t dtype, int32_t device_type, int32_t device_index) {
  DD_RET(at::eye(n, m, dd::options(dtype, device_type, device_index)))
}
dd_tensor dd_like(int32_t like_op, dd_tensor h, int32_t dtype) {
  try {
    auto& t = get(h);
    auto o = t.options().requires_grad(false);
    if (dtype >= 0) o = o.dtype(dd::scalar_type(dtype));
    switch (like_op) {
      case 0: return put(at::zeros_like(t, o));
      case 1: return put(at::ones_like(t, o));
      case 2: return put(at::empty_like(t, o));
      default: throw std::invalid_argument("unknown like op " + std::to_string(like_op));
    }
  }
  DD_CATCH(0u)
}
dd_tensor dd_full_like(dd_tensor h, double value, int32_t dtype) {
  try {
    auto& t = get(h);
    auto o = t.options().requires_grad(false);
    if (dtype >= 0) o = o.dtype(dd::scalar_type(dtype));
    return put(at::full_like(t, value, o));
  }
  DD_CATCH(0u)
}

// ---- random ---------------------------------------------------------------------------
dd_generator dd_generator_new(uint64_t seed, int32_t device_type, int32_t device_index) {
  try {
    auto dev = dd::options(DD_F32, device_type, device_index).device();
    at::Generator g;
    if (dev.is_cpu()) {
      // a fresh CPU generator: Generator::clone() leaks its copy in libtorch 1.13 (about 8 KiB
      // per call, measured), and the loader makes one generator per example
      g = at::detail::createCPUGenerator(seed);
    } else {
      at::Generator base = at::globalContext().defaultGenerator(dev);
      std::lock_guard<std::mutex> lock(base.mutex());
      g = base.clone();
    }
    g.set_current_seed(seed);
    std::lock_guard<std::mutex> lock(dd::g_gen_mutex);
    if (!dd::g_free_gens.empty()) {
      uint32_t slot = dd::g_free_gens.back();
      dd::g_free_gens.pop_back();
      dd::g_gens[slot] = std::make_unique<at::Generator>(g);
      return slot;
    }
    dd::g_gens.push_back(std::make_unique<at::Generator>(g));
    return static_cast<uint32_t>(dd::g_gens.size() - 1);
  }
  DD_CATCH(0u)
}

int32_t dd_generator_free(dd_generator g) {
  DD_STATUS({
    std::lock_guard<std::mutex> lock(dd::g_gen_mutex);
    if (g == 0 || g >= dd::g_gens.size() || !dd::g_gens[g])
      throw std::invalid_argument("generator handle " + std::to_string(g) + " is not live");
    dd::g_gens[g].reset();
    dd::g_free_gens.push_back(g);
    return 0;
  })
}

namespace {
at::Generator resolve_gen(dd_generator g) {
  auto opt = dd::generator(g);
  if (opt) return *opt;
  return at::globalContext().defaultGenerator(at::kCPU);
}
}  // namespace

int32_t dd_generator_seed(dd_generator g, uint64_t seed) {
  DD_STATUS({
    at::Generator gen = resolve_gen(g);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(seed);
    return 0;
  })
}
dd_tensor dd_generator_get_state(dd_generator g) {
  try {
    at::Generator gen = resolve_gen(g);
    std::lock_guard<std::mutex> lock(gen.mutex());
    return put(gen.get_state());
  }
  DD_CATCH(0u)
}
int32_t dd_generator_set_state(dd_generator g, dd_tensor state) {
  DD_STATUS({
    at::Generator gen = resolve_gen(g);
    auto& s = get(state);
    if (s.scalar_type() != at::kByte || s.dim() != 1)
      throw std::invalid_argument("generator state must be a 1-D uint8 tensor");
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(s);
    return 0;
  })
}

dd_tensor dd_random(int32_t kind, const int64_t* shape, int32_t ndim, int32_t dtype,
                    int32_t device_type, int32_t device_index, dd_generator g) {
  try {
    auto sizes = dd::int_list(shape, ndim);
    auto o = dd::options(dtype, device_type, device_index);
    auto gen = dd::generator(g);
    switch (kind) {
      case 0: return put(at::rand(sizes, gen, o));
      case 1: return put(at::randn(sizes, gen, o));
      default: throw std::invalid_argument("unknown random kind " + std::to_string(kind));
    }
  }
  DD_CATCH(0u)
}
dd_tensor dd_randint(int64_t low, int64_t high, const int64_t* shape, int32_t ndim, int32_t dtype,
                     int32_t device_type, int32_t device_index, dd_generator g) {
  DD_RET(at::randint(low, high, dd::int_list(shape, ndim), dd::generator(g),
                     dd::options(dtype, device_type, device_index)))
}
dd_tensor dd_randperm(int64_t n, int32_t dtype, int32_t device_type, int32_t device_index,
                      dd_generator g) {
  DD_RET(at::randperm(n, dd::generator(g), dd::options(dtype, device_type, device_index)))
}
dd_tensor dd_bernoulli(dd_tensor probs, dd_generator g) {
  DD_RET(at::bernoulli(get(probs), dd::generator(g)))
}

int32_t dd_random_(int32_t kind, dd_tensor h, double a, double b, double c, double d,
                   dd_generator g) {
  DD_STATUS({
    at::NoGradGuard no_grad;
    auto& t = get(h);
    auto gen = dd::generator(g);
    switch (kind) {
      case 0: t.uniform_(a, b, gen); break;
      case 1: t.normal_(a, b, gen); break;
      case 2: t.bernoulli_(a, gen); break;
      case 3: {
        // torch.nn.init.trunc_normal_: inverse-CDF sampling of the truncated normal.
        double mean = a, std = b, lo = c, hi = d;
        if (!(std > 0)) throw std::invalid_argument("trunc_normal_ needs std > 0");
        if (!(lo < hi)) throw std::invalid_argument("trunc_normal_ needs lo < hi");
        auto cdf = [](double x) { return (1. + std::erf(x / std::sqrt(2.))) / 2.; };
        double l = cdf((lo - mean) / std), u = cdf((hi - mean) / std);
        t.uniform_(2 * l - 1, 2 * u - 1, gen);
        t.erfinv_();
        t.mul_(std * std::sqrt(2.));
        t.add_(mean);
        t.clamp_(lo, hi);
        break;
      }
      default: throw std::invalid_argument("unknown random fill kind " + std::to_string(kind));
    }
    return 0;
  })
}

}  // extern "C"
