#include "worker/expert/moe_dispatcher.h"

#include <cmath>
#include <memory>
#include <mutex>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "worker/expert/expert_pool.h"
#include "worker/expert/expert_test_util.h"
#include "worker/expert/local_expert_client.h"

namespace moemesh {
namespace {

using ::moemesh::testing::ExpertFixtureDir;
using ::moemesh::testing::MakeRandomBatch;
using ::moemesh::testing::RandomBatch;
using ::testing::HasSubstr;

using Owners = std::vector<std::vector<std::vector<int>>>;

// Pools holding, per client, the experts listed in `held[client]` (every MoE layer alike), and
// the owners table that follows from it.
struct Cluster {
  std::vector<std::unique_ptr<ExpertPool>> pools;
  std::vector<std::unique_ptr<LocalExpertClient>> clients;
  Owners owners;
  std::unique_ptr<MoeDispatcher> dispatcher;
};

Cluster MakeCluster(const std::vector<std::vector<int>>& held) {
  Cluster c;
  ModelConfig config = *LoadModelConfig(ExpertFixtureDir());
  c.owners.assign(config.num_layers, std::vector<std::vector<int>>(config.num_experts));
  std::vector<ExpertClient*> raw;
  for (size_t i = 0; i < held.size(); ++i) {
    std::vector<std::vector<int>> layer_experts(config.num_layers, held[i]);
    auto pool = ExpertPool::Load(ExpertFixtureDir(), layer_experts, ThreadPoolOptions{2, {}});
    MM_CHECK(pool.ok());
    c.pools.push_back(std::move(*pool));
    c.clients.push_back(std::make_unique<LocalExpertClient>(c.pools.back().get()));
    raw.push_back(c.clients.back().get());
    for (int l = 0; l < config.num_layers; ++l) {
      if (!config.layer_is_moe[l]) continue;
      for (int e : held[i]) c.owners[l][e].push_back(static_cast<int>(i));
    }
  }
  auto d = MoeDispatcher::Create(c.owners, raw);
  MM_CHECK(d.ok());
  c.dispatcher = std::move(*d);
  return c;
}

void ExpectSameAsOnePool(const std::vector<std::vector<int>>& held) {
  Cluster cluster = MakeCluster(held);
  auto full = ExpertPool::Load(ExpertFixtureDir(), {}, ThreadPoolOptions{1, {}});
  ASSERT_TRUE(full.ok());
  const ModelConfig& config = (*full)->config();
  uint32_t seed = 100;
  for (int layer : {0, 2}) {
    for (int tokens : {1, 3, 17, 300}) {
      SCOPED_TRACE(::testing::Message() << "layer " << layer << " tokens " << tokens);
      const RandomBatch b = MakeRandomBatch(config, layer, tokens, seed++, 0.1);
      std::vector<float> want(static_cast<size_t>(tokens) * config.hidden_size);
      std::vector<float> got(want.size(), -1.0f);
      ASSERT_TRUE((*full)->Run(b.batch(), absl::MakeSpan(want)).ok());
      const absl::Status st = cluster.dispatcher->Run(b.batch(), absl::MakeSpan(got));
      ASSERT_TRUE(st.ok()) << st;
      for (size_t i = 0; i < want.size(); ++i) {
        ASSERT_NEAR(got[i], want[i], 1e-6 * (1.0 + std::abs(want[i]))) << "element " << i;
      }
    }
  }
}

TEST(MoeDispatcherTest, DisjointPoolsEqualOnePool) {
  ExpectSameAsOnePool({{0, 3}, {1, 4}, {2, 5}});
}

TEST(MoeDispatcherTest, ReplicatedPoolsEqualOnePool) {
  ExpectSameAsOnePool({{0, 1, 2, 3}, {2, 3, 4, 5}, {0, 1, 4, 5}});
}

TEST(MoeDispatcherTest, MissingOwnerIsFailedPrecondition) {
  Cluster cluster = MakeCluster({{0, 1, 2}, {3, 5}});  // nobody holds expert 4
  ModelConfig config = *LoadModelConfig(ExpertFixtureDir());
  RandomBatch b = MakeRandomBatch(config, 2, 4, 7);
  std::fill(b.expert_ids.begin(), b.expert_ids.end(), 0);
  b.expert_ids[7] = 4;
  std::vector<float> out(4 * config.hidden_size);
  const absl::Status st = cluster.dispatcher->Run(b.batch(), absl::MakeSpan(out));
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("layer 2 expert 4"));
}

// Records what it was sent; answers with token index + 1 everywhere, or an error.
class RecordingClient : public ExpertClient {
 public:
  explicit RecordingClient(absl::Status result = absl::OkStatus()) : result_(std::move(result)) {}
  absl::Status Run(const ExpertBatch& b, absl::Span<float> out) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++calls;
    num_tokens = b.num_tokens;
    ids.assign(b.expert_ids.begin(), b.expert_ids.end());
    weights.assign(b.expert_weights.begin(), b.expert_weights.end());
    first_states.clear();
    for (int t = 0; t < b.num_tokens; ++t) first_states.push_back(b.hidden_states[t * b.hidden]);
    for (int t = 0; t < b.num_tokens; ++t) {
      for (int i = 0; i < b.hidden; ++i) out[t * b.hidden + i] = static_cast<float>(t + 1);
    }
    return result_;
  }
  std::mutex mu_;
  absl::Status result_;
  int calls = 0;
  int num_tokens = 0;
  std::vector<int32_t> ids;
  std::vector<float> weights;
  std::vector<float> first_states;
};

TEST(MoeDispatcherTest, SendsEachClientOnlyItsTokensAndRoutes) {
  RecordingClient a, b, idle;
  // Layer 0 of a 2-expert model: expert 0 on client 0, expert 1 on client 1; client 2 holds nothing.
  auto d = MoeDispatcher::Create({{{0}, {1}}}, {&a, &b, &idle});
  ASSERT_TRUE(d.ok());
  const int hidden = 2;
  std::vector<float> states = {10, 0, 11, 0, 12, 0};   // 3 tokens
  std::vector<int32_t> ids = {0, -1, 1, -1, 0, 1};      // top_k 2
  std::vector<float> weights = {0.5, 0.1, 0.25, 0.2, 0.75, 0.3};
  ExpertBatch batch{0, 3, hidden, 2, states, ids, weights};
  std::vector<float> out(6, -5.0f);
  ASSERT_TRUE((*d)->Run(batch, absl::MakeSpan(out)).ok());
  EXPECT_EQ(a.num_tokens, 2);  // tokens 0 and 2
  EXPECT_EQ(a.first_states, (std::vector<float>{10, 12}));
  EXPECT_EQ(a.ids, (std::vector<int32_t>{0, -1, 0, -1}));
  EXPECT_EQ(a.weights, (std::vector<float>{0.5, 0, 0.75, 0}));
  EXPECT_EQ(b.num_tokens, 2);  // tokens 1 and 2
  EXPECT_EQ(b.first_states, (std::vector<float>{11, 12}));
  EXPECT_EQ(b.ids, (std::vector<int32_t>{1, -1, -1, 1}));
  EXPECT_EQ(b.weights, (std::vector<float>{0.25, 0, 0, 0.3}));
  EXPECT_EQ(idle.calls, 0);
  // out = sum of partials: token 0 gets a's row 0 (1); token 1 gets b's row 0 (1); token 2 gets
  // a's row 1 (2) + b's row 1 (2).
  EXPECT_EQ(out, (std::vector<float>{1, 1, 1, 1, 4, 4}));
}

TEST(MoeDispatcherTest, ReplicaChosenByTokenIndex) {
  RecordingClient a, b;
  auto d = MoeDispatcher::Create({{{0, 1}}}, {&a, &b});
  ASSERT_TRUE(d.ok());
  std::vector<float> states = {0, 1, 2, 3, 4};
  std::vector<int32_t> ids = {0, 0, 0, 0, 0};
  std::vector<float> weights = {1, 1, 1, 1, 1};
  std::vector<float> out(5);
  ASSERT_TRUE((*d)->Run(ExpertBatch{0, 5, 1, 1, states, ids, weights}, absl::MakeSpan(out)).ok());
  EXPECT_EQ(a.first_states, (std::vector<float>{0, 2, 4}));
  EXPECT_EQ(b.first_states, (std::vector<float>{1, 3}));
}

TEST(MoeDispatcherTest, ClientErrorNamesTheClient) {
  RecordingClient a, b(absl::UnavailableError("worker 10.0.0.2:7000 gone"));
  auto d = MoeDispatcher::Create({{{0}, {1}}}, {&a, &b});
  ASSERT_TRUE(d.ok());
  std::vector<float> states = {1, 2};
  std::vector<int32_t> ids = {0, 1, 1, 0};
  std::vector<float> weights = {1, 1, 1, 1};
  std::vector<float> out(2);
  const absl::Status st = (*d)->Run(ExpertBatch{0, 2, 1, 2, states, ids, weights}, absl::MakeSpan(out));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(st.message(), HasSubstr("expert client 1: worker 10.0.0.2:7000 gone"));
}

TEST(MoeDispatcherTest, RejectsBadTablesAndBatches) {
  RecordingClient a;
  EXPECT_EQ(MoeDispatcher::Create({{{0}, {2}}}, {&a}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MoeDispatcher::Create({{{0}}}, {nullptr}).status().code(), absl::StatusCode::kInvalidArgument);
  auto d = MoeDispatcher::Create({{{0}, {0}}}, {&a});
  ASSERT_TRUE(d.ok());
  std::vector<float> states = {1, 2};
  std::vector<int32_t> ids = {0, 2};
  std::vector<float> weights = {1, 1};
  std::vector<float> out(2);
  absl::Status st = (*d)->Run(ExpertBatch{0, 2, 1, 1, states, ids, weights}, absl::MakeSpan(out));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("expert_ids[1] (token 1) is 2"));
  st = (*d)->Run(ExpertBatch{1, 2, 1, 1, states, ids, weights}, absl::MakeSpan(out));
  EXPECT_THAT(st.message(), HasSubstr("layer 1 is outside [0, 1)"));
  st = (*d)->Run(ExpertBatch{0, 2, 1, 1, states, ids, weights}, absl::MakeSpan(out).subspan(1));
  EXPECT_THAT(st.message(), HasSubstr("out has 1 values, expected 2"));
}

}  // namespace
}  // namespace moemesh
