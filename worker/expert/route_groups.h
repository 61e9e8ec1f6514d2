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

// out[t] = sum over j (in j order) of weight[t, j] * route_out[position(t, j)] for tokens
// [t_begin, t_end): each token's sum does not depend on which thread computed which route.
// route_out: [held, hidden] per grouped position; out: [num_tokens, hidden].
void SumRoutes(const ExpertBatch& batch, const RouteGroups& groups, const float* route_out,
               int64_t t_begin, int64_t t_end, float* out);

}  // namespace moemesh
