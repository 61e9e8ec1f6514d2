#include "coordinator/cascade_planner.h"

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

struct Seq {
  uint64_t id;
  std::vector<int32_t> blocks;
  int64_t position;
};

std::vector<CascadeSequence> View(const std::vector<Seq>& seqs) {
  std::vector<CascadeSequence> v;
  for (const Seq& s : seqs) v.push_back({s.id, s.blocks, s.position});
  return v;
}

// `shared` blocks in common, then `own` private blocks (ids from `next`); the query sits in the
// last private block.
Seq Make(uint64_t id, const std::vector<int32_t>& shared, int own, int32_t& next, int block_size) {
  Seq s{id, shared, 0};
  for (int i = 0; i < own; ++i) s.blocks.push_back(next++);
  s.position = static_cast<int64_t>(s.blocks.size() - 1) * block_size + 1;
  return s;
}

std::vector<int32_t> Iota(int32_t from, int n) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = from + i;
  return v;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

CascadeConfig On() {
  CascadeConfig c;
  c.mode = CascadeMode::kOn;
  return c;
}

TEST(CascadePlanner, NestedPrefixesAreSeveralLevels) {
  // All 8 share blocks [0, 5); 4 of them also [5, 7); one pair of those [7, 8).
  const int bs = 4;
  int32_t next = 1000;
  const std::vector<int32_t> outer = Iota(0, 5), inner = Concat(outer, Iota(100, 2));
  std::vector<Seq> seqs;
  seqs.push_back(Make(10, Concat(inner, {200}), 1, next, bs));
  seqs.push_back(Make(11, outer, 1, next, bs));
  seqs.push_back(Make(12, Concat(inner, {200}), 2, next, bs));
  seqs.push_back(Make(13, inner, 1, next, bs));
  for (uint64_t id = 14; id < 17; ++id) seqs.push_back(Make(id, outer, 3, next, bs));
  seqs.push_back(Make(17, inner, 1, next, bs));
  const std::vector<CascadeLevel> levels = PlanCascade(View(seqs), On(), bs);
  ASSERT_EQ(levels.size(), 3u);
  EXPECT_THAT(levels[0].members, ElementsAre(10, 11, 12, 13, 14, 15, 16, 17));
  EXPECT_EQ(levels[0].block_begin, 0);
  EXPECT_EQ(levels[0].block_end, 5);
  EXPECT_THAT(levels[1].members, ElementsAre(10, 12, 13, 17));
  EXPECT_EQ(levels[1].block_begin, 5);
  EXPECT_EQ(levels[1].block_end, 7);
  EXPECT_THAT(levels[2].members, ElementsAre(10, 12));
  EXPECT_EQ(levels[2].block_begin, 7);
  EXPECT_EQ(levels[2].block_end, 8);
}

TEST(CascadePlanner, OnlyBlocksEntirelyBelowTheQueryCount) {
  const int bs = 4;
  // Both tables hold blocks 5, 6, 7 but the queries sit inside block 6 (positions 4..7): only
  // block 5 is below them.
  const std::vector<Seq> seqs = {{1, {5, 6, 7}, 5}, {2, {5, 6, 7}, 7}};
  const std::vector<CascadeLevel> levels = PlanCascade(View(seqs), On(), bs);
  ASSERT_EQ(levels.size(), 1u);
  EXPECT_EQ(levels[0].block_end, 1);
  // A query at position 4 sees block 0 entirely (positions 0..3).
  EXPECT_EQ(PlanCascade(View({{1, {5, 6}, 4}, {2, {5, 9}, 4}}), On(), bs).size(), 1u);
  EXPECT_THAT(PlanCascade(View({{1, {5, 6}, 3}, {2, {5, 9}, 3}}), On(), bs), IsEmpty());
}

TEST(CascadePlanner, DisjointGroupsAndLoners) {
  const int bs = 2;
  const std::vector<Seq> seqs = {{1, {1, 2, 30}, 5},
                                 {2, {7, 8, 31}, 5},
                                 {3, {1, 2, 32}, 5},
                                 {4, {7, 9, 33}, 5},
                                 {5, {4, 34}, 3}};
  const std::vector<CascadeLevel> levels = PlanCascade(View(seqs), On(), bs);
  ASSERT_EQ(levels.size(), 2u);  // by first block id: 1, then 7
  EXPECT_THAT(levels[0].members, ElementsAre(1, 3));
  EXPECT_EQ(levels[0].block_end, 2);
  EXPECT_THAT(levels[1].members, ElementsAre(2, 4));
  EXPECT_EQ(levels[1].block_end, 1);
}

TEST(CascadePlanner, OffAndAutoWithoutCalibrationStayFlat) {
  const std::vector<Seq> seqs = {{1, {1, 2, 3}, 9}, {2, {1, 2, 4}, 9}};
  CascadeConfig c;
  c.mode = CascadeMode::kOff;
  EXPECT_THAT(PlanCascade(View(seqs), c, 4), IsEmpty());
  c.mode = CascadeMode::kAuto;
  EXPECT_THAT(PlanCascade(View(seqs), c, 4), IsEmpty());
}

TEST(CascadePlanner, SlidingWindowThatDoesNotReachPositionZeroExcludes) {
  const std::vector<Seq> seqs = {{1, {1, 2, 3}, 9}, {2, {1, 2, 4}, 9}, {3, {1, 2, 5}, 10}};
  CascadeConfig c = On();
  c.sliding_window = 10;  // position 9 sees 0..9; position 10 sees 1..10
  const std::vector<CascadeLevel> levels = PlanCascade(View(seqs), c, 4);
  ASSERT_EQ(levels.size(), 1u);
  EXPECT_THAT(levels[0].members, ElementsAre(1, 2));
}

CascadeCalibration Calibration() {
  CascadeCalibration c;
  c.decode_bytes_per_second = 2.6e12;
  c.prefix_bytes_per_second = 2.0e12;
  c.prefix_flops_per_second = 5e14;
  c.level_seconds = 7e-6;
  c.merge_seconds_per_row = 2e-9;
  return c;
}

CascadeConfig Auto(int q_heads, int kv_heads) {
  CascadeConfig c;
  c.mode = CascadeMode::kAuto;
  c.q_heads_per_rank = q_heads;
  c.kv_heads_per_rank = kv_heads;
  c.head_dim = 128;
  c.calibration = Calibration();
  return c;
}

TEST(CascadePlanner, AutoKeepsWhatTheCostModelPicksAndCarriesRejectedRangesDown) {
  const int bs = 16;
  int32_t next = 100000;
  // 8 sequences share 2 blocks (32 tokens: not worth a level); 4 of them share 500 more
  // (8000 tokens at 8 KV heads: worth it): one level of 4 over [0, 502).
  const std::vector<int32_t> outer = Iota(0, 2), inner = Concat(outer, Iota(1000, 500));
  std::vector<Seq> seqs;
  for (uint64_t id = 0; id < 4; ++id) seqs.push_back(Make(id, inner, 1, next, bs));
  for (uint64_t id = 4; id < 8; ++id) seqs.push_back(Make(id, outer, 1, next, bs));
  std::vector<CascadeLevel> levels = PlanCascade(View(seqs), Auto(64, 8), bs);
  ASSERT_EQ(levels.size(), 1u);
  EXPECT_THAT(levels[0].members, ElementsAre(0, 1, 2, 3));
  EXPECT_EQ(levels[0].block_begin, 0);
  EXPECT_EQ(levels[0].block_end, 502);
  // At 1 KV head the 4 x 8000 tokens are not worth it either: flat.
  EXPECT_THAT(PlanCascade(View(seqs), Auto(8, 1), bs), IsEmpty());

  // Outer worth it, inner not: 8 share 500 blocks, 2 of them 1 more.
  const std::vector<int32_t> big = Iota(0, 500), big_plus = Concat(big, {7777});
  seqs.clear();
  for (uint64_t id = 0; id < 2; ++id) seqs.push_back(Make(id, big_plus, 1, next, bs));
  for (uint64_t id = 2; id < 8; ++id) seqs.push_back(Make(id, big, 1, next, bs));
  levels = PlanCascade(View(seqs), Auto(64, 8), bs);
  ASSERT_EQ(levels.size(), 1u);
  EXPECT_EQ(levels[0].members.size(), 8u);
  EXPECT_EQ(levels[0].block_end, 500);
}

// Random forests of shared prefixes, mode on: every level is shared by its members, each
// member's levels tile [0, deepest end) in plan order, levels end below the queries, and a
// member's deepest end is the longest block prefix it shares with any other sequence.
TEST(CascadePlanner, RandomTablesGiveConsistentMaximalLevels) {
  std::mt19937 rng(2024);
  for (int trial = 0; trial < 300; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const int bs = std::uniform_int_distribution<int>(1, 5)(rng);
    const int n = std::uniform_int_distribution<int>(0, 12)(rng);
    int32_t next = 0;
    std::vector<Seq> seqs;
    for (int i = 0; i < n; ++i) {
      Seq s{static_cast<uint64_t>(100 + i), {}, 0};
      if (i > 0 && std::bernoulli_distribution(0.8)(rng)) {
        // Copy a prefix of an earlier table, then grow privately.
        const Seq& from = seqs[std::uniform_int_distribution<int>(0, i - 1)(rng)];
        const int keep =
            std::uniform_int_distribution<int>(0, static_cast<int>(from.blocks.size()))(rng);
        s.blocks.assign(from.blocks.begin(), from.blocks.begin() + keep);
      }
      const int own = std::uniform_int_distribution<int>(1, 4)(rng);
      for (int j = 0; j < own; ++j) s.blocks.push_back(next++ + 10000);
      const int64_t max_pos = static_cast<int64_t>(s.blocks.size()) * bs - 1;
      s.position = std::uniform_int_distribution<int64_t>(max_pos - bs + 1, max_pos)(rng);
      seqs.push_back(std::move(s));
    }
    const std::vector<CascadeLevel> levels = PlanCascade(View(seqs), On(), bs);
    std::map<uint64_t, const Seq*> by_id;
    for (const Seq& s : seqs) by_id[s.id] = &s;
    std::map<uint64_t, int32_t> reached;  // member -> end of its last level so far
    for (const CascadeLevel& l : levels) {
      ASSERT_GE(l.members.size(), 2u);
      ASSERT_LT(l.block_begin, l.block_end);
      const Seq& first = *by_id.at(l.members[0]);
      for (uint64_t m : l.members) {
        const Seq& s = *by_id.at(m);
        ASSERT_LE(static_cast<int64_t>(l.block_end) * bs, s.position) << m;
        for (int32_t b = l.block_begin; b < l.block_end; ++b)
          ASSERT_EQ(s.blocks[b], first.blocks[b]) << m;
        ASSERT_EQ(reached[m], l.block_begin) << "member " << m << " levels do not tile";
        reached[m] = l.block_end;
      }
    }
    for (const Seq& s : seqs) {
      int32_t longest = 0;
      for (const Seq& o : seqs) {
        if (&o == &s) continue;
        int32_t k = 0;
        const int32_t limit = static_cast<int32_t>(std::min<int64_t>(
            {static_cast<int64_t>(s.blocks.size()), static_cast<int64_t>(o.blocks.size()),
             s.position / bs, o.position / bs}));
        while (k < limit && s.blocks[k] == o.blocks[k]) ++k;
        longest = std::max(longest, k);
      }
      EXPECT_EQ(reached.contains(s.id) ? reached[s.id] : 0, longest) << "sequence " << s.id;
    }
  }
}

TEST(CascadeMode, Parses) {
  EXPECT_EQ(*ParseCascadeMode("auto"), CascadeMode::kAuto);
  EXPECT_EQ(*ParseCascadeMode("on"), CascadeMode::kOn);
  EXPECT_EQ(*ParseCascadeMode("off"), CascadeMode::kOff);
  EXPECT_EQ(ParseCascadeMode("sometimes").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_STREQ(CascadeModeName(CascadeMode::kOn), "on");
  CascadeConfig c;
  c.head_dim = 0;
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moemesh
