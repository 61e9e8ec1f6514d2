// Groups one MoE layer batch's routes by the expert that serves them (a counting sort, tokens
// ascending within an expert), for the expert pools. Pure function; thread-compatible.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "runtime/expert_client.h"

namespace moemesh {

struct RouteGroups {
  std::vector<int32_t> offsets;  // per slot, the first grouped position; offsets[n_slots] = held
  std::vector<int32_t> token;    // grouped position -> token
  std::vector<int32_t> position; // route (t, j) -> grouped position; -1 for expert id -1
  int64_t held() const { return offsets.empty() ? 0 : offsets.back(); }
};

// `slot` maps a held expert id to its slot in [0, n_slots). Reuses `groups`' storage.
void GroupRoutes(const ExpertBatch& batch, int64_t n_slots,
                 absl::FunctionRef<int32_t(int32_t expert)> slot, RouteGroups& groups);

// out[t, c] = sum over j (in j order) of weight[t, j] * route_out[position(t, j), c] for the
// elements [e_begin, e_end) of the row-major [num_tokens, hidden] output: each token's sum does
// not depend on which thread computed which route or summed which range.
// weights: [num_tokens, top_k]; route_out: [held, hidden] per grouped position.
void SumRoutes(const RouteGroups& groups, int64_t top_k, int64_t hidden, const float* weights,
               const float* route_out, int64_t e_begin, int64_t e_end, float* out);

}  // namespace moemesh
