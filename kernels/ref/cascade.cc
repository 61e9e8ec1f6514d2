#include "kernels/ref/cascade.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace moemesh::ref {
namespace {

constexpr float kEmpty = -std::numeric_limits<float>::infinity();

// Pool offset of (position, KV head 0).
int64_t RowOffset(const int32_t* block_table, int block_size, int64_t pos, int n_kv_heads,
                  int head_dim) {
  const int64_t block = block_table[pos / block_size];
  const int64_t row = block * block_size + pos % block_size;
  return row * n_kv_heads * head_dim;
}

// One query row's state over the positions whose pool offsets are offsets[0, n) (plus head_off).
// Scores are formed like ref::PagedAttention (a double dot product rounded to float, times the
// scale); the exponentials and sums are in double.
void RowState(const float* qh, const float* k_pool, const float* v_pool, const int64_t* offsets,
              int64_t n, int64_t head_off, int head_dim, float scale, std::vector<double>& w,
              float* v_out, float* lse_out) {
  if (n == 0) {
    std::fill_n(v_out, head_dim, 0.0f);
    *lse_out = kEmpty;
    return;
  }
  w.resize(n);
  double max = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    const float* kj = k_pool + offsets[j] + head_off;
    double dot = 0;
    for (int d = 0; d < head_dim; ++d) dot += static_cast<double>(qh[d]) * kj[d];
    w[j] = static_cast<double>(static_cast<float>(dot) * scale);
    max = std::max(max, w[j]);
  }
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    w[j] = std::exp(w[j] - max);
    sum += w[j];
  }
  for (int d = 0; d < head_dim; ++d) {
    double acc = 0;
    for (int64_t j = 0; j < n; ++j) acc += w[j] * v_pool[offsets[j] + head_off + d];
    v_out[d] = static_cast<float>(acc / sum);
  }
  *lse_out = static_cast<float>(max + std::log(sum));
}

}  // namespace

void CascadePrefix(const float* q, int64_t rows, const float* k_pool, const float* v_pool,
                   const int32_t* block_table, int block_size, int64_t begin, int64_t end,
                   int n_heads, int n_kv_heads, int head_dim, float scale, float* v_out,
                   float* lse_out) {
  const int group = n_heads / n_kv_heads;
  const int64_t n = std::max<int64_t>(0, end - begin);
  std::vector<int64_t> offsets(n);
  for (int64_t j = 0; j < n; ++j) {
    offsets[j] = RowOffset(block_table, block_size, begin + j, n_kv_heads, head_dim);
  }
  std::vector<double> w;
  // KV head by KV head: its group's query heads of every member are the rows of one tile.
  for (int g = 0; g < n_kv_heads; ++g) {
    const int64_t head_off = static_cast<int64_t>(g) * head_dim;
    for (int64_t r = 0; r < rows; ++r) {
      for (int h = g * group; h < (g + 1) * group; ++h) {
        const int64_t row = r * n_heads + h;
        RowState(q + row * head_dim, k_pool, v_pool, offsets.data(), n, head_off, head_dim, scale,
                 w, v_out + row * head_dim, lse_out + row);
      }
    }
  }
}

void CascadeSuffix(const float* q, const float* k_pool, const float* v_pool,
                   const int32_t* block_table, int block_size, int64_t begin, int64_t q_len,
                   int64_t kv_len, int n_heads, int n_kv_heads, int head_dim, float scale,
                   int64_t window, float* v_out, float* lse_out) {
  const int group = n_heads / n_kv_heads;
  const int64_t first_pos = std::max<int64_t>(0, begin);
  std::vector<int64_t> offsets(std::max<int64_t>(0, kv_len - first_pos));
  for (int64_t p = first_pos; p < kv_len; ++p) {
    offsets[p - first_pos] = RowOffset(block_table, block_size, p, n_kv_heads, head_dim);
  }
  std::vector<double> w;
  for (int64_t i = 0; i < q_len; ++i) {
    const int64_t pos = kv_len - q_len + i;
    int64_t first = first_pos;
    if (window > 0) first = std::max(first, pos - window + 1);
    const int64_t n = std::max<int64_t>(0, pos - first + 1);
    const int64_t* offs = n > 0 ? offsets.data() + (first - first_pos) : nullptr;
    for (int h = 0; h < n_heads; ++h) {
      const int64_t head_off = static_cast<int64_t>(h / group) * head_dim;
      const int64_t row = i * n_heads + h;
      RowState(q + row * head_dim, k_pool, v_pool, offs, n, head_off, head_dim, scale, w,
               v_out + row * head_dim, lse_out + row);
    }
  }
}

void MergeStates(float* v_a, float* lse_a, const float* v_b, const float* lse_b, int64_t rows,
                 int head_dim) {
  for (int64_t r = 0; r < rows; ++r) {
    const float sa = lse_a[r], sb = lse_b[r];
    float* va = v_a + r * head_dim;
    const float* vb = v_b + r * head_dim;
    if (sb == kEmpty) continue;  // nothing to add (also when both are empty: a stays empty)
    if (sa == kEmpty) {
      std::copy_n(vb, head_dim, va);
      lse_a[r] = sb;
      continue;
    }
    const double m = std::max(sa, sb);
    const double wa = std::exp(static_cast<double>(sa) - m);
    const double wb = std::exp(static_cast<double>(sb) - m);
    const double total = wa + wb;
    for (int d = 0; d < head_dim; ++d) {
      va[d] = static_cast<float>((va[d] * wa + vb[d] * wb) / total);
    }
    lse_a[r] = static_cast<float>(m + std::log(total));
  }
}

}  // namespace moemesh::ref
