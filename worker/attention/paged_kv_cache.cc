#include "worker/attention/paged_kv_cache.h"

#include <algorithm>

#include "common/status.h"
#include "kernels/ref/cascade.h"
#include "kernels/ref/paged_attention.h"

namespace moemesh {

PagedKvCache::PagedKvCache(int num_layers, int num_blocks, int block_size, int kv_heads, int head_dim)
    : num_blocks_(num_blocks), block_size_(block_size), kv_heads_(kv_heads), head_dim_(head_dim),
      k_(num_layers), v_(num_layers) {
  MM_CHECK(num_blocks > 0 && block_size > 0 && kv_heads > 0 && head_dim > 0);
  const size_t floats = static_cast<size_t>(num_blocks) * block_size * kv_heads * head_dim;
  for (int l = 0; l < num_layers; ++l) {
    k_[l].assign(floats, 0.0f);
    v_[l].assign(floats, 0.0f);
  }
}

void PagedKvCache::CheckTable(absl::Span<const int32_t> table, int64_t positions) const {
  MM_CHECK(static_cast<int64_t>(table.size()) * block_size_ >= positions);
  for (int32_t b : table) MM_CHECK(b >= 0 && b < num_blocks_);
}

void PagedKvCache::Write(int layer, absl::Span<const int32_t> table, int64_t start, int64_t n,
                         const float* k, const float* v) {
  CheckTable(table, start + n);
  ref::WriteKv(k_[layer].data(), v_[layer].data(), table.data(), block_size_, start, n, kv_heads_,
               head_dim_, k, v);
}

void PagedKvCache::Attend(int layer, absl::Span<const int32_t> table, const float* q, float* out,
                          int64_t q_len, int64_t kv_len, int n_heads, float scale,
                          int64_t window) const {
  CheckTable(table, kv_len);
  ref::PagedAttention(q, k_[layer].data(), v_[layer].data(), table.data(), block_size_, out, q_len,
                      kv_len, n_heads, kv_heads_, head_dim_, scale, window);
}

void PagedKvCache::CopyBlock(int32_t src, int32_t dst) {
  MM_CHECK(src >= 0 && src < num_blocks_ && dst >= 0 && dst < num_blocks_);
  const size_t block = static_cast<size_t>(block_size_) * kv_heads_ * head_dim_;
  for (size_t l = 0; l < k_.size(); ++l) {
    std::copy_n(k_[l].data() + src * block, block, k_[l].data() + dst * block);
    std::copy_n(v_[l].data() + src * block, block, v_[l].data() + dst * block);
  }
}

void PagedKvCache::AttendPrefix(int layer, absl::Span<const int32_t> table, int64_t begin,
                                int64_t end, const float* q, int64_t rows, int n_heads,
                                float scale, float* v, float* lse) const {
  CheckTable(table, end);
  ref::CascadePrefix(q, rows, k_[layer].data(), v_[layer].data(), table.data(), block_size_,
                     begin, end, n_heads, kv_heads_, head_dim_, scale, v, lse);
}

void PagedKvCache::AttendSuffix(int layer, absl::Span<const int32_t> table, int64_t begin,
                                const float* q, int64_t q_len, int64_t kv_len, int n_heads,
                                float scale, int64_t window, float* v, float* lse) const {
  CheckTable(table, kv_len);
  ref::CascadeSuffix(q, k_[layer].data(), v_[layer].data(), table.data(), block_size_, begin,
                     q_len, kv_len, n_heads, kv_heads_, head_dim_, scale, window, v, lse);
}

}  // namespace moemesh
