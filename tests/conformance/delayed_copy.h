// A test kernel that makes the next kernel of a stream race with it: it spins for a while, then
// copies buffers. A kernel launched after it with programmatic dependent launch that read its
// destinations before waiting for it would see the old contents.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moemesh::cuda_test {

struct CopyRegion {
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;  // a multiple of 4; both pointers 4-byte aligned
};

// One kernel on `stream`: lets a kernel launched after it with programmatic dependent launch
// start at once, waits about `delay_us` microseconds (device clock), then copies each region.
// Up to 4 regions.
void DelayedCopy(const CopyRegion* regions, int n, int delay_us, cudaStream_t stream);

}  // namespace moemesh::cuda_test
