// CUDA runtime queries. Built with -DDD_WITH_CUDA against a CUDA libtorch; on a CPU-only
// libtorch every call reports "no CUDA" cleanly instead of failing to link.
#include "common.h"

#ifdef DD_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace {
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "this shim was built without CUDA (CPU libtorch); rebuild with `deno task setup` against a "
      "CUDA libtorch (LIBTORCH or TORCH_DIR, or a CUDA PyTorch on python3)");
}

#ifdef DD_WITH_CUDA
void check_device(int32_t device) {
  int32_t n = static_cast<int32_t>(c10::cuda::device_count());
  if (device < 0 || device >= n)
    throw std::invalid_argument("CUDA device " + std::to_string(device) + " does not exist (" +
                                std::to_string(n) + " visible)");
}
#endif
}  // namespace

extern "C" {

int32_t dd_cuda_built(void) {
#ifdef DD_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

int32_t dd_cuda_is_available(void) {
  try {
    return at::hasCUDA() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

int32_t dd_cuda_device_count(void) {
  try {
#ifdef DD_WITH_CUDA
    return static_cast<int32_t>(c10::cuda::device_count());
#else
    return 0;
#endif
  } catch (...) {
    return 0;
  }
}

int32_t dd_cuda_synchronize(int32_t device) {
  DD_STATUS({
#ifdef DD_WITH_CUDA
    check_device(device);
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    c10::cuda::device_synchronize();
    return 0;
#else
    (void)device;
    no_cuda();
#endif
  })
}

int32_t dd_cuda_memory_stats(int32_t device, double* out) {
  DD_STATUS({
#ifdef DD_WITH_CUDA
    check_device(device);
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(
        static_cast<c10::DeviceIndex>(device));
    // index 0 of each stat array is the aggregate over pool types in every libtorch version
    out[0] = static_cast<double>(stats.allocated_bytes[0].current);
    out[1] = static_cast<double>(stats.allocated_bytes[0].peak);
    out[2] = static_cast<double>(stats.reserved_bytes[0].current);
    out[3] = static_cast<double>(stats.reserved_bytes[0].peak);
    return 0;
#else
    (void)device;
    (void)out;
    no_cuda();
#endif
  })
}

int32_t dd_cuda_reset_peak_memory(int32_t device) {
  DD_STATUS({
#ifdef DD_WITH_CUDA
    check_device(device);
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
#else
    (void)device;
    no_cuda();
#endif
  })
}

int32_t dd_cuda_empty_cache(void) {
  DD_STATUS({
#ifdef DD_WITH_CUDA
    c10::cuda::CUDACachingAllocator::emptyCache();
    return 0;
#else
    no_cuda();
#endif
  })
}

}  // extern "C"
