#include "bench/cascade_timeline.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "kernels/cuda/cuda_check.h"

namespace moemesh::bench {

// One call of `run` with p.cta_times set (CascadeParams): per unit kind (suffix / prefix / merge)
// and timeline point, min / median / max in us after the first CTA's start, then the end of the
// last CTA. The call is timed alone on the stream after a warm-up call.
std::vector<std::string> Timeline(const char* form, const cuda::PagedKv& cache,
                                  cuda::CascadeParams p, cuda::cascade::Form plan_form,
                                  const std::function<void(const cuda::CascadeParams&)>& run,
                                  cudaStream_t stream) {
  const cuda::CascadePlanInfo info = cuda::DescribeCascadePlan(cache, p, plan_form);
  const int64_t ctas = info.ctas;
  const int64_t suffix_ctas = info.suffix_ctas, merge_ctas = info.merge_ctas;
  const int k_stamps = cuda::kCascadeStamps, words = cuda::kCascadeTimelineWords;
  uint64_t* times;
  MM_CUDA_CHECK(cudaMalloc(&times, words * ctas * sizeof(uint64_t)));
  p.cta_times = times;
  run(p);
  run(p);
  MM_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<uint64_t> host(words * ctas);
  MM_CUDA_CHECK(cudaMemcpy(host.data(), times, host.size() * sizeof(uint64_t),
                           cudaMemcpyDeviceToHost));
  MM_CUDA_CHECK(cudaFree(times));
  uint64_t first = UINT64_MAX;
  for (int64_t i = 0; i < ctas; ++i) first = std::min(first, host[words * i]);
  std::vector<std::string> lines;
  const char* kinds[] = {" suffix", " prefix", " merge"};
  const int64_t bounds[] = {0, suffix_ctas, ctas - merge_ctas, ctas};
  for (int kind = 0; kind < 3; ++kind) {
    const int64_t lo = bounds[kind], hi = bounds[kind + 1];
    if (hi <= lo) continue;
    std::string line = std::string("       timeline ") + form + kinds[kind] + " units (" +
                       std::to_string(hi - lo) + " CTAs), us min/p50/max:";
    for (int k = 0; k < k_stamps; ++k) {
      std::vector<double> v;
      for (int64_t i = 0; i < ctas; ++i) {  // the CTAs that ran a unit of this kind
        const int64_t unit = static_cast<int64_t>(host[words * i + k_stamps]);
        if (unit < lo || unit >= hi) continue;
        const uint64_t t = host[words * i + k];
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
