#include "kernels/ref/attention_lse.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ref/ops.h"

namespace moemesh::ref {
namespace {

std::vector<float> Uniform(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

struct Shape {
  int64_t q_len, kv_len;
  int n_heads, n_kv_heads, head_dim;
  int64_t window;
};

TEST(AttentionLse, OutputMatchesAttention) {
  for (const Shape& s : {Shape{1, 1, 4, 1, 8, 0}, Shape{1, 37, 6, 2, 16, 0},
                         Shape{3, 29, 8, 8, 8, 0}, Shape{2, 40, 4, 2, 16, 7}}) {
    const int64_t kv_row = static_cast<int64_t>(s.n_kv_heads) * s.head_dim;
    const auto q = Uniform(s.q_len * s.n_heads * s.head_dim, 1);
    const auto k = Uniform(s.kv_len * kv_row, 2);
    const auto v = Uniform(s.kv_len * kv_row, 3);
    std::vector<float> want(q.size()), got(q.size()), lse(s.q_len * s.n_heads);
    Attention(q.data(), k.data(), v.data(), want.data(), s.q_len, s.kv_len, s.n_heads, s.n_kv_heads,
              s.head_dim, 0.3f, s.window);
    AttentionLse(q.data(), k.data(), v.data(), got.data(), lse.data(), s.q_len, s.kv_len, s.n_heads,
                 s.n_kv_heads, s.head_dim, 0.3f, s.window);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-6 + 1e-6 * std::abs(want[i]))
          << "kv_len " << s.kv_len << " element " << i;
    }
    for (float x : lse) ASSERT_TRUE(std::isfinite(x));
  }
}

// The LSE is ln sum exp(scale q.k): checked without the max shift on small scores.
TEST(AttentionLse, LseIsLogSumExp) {
  const int heads = 4, kv_heads = 2, d = 8;
  const int64_t kv_len = 23;
  const float scale = 0.5f;
  const auto q = Uniform(heads * d, 4);
  const auto k = Uniform(kv_len * kv_heads * d, 5);
  const auto v = Uniform(kv_len * kv_heads * d, 6);
  std::vector<float> out(heads * d), lse(heads);
  AttentionLse(q.data(), k.data(), v.data(), out.data(), lse.data(), 1, kv_len, heads, kv_heads, d,
               scale, 0);
  for (int h = 0; h < heads; ++h) {
    long double sum = 0;
    for (int64_t j = 0; j < kv_len; ++j) {
      long double dot = 0;
      for (int e = 0; e < d; ++e) dot += q[h * d + e] * k[(j * kv_heads + h / 2) * d + e];
      sum += std::exp(static_cast<long double>(scale) * dot);
    }
    EXPECT_NEAR(lse[h], static_cast<double>(std::log(sum)), 1e-6) << "head " << h;
  }
}

// Merging the states of a prefix and the window over the rest gives the whole: the identity
// split-KV decode relies on.
TEST(AttentionLse, StatesOfDisjointRangesMerge) {
  const int heads = 6, kv_heads = 3, d = 16;
  const int64_t kv_len = 50, tail = 19;
  const auto q = Uniform(heads * d, 7, -2.0f, 2.0f);
  const auto k = Uniform(kv_len * kv_heads * d, 8, -2.0f, 2.0f);
  const auto v = Uniform(kv_len * kv_heads * d, 9);
  std::vector<float> full(heads * d), head_part(heads * d), tail_part(heads * d);
  std::vector<float> lse_full(heads), lse_head(heads), lse_tail(heads);
  AttentionLse(q.data(), k.data(), v.data(), full.data(), lse_full.data(), 1, kv_len, heads,
               kv_heads, d, 0.25f, 0);
  AttentionLse(q.data(), k.data(), v.data(), head_part.data(), lse_head.data(), 1, kv_len - tail,
               heads, kv_heads, d, 0.25f, 0);
  AttentionLse(q.data(), k.data(), v.data(), tail_part.data(), lse_tail.data(), 1, kv_len, heads,
               kv_heads, d, 0.25f, tail);
  for (int h = 0; h < heads; ++h) {
    const double m = std::max(lse_head[h], lse_tail[h]);
    const double wa = std::exp(lse_head[h] - m), wb = std::exp(lse_tail[h] - m);
    EXPECT_NEAR(lse_full[h], m + std::log(wa + wb), 1e-5) << "head " << h;
    for (int e = 0; e < d; ++e) {
      const double merged = (wa * head_part[h * d + e] + wb * tail_part[h * d + e]) / (wa + wb);
      ASSERT_NEAR(full[h * d + e], merged, 1e-5) << "head " << h << " dim " << e;
    }
  }
}

TEST(AttentionLse, NoKeysGivesZeroAndMinusInfinity) {
  const std::vector<float> q(2 * 8, 1.0f);
  std::vector<float> out(q.size(), 5.0f), lse(2, 5.0f);
  AttentionLse(q.data(), nullptr, nullptr, out.data(), lse.data(), 1, 0, 2, 1, 8, 1.0f, 0);
  for (float x : out) EXPECT_EQ(x, 0.0f);
  for (float x : lse) EXPECT_TRUE(std::isinf(x) && x < 0);
}

}  // namespace
}  // namespace moemesh::ref
