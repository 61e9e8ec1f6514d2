// Division of non-negative 31-bit integers by a divisor fixed at launch time, with a multiply-high,
// an add and a shift instead of an integer divide (Granlund & Montgomery, PLDI 1994, section 4).
// The attention kernels use it to map token positions to KV-cache blocks. Header-only, usable on
// the host and the device (the host twin is what the CPU tests check). Thread-safe (values only).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MM_FASTDIV_HD __host__ __device__ __forceinline__
#else
#define MM_FASTDIV_HD inline
#endif

namespace moemesh::cuda {

struct FastDivisor {
  uint32_t divisor = 1;
  uint32_t multiplier = 1;  // floor(2^32 * (2^shift - divisor) / divisor) + 1
  uint32_t shift = 0;       // ceil(log2(divisor))

  FastDivisor() = default;
  // 1 <= d <= 2^31.
  explicit FastDivisor(uint32_t d) : divisor(d) {
    uint32_t l = 0;
    while ((uint64_t{1} << l) < d) ++l;
    shift = l;
    multiplier = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << l) - d)) / d + 1);
  }

  // n / divisor for 0 <= n < 2^31.
  MM_FASTDIV_HD uint32_t Div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(n, multiplier);
#else
    const uint32_t hi = static_cast<uint32_t>((static_cast<uint64_t>(n) * multiplier) >> 32);
#endif
    return (hi + n) >> shift;
  }
};

}  // namespace moemesh::cuda
