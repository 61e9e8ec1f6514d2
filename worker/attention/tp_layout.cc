#include "worker/attention/tp_layout.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {

absl::Status CheckTpSize(const ModelConfig& c, int tp) {
  if (tp < 1) return absl::InvalidArgumentError(absl::StrCat("tensor-parallel size ", tp, " is below 1"));
  if (c.num_heads % tp != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel size ", tp, " does not divide the ",
                                                   c.num_heads, " attention heads"));
  }
  if (c.num_kv_heads % tp != 0 && tp % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel size ", tp, " and the ", c.num_kv_heads,
                                                   " KV heads: neither divides the other"));
  }
  if (c.vocab_size < tp) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel size ", tp, " exceeds the vocabulary of ",
                                                   c.vocab_size, " tokens"));
  }
  return absl::OkStatus();
}

TpLayout MakeTpLayout(const ModelConfig& c, int rank, int tp) {
  MM_CHECK(CheckTpSize(c, tp).ok() && rank >= 0 && rank < tp);
  TpLayout l;
  l.rank = rank;
  l.size = tp;
  const int per_rank = c.num_heads / tp;
  const int group = c.num_heads / c.num_kv_heads;
  l.head_begin = rank * per_rank;
  l.head_end = l.head_begin + per_rank;
  l.kv_head_begin = l.head_begin / group;        // same rule as LoadModelWeights
  l.kv_head_end = (l.head_end - 1) / group + 1;
  l.counts_k_norm = l.head_begin == 0 || (l.head_begin - 1) / group < l.kv_head_begin;
  const int64_t base = c.vocab_size / tp;
  l.vocab_begin = rank * base;
  l.vocab_end = rank == tp - 1 ? c.vocab_size : (rank + 1) * base;
  l.vocab_padded = c.vocab_size - (tp - 1) * base;
  return l;
}

ShardSpec ShardForLayout(const TpLayout& l) {
  ShardSpec s;
  s.head_begin = l.head_begin;
  s.head_end = l.head_end;
  s.vocab_begin = l.vocab_begin;
  s.vocab_end = l.vocab_end;
  s.experts = std::vector<int>{};
  s.load_dense = true;
  return s;
}

}  // namespace moemesh
