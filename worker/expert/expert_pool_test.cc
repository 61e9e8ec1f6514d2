#include "worker/expert/expert_pool.h"

#include <cmath>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "model/io/weight_source.h"
#include "worker/expert/expert_test_util.h"
#include "worker/expert/local_expert_client.h"

namespace moemesh {
namespace {

using ::moemesh::testing::ExpertFixtureDir;
using ::moemesh::testing::IndependentExpertSum;
using ::moemesh::testing::MakeRandomBatch;
using ::moemesh::testing::RandomBatch;
using ::testing::HasSubstr;

struct Fixture {
  ModelConfig config;
  ModelWeights weights;  // everything, for the independent computation
};

const Fixture& LoadFixture() {
  static const Fixture* f = [] {
    auto* fx = new Fixture;
    auto config = LoadModelConfig(ExpertFixtureDir());
    MM_CHECK(config.ok());
    fx->config = *config;
    auto source = OpenSafetensorsDir(ExpertFixtureDir());
    MM_CHECK(source.ok());
    auto weights = LoadModelWeights(fx->config, **source, ShardSpec{});
    MM_CHECK(weights.ok());
    fx->weights = std::move(*weights);
    return fx;
  }();
  return *f;
}

std::vector<int> MoeLayers(const ModelConfig& c) {
  std::vector<int> layers;
  for (int l = 0; l < c.num_layers; ++l) {
    if (c.layer_is_moe[l]) layers.push_back(l);
  }
  return layers;
}

void ExpectClose(absl::Span<const float> got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], tol * (1.0 + std::abs(want[i]))) << "element " << i;
  }
}

TEST(ExpertPoolTest, FixtureHasMoeAndDenseLayers) {
  const Fixture& f = LoadFixture();
  EXPECT_EQ(MoeLayers(f.config).size(), 2u);  // layer 1 is dense (mlp_only_layers)
  EXPECT_FALSE(f.config.layer_is_moe[1]);
}

TEST(ExpertPoolTest, MatchesIndependentReference) {
  const Fixture& f = LoadFixture();
  auto pool = ExpertPool::Load(ExpertFixtureDir(), {}, ThreadPoolOptions{3, {}});
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->num_threads(), 3);
  uint32_t seed = 1;
  for (int layer : MoeLayers(f.config)) {
    for (int tokens : {1, 3, 17, 300}) {
      for (double skip : {0.0, 0.3}) {
        SCOPED_TRACE(::testing::Message() << "layer " << layer << " tokens " << tokens << " skip " << skip);
        const RandomBatch b = MakeRandomBatch(f.config, layer, tokens, seed++, skip);
        std::vector<float> out(static_cast<size_t>(tokens) * f.config.hidden_size, 12345.0f);
        ASSERT_TRUE((*pool)->Run(b.batch(), absl::MakeSpan(out)).ok());
        ExpectClose(out, IndependentExpertSum(f.weights, f.config, b), 1e-5);
      }
    }
  }
}

TEST(ExpertPoolTest, ResultDoesNotDependOnThreads) {
  const Fixture& f = LoadFixture();
  auto one = ExpertPool::FromWeights(f.config, f.weights, ThreadPoolOptions{1, {}});
  auto four = ExpertPool::FromWeights(f.config, f.weights, ThreadPoolOptions{4, {}});
  ASSERT_TRUE(one.ok() && four.ok());
  const RandomBatch b = MakeRandomBatch(f.config, 0, 300, 99, 0.1);
  std::vector<float> a(300 * f.config.hidden_size), c(a.size());
  ASSERT_TRUE((*one)->Run(b.batch(), absl::MakeSpan(a)).ok());
  for (int round = 0; round < 5; ++round) {
    ASSERT_TRUE((*four)->Run(b.batch(), absl::MakeSpan(c)).ok());
    ASSERT_EQ(a, c) << "round " << round;
  }
}

TEST(ExpertPoolTest, AllRoutesSkippedGivesZeros) {
  const Fixture& f = LoadFixture();
  auto pool = ExpertPool::FromWeights(f.config, f.weights, ThreadPoolOptions{2, {}});
  ASSERT_TRUE(pool.ok());
  RandomBatch b = MakeRandomBatch(f.config, 0, 5, 3);
  std::fill(b.expert_ids.begin(), b.expert_ids.end(), -1);
  std::vector<float> out(5 * f.config.hidden_size, 7.0f);
  ASSERT_TRUE((*pool)->Run(b.batch(), absl::MakeSpan(out)).ok());
  for (float v : out) ASSERT_EQ(v, 0.0f);
  // Zero tokens is a valid, empty batch.
  RandomBatch empty = MakeRandomBatch(f.config, 0, 0, 3);
  EXPECT_TRUE((*pool)->Run(empty.batch(), {}).ok());
}

TEST(ExpertPoolTest, LoadsOnlyListedExperts) {
  const Fixture& f = LoadFixture();
  std::vector<std::vector<int>> layer_experts = {{0, 2}, {}, {1}};
  auto pool = ExpertPool::Load(ExpertFixtureDir(), layer_experts, ThreadPoolOptions{2, {}});
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_TRUE((*pool)->Holds(0, 0));
  EXPECT_TRUE((*pool)->Holds(0, 2));
  EXPECT_FALSE((*pool)->Holds(0, 1));
  EXPECT_TRUE((*pool)->Holds(2, 1));
  EXPECT_FALSE((*pool)->Holds(1, 0));
  EXPECT_EQ((*pool)->HeldExperts(0), (std::vector<int>{0, 2}));
  const uint64_t per_expert =
      3ull * f.config.hidden_size * f.config.expert_intermediate_size * sizeof(float);
  EXPECT_EQ((*pool)->bytes(), 3 * per_expert);  // routed experts only: no attention, no embedding

  // Held experts compute the same as a pool holding everything.
  RandomBatch b = MakeRandomBatch(f.config, 0, 17, 5);
  for (size_t r = 0; r < b.expert_ids.size(); ++r) {
    if (b.expert_ids[r] != 0 && b.expert_ids[r] != 2) b.expert_ids[r] = -1;
  }
  std::vector<float> out(17 * f.config.hidden_size);
  ASSERT_TRUE((*pool)->Run(b.batch(), absl::MakeSpan(out)).ok());
  ExpectClose(out, IndependentExpertSum(f.weights, f.config, b), 1e-5);

  // An expert it does not hold.
  b.expert_ids[4] = 3;
  const absl::Status st = (*pool)->Run(b.batch(), absl::MakeSpan(out));
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("layer 0 expert 3"));
}

TEST(ExpertPoolTest, RejectsMalformedBatches) {
  const Fixture& f = LoadFixture();
  auto pool = ExpertPool::FromWeights(f.config, f.weights, ThreadPoolOptions{2, {}});
  ASSERT_TRUE(pool.ok());
  LocalExpertClient client(pool->get());  // the seam forwards errors unchanged
  const RandomBatch good = MakeRandomBatch(f.config, 0, 3, 11);
  std::vector<float> out(3 * f.config.hidden_size);
  auto run = [&](RandomBatch b, size_t out_size = 0) {
    std::vector<float> o(out_size == 0 ? out.size() : out_size);
    return client.Run(b.batch(), absl::MakeSpan(o));
  };
  struct Case {
    const char* what;
    RandomBatch batch;
    size_t out_size;
    const char* message;
  };
  std::vector<Case> cases;
  { RandomBatch b = good; b.layer = 3; cases.push_back({"layer", b, 0, "layer 3 is outside [0, 3)"}); }
  { RandomBatch b = good; b.layer = -1; cases.push_back({"negative layer", b, 0, "layer -1"}); }
  { RandomBatch b = good; b.layer = 1; cases.push_back({"dense layer", b, 0, "not a MoE layer"}); }
  { RandomBatch b = good; b.hidden = 47; cases.push_back({"hidden", b, 0, "hidden is 47"}); }
  { RandomBatch b = good; b.top_k = 0; cases.push_back({"top_k", b, 0, "top_k is 0"}); }
  { RandomBatch b = good; b.hidden_states.pop_back(); cases.push_back({"states", b, 0, "hidden_states has 143 values, expected 144"}); }
  { RandomBatch b = good; b.expert_ids.pop_back(); cases.push_back({"ids", b, 0, "expert_ids has 8 values, expected 9"}); }
  { RandomBatch b = good; b.expert_weights.push_back(1); cases.push_back({"weights", b, 0, "expert_weights has 10 values"}); }
  cases.push_back({"out", good, 10, "out has 10 values, expected 144"});
  { RandomBatch b = good; b.expert_ids[5] = 6; cases.push_back({"id too big", b, 0, "expert_ids[5] (token 1) is 6"}); }
  { RandomBatch b = good; b.expert_ids[0] = -2; cases.push_back({"id negative", b, 0, "expert_ids[0] (token 0) is -2"}); }
  for (const Case& c : cases) {
    const absl::Status st = run(c.batch, c.out_size);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.what << ": " << st;
    EXPECT_THAT(st.message(), HasSubstr(c.message)) << c.what;
  }
  EXPECT_TRUE(run(good).ok());
}

TEST(ExpertPoolTest, FromWeightsChecksShapes) {
  const Fixture& f = LoadFixture();
  ModelWeights w = f.weights;
  w.layers[2].experts[1].down.rows = 7;
  auto pool = ExpertPool::FromWeights(f.config, std::move(w), ThreadPoolOptions{1, {}});
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(pool.status().message(), HasSubstr("layer 2 expert 1 down"));
}

TEST(ExpertPoolTest, LoadErrorsNameTheDirectory) {
  auto pool = ExpertPool::Load("/nonexistent/model", {}, ThreadPoolOptions{1, {}});
  EXPECT_FALSE(pool.ok());
  EXPECT_THAT(pool.status().message(), HasSubstr("/nonexistent/model"));
}

}  // namespace
}  // namespace moemesh
