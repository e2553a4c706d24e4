/**
 * Runtime facts and settings: libtorch version, threads, CUDA, live handles.
 *
 * @module
 */
import { lastError, native, torchVersion } from "./ffi.ts";
import { TorchError } from "./errors.ts";

export { torchVersion };

/** Number of native tensor handles issued and not yet freed (the authoritative count). */
export function liveTensors(): number {
  return Number(native().dd_live_tensors());
}

/** Sets libtorch's intra-op thread count. */
export function setNumThreads(n: number): void {
  if (native().dd_set_num_threads(n) < 0) throw new TorchError("setNumThreads", lastError());
}

/** libtorch's intra-op thread count. */
export function getNumThreads(): number {
  return native().dd_get_num_threads();
}

/** CUDA memory statistics in bytes. */
export interface CudaMemoryStats {
  /** bytes currently allocated to tensors */
  allocated: number;
  /** the most bytes allocated to tensors since the last peak reset */
  peakAllocated: number;
  /** bytes currently held by the caching allocator (allocated plus cached) */
  reserved: number;
  /** the most bytes held by the caching allocator since the last peak reset */
  peakReserved: number;
}

function cudaCall(op: string, s: number): void {
  if (s < 0) throw new TorchError(op, lastError());
}

/** CUDA queries and controls. */
export interface Cuda {
  /** True when the shim was built against a CUDA libtorch. */
  isBuilt(): boolean;
  /** True when a CUDA device can be used. */
  isAvailable(): boolean;
  /** Number of visible CUDA devices (0 on CPU builds). */
  deviceCount(): number;
  /** Waits for all work on `device` to finish. */
  synchronize(device?: number): void;
  /** Allocator statistics of `device`. */
  memoryStats(device?: number): CudaMemoryStats;
  /** Resets the peak statistics of `device`. */
  resetPeakMemoryStats(device?: number): void;
  /** Releases cached, unused device memory. */
  emptyCache(): void;
}

/** CUDA queries. On a CPU build `isAvailable()` is false and the others throw "no CUDA". */
export const cuda: Cuda = {
  /** True when the shim was built against a CUDA libtorch. */
  isBuilt(): boolean {
    return native().dd_cuda_built() === 1;
  },
  /** True when a CUDA device can be used. */
  isAvailable(): boolean {
    return native().dd_cuda_is_available() === 1;
  },
  /** Number of visible CUDA devices (0 on CPU builds). */
  deviceCount(): number {
    return native().dd_cuda_device_count();
  },
  /** Waits for all work on `device` to finish. */
  synchronize(device = 0): void {
    cudaCall("cuda.synchronize", native().dd_cuda_synchronize(device));
  },
  /** Allocator statistics of `device`. */
  memoryStats(device = 0): CudaMemoryStats {
    const out = new Float64Array(4);
    cudaCall("cuda.memoryStats", native().dd_cuda_memory_stats(device, out));
    return { allocated: out[0], peakAllocated: out[1], reserved: out[2], peakReserved: out[3] };
  },
  /** Resets the peak statistics of `device`. */
  resetPeakMemoryStats(device = 0): void {
    cudaCall("cuda.resetPeakMemoryStats", native().dd_cuda_reset_peak_memory(device));
  },
  /** Releases cached, unused device memory. */
  emptyCache(): void {
    cudaCall("cuda.emptyCache", native().dd_cuda_empty_cache());
  },
};
