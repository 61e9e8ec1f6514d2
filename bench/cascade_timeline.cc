#include "bench/cascade_timeline.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <utility>

#include "kernels/cuda/cuda_check.h"

namespace moemesh::bench {

// One call of `run` with p.cta_times set (CascadeParams): per unit kind (suffix / prefix / merge)
// and timeline point, min / median / max in us after the first CTA's start, then the end of the
// last CTA. The call is timed alone on the stream after a warm-up call.
std::vector<std::string> Timeline(const char* form, const cuda::PagedKv& cache,
                                  cuda::CascadeParams p, cuda::cascade::Form plan_form,
                                  const std::function<void(const cuda::CascadeParams&)>& run,
                                  cudaStream_t stream, const std::string& csv_path,
                                  const std::string& label) {
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
  if (!csv_path.empty()) {
    if (FILE* f = std::fopen(csv_path.c_str(), "a")) {
      for (int64_t i = 0; i < ctas; ++i) {
        const uint64_t id = host[words * i + k_stamps];
        std::fprintf(f, "%s,%s,%lld,%llu,%llu", label.c_str(), form, static_cast<long long>(i),
                     static_cast<unsigned long long>(id & 0xffffffffu),
                     static_cast<unsigned long long>(id >> 32));
        for (int k = 0; k < k_stamps; ++k) {
          const uint64_t t = host[words * i + k];
          if (t == 0) {
            std::fprintf(f, ",");
          } else {
            std::fprintf(f, ",%.3f", (t - first) * 1e-3);
          }
        }
        std::fprintf(f, "\n");
      }
      std::fclose(f);
    }
  }
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
        const int64_t unit = static_cast<int64_t>(host[words * i + k_stamps] & 0xffffffffu);
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
  // Prefix units by what shares their SM (the kernel holds two CTAs per SM): the units' main
  // loops (landed -> looped), grouped by the prefix units on the SM and whether a merge unit
  // started there before the loop ended.
  std::map<uint32_t, std::vector<int64_t>> by_sm;
  for (int64_t i = 0; i < ctas; ++i) by_sm[host[words * i + k_stamps] >> 32].push_back(i);
  auto unit_of = [&](int64_t i) { return static_cast<int64_t>(host[words * i + k_stamps] &
                                                              0xffffffffu); };
  std::map<std::pair<int, bool>, std::vector<double>> loops;  // (prefix on SM, merge) -> us
  for (const auto& [sm, list] : by_sm) {
    int prefix = 0;
    for (int64_t i : list) prefix += unit_of(i) >= bounds[1] && unit_of(i) < bounds[2];
    for (int64_t i : list) {
      if (unit_of(i) < bounds[1] || unit_of(i) >= bounds[2]) continue;
      const uint64_t landed = host[words * i + 3], looped = host[words * i + 4];
      if (landed == 0 || looped == 0) continue;
      bool merge = false;
      for (int64_t j : list) merge |= unit_of(j) >= bounds[2] && host[words * j] < looped;
      loops[{prefix, merge}].push_back((looped - landed) * 1e-3);
    }
  }
  if (!loops.empty()) {
    std::string line = "       timeline " + std::string(form) +
                       " prefix loops (landed -> looped) by SM neighbours, us min/p50/max:";
    for (auto& [key, v] : loops) {
      std::sort(v.begin(), v.end());
      char text[128];
      std::snprintf(text, sizeof(text), " [%d prefix on SM%s] %.2f/%.2f/%.2f (%zu)", key.first,
                    key.second ? ", merge unit" : "", v.front(), v[v.size() / 2], v.back(),
                    v.size());
      line += text;
    }
    lines.push_back(line);
  }
  return lines;
}

}  // namespace moemesh::bench
