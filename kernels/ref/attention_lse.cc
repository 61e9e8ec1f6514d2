#include "kernels/ref/attention_lse.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace moemesh::ref {

void AttentionLse(const float* q, const float* k, const float* v, float* out, float* lse,
                  int64_t q_len, int64_t kv_len, int n_heads, int n_kv_heads, int head_dim,
                  float scale, int64_t window) {
  const int group = n_heads / n_kv_heads;
  std::vector<double> scores(std::max<int64_t>(kv_len, 1));
  std::vector<double> acc(head_dim);
  for (int64_t i = 0; i < q_len; ++i) {
    const int64_t pos = kv_len - q_len + i;
    const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
    const int64_t n = pos < 0 ? 0 : pos - first + 1;
    for (int h = 0; h < n_heads; ++h) {
      const int kvh = h / group;
      const float* qh = q + (i * n_heads + h) * head_dim;
      float* oh = out + (i * n_heads + h) * head_dim;
      if (n <= 0) {
        std::fill(oh, oh + head_dim, 0.0f);
        lse[i * n_heads + h] = -std::numeric_limits<float>::infinity();
        continue;
      }
      double max_s = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        const float* kj = k + ((first + j) * n_kv_heads + kvh) * head_dim;
        double dot = 0;
        for (int d = 0; d < head_dim; ++d) dot += static_cast<double>(qh[d]) * kj[d];
        scores[j] = dot * scale;
        max_s = std::max(max_s, scores[j]);
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < n; ++j) {
        const double p = std::exp(scores[j] - max_s);
        sum += p;
        const float* vj = v + ((first + j) * n_kv_heads + kvh) * head_dim;
        for (int d = 0; d < head_dim; ++d) acc[d] += p * vj[d];
      }
      for (int d = 0; d < head_dim; ++d) oh[d] = static_cast<float>(acc[d] / sum);
      lse[i * n_heads + h] = static_cast<float>(max_s + std::log(sum));
    }
  }
}

}  // namespace moemesh::ref
