// The single-process engine: continuous batching of requests over a ReferenceModel. Each Step
// prefills newly added requests and decodes one token for every running one, in one batch.
// Used by `moemesh run` and as the yardstick of the distributed runtime. Not thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "model/arch/model_config.h"
#include "model/generation/request_state.h"
#include "model/reference/reference_model.h"
#include "model/tokenizer/tokenizer.h"

namespace moemesh {

class ReferenceEngine {
 public:
  // `tokenizer` may be null (token ids only). `eos_token_ids` usually come from
  // generation_config.json.
  ReferenceEngine(const ReferenceModel& model, const Tokenizer* tokenizer,
                  std::vector<int32_t> eos_token_ids);

  // Validates and queues a request; returns its id.
  absl::StatusOr<uint64_t> Add(std::vector<int32_t> prompt, GenerationParams params);
  // Finishes a request with kCancelled at the next Step; unknown ids are ignored.
  void Cancel(uint64_t id);
  // Runs one batch; returns one output per request that produced a token or finished.
  absl::StatusOr<std::vector<StepOutput>> Step();
  bool HasWork() const { return !requests_.empty(); }
  size_t num_requests() const { return requests_.size(); }

  ModelLimits limits() const;

 private:
  struct Active {
    std::unique_ptr<RequestState> state;
    SequenceCache cache;
    bool prefilled = false;
    bool cancelled = false;
  };

  const ReferenceModel& model_;
  const Tokenizer* tokenizer_;
  std::vector<int32_t> eos_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, Active> requests_;  // ordered: batches are deterministic
};

struct GenerationResult {
  std::vector<int32_t> tokens;
  std::string text;
  FinishReason finish = FinishReason::kNone;
  std::string matched_stop;
  std::vector<float> logprobs;
};

// Runs the given requests together to completion (a convenience for tests and tools).
absl::StatusOr<std::vector<GenerationResult>> GenerateAll(
    ReferenceEngine& engine, const std::vector<std::vector<int32_t>>& prompts,
    const std::vector<GenerationParams>& params);

}  // namespace moemesh
