#include "tests/conformance/delayed_copy.h"

#include <cstdio>
#include <cstdlib>

namespace moemesh::cuda_test {
namespace {

struct Regions {
  CopyRegion r[4];
  int n;
};

__global__ void DelayedCopyKernel(Regions regions, uint64_t delay_ns) {
  // Let an overlapped launch after this one start now, while this kernel has written nothing.
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  uint64_t start;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  for (;;) {
    uint64_t now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (now - start >= delay_ns) break;
    __nanosleep(1000);
  }
  for (int i = 0; i < regions.n; ++i) {
    const CopyRegion& c = regions.r[i];
    const size_t words = c.bytes / 4;
    auto* dst = static_cast<uint32_t*>(c.dst);
    const auto* src = static_cast<const uint32_t*>(c.src);
    for (size_t w = blockIdx.x * blockDim.x + threadIdx.x; w < words;
         w += static_cast<size_t>(gridDim.x) * blockDim.x) {
      dst[w] = src[w];
    }
  }
}

}  // namespace

void DelayedCopy(const CopyRegion* regions, int n, int delay_us, cudaStream_t stream) {
  if (n < 0 || n > 4) {
    std::fprintf(stderr, "DelayedCopy: %d regions, expected 0..4\n", n);
    std::abort();
  }
  Regions r{};
  for (int i = 0; i < n; ++i) r.r[i] = regions[i];
  r.n = n;
  DelayedCopyKernel<<<8, 256, 0, stream>>>(r, static_cast<uint64_t>(delay_us) * 1000);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    std::fprintf(stderr, "DelayedCopy: %s\n", cudaGetErrorString(e));
    std::abort();
  }
}

}  // namespace moemesh::cuda_test
