// Benchmark helper: which GPU a CUDA benchmark runs on (name, SMs, L2, memory, driver and
// runtime versions, host name), printed as the first line of its report. Not for the runtime.
#pragma once

#include <cuda_runtime.h>
#include <unistd.h>

#include <cstdio>
#include <optional>

#include "kernels/cuda/cuda_check.h"

namespace moemesh::bench {

struct GpuInfo {
  int device = 0;
  cudaDeviceProp prop{};
  int driver = 0, runtime = 0;
  size_t l2 = 0;  // bytes
};

// The current GPU, after printing "<bench> on <host>: <gpu>, ..." to stdout; nullopt (with the
// CUDA error printed) when the machine has none.
inline std::optional<GpuInfo> DescribeGpu(const char* bench) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::printf("%s: no CUDA device (%s)\n", bench, cudaGetErrorString(err));
    return std::nullopt;
  }
  GpuInfo g;
  MM_CUDA_CHECK(cudaGetDevice(&g.device));
  MM_CUDA_CHECK(cudaGetDeviceProperties(&g.prop, g.device));
  MM_CUDA_CHECK(cudaDriverGetVersion(&g.driver));
  MM_CUDA_CHECK(cudaRuntimeGetVersion(&g.runtime));
  char host[256] = "unknown";
  gethostname(host, sizeof(host) - 1);
  g.l2 = static_cast<size_t>(g.prop.l2CacheSize);
  std::printf("%s on %s: %s, %d SMs, L2 %.0f MiB, %.1f GiB HBM, driver %d, runtime %d\n", bench,
              host, g.prop.name, g.prop.multiProcessorCount, g.l2 / 1048576.0,
              g.prop.totalGlobalMem / 1073741824.0, g.driver, g.runtime);
  return g;
}

}  // namespace moemesh::bench
