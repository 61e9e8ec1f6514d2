// Drives AttentionRunner ranks on threads (LocalCollective) with hand-built step plans and
// compares with the fixtures' transformers greedy outputs and with ReferenceModel's logits.
#include "worker/attention/attention_runner.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ref/ops.h"
#include "model/arch/model_config.h"
#include "model/io/safetensors_writer.h"
#include "model/io/test_temp_dir.h"
#include "model/io/weight_source.h"
#include "model/reference/reference_model.h"
#include "runtime/local_collective.h"
#include "tests/golden/fixtures.h"

namespace moemesh {
namespace {

// Holds every routed expert and computes ExpertClient::Run with kernels/ref, summing the
// routes in j order like ReferenceModel. Stateless after construction: calls may overlap.
class AllExpertsClient : public ExpertClient {
 public:
  explicit AllExpertsClient(ModelWeights experts) : w_(std::move(experts)) {}

  absl::Status Run(const ExpertBatch& b, absl::Span<float> out) override {
    const LayerWeights& lw = w_.layers[b.layer];
    std::vector<float> y(b.hidden);
    std::fill(out.begin(), out.end(), 0.0f);
    for (int t = 0; t < b.num_tokens; ++t) {
      for (int j = 0; j < b.top_k; ++j) {
        const int e = b.expert_ids[t * b.top_k + j];
        if (e < 0) continue;
        auto it = std::lower_bound(lw.expert_ids.begin(), lw.expert_ids.end(), e);
        if (it == lw.expert_ids.end() || *it != e) return absl::FailedPreconditionError("no expert");
        const FfnWeights& f = lw.experts[it - lw.expert_ids.begin()];
        Ffn(f, b.hidden_states.data() + static_cast<int64_t>(t) * b.hidden, b.hidden, y.data());
        const float wt = b.expert_weights[t * b.top_k + j];
        for (int i = 0; i < b.hidden; ++i) out[static_cast<int64_t>(t) * b.hidden + i] += wt * y[i];
      }
    }
    return absl::OkStatus();
  }

 private:
  static void Ffn(const FfnWeights& f, const float* x, int64_t hidden, float* out) {
    const int64_t inter = f.gate.rows;
    std::vector<float> g(inter), u(inter), a(inter);
    ref::Linear(x, f.gate.data.data(), nullptr, g.data(), 1, inter, hidden);
    ref::Linear(x, f.up.data.data(), nullptr, u.data(), 1, inter, hidden);
    ref::SiluMul(g.data(), u.data(), a.data(), inter);
    ref::Linear(a.data(), f.down.data.data(), nullptr, out, 1, hidden, inter);
  }

  ModelWeights w_;
};

// Fails every call: for checking that one rank's expert failure fails the step everywhere.
class FailingClient : public ExpertClient {
 public:
  absl::Status Run(const ExpertBatch&, absl::Span<float>) override {
    return absl::UnavailableError("expert worker went away");
  }
};

// A TP group of runners over LocalCollective; Execute runs one plan on every rank's thread.
class TpGroup {
 public:
  TpGroup(const std::filesystem::path& dir, int tp, AttentionRunnerConfig cfg) {
    auto config = LoadModelConfig(dir.string());
    EXPECT_TRUE(config.ok()) << config.status();
    config_ = *config;
    auto source = OpenSafetensorsDir(dir.string());
    EXPECT_TRUE(source.ok()) << source.status();
    ShardSpec expert_shard;
    expert_shard.load_dense = false;
    auto experts = LoadModelWeights(config_, **source, expert_shard);
    EXPECT_TRUE(experts.ok()) << experts.status();
    experts_ = std::make_unique<AllExpertsClient>(std::move(*experts));
    collectives_ = LocalCollective::CreateGroup(tp);
    for (int r = 0; r < tp; ++r) {
      auto weights = LoadModelWeights(config_, **source, AttentionRunner::ShardFor(config_, r, tp));
      EXPECT_TRUE(weights.ok()) << weights.status();
      clients_.push_back(experts_.get());
      runners_.push_back(std::make_unique<AttentionRunner>(config_, std::move(*weights), cfg,
                                                           collectives_[r].get(), &proxies_[r]));
    }
  }

  // Routes rank r's expert calls to `client` (default: the shared all-experts client).
  void SetExpertClient(int rank, ExpertClient* client) { clients_[rank] = client; }

  std::vector<absl::StatusOr<StepResult>> Execute(const StepPlan& plan) {
    const int tp = static_cast<int>(runners_.size());
    std::vector<absl::StatusOr<StepResult>> results(tp);
    std::vector<std::thread> threads;
    for (int r = 0; r < tp; ++r) {
      threads.emplace_back([&, r] { results[r] = runners_[r]->Execute(plan); });
    }
    for (std::thread& t : threads) t.join();
    return results;
  }

  const ModelConfig& config() const { return config_; }
  AttentionRunner& runner(int r) { return *runners_[r]; }

 private:
  // Forwards to clients_[rank], so tests can swap a rank's client after construction.
  struct Proxy : ExpertClient {
    TpGroup* group = nullptr;
    int rank = 0;
    absl::Status Run(const ExpertBatch& b, absl::Span<float> out) override {
      return group->clients_[rank]->Run(b, out);
    }
  };
  std::vector<Proxy> MakeProxies(int tp) {
    std::vector<Proxy> p(tp);
    for (int r = 0; r < tp; ++r) p[r].group = this, p[r].rank = r;
    return p;
  }

  ModelConfig config_;
  std::unique_ptr<AllExpertsClient> experts_;
  std::vector<ExpertClient*> clients_;
  std::vector<Proxy> proxies_ = MakeProxies(8);
  std::vector<std::unique_ptr<Collective>> collectives_;
  std::vector<std::unique_ptr<AttentionRunner>> runners_;
};

// Hands out KV blocks in a shuffled order, like a coordinator's allocator would.
class BlockSource {
 public:
  BlockSource(int num_blocks, uint32_t seed) : free_(num_blocks) {
    std::iota(free_.begin(), free_.end(), 0);
    std::shuffle(free_.begin(), free_.end(), std::mt19937(seed));
  }
  // New blocks so that `have` blocks of `block_size` cover `tokens` tokens.
  std::vector<int32_t> Grow(std::vector<int32_t>& have, int64_t tokens, int block_size) {
    std::vector<int32_t> added;
    while (static_cast<int64_t>(have.size()) * block_size < tokens) {
      EXPECT_FALSE(free_.empty());
      added.push_back(free_.back());
      have.push_back(free_.back());
      free_.pop_back();
    }
    return added;
  }

 private:
  std::vector<int32_t> free_;
};

struct Case {
  std::string model;
  int tp;
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  return info.param.model + "_tp" + std::to_string(info.param.tp);
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (const char* model : {"qwen3_moe_f32", "qwen2_moe_f32", "olmoe_f32", "mixtral_bf16", "qwen3_moe_bf16"}) {
    const auto dir = testing::FixtureDir() / "models" / model;
    auto config = LoadModelConfig(dir.string());
    if (!config.ok()) {
      ADD_FAILURE() << config.status();
      continue;
    }
    for (int tp : {1, 2, 3, 4, 5}) {
      if (AttentionRunner::CheckTp(*config, tp).ok()) cases.push_back({model, tp});
    }
  }
  return cases;
}

class AttentionRunnerGolden : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionRunnerGolden, GreedyMatchesFixtureAndLogitsMatchReference) {
  const Case tc = GetParam();
  const auto dir = testing::FixtureDir() / "models" / tc.model;
  const nlohmann::json golden = testing::ReadJson(dir / "reference.json");
  const AttentionRunnerConfig cfg{/*num_kv_blocks=*/80, /*block_size=*/4};
  TpGroup group(dir, tc.tp, cfg);
  auto reference = ReferenceModel::Load(dir.string(), LoadOptions{.show_progress = false});
  ASSERT_TRUE(reference.ok()) << reference.status();

  struct Req {
    uint64_t id;
    std::vector<int32_t> prompt, expected, out, blocks;
    int64_t cached = 0;
    bool sent = false;
  };
  std::vector<Req> reqs;
  for (const auto& g : golden["greedy"]) {
    Req r;
    r.id = 1000 + reqs.size() * 7;
    r.prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    r.expected = g["output_ids"].get<std::vector<int32_t>>();
    reqs.push_back(std::move(r));
  }
  BlockSource blocks(cfg.num_kv_blocks, 42 + tc.tp);
  auto schedule = [&](StepPlan& plan, Req& r, std::vector<int32_t> tokens, bool sample) {
    if (!r.sent) {
      NewRequest nr;
      nr.id = r.id;
      nr.prompt = r.prompt;
      nr.sampling.temperature = 0.0f;
      nr.sampling.seed = r.id;
      plan.new_requests.push_back(nr);
      r.sent = true;
    }
    ScheduledSequence s;
    s.id = r.id;
    s.start_position = r.cached;
    s.new_blocks = blocks.Grow(r.blocks, r.cached + static_cast<int64_t>(tokens.size()), cfg.block_size);
    s.tokens = std::move(tokens);
    s.sample = sample;
    r.cached += static_cast<int64_t>(s.tokens.size());
    plan.sequences.push_back(std::move(s));
  };
  auto run = [&](const StepPlan& plan) {
    auto results = group.Execute(plan);
    for (int r = 0; r < tc.tp; ++r) ASSERT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].status();
    for (int r = 1; r < tc.tp; ++r) EXPECT_TRUE(results[r]->tokens.empty());
    size_t i = 0;
    for (const ScheduledSequence& s : plan.sequences) {
      if (!s.sample) continue;
      ASSERT_LT(i, results[0]->tokens.size());
      ASSERT_EQ(results[0]->tokens[i].id, s.id);
      for (Req& r : reqs) {
        if (r.id == s.id) r.out.push_back(results[0]->tokens[i].sample.token);
      }
      ++i;
    }
    EXPECT_EQ(i, results[0]->tokens.size());
  };

  // Step 0: the first half of every prompt longer than one token.
  StepPlan plan;
  plan.step = 0;
  for (Req& r : reqs) {
    if (r.prompt.size() < 2) continue;
    const size_t half = r.prompt.size() / 2;
    schedule(plan, r, std::vector<int32_t>(r.prompt.begin(), r.prompt.begin() + half), false);
  }
  run(plan);
  // Step 1: the rest of every prompt, sampled.
  plan = StepPlan{};
  plan.step = 1;
  for (Req& r : reqs) schedule(plan, r, std::vector<int32_t>(r.prompt.begin() + r.cached, r.prompt.end()), true);
  run(plan);
  // First-step logits against the reference engine, one prompt at a time.
  const std::vector<float>& got = group.runner(0).last_logits();
  const int64_t vocab = group.config().vocab_size;
  ASSERT_EQ(got.size(), reqs.size() * vocab);
  for (size_t i = 0; i < reqs.size(); ++i) {
    SequenceCache cache = (*reference)->NewCache();
    BatchEntry entry{&cache, reqs[i].prompt, false};
    auto want = (*reference)->Forward(absl::MakeSpan(&entry, 1));
    ASSERT_TRUE(want.ok()) << want.status();
    float worst = 0;
    for (int64_t v = 0; v < vocab; ++v) worst = std::max(worst, std::abs(got[i * vocab + v] - (*want)[0][v]));
    EXPECT_LE(worst, 1e-4f) << "prompt " << i;
  }
  // Decode until every request has as many tokens as the fixture.
  for (size_t n = 1; n < reqs[0].expected.size(); ++n) {
    plan = StepPlan{};
    plan.step = 1 + n;
    for (Req& r : reqs) schedule(plan, r, {r.out.back()}, true);
    run(plan);
  }
  for (const Req& r : reqs) EXPECT_EQ(r.out, r.expected) << "request " << r.id;

  // Finishing every request frees every block on every rank.
  plan = StepPlan{};
  plan.step = 1000;
  for (const Req& r : reqs) plan.finished.push_back(r.id);
  run(plan);
  for (int rank = 0; rank < tc.tp; ++rank) {
    EXPECT_EQ(group.runner(rank).free_blocks(), cfg.num_kv_blocks);
    EXPECT_EQ(group.runner(rank).num_requests(), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, AttentionRunnerGolden, ::testing::ValuesIn(AllCases()), CaseName);

std::filesystem::path Qwen3Dir() { return testing::FixtureDir() / "models" / "qwen3_moe_f32"; }

StepPlan PromptPlan(uint64_t step, uint64_t id, std::vector<int32_t> prompt, std::vector<int32_t> blocks) {
  StepPlan plan;
  plan.step = step;
  NewRequest nr;
  nr.id = id;
  nr.prompt = prompt;
  nr.sampling.temperature = 0.0f;
  nr.sampling.seed = 1;
  plan.new_requests.push_back(nr);
  ScheduledSequence s;
  s.id = id;
  s.tokens = prompt;
  s.new_blocks = std::move(blocks);
  s.sample = true;
  plan.sequences.push_back(s);
  return plan;
}

void ExpectAllFail(const std::vector<absl::StatusOr<StepResult>>& results, absl::StatusCode code,
                   const std::string& needle) {
  for (size_t r = 0; r < results.size(); ++r) {
    ASSERT_FALSE(results[r].ok()) << "rank " << r;
    EXPECT_EQ(results[r].status().code(), code) << "rank " << r << ": " << results[r].status();
    EXPECT_NE(results[r].status().message().find(needle), absl::string_view::npos)
        << "rank " << r << ": " << results[r].status();
  }
}

TEST(AttentionRunner, UnknownRequestFailsOnEveryRankAndChangesNothing) {
  TpGroup group(Qwen3Dir(), 3, AttentionRunnerConfig{16, 4});
  StepPlan plan = PromptPlan(0, 7, {290, 470, 476}, {5});
  ScheduledSequence ghost;
  ghost.id = 99;
  ghost.tokens = {1};
  plan.sequences.push_back(ghost);
  ExpectAllFail(group.Execute(plan), absl::StatusCode::kFailedPrecondition, "request 99: unknown request id");
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(group.runner(r).num_requests(), 0);
    EXPECT_EQ(group.runner(r).free_blocks(), 16);
  }
  // The group is still usable: the same request without the ghost runs.
  plan.sequences.pop_back();
  auto ok = group.Execute(plan);
  for (int r = 0; r < 3; ++r) ASSERT_TRUE(ok[r].ok()) << ok[r].status();
  EXPECT_EQ(ok[0]->tokens.size(), 1u);
  EXPECT_EQ(group.runner(1).free_blocks(), 15);
}

TEST(AttentionRunner, PlanErrorsNameTheProblem) {
  TpGroup group(Qwen3Dir(), 1, AttentionRunnerConfig{16, 4});
  // Too few blocks for 5 tokens.
  ExpectAllFail(group.Execute(PromptPlan(0, 7, {1, 2, 3, 4, 5}, {3})), absl::StatusCode::kFailedPrecondition,
                "1 KV blocks of 4 hold 4 tokens; the step needs 5");
  ExpectAllFail(group.Execute(PromptPlan(0, 7, {1, 2}, {16})), absl::StatusCode::kInvalidArgument,
                "KV block 16 is outside [0, 16)");
  ExpectAllFail(group.Execute(PromptPlan(0, 7, {1, 503}, {0})), absl::StatusCode::kInvalidArgument,
                "token id 503 is outside [0, 503)");
  auto first = group.Execute(PromptPlan(0, 7, {1, 2}, {0}));
  ASSERT_TRUE(first[0].ok()) << first[0].status();
  // A position that does not continue the cache, then a block already used by request 7.
  StepPlan next;
  next.step = 1;
  ScheduledSequence s;
  s.id = 7;
  s.tokens = {3};
  s.start_position = 3;
  next.sequences.push_back(s);
  ExpectAllFail(group.Execute(next), absl::StatusCode::kFailedPrecondition,
                "start_position 3 but 2 tokens are cached");
  ExpectAllFail(group.Execute(PromptPlan(2, 8, {1, 2}, {0})), absl::StatusCode::kFailedPrecondition,
                "KV block 0 is already in use");
  ExpectAllFail(group.Execute(PromptPlan(2, 7, {1, 2}, {1})), absl::StatusCode::kFailedPrecondition,
                "new request 7 already exists");
}

TEST(AttentionRunner, OneRanksExpertFailureFailsTheStepEverywhere) {
  TpGroup group(Qwen3Dir(), 3, AttentionRunnerConfig{16, 4});
  FailingClient failing;
  group.SetExpertClient(2, &failing);
  auto results = group.Execute(PromptPlan(0, 7, {290, 470, 476, 450, 1, 2}, {0, 1}));
  ASSERT_FALSE(results[2].ok());
  EXPECT_EQ(results[2].status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(results[2].status().message().find("expert worker went away"), absl::string_view::npos)
      << results[2].status();
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(results[r].ok());
    EXPECT_NE(results[r].status().message().find("rank 2 failed"), absl::string_view::npos) << results[r].status();
  }
  for (int r = 0; r < 3; ++r) EXPECT_EQ(group.runner(r).num_requests(), 0);
}

// OLMoE normalises q and k over the whole projection. With one KV head and TP = 3 every rank
// holds that head, and only rank 0 may count its squares; no fixture has this shape, so the
// test derives one: olmoe_f32 with the k/v projections cut to their first head.
TEST(AttentionRunner, WholeProjectionNormWithReplicatedKvHeadMatchesReference) {
  const auto src_dir = testing::FixtureDir() / "models" / "olmoe_f32";
  TestTempDir tmp;
  nlohmann::json config = testing::ReadJson(src_dir / "config.json");
  const int head_dim = config["hidden_size"].get<int>() / config["num_attention_heads"].get<int>();
  config["num_key_value_heads"] = 1;
  std::ofstream(tmp.File("config.json")) << config.dump();
  auto source = OpenSafetensorsDir(src_dir.string());
  ASSERT_TRUE(source.ok()) << source.status();
  SafetensorsWriter writer;
  for (const std::string& name : (*source)->TensorNames()) {
    auto info = (*source)->Info(name);
    ASSERT_TRUE(info.ok());
    std::vector<int64_t> shape = info->shape;
    const bool cut = absl::string_view(name).find("self_attn.k_") != absl::string_view::npos ||
                     absl::string_view(name).find("self_attn.v_proj") != absl::string_view::npos;
    if (cut) shape[0] = head_dim;
    auto values = (*source)->ReadF32Checked(name, Slice::Rows(0, shape[0]), shape);
    ASSERT_TRUE(values.ok()) << values.status();
    ASSERT_TRUE(writer.AddF32(name, DType::kF32, shape, *values).ok());
  }
  ASSERT_TRUE(writer.Write(tmp.File("model.safetensors")).ok());
  auto reference = ReferenceModel::Load(tmp.path(), LoadOptions{.show_progress = false});
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_EQ((*reference)->config().num_kv_heads, 1);

  TpGroup group(tmp.path(), 3, AttentionRunnerConfig{16, 4});
  const std::vector<int32_t> prompt = {290, 472, 469, 263, 327};
  SequenceCache cache = (*reference)->NewCache();
  StepPlan plan = PromptPlan(0, 7, prompt, {9, 2});
  std::vector<int32_t> tokens = prompt;
  for (int step = 0; step < 6; ++step) {
    auto results = group.Execute(plan);
    for (int r = 0; r < 3; ++r) ASSERT_TRUE(results[r].ok()) << results[r].status();
    BatchEntry entry{&cache, tokens, false};
    auto want = (*reference)->Forward(absl::MakeSpan(&entry, 1));
    ASSERT_TRUE(want.ok()) << want.status();
    const std::vector<float>& got = group.runner(0).last_logits();
    ASSERT_EQ(got.size(), (*want)[0].size());
    for (size_t v = 0; v < got.size(); ++v) ASSERT_NEAR(got[v], (*want)[0][v], 1e-4) << "step " << step;
    // Next step: decode the sampled token.
    const int32_t next = results[0]->tokens.at(0).sample.token;
    tokens = {next};
    plan = StepPlan{};
    plan.step = step + 1;
    ScheduledSequence s;
    s.id = 7;
    s.tokens = {next};
    s.start_position = cache.length;
    s.sample = true;
    if (cache.length % 4 == 0) s.new_blocks = {static_cast<int32_t>(cache.length)};  // 8, 12: unused ids
    plan.sequences.push_back(s);
  }
}

}  // namespace
}  // namespace moemesh
