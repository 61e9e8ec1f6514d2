// The public API of a real local cluster: concurrency with mixed sampling, reproducible seeds,
// cancellation and deadlines that free KV blocks while other requests go on, input errors,
// admission limits, readiness, and a placement that cannot fit.
#include <future>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/reference/reference_engine.h"
#include "model/reference/reference_model.h"
#include "model/tokenizer/tokenizer.h"
#include "tests/golden/fixtures.h"
#include "tests/integration/client_util.h"
#include "tests/integration/local_cluster.h"

namespace moemesh {
namespace {

using ::testing::HasSubstr;
using testing::Complete;
using testing::Completion;
using testing::LocalCluster;

std::string Model() { return (testing::FixtureDir() / "models" / "qwen3_moe_f32").string(); }

// Polls ModelInfo until every KV block is free and nothing runs (cancels are applied between
// steps), up to a few seconds.
v1::ModelInfoResponse SettledInfo(v1::Generation::Stub& stub) {
  v1::ModelInfoResponse info;
  for (int i = 0; i < 200; ++i) {
    info = testing::Info(stub);
    if (info.kv_blocks_free() == info.kv_blocks_total() && info.requests_running() == 0 &&
        info.requests_waiting() == 0) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  return info;
}

class ClusterApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = LocalCluster::Serve(Model(), 3, 2).release();
    std::string error;
    ASSERT_TRUE(cluster_->WaitReady(std::chrono::seconds(120), &error)) << error;
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  v1::Generation::Stub& stub() { return cluster_->stub(); }

  static LocalCluster* cluster_;
};

LocalCluster* ClusterApi::cluster_ = nullptr;

TEST_F(ClusterApi, SixteenConcurrentMixedRequestsFinishAndSeedsReproduce) {
  // The reference engine decides what greedy requests must produce.
  LoadOptions quiet;
  quiet.show_progress = false;
  auto model = ReferenceModel::Load(Model(), quiet);
  ASSERT_TRUE(model.ok());
  std::vector<v1::GenerateRequest> requests;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 16; ++i) {
    std::vector<int32_t> prompt;
    for (int t = 0; t <= i % 7 + 2 * (i % 3); ++t) prompt.push_back((37 * i + 11 * t) % 500);
    prompts.push_back(prompt);
    v1::GenerateRequest r = testing::GreedyIds(prompt, 8 + (i * 5) % 23);
    if (i % 4 == 1) {  // seeded sampling
      r.mutable_sampling()->set_temperature(0.9f);
      r.mutable_sampling()->set_top_k(20);
      r.mutable_sampling()->set_seed(1000 + i);
    } else if (i % 4 == 2) {
      r.mutable_sampling()->set_temperature(1.3f);
      r.mutable_sampling()->set_top_p(0.8f);
      r.mutable_sampling()->set_min_p(0.05f);
      r.mutable_sampling()->set_repetition_penalty(1.2f);
      r.mutable_sampling()->set_frequency_penalty(0.5f);
      r.mutable_sampling()->set_seed(2000 + i);
      r.set_logprobs(3);
    }
    requests.push_back(r);
  }
  std::vector<std::future<Completion>> calls;
  for (const auto& r : requests) {
    calls.push_back(std::async(std::launch::async, [&, r] { return Complete(stub(), r); }));
  }
  std::vector<Completion> results;
  for (auto& c : calls) results.push_back(c.get());
  ReferenceEngine engine(**model, nullptr, {});
  for (int i = 0; i < 16; ++i) {
    const Completion& c = results[i];
    ASSERT_TRUE(c.status.ok()) << i << ": " << c.status.error_message();
    EXPECT_EQ(c.finish, v1::FINISH_REASON_LENGTH) << i;
    EXPECT_EQ(static_cast<int>(c.tokens.size()), requests[i].max_tokens()) << i;
    if (i % 4 == 0 || i % 4 == 3) {
      GenerationParams greedy;
      greedy.sampling.temperature = 0;
      greedy.max_tokens = requests[i].max_tokens();
      greedy.ignore_eos = true;
      auto want = GenerateAll(engine, {prompts[i]}, {greedy});
      ASSERT_TRUE(want.ok());
      EXPECT_EQ(c.tokens, (*want)[0].tokens) << "greedy request " << i;
    }
  }
  // Seeded requests alone give the tokens they gave among 15 others.
  for (int i : {1, 2, 5}) {
    Completion again = Complete(stub(), requests[i]);
    ASSERT_TRUE(again.status.ok());
    EXPECT_EQ(again.tokens, results[i].tokens) << "seeded request " << i;
  }
  // Different seeds differ somewhere.
  v1::GenerateRequest other = requests[1];
  other.mutable_sampling()->set_seed(77777);
  other.set_max_tokens(30);
  v1::GenerateRequest same = requests[1];
  same.set_max_tokens(30);
  EXPECT_NE(Complete(stub(), other).tokens, Complete(stub(), same).tokens);
  const v1::ModelInfoResponse info = SettledInfo(stub());
  EXPECT_EQ(info.kv_blocks_free(), info.kv_blocks_total());
}

TEST_F(ClusterApi, CancelAndDeadlineFreeBlocksWhileOthersGoOn) {
  const std::vector<int32_t> prompt = {5, 6, 7, 8, 9, 10, 11};
  const int longest = testing::Info(stub()).context_length() - static_cast<int>(prompt.size());
  // A long request cancelled by its client after its first tokens.
  auto cancelled = std::async(std::launch::async, [&] {
    grpc::ClientContext ctx;
    auto reader = stub().Generate(&ctx, testing::GreedyIds(prompt, longest));
    v1::GenerateResponse r;
    int tokens = 0;
    while (reader->Read(&r)) {
      tokens += r.tokens_size();
      if (tokens >= 3) ctx.TryCancel();
    }
    return reader->Finish();
  });
  // A long request whose deadline passes.
  auto deadline = std::async(std::launch::async, [&] {
    return Complete(stub(), testing::GreedyIds(prompt, longest), std::chrono::milliseconds(700));
  });
  // A normal request at the same time.
  const Completion normal = Complete(stub(), testing::GreedyIds(prompt, 20));
  EXPECT_TRUE(normal.status.ok()) << normal.status.error_message();
  EXPECT_EQ(normal.tokens.size(), 20u);
  EXPECT_EQ(cancelled.get().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(deadline.get().status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  const v1::ModelInfoResponse info = SettledInfo(stub());
  EXPECT_EQ(info.kv_blocks_free(), info.kv_blocks_total()) << "blocks of cancelled requests were not freed";
  EXPECT_EQ(info.requests_running(), 0);
  // And the cluster still answers.
  EXPECT_TRUE(Complete(stub(), testing::GreedyIds(prompt, 4)).status.ok());
}

TEST_F(ClusterApi, BadInputNamesTheFieldAndTheLimit) {
  const v1::ModelInfoResponse info = testing::Info(stub());
  auto expect_invalid = [&](v1::GenerateRequest r, const std::string& needle) {
    const Completion c = Complete(stub(), r);
    EXPECT_EQ(c.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << needle;
    EXPECT_THAT(c.status.error_message(), HasSubstr(needle));
  };
  v1::GenerateRequest empty;
  empty.set_text("");
  expect_invalid(empty, "prompt is empty");
  v1::GenerateRequest none;
  expect_invalid(none, "prompt: set either text or token_ids");
  expect_invalid(testing::GreedyIds(std::vector<int32_t>(info.context_length(), 1), 1),
                 "context length is " + std::to_string(info.context_length()));
  expect_invalid(testing::GreedyIds({1, 2}, info.context_length()), "max_tokens");
  v1::GenerateRequest hot = testing::GreedyIds({1, 2}, 4);
  hot.mutable_sampling()->set_temperature(-0.5f);
  expect_invalid(hot, "temperature");
  v1::GenerateRequest top_p = testing::GreedyIds({1, 2}, 4);
  top_p.mutable_sampling()->set_top_p(1.5f);
  expect_invalid(top_p, "top_p = 1.5 is outside (0, 1]");
  top_p.mutable_sampling()->set_top_p(0.0f);
  expect_invalid(top_p, "top_p");
  expect_invalid(testing::GreedyIds({1, info.vocab_size() + 5}, 4),
                 "= " + std::to_string(info.vocab_size() + 5) + " is outside the vocabulary");
  v1::GenerateRequest utf8;
  utf8.set_text(std::string("ok \xC3\x28 bad"));
  expect_invalid(utf8, "text:");
  // The cluster is unharmed.
  EXPECT_TRUE(Complete(stub(), testing::GreedyIds({1, 2}, 3)).status.ok());
}

TEST(ClusterAdmission, FullQueueGetsResourceExhausted) {
  // The demo model has a long context: its first request keeps the only running slot busy.
  const std::string demo = (testing::SourceDir() / "models" / "demo").string();
  auto cluster = LocalCluster::Serve(demo, 1, 1, {"--max_running=1", "--max_waiting=1", "--kv_blocks=1024"});
  std::string error;
  ASSERT_TRUE(cluster->WaitReady(std::chrono::seconds(120), &error)) << error;
  const int longest = 1500;
  grpc::ClientContext first_ctx, second_ctx;
  auto first = cluster->stub().Generate(&first_ctx, testing::GreedyIds({1, 2, 3}, longest));
  v1::GenerateResponse r;
  ASSERT_TRUE(first->Read(&r));  // running
  auto second = cluster->stub().Generate(&second_ctx, testing::GreedyIds({4, 5, 6}, longest));
  v1::ModelInfoResponse info;
  for (int i = 0; i < 400 && info.requests_waiting() < 1; ++i) {
    info = testing::Info(cluster->stub());
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(info.requests_waiting(), 1) << "the second request never queued";
  const Completion third = Complete(cluster->stub(), testing::GreedyIds({7}, 5));
  EXPECT_EQ(third.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(third.status.error_message(), HasSubstr("queue"));
  first_ctx.TryCancel();
  second_ctx.TryCancel();
  while (first->Read(&r)) {
  }
  while (second->Read(&r)) {
  }
  first->Finish();
  second->Finish();
  info = SettledInfo(cluster->stub());
  EXPECT_EQ(info.kv_blocks_free(), info.kv_blocks_total());
}

TEST(ClusterReadiness, RequestsBeforeTheWorkersAreReadyGetUnavailable) {
  // A coordinator that waits for workers nobody starts.
  auto coordinator = LocalCluster::Start({"coordinator", "--model=" + Model(), "--tp=1", "--expert_workers=1"});
  std::string error;
  ASSERT_TRUE(coordinator->WaitReady(std::chrono::seconds(60), &error)) << error;
  const Completion c = Complete(coordinator->stub(), testing::GreedyIds({1, 2}, 3));
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(c.status.error_message(), HasSubstr("waiting for 1 attention and 1 expert workers "
                                                 "to register (0 and 0 so far)"));
  // Still so after the coordinator's first slices of waiting.
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  const Completion later = Complete(coordinator->stub(), testing::GreedyIds({1, 2}, 3));
  EXPECT_THAT(later.status.error_message(), HasSubstr("(0 and 0 so far)"));
  EXPECT_FALSE(testing::Info(coordinator->stub()).ready());
}

TEST(ClusterPlacement, ARankThatCannotConfigureStopsTheClusterWithItsReason) {
  // The third attention worker asks for a CUDA device no host here has; the other two (CPU ranks)
  // load and wait for it in the rendezvous, up to the collectives' 120 s timeout unless the
  // coordinator stops first.
  auto cluster = LocalCluster::Serve(Model(), 3, 1, {"--gpus=-1,-1,7"});
  std::string error;
  EXPECT_FALSE(cluster->WaitReady(std::chrono::seconds(60), &error));
  EXPECT_THAT(error, HasSubstr("exited before it was ready"));
  // (Ranks follow the order of registration: the third worker started may be any rank.)
  EXPECT_THAT(error, ::testing::ContainsRegex("moemesh coordinator: [A-Z_]+: attention rank [0-2]: "
                                              "--gpu=7: "));
}

TEST(ClusterPlacement, ExpertsThatDoNotFitAreRefusedAtStart) {
  auto cluster = LocalCluster::Serve(Model(), 1, 2, {"--expert_memory_limit=4096"});
  std::string error;
  EXPECT_FALSE(cluster->WaitReady(std::chrono::seconds(120), &error));
  EXPECT_THAT(error, HasSubstr("routed experts need"));
  EXPECT_THAT(error, HasSubstr("offer"));
}

}  // namespace
}  // namespace moemesh
