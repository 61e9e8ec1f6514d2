// The work decomposition of the CUDA cascade attention kernels (kernels/cuda/cascade_plan.h),
// run on the CPU: for every CTA of a launch, resolved with the kernels' own functions, each row
// and position is attended exactly once and every merge gets exactly the arrivals it waits for;
// the layout builder rejects bad levels. Runs everywhere (no GPU needed).
#include <algorithm>
#include <cstdint>
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

namespace moemesh {
namespace {

namespace cs = cuda::cascade;
using cuda::CascadeBounds;
using cuda::CascadeLevelSpec;

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

// The kernels' dimensions for a scenario.
cs::Dims DimsOf(const PlanScenario& s) {
  cs::Dims d;
  d.kv_heads = s.kv_heads;
  d.n_heads = s.bounds.n_heads;
  d.group = s.bounds.n_heads / s.kv_heads;
  d.batch = s.bounds.batch;
  d.max_levels = s.bounds.max_levels;
  d.capacity = s.capacity;
  d.window = s.window;
  return d;
}

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
  const cs::Dims d = DimsOf(s);
  const int batch = s.bounds.batch, kvh = s.kv_heads, group = d.group;
  ASSERT_TRUE(p.pre_tile_rows == 16 || p.pre_tile_rows == 64) << what;
  ASSERT_LE(p.members_per_tile * group, p.pre_tile_rows) << what;
  ASSERT_TRUE(p.pre_unit_tiles == 1 || p.pre_unit_tiles == 2) << what;
  if (p.pre_unit_tiles == 2) {  // the kernel's two-tile stream: 64-row tiles, q in one part
    ASSERT_EQ(form, cs::Form::kFused) << what;
    ASSERT_EQ(p.pre_tile_rows, 64) << what;
    ASSERT_EQ(s.knobs.q_parts, 1) << what;
  }
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
  std::map<std::pair<int, int>, int> arrivals;            // (seq, head) -> suffix arrivals
  std::map<std::tuple<int, int, int>, int> tile_arrivals;  // (level, head, tile) -> splits
  for (int cta = 0; cta < p.pre_ctas; ++cta) {
    const cs::PrefixWork w = cs::ResolvePrefix(cta, p, d, l);
    if (!w.active) continue;
    ASSERT_LT(w.level, s.bounds.max_levels) << what;
    ASSERT_LE(w.rows, p.pre_tile_rows * p.pre_unit_tiles) << what;
    ASSERT_LE(w.rows, cs::kMaxUnitRows) << what;
    ASSERT_EQ(w.table_seq, s.levels[w.level].members[0]) << what;
    // The unit covers tiles [w.tile, + w.tiles), each holding members, and arrives at each.
    ASSERT_GE(w.tiles, 1) << what;
    ASSERT_LE(w.tiles, p.pre_unit_tiles) << what;
    ASSERT_EQ(w.tiles, (w.members + p.members_per_tile - 1) / p.members_per_tile) << what;
    ASSERT_EQ(w.tile % p.pre_unit_tiles, 0) << what;
    for (int j = 0; j < w.tiles; ++j) {
      const auto tile = std::make_tuple(w.level, w.head, w.tile + j);
      auto it = tile_active.find(tile);
      if (it == tile_active.end()) {
        tile_active[tile] = w.n_active;
      } else {
        ASSERT_EQ(it->second, w.n_active) << what << ": splits of a tile disagree";
      }
      ++tile_arrivals[tile];
    }
    ASSERT_LT(w.split, w.n_active) << what;
    ASSERT_LE(w.n_active, p.pre_splits) << what;
    for (int m = 0; m < w.members; ++m) {
      const int i = w.first_slot + m - w.level * s.bounds.max_members;
      ASSERT_EQ(l.member_seq[w.first_slot + m], s.levels[w.level].members[i]) << what;
      spans[std::make_tuple(w.level, w.head, i)].push_back({w.lo, w.hi});
    }
  }
  for (const auto& [tile, n] : tile_arrivals) {
    ASSERT_EQ(n, tile_active[tile]) << what << ": every active split of a tile arrives once";
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
        const int want = cs::SuffixArrivals(b, p, d, l, s.kv_lens.data());
        ASSERT_EQ(arrivals[std::make_pair(b, h)], want)
            << what << ": arrivals of seq " << b << " head " << h;
      }
    }
  }

  // Merge units (fused): each (seq, query head) merged by exactly one, from at most
  // kMaxFinalInputs inputs; each (seq, KV head) and each level tile is read by as many units as
  // reset its counters, and a tile has the splits its readers wait for.
  if (form != cs::Form::kFused) {
    ASSERT_EQ(p.merge_units, 0) << what;
    return;
  }
  ASSERT_TRUE(p.merge_rows % group == 0 || group % p.merge_rows == 0) << what;
  ASSERT_LE(p.merge_rows, std::max(group, cs::kMaxMergeRows)) << what;
  const int readers = cs::MergeReaders(p, d);
  std::map<std::pair<int, int>, int> merged, seq_readers;
  std::map<std::tuple<int, int, int>, int> tile_readers;  // (level, head, tile) -> readers
  for (int u = 0; u < p.merge_units; ++u) {
    const cs::MergeWork w = cs::ResolveMerge(u, p, d);
    if (!w.active) continue;
    ASSERT_LE(w.row_end - w.row_begin, p.merge_rows) << what;
    ASSERT_EQ(w.seq_begin, w.row_begin / group) << what;
    ASSERT_LE(w.seq_end - w.seq_begin, cs::kMaxMergeRows) << what;
    for (int g = w.row_begin; g < w.row_end; ++g) ++merged[{g / group, w.head * group + g % group}];
    for (int b = w.seq_begin; b < w.seq_end; ++b) {
      ++seq_readers[{b, w.head}];
      int inputs = cs::SuffixArrivals(b, p, d, l, s.kv_lens.data());
      for (int j = 0; j < l.max_depth; ++j) {
        const int slot = l.seq_slots[b * l.max_depth + j];
        if (slot < 0) continue;
        const cs::SlotTile t = cs::TileOfSlot(slot, p, d, l);
        ASSERT_EQ(l.member_seq[slot], b) << what;
        const auto tile = std::make_tuple(t.level, w.head, t.tile);
        const int n_active = cs::LevelActiveSplits(t.level, p, d, l);
        ASSERT_EQ(n_active, tile_active[tile]) << what << ": seq " << b << " level " << t.level;
        ++tile_readers[tile];
        inputs += n_active;
      }
      ASSERT_LE(inputs, cs::kMaxFinalInputs) << what << ": merge inputs of seq " << b;
    }
  }
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < kvh; ++h) {
      ASSERT_EQ((seq_readers[{b, h}]), readers) << what << ": readers of seq " << b;
      for (int j = 0; j < group; ++j) {
        ASSERT_EQ((merged[{b, h * group + j}]), 1) << what << ": merges of seq " << b << " head "
                                                   << h * group + j;
      }
    }
  }
  for (const auto& [tile, n] : tile_readers) {
    const int level = std::get<0>(tile), first = std::get<2>(tile) * p.members_per_tile;
    const int slot = level * s.bounds.max_members + first;
    ASSERT_EQ(n, cs::TileOfSlot(slot, p, d, l).members * readers)
        << what << ": readers of level " << level;
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
  s.knobs.q_parts = uni(1, 3);
  if (s.knobs.q_parts == 1 && uni(0, 2) > 0) s.knobs.prefix_unit_tiles = 2;
  return s;
}

TEST(CascadePlan, EveryRowAndPositionOnceAndEveryMergeCompletes) {
  int two_tile_units = 0;  // fused launches whose prefix units take two 64-row tiles
  for (uint32_t seed = 1; seed <= 300; ++seed) {
    const PlanScenario s = RandomScenario(seed);
    for (int slots : {1, 7, 132, 264, 1000}) {
      two_tile_units += cs::MakePlan(s.bounds, s.kv_heads, s.head_dim, slots, cs::Form::kFused,
                                     s.knobs).pre_unit_tiles == 2;
      for (cs::Form form : {cs::Form::kPrefixPass, cs::Form::kSuffixPass, cs::Form::kFused}) {
        SimulateLaunch(s, slots, form);
        if (HasFatalFailure()) return;
      }
    }
  }
  EXPECT_GE(two_tile_units, 20);
}

// The cluster form (cascade_cluster.cu) of a scenario with clusters of `size` CTAs, as the
// kernel resolves it: every (sequence, query head) is merged by exactly one CTA, from inputs
// that cover the level's range and the sequence's own positions exactly once, and the merge's
// input count and the CTA holding each own piece agree with what the CTAs computed.
void SimulateClusters(const PlanScenario& s, int size) {
  const std::string what = s.name + " cluster " + std::to_string(size);
  std::vector<int32_t> words;
  ASSERT_EQ(cs::BuildLayout(s.bounds, s.levels, s.kv_lens.data(), &words), "") << what;
  const cs::LayoutView l = cs::MakeLayoutView(words.data(), s.bounds);
  const cs::ClusterPlan c = cs::MakeClusterPlan(s.bounds, s.kv_heads, size);
  const cs::Dims d = DimsOf(s);
  const int group = d.group;
  ASSERT_LE(c.members_per_tile, size) << what;
  ASSERT_LE(c.members_per_tile * group, cs::kClusterTileRows) << what;
  // Per (sequence, KV head): attended intervals; per (sequence, query head): merges.
  std::map<std::pair<int, int>, std::vector<std::pair<int, int>>> covered;
  std::map<std::pair<int, int>, int> merged;
  auto run_tile = [&](const cs::ClusterTile& t) {
    if (!t.active) return;
    ASSERT_LE(t.members, c.members_per_tile) << what;
    ASSERT_LE(t.piece_first + t.members * t.own, size) << what;
    ASSERT_LE(t.n_splits, t.piece_first) << what;
    if (!t.solo && t.end > t.begin) {
      ASSERT_GE(t.piece_first, 1) << what;
    }
    std::vector<int> seq(t.members), pieces(t.members, 0);
    for (int i = 0; i < t.members; ++i) seq[i] = cs::ClusterMemberSeq(t, i, l);
    for (int k = 0; k < size; ++k) {
      if (k < t.n_splits) {
        const int lo = t.begin + k * t.chunk, hi = std::min(lo + t.chunk, t.end);
        ASSERT_LT(lo, hi) << what;
        for (int i = 0; i < t.members; ++i) covered[{seq[i], t.head}].push_back({lo, hi});
      }
      const int m = (k - t.piece_first) / t.own;
      if (k >= t.piece_first && m < t.members && seq[m] >= 0) {
        const int j = (k - t.piece_first) % t.own;
        int start = 0, len = 0, lo = 0, hi = 0;
        cs::OwnRange(seq[m], d, l, s.kv_lens.data(), &start, &len);
        if (cs::OwnPiece(t, start, len, j, &lo, &hi)) {
          ASSERT_EQ(j, pieces[m]) << what << ": pieces of a member are consecutive";
          ++pieces[m];
          if (hi > lo) covered[{seq[m], t.head}].push_back({lo, hi});
        }
      }
    }
    const int rows = t.members * group;
    for (int k = 0; k < size; ++k) {
      const int r0 = k * rows / size, nr = (k + 1) * rows / size - r0;
      ASSERT_LE(nr * (t.n_splits + t.own), cs::kClusterTileRows + cs::kMaxClusterSize)
          << what << ": merge weights";
      for (int r = r0; r < r0 + nr; ++r) {
        const int i = r / group;
        if (seq[i] < 0) continue;
        int start = 0, len = 0;
        cs::OwnRange(seq[i], d, l, s.kv_lens.data(), &start, &len);
        const int n_pieces = cs::ActiveSplits(len - start, cs::ChunkTokens(len - start, t.own));
        ASSERT_EQ(n_pieces, pieces[i]) << what << ": merge inputs of seq " << seq[i];
        ++merged[{seq[i], t.head * group + r % group}];
      }
    }
  };
  for (int u = 0; u < c.level_units; ++u) {
    run_tile(cs::ResolveClusterTile(u, false, c, d, l, s.kv_lens.data()));
    for (int v = u; v < c.solo_units; v += c.level_units) {
      run_tile(cs::ResolveClusterTile(v, true, c, d, l, s.kv_lens.data()));
    }
    if (::testing::Test::HasFatalFailure()) return;
  }
  for (int b = 0; b < d.batch; ++b) {
    int start = 0, len = 0;
    cs::OwnRange(b, d, l, s.kv_lens.data(), &start, &len);
    for (int h = 0; h < s.kv_heads; ++h) {
      std::vector<std::pair<int, int>> got = covered[{b, h}];
      std::sort(got.begin(), got.end());
      int at = 0;  // a member's level is [0, suffix begin); the own range follows (window: later)
      for (const auto& [lo, hi] : got) {
        if (lo != at && at == std::min(l.seq_suffix_begin[b], len)) at = lo;  // window skips
        ASSERT_EQ(lo, at) << what << ": seq " << b << " head " << h << " gap or overlap";
        at = hi;
      }
      ASSERT_EQ(at, len) << what << ": seq " << b;
      for (int j = 0; j < group; ++j) {
        ASSERT_EQ((merged[{b, h * group + j}]), 1) << what << ": seq " << b << " head " << j;
      }
    }
  }
}

TEST(CascadePlan, ClusterFormCoversEveryRowAndPositionOnce) {
  int simulated = 0;
  for (uint32_t seed = 1; seed <= 1000; ++seed) {
    const PlanScenario s = RandomScenario(seed);
    if (!cs::ClusterUnsupported(s.bounds, s.kv_heads).empty()) continue;
    for (int size : {2, 4, 8, 16}) {
      SimulateClusters(s, size);
      if (HasFatalFailure()) return;
    }
    ++simulated;
  }
  EXPECT_GE(simulated, 100);  // the random scenarios reach the cluster form often enough
}

TEST(CascadePlan, FlashInferShapePlans) {
  // 8 members x 8 query heads over 4000 shared positions, 1 KV head, on 264 resident CTAs: the
  // single 64-row tile's work must still be spread (16-row tiles x splits). The two-launch
  // form's prefix pass takes as many splits as one merge level takes while each split's share
  // stays short; the fused form as many as its merge units take (one suffix split each).
  // batch, n_heads, max_levels, max_members, max_depth, max_shared_len, max_suffix_len
  CascadeBounds b{8, 8, 1, 8, 1, 4000, 32};
  const cs::Plan pass = cs::MakePlan(b, 1, 128, 264, cs::Form::kPrefixPass, {});
  EXPECT_EQ(pass.pre_tile_rows, 16);
  EXPECT_EQ(pass.pre_tiles, 4);
  EXPECT_EQ(pass.pre_splits, cs::kSingleLevelMaxSplits);
  EXPECT_EQ(pass.pre_merge_group, pass.pre_splits);  // one merge level
  EXPECT_LE(pass.pre_chunk, cs::kShortSplitTokens);
  const cs::Plan fused = cs::MakePlan(b, 1, 128, 264, cs::Form::kFused, {});
  EXPECT_EQ(fused.pre_tile_rows, 16);
  EXPECT_EQ(fused.pre_tiles, 4);
  EXPECT_EQ(fused.suf_splits, 1);
  EXPECT_EQ(fused.pre_splits, cs::kMaxFinalInputs - 1);
  EXPECT_LE(fused.pre_ctas + fused.suf_ctas, 264);
  // The same with 8 KV heads: the fused form takes one 64-row tile per KV head (its merge units
  // spread the merges of the tile's many splits), and its short splits fill one wave beside the
  // suffix units; the prefix pass keeps 16-row tiles, whose last split merges the tile.
  CascadeBounds wide = b;
  wide.n_heads = 64;
  const cs::Plan wide_fused = cs::MakePlan(wide, 8, 128, 264, cs::Form::kFused, {});
  EXPECT_EQ(wide_fused.pre_tile_rows, 64);
  EXPECT_EQ(wide_fused.pre_tiles, 1);
  EXPECT_EQ(wide_fused.pre_splits, (264 - wide_fused.suf_ctas) / 8);
  EXPECT_LE(wide_fused.pre_ctas + wide_fused.suf_ctas, 264);
  EXPECT_EQ(cs::MakePlan(wide, 8, 128, 264, cs::Form::kPrefixPass, {}).pre_tile_rows, 16);
  // 64 members x 8 heads over 32K positions: 64-row tiles (the shared KV is re-read per tile);
  // the long splits take the prefix's share of the work, past one wave.
  b.batch = b.max_members = 64;
  b.max_shared_len = 32768;
  const cs::Plan big = cs::MakePlan(b, 1, 128, 264, cs::Form::kFused, {});
  EXPECT_EQ(big.pre_tile_rows, 64);
  EXPECT_EQ(big.pre_tiles, 8);
  EXPECT_GE(big.pre_ctas, 132);
  EXPECT_GT(big.pre_ctas + big.suf_ctas, 264);
  EXPECT_EQ(big.pre_unit_tiles, 1);
  // With q in one bf16 part, two 64-row tiles per prefix CTA on request: 4 units per split, the
  // prefix and suffix units in one wave, spread over the SMs.
  cs::PlanKnobs one_part;
  one_part.q_parts = 1;
  EXPECT_EQ(cs::MakePlan(b, 1, 128, 264, cs::Form::kFused, one_part).pre_unit_tiles, 1);
  one_part.prefix_unit_tiles = 2;
  const cs::Plan two = cs::MakePlan(b, 1, 128, 264, cs::Form::kFused, one_part);
  EXPECT_EQ(two.pre_unit_tiles, 2);
  EXPECT_EQ(two.pre_ctas, 4 * two.pre_splits);
  EXPECT_TRUE(two.spread_prefix);
  EXPECT_LE(two.pre_ctas + two.suf_ctas, 264);
  EXPECT_EQ(cs::MakePlan(b, 1, 128, 264, cs::Form::kPrefixPass, one_part).pre_unit_tiles, 1);
  one_part.q_parts = 3;
  EXPECT_EQ(cs::MakePlan(b, 1, 128, 264, cs::Form::kFused, one_part).pre_unit_tiles, 1);
}

TEST(CascadePlan, LayoutBuilderRejectsBadLevels) {
  CascadeBounds b{4, 8, 2, 3, 2, 0, 0};  // batch 4, 8 heads, 2 levels of 3, depth 2
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

}  // namespace
}  // namespace moemesh
