// Cascade attention (prefix pass per level + suffix pass per sequence + LSE merges) against flat
// ref::PagedAttention on random inputs: nested levels, GQA groups 1, 6 and 8, awkward block
// sizes, a pool poisoned with NaN outside the tables.
#include "kernels/ref/cascade.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ref/paged_attention.h"

namespace moemesh::ref {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Level l covers blocks [bounds[l], bounds[l + 1]) and holds the first members[l] sequences
// (members non-increasing: nested levels).
struct Case {
  std::string name;
  int n_heads, n_kv_heads, head_dim, block_size;
  std::vector<int> bounds;   // block boundaries, bounds[0] == 0
  std::vector<int> members;  // per level
  int batch;                 // sequences; each has 1..max_suffix private tokens after its levels
  int max_suffix;
};

// The first element where got and want differ by more than tol (or either is not finite), as a
// message; empty when they agree.
std::string FirstMismatch(const std::vector<float>& got, const std::vector<float>& want, float tol,
                          int head_dim, int n_heads) {
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) || !std::isfinite(want[i]) || std::abs(got[i] - want[i]) > tol) {
      const size_t per_token = static_cast<size_t>(n_heads) * head_dim;
      return "element " + std::to_string(i) + " (token " + std::to_string(i / per_token) +
             ", head " + std::to_string(i % per_token / head_dim) + ", dim " +
             std::to_string(i % head_dim) + "): cascade " + std::to_string(got[i]) + ", flat " +
             std::to_string(want[i]);
    }
  }
  return "";
}

class CascadeTest : public ::testing::TestWithParam<Case> {};

TEST_P(CascadeTest, EqualsFlatPagedAttention) {
  const Case c = GetParam();
  ASSERT_EQ(c.bounds.size(), c.members.size() + 1);
  std::mt19937 rng(7 + c.n_heads * 13 + c.block_size);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  const int levels = static_cast<int>(c.members.size());
  const int shared_blocks = c.bounds.back();

  // Sequence b's levels: those whose members include it (a prefix of the levels).
  std::vector<int> depth(c.batch, 0);  // levels of each sequence
  for (int b = 0; b < c.batch; ++b) {
    while (depth[b] < levels && b < c.members[depth[b]]) ++depth[b];
  }
  // Physical blocks: one shuffled pool; level l's blocks are shared by its members; the rest of
  // each table is private.
  std::vector<int> suffix(c.batch);
  std::vector<int64_t> kv_len(c.batch);
  int64_t total_blocks = shared_blocks;
  for (int b = 0; b < c.batch; ++b) {
    suffix[b] = std::uniform_int_distribution<int>(1, c.max_suffix)(rng);
    kv_len[b] = static_cast<int64_t>(c.bounds[depth[b]]) * c.block_size + suffix[b];
    total_blocks += (kv_len[b] + c.block_size - 1) / c.block_size - c.bounds[depth[b]];
  }
  const int64_t num_blocks = total_blocks + 5;
  std::vector<int32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  size_t next = 0;
  std::vector<int32_t> shared(ids.begin(), ids.begin() + shared_blocks);
  next = shared_blocks;
  std::vector<std::vector<int32_t>> tables(c.batch);
  for (int b = 0; b < c.batch; ++b) {
    tables[b].assign(shared.begin(), shared.begin() + c.bounds[depth[b]]);
    while (static_cast<int64_t>(tables[b].size()) * c.block_size < kv_len[b])
      tables[b].push_back(ids[next++]);
  }
  // Pools poisoned with NaN, then every table's positions written with random K/V (shared
  // positions once: rewriting them with other values would break the sharing).
  const int64_t row = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
  std::vector<float> k_pool(num_blocks * c.block_size * row, std::nanf(""));
  std::vector<float> v_pool(k_pool.size(), std::nanf(""));
  std::vector<float> k(row), v(row);
  for (int b = 0; b < c.batch; ++b) {
    const int64_t from = b == 0 ? 0 : static_cast<int64_t>(c.bounds[depth[b]]) * c.block_size;
    for (int64_t p = from; p < kv_len[b]; ++p) {
      for (float& f : k) f = dist(rng);
      for (float& f : v) f = dist(rng);
      WriteKv(k_pool.data(), v_pool.data(), tables[b].data(), c.block_size, p, 1, c.n_kv_heads,
              c.head_dim, k.data(), v.data());
    }
  }
  // Sequence 0 wrote the shared blocks of every level (it is a member of all of them).
  ASSERT_EQ(depth[0], levels);

  const int64_t q_row = static_cast<int64_t>(c.n_heads) * c.head_dim;
  std::vector<float> q(c.batch * q_row);
  for (float& f : q) f = dist(rng);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

  // Flat: each decode query at position kv_len - 1.
  std::vector<float> flat(q.size());
  for (int b = 0; b < c.batch; ++b) {
    PagedAttention(q.data() + b * q_row, k_pool.data(), v_pool.data(), tables[b].data(),
                   c.block_size, flat.data() + b * q_row, 1, kv_len[b], c.n_heads, c.n_kv_heads,
                   c.head_dim, scale, 0);
  }

  // Cascade: states start empty; each level's prefix pass over its members' rows, merged in
  // level order; then each sequence's suffix.
  std::vector<float> acc_v(q.size(), 0.0f), acc_s(c.batch * c.n_heads, -kInf);
  for (int l = 0; l < levels; ++l) {
    const int m = c.members[l];
    std::vector<float> lv(m * q_row), ls(m * c.n_heads);
    CascadePrefix(q.data(), m, k_pool.data(), v_pool.data(), shared.data(), c.block_size,
                  static_cast<int64_t>(c.bounds[l]) * c.block_size,
                  static_cast<int64_t>(c.bounds[l + 1]) * c.block_size, c.n_heads, c.n_kv_heads,
                  c.head_dim, scale, lv.data(), ls.data());
    for (float f : ls) ASSERT_FALSE(std::isnan(f)) << "level " << l << " lse";
    MergeStates(acc_v.data(), acc_s.data(), lv.data(), ls.data(), m * c.n_heads, c.head_dim);
  }
  for (int b = 0; b < c.batch; ++b) {
    std::vector<float> sv(q_row), ss(c.n_heads);
    CascadeSuffix(q.data() + b * q_row, k_pool.data(), v_pool.data(), tables[b].data(),
                  c.block_size, static_cast<int64_t>(c.bounds[depth[b]]) * c.block_size, 1,
                  kv_len[b], c.n_heads, c.n_kv_heads, c.head_dim, scale, 0, sv.data(), ss.data());
    MergeStates(acc_v.data() + b * q_row, acc_s.data() + b * c.n_heads, sv.data(), ss.data(),
                c.n_heads, c.head_dim);
  }
  const std::string bad = FirstMismatch(acc_v, flat, 1e-5f, c.head_dim, c.n_heads);
  EXPECT_TRUE(bad.empty()) << c.name << ": " << bad;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CascadeTest,
    ::testing::Values(
        // One level, GQA group 1 (multi-head), 6 and 8.
        Case{"mha_one_level", 4, 4, 16, 4, {0, 5}, {6}, 6, 9},
        Case{"group6_one_level", 6, 1, 24, 7, {0, 3}, {3}, 5, 12},
        Case{"group8_one_level", 8, 1, 32, 16, {0, 4}, {8}, 8, 20},
        // Nested: all 8 share blocks [0, 6), 4 of them [6, 9), 2 of those [9, 10).
        Case{"group8_nested", 16, 2, 8, 4, {0, 6, 9, 10}, {8, 4, 2}, 8, 6},
        Case{"group6_nested", 12, 2, 16, 5, {0, 2, 7}, {5, 3}, 7, 11},
        Case{"group1_nested", 3, 3, 8, 3, {0, 4, 5}, {4, 2}, 6, 4},
        // An empty level (begin == end) in the middle, and a suffix of just the query.
        Case{"empty_level", 8, 1, 16, 4, {0, 3, 3, 4}, {4, 4, 2}, 4, 1},
        // Block size 1 and a long shared range.
        Case{"block1", 6, 1, 8, 1, {0, 40, 45}, {3, 2}, 3, 3}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST(MergeStates, EmptyStatesLeaveTheOtherUnchanged) {
  const int d = 3;
  std::vector<float> a = {1, 2, 3, 0, 0, 0, 7, 8, 9};
  std::vector<float> sa = {0.5f, -kInf, -kInf};
  const std::vector<float> b = {4, 5, 6, 10, 11, 12, 0, 0, 0};
  const std::vector<float> sb = {-kInf, 1.5f, -kInf};
  std::vector<float> out = a, s = sa;
  MergeStates(out.data(), s.data(), b.data(), sb.data(), 3, d);
  // Row 0: b empty -> a. Row 1: a empty -> b. Row 2: both empty -> stays empty.
  EXPECT_EQ(std::vector<float>(out.begin(), out.begin() + 3), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(s[0], 0.5f);
  EXPECT_EQ(std::vector<float>(out.begin() + 3, out.begin() + 6), (std::vector<float>{10, 11, 12}));
  EXPECT_EQ(s[1], 1.5f);
  EXPECT_EQ(s[2], -kInf);
  for (float f : out) EXPECT_FALSE(std::isnan(f));
}

TEST(MergeStates, LargeLseDoesNotOverflowAndIsSymmetric) {
  // e^{1000} overflows a double; the stable form only exponentiates differences.
  const std::vector<float> va = {1.0f, -1.0f}, vb = {3.0f, 5.0f};
  const std::vector<float> sa = {1000.0f}, sb = {1001.0f};
  std::vector<float> ab = va, s_ab = sa;
  MergeStates(ab.data(), s_ab.data(), vb.data(), sb.data(), 1, 2);
  std::vector<float> ba = vb, s_ba = sb;
  MergeStates(ba.data(), s_ba.data(), va.data(), sa.data(), 1, 2);
  // Weights 1 / (1 + e) and e / (1 + e).
  const double e = std::exp(1.0), wa = 1 / (1 + e), wb = e / (1 + e);
  EXPECT_NEAR(ab[0], wa * 1 + wb * 3, 1e-5);
  EXPECT_NEAR(ab[1], wa * -1 + wb * 5, 1e-5);
  EXPECT_NEAR(s_ab[0], 1001.0 + std::log1p(std::exp(-1.0)), 1e-4);
  EXPECT_NEAR(ab[0], ba[0], 1e-6);
  EXPECT_NEAR(ab[1], ba[1], 1e-6);
  EXPECT_EQ(s_ab[0], s_ba[0]);
}

// The suffix pass alone from position 0 is flat causal attention, also for several queries (a
// prefill chunk) and with a sliding window. Split at `split`: a prefix pass plus a suffix pass
// equal it when no window reaches below position 0; the suffix pass alone does when every
// window starts at or after `split`.
TEST(CascadeSuffix, CausalAndWindowedMatchFlat) {
  struct Shape {
    int64_t q_len, kv_len;
    int n_heads, n_kv_heads, head_dim, block_size;
    int64_t window, split;
  };
  for (const Shape& s : {Shape{1, 1, 2, 1, 8, 4, 0, 0}, Shape{5, 23, 6, 1, 16, 4, 0, 8},
                         Shape{3, 17, 8, 1, 8, 5, 6, 5}, Shape{7, 19, 4, 4, 4, 3, 0, 12},
                         Shape{4, 30, 6, 2, 8, 16, 9, 16}, Shape{3, 17, 8, 1, 8, 5, 20, 5}}) {
    SCOPED_TRACE("q_len " + std::to_string(s.q_len) + " kv_len " + std::to_string(s.kv_len) +
                 " window " + std::to_string(s.window) + " split " + std::to_string(s.split));
    std::mt19937 rng(99 + s.kv_len);
    std::uniform_real_distribution<float> dist(-1.5f, 1.5f);
    const int64_t row = static_cast<int64_t>(s.n_kv_heads) * s.head_dim;
    const int64_t blocks = (s.kv_len + s.block_size - 1) / s.block_size;
    std::vector<int32_t> table(blocks);
    std::iota(table.begin(), table.end(), 0);
    std::reverse(table.begin(), table.end());
    std::vector<float> k_pool((blocks + 1) * s.block_size * row, std::nanf(""));
    std::vector<float> v_pool(k_pool.size(), std::nanf(""));
    std::vector<float> k(s.kv_len * row), v(s.kv_len * row);
    for (float& f : k) f = dist(rng);
    for (float& f : v) f = dist(rng);
    WriteKv(k_pool.data(), v_pool.data(), table.data(), s.block_size, 0, s.kv_len, s.n_kv_heads,
            s.head_dim, k.data(), v.data());
    const int64_t q_row = static_cast<int64_t>(s.n_heads) * s.head_dim;
    std::vector<float> q(s.q_len * q_row);
    for (float& f : q) f = dist(rng);
    const float scale = 0.3f;
    std::vector<float> flat(q.size());
    PagedAttention(q.data(), k_pool.data(), v_pool.data(), table.data(), s.block_size, flat.data(),
                   s.q_len, s.kv_len, s.n_heads, s.n_kv_heads, s.head_dim, scale, s.window);

    std::vector<float> whole(q.size()), lse(s.q_len * s.n_heads);
    CascadeSuffix(q.data(), k_pool.data(), v_pool.data(), table.data(), s.block_size, 0, s.q_len,
                  s.kv_len, s.n_heads, s.n_kv_heads, s.head_dim, scale, s.window, whole.data(),
                  lse.data());
    std::string bad = FirstMismatch(whole, flat, 1e-5f, s.head_dim, s.n_heads);
    EXPECT_TRUE(bad.empty()) << "suffix from 0: " << bad;

    ASSERT_LE(s.split, s.kv_len - s.q_len);
    const int64_t first_query = s.kv_len - s.q_len;
    if (s.window == 0 || first_query + s.q_len - 1 - s.window + 1 <= 0) {
      // No query's window reaches past position 0: prefix [0, split) + suffix [split, ...).
      std::vector<float> pv(q.size()), ps(s.q_len * s.n_heads), sv(q.size()),
          ss(s.q_len * s.n_heads);
      CascadePrefix(q.data(), s.q_len, k_pool.data(), v_pool.data(), table.data(), s.block_size, 0,
                    s.split, s.n_heads, s.n_kv_heads, s.head_dim, scale, pv.data(), ps.data());
      CascadeSuffix(q.data(), k_pool.data(), v_pool.data(), table.data(), s.block_size, s.split,
                    s.q_len, s.kv_len, s.n_heads, s.n_kv_heads, s.head_dim, scale, s.window,
                    sv.data(), ss.data());
      MergeStates(pv.data(), ps.data(), sv.data(), ss.data(), s.q_len * s.n_heads, s.head_dim);
      bad = FirstMismatch(pv, flat, 1e-5f, s.head_dim, s.n_heads);
      EXPECT_TRUE(bad.empty()) << "prefix + suffix: " << bad;
    } else if (first_query - s.window + 1 >= s.split) {
      // Every window starts at or after `split`: the suffix alone from split is the answer.
      std::vector<float> sv(q.size()), ss(s.q_len * s.n_heads);
      CascadeSuffix(q.data(), k_pool.data(), v_pool.data(), table.data(), s.block_size, s.split,
                    s.q_len, s.kv_len, s.n_heads, s.n_kv_heads, s.head_dim, scale, s.window,
                    sv.data(), ss.data());
      bad = FirstMismatch(sv, flat, 1e-5f, s.head_dim, s.n_heads);
      EXPECT_TRUE(bad.empty()) << "windowed suffix from split: " << bad;
    } else {
      ADD_FAILURE() << "shape checks nothing past the suffix from 0";
    }
  }
}

TEST(CascadeSuffix, NothingToAttendIsAnEmptyState) {
  // begin past the query: the state is empty (v = 0, lse = -inf), never NaN.
  const std::vector<int32_t> table = {0};
  std::vector<float> pool(4 * 2, 1.0f), q(2, 1.0f), v(2, 5.0f), lse(1, 0.0f);
  CascadeSuffix(q.data(), pool.data(), pool.data(), table.data(), 4, 3, 1, 2, 1, 1, 2, 1.0f, 0,
                v.data(), lse.data());
  EXPECT_EQ(v[0], 0.0f);
  EXPECT_EQ(v[1], 0.0f);
  EXPECT_EQ(lse[0], -kInf);
  CascadePrefix(q.data(), 1, pool.data(), pool.data(), table.data(), 4, 2, 2, 1, 1, 2, 1.0f,
                v.data(), lse.data());
  EXPECT_EQ(lse[0], -kInf);
}

}  // namespace
}  // namespace moemesh::ref
