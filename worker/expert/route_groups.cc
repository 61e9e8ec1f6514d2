#include "worker/expert/route_groups.h"

#include <algorithm>

namespace moemesh {

void GroupRoutes(const ExpertBatch& b, int64_t n_slots, absl::FunctionRef<int32_t(int32_t expert)> slot,
                 RouteGroups& g) {
  const int64_t k = b.top_k;
  const int64_t n_routes = static_cast<int64_t>(b.num_tokens) * k;
  g.offsets.assign(n_slots + 1, 0);
  for (int64_t r = 0; r < n_routes; ++r) {
    if (b.expert_ids[r] >= 0) ++g.offsets[slot(b.expert_ids[r]) + 1];
  }
  for (int64_t s = 0; s < n_slots; ++s) g.offsets[s + 1] += g.offsets[s];
  std::vector<int32_t> cursor(g.offsets.begin(), g.offsets.end() - 1);
  g.token.resize(g.held());
  g.position.resize(n_routes);
  for (int64_t r = 0; r < n_routes; ++r) {
    const int32_t e = b.expert_ids[r];
    if (e < 0) {
      g.position[r] = -1;
      continue;
    }
    const int32_t p = cursor[slot(e)]++;
    g.token[p] = static_cast<int32_t>(r / k);
    g.position[r] = p;
  }
}

void SumRoutes(const RouteGroups& g, int64_t top_k, int64_t hidden, const float* weights,
               const float* route_out, int64_t e_begin, int64_t e_end, float* out) {
  for (int64_t t = e_begin / hidden; t * hidden < e_end; ++t) {
    const int64_t c0 = std::max<int64_t>(e_begin - t * hidden, 0);
    const int64_t c1 = std::min<int64_t>(e_end - t * hidden, hidden);
    float* o = out + t * hidden;
    std::fill(o + c0, o + c1, 0.0f);
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t p = g.position[t * top_k + j];
      if (p < 0) continue;
      const float w = weights[t * top_k + j];
      const float* y = route_out + static_cast<int64_t>(p) * hidden;
      for (int64_t c = c0; c < c1; ++c) o[c] += w * y[c];
    }
  }
}

}  // namespace moemesh
