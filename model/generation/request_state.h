// Per-request generation bookkeeping shared by every engine (reference and distributed): the
// request's validated parameters, its sampler, its stop conditions and its streamed text.
// Engines feed it one row of logits per step; it picks the token and says whether the request
// finished and why. One per request; not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "model/generation/stop_text.h"
#include "model/sampling/sampling.h"
#include "model/tokenizer/tokenizer.h"

namespace moemesh {

enum class FinishReason { kNone, kStop, kStopSequence, kLength, kCancelled, kTimeout, kError };
std::string_view FinishReasonName(FinishReason reason);  // "stop", "stop_sequence", "length", ...

struct GenerationParams {
  SamplingParams sampling;
  std::optional<int32_t> max_tokens;        // default: whatever the context has left
  std::vector<int32_t> stop_token_ids;      // finish with "stop" when generated
  std::vector<std::string> stop_strings;    // finish with "stop_sequence"; not part of the text
  bool ignore_eos = false;
  bool skip_special_tokens = true;          // in the streamed text
};

inline constexpr int kMaxStopStrings = 16;
inline constexpr int kMaxStopStringBytes = 256;
inline constexpr int kMaxStopTokenIds = 64;

// The limits a request is checked against.
struct ModelLimits {
  int32_t vocab_size = 0;
  int32_t context_length = 0;
  bool has_tokenizer = false;  // stop strings need one
};

// InvalidArgument naming the field, the value and the limit for anything a request gets wrong.
absl::Status ValidateGeneration(absl::Span<const int32_t> prompt, const GenerationParams& params,
                                const ModelLimits& limits);

struct StepOutput {
  uint64_t request_id = 0;
  int32_t token = -1;          // -1 when the request finished without a new token (cancelled)
  std::string text;            // text delta safe to show now
  float logprob = 0;
  std::vector<TokenLogprob> top_logprobs;
  FinishReason finish = FinishReason::kNone;
  std::string matched_stop;    // with kStopSequence
};

class RequestState {
 public:
  // `params` must have passed ValidateGeneration. `tokenizer` may be null (ids only, no text).
  RequestState(uint64_t id, std::vector<int32_t> prompt, GenerationParams params,
               const Tokenizer* tokenizer, std::vector<int32_t> eos_token_ids,
               int32_t context_length, uint64_t fallback_seed);

  // Samples the next token from one row of logits and applies every stop condition.
  StepOutput Accept(absl::Span<const float> logits);
  // Applies a token sampled elsewhere (by a worker holding this request's Sampler).
  StepOutput AcceptSampled(SampleResult sample);
  // Finishes the request from outside (cancel, deadline, error); returns the final output.
  StepOutput Abort(FinishReason reason);

  uint64_t id() const { return id_; }
  const std::vector<int32_t>& prompt() const { return prompt_; }
  const std::vector<int32_t>& output() const { return output_; }
  bool finished() const { return finish_ != FinishReason::kNone; }
  FinishReason finish_reason() const { return finish_; }
  const std::string& text() const;  // all text streamed so far

 private:
  uint64_t id_;
  std::vector<int32_t> prompt_;
  std::vector<int32_t> output_;
  GenerationParams params_;
  std::vector<int32_t> eos_;
  int32_t max_tokens_;
  int32_t context_length_;
  Sampler sampler_;
  std::unique_ptr<StopTextStream> text_;
  FinishReason finish_ = FinishReason::kNone;
};

}  // namespace moemesh
