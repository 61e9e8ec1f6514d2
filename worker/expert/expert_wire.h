// The one place that converts between ExpertBatch / absl::Status and the ExpertRequest /
// ExpertResponse messages of proto/moemesh/v1/expert.proto (f32 little-endian payloads).
// Validation of a received request lives here too: every error names the field, the size found
// and the size expected. Thread-safe (pure functions).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "moemesh/v1/expert.pb.h"
#include "runtime/expert_client.h"

namespace moemesh {

// Largest ExpertRequest/ExpertResponse either side accepts (gRPC's default is 4 MiB).
inline constexpr int kMaxExpertMessageBytes = 1 << 30;

void EncodeExpertRequest(const ExpertBatch& batch, uint64_t sequence, v1::ExpertRequest* request);

// A received request with its payload copied out of the message (aligned floats).
struct DecodedExpertRequest {
  std::vector<float> hidden_states;
  std::vector<int32_t> expert_ids;
  std::vector<float> expert_weights;
  ExpertBatch batch;  // views the vectors above: do not copy the struct after decoding
};
// INVALID_ARGUMENT naming the field when a count or size disagrees with num_tokens, hidden and
// top_k; `out` must not be moved afterwards (its batch points into it).
absl::Status DecodeExpertRequest(const v1::ExpertRequest& request, DecodedExpertRequest* out);

// The response of a successful run, or of a failed one (error text and code, no payload).
void EncodeExpertResult(uint64_t sequence, absl::Span<const float> partial_sums,
                        v1::ExpertResponse* response);
void EncodeExpertError(uint64_t sequence, const absl::Status& status, v1::ExpertResponse* response);

// The worker's status carried by a response (OK when error_code is 0).
absl::Status ExpertResponseStatus(const v1::ExpertResponse& response);
// Copies partial_sums into `out`; INVALID_ARGUMENT when its size is not out.size() floats.
absl::Status DecodeExpertPartialSums(const v1::ExpertResponse& response, absl::Span<float> out);

}  // namespace moemesh
