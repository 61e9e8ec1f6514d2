// Scalar reference of the routed expert FFN (see expert_ffn_ref.h).
#include "kernels/ref/expert_ffn_ref.h"

#include <cmath>
#include <vector>

namespace moemesh::ref {

void ExpertFfn(const float* gate, const float* up, const float* down, int64_t hidden,
               int64_t intermediate, const float* x, int64_t n, const float* weight, float* y) {
  std::vector<float> h(static_cast<size_t>(intermediate));
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * hidden;
    for (int64_t i = 0; i < intermediate; ++i) {
      double g = 0;
      double u = 0;
      for (int64_t k = 0; k < hidden; ++k) {
        g += static_cast<double>(gate[i * hidden + k]) * xt[k];
        u += static_cast<double>(up[i * hidden + k]) * xt[k];
      }
      const float gf = static_cast<float>(g);
      h[i] = gf / (1.0f + std::exp(-gf)) * static_cast<float>(u);
    }
    const float wt = weight == nullptr ? 1.0f : weight[t];
    for (int64_t o = 0; o < hidden; ++o) {
      double acc = 0;
      for (int64_t i = 0; i < intermediate; ++i) {
        acc += static_cast<double>(down[o * intermediate + i]) * h[i];
      }
      y[t * hidden + o] += wt * static_cast<float>(acc);
    }
  }
}

}  // namespace moemesh::ref
