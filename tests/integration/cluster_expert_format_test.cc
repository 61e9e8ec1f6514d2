// The expert workers' weight formats end to end (`moemesh serve --expert_format F`): bf16 experts
// give the reference engine's greedy tokens on every fixture (TP 1, 2 expert workers); a
// quantized format (int8-g32) serves sane output; a bad format is refused with a clear error.
// Fixtures stored in f32 change when their experts are rounded to bf16 (their greedy logit gaps
// are ~0.01), so the reference there is the engine run with bf16-rounded experts; on fixtures
// stored in bf16 that is the fixture's own reference.json, which the test checks too.
#include <future>

#include "common/dtype.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "model/arch/model_config.h"
#include "model/reference/reference_engine.h"
#include "model/reference/reference_model.h"
#include "model/io/weight_source.h"
#include "tests/golden/fixtures.h"
#include "tests/integration/client_util.h"
#include "tests/integration/local_cluster.h"
#include "tests/integration/reference_tokens.h"

namespace moemesh {
namespace {

// Greedy tokens of the reference engine with every routed expert's weights rounded to bf16.
std::vector<std::vector<int32_t>> ReferenceWithBf16Experts(const std::filesystem::path& model,
                                                           const std::vector<std::vector<int32_t>>& prompts,
                                                           int max_tokens) {
  auto round_experts = [](ModelWeights& w) {
    for (LayerWeights& lw : w.layers) {
      for (FfnWeights& f : lw.experts) {
        for (Matrix* m : {&f.gate, &f.up, &f.down}) {
          for (float& v : m->data) v = Bf16ToF32(F32ToBf16(v));
        }
      }
    }
  };
  return testing::ReferenceGreedy(model, prompts, max_tokens, round_experts, /*bf16_kv_cache=*/false);
}

class Bf16Experts : public ::testing::TestWithParam<std::filesystem::path> {};

TEST_P(Bf16Experts, GreedyTokensMatchTheReference) {
  const std::filesystem::path model = GetParam();
  auto cluster = testing::LocalCluster::Serve(model.string(), 1, 2, {"--expert_format=bf16"});
  std::string error;
  ASSERT_TRUE(cluster->WaitReady(std::chrono::seconds(120), &error)) << error;
  const auto reference = testing::ReadJson(model / "reference.json");
  std::vector<std::future<testing::Completion>> calls;
  std::vector<std::vector<int32_t>> prompts, fixture_outputs;
  for (const auto& g : reference["greedy"]) {
    prompts.push_back(g["prompt_ids"].get<std::vector<int32_t>>());
    fixture_outputs.push_back(g["output_ids"].get<std::vector<int32_t>>());
    const auto request = testing::GreedyIds(prompts.back(), static_cast<int>(fixture_outputs.back().size()));
    calls.push_back(std::async(std::launch::async, [&, request] { return testing::Complete(cluster->stub(), request); }));
  }
  ASSERT_GE(calls.size(), 3u);
  const std::vector<std::vector<int32_t>> expected =
      ReferenceWithBf16Experts(model, prompts, static_cast<int>(fixture_outputs[0].size()));
  if (reference["weights_dtype"] == "bfloat16") {
    EXPECT_EQ(expected, fixture_outputs) << "bf16 rounding is exact here";
  }
  for (size_t i = 0; i < calls.size(); ++i) {
    testing::Completion got = calls[i].get();
    ASSERT_TRUE(got.status.ok()) << got.status.error_message() << "\n" << cluster->Log();
    EXPECT_EQ(got.tokens, expected[i]) << "prompt " << i;
    EXPECT_EQ(got.finish, v1::FINISH_REASON_LENGTH);
  }
  // The expert workers loaded packed bf16 experts and reported their resident memory.
  const std::string log = cluster->Log();
  EXPECT_NE(log.find("packed as bf16"), std::string::npos) << log;
  EXPECT_NE(log.find("resident memory"), std::string::npos) << log;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Bf16Experts, ::testing::ValuesIn(testing::ModelFixtures()),
                         [](const auto& info) { return info.param.filename().string(); });

TEST(QuantizedExperts, Int8G32ServesSaneOutput) {
  const std::filesystem::path model = testing::FixtureDir() / "models" / "qwen3_moe_f32";
  auto config = LoadModelConfig(model.string());
  ASSERT_TRUE(config.ok()) << config.status();
  auto cluster = testing::LocalCluster::Serve(model.string(), 1, 2, {"--expert_format=int8-g32"});
  std::string error;
  ASSERT_TRUE(cluster->WaitReady(std::chrono::seconds(120), &error)) << error;
  const auto reference = testing::ReadJson(model / "reference.json");
  for (const auto& g : reference["greedy"]) {
    const testing::Completion got = testing::Complete(
        cluster->stub(), testing::GreedyIds(g["prompt_ids"].get<std::vector<int32_t>>(), 12));
    ASSERT_TRUE(got.status.ok()) << got.status.error_message() << "\n" << cluster->Log();
    EXPECT_EQ(got.finish, v1::FINISH_REASON_LENGTH);
    ASSERT_EQ(got.tokens.size(), 12u);
    for (int32_t t : got.tokens) {
      EXPECT_GE(t, 0);
      EXPECT_LT(t, config->vocab_size);
    }
  }
  EXPECT_NE(cluster->Log().find("packed as int8-g32"), std::string::npos) << cluster->Log();
}

TEST(QuantizedExperts, UnknownFormatIsRefused) {
  const std::filesystem::path model = testing::FixtureDir() / "models" / "qwen3_moe_f32";
  auto cluster = testing::LocalCluster::Serve(model.string(), 1, 1, {"--expert_format=int3-g32"});
  EXPECT_EQ(cluster->WaitExit(std::chrono::seconds(30)), 2);
  EXPECT_NE(cluster->Log().find("--expert_format: expert weight format \"int3-g32\" is not one of bf16, "
                                "int8-g32, int8-g128, int4-g32, int4-g128, fp32"),
            std::string::npos)
      << cluster->Log();
}

}  // namespace
}  // namespace moemesh
