#include "coordinator/prefix_cache.h"

#include <cstdint>
#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<int32_t> Range(int32_t from, int32_t n) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), from);
  return v;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A request's worth of blocks computed and cached: allocates, inserts, returns the table.
std::vector<int32_t> Compute(PrefixCache& cache, const std::vector<int32_t>& tokens,
                             int64_t computed, PrefixCache::Chain& chain) {
  auto blocks = cache.Allocate(KvBlockAllocator::BlocksFor(computed, cache.block_size()));
  EXPECT_TRUE(blocks.ok()) << blocks.status();
  cache.Insert(tokens, *blocks, computed, chain);
  EXPECT_TRUE(cache.CheckConsistency().ok()) << cache.CheckConsistency();
  return *blocks;
}

TEST(PrefixCache, FullBlocksMatchAndTheLastTokenIsAlwaysComputed) {
  PrefixCache cache(16, 4, true);
  const std::vector<int32_t> prompt = Range(100, 10);  // blocks: 4 + 4 + 2
  PrefixCache::Chain chain;
  const std::vector<int32_t> table = Compute(cache, prompt, 10, chain);
  EXPECT_EQ(cache.num_cached(), 3);  // two full blocks and the partial third
  EXPECT_EQ(chain.blocks, 2);

  // The same prompt: 9 tokens cached (the 10th is computed for its logits); blocks 0 and 1 are
  // shared, the partial block is copied.
  PrefixCache::Match m = cache.Lookup(prompt);
  EXPECT_EQ(m.tokens, 9);
  EXPECT_THAT(m.shared, ElementsAre(table[0], table[1]));
  EXPECT_EQ(m.copy_src, table[2]);

  // A longer prompt with the same first 10 tokens: the partial block matches its 2 tokens.
  m = cache.Lookup(Concat(prompt, {7, 8, 9}));
  EXPECT_EQ(m.tokens, 10);
  EXPECT_EQ(m.copy_src, table[2]);

  // Block-aligned prompt of 8: the second full block holds the last token: copied, not shared.
  m = cache.Lookup(Range(100, 8));
  EXPECT_EQ(m.tokens, 7);
  EXPECT_THAT(m.shared, ElementsAre(table[0]));
  EXPECT_EQ(m.copy_src, table[1]);

  // Diverging in the second block after one token: one shared block plus one copied row.
  m = cache.Lookup(Concat(Range(100, 5), {1, 2, 3, 4, 5}));
  EXPECT_EQ(m.tokens, 5);
  EXPECT_THAT(m.shared, ElementsAre(table[0]));
  EXPECT_EQ(m.copy_src, table[1]);

  // Nothing in common; and a single token has nothing to reuse.
  EXPECT_EQ(cache.Lookup(Range(7, 12)).tokens, 0);
  EXPECT_EQ(cache.Lookup({100}).tokens, 0);
  // Aligned on a block boundary: two shared blocks, no copy.
  m = cache.Lookup(Concat(Range(100, 8), {42, 43}));
  EXPECT_EQ(m.tokens, 8);
  EXPECT_EQ(m.copy_src, -1);
  EXPECT_EQ(m.shared.size(), 2u);
}

TEST(PrefixCache, ReleasedBlocksStayCachedAndAreEvictedLeastRecentlyUsedFirst) {
  PrefixCache cache(6, 2, true);
  PrefixCache::Chain a_chain, b_chain;
  const std::vector<int32_t> a = {1, 2, 3, 4}, b = {5, 6, 7, 8};
  const std::vector<int32_t> ta = Compute(cache, a, 4, a_chain);
  const std::vector<int32_t> tb = Compute(cache, b, 4, b_chain);
  EXPECT_EQ(cache.num_available(), 2);
  cache.Release(ta);  // a finished first: least recently used
  cache.Release(tb);
  EXPECT_EQ(cache.num_available(), 6);
  EXPECT_EQ(cache.num_cached_idle(), 4);
  EXPECT_EQ(cache.holders(ta[0]), 0);
  EXPECT_TRUE(cache.is_cached(ta[0]));
  // Three blocks: the 2 free ones, then a's leaf (its second block) is evicted first.
  auto got = cache.Allocate(3);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(cache.is_cached(ta[1]));
  EXPECT_TRUE(cache.is_cached(ta[0]));
  EXPECT_TRUE(cache.is_cached(tb[0]) && cache.is_cached(tb[1]));
  EXPECT_TRUE(cache.CheckConsistency().ok()) << cache.CheckConsistency();
  // a's prefix now matches one block only.
  EXPECT_EQ(cache.Lookup({1, 2, 3, 4}).tokens, 2);
  // Using b again makes a's remaining block the least recently used.
  const PrefixCache::Match mb = cache.Lookup({5, 6, 7, 8, 9});
  EXPECT_EQ(mb.tokens, 4);
  cache.Acquire(mb.shared);
  cache.Release(mb.shared);
  got = cache.Allocate(1);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(cache.is_cached(ta[0]));
  EXPECT_TRUE(cache.is_cached(tb[1]));
  // Held blocks are never evicted: b is held, nothing else is left.
  cache.Acquire(tb);
  EXPECT_EQ(cache.num_available(), 0);
  EXPECT_EQ(cache.Allocate(1).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(cache.CheckConsistency().ok()) << cache.CheckConsistency();
}

TEST(PrefixCache, ParentsAreEvictedAfterTheirChildren) {
  PrefixCache cache(3, 1, true);
  PrefixCache::Chain chain;
  const std::vector<int32_t> t = Compute(cache, {4, 5, 6}, 3, chain);
  cache.Release(t);
  for (int i = 2; i >= 0; --i) {
    auto b = cache.Allocate(1);
    ASSERT_TRUE(b.ok());
    EXPECT_THAT(*b, ElementsAre(t[i])) << "deepest first";
    ASSERT_TRUE(cache.CheckConsistency().ok()) << cache.CheckConsistency();
  }
}

TEST(PrefixCache, PartialBlockGrowsWithItsWriterAndBecomesFull) {
  PrefixCache cache(8, 4, true);
  PrefixCache::Chain chain;
  std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6};
  auto table = cache.Allocate(2);
  ASSERT_TRUE(table.ok());
  cache.Insert(tokens, *table, 6, chain);  // one full block, a partial one of 2 tokens
  EXPECT_EQ(cache.Lookup({1, 2, 3, 4, 5, 6, 7, 8, 9}).tokens, 6);
  tokens.push_back(7);
  tokens.push_back(8);
  cache.Insert(tokens, *table, 8, chain);  // the partial block filled up: now keyed
  EXPECT_EQ(chain.blocks, 2);
  PrefixCache::Match m = cache.Lookup({1, 2, 3, 4, 5, 6, 7, 8, 9});
  EXPECT_EQ(m.tokens, 8);
  EXPECT_THAT(m.shared, ElementsAre((*table)[0], (*table)[1]));
  EXPECT_EQ(cache.num_cached(), 2);
  EXPECT_TRUE(cache.CheckConsistency().ok()) << cache.CheckConsistency();
}

TEST(PrefixCache, ContentCachedInAnotherBlockStopsTheChain) {
  PrefixCache cache(8, 2, true);
  PrefixCache::Chain first, second;
  Compute(cache, {1, 2, 3, 4}, 4, first);
  // The same content computed again in other blocks (two requests admitted in one step).
  const std::vector<int32_t> dup = Compute(cache, {1, 2, 3, 4}, 4, second);
  EXPECT_TRUE(second.stopped);
  EXPECT_FALSE(cache.is_cached(dup[0]));
  EXPECT_EQ(cache.num_cached(), 2);
  cache.Release(dup);
  EXPECT_EQ(cache.num_available(), 6);  // the duplicate's blocks are free, not cached
}

TEST(PrefixCache, DisabledCachesNothing) {
  PrefixCache cache(8, 2, false);
  PrefixCache::Chain chain;
  const std::vector<int32_t> t = Compute(cache, {1, 2, 3, 4}, 4, chain);
  EXPECT_EQ(cache.num_cached(), 0);
  EXPECT_EQ(cache.Lookup({1, 2, 3, 4, 5}).tokens, 0);
  EXPECT_THAT(cache.Lookup({1, 2, 3, 4, 5}).shared, IsEmpty());
  cache.Release(t);
  EXPECT_EQ(cache.num_available(), 8);
}

TEST(PrefixCache, SharedBlocksCountTheirHolders) {
  PrefixCache cache(8, 2, true);
  PrefixCache::Chain chain;
  const std::vector<int32_t> t = Compute(cache, {1, 2, 3, 4, 5}, 5, chain);
  const PrefixCache::Match m = cache.Lookup({1, 2, 3, 4, 5, 6});
  ASSERT_EQ(m.shared.size(), 2u);
  cache.Acquire(m.shared);
  EXPECT_EQ(cache.holders(t[0]), 2);
  cache.Release(t);
  EXPECT_EQ(cache.holders(t[0]), 1);
  EXPECT_EQ(cache.holders(t[2]), 0);
  EXPECT_EQ(cache.num_cached_idle(), 1);  // the partial block
  cache.Release(m.shared);
  EXPECT_EQ(cache.num_cached_idle(), 3);
  EXPECT_EQ(cache.num_available(), 8);
  EXPECT_TRUE(cache.CheckConsistency().ok()) << cache.CheckConsistency();
}

}  // namespace
}  // namespace moemesh
