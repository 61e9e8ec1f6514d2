// The reference engine against Hugging Face transformers: logits at every position of several
// prompts, and 40-token greedy continuations, for every committed fixture model.
#include <algorithm>
#include <cmath>

#include "gtest/gtest.h"
#include "model/reference/reference_engine.h"
#include "model/reference/reference_model.h"
#include "model/tokenizer/tokenizer.h"
#include "tests/golden/fixtures.h"

namespace moemesh {
namespace {

// fp32 math on both sides; only summation order differs. Logits of these models are O(1-10).
constexpr double kAbsTol = 1e-4;
constexpr double kRelTol = 1e-4;

class ReferenceGolden : public ::testing::TestWithParam<std::filesystem::path> {
 protected:
  void SetUp() override {
    LoadOptions options;
    options.show_progress = false;
    auto m = ReferenceModel::Load(GetParam().string(), options);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
    reference_ = testing::ReadJson(GetParam() / "reference.json");
  }

  std::unique_ptr<ReferenceModel> model_;
  nlohmann::json reference_;
};

TEST_P(ReferenceGolden, LogitsMatchTransformers) {
  const int vocab = model_->config().vocab_size;
  ASSERT_FALSE(reference_["prompts"].empty());
  double worst = 0;
  for (const auto& prompt : reference_["prompts"]) {
    const std::vector<int32_t> ids = prompt["ids"].get<std::vector<int32_t>>();
    SequenceCache cache = model_->NewCache();
    BatchEntry entry{&cache, ids, /*all_logits=*/true};
    auto logits = model_->Forward(absl::MakeSpan(&entry, 1));
    ASSERT_TRUE(logits.ok()) << logits.status();
    const auto& expected = prompt["logits"];
    ASSERT_EQ(expected.size(), ids.size());
    for (size_t t = 0; t < ids.size(); ++t) {
      ASSERT_EQ(expected[t].size(), static_cast<size_t>(vocab));
      for (int v = 0; v < vocab; ++v) {
        const double want = expected[t][v].get<double>();
        const double got = (*logits)[0][t * vocab + v];
        const double err = std::abs(got - want);
        worst = std::max(worst, err);
        ASSERT_LE(err, kAbsTol + kRelTol * std::abs(want))
            << "position " << t << " token " << v << " of prompt \"" << prompt["text"] << "\"";
      }
    }
  }
  RecordProperty("max_abs_logit_error", std::to_string(worst));
}

TEST_P(ReferenceGolden, BatchedGreedyMatchesTransformers) {
  std::vector<std::vector<int32_t>> prompts, expected;
  for (const auto& g : reference_["greedy"]) {
    prompts.push_back(g["prompt_ids"].get<std::vector<int32_t>>());
    expected.push_back(g["output_ids"].get<std::vector<int32_t>>());
  }
  ASSERT_GE(prompts.size(), 3u);
  GenerationParams params;
  params.sampling.temperature = 0;
  params.max_tokens = static_cast<int32_t>(expected[0].size());
  params.ignore_eos = true;
  ReferenceEngine engine(*model_, nullptr, {});
  // All prompts together: different lengths prefill and decode in the same batches.
  auto results = GenerateAll(engine, prompts, std::vector<GenerationParams>(prompts.size(), params));
  ASSERT_TRUE(results.ok()) << results.status();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_GE(expected[i].size(), 32u);
    EXPECT_EQ((*results)[i].tokens, expected[i]) << "greedy prompt " << i;
    EXPECT_EQ((*results)[i].finish, FinishReason::kLength);
  }
}

TEST_P(ReferenceGolden, TokenizerEncodesPromptsLikeTransformers) {
  auto tok = Tokenizer::FromFile((GetParam() / "tokenizer.json").string());
  ASSERT_TRUE(tok.ok()) << tok.status();
  for (const auto& prompt : reference_["prompts"]) {
    auto ids = (*tok)->Encode(prompt["text"].get<std::string>());
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, prompt["ids"].get<std::vector<int32_t>>()) << prompt["text"];
  }
}

std::string Name(const ::testing::TestParamInfo<std::filesystem::path>& info) {
  return info.param.filename().string();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ReferenceGolden, ::testing::ValuesIn(testing::ModelFixtures()), Name);

TEST(ReferenceGoldenFixtures, EveryArchitectureInBothDtypesIsPresent) {
  const auto dirs = testing::ModelFixtures();
  std::set<std::string> names;
  for (const auto& d : dirs) names.insert(d.filename().string());
  for (const char* arch : {"qwen3_moe", "mixtral", "qwen2_moe", "olmoe"}) {
    for (const char* dtype : {"_f32", "_bf16"}) {
      EXPECT_TRUE(names.count(std::string(arch) + dtype)) << "missing fixture " << arch << dtype
                                                          << " under " << testing::FixtureDir();
    }
  }
  EXPECT_TRUE(names.count("qwen3_moe_sharded"));
  EXPECT_TRUE(names.count("qwen3_moe_fused"));
}

}  // namespace
}  // namespace moemesh
