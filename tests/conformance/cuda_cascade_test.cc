// CUDA cascade attention (kernels/cuda/cascade.h), two-launch and fused, against the scalar
// references: ref::CascadePrefix / CascadeSuffix / MergeStates (kernels/ref/cascade.h) for the
// prefix states and the merged result, and flat ref::PagedAttention for the output. Random bf16
// K/V in a shuffled pool whose shared blocks are physically shared by the level's members (as
// prefix caching stores them); unused blocks, unused rows and the block behind unused table
// entries hold NaN. Cases name their shape: levels (L), members (m), shared and own positions,
// KV heads, group (g), head_dim (d), block size (bs). The plan of the kernels' work is checked on
// the CPU by cascade_plan_test.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cascade_cluster_plan.h"
#include "kernels/cuda/cascade_plan.h"
#include "kernels/ref/cascade.h"
#include "kernels/ref/paged_attention.h"
#include "tests/conformance/cuda_test_util.h"

#ifdef MOEMESH_HAVE_CUDA
#include "kernels/cuda/cascade.h"
#endif

namespace moemesh {
namespace {

namespace cs = cuda::cascade;
using cuda::CascadeBounds;
using cuda::CascadeLevelSpec;
using testing_cuda::RoundBf16;


using testing_cuda::Random;

constexpr double kAtol = 1e-4;  // fp32-class: a single bf16 rounding of q or P misses this
constexpr double kRtol = 1e-4;

struct LevelDef {
  std::vector<int> members;
  int begin_block = 0;
  int end_block = 0;
};

struct CascadeCase {
  std::string name;
  int kv_heads = 1;
  int group = 8;
  int head_dim = 128;
  int block_size = 16;
  std::vector<LevelDef> levels;  // a member's levels, in this order, tile [0, its deepest end)
  std::vector<int> own;          // per sequence: positions after its deepest level (all of them
                                 // for a sequence in no level; 0 there = a padding row)
  int window = 0;
  float scale = 0.0f;  // 0 = 1 / sqrt(head_dim)
  float q_stddev = 1.0f;
  int padding_levels = 0;  // bounds.max_levels beyond the levels used
  int prefix_tile_rows = 0;
  int max_prefix_splits = 0;
  int max_suffix_splits = 0;
  int q_parts = 3;
  bool graph = false;
};

std::ostream& operator<<(std::ostream& os, const CascadeCase& c) { return os << c.name; }

// The pool, tables and levels of a case (positions), on the host.
struct Scenario {
  int batch = 0, kv_heads = 0, group = 0, n_heads = 0, d = 0, bs = 0;
  int num_blocks = 0, max_blocks = 0;
  std::vector<int32_t> kv_lens;
  std::vector<CascadeLevelSpec> levels;
  std::vector<int32_t> tables;        // [batch, max_blocks]
  std::vector<float> k_hnd, v_hnd;    // kernel layout [blocks, kv_heads, bs, d]
  std::vector<float> k_nhd, v_nhd;    // reference layout [blocks, bs, kv_heads, d]
};

Scenario BuildScenario(const CascadeCase& c, uint32_t seed) {
  Scenario s;
  s.batch = static_cast<int>(c.own.size());
  s.kv_heads = c.kv_heads;
  s.group = c.group;
  s.n_heads = c.kv_heads * c.group;
  s.d = c.head_dim;
  s.bs = c.block_size;
  std::vector<int> deepest(s.batch, 0);  // in blocks
  for (const LevelDef& lv : c.levels) {
    for (int m : lv.members) deepest[m] = std::max(deepest[m], lv.end_block);
  }
  s.kv_lens.resize(s.batch);
  int used = 0;
  for (const LevelDef& lv : c.levels) used += lv.end_block - lv.begin_block;
  for (int b = 0; b < s.batch; ++b) {
    s.kv_lens[b] = deepest[b] * s.bs + c.own[b];
    const int blocks = (s.kv_lens[b] + s.bs - 1) / s.bs;
    used += blocks - deepest[b];
    s.max_blocks = std::max(s.max_blocks, blocks);
  }
  s.max_blocks = std::max(s.max_blocks, 1);
  s.num_blocks = used + used / 2 + 3;
  std::vector<int32_t> order(s.num_blocks);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  const int32_t poison = order.back();  // never holds data
  int next = 0;
  // Physical blocks of each level, shared by its members.
  std::vector<std::vector<int32_t>> level_blocks(c.levels.size());
  for (size_t l = 0; l < c.levels.size(); ++l) {
    for (int i = c.levels[l].begin_block; i < c.levels[l].end_block; ++i) {
      level_blocks[l].push_back(order[next++]);
    }
  }
  s.tables.assign(static_cast<size_t>(s.batch) * s.max_blocks, poison);
  std::vector<std::pair<int32_t, int>> valid_rows;  // (block, rows holding data)
  for (size_t l = 0; l < c.levels.size(); ++l) {
    for (int32_t blk : level_blocks[l]) valid_rows.push_back({blk, s.bs});
  }
  for (int b = 0; b < s.batch; ++b) {
    int32_t* table = s.tables.data() + static_cast<size_t>(b) * s.max_blocks;
    for (size_t l = 0; l < c.levels.size(); ++l) {
      const LevelDef& lv = c.levels[l];
      if (std::find(lv.members.begin(), lv.members.end(), b) == lv.members.end()) continue;
      for (int i = lv.begin_block; i < lv.end_block; ++i) {
        table[i] = level_blocks[l][i - lv.begin_block];
      }
    }
    const int blocks = (s.kv_lens[b] + s.bs - 1) / s.bs;
    for (int i = deepest[b]; i < blocks; ++i) {
      table[i] = order[next++];
      valid_rows.push_back({table[i], std::min(s.bs, s.kv_lens[b] - i * s.bs)});
    }
  }
  const size_t pool = static_cast<size_t>(s.num_blocks) * s.bs * s.kv_heads * s.d;
  s.k_hnd.assign(pool, std::nanf(""));
  s.v_hnd.assign(pool, std::nanf(""));
  s.k_nhd.assign(pool, std::nanf(""));
  s.v_nhd.assign(pool, std::nanf(""));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto& [blk, rows] : valid_rows) {
    for (int r = 0; r < rows; ++r) {
      for (int h = 0; h < s.kv_heads; ++h) {
        const size_t hnd = ((static_cast<size_t>(blk) * s.kv_heads + h) * s.bs + r) * s.d;
        const size_t nhd = ((static_cast<size_t>(blk) * s.bs + r) * s.kv_heads + h) * s.d;
        for (int e = 0; e < s.d; ++e) {
          const float kx = RoundBf16(normal(rng)), vx = RoundBf16(normal(rng));
          s.k_hnd[hnd + e] = s.k_nhd[nhd + e] = kx;
          s.v_hnd[hnd + e] = s.v_nhd[nhd + e] = vx;
        }
      }
    }
  }
  for (const LevelDef& lv : c.levels) {
    CascadeLevelSpec spec;
    spec.members.assign(lv.members.begin(), lv.members.end());
    spec.begin = lv.begin_block * s.bs;
    spec.end = lv.end_block * s.bs;
    s.levels.push_back(spec);
  }
  return s;
}

struct Reference {
  std::vector<std::vector<float>> prefix_v, prefix_lse;  // per level [members, n_heads(, d)]
  std::vector<float> out, lse;                           // cascade composition
  std::vector<float> flat;                               // ref::PagedAttention
};

// Suffix begin of each sequence: its deepest level's end (0 in no level).
std::vector<int> SuffixBegins(const Scenario& s, const std::vector<CascadeLevelSpec>& levels) {
  std::vector<int> begin(s.batch, 0);
  for (const CascadeLevelSpec& lv : levels) {
    for (int m : lv.members) begin[m] = std::max(begin[m], lv.end);
  }
  return begin;
}

Reference ComputeReference(const Scenario& s, const std::vector<CascadeLevelSpec>& levels,
                           const std::vector<int32_t>& kv_lens, const std::vector<float>& q,
                           float scale, int window) {
  Reference r;
  const size_t row = static_cast<size_t>(s.n_heads) * s.d;
  for (const CascadeLevelSpec& lv : levels) {
    const size_t m = lv.members.size();
    std::vector<float> gathered(m * row);
    for (size_t i = 0; i < m; ++i) {
      std::copy_n(q.begin() + lv.members[i] * row, row, gathered.begin() + i * row);
    }
    std::vector<float> v(m * row), lse(m * s.n_heads);
    ref::CascadePrefix(gathered.data(), static_cast<int64_t>(m), s.k_nhd.data(), s.v_nhd.data(),
                       s.tables.data() + static_cast<size_t>(lv.members[0]) * s.max_blocks, s.bs,
                       lv.begin, lv.end, s.n_heads, s.kv_heads, s.d, scale, v.data(), lse.data());
    r.prefix_v.push_back(std::move(v));
    r.prefix_lse.push_back(std::move(lse));
  }
  const std::vector<int> begins = SuffixBegins(s, levels);
  r.out.resize(s.batch * row);
  r.lse.resize(s.batch * s.n_heads);
  r.flat.assign(s.batch * row, 0.0f);
  for (int b = 0; b < s.batch; ++b) {
    const int32_t* table = s.tables.data() + static_cast<size_t>(b) * s.max_blocks;
    float* v = r.out.data() + b * row;
    float* lse = r.lse.data() + b * s.n_heads;
    ref::CascadeSuffix(q.data() + b * row, s.k_nhd.data(), s.v_nhd.data(), table, s.bs, begins[b],
                       1, kv_lens[b], s.n_heads, s.kv_heads, s.d, scale, window, v, lse);
    for (size_t l = 0; l < levels.size(); ++l) {
      const auto& mem = levels[l].members;
      const auto it = std::find(mem.begin(), mem.end(), b);
      if (it == mem.end()) continue;
      const size_t i = it - mem.begin();
      ref::MergeStates(v, lse, r.prefix_v[l].data() + i * row,
                       r.prefix_lse[l].data() + i * s.n_heads, s.n_heads, s.d);
    }
    if (kv_lens[b] > 0) {
      ref::PagedAttention(q.data() + b * row, s.k_nhd.data(), s.v_nhd.data(), table, s.bs,
                          r.flat.data() + b * row, 1, kv_lens[b], s.n_heads, s.kv_heads, s.d,
                          scale, window);
    }
  }
  return r;
}

// Compares `rows` states (out [rows, n_heads, d], lse [rows, n_heads]; lse may be empty); names
// the row (through row_name), head and dim of the first mismatch.
void ExpectStates(const std::vector<float>& got, const std::vector<float>& got_lse,
                  const std::vector<float>& want, const std::vector<float>& want_lse, int rows,
                  int n_heads, int d, const std::string& what,
                  const std::function<std::string(int)>& row_name, double* worst) {
  for (int r = 0; r < rows; ++r) {
    for (int h = 0; h < n_heads; ++h) {
      for (int e = 0; e < d; ++e) {
        const size_t i = (static_cast<size_t>(r) * n_heads + h) * d + e;
        ASSERT_TRUE(std::isfinite(got[i]))
            << what << ": non-finite output at " << row_name(r) << " head " << h << " dim " << e;
        const double err = std::abs(static_cast<double>(got[i]) - want[i]);
        ASSERT_LE(err, kAtol + kRtol * std::abs(want[i]))
            << what << ": output at " << row_name(r) << " head " << h << " dim " << e << " is "
            << got[i] << ", want " << want[i];
        *worst = std::max(*worst, err / (1.0 + std::abs(want[i])));
      }
      if (got_lse.empty()) continue;
      const size_t i = static_cast<size_t>(r) * n_heads + h;
      if (std::isinf(want_lse[i])) {
        ASSERT_TRUE(std::isinf(got_lse[i]) && got_lse[i] < 0)
            << what << ": lse at " << row_name(r) << " head " << h << " is " << got_lse[i]
            << ", want -inf";
        continue;
      }
      ASSERT_TRUE(std::isfinite(got_lse[i]))
          << what << ": non-finite lse at " << row_name(r) << " head " << h;
      ASSERT_LE(std::abs(static_cast<double>(got_lse[i]) - want_lse[i]),
                kAtol + kRtol * std::abs(want_lse[i]))
          << what << ": lse at " << row_name(r) << " head " << h << " is " << got_lse[i]
          << ", want " << want_lse[i];
    }
  }
}

std::vector<int> Range(int n) {
  std::vector<int> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

// Own positions of n sequences, uniform in [lo, hi] (seeded).
std::vector<int> Own(int n, int lo, int hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> u(lo, hi);
  std::vector<int> v(n);
  for (int& x : v) x = u(rng);
  return v;
}

CascadeCase Case(std::string name, int kv_heads, int group, int head_dim, int block_size,
                 std::vector<LevelDef> levels, std::vector<int> own) {
  CascadeCase c;
  c.name = std::move(name);
  c.kv_heads = kv_heads;
  c.group = group;
  c.head_dim = head_dim;
  c.block_size = block_size;
  c.levels = std::move(levels);
  c.own = std::move(own);
  return c;
}

std::vector<CascadeCase> Cases() {
  std::vector<CascadeCase> cases;
  // The FlashInfer #595 shape: 8 members x 8 query heads, 1 KV head, 4000 shared positions.
  cases.push_back(Case("L1_m8_shared4000_own1to300_kv1_g8_d128_bs16", 1, 8, 128, 16,
                       {{Range(8), 0, 250}}, Own(8, 1, 300, 1)));
  cases.push_back(Case("L1_m17_shared4000_own1to300_kv2_g6_d128_bs16", 2, 6, 128, 16,
                       {{Range(17), 0, 250}}, Own(17, 1, 300, 2)));
  cases.push_back(Case("L1_m3_shared1block_own1to300_kv1_g8_d64_bs16", 1, 8, 64, 16,
                       {{Range(3), 0, 1}}, Own(3, 1, 300, 3)));
  cases.push_back(Case("L1_m1_shared65_own37_kv2_g1_d128_bs5", 2, 1, 128, 5, {{{0}, 0, 13}},
                       {37}));
  cases.push_back(Case("L1_m8_shared0_own1to300_kv1_g8_d128_bs16", 1, 8, 128, 16,
                       {{Range(8), 0, 0}}, Own(8, 1, 300, 5)));
  cases.push_back(Case("L0_b6_no_levels_own0to300_kv2_g8_d64_bs16_padding", 2, 8, 64, 16, {},
                       {300, 0, 17, 1, 64, 129}));
  cases.push_back(Case("L1_m3_shared1000_own1to300_kv2_g1_d64_bs5", 2, 1, 64, 5,
                       {{Range(3), 0, 200}}, Own(3, 1, 300, 7)));
  cases.push_back(Case("L1_m17_shared4000_own1to300_kv1_g8_d128_bs5", 1, 8, 128, 5,
                       {{Range(17), 0, 800}}, Own(17, 1, 300, 8)));
  cases.push_back(Case("L1_m6_shared512_own1to40_kv2_g24_d64_bs16", 2, 24, 64, 16,
                       {{Range(6), 0, 32}}, Own(6, 1, 40, 9)));
  // Nested levels: all 8 over 4000 positions, 4 of them over 800 more.
  cases.push_back(Case("L2_m8_m4_shared4000_800_own1to300_kv2_g8_d128_bs16", 2, 8, 128, 16,
                       {{Range(8), 0, 250}, {{1, 3, 5, 7}, 250, 300}}, Own(8, 1, 300, 10)));
  cases.push_back(Case("L2_m17_m3_shared1000_150_own1to300_kv1_g6_d64_bs5", 1, 6, 64, 5,
                       {{Range(17), 0, 200}, {{16, 0, 9}, 200, 230}}, Own(17, 1, 300, 11)));
  {  // Members and non-members in one batch, sliding window (members fit in it), a padding row.
    std::vector<int> own = Own(12, 1, 300, 12);
    own[8] = 1500;
    own[9] = 999;
    own[10] = 3000;
    own[11] = 0;
    CascadeCase c = Case("L1_m8_shared512_plus_4_nonmembers_window1000_kv1_g8_d128_bs16", 1, 8,
                         128, 16, {{Range(8), 0, 32}}, own);
    c.window = 1000;
    cases.push_back(c);
  }
  {  // 512 rows: 64-row tiles.
    CascadeCase c = Case("L1_m64_shared2000_own1to64_kv1_g8_d128_bs16_tile64", 1, 8, 128, 16,
                         {{Range(64), 0, 125}}, Own(64, 1, 64, 13));
    c.prefix_tile_rows = 64;
    cases.push_back(c);
  }
  {
    CascadeCase c = Case("L1_m8_shared4000_own1to300_kv1_g8_d128_bs16_tile64", 1, 8, 128, 16,
                         {{Range(8), 0, 250}}, Own(8, 1, 300, 14));
    c.prefix_tile_rows = 64;
    cases.push_back(c);
  }
  {  // Two-level merges of the prefix splits.
    CascadeCase c = Case("L1_m8_shared4000_own1to300_kv1_g8_d64_bs16_40splits", 1, 8, 64, 16,
                         {{Range(8), 0, 250}}, Own(8, 1, 300, 15));
    c.max_prefix_splits = 40;
    cases.push_back(c);
  }
  {  // One split: the prefix tile writes its states directly.
    CascadeCase c = Case("L1_m8_shared4000_own1to300_kv1_g8_d128_bs16_1split", 1, 8, 128, 16,
                         {{Range(8), 0, 250}}, Own(8, 1, 300, 16));
    c.max_prefix_splits = 1;
    c.max_suffix_splits = 1;
    cases.push_back(c);
  }
  cases.push_back(Case("L1_m4_shared256_own1000to3000_kv1_g8_d128_bs16_long_own", 1, 8, 128, 16,
                       {{Range(4), 0, 16}}, Own(4, 1000, 3000, 17)));
  {
    CascadeCase c = Case("L1_m8_shared160_own1to40_kv1_g8_d64_bs16_sharp_softmax", 1, 8, 64, 16,
                         {{Range(8), 0, 10}}, Own(8, 1, 40, 18));
    c.scale = 1.0f;
    c.q_stddev = 2.0f;
    cases.push_back(c);
  }
  {
    CascadeCase c = Case("L1_m8_shared4000_own1to300_kv1_g8_d128_bs16_qparts2", 1, 8, 128, 16,
                         {{Range(8), 0, 250}}, Own(8, 1, 300, 19));
    c.q_parts = 2;
    cases.push_back(c);
  }
  {
    CascadeCase c = Case("L1_m8_shared4000_own1to300_kv1_g8_d128_bs16_graph", 1, 8, 128, 16,
                         {{Range(8), 0, 250}}, Own(8, 1, 300, 20));
    c.graph = true;
    cases.push_back(c);
  }
  {
    CascadeCase c = Case("L2_m6_m3_shared1000_200_own1to300_kv2_g6_d64_bs5_graph_padlevels", 2,
                         6, 64, 5, {{Range(6), 0, 200}, {{0, 2, 4}, 200, 240}},
                         Own(7, 1, 300, 21));
    c.padding_levels = 2;
    c.graph = true;
    cases.push_back(c);
  }
  return cases;
}

// The bounds a case's launches use: exact for its levels and lengths (plus padding levels).
CascadeBounds CaseBounds(const CascadeCase& c, const Scenario& s) {
  CascadeBounds bounds;
  bounds.batch = s.batch;
  bounds.n_heads = s.n_heads;
  bounds.max_levels = static_cast<int>(s.levels.size()) + c.padding_levels;
  bounds.max_members = 1;
  bounds.max_depth = 1;
  std::vector<int> depth(s.batch, 0);
  for (const CascadeLevelSpec& lv : s.levels) {
    bounds.max_members = std::max<int>(bounds.max_members, static_cast<int>(lv.members.size()));
    bounds.max_shared_len = std::max(bounds.max_shared_len, lv.end - lv.begin);
    for (int m : lv.members) bounds.max_depth = std::max(bounds.max_depth, ++depth[m]);
  }
  const std::vector<int> begins = SuffixBegins(s, s.levels);
  for (int b = 0; b < s.batch; ++b) {
    bounds.max_suffix_len = std::max(bounds.max_suffix_len, s.kv_lens[b] - begins[b]);
  }
  if (c.window > 0) bounds.max_suffix_len = std::min(bounds.max_suffix_len, c.window);
  return bounds;
}

uint32_t CaseSeed(const CascadeCase& c) { return 17 + static_cast<uint32_t>(c.own.size()); }

// Graph replay 1: shorter own ranges (never longer: the pool holds NaN past the lengths).
std::vector<int32_t> ShorterLengths(const Scenario& s) {
  const std::vector<int> begins = SuffixBegins(s, s.levels);
  std::vector<int32_t> lens = s.kv_lens;
  for (int b = 0; b < s.batch; ++b) {
    const int own = s.kv_lens[b] - begins[b];
    lens[b] = begins[b] + (own > 0 ? std::max(1, own * 2 / 3 + b % 2) : 0);
  }
  return lens;
}

// Graph replay 2: the last level (the innermost of its members) loses its last member, which then
// attends those positions itself, and, when it has several blocks, its last block.
std::vector<CascadeLevelSpec> ChangedLevels(const Scenario& s) {
  std::vector<CascadeLevelSpec> levels = s.levels;
  if (!levels.empty()) {
    CascadeLevelSpec& last = levels.back();
    if (last.members.size() >= 2) last.members.pop_back();
    if (last.end - last.begin >= 2 * s.bs) last.end -= s.bs;
  }
  return levels;
}

// The test's own harness, on the CPU: for every case (and the replay variants of graph cases) the
// scenario's levels are valid, and the reference cascade composition equals flat
// ref::PagedAttention, finite everywhere (no NaN-poisoned row, block or table entry is read).
TEST(CascadeScenario, ReferenceCascadeEqualsFlatReference) {
  for (const CascadeCase& c : Cases()) {
    const Scenario s = BuildScenario(c, CaseSeed(c));
    const CascadeBounds bounds = CaseBounds(c, s);
    const float scale = c.scale > 0 ? c.scale : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    const std::vector<float> q =
        Random(static_cast<size_t>(s.batch) * s.n_heads * s.d, 300, c.q_stddev);
    std::vector<std::pair<std::vector<CascadeLevelSpec>, std::vector<int32_t>>> variants = {
        {s.levels, s.kv_lens}};
    if (c.graph) {
      variants.push_back({s.levels, ShorterLengths(s)});
      variants.push_back({ChangedLevels(s), s.kv_lens});
    }
    for (size_t v = 0; v < variants.size(); ++v) {
      const std::string what = c.name + " variant " + std::to_string(v);
      std::vector<int32_t> words;
      ASSERT_EQ(cs::BuildLayout(bounds, variants[v].first, variants[v].second.data(), &words), "")
          << what;
      const Reference r =
          ComputeReference(s, variants[v].first, variants[v].second, q, scale, c.window);
      double worst = 0;
      ExpectStates(r.out, {}, r.flat, {}, s.batch, s.n_heads, s.d, what,
                   [](int b) { return "seq " + std::to_string(b); }, &worst);
      if (HasFatalFailure()) return;
      for (size_t l = 0; l < r.prefix_v.size(); ++l) {
        for (float x : r.prefix_v[l]) ASSERT_TRUE(std::isfinite(x)) << what << " level " << l;
      }
    }
  }
}

#ifdef MOEMESH_HAVE_CUDA

using testing_cuda::DeviceBuffer;
using testing_cuda::ToBf16Host;

class CudaCascade : public ::testing::TestWithParam<CascadeCase> {};

TEST_P(CudaCascade, MatchesReferenceAndFlat) {
  MM_REQUIRE_CUDA();
  const CascadeCase& c = GetParam();
  const Scenario s = BuildScenario(c, CaseSeed(c));
  const float scale = c.scale > 0 ? c.scale : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const int d = s.d, nh = s.n_heads, batch = s.batch;
  const size_t row = static_cast<size_t>(nh) * d;

  const CascadeBounds bounds = CaseBounds(c, s);
  std::vector<int32_t> words;
  const std::string error = cuda::BuildCascadeLayout(bounds, s.levels, s.kv_lens.data(), &words);
  ASSERT_EQ(error, "") << c.name;

  DeviceBuffer<__nv_bfloat16> k_pool(ToBf16Host(s.k_hnd)), v_pool(ToBf16Host(s.v_hnd));
  DeviceBuffer<int32_t> tables(s.tables), lens(s.kv_lens), layout(words);
  const std::vector<float> q1 = Random(batch * row, 300, c.q_stddev);
  const std::vector<float> q2 = Random(batch * row, 301, c.q_stddev);
  const size_t slot_rows = static_cast<size_t>(std::max(bounds.max_levels, 1)) *
                           bounds.max_members * nh;
  DeviceBuffer<float> q(q1), out(batch * row), lse(batch * nh), prefix_v(slot_rows * d),
      prefix_lse(slot_rows);

  cuda::PagedKv cache;
  cache.k = k_pool.ptr;
  cache.v = v_pool.ptr;
  cache.num_blocks = s.num_blocks;
  cache.block_size = s.bs;
  cache.kv_heads = s.kv_heads;
  cache.head_dim = d;
  cuda::CascadeParams p;
  p.q = q.ptr;
  p.out = out.ptr;
  p.lse = lse.ptr;
  p.block_tables = tables.ptr;
  p.kv_lens = lens.ptr;
  p.layout = layout.ptr;
  p.prefix_v = prefix_v.ptr;
  p.prefix_lse = prefix_lse.ptr;
  p.bounds = bounds;
  p.max_blocks_per_seq = s.max_blocks;
  p.scale = scale;
  p.window = c.window;
  p.prefix_tile_rows = c.prefix_tile_rows;
  p.max_prefix_splits = c.max_prefix_splits;
  p.max_suffix_splits = c.max_suffix_splits;
  p.q_parts = c.q_parts;

  const size_t ws_bytes = cuda::CascadeWorkspaceBytes(cache, p);
  DeviceBuffer<unsigned char> ws(ws_bytes);  // zero-filled
  for (cs::Form form : {cs::Form::kPrefixPass, cs::Form::kSuffixPass, cs::Form::kFused}) {
    const cuda::CascadePlanInfo info = cuda::DescribeCascadePlan(cache, p, form);
    std::printf("  %s form %d: prefix tile %d rows x %d tiles x %d splits, suffix %d splits, %d "
                "CTAs, cluster %d; workspace %zu bytes\n",
                c.name.c_str(), static_cast<int>(form), info.prefix_tile_rows, info.prefix_tiles,
                info.prefix_splits, info.suffix_splits, info.ctas, info.cluster, ws_bytes);
  }

  // Runs one form (poisoning every output first) and checks it against the references.
  // (The cluster shape of the fused launch writes no prefix states: prefix_states false.)
  auto check = [&](const std::string& what, const std::vector<CascadeLevelSpec>& levels,
                   const std::vector<int32_t>& kv_lens, const std::vector<float>& qh,
                   const std::function<void()>& run, bool prefix_states) {
    MM_CUDA_CHECK(cudaMemcpy(q.ptr, qh.data(), qh.size() * 4, cudaMemcpyHostToDevice));
    MM_CUDA_CHECK(cudaMemset(out.ptr, 0xff, out.n * 4));  // NaN: every output must be written
    MM_CUDA_CHECK(cudaMemset(lse.ptr, 0xff, lse.n * 4));
    MM_CUDA_CHECK(cudaMemset(prefix_v.ptr, 0xff, prefix_v.n * 4));
    MM_CUDA_CHECK(cudaMemset(prefix_lse.ptr, 0xff, prefix_lse.n * 4));
    run();
    MM_CUDA_CHECK(cudaDeviceSynchronize());
    const Reference want = ComputeReference(s, levels, kv_lens, qh, scale, c.window);
    const std::vector<float> got_v = prefix_v.ToHost(), got_lse = prefix_lse.ToHost();
    double worst_prefix = 0, worst_out = 0, worst_flat = 0;
    for (size_t l = 0; prefix_states && l < levels.size(); ++l) {
      const int m = static_cast<int>(levels[l].members.size());
      const size_t first = l * bounds.max_members;
      const std::vector<float> v(got_v.begin() + first * row, got_v.begin() + (first + m) * row);
      const std::vector<float> ls(got_lse.begin() + first * nh,
                                  got_lse.begin() + (first + m) * nh);
      ExpectStates(v, ls, want.prefix_v[l], want.prefix_lse[l], m, nh, d,
                   what + " prefix state of level " + std::to_string(l),
                   [&](int i) {
                     return "member " + std::to_string(i) + " (seq " +
                            std::to_string(levels[l].members[i]) + ")";
                   },
                   &worst_prefix);
      if (HasFatalFailure()) return;
    }
    const std::vector<float> got_out = out.ToHost(), got_out_lse = lse.ToHost();
    auto seq_name = [](int b) { return "seq " + std::to_string(b); };
    ExpectStates(got_out, got_out_lse, want.out, want.lse, batch, nh, d,
                 what + " vs ref cascade", seq_name, &worst_out);
    if (HasFatalFailure()) return;
    ExpectStates(got_out, {}, want.flat, {}, batch, nh, d, what + " vs flat ref::PagedAttention",
                 seq_name, &worst_flat);
    if (HasFatalFailure()) return;
    std::printf("  %s: max |err| / (1 + |want|): prefix %.2e, vs cascade %.2e, vs flat %.2e\n",
                what.c_str(), worst_prefix, worst_out, worst_flat);
  };

  // The fused launch's shapes (CascadeParams::cluster): the flat grid, automatic, and, where the
  // bounds allow clusters, clusters of 2 and 4 CTAs (the most rows and pieces per CTA).
  std::vector<int> shapes = {1, 0};
  if (cs::ClusterUnsupported(bounds, c.kv_heads).empty()) {
    shapes.push_back(2);
    shapes.push_back(4);
  }
  auto fused_name = [&](int shape) {
    p.cluster = shape;
    const int size = cuda::DescribeCascadePlan(cache, p, cs::Form::kFused).cluster;
    return "fused (cluster " + std::to_string(shape) + ": " +
           (size > 0 ? std::to_string(size) + " CTAs)" : "flat grid)");
  };

  // Each form twice on one workspace (the second run proves the merge counters were reset).
  for (int pass = 0; pass < 2; ++pass) {
    const std::vector<float>& qh = pass == 0 ? q1 : q2;
    p.cluster = 0;
    check(c.name + " two-launch run " + std::to_string(pass + 1), s.levels, s.kv_lens, qh, [&] {
      cuda::CascadeAttention(cache, p, cuda::CascadeForm::kTwoLaunch, ws.ptr, ws_bytes, nullptr);
    }, true);
    if (HasFatalFailure()) return;
    for (int shape : shapes) {
      const std::string name = fused_name(shape);
      const bool grid = cuda::DescribeCascadePlan(cache, p, cs::Form::kFused).cluster == 0;
      check(c.name + " " + name + " run " + std::to_string(pass + 1), s.levels, s.kv_lens, qh,
            [&] {
              cuda::CascadeAttention(cache, p, cuda::CascadeForm::kFused, ws.ptr, ws_bytes,
                                     nullptr);
            },
            grid);
      if (HasFatalFailure()) return;
    }
  }

  if (!c.graph) return;
  // Captured once per form; replayed with new queries and shorter own ranges (lengths read on
  // the device), then with a changed layout: the last level loses its last member (which then
  // attends those positions itself) and, when it has several blocks, its last block.
  const std::vector<int32_t> lens2 = ShorterLengths(s);
  const std::vector<CascadeLevelSpec> levels3 = ChangedLevels(s);
  std::vector<int32_t> words3;
  ASSERT_EQ(cuda::BuildCascadeLayout(bounds, levels3, s.kv_lens.data(), &words3), "") << c.name;
  cudaStream_t stream;
  MM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::vector<std::pair<cuda::CascadeForm, int>> forms = {{cuda::CascadeForm::kTwoLaunch, 0}};
  for (int shape : shapes) forms.push_back({cuda::CascadeForm::kFused, shape});
  for (const auto& [form, shape] : forms) {
    const std::string form_name =
        form == cuda::CascadeForm::kFused ? fused_name(shape) : "two-launch";
    p.cluster = shape;
    const bool states = cuda::DescribeCascadePlan(cache, p, cs::Form::kFused).cluster == 0 ||
                        form == cuda::CascadeForm::kTwoLaunch;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    MM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    cuda::CascadeAttention(cache, p, form, ws.ptr, ws_bytes, stream);
    MM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    MM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    auto replay = [&] {
      MM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      MM_CUDA_CHECK(cudaStreamSynchronize(stream));
    };
    MM_CUDA_CHECK(cudaMemcpy(lens.ptr, lens2.data(), lens2.size() * 4, cudaMemcpyHostToDevice));
    check(c.name + " " + form_name + " graph replay, new lengths", s.levels, lens2, q2, replay,
          states);
    if (!HasFatalFailure()) {
      MM_CUDA_CHECK(
          cudaMemcpy(lens.ptr, s.kv_lens.data(), s.kv_lens.size() * 4, cudaMemcpyHostToDevice));
      MM_CUDA_CHECK(
          cudaMemcpy(layout.ptr, words3.data(), words3.size() * 4, cudaMemcpyHostToDevice));
      check(c.name + " " + form_name + " graph replay, new levels", levels3, s.kv_lens, q1,
            replay, states);
      MM_CUDA_CHECK(
          cudaMemcpy(layout.ptr, words.data(), words.size() * 4, cudaMemcpyHostToDevice));
    }
    MM_CUDA_CHECK(cudaGraphExecDestroy(exec));
    MM_CUDA_CHECK(cudaGraphDestroy(graph));
    if (HasFatalFailure()) break;
  }
  MM_CUDA_CHECK(cudaStreamDestroy(stream));
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaCascade, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<CascadeCase>& info) {
                           return info.param.name;
                         });

#else  // !MOEMESH_HAVE_CUDA

TEST(CudaCascade, MatchesReferenceAndFlat) { MM_REQUIRE_CUDA(); }

#endif  // MOEMESH_HAVE_CUDA

}  // namespace
}  // namespace moemesh
