// ForwardPass: one tensor-parallel rank's batched forward pass behind one interface, so the
// request bookkeeping of AttentionRunner runs unchanged over the CPU implementation
// (TpForward: fp32 on host, Gloo collectives) and the GPU one (worker/gpu: bf16 weights on the
// device, NCCL, CUDA graphs). Every rank calls Run with the same batch in the same order.
// Implementations are not thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace moemesh {

// One sequence's part of the batch (validated by the caller: tokens in the vocabulary, the
// block table covering start_position + tokens.size(), block ids inside the pool).
struct ForwardSequence {
  absl::Span<const int32_t> tokens;
  int64_t start_position = 0;
  absl::Span<const int32_t> block_table;
  bool logits = false;  // compute the logits of its last token
};

class ForwardPass {
 public:
  virtual ~ForwardPass() = default;
  // Runs the batch, writing its K/V into this rank's cache. Returns the full-vocabulary logits
  // [sequences with logits, vocab] in batch order (on every rank, or only on rank 0 where the
  // implementation says so).
  virtual absl::StatusOr<std::vector<float>> Run(absl::Span<const ForwardSequence> batch) = 0;
};

}  // namespace moemesh
