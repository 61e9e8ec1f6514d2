#include "worker/expert/expert_wire.h"

#include <bit>
#include <cstring>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"

namespace moemesh {
namespace {

static_assert(std::endian::native == std::endian::little,
              "expert payloads are f32 little-endian; a big-endian host needs byte swaps here");

absl::Status CountMismatch(const char* field, int64_t actual, const char* unit, int64_t expected,
                           const char* shape) {
  return absl::InvalidArgumentError(absl::StrCat("ExpertRequest.", field, " has ", actual, " ", unit,
                                                 ", expected ", expected, " (", shape, ")"));
}

}  // namespace

void EncodeExpertRequest(const ExpertBatch& b, uint64_t sequence, v1::ExpertRequest* r) {
  r->Clear();
  r->set_sequence(sequence);
  r->set_layer(b.layer);
  r->set_num_tokens(b.num_tokens);
  r->set_hidden(b.hidden);
  r->set_top_k(b.top_k);
  r->set_hidden_states(reinterpret_cast<const char*>(b.hidden_states.data()),
                       b.hidden_states.size() * sizeof(float));
  r->mutable_expert_ids()->Reserve(static_cast<int>(b.expert_ids.size()));
  r->mutable_expert_ids()->Add(b.expert_ids.begin(), b.expert_ids.end());
  r->mutable_expert_weights()->Reserve(static_cast<int>(b.expert_weights.size()));
  r->mutable_expert_weights()->Add(b.expert_weights.begin(), b.expert_weights.end());
}

absl::Status DecodeExpertRequest(const v1::ExpertRequest& r, DecodedExpertRequest* out) {
  if (r.num_tokens() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ExpertRequest.num_tokens is ", r.num_tokens(), ", expected >= 0"));
  }
  if (r.hidden() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ExpertRequest.hidden is ", r.hidden(), ", expected > 0"));
  }
  if (r.top_k() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ExpertRequest.top_k is ", r.top_k(), ", expected > 0"));
  }
  const int64_t th = static_cast<int64_t>(r.num_tokens()) * r.hidden();
  const int64_t tk = static_cast<int64_t>(r.num_tokens()) * r.top_k();
  const int64_t bytes = static_cast<int64_t>(r.hidden_states().size());
  if (bytes != th * static_cast<int64_t>(sizeof(float))) {
    return CountMismatch("hidden_states", bytes, "bytes", th * static_cast<int64_t>(sizeof(float)),
                         "num_tokens * hidden * 4");
  }
  if (r.expert_ids_size() != tk) {
    return CountMismatch("expert_ids", r.expert_ids_size(), "values", tk, "num_tokens * top_k");
  }
  if (r.expert_weights_size() != tk) {
    return CountMismatch("expert_weights", r.expert_weights_size(), "values", tk,
                         "num_tokens * top_k");
  }
  out->hidden_states.resize(th);
  if (th > 0) std::memcpy(out->hidden_states.data(), r.hidden_states().data(), bytes);
  out->expert_ids.assign(r.expert_ids().begin(), r.expert_ids().end());
  out->expert_weights.assign(r.expert_weights().begin(), r.expert_weights().end());
  out->batch.layer = r.layer();
  out->batch.num_tokens = r.num_tokens();
  out->batch.hidden = r.hidden();
  out->batch.top_k = r.top_k();
  out->batch.hidden_states = out->hidden_states;
  out->batch.expert_ids = out->expert_ids;
  out->batch.expert_weights = out->expert_weights;
  return absl::OkStatus();
}

void EncodeExpertResult(uint64_t sequence, absl::Span<const float> partial_sums,
                        v1::ExpertResponse* r) {
  r->Clear();
  r->set_sequence(sequence);
  r->set_partial_sums(reinterpret_cast<const char*>(partial_sums.data()),
                      partial_sums.size() * sizeof(float));
}

void EncodeExpertError(uint64_t sequence, const absl::Status& status, v1::ExpertResponse* r) {
  r->Clear();
  r->set_sequence(sequence);
  r->set_error(std::string(status.message()));
  r->set_error_code(static_cast<int32_t>(status.code()));
}

absl::Status ExpertResponseStatus(const v1::ExpertResponse& r) {
  if (r.error_code() == 0 && r.error().empty()) return absl::OkStatus();
  const int code = r.error_code();
  // An unknown or missing code from the peer is reported as UNKNOWN rather than trusted.
  const absl::StatusCode c = (code > 0 && code <= static_cast<int>(absl::StatusCode::kUnauthenticated))
                                 ? static_cast<absl::StatusCode>(code)
                                 : absl::StatusCode::kUnknown;
  return absl::Status(c, r.error());
}

absl::Status DecodeExpertPartialSums(const v1::ExpertResponse& r, absl::Span<float> out) {
  const size_t expected = out.size() * sizeof(float);
  if (r.partial_sums().size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("ExpertResponse.partial_sums has ",
                                                   r.partial_sums().size(), " bytes, expected ",
                                                   expected, " (num_tokens * hidden * 4)"));
  }
  if (expected > 0) std::memcpy(out.data(), r.partial_sums().data(), expected);
  return absl::OkStatus();
}

}  // namespace moemesh
