// How a model splits across the ranks of a tensor-parallel attention group: each rank's query
// heads, KV heads, vocabulary slice and the ShardSpec that loads them. Pure arithmetic on the
// config; the forward pass that uses it is in tp_forward.h. Thread-safe (pure functions).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "model/arch/model_config.h"
#include "model/reference/model_weights.h"

namespace moemesh {

struct TpLayout {
  int rank = 0;
  int size = 1;
  int head_begin = 0, head_end = 0;        // query heads [begin, end)
  int kv_head_begin = 0, kv_head_end = 0;  // KV heads the query heads read (replicated when
                                           // size > KV heads)
  int64_t vocab_begin = 0, vocab_end = 0;  // embedding / LM head rows
  int64_t vocab_padded = 0;                // slice length in the logits all-gather (the largest)
  // Whether this rank's KV heads count in whole-projection k norms: only the first rank holding
  // a replicated KV head contributes its sum of squares.
  bool counts_k_norm = true;

  int num_heads() const { return head_end - head_begin; }
  int num_kv_heads() const { return kv_head_end - kv_head_begin; }
};

// INVALID_ARGUMENT naming the numbers unless num_heads % tp == 0, and num_kv_heads % tp == 0 or
// tp % num_kv_heads == 0, and the vocabulary has at least tp rows.
absl::Status CheckTpSize(const ModelConfig& config, int tp_size);

// The layout of `rank` (config and tp_size must pass CheckTpSize; checked).
TpLayout MakeTpLayout(const ModelConfig& config, int rank, int tp_size);

// Loads the layout's heads and vocabulary rows plus every replicated weight (norms, router,
// dense MLPs, shared expert), and no routed experts.
ShardSpec ShardForLayout(const TpLayout& layout);

}  // namespace moemesh
