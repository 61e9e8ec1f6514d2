// The step plan: what the coordinator's scheduler tells every attention rank to run in one
// step, and what rank 0 answers. Plain data shared by the coordinator, the workers and the wire
// conversion; a request is sent in full once (NewRequest), then only diffs (new tokens, new KV
// blocks, finished ids). Value types; thread-compatible.
#pragma once

#include <cstdint>
#include <vector>

#include "model/sampling/sampling.h"

namespace moemesh {

// Sent once, in the first plan that schedules the request.
struct NewRequest {
  uint64_t id = 0;
  std::vector<int32_t> prompt;   // all prompt tokens (for repetition penalties)
  std::vector<int32_t> output;   // tokens generated before (a request recomputed after preemption):
                                 // they are scheduled again like prompt tokens, and the sampler
                                 // skips one draw per token (Sampler::SkipDraws)
  SamplingParams sampling;       // seed resolved by the coordinator: always set
};

// One request's work in this step.
struct ScheduledSequence {
  uint64_t id = 0;
  std::vector<int32_t> tokens;       // tokens to run: a prompt chunk, or the last sampled token
  int64_t start_position = 0;        // position of tokens[0]; equals the tokens already cached
  std::vector<int32_t> new_blocks;   // KV blocks appended to the request's block table
  bool sample = false;               // sample a token after this step (prompt done)
};

struct StepPlan {
  uint64_t step = 0;
  std::vector<NewRequest> new_requests;
  std::vector<ScheduledSequence> sequences;
  std::vector<uint64_t> finished;    // drop these requests' state (blocks are freed by the coordinator)
};

struct SampledToken {
  uint64_t id = 0;
  SampleResult sample;
};

struct StepResult {
  uint64_t step = 0;
  std::vector<SampledToken> tokens;  // one per sequence with sample = true (rank 0 only)
};

}  // namespace moemesh
