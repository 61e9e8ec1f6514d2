// ForwardPass: one tensor-parallel rank's batched forward pass behind one interface, so the
// request bookkeeping of AttentionRunner runs unchanged over the CPU implementation
// (TpForward: fp32 on host, Gloo collectives) and the GPU one (worker/gpu: bf16 weights on the
// device, NCCL, CUDA graphs). Every rank makes the same calls (CopyBlocks, then Run or
// RunCascade) with the same arguments in the same order. Implementations are not thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "runtime/step_plan.h"

namespace moemesh {

// One sequence's part of the batch (validated by the caller: tokens in the vocabulary, the
// block table covering start_position + tokens.size(), block ids inside the pool).
struct ForwardSequence {
  absl::Span<const int32_t> tokens;
  int64_t start_position = 0;
  absl::Span<const int32_t> block_table;
  bool logits = false;  // compute the logits of its last token
};

// A cascade level of the batch (runtime/step_plan.h CascadeLevel, with batch indices): one-token
// sequences whose block tables hold the same physical blocks at [block_begin, block_end). Checked
// by the caller: at least 2 members, each a sequence of one token with block_end * block_size <=
// its start_position; each member's levels, ordered by block_begin, tile [0, its deepest
// block_end); with a sliding window, start_position < window (the window sees every level).
struct ForwardCascadeLevel {
  std::vector<int32_t> members;  // indices into the batch
  int32_t block_begin = 0;
  int32_t block_end = 0;
};

class ForwardPass {
 public:
  virtual ~ForwardPass() = default;
  // Runs the batch, writing its K/V into this rank's cache. Returns the full-vocabulary logits
  // [sequences with logits, vocab] in batch order (on every rank, or only on rank 0 where the
  // implementation says so).
  virtual absl::StatusOr<std::vector<float>> Run(absl::Span<const ForwardSequence> batch) = 0;

  // Run, with the attention of each level's members over the level's shared blocks computed as
  // one prefix pass (all members' query rows against the shared blocks), each member's own
  // positions (from its deepest level's end to its query) as a suffix pass, and the partial
  // results merged exactly through their log-sum-exps (kernels/ref/cascade.h). Sequences in no
  // level attend flat. The result equals Run's up to rounding, so the default simply runs flat.
  virtual absl::StatusOr<std::vector<float>> RunCascade(
      absl::Span<const ForwardSequence> batch, absl::Span<const ForwardCascadeLevel> levels) {
    return Run(batch);
  }

  // Copy-on-write for prefix caching: copies every layer's K and V rows of block `src` to block
  // `dst`, for each copy, before the next Run. Checked by the caller: ids inside the pool, no
  // destination repeated or also a source (so the copies may run in any order or at once), and
  // no sequence holds a destination. The default fails with UNIMPLEMENTED.
  virtual absl::Status CopyBlocks(absl::Span<const BlockCopy> copies) {
    if (copies.empty()) return absl::OkStatus();
    return absl::UnimplementedError("this forward pass cannot copy KV blocks (prefix caching)");
  }
};

}  // namespace moemesh
