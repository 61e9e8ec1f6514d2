#include "bench/cascade_timeline.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "kernels/cuda/cuda_check.h"

namespace moemesh::bench {

// One call of `run` with p.cta_times set (CascadeParams): per CTA kind (suffix / prefix units)
// and timeline point, min / median / max in us after the first CTA's start, then the end of the
// last CTA. The call is timed alone on the stream after a warm-up call.
std::vector<std::string> Timeline(const char* form, const cuda::PagedKv& cache,
                                  cuda::CascadeParams p, cuda::cascade::Form plan_form,
                                  const std::function<void(const cuda::CascadeParams&)>& run,
                                  cudaStream_t stream) {
  const cuda::CascadePlanInfo info = cuda::DescribeCascadePlan(cache, p, plan_form);
  const int64_t ctas = info.ctas;
  const int64_t suffix_ctas = info.suffix_ctas;
  const int k_stamps = cuda::kCascadeStamps;
  uint64_t* times;
  MM_CUDA_CHECK(cudaMalloc(&times, k_stamps * ctas * sizeof(uint64_t)));
  p.cta_times = times;
  run(p);
  run(p);
  MM_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<uint64_t> host(k_stamps * ctas);
  MM_CUDA_CHECK(cudaMemcpy(host.data(), times, host.size() * sizeof(uint64_t),
                           cudaMemcpyDeviceToHost));
  MM_CUDA_CHECK(cudaFree(times));
  uint64_t first = UINT64_MAX;
  for (int64_t i = 0; i < ctas; ++i) first = std::min(first, host[k_stamps * i]);
  std::vector<std::string> lines;
  for (int kind = 0; kind < 2; ++kind) {
    const int64_t lo = kind == 0 ? 0 : suffix_ctas, hi = kind == 0 ? suffix_ctas : ctas;
    if (hi <= lo) continue;
    std::string line = std::string("       timeline ") + form + (kind == 0 ? " suffix" : " prefix") +
                       " units (" + std::to_string(hi - lo) + " CTAs), us min/p50/max:";
    for (int k = 0; k < k_stamps; ++k) {
      std::vector<double> v;
      for (int64_t i = lo; i < hi; ++i) {
        const uint64_t t = host[k_stamps * i + k];
        if (t != 0) v.push_back((t - first) * 1e-3);
      }
      if (v.empty()) continue;
      std::sort(v.begin(), v.end());
      char text[96];
      std::snprintf(text, sizeof(text), " %s %.2f/%.2f/%.2f (%zu)",
                    cuda::kCascadeStampNames[k], v.front(), v[v.size() / 2], v.back(), v.size());
      line += text;
    }
    lines.push_back(line);
  }
  return lines;
}

}  // namespace moemesh::bench
