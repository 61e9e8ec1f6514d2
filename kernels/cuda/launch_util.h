// Host-side helpers shared by the tiled attention kernels (attention.cu, cascade.cu): contract
// failures that abort with the op named, pointer alignment, and the number of CTAs of a kernel
// resident on the current GPU at once (computed once per device and head size, which also
// raises the kernel's dynamic shared-memory limit; make the first call before any graph
// capture). Thread-safe.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

#include "kernels/cuda/cuda_check.h"

namespace moemesh::cuda {

// Aborts with the op named: a violated contract is a caller bug.
[[noreturn]] inline __attribute__((format(printf, 2, 3))) void Fail(const char* op, const char* fmt,
                                                                    ...) {
  std::fprintf(stderr, "moemesh::cuda::%s: ", op);
  va_list args;
  va_start(args, fmt);
  std::vfprintf(stderr, fmt, args);
  va_end(args);
  std::fprintf(stderr, "\n");
  std::abort();
}

inline bool Aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Resident CTAs of the 64- and 128-wide instances of one kernel family, cached per device.
class ResidentCtas {
 public:
  static constexpr int kMaxDevices = 64;

  static constexpr int kMaxTwins = 4;

  // `op` names the family in errors. `kernel64` / `kernel128` and their dynamic shared memory;
  // `twins64` / `twins128` (optional, up to kMaxTwins each): variants with the same shared
  // memory and launch bounds, which get the same shared-memory limit (the count is the first
  // kernel's).
  ResidentCtas(const char* op, const void* kernel64, size_t smem64, const void* kernel128,
               size_t smem128, int threads, std::initializer_list<const void*> twins64 = {},
               std::initializer_list<const void*> twins128 = {})
      : op_(op), kernels_{kernel64, kernel128}, smem_{smem64, smem128}, threads_(threads) {
    if (twins64.size() > kMaxTwins || twins128.size() > kMaxTwins) Fail(op, "too many twins");
    std::copy(twins64.begin(), twins64.end(), twins_[0]);
    std::copy(twins128.begin(), twins128.end(), twins_[1]);
  }

  int For(int head_dim) {
    int device = 0;
    MM_CUDA_CHECK(cudaGetDevice(&device));
    if (device < 0 || device >= kMaxDevices) Fail(op_, "device %d", device);
    const int which = head_dim == 128 ? 1 : 0;
    int slots = cache_[which][device].load(std::memory_order_acquire);
    if (slots == 0) {
      MM_CUDA_CHECK(cudaFuncSetAttribute(kernels_[which], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_[which])));
      for (const void* twin : twins_[which]) {
        if (twin == nullptr) continue;
        MM_CUDA_CHECK(cudaFuncSetAttribute(twin, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem_[which])));
      }
      int sms = 0, per_sm = 0;
      MM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
      MM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernels_[which], threads_,
                                                                  smem_[which]));
      if (per_sm < 1) Fail(op_, "kernel for head_dim %d does not fit on an SM", head_dim);
      slots = sms * per_sm;
      cache_[which][device].store(slots, std::memory_order_release);
    }
    return slots;
  }

 private:
  const char* op_;
  const void* kernels_[2];
  const void* twins_[2][kMaxTwins] = {};
  size_t smem_[2];
  int threads_;
  std::atomic<int> cache_[2][kMaxDevices] = {};
};

}  // namespace moemesh::cuda
