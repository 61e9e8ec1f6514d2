#include "kernels/ref/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace moemesh::ref {

void Linear(const float* x, const float* w, const float* bias, float* y, int64_t m, int64_t n,
            int64_t k) {
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * k;
    for (int64_t j = 0; j < n; ++j) {
      const float* wj = w + j * k;
      double acc = 0;
      for (int64_t t = 0; t < k; ++t) acc += static_cast<double>(xi[t]) * wj[t];
      if (bias != nullptr) acc += bias[j];
      y[i * n + j] = static_cast<float>(acc);
    }
  }
}

void RmsNorm(const float* x, const float* weight, float* out, int64_t rows, int64_t n, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    double sum_sq = 0;
    for (int64_t i = 0; i < n; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(sum_sq / n) + eps);
    for (int64_t i = 0; i < n; ++i) out[r * n + i] = (xr[i] * inv) * weight[i];
  }
}

void RopeInvFreq(float theta, int dim, float* inv_freq) {
  for (int i = 0; i < dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv_freq[i] = 1.0f / std::pow(theta, exponent);
  }
}

void RopeNeox(float* x, int64_t heads, int head_dim, int64_t position, const float* inv_freq) {
  const int half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* xh = x + h * head_dim;
    for (int i = 0; i < half; ++i) {
      const float angle = static_cast<float>(position) * inv_freq[i];
      const float c = std::cos(angle);
      const float s = std::sin(angle);
      const float a = xh[i];
      const float b = xh[i + half];
      xh[i] = a * c - b * s;
      xh[i + half] = b * c + a * s;
    }
  }
}

void Softmax(float* x, int64_t n) {
  float max_v = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) max_v = std::max(max_v, x[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max_v);
    sum += x[i];
  }
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(x[i] / sum);
}

void SiluMul(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void Attention(const float* q, const float* k, const float* v, float* out, int64_t q_len,
               int64_t kv_len, int n_heads, int n_kv_heads, int head_dim, float scale,
               int64_t window) {
  const int group = n_heads / n_kv_heads;
  std::vector<float> scores(kv_len);
  for (int64_t i = 0; i < q_len; ++i) {
    const int64_t pos = kv_len - q_len + i;
    const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
    for (int h = 0; h < n_heads; ++h) {
      const int kvh = h / group;
      const float* qh = q + (i * n_heads + h) * head_dim;
      const int64_t n = pos - first + 1;
      for (int64_t j = 0; j < n; ++j) {
        const float* kj = k + ((first + j) * n_kv_heads + kvh) * head_dim;
        double dot = 0;
        for (int d = 0; d < head_dim; ++d) dot += static_cast<double>(qh[d]) * kj[d];
        scores[j] = static_cast<float>(dot) * scale;
      }
      Softmax(scores.data(), n);
      float* oh = out + (i * n_heads + h) * head_dim;
      for (int d = 0; d < head_dim; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < n; ++j) {
          acc += static_cast<double>(scores[j]) * v[((first + j) * n_kv_heads + kvh) * head_dim + d];
        }
        oh[d] = static_cast<float>(acc);
      }
    }
  }
}

void RouteTopK(const float* logits, int n_experts, int top_k, bool renormalize, int32_t* ids,
               float* weights) {
  std::vector<float> probs(logits, logits + n_experts);
  Softmax(probs.data(), n_experts);
  std::vector<int32_t> order(n_experts);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return probs[a] > probs[b]; });
  double sum = 0;
  for (int i = 0; i < top_k; ++i) {
    ids[i] = order[i];
    weights[i] = probs[order[i]];
    sum += weights[i];
  }
  if (renormalize) {
    for (int i = 0; i < top_k; ++i) weights[i] = static_cast<float>(weights[i] / sum);
  }
}

}  // namespace moemesh::ref
