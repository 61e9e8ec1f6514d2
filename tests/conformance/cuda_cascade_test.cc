// CUDA cascade attention (kernels/cuda/cascade.h), two-launch and fused, against the scalar
// references: ref::CascadePrefix / CascadeSuffix / MergeStates (kernels/ref/cascade.h) for the
// prefix states and the merged result, and flat ref::PagedAttention for the output. Random bf16
// K/V in a shuffled pool whose shared blocks are physically shared by the level's members (as
// prefix caching stores them); unused blocks, unused rows and the block behind unused table
// entries hold NaN. Cases name their shape: levels (L), members (m), shared and own positions,
// KV heads, group (g), head_dim (d), block size (bs). The plan cases run on the CPU everywhere:
// they execute the kernels' work decomposition (cascade_plan.h) for every CTA of a launch and
// check that each row and position is attended exactly once and that every merge gets exactly
// the arrivals it waits for.
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

// ---------------------------------------------------------------------------------------------
// Plan simulation (CPU): every CTA of a launch, resolved with the kernels' own functions.

struct PlanScenario {
  std::string name;
  CascadeBounds bounds;
  int kv_heads = 1;
  int head_dim = 128;
  int window = 0;
  int capacity = 1 << 20;
  std::vector<CascadeLevelSpec> levels;
  std::vector<int32_t> kv_lens;
  cs::PlanKnobs knobs;
};

// Checks one launch (form) of a scenario on `slots` resident CTAs.
void SimulateLaunch(const PlanScenario& s, int slots, cs::Form form) {
  const std::string what = s.name + " slots " + std::to_string(slots) + " form " +
                           std::to_string(static_cast<int>(form));
  std::vector<int32_t> words;
  const std::string error = cs::BuildLayout(s.bounds, s.levels, s.kv_lens.data(), &words);
  ASSERT_EQ(error, "") << what;
  const cs::LayoutView l = cs::MakeLayoutView(words.data(), s.bounds);
  const cs::Plan p =
      cs::MakePlan(s.bounds, s.kv_heads, s.head_dim, slots, form, s.knobs);
  cs::Dims d;
  d.kv_heads = s.kv_heads;
  d.n_heads = s.bounds.n_heads;
  d.group = s.bounds.n_heads / s.kv_heads;
  d.batch = s.bounds.batch;
  d.max_levels = s.bounds.max_levels;
  d.capacity = s.capacity;
  d.window = s.window;
  const int batch = s.bounds.batch, kvh = s.kv_heads, group = d.group;
  ASSERT_TRUE(p.pre_tile_rows == 16 || p.pre_tile_rows == 64) << what;
  ASSERT_LE(p.members_per_tile * group, p.pre_tile_rows) << what;
  ASSERT_GE(p.pre_splits, 1) << what;
  ASSERT_LE(p.pre_splits, cs::kMaxPrefixSplits) << what;
  ASSERT_GE(p.suf_splits, 1) << what;
  ASSERT_LE(p.suf_splits, cs::kMaxSuffixSplits) << what;
  ASSERT_LE(p.pre_merge_group, cs::kMaxMergeInputs) << what;
  ASSERT_LE((p.pre_splits + p.pre_merge_group - 1) / p.pre_merge_group, cs::kMaxMergeInputs)
      << what;

  // Prefix: per (level, KV head, member i): the spans covering it; per tile: n_active.
  std::map<std::tuple<int, int, int>, std::vector<std::pair<int, int>>> spans;
  std::map<std::tuple<int, int, int>, int> tile_active;  // (level, head, tile) -> n_active
  std::map<std::pair<int, int>, int> arrivals;            // (seq, head) -> arrivals
  std::map<std::tuple<int, int, int>, bool> tile_arrived;
  for (int cta = 0; cta < p.pre_ctas; ++cta) {
    const cs::PrefixWork w = cs::ResolvePrefix(cta, p, d, l);
    if (!w.active) continue;
    ASSERT_LT(w.level, s.bounds.max_levels) << what;
    ASSERT_LE(w.rows, p.pre_tile_rows) << what;
    ASSERT_EQ(w.table_seq, s.levels[w.level].members[0]) << what;
    const auto tile = std::make_tuple(w.level, w.head, w.tile);
    auto it = tile_active.find(tile);
    if (it == tile_active.end()) {
      tile_active[tile] = w.n_active;
    } else {
      ASSERT_EQ(it->second, w.n_active) << what << ": splits of a tile disagree";
    }
    ASSERT_LT(w.split, w.n_active) << what;
    ASSERT_LE(w.n_active, p.pre_splits) << what;
    for (int m = 0; m < w.members; ++m) {
      const int i = w.first_slot + m - w.level * s.bounds.max_members;
      ASSERT_EQ(l.member_seq[w.first_slot + m], s.levels[w.level].members[i]) << what;
      spans[std::make_tuple(w.level, w.head, i)].push_back({w.lo, w.hi});
    }
    if (!tile_arrived[tile]) {  // the tile's merged state arrives once at each member
      tile_arrived[tile] = true;
      for (int m = 0; m < w.members; ++m) {
        ++arrivals[std::make_pair(l.member_seq[w.first_slot + m], w.head)];
      }
    }
  }
  if (form != cs::Form::kSuffixPass) {
    for (size_t li = 0; li < s.levels.size(); ++li) {
      const CascadeLevelSpec& lv = s.levels[li];
      for (int h = 0; h < kvh; ++h) {
        for (size_t i = 0; i < lv.members.size(); ++i) {
          auto found = spans.find(std::make_tuple(static_cast<int>(li), h, static_cast<int>(i)));
          ASSERT_TRUE(found != spans.end())
              << what << ": level " << li << " head " << h << " member " << i << " not covered";
          std::vector<std::pair<int, int>> v = found->second;
          std::sort(v.begin(), v.end());
          if (lv.begin == lv.end) {
            ASSERT_EQ(v.size(), 1u) << what;
            ASSERT_EQ(v[0].first, v[0].second) << what;
            continue;
          }
          int at = lv.begin;
          for (const auto& [lo, hi] : v) {
            ASSERT_EQ(lo, at) << what << ": level " << li << " gap or overlap";
            ASSERT_GT(hi, lo) << what;
            at = hi;
          }
          ASSERT_EQ(at, lv.end) << what << ": level " << li << " not covered to its end";
        }
      }
    }
  }

  // Suffix: spans per (seq, head) partition [start, len); arrivals.
  std::map<std::pair<int, int>, std::vector<std::pair<int, int>>> own;
  for (int id = 0; id < p.suf_ctas; ++id) {
    const cs::SuffixWork w = cs::ResolveSuffix(id, p, d, l, s.kv_lens.data());
    if (!w.active) continue;
    ASSERT_LT(w.seq, batch) << what;
    own[{w.seq, w.head}].push_back({w.lo, w.hi});
    ++arrivals[std::make_pair(w.seq, w.head)];
  }
  if (form != cs::Form::kPrefixPass) {
    for (int b = 0; b < batch; ++b) {
      // What the sequence attends in total: its levels, then its own positions.
      std::vector<std::pair<int, int>> all;
      for (const CascadeLevelSpec& lv : s.levels) {
        if (std::find(lv.members.begin(), lv.members.end(), b) != lv.members.end()) {
          if (lv.end > lv.begin) all.push_back({lv.begin, lv.end});
        }
      }
      for (int h = 0; h < kvh; ++h) {
        auto found = own.find({b, h});
        ASSERT_TRUE(found != own.end()) << what << ": seq " << b << " head " << h << " no suffix";
        std::vector<std::pair<int, int>> v = found->second;
        std::vector<std::pair<int, int>> total = all;
        for (const auto& x : v) {
          if (x.second > x.first) total.push_back(x);
        }
        std::sort(total.begin(), total.end());
        const int len = std::min(s.kv_lens[b], s.capacity);
        int at = s.window > 0 && all.empty() ? std::max(0, len - s.window) : 0;
        for (const auto& [lo, hi] : total) {
          ASSERT_EQ(lo, at) << what << ": seq " << b << " head " << h << " gap or overlap";
          at = hi;
        }
        ASSERT_EQ(at, len) << what << ": seq " << b << " not attended to its end";
        const int want = cs::SequenceArrivals(b, p, d, l, s.kv_lens.data());
        ASSERT_EQ(arrivals[std::make_pair(b, h)], want)
            << what << ": arrivals of seq " << b << " head " << h;
      }
    }
  }
}

PlanScenario RandomScenario(uint32_t seed) {
  std::mt19937 rng(seed);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  PlanScenario s;
  s.name = "random" + std::to_string(seed);
  s.kv_heads = uni(1, 3);
  const int group = std::vector<int>{1, 6, 8, 16, 24, 64}[uni(0, 5)];
  s.head_dim = uni(0, 1) ? 128 : 64;
  const int batch = uni(1, 40);
  s.bounds.batch = batch;
  s.bounds.n_heads = s.kv_heads * group;
  const int bs = std::vector<int>{1, 5, 16}[uni(0, 2)];
  // Disjoint top-level groups of members, some with a nested level inside.
  std::vector<int> order(batch);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int> deepest(batch, 0);
  size_t at = 0;
  int depth = 0;
  while (at < order.size() && uni(0, 3) > 0) {
    const int n = std::min<int>(uni(1, 20), static_cast<int>(order.size() - at));
    CascadeLevelSpec outer;
    outer.members.assign(order.begin() + at, order.begin() + at + n);
    at += n;
    outer.begin = 0;
    outer.end = bs * uni(0, uni(0, 1) ? 3 : 400);
    s.levels.push_back(outer);
    depth = std::max(depth, 1);
    for (int m : outer.members) deepest[m] = outer.end;
    if (n >= 2 && uni(0, 1)) {
      CascadeLevelSpec inner;
      inner.members.assign(outer.members.begin(), outer.members.begin() + uni(1, n));
      inner.begin = outer.end;
      inner.end = inner.begin + bs * uni(0, 50);
      s.levels.push_back(inner);
      depth = 2;
      for (int m : inner.members) deepest[m] = inner.end;
    }
  }
  s.kv_lens.resize(batch);
  int longest_own = 0, longest_shared = 0, most = 0;
  for (int b = 0; b < batch; ++b) {
    const int own = uni(0, 9) == 0 ? 0 : uni(1, uni(0, 1) ? 40 : 3000);
    s.kv_lens[b] = deepest[b] + own;
    longest_own = std::max(longest_own, own);
  }
  for (const CascadeLevelSpec& lv : s.levels) {
    longest_shared = std::max(longest_shared, lv.end - lv.begin);
    most = std::max<int>(most, static_cast<int>(lv.members.size()));
  }
  s.bounds.max_levels = static_cast<int>(s.levels.size()) + uni(0, 2);
  s.bounds.max_members = std::max(1, most + uni(0, 3));
  s.bounds.max_depth = std::max(1, depth) + uni(0, 1);
  // Bounds below the actual lengths must still work (only less evenly spread).
  s.bounds.max_shared_len = uni(0, 4) == 0 ? longest_shared / 3 : longest_shared;
  s.bounds.max_suffix_len = uni(0, 4) == 0 ? longest_own / 3 : longest_own;
  if (s.levels.empty() && uni(0, 1)) s.window = uni(1, 500);
  if (uni(0, 3) == 0) s.knobs.max_prefix_splits = uni(1, 40);
  if (uni(0, 3) == 0) s.knobs.max_suffix_splits = uni(1, 5);
  if (group <= 16 && uni(0, 3) == 0) s.knobs.prefix_tile_rows = uni(0, 1) ? 16 : 64;
  return s;
}

TEST(CascadePlan, EveryRowAndPositionOnceAndEveryMergeCompletes) {
  for (uint32_t seed = 1; seed <= 300; ++seed) {
    const PlanScenario s = RandomScenario(seed);
    for (int slots : {1, 7, 132, 264, 1000}) {
      for (cs::Form form : {cs::Form::kPrefixPass, cs::Form::kSuffixPass, cs::Form::kFused}) {
        SimulateLaunch(s, slots, form);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(CascadePlan, FlashInferShapePlans) {
  // 8 members x 8 query heads over 4000 shared positions, 1 KV head, on 264 resident CTAs: the
  // single 64-row tile's work must still be spread (16-row tiles x splits), with as many splits
  // as one merge level takes while each split's share stays short.
  CascadeBounds b;
  b.batch = 8;
  b.n_heads = 8;
  b.max_levels = 1;
  b.max_members = 8;
  b.max_depth = 1;
  b.max_shared_len = 4000;
  b.max_suffix_len = 32;
  const cs::Plan fused = cs::MakePlan(b, 1, 128, 264, cs::Form::kFused, {});
  EXPECT_EQ(fused.pre_tile_rows, 16);
  EXPECT_EQ(fused.pre_tiles, 4);
  EXPECT_EQ(fused.pre_splits, cs::kSingleLevelMaxSplits);
  EXPECT_EQ(fused.pre_merge_group, fused.pre_splits);  // one merge level
  EXPECT_LE(fused.pre_chunk, cs::kShortSplitTokens);
  EXPECT_LE(fused.pre_ctas + fused.suf_ctas, 264);
  // 64 members x 8 heads over 32K positions: 64-row tiles (the shared KV is re-read per tile).
  b.batch = b.max_members = 64;
  b.max_shared_len = 32768;
  const cs::Plan big = cs::MakePlan(b, 1, 128, 264, cs::Form::kFused, {});
  EXPECT_EQ(big.pre_tile_rows, 64);
  EXPECT_EQ(big.pre_tiles, 8);
  EXPECT_GE(big.pre_ctas, 132);
}

TEST(CascadePlan, LayoutBuilderRejectsBadLevels) {
  CascadeBounds b;
  b.batch = 4;
  b.n_heads = 8;
  b.max_levels = 2;
  b.max_members = 3;
  b.max_depth = 2;
  std::vector<int32_t> words;
  auto build = [&](std::vector<CascadeLevelSpec> levels) {
    return cs::BuildLayout(b, levels, nullptr, &words);
  };
  EXPECT_EQ(build({{{0, 1}, 0, 32}, {{1}, 32, 48}}), "");
  EXPECT_NE(build({{{0, 1}, 0, 32}, {{1}, 16, 48}}), "") << "overlap";
  EXPECT_NE(build({{{0, 1}, 0, 32}, {{1}, 40, 48}}), "") << "gap";
  EXPECT_NE(build({{{0, 1}, 16, 32}}), "") << "does not start at 0";
  EXPECT_NE(build({{{0, 1, 2, 3}, 0, 32}}), "") << "too many members";
  EXPECT_NE(build({{{0, 0}, 0, 32}}), "") << "repeated member";
  EXPECT_NE(build({{{0, 4}, 0, 32}}), "") << "not a batch index";
  EXPECT_NE(build({{{}, 0, 32}}), "") << "no members";
  EXPECT_NE(build({{{0}, 0, 16}, {{0}, 16, 32}, {{0}, 32, 48}}), "") << "too many levels";
  const std::vector<int32_t> lens = {40, 20, 50, 50};
  EXPECT_NE(cs::BuildLayout(b, {{{0, 1}, 0, 32}}, lens.data(), &words), "") << "beyond kv_len";
  b.max_depth = 1;
  EXPECT_NE(build({{{0, 1}, 0, 32}, {{1}, 32, 48}}), "") << "too deep";
}

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
                "CTAs; workspace %zu bytes\n",
                c.name.c_str(), static_cast<int>(form), info.prefix_tile_rows, info.prefix_tiles,
                info.prefix_splits, info.suffix_splits, info.ctas, ws_bytes);
  }

  // Runs one form (poisoning every output first) and checks it against the references.
  auto check = [&](const std::string& what, const std::vector<CascadeLevelSpec>& levels,
                   const std::vector<int32_t>& kv_lens, const std::vector<float>& qh,
                   const std::function<void()>& run) {
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
    for (size_t l = 0; l < levels.size(); ++l) {
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

  // Each form twice on one workspace (the second run proves the merge counters were reset).
  for (int pass = 0; pass < 2; ++pass) {
    const std::vector<float>& qh = pass == 0 ? q1 : q2;
    check(c.name + " two-launch run " + std::to_string(pass + 1), s.levels, s.kv_lens, qh, [&] {
      cuda::CascadeAttention(cache, p, cuda::CascadeForm::kTwoLaunch, ws.ptr, ws_bytes, nullptr);
    });
    if (HasFatalFailure()) return;
    check(c.name + " fused run " + std::to_string(pass + 1), s.levels, s.kv_lens, qh, [&] {
      cuda::CascadeAttention(cache, p, cuda::CascadeForm::kFused, ws.ptr, ws_bytes, nullptr);
    });
    if (HasFatalFailure()) return;
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
  for (cuda::CascadeForm form : {cuda::CascadeForm::kTwoLaunch, cuda::CascadeForm::kFused}) {
    const std::string form_name = form == cuda::CascadeForm::kFused ? "fused" : "two-launch";
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
    check(c.name + " " + form_name + " graph replay, new lengths", s.levels, lens2, q2, replay);
    if (!HasFatalFailure()) {
      MM_CUDA_CHECK(
          cudaMemcpy(lens.ptr, s.kv_lens.data(), s.kv_lens.size() * 4, cudaMemcpyHostToDevice));
      MM_CUDA_CHECK(
          cudaMemcpy(layout.ptr, words3.data(), words3.size() * 4, cudaMemcpyHostToDevice));
      check(c.name + " " + form_name + " graph replay, new levels", levels3, s.kv_lens, q1,
            replay);
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
