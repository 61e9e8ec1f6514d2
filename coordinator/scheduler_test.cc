#include "coordinator/scheduler.h"

#include <cstdint>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

SchedulerRequest MakeRequest(uint64_t id, int prompt_len, int max_tokens) {
  SchedulerRequest r;
  r.id = id;
  for (int i = 0; i < prompt_len; ++i) r.prompt.push_back(static_cast<int32_t>(id * 1000 + i));
  r.sampling.seed = id;
  r.max_tokens = max_tokens;
  return r;
}

SampledToken Token(uint64_t id, int32_t token) {
  SampledToken t;
  t.id = id;
  t.sample.token = token;
  return t;
}

// One sampled token per sequence that asked for one.
StepResult Sampled(const StepPlan& plan, int32_t token) {
  StepResult result{.step = plan.step, .tokens = {}};
  for (const ScheduledSequence& s : plan.sequences) {
    if (s.sample) result.tokens.push_back(Token(s.id, token));
  }
  return result;
}

std::vector<uint64_t> Ids(const StepPlan& plan) {
  std::vector<uint64_t> ids;
  for (const ScheduledSequence& s : plan.sequences) ids.push_back(s.id);
  return ids;
}

TEST(SchedulerConfig, ValidateNamesTheField) {
  SchedulerConfig c;
  EXPECT_TRUE(c.Validate().ok());
  c.max_step_tokens = 0;
  EXPECT_EQ(c.Validate().message(), "max_step_tokens = 0 must be >= 1");
}

TEST(Scheduler, AddRejectsWhatCanNeverRun) {
  Scheduler s(SchedulerConfig{.block_size = 16, .num_blocks = 8, .context_length = 256});
  auto empty = s.Add(MakeRequest(1, 0, 4));
  EXPECT_EQ(empty.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(empty.message(), HasSubstr("prompt is empty"));
  EXPECT_THAT(s.Add(MakeRequest(1, 4, 0)).message(), HasSubstr("max_tokens = 0 must be >= 1"));
  SchedulerRequest unseeded = MakeRequest(1, 4, 4);
  unseeded.sampling.seed.reset();
  EXPECT_THAT(s.Add(unseeded).message(), HasSubstr("sampling.seed is unset"));
  SchedulerRequest bad_sampling = MakeRequest(1, 4, 4);
  bad_sampling.sampling.top_p = 2;
  EXPECT_EQ(s.Add(bad_sampling).code(), absl::StatusCode::kInvalidArgument);

  auto long_context = s.Add(MakeRequest(1, 200, 57));
  EXPECT_EQ(long_context.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(long_context.message(),
              HasSubstr("prompt (200 tokens) + max_tokens (57) = 257 exceeds context_length 256"));
  // 8 blocks of 16 hold 128 tokens; 100 + 29 caches at most 128 (the last sample is never fed
  // back), 100 + 30 caches 129.
  EXPECT_TRUE(s.Add(MakeRequest(2, 100, 29)).ok());  // 128 cached at most
  auto too_big = s.Add(MakeRequest(3, 100, 30));
  EXPECT_EQ(too_big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_big.message(), HasSubstr("needs 9 KV blocks of 16 tokens, the whole cache has 8"));
  EXPECT_EQ(s.Add(MakeRequest(2, 4, 4)).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(s.stats().waiting, 1);
}

TEST(Scheduler, FullQueueIsResourceExhausted) {
  Scheduler s(SchedulerConfig{.max_waiting = 2});
  ASSERT_TRUE(s.Add(MakeRequest(1, 4, 4)).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 4, 4)).ok());
  auto full = s.Add(MakeRequest(3, 4, 4));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(full.message(), "admission queue full: 2 requests waiting");
  // Running requests do not count against the queue.
  auto plan = s.Schedule();
  ASSERT_TRUE(plan.has_value());
  EXPECT_TRUE(s.Add(MakeRequest(3, 4, 4)).ok());
}

TEST(Scheduler, NothingToRunIsNullopt) {
  Scheduler s(SchedulerConfig{});
  EXPECT_FALSE(s.HasWork());
  EXPECT_FALSE(s.Schedule().has_value());
}

TEST(Scheduler, LongPromptIsChunkedThenDecodes) {
  Scheduler s(SchedulerConfig{.max_step_tokens = 32, .block_size = 16, .num_blocks = 16});
  ASSERT_TRUE(s.Add(MakeRequest(7, 100, 20)).ok());
  const int64_t starts[] = {0, 32, 64, 96};
  const size_t sizes[] = {32, 32, 32, 4};
  const std::vector<int32_t> blocks[] = {{0, 1}, {2, 3}, {4, 5}, {6}};
  for (int chunk = 0; chunk < 4; ++chunk) {
    auto plan = s.Schedule();
    ASSERT_TRUE(plan.has_value());
    EXPECT_EQ(plan->step, static_cast<uint64_t>(chunk));
    EXPECT_EQ(plan->new_requests.size(), chunk == 0 ? 1u : 0u);
    ASSERT_EQ(plan->sequences.size(), 1u);
    const ScheduledSequence& seq = plan->sequences[0];
    EXPECT_EQ(seq.start_position, starts[chunk]);
    ASSERT_EQ(seq.tokens.size(), sizes[chunk]);
    EXPECT_EQ(seq.tokens[0], 7000 + starts[chunk]);
    EXPECT_EQ(seq.new_blocks, blocks[chunk]);
    EXPECT_EQ(seq.sample, chunk == 3);
    ASSERT_TRUE(s.Update(*plan, Sampled(*plan, 55), {}).ok());
  }
  // Positions 100..111 fit in block 6; position 112 needs a new block.
  for (int64_t pos = 100; pos <= 112; ++pos) {
    auto plan = s.Schedule();
    ASSERT_TRUE(plan.has_value());
    ASSERT_EQ(plan->sequences.size(), 1u);
    const ScheduledSequence& seq = plan->sequences[0];
    EXPECT_EQ(seq.start_position, pos);
    EXPECT_THAT(seq.tokens, ElementsAre(55));
    EXPECT_TRUE(seq.sample);
    EXPECT_EQ(seq.new_blocks, pos == 112 ? std::vector<int32_t>{7} : std::vector<int32_t>{});
    ASSERT_TRUE(s.Update(*plan, Sampled(*plan, 55), {}).ok());
  }
  EXPECT_EQ(s.stats().kv_blocks_used, 8);
}

TEST(Scheduler, DecodesComeBeforeAdmissionsWithinTheBudget) {
  Scheduler s(SchedulerConfig{.max_step_tokens = 10, .max_running = 3});
  ASSERT_TRUE(s.Add(MakeRequest(1, 4, 50)).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 4, 50)).ok());
  auto first = s.Schedule();
  ASSERT_TRUE(first.has_value());
  EXPECT_THAT(Ids(*first), ElementsAre(1, 2));
  ASSERT_TRUE(s.Update(*first, Sampled(*first, 9), {}).ok());
  ASSERT_TRUE(s.Add(MakeRequest(3, 20, 50)).ok());
  ASSERT_TRUE(s.Add(MakeRequest(4, 4, 50)).ok());
  auto second = s.Schedule();
  ASSERT_TRUE(second.has_value());
  // Two decodes, then request 3 gets the 8 tokens left; request 4 waits (budget spent).
  ASSERT_THAT(Ids(*second), ElementsAre(1, 2, 3));
  EXPECT_EQ(second->sequences[2].tokens.size(), 8u);
  EXPECT_FALSE(second->sequences[2].sample);
  ASSERT_TRUE(s.Update(*second, Sampled(*second, 9), {}).ok());
  auto third = s.Schedule();
  ASSERT_TRUE(third.has_value());
  // max_running = 3 keeps request 4 waiting although budget is left.
  EXPECT_THAT(Ids(*third), ElementsAre(1, 2, 3));
  EXPECT_EQ(s.stats().running, 3);
  EXPECT_EQ(s.stats().waiting, 1);
}

TEST(Scheduler, FinishedFreeBlocksNowAndAreReportedInTheNextPlan) {
  Scheduler s(SchedulerConfig{.block_size = 4, .num_blocks = 8});
  ASSERT_TRUE(s.Add(MakeRequest(1, 6, 10)).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 3, 10)).ok());
  auto plan = s.Schedule();
  ASSERT_TRUE(plan.has_value());
  EXPECT_EQ(s.stats().kv_blocks_used, 3);
  const uint64_t done[] = {1};
  ASSERT_TRUE(s.Update(*plan, Sampled(*plan, 5), done).ok());
  EXPECT_EQ(s.stats().kv_blocks_used, 1);
  EXPECT_EQ(s.stats().running, 1);
  auto next = s.Schedule();
  ASSERT_TRUE(next.has_value());
  EXPECT_THAT(next->finished, ElementsAre(1));
  EXPECT_THAT(Ids(*next), ElementsAre(2));
  ASSERT_TRUE(s.Update(*next, Sampled(*next, 5), {}).ok());
  auto after = s.Schedule();
  ASSERT_TRUE(after.has_value());
  EXPECT_THAT(after->finished, IsEmpty());
}

TEST(Scheduler, MaxTokensFinishesEvenWhenTheCallerDoesNotSaySo) {
  Scheduler s(SchedulerConfig{});
  ASSERT_TRUE(s.Add(MakeRequest(1, 3, 2)).ok());
  for (int i = 0; i < 2; ++i) {
    auto plan = s.Schedule();
    ASSERT_TRUE(plan.has_value());
    ASSERT_TRUE(s.Update(*plan, Sampled(*plan, 5), {}).ok());
  }
  EXPECT_EQ(s.stats().running, 0);
  EXPECT_EQ(s.stats().kv_blocks_used, 0);
  auto last = s.Schedule();
  ASSERT_TRUE(last.has_value());
  EXPECT_THAT(last->finished, ElementsAre(1));
  EXPECT_THAT(last->sequences, IsEmpty());
  ASSERT_TRUE(s.Update(*last, StepResult{.step = last->step, .tokens = {}}, {}).ok());
  EXPECT_FALSE(s.HasWork());
  EXPECT_FALSE(s.Schedule().has_value());
}

TEST(Scheduler, PreemptsTheMostRecentAndRecomputesItOnReadmission) {
  // 4 blocks of 4 tokens: two 8-token prompts fill the cache. Without prefix caching, so the
  // victim recomputes everything (with it: scheduler_prefix_test.cc).
  Scheduler s(SchedulerConfig{.block_size = 4, .num_blocks = 4, .prefix_caching = false});
  ASSERT_TRUE(s.Add(MakeRequest(1, 8, 3)).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 8, 3)).ok());
  auto p0 = s.Schedule();
  ASSERT_TRUE(p0.has_value());
  EXPECT_THAT(Ids(*p0), ElementsAre(1, 2));
  ASSERT_TRUE(s.Update(*p0, Sampled(*p0, 41), {}).ok());
  EXPECT_EQ(s.stats().kv_blocks_free, 0);

  // Request 1's decode at position 8 needs a block: request 2 is preempted.
  auto p1 = s.Schedule();
  ASSERT_TRUE(p1.has_value());
  EXPECT_THAT(p1->finished, ElementsAre(2));
  EXPECT_THAT(Ids(*p1), ElementsAre(1));
  EXPECT_THAT(p1->new_requests, IsEmpty());  // no admission in a step that preempted
  EXPECT_EQ(p1->sequences[0].new_blocks, std::vector<int32_t>{2});  // 2's blocks 2, 3 freed
  EXPECT_EQ(s.stats().preemptions, 1u);
  EXPECT_EQ(s.stats().waiting, 1);
  ASSERT_TRUE(s.Update(*p1, Sampled(*p1, 42), {}).ok());

  // Request 2 needs 3 blocks for its 9 tokens; only 1 is free until request 1 finishes.
  auto p2 = s.Schedule();
  ASSERT_TRUE(p2.has_value());
  EXPECT_THAT(Ids(*p2), ElementsAre(1));
  ASSERT_TRUE(s.Update(*p2, Sampled(*p2, 43), {}).ok());  // request 1 reaches max_tokens

  auto p3 = s.Schedule();
  ASSERT_TRUE(p3.has_value());
  EXPECT_THAT(p3->finished, ElementsAre(1));
  ASSERT_EQ(p3->new_requests.size(), 1u);
  EXPECT_EQ(p3->new_requests[0].id, 2u);
  EXPECT_THAT(p3->new_requests[0].output, ElementsAre(41));
  ASSERT_EQ(p3->sequences.size(), 1u);
  const ScheduledSequence& seq = p3->sequences[0];
  EXPECT_EQ(seq.start_position, 0);
  ASSERT_EQ(seq.tokens.size(), 9u);  // prompt + the token sampled before preemption
  EXPECT_EQ(seq.tokens[7], 2007);
  EXPECT_EQ(seq.tokens[8], 41);
  EXPECT_TRUE(seq.sample);
  EXPECT_EQ(seq.new_blocks, (std::vector<int32_t>{0, 1, 2}));
}

TEST(Scheduler, TheMostRecentRequestPreemptsItself) {
  Scheduler s(SchedulerConfig{.block_size = 4, .num_blocks = 3});
  ASSERT_TRUE(s.Add(MakeRequest(1, 6, 3)).ok());  // 2 blocks, room until position 8
  ASSERT_TRUE(s.Add(MakeRequest(2, 4, 3)).ok());  // 1 block, full at position 4
  auto p0 = s.Schedule();
  ASSERT_TRUE(p0.has_value());
  ASSERT_TRUE(s.Update(*p0, Sampled(*p0, 1), {}).ok());
  auto p1 = s.Schedule();
  ASSERT_TRUE(p1.has_value());
  EXPECT_THAT(p1->finished, ElementsAre(2));
  EXPECT_THAT(Ids(*p1), ElementsAre(1));
  EXPECT_EQ(s.stats().kv_blocks_used, 2);
}

TEST(Scheduler, AdmissionIsFifo) {
  Scheduler s(SchedulerConfig{.max_running = 1});
  for (uint64_t id : {5, 3, 9}) ASSERT_TRUE(s.Add(MakeRequest(id, 2, 1)).ok());
  std::vector<uint64_t> admitted;
  for (int step = 0; step < 10 && s.HasWork(); ++step) {
    auto plan = s.Schedule();
    ASSERT_TRUE(plan.has_value());
    for (const NewRequest& r : plan->new_requests) admitted.push_back(r.id);
    ASSERT_TRUE(s.Update(*plan, Sampled(*plan, 0), {}).ok());
  }
  EXPECT_FALSE(s.HasWork());
  EXPECT_THAT(admitted, ElementsAre(5, 3, 9));
}

TEST(Scheduler, AbortWaitingAndRunning) {
  Scheduler s(SchedulerConfig{.max_running = 1, .block_size = 4});
  ASSERT_TRUE(s.Add(MakeRequest(1, 9, 8)).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 4, 8)).ok());
  auto p0 = s.Schedule();
  ASSERT_TRUE(p0.has_value());
  EXPECT_EQ(s.stats().kv_blocks_used, 3);
  ASSERT_TRUE(s.Update(*p0, Sampled(*p0, 3), {}).ok());

  EXPECT_FALSE(s.Abort(77));
  EXPECT_TRUE(s.Abort(2));  // waiting: workers never saw it
  EXPECT_EQ(s.stats().waiting, 0);
  EXPECT_TRUE(s.Abort(1));  // running
  EXPECT_FALSE(s.Abort(1));
  EXPECT_EQ(s.stats().kv_blocks_used, 0);
  EXPECT_EQ(s.stats().running, 0);
  auto p1 = s.Schedule();
  ASSERT_TRUE(p1.has_value());
  EXPECT_THAT(p1->finished, ElementsAre(1));
  EXPECT_THAT(p1->sequences, IsEmpty());
}

TEST(Scheduler, AbortWhileAStepIsInFlightIgnoresItsToken) {
  Scheduler s(SchedulerConfig{});
  ASSERT_TRUE(s.Add(MakeRequest(1, 4, 8)).ok());
  ASSERT_TRUE(s.Add(MakeRequest(2, 4, 8)).ok());
  auto p0 = s.Schedule();
  ASSERT_TRUE(p0.has_value());
  EXPECT_TRUE(s.Abort(1));
  ASSERT_TRUE(s.Update(*p0, Sampled(*p0, 3), {}).ok());
  auto p1 = s.Schedule();
  ASSERT_TRUE(p1.has_value());
  EXPECT_THAT(p1->finished, ElementsAre(1));
  EXPECT_THAT(Ids(*p1), ElementsAre(2));
}

TEST(Scheduler, ResultThatDoesNotMatchThePlanIsInternal) {
  Scheduler s(SchedulerConfig{});
  ASSERT_TRUE(s.Add(MakeRequest(1, 4, 8)).ok());
  auto p0 = s.Schedule();
  ASSERT_TRUE(p0.has_value());
  auto missing = s.Update(*p0, StepResult{.step = p0->step, .tokens = {}}, {});
  EXPECT_EQ(missing.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(missing.message(), HasSubstr("no token for request 1"));
  ASSERT_TRUE(s.Abort(1));

  ASSERT_TRUE(s.Add(MakeRequest(2, 4, 8)).ok());
  auto p1 = s.Schedule();
  ASSERT_TRUE(p1.has_value());
  StepResult extra = Sampled(*p1, 3);
  extra.tokens.push_back(Token(9, 3));
  auto unexpected = s.Update(*p1, extra, {});
  EXPECT_EQ(unexpected.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(unexpected.message(), HasSubstr("request 9 was not scheduled to sample"));
}

TEST(Scheduler, ScheduleBeforeUpdateIsABrokenInvariant) {
  Scheduler s(SchedulerConfig{});
  ASSERT_TRUE(s.Add(MakeRequest(1, 4, 8)).ok());
  ASSERT_TRUE(s.Schedule().has_value());
  EXPECT_DEATH(s.Schedule(), "check failed");
}

}  // namespace
}  // namespace moemesh
