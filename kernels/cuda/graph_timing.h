// Timing a captured CUDA graph: the median over replays (after one warm-up) of event-timed
// launches, for benchmarks and start-up calibrations. Host-side; thread-safe (no shared state).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cuda/cuda_check.h"

namespace moemesh::cuda {

// Median milliseconds per replay of `exec` on `stream`: enough replays to cover about `min_ms`
// in total, clamped to [min_reps, max_reps].
inline double MedianGraphMs(cudaGraphExec_t exec, cudaStream_t stream, double min_ms, int min_reps,
                            int max_reps) {
  cudaEvent_t start, stop;
  MM_CUDA_CHECK(cudaEventCreate(&start));
  MM_CUDA_CHECK(cudaEventCreate(&stop));
  auto once = [&] {
    MM_CUDA_CHECK(cudaEventRecord(start, stream));
    MM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    MM_CUDA_CHECK(cudaEventRecord(stop, stream));
    MM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    MM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    return static_cast<double>(ms);
  };
  once();
  const double first = once();
  const int reps =
      std::clamp(static_cast<int>(std::ceil(min_ms / std::max(first, 1e-3))), min_reps, max_reps);
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) times.push_back(once());
  std::sort(times.begin(), times.end());
  MM_CUDA_CHECK(cudaEventDestroy(start));
  MM_CUDA_CHECK(cudaEventDestroy(stop));
  return times[times.size() / 2];
}

}  // namespace moemesh::cuda
