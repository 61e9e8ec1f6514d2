// Step plans and results survive the wire form (cluster.proto) field by field, including prefix
// blocks, block copies and cascade levels, and through serialized bytes.
#include "rpc/plan_codec.h"

#include <string>

#include "gtest/gtest.h"

namespace moemesh {
namespace {

StepPlan FullPlan() {
  StepPlan plan;
  plan.step = 987654321012ull;
  NewRequest a;
  a.id = 7;
  a.prompt = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  a.output = {11, 12};
  a.sampling.temperature = 0.7f;
  a.sampling.top_k = 40;
  a.sampling.top_p = 0.9f;
  a.sampling.min_p = 0.05f;
  a.sampling.repetition_penalty = 1.1f;
  a.sampling.presence_penalty = -0.5f;
  a.sampling.frequency_penalty = 0.25f;
  a.sampling.seed = 0xFFFFFFFFFFFFull;
  a.sampling.logprobs = 3;
  a.prefix_blocks = {40, 41, 99};
  a.prefix_tokens = 10;
  NewRequest b;
  b.id = 8;
  b.prompt = {5};
  b.sampling.seed = 1;
  plan.new_requests = {a, b};
  ScheduledSequence s1;
  s1.id = 7;
  s1.tokens = {12};
  s1.start_position = 10;
  s1.new_blocks = {};
  s1.sample = true;
  ScheduledSequence s2;
  s2.id = 8;
  s2.tokens = {5};
  s2.new_blocks = {3};
  ScheduledSequence s3;
  s3.id = 3;
  s3.tokens = {77};
  s3.start_position = 300;
  s3.new_blocks = {12};
  s3.sample = true;
  plan.sequences = {s1, s2, s3};
  plan.finished = {2, 1ull << 40};
  plan.block_copies = {{17, 99}, {0, 5}};
  plan.cascade = {CascadeLevel{.members = {7, 3}, .block_begin = 0, .block_end = 2},
                  CascadeLevel{.members = {3, 7}, .block_begin = 2, .block_end = 3}};
  return plan;
}

void ExpectSamePlan(const StepPlan& got, const StepPlan& want) {
  EXPECT_EQ(got.step, want.step);
  ASSERT_EQ(got.new_requests.size(), want.new_requests.size());
  for (size_t i = 0; i < want.new_requests.size(); ++i) {
    SCOPED_TRACE("new request " + std::to_string(i));
    const NewRequest& g = got.new_requests[i];
    const NewRequest& w = want.new_requests[i];
    EXPECT_EQ(g.id, w.id);
    EXPECT_EQ(g.prompt, w.prompt);
    EXPECT_EQ(g.output, w.output);
    EXPECT_EQ(g.prefix_blocks, w.prefix_blocks);
    EXPECT_EQ(g.prefix_tokens, w.prefix_tokens);
    EXPECT_EQ(g.sampling.temperature, w.sampling.temperature);
    EXPECT_EQ(g.sampling.top_k, w.sampling.top_k);
    EXPECT_EQ(g.sampling.top_p, w.sampling.top_p);
    EXPECT_EQ(g.sampling.min_p, w.sampling.min_p);
    EXPECT_EQ(g.sampling.repetition_penalty, w.sampling.repetition_penalty);
    EXPECT_EQ(g.sampling.presence_penalty, w.sampling.presence_penalty);
    EXPECT_EQ(g.sampling.frequency_penalty, w.sampling.frequency_penalty);
    EXPECT_EQ(g.sampling.seed, w.sampling.seed);
    EXPECT_EQ(g.sampling.logprobs, w.sampling.logprobs);
  }
  ASSERT_EQ(got.sequences.size(), want.sequences.size());
  for (size_t i = 0; i < want.sequences.size(); ++i) {
    SCOPED_TRACE("sequence " + std::to_string(i));
    EXPECT_EQ(got.sequences[i].id, want.sequences[i].id);
    EXPECT_EQ(got.sequences[i].tokens, want.sequences[i].tokens);
    EXPECT_EQ(got.sequences[i].start_position, want.sequences[i].start_position);
    EXPECT_EQ(got.sequences[i].new_blocks, want.sequences[i].new_blocks);
    EXPECT_EQ(got.sequences[i].sample, want.sequences[i].sample);
  }
  EXPECT_EQ(got.finished, want.finished);
  ASSERT_EQ(got.block_copies.size(), want.block_copies.size());
  for (size_t i = 0; i < want.block_copies.size(); ++i) {
    EXPECT_EQ(got.block_copies[i].src, want.block_copies[i].src) << "copy " << i;
    EXPECT_EQ(got.block_copies[i].dst, want.block_copies[i].dst) << "copy " << i;
  }
  ASSERT_EQ(got.cascade.size(), want.cascade.size());
  for (size_t i = 0; i < want.cascade.size(); ++i) {
    EXPECT_EQ(got.cascade[i].members, want.cascade[i].members) << "level " << i;
    EXPECT_EQ(got.cascade[i].block_begin, want.cascade[i].block_begin) << "level " << i;
    EXPECT_EQ(got.cascade[i].block_end, want.cascade[i].block_end) << "level " << i;
  }
}

TEST(PlanCodec, PlanRoundTripsThroughBytes) {
  const StepPlan plan = FullPlan();
  v1::StepPlanMsg msg;
  EncodePlan(plan, &msg);
  std::string bytes;
  ASSERT_TRUE(msg.SerializeToString(&bytes));
  v1::StepPlanMsg parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  ExpectSamePlan(DecodePlan(parsed), plan);
}

TEST(PlanCodec, EmptyPlanStaysEmpty) {
  v1::StepPlanMsg msg;
  EncodePlan(StepPlan{}, &msg);
  const StepPlan back = DecodePlan(msg);
  ExpectSamePlan(back, StepPlan{});
  EXPECT_TRUE(back.block_copies.empty());
  EXPECT_TRUE(back.cascade.empty());
}

TEST(PlanCodec, ResultRoundTrips) {
  StepResult result;
  result.step = 42;
  SampledToken t;
  t.id = 9;
  t.sample.token = 123;
  t.sample.logprob = -0.75f;
  t.sample.top = {{123, -0.75f}, {5, -1.5f}};
  SampledToken u;
  u.id = 10;
  u.sample.token = 4;
  result.tokens = {t, u};
  v1::StepResultMsg msg;
  EncodeResult(result, &msg);
  const StepResult back = DecodeResult(msg);
  EXPECT_EQ(back.step, 42u);
  ASSERT_EQ(back.tokens.size(), 2u);
  EXPECT_EQ(back.tokens[0].id, 9u);
  EXPECT_EQ(back.tokens[0].sample.token, 123);
  EXPECT_EQ(back.tokens[0].sample.logprob, -0.75f);
  ASSERT_EQ(back.tokens[0].sample.top.size(), 2u);
  EXPECT_EQ(back.tokens[0].sample.top[1].token, 5);
  EXPECT_EQ(back.tokens[0].sample.top[1].logprob, -1.5f);
  EXPECT_EQ(back.tokens[1].id, 10u);
  EXPECT_EQ(back.tokens[1].sample.token, 4);
}

}  // namespace
}  // namespace moemesh
