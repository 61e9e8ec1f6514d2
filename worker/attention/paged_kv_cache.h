// PagedKvCache: one attention rank's KV cache, a pool of fixed-size blocks per layer holding
// this rank's KV heads. Which blocks a sequence uses is the caller's business (block tables
// come from the coordinator); this class only stores, copies blocks and attends (flat, or in
// cascade passes). Not thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace moemesh {

class PagedKvCache {
 public:
  PagedKvCache(int num_layers, int num_blocks, int block_size, int kv_heads, int head_dim);

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }

  // Stores n tokens' K and V ([n, kv_heads, head_dim]) at positions start .. start + n - 1 of
  // the sequence whose blocks are `table` (must cover them; ids < num_blocks, checked).
  void Write(int layer, absl::Span<const int32_t> table, int64_t start, int64_t n, const float* k,
             const float* v);

  // Causal attention of q ([q_len, n_heads, head_dim], the last q_len of kv_len positions) over
  // the sequence's cached tokens; out like q. Query head h reads KV head h / (n_heads / kv_heads).
  void Attend(int layer, absl::Span<const int32_t> table, const float* q, float* out,
              int64_t q_len, int64_t kv_len, int n_heads, float scale, int64_t window) const;

  // Copies block src's K and V rows to block dst in every layer (ids < num_blocks, checked).
  void CopyBlock(int32_t src, int32_t dst);

  // Cascade passes (kernels/ref/cascade.h): partial outputs v ([rows, n_heads, head_dim]) and
  // natural-log LSEs ([rows, n_heads]) to merge with ref::MergeStates.
  // Prefix: `rows` one-token queries q ([rows, n_heads, head_dim]) against positions [begin, end)
  // of `table`, unmasked (every query sits at or past end).
  void AttendPrefix(int layer, absl::Span<const int32_t> table, int64_t begin, int64_t end,
                    const float* q, int64_t rows, int n_heads, float scale, float* v,
                    float* lse) const;
  // Suffix: q ([q_len, n_heads, head_dim], the last q_len of kv_len positions) over positions
  // from `begin` on, causal and windowed like Attend.
  void AttendSuffix(int layer, absl::Span<const int32_t> table, int64_t begin, const float* q,
                    int64_t q_len, int64_t kv_len, int n_heads, float scale, int64_t window,
                    float* v, float* lse) const;

 private:
  void CheckTable(absl::Span<const int32_t> table, int64_t positions) const;

  int num_blocks_, block_size_, kv_heads_, head_dim_;
  std::vector<std::vector<float>> k_, v_;  // per layer [num_blocks, block_size, kv_heads, head_dim]
};

}  // namespace moemesh
