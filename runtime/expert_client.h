// ExpertClient: how an attention rank runs the routed experts of one MoE layer for a batch of
// tokens, wherever the experts live (another process over gRPC, or in-process). One call per
// (step, layer) carries many tokens: never a message per token. Implementations say whether
// calls may overlap.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace moemesh {

// Tokens of one layer routed to one expert worker. Routes whose expert the worker does not hold
// carry expert id -1 and are skipped.
struct ExpertBatch {
  int32_t layer = 0;
  int32_t num_tokens = 0;
  int32_t hidden = 0;
  int32_t top_k = 0;
  absl::Span<const float> hidden_states;   // [num_tokens, hidden]
  absl::Span<const int32_t> expert_ids;    // [num_tokens, top_k]
  absl::Span<const float> expert_weights;  // [num_tokens, top_k]
};

class ExpertClient {
 public:
  virtual ~ExpertClient() = default;
  // out[t, :] = sum over the batch's routes (t, j) with a held expert e of
  //             weight[t, j] * down_e(silu(gate_e x_t) * up_e x_t).  `out` is [num_tokens, hidden].
  virtual absl::Status Run(const ExpertBatch& batch, absl::Span<float> out) = 0;
};

}  // namespace moemesh
