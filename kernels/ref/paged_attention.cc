#include "kernels/ref/paged_attention.h"

#include <algorithm>
#include <vector>

#include "kernels/ref/ops.h"

namespace moemesh::ref {
namespace {

// Offset of (position, kv head 0) in a pool.
int64_t RowOffset(const int32_t* block_table, int block_size, int64_t pos, int n_kv_heads,
                  int head_dim) {
  const int64_t block = block_table[pos / block_size];
  const int64_t row = block * block_size + pos % block_size;
  return row * n_kv_heads * head_dim;
}

}  // namespace

void WriteKv(float* k_pool, float* v_pool, const int32_t* block_table, int block_size,
             int64_t start_pos, int64_t n_tokens, int n_kv_heads, int head_dim,
             const float* k_new, const float* v_new) {
  const int64_t row = static_cast<int64_t>(n_kv_heads) * head_dim;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const int64_t off = RowOffset(block_table, block_size, start_pos + t, n_kv_heads, head_dim);
    std::copy_n(k_new + t * row, row, k_pool + off);
    std::copy_n(v_new + t * row, row, v_pool + off);
  }
}

void PagedAttention(const float* q, const float* k_pool, const float* v_pool,
                    const int32_t* block_table, int block_size, float* out, int64_t q_len,
                    int64_t kv_len, int n_heads, int n_kv_heads, int head_dim, float scale,
                    int64_t window) {
  const int group = n_heads / n_kv_heads;
  std::vector<float> scores(kv_len);
  std::vector<int64_t> offsets(kv_len);  // pool offset of each position's KV head 0
  for (int64_t p = 0; p < kv_len; ++p) {
    offsets[p] = RowOffset(block_table, block_size, p, n_kv_heads, head_dim);
  }
  for (int64_t i = 0; i < q_len; ++i) {
    const int64_t pos = kv_len - q_len + i;
    const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
    const int64_t n = pos - first + 1;
    for (int h = 0; h < n_heads; ++h) {
      const int64_t head_off = static_cast<int64_t>(h / group) * head_dim;
      const float* qh = q + (i * n_heads + h) * head_dim;
      for (int64_t j = 0; j < n; ++j) {
        const float* kj = k_pool + offsets[first + j] + head_off;
        double dot = 0;
        for (int d = 0; d < head_dim; ++d) dot += static_cast<double>(qh[d]) * kj[d];
        scores[j] = static_cast<float>(dot) * scale;
      }
      Softmax(scores.data(), n);
      float* oh = out + (i * n_heads + h) * head_dim;
      for (int d = 0; d < head_dim; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < n; ++j) {
          acc += static_cast<double>(scores[j]) * v_pool[offsets[first + j] + head_off + d];
        }
        oh[d] = static_cast<float>(acc);
      }
    }
  }
}

}  // namespace moemesh::ref
