// Prefix caching and cascade decoding through real `moemesh serve` clusters: requests sharing a
// prompt prefix of more than two KV blocks give the reference engine's greedy tokens with cascade
// forced on and with it off, on every fixture model; a repeated prompt reports its cached tokens;
// a KV pool too small to keep every prefix evicts (and preempts) and still gives the same tokens.
#include <future>
#include <map>

#include "gtest/gtest.h"
#include "model/reference/reference_engine.h"
#include "model/reference/reference_model.h"
#include "tests/golden/fixtures.h"
#include "tests/integration/client_util.h"
#include "tests/integration/local_cluster.h"

namespace moemesh {
namespace {

using testing::Complete;
using testing::Completion;
using testing::LocalCluster;

// The reference engine's greedy continuations of `prompts`, one at a time.
std::vector<std::vector<int32_t>> ReferenceTokens(const std::filesystem::path& model,
                                                  const std::vector<std::vector<int32_t>>& prompts,
                                                  int max_tokens) {
  auto loaded = ReferenceModel::Load(model.string(), LoadOptions{.show_progress = false});
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  if (!loaded.ok()) return {};
  ReferenceEngine engine(**loaded, nullptr, {});
  std::vector<std::vector<int32_t>> out;
  for (const auto& prompt : prompts) {
    GenerationParams greedy;
    greedy.sampling.temperature = 0;
    greedy.max_tokens = max_tokens;
    greedy.ignore_eos = true;
    auto got = GenerateAll(engine, {prompt}, {greedy});
    EXPECT_TRUE(got.ok()) << got.status();
    out.push_back(got.ok() ? (*got)[0].tokens : std::vector<int32_t>{});
  }
  return out;
}

std::vector<int32_t> Tokens(int n, int32_t seed, int32_t vocab) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i)
    t.push_back(static_cast<int32_t>((seed * 131 + i * 37 + 11) % std::min(vocab, 400)));
  return t;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Polls ModelInfo until nothing runs and every block is free again (cancels and finishes apply
// between steps).
v1::ModelInfoResponse Settled(v1::Generation::Stub& stub) {
  v1::ModelInfoResponse info;
  for (int i = 0; i < 200; ++i) {
    info = testing::Info(stub);
    if (info.requests_running() == 0 && info.requests_waiting() == 0 &&
        info.kv_blocks_free() == info.kv_blocks_total()) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  return info;
}

struct PrefixCase {
  std::filesystem::path model;
  bool cascade;
  int tp;
};

std::vector<PrefixCase> Cases() {
  std::vector<PrefixCase> cases;
  for (const auto& dir : testing::ModelFixtures()) {
    auto config = LoadModelConfig(dir.string());
    if (!config.ok()) continue;
    // Cascade on at the smallest TP > 1 the heads allow (TP 1 if none), off at TP 1.
    int tp = 1;
    for (int t = 2; t <= config->num_heads && tp == 1; ++t) {
      if (config->num_heads % t == 0 &&
          (config->num_kv_heads % t == 0 || t % config->num_kv_heads == 0)) {
        tp = t;
      }
    }
    cases.push_back({dir, true, tp});
    cases.push_back({dir, false, 1});
  }
  return cases;
}

class ClusterPrefix : public ::testing::TestWithParam<PrefixCase> {};

// Block size 4: a shared prefix of 14 tokens is 3 full blocks and half of a fourth.
TEST_P(ClusterPrefix, SharedPrefixesGiveTheReferenceTokensAndReportCachedTokens) {
  const PrefixCase c = GetParam();
  auto config = LoadModelConfig(c.model.string());
  ASSERT_TRUE(config.ok()) << config.status();
  const auto reference = testing::ReadJson(c.model / "reference.json");
  const std::string format = reference["weights_dtype"] == "bfloat16" ? "bf16" : "fp32";
  const int32_t vocab = config->vocab_size;
  const std::vector<int32_t> shared = Tokens(14, 1, vocab);
  std::vector<std::vector<int32_t>> prompts = {shared};  // the warm-up, repeated below
  for (int i = 0; i < 4; ++i) prompts.push_back(Concat(shared, Tokens(1 + i, 10 + i, vocab)));
  prompts.push_back(
      Concat(std::vector<int32_t>(shared.begin(), shared.begin() + 9), Tokens(6, 99, vocab)));
  const int max_tokens = 10;
  const auto expected = ReferenceTokens(c.model, prompts, max_tokens);
  ASSERT_EQ(expected.size(), prompts.size());

  auto cluster = LocalCluster::Serve(
      c.model.string(), c.tp, 1,
      {"--expert_format=" + format, std::string("--cascade=") + (c.cascade ? "on" : "off")});
  std::string error;
  ASSERT_TRUE(cluster->WaitReady(std::chrono::seconds(120), &error)) << error;

  // Warm-up: nothing cached yet.
  const Completion warm = Complete(cluster->stub(), testing::GreedyIds(prompts[0], max_tokens));
  ASSERT_TRUE(warm.status.ok()) << warm.status.error_message() << "\n" << cluster->Log();
  EXPECT_EQ(warm.tokens, expected[0]) << "warm-up";
  EXPECT_EQ(warm.usage.cached_tokens(), 0);

  // Five requests at once on the cached prefix (the last one diverges inside its third block),
  // plus the warm-up prompt again: shared blocks, copies of partly shared ones, cascade levels.
  std::vector<std::future<Completion>> calls;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto request = testing::GreedyIds(prompts[i], max_tokens);
    calls.push_back(std::async(std::launch::async,
                               [&, request] { return Complete(cluster->stub(), request); }));
  }
  for (size_t i = 0; i < calls.size(); ++i) {
    const Completion got = calls[i].get();
    ASSERT_TRUE(got.status.ok()) << got.status.error_message() << "\n" << cluster->Log();
    EXPECT_EQ(got.tokens, expected[i]) << "prompt " << i << "\n" << cluster->Log();
    EXPECT_GE(got.usage.cached_tokens(), i == prompts.size() - 1 ? 9 : 13) << "prompt " << i;
    EXPECT_LT(got.usage.cached_tokens(), static_cast<int>(prompts[i].size())) << "prompt " << i;
  }

  // The warm-up prompt alone again: every prompt token but the last is cached.
  const Completion again = Complete(cluster->stub(), testing::GreedyIds(prompts[0], max_tokens));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.tokens, expected[0]) << "repeated prompt";
  EXPECT_EQ(again.usage.cached_tokens(), static_cast<int>(prompts[0].size()) - 1);
  EXPECT_EQ(again.usage.prompt_tokens(), static_cast<int>(prompts[0].size()));

  const v1::ModelInfoResponse info = Settled(cluster->stub());
  EXPECT_EQ(info.kv_blocks_free(), info.kv_blocks_total()) << "KV blocks leaked";
  EXPECT_GT(info.kv_blocks_cached(), 0);
  if (c.cascade) {
    EXPECT_GT(info.cascade_levels(), 0u) << "no cascade level ran";
  } else {
    EXPECT_EQ(info.cascade_levels(), 0u);
  }
}

std::string Name(const ::testing::TestParamInfo<PrefixCase>& info) {
  return info.param.model.filename().string() + (info.param.cascade ? "_cascade_tp" : "_flat_tp") +
         std::to_string(info.param.tp);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ClusterPrefix, ::testing::ValuesIn(Cases()), Name);

// 24 blocks of 4 tokens. Eight requests share an 8-token system prompt (2 blocks) and each
// needs 4 more blocks for its 23 positions: 34 blocks in all, so the oldest cached blocks are
// evicted. Then all eight at once with 40 new tokens each (53 positions, 12 private blocks):
// any two that overlap need 26 blocks, so they preempt each other however the eight calls are
// spread in time; tokens still equal the reference engine's.
TEST(ClusterPrefixEviction, SmallPoolEvictsAndPreemptsWithTheSameTokens) {
  const auto model = testing::FixtureDir() / "models" / "qwen3_moe_f32";
  auto config = LoadModelConfig(model.string());
  ASSERT_TRUE(config.ok());
  const std::vector<int32_t> system = Tokens(8, 3, config->vocab_size);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 8; ++i)
    prompts.push_back(Concat(system, Tokens(6, 50 + i, config->vocab_size)));
  const int max_tokens = 10;
  const auto expected = ReferenceTokens(model, prompts, max_tokens);
  ASSERT_EQ(expected.size(), prompts.size());
  auto cluster = LocalCluster::Serve(model.string(), 1, 1,
                                     {"--expert_format=fp32", "--kv_blocks=24", "--cascade=on"});
  std::string error;
  ASSERT_TRUE(cluster->WaitReady(std::chrono::seconds(120), &error)) << error;

  // One after another: the shared 8 tokens are reused, the oldest private blocks evicted.
  for (size_t i = 0; i < prompts.size(); ++i) {
    const Completion got = Complete(cluster->stub(), testing::GreedyIds(prompts[i], max_tokens));
    ASSERT_TRUE(got.status.ok()) << got.status.error_message() << "\n" << cluster->Log();
    EXPECT_EQ(got.tokens, expected[i]) << "sequential " << i;
    EXPECT_EQ(got.usage.cached_tokens(), i == 0 ? 0 : 8) << "sequential " << i;
    EXPECT_LE(testing::Info(cluster->stub()).kv_blocks_cached(), 24);
  }
  // The first prompt's own blocks were the least recently used: not all of them survived.
  const Completion first = Complete(cluster->stub(), testing::GreedyIds(prompts[0], max_tokens));
  ASSERT_TRUE(first.status.ok());
  EXPECT_EQ(first.tokens, expected[0]);
  EXPECT_GE(first.usage.cached_tokens(), 8);
  EXPECT_LT(first.usage.cached_tokens(), static_cast<int>(prompts[0].size()) - 1)
      << "nothing was evicted";

  // All eight at once, longer: no two fit together, so some are preempted and recomputed.
  const int long_tokens = 40;
  const auto expected_long = ReferenceTokens(model, prompts, long_tokens);
  ASSERT_EQ(expected_long.size(), prompts.size());
  std::vector<std::future<Completion>> calls;
  for (const auto& prompt : prompts) {
    const auto request = testing::GreedyIds(prompt, long_tokens);
    calls.push_back(std::async(std::launch::async,
                               [&, request] { return Complete(cluster->stub(), request); }));
  }
  for (size_t i = 0; i < calls.size(); ++i) {
    const Completion got = calls[i].get();
    ASSERT_TRUE(got.status.ok()) << got.status.error_message() << "\n" << cluster->Log();
    EXPECT_EQ(got.tokens, expected_long[i]) << "concurrent " << i << "\n" << cluster->Log();
  }
  const v1::ModelInfoResponse info = Settled(cluster->stub());
  EXPECT_GT(info.preemptions(), 0u);
  EXPECT_EQ(info.kv_blocks_free(), info.kv_blocks_total());
  EXPECT_LE(info.kv_blocks_cached(), info.kv_blocks_total());
}

}  // namespace
}  // namespace moemesh
