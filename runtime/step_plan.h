// The step plan: what the coordinator's scheduler tells every attention rank to run in one
// step, and what rank 0 answers. Plain data shared by the coordinator, the workers and the wire
// conversion; a request is sent in full once (NewRequest), then only diffs (new tokens, new KV
// blocks, finished ids), plus the step's KV block copies and cascade levels. Value types;
// thread-compatible.
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
  // Prefix caching: the request's block table starts with these blocks, which already hold its
  // first `prefix_tokens` tokens (prompt, then output), so its first scheduled sequence starts
  // at prefix_tokens. Blocks fully below prefix_tokens are shared with other requests or the
  // coordinator's prefix cache and are never written; a partly filled last block is always the
  // destination of one of this plan's block_copies (a private copy of a cached block). Empty
  // with prefix_tokens = 0 when nothing was cached. prefix_blocks.size() ==
  // ceil(prefix_tokens / block_size) and prefix_tokens < prompt.size() + output.size().
  std::vector<int32_t> prefix_blocks;
  int64_t prefix_tokens = 0;
};

// One request's work in this step.
struct ScheduledSequence {
  uint64_t id = 0;
  std::vector<int32_t> tokens;       // tokens to run: a prompt chunk, or the last sampled token
  int64_t start_position = 0;        // position of tokens[0]; equals the tokens already cached
  std::vector<int32_t> new_blocks;   // KV blocks appended to the request's block table
  bool sample = false;               // sample a token after this step (prompt done)
};

// Copy-on-write of a KV block: every layer's K and V rows of block `src` are copied to block
// `dst` before the step runs (after `finished` are dropped). dst is a block no request holds;
// within one plan no block is both a source and a destination, and no destination repeats, so
// the copies may run in any order or at once.
struct BlockCopy {
  int32_t src = 0;
  int32_t dst = 0;
};

// A cascade level: decode sequences of this plan (one token each) whose block tables hold the
// same physical blocks at [block_begin, block_end). Their attention over those positions runs as
// one prefix pass (all members' query rows against the shared blocks), merged exactly with the
// rest. A member's levels, ordered by block_begin, tile [0, its deepest block_end) without gaps
// (nested prefixes are several levels: all 8 members over [0, 250), 4 of them over [250, 300));
// everything from the deepest block_end to its query is the member's own suffix. A level ends at
// or before the member's query position (block_end * block_size <= start_position).
struct CascadeLevel {
  std::vector<uint64_t> members;  // request ids, at least 2
  int32_t block_begin = 0;
  int32_t block_end = 0;
};

struct StepPlan {
  uint64_t step = 0;
  std::vector<NewRequest> new_requests;
  std::vector<ScheduledSequence> sequences;
  std::vector<uint64_t> finished;    // drop these requests' state (blocks are freed by the coordinator)
  std::vector<BlockCopy> block_copies;  // run before the step, after `finished`
  std::vector<CascadeLevel> cascade;    // empty: flat attention for every sequence
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
