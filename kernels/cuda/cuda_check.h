// Error checking for CUDA runtime calls: every call goes through MM_CUDA_CHECK (aborts with
// file and line: a failing CUDA call is a broken invariant or a lost device) or MM_CUDA_STATUS
// (returns an absl::Status to the caller). Header-only; thread-safe.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define MM_CUDA_CHECK(expr)                                                                  \
  do {                                                                                       \
    cudaError_t mm_err_ = (expr);                                                            \
    if (mm_err_ != cudaSuccess) {                                                            \
      std::fprintf(stderr, "%s:%d: CUDA error %s: %s (%s)\n", __FILE__, __LINE__,            \
                   cudaGetErrorName(mm_err_), cudaGetErrorString(mm_err_), #expr);           \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)
