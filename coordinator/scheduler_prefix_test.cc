// The scheduler with prefix caching and cascade planning: reused prefixes in NewRequest, the
// copy-on-write of a partly shared block, eviction of cached blocks, and cascade levels.
#include <cstdint>
#include <vector>

#include "coordinator/scheduler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

SchedulerRequest Request(uint64_t id, std::vector<int32_t> prompt, int max_tokens) {
  SchedulerRequest r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.sampling.seed = id;
  r.max_tokens = max_tokens;
  return r;
}

std::vector<int32_t> Prompt(int n, int32_t from = 1000) {
  std::vector<int32_t> p(n);
  for (int i = 0; i < n; ++i) p[i] = from + i;
  return p;
}

StepResult Sampled(const StepPlan& plan, int32_t token) {
  StepResult result{.step = plan.step, .tokens = {}};
  for (const ScheduledSequence& s : plan.sequences) {
    if (!s.sample) continue;
    SampledToken t;
    t.id = s.id;
    t.sample.token = token;
    result.tokens.push_back(t);
  }
  return result;
}

const ScheduledSequence& Seq(const StepPlan& plan, uint64_t id) {
  for (const ScheduledSequence& s : plan.sequences) {
    if (s.id == id) return s;
  }
  ADD_FAILURE() << "request " << id << " not scheduled";
  static const ScheduledSequence none;
  return none;
}

const NewRequest& New(const StepPlan& plan, uint64_t id) {
  for (const NewRequest& r : plan.new_requests) {
    if (r.id == id) return r;
  }
  ADD_FAILURE() << "request " << id << " not admitted";
  static const NewRequest none;
  return none;
}

TEST(SchedulerPrefix, SamePromptReusesFullBlocksAndCopiesThePartialOne) {
  Scheduler s(SchedulerConfig{.block_size = 4, .num_blocks = 32});
  ASSERT_TRUE(s.Add(Request(1, Prompt(10), 3)).ok());
  auto p0 = s.Schedule();
  ASSERT_TRUE(p0.has_value());
  EXPECT_THAT(Seq(*p0, 1).new_blocks, ElementsAre(0, 1, 2));
  EXPECT_TRUE(New(*p0, 1).prefix_blocks.empty());
  EXPECT_EQ(New(*p0, 1).prefix_tokens, 0);
  ASSERT_TRUE(s.Update(*p0, Sampled(*p0, 41), {}).ok());

  ASSERT_TRUE(s.Add(Request(2, Prompt(10), 3)).ok());
  auto p1 = s.Schedule();
  ASSERT_TRUE(p1.has_value());
  // Request 1 decodes position 10 into its block 2 while request 2 gets a private copy of it
  // (copies run before the step), shares blocks 0 and 1 and computes only its last token.
  const NewRequest& r2 = New(*p1, 2);
  EXPECT_THAT(r2.prefix_blocks, ElementsAre(0, 1, 3));
  EXPECT_EQ(r2.prefix_tokens, 9);
  ASSERT_EQ(p1->block_copies.size(), 1u);
  EXPECT_EQ(p1->block_copies[0].src, 2);
  EXPECT_EQ(p1->block_copies[0].dst, 3);
  const ScheduledSequence& s2 = Seq(*p1, 2);
  EXPECT_EQ(s2.start_position, 9);
  EXPECT_THAT(s2.tokens, ElementsAre(1009));
  EXPECT_THAT(s2.new_blocks, IsEmpty());
  EXPECT_TRUE(s2.sample);
  EXPECT_EQ(s.stats().kv_blocks_used, 4);
  EXPECT_THAT(p1->cascade, IsEmpty());  // auto without a calibration: flat
  ASSERT_TRUE(s.Update(*p1, Sampled(*p1, 42), {}).ok());

  // Both finish; every block is available again, the cached ones included.
  while (s.HasWork()) {
    auto p = s.Schedule();
    ASSERT_TRUE(p.has_value());
    ASSERT_TRUE(s.Update(*p, Sampled(*p, 43), {}).ok());
  }
  EXPECT_EQ(s.stats().kv_blocks_free, 32);
  EXPECT_EQ(s.stats().kv_blocks_used, 0);
  EXPECT_GT(s.stats().kv_blocks_cached, 0);
}

TEST(SchedulerPrefix, AlignedPromptCopiesTheBlockOfItsLastToken) {
  Scheduler s(SchedulerConfig{.block_size = 4, .num_blocks = 32});
  ASSERT_TRUE(s.Add(Request(1, Prompt(8), 1)).ok());
  auto p0 = s.Schedule();
  ASSERT_TRUE(s.Update(*p0, Sampled(*p0, 5), {}).ok());  // finished (max_tokens 1)
  ASSERT_TRUE(s.Add(Request(2, Prompt(8), 1)).ok());
  auto p1 = s.Schedule();
  ASSERT_TRUE(p1.has_value());
  EXPECT_THAT(p1->finished, ElementsAre(1));
  const NewRequest& r2 = New(*p1, 2);
  EXPECT_EQ(r2.prefix_tokens, 7);
  ASSERT_EQ(r2.prefix_blocks.size(), 2u);
  EXPECT_EQ(r2.prefix_blocks[0], 0);
  ASSERT_EQ(p1->block_copies.size(), 1u);
  EXPECT_EQ(p1->block_copies[0].src, 1);
  EXPECT_EQ(p1->block_copies[0].dst, r2.prefix_blocks[1]);
  EXPECT_EQ(Seq(*p1, 2).start_position, 7);
}

TEST(SchedulerPrefix, CachedTokensDoNotCountAgainstTheBudget) {
  Scheduler s(SchedulerConfig{.max_step_tokens = 4, .block_size = 4, .num_blocks = 32});
  ASSERT_TRUE(s.Add(Request(1, Prompt(12), 1)).ok());
  for (int i = 0; i < 3; ++i) {  // three chunks of 4
    auto p = s.Schedule();
    ASSERT_TRUE(p.has_value());
    ASSERT_TRUE(s.Update(*p, Sampled(*p, 5), {}).ok());
  }
  ASSERT_TRUE(s.Add(Request(2, Prompt(12), 2)).ok());
  ASSERT_TRUE(s.Add(Request(3, Prompt(12), 2)).ok());
  auto p = s.Schedule();
  ASSERT_TRUE(p.has_value());
  // Both admitted in one step of 4 tokens: one token each.
  EXPECT_EQ(Seq(*p, 2).start_position, 11);
  EXPECT_EQ(Seq(*p, 3).start_position, 11);
  EXPECT_EQ(p->block_copies.size(), 2u);
  EXPECT_NE(p->block_copies[0].dst, p->block_copies[1].dst);
}

TEST(SchedulerPrefix, DisabledComputesEveryPrompt) {
  Scheduler s(SchedulerConfig{.block_size = 4, .num_blocks = 32, .prefix_caching = false});
  ASSERT_TRUE(s.Add(Request(1, Prompt(10), 1)).ok());
  auto p0 = s.Schedule();
  ASSERT_TRUE(s.Update(*p0, Sampled(*p0, 5), {}).ok());
  ASSERT_TRUE(s.Add(Request(2, Prompt(10), 1)).ok());
  auto p1 = s.Schedule();
  ASSERT_TRUE(p1.has_value());
  EXPECT_EQ(New(*p1, 2).prefix_tokens, 0);
  EXPECT_EQ(Seq(*p1, 2).start_position, 0);
  EXPECT_THAT(p1->block_copies, IsEmpty());
  EXPECT_EQ(s.stats().kv_blocks_cached, 0);
}

TEST(SchedulerPrefix, CachedBlocksAreEvictedWhenTheCacheIsShort) {
  // 6 blocks of 2 tokens. A 4-token prompt leaves 2 cached blocks behind.
  Scheduler s(SchedulerConfig{.block_size = 2, .num_blocks = 6});
  auto run_alone = [&](uint64_t id, std::vector<int32_t> prompt, int max_tokens) -> int64_t {
    EXPECT_TRUE(s.Add(Request(id, std::move(prompt), max_tokens)).ok());
    int64_t cached = -1;
    while (s.HasWork()) {
      auto p = s.Schedule();
      EXPECT_TRUE(p.has_value());
      if (!p.has_value()) return -1;
      for (const NewRequest& r : p->new_requests) {
        if (r.id == id) cached = r.prefix_tokens;
      }
      EXPECT_TRUE(s.Update(*p, Sampled(*p, 7), {}).ok());
    }
    return cached;
  };
  EXPECT_EQ(run_alone(1, {1, 2, 3, 4}, 1), 0);
  EXPECT_EQ(s.stats().kv_blocks_cached, 2);
  EXPECT_EQ(run_alone(2, {1, 2, 3, 4}, 1), 3);
  // A different 9-token request (prompt 8 + 1 token fed back... max_tokens 2 -> 9 positions):
  // needs 5 blocks; only 4 are free, so the least recently used cached leaf goes.
  EXPECT_EQ(run_alone(3, {9, 9, 8, 8, 7, 7, 6, 6}, 2), 0);
  EXPECT_EQ(s.stats().kv_blocks_free, 6);
  // Request 1's first block survived (the leaf went first): 2 tokens cached.
  EXPECT_EQ(run_alone(4, {1, 2, 3, 4}, 1), 2);
}

TEST(SchedulerPrefix, PreemptedRequestResumesFromItsCachedBlocks) {
  // 4 blocks of 4 tokens: two 8-token prompts fill the cache (scheduler_test.cc has the same
  // story without prefix caching).
  Scheduler s(SchedulerConfig{.block_size = 4, .num_blocks = 4});
  ASSERT_TRUE(s.Add(Request(1, Prompt(8, 1000), 3)).ok());
  ASSERT_TRUE(s.Add(Request(2, Prompt(8, 2000), 3)).ok());
  auto p0 = s.Schedule();
  ASSERT_TRUE(s.Update(*p0, Sampled(*p0, 41), {}).ok());
  // Request 1 needs a block at position 8: request 2 is preempted; its blocks 2 and 3 stay
  // cached and the leaf (block 3, its second) is evicted for request 1.
  auto p1 = s.Schedule();
  EXPECT_THAT(p1->finished, ElementsAre(2));
  EXPECT_THAT(Seq(*p1, 1).new_blocks, ElementsAre(3));
  EXPECT_EQ(s.stats().kv_blocks_cached, 1);
  ASSERT_TRUE(s.Update(*p1, Sampled(*p1, 42), {}).ok());
  auto p2 = s.Schedule();
  ASSERT_TRUE(s.Update(*p2, Sampled(*p2, 43), {}).ok());  // request 1 reaches max_tokens
  // Re-admitted: its first block is still cached, so it recomputes from position 4.
  auto p3 = s.Schedule();
  EXPECT_THAT(p3->finished, ElementsAre(1));
  const NewRequest& r2 = New(*p3, 2);
  EXPECT_THAT(r2.output, ElementsAre(41));
  EXPECT_THAT(r2.prefix_blocks, ElementsAre(2));
  EXPECT_EQ(r2.prefix_tokens, 4);
  const ScheduledSequence& seq = Seq(*p3, 2);
  EXPECT_EQ(seq.start_position, 4);
  EXPECT_THAT(seq.tokens, ElementsAre(2004, 2005, 2006, 2007, 41));
  EXPECT_TRUE(seq.sample);
}

TEST(SchedulerPrefix, SamplesOfOnePromptFormACascadeLevel) {
  SchedulerConfig config{.block_size = 4, .num_blocks = 64};
  config.cascade.mode = CascadeMode::kOn;
  Scheduler s(config);
  ASSERT_TRUE(s.Add(Request(1, Prompt(10), 5)).ok());
  auto p0 = s.Schedule();
  EXPECT_THAT(p0->cascade, IsEmpty());  // a 10-token prefill is not a decode
  ASSERT_TRUE(s.Update(*p0, Sampled(*p0, 41), {}).ok());
  ASSERT_TRUE(s.Add(Request(2, Prompt(10), 5)).ok());
  ASSERT_TRUE(s.Add(Request(3, Prompt(10), 5)).ok());
  auto p1 = s.Schedule();
  ASSERT_TRUE(p1.has_value());
  // 1 decodes position 10; 2 and 3 compute position 9 into copies of block 2: all three are
  // one-token sequences over blocks 0 and 1.
  ASSERT_EQ(p1->cascade.size(), 1u);
  EXPECT_THAT(p1->cascade[0].members, ElementsAre(1, 2, 3));
  EXPECT_EQ(p1->cascade[0].block_begin, 0);
  EXPECT_EQ(p1->cascade[0].block_end, 2);
  ASSERT_TRUE(s.Update(*p1, Sampled(*p1, 42), {}).ok());
  auto p2 = s.Schedule();
  ASSERT_EQ(p2->cascade.size(), 1u);
  EXPECT_THAT(p2->cascade[0].members, ElementsAre(1, 2, 3));
}

}  // namespace
}  // namespace moemesh
