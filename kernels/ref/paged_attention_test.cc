#include "kernels/ref/paged_attention.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ref/ops.h"

namespace moemesh::ref {
namespace {

struct Case {
  int64_t q_len, kv_len;
  int n_heads, n_kv_heads, head_dim, block_size;
  int64_t window;
};

class PagedAttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(PagedAttentionTest, MatchesContiguousAttention) {
  const Case c = GetParam();
  std::mt19937 rng(1234 + c.kv_len * 7 + c.block_size);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const int64_t row = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
  std::vector<float> q(c.q_len * c.n_heads * c.head_dim), k(c.kv_len * row), v(c.kv_len * row);
  for (auto* buf : {&q, &k, &v}) {
    for (float& f : *buf) f = dist(rng);
  }
  const float scale = 0.37f;
  std::vector<float> expected(q.size());
  Attention(q.data(), k.data(), v.data(), expected.data(), c.q_len, c.kv_len, c.n_heads,
            c.n_kv_heads, c.head_dim, scale, c.window);

  // Scatter into shuffled blocks of a larger pool, poisoned elsewhere with NaN.
  const int64_t blocks_needed = (c.kv_len + c.block_size - 1) / c.block_size;
  const int64_t num_blocks = blocks_needed * 2 + 3;
  std::vector<int32_t> all(num_blocks);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<int32_t> table(all.begin(), all.begin() + blocks_needed);
  std::vector<float> k_pool(num_blocks * c.block_size * row, std::nanf(""));
  std::vector<float> v_pool(k_pool.size(), std::nanf(""));
  // Written in two parts, like a prefill chunk and a decode.
  const int64_t split = c.kv_len / 2;
  WriteKv(k_pool.data(), v_pool.data(), table.data(), c.block_size, 0, split, c.n_kv_heads,
          c.head_dim, k.data(), v.data());
  WriteKv(k_pool.data(), v_pool.data(), table.data(), c.block_size, split, c.kv_len - split,
          c.n_kv_heads, c.head_dim, k.data() + split * row, v.data() + split * row);

  std::vector<float> got(q.size());
  PagedAttention(q.data(), k_pool.data(), v_pool.data(), table.data(), c.block_size, got.data(),
                 c.q_len, c.kv_len, c.n_heads, c.n_kv_heads, c.head_dim, scale, c.window);
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i], expected[i]) << "element " << i;  // same arithmetic, same order
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PagedAttentionTest,
    ::testing::Values(Case{1, 1, 2, 1, 8, 4, 0}, Case{5, 5, 4, 2, 8, 4, 0},
                      Case{3, 17, 6, 2, 16, 4, 0}, Case{1, 33, 3, 3, 24, 16, 0},
                      Case{7, 23, 4, 1, 8, 5, 6}, Case{2, 40, 8, 4, 4, 1, 0},
                      Case{4, 19, 2, 2, 6, 7, 3}));

}  // namespace
}  // namespace moemesh::ref
