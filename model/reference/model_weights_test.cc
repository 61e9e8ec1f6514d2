#include "model/reference/model_weights.h"

#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/io/safetensors_writer.h"
#include "model/io/test_temp_dir.h"
#include "model/reference/reference_model.h"

namespace moemesh {
namespace {

using ::testing::HasSubstr;

// A synthetic Qwen2-MoE-shaped model: 6 query heads over 2 KV heads, head_dim 4, biases,
// a shared expert, 4 experts; every value distinct so any slicing mistake shows.
constexpr int kHidden = 8, kHeads = 6, kKv = 2, kD = 4, kVocab = 37, kExperts = 4, kInter = 5,
              kShared = 6, kLayers = 2;

const char* kConfig = R"({"model_type": "qwen2_moe", "hidden_size": 8, "num_hidden_layers": 2,
  "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 4, "vocab_size": 37,
  "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 5,
  "shared_expert_intermediate_size": 6, "intermediate_size": 12, "max_position_embeddings": 64})";

class SyntheticModel {
 public:
  explicit SyntheticModel(bool fused, bool drop_router = false, bool bad_shape = false) {
    std::mt19937 rng(7);
    std::normal_distribution<float> dist(0.0f, 0.5f);
    auto add = [&](const std::string& name, std::vector<int64_t> shape) {
      int64_t n = 1;
      for (int64_t s : shape) n *= s;
      std::vector<float> v(n);
      for (float& f : v) f = dist(rng);
      values_[name] = v;
      ASSERT_TRUE(w_.AddF32(name, DType::kF32, shape, v).ok());
    };
    add("model.embed_tokens.weight", {kVocab, kHidden});
    add("lm_head.weight", {kVocab, kHidden});
    add("model.norm.weight", {kHidden});
    for (int l = 0; l < kLayers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      add(p + "input_layernorm.weight", {kHidden});
      add(p + "post_attention_layernorm.weight", {kHidden});
      add(p + "self_attn.q_proj.weight", {kHeads * kD, bad_shape && l == 1 ? kHidden + 1 : kHidden});
      add(p + "self_attn.k_proj.weight", {kKv * kD, kHidden});
      add(p + "self_attn.v_proj.weight", {kKv * kD, kHidden});
      add(p + "self_attn.o_proj.weight", {kHidden, kHeads * kD});
      add(p + "self_attn.q_proj.bias", {kHeads * kD});
      add(p + "self_attn.k_proj.bias", {kKv * kD});
      add(p + "self_attn.v_proj.bias", {kKv * kD});
      if (!(drop_router && l == 1)) add(p + "mlp.gate.weight", {kExperts, kHidden});
      if (fused) {
        add(p + "mlp.experts.gate_up_proj", {kExperts, 2 * kInter, kHidden});
        add(p + "mlp.experts.down_proj", {kExperts, kHidden, kInter});
      } else {
        for (int e = 0; e < kExperts; ++e) {
          const std::string ep = absl::StrCat(p, "mlp.experts.", e, ".");
          add(ep + "gate_proj.weight", {kInter, kHidden});
          add(ep + "up_proj.weight", {kInter, kHidden});
          add(ep + "down_proj.weight", {kHidden, kInter});
        }
      }
      add(p + "mlp.shared_expert.gate_proj.weight", {kShared, kHidden});
      add(p + "mlp.shared_expert.up_proj.weight", {kShared, kHidden});
      add(p + "mlp.shared_expert.down_proj.weight", {kHidden, kShared});
      add(p + "mlp.shared_expert_gate.weight", {1, kHidden});
    }
    EXPECT_TRUE(w_.Write(dir_.File("model.safetensors")).ok());
    std::ofstream(dir_.File("config.json")) << kConfig;
  }

  const std::string& dir() const { return dir_.path(); }
  const std::vector<float>& value(const std::string& name) { return values_.at(name); }

 private:
  TestTempDir dir_;
  SafetensorsWriter w_;
  std::map<std::string, std::vector<float>> values_;
};

absl::StatusOr<ModelWeights> Load(const std::string& dir, const ShardSpec& shard) {
  auto config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  auto source = OpenSafetensorsDir(dir);
  if (!source.ok()) return source.status();
  return LoadModelWeights(*config, **source, shard);
}

// Rows [b, e) of a row-major [rows, cols] matrix.
std::vector<float> Rows(const std::vector<float>& m, int64_t cols, int64_t b, int64_t e) {
  return std::vector<float>(m.begin() + b * cols, m.begin() + e * cols);
}

TEST(ModelWeights, ShardReadsHeadsVocabAndExpertSlices) {
  SyntheticModel model(/*fused=*/false);
  ShardSpec shard;
  shard.head_begin = 3;  // query heads 3..4 use KV head 1 (groups of 3)
  shard.head_end = 5;
  shard.vocab_begin = 5;
  shard.vocab_end = 20;
  shard.experts = std::vector<int>{1, 3};
  auto w = Load(model.dir(), shard);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->kv_head_begin, 1);
  EXPECT_EQ(w->kv_head_end, 2);
  EXPECT_EQ(w->embed.data, Rows(model.value("model.embed_tokens.weight"), kHidden, 5, 20));
  EXPECT_EQ(w->lm_head.data, Rows(model.value("lm_head.weight"), kHidden, 5, 20));
  const LayerWeights& l1 = w->layers[1];
  EXPECT_EQ(l1.wq.data, Rows(model.value("model.layers.1.self_attn.q_proj.weight"), kHidden, 3 * kD, 5 * kD));
  EXPECT_EQ(l1.wk.data, Rows(model.value("model.layers.1.self_attn.k_proj.weight"), kHidden, kD, 2 * kD));
  EXPECT_EQ(l1.bq, Rows(model.value("model.layers.1.self_attn.q_proj.bias"), 1, 3 * kD, 5 * kD));
  // o_proj is sliced by columns: row r keeps columns [3*d, 5*d).
  const auto& wo = model.value("model.layers.1.self_attn.o_proj.weight");
  ASSERT_EQ(l1.wo.rows, kHidden);
  ASSERT_EQ(l1.wo.cols, 2 * kD);
  for (int r = 0; r < kHidden; ++r) {
    for (int c = 0; c < 2 * kD; ++c) {
      EXPECT_EQ(l1.wo.data[r * 2 * kD + c], wo[r * kHeads * kD + 3 * kD + c]);
    }
  }
  ASSERT_EQ(l1.expert_ids, (std::vector<int>{1, 3}));
  EXPECT_EQ(l1.experts[1].down.data, model.value("model.layers.1.mlp.experts.3.down_proj.weight"));
  EXPECT_EQ(l1.router.data, model.value("model.layers.1.mlp.gate.weight"));  // routing is replicated
  EXPECT_EQ(l1.shared_expert_gate, model.value("model.layers.1.mlp.shared_expert_gate.weight"));
}

TEST(ModelWeights, FusedExpertTensorsSplitGateFirst) {
  SyntheticModel model(/*fused=*/true);
  ShardSpec shard;
  shard.experts = std::vector<int>{2};
  auto w = Load(model.dir(), shard);
  ASSERT_TRUE(w.ok()) << w.status();
  const auto& gate_up = model.value("model.layers.0.mlp.experts.gate_up_proj");
  const int64_t per_expert = 2 * kInter * kHidden;
  const FfnWeights& f = w->layers[0].experts[0];
  EXPECT_EQ(f.gate.data, std::vector<float>(gate_up.begin() + 2 * per_expert,
                                            gate_up.begin() + 2 * per_expert + kInter * kHidden));
  EXPECT_EQ(f.up.data, std::vector<float>(gate_up.begin() + 2 * per_expert + kInter * kHidden,
                                          gate_up.begin() + 3 * per_expert));
  const auto& down = model.value("model.layers.0.mlp.experts.down_proj");
  EXPECT_EQ(f.down.data, std::vector<float>(down.begin() + 2 * kHidden * kInter,
                                            down.begin() + 3 * kHidden * kInter));
}

TEST(ModelWeights, ExpertWorkerShardLoadsOnlyItsExpertsPerLayer) {
  SyntheticModel model(/*fused=*/false);
  ShardSpec shard;
  shard.load_dense = false;
  shard.layer_experts = {{0}, {3, 2}};
  auto w = Load(model.dir(), shard);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(w->embed.empty());
  EXPECT_TRUE(w->layers[0].wq.empty());
  EXPECT_TRUE(w->layers[0].router.empty());
  EXPECT_TRUE(w->layers[0].shared.gate.empty());
  EXPECT_EQ(w->layers[0].expert_ids, (std::vector<int>{0}));
  EXPECT_EQ(w->layers[1].expert_ids, (std::vector<int>{2, 3}));
  EXPECT_EQ(w->layers[1].experts[0].gate.data, model.value("model.layers.1.mlp.experts.2.gate_proj.weight"));
  shard.layer_experts = {{0}};  // one list for a two-layer model
  EXPECT_FALSE(Load(model.dir(), shard).ok());
}

TEST(ModelWeights, FullShardForwardRuns) {
  SyntheticModel model(/*fused=*/false);
  LoadOptions options;
  options.show_progress = false;
  auto m = ReferenceModel::Load(model.dir(), options);
  ASSERT_TRUE(m.ok()) << m.status();
  SequenceCache cache = (*m)->NewCache();
  std::vector<int32_t> tokens = {1, 2, 36};
  BatchEntry e{&cache, tokens, true};
  auto logits = (*m)->Forward(absl::MakeSpan(&e, 1));
  ASSERT_TRUE(logits.ok()) << logits.status();
  EXPECT_EQ((*logits)[0].size(), 3u * kVocab);
  std::vector<int32_t> bad = {37};
  BatchEntry e2{&cache, bad, false};
  auto out_of_vocab = (*m)->Forward(absl::MakeSpan(&e2, 1));
  ASSERT_FALSE(out_of_vocab.ok());
  EXPECT_THAT(out_of_vocab.status().message(), HasSubstr("37"));
}

TEST(ModelWeights, MissingTensorNamesTensorAndDirectory) {
  SyntheticModel model(/*fused=*/false, /*drop_router=*/true);
  auto w = Load(model.dir(), ShardSpec{});
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("model.layers.1.mlp.gate.weight"));
  EXPECT_THAT(w.status().message(), HasSubstr(model.dir()));
}

TEST(ModelWeights, WrongShapeNamesFileTensorAndShapes) {
  SyntheticModel model(/*fused=*/false, false, /*bad_shape=*/true);
  auto w = Load(model.dir(), ShardSpec{});
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr("model.layers.1.self_attn.q_proj.weight"));
  EXPECT_THAT(w.status().message(), HasSubstr("model.safetensors"));
  EXPECT_THAT(w.status().message(), HasSubstr("[24, 9]"));
  EXPECT_THAT(w.status().message(), HasSubstr("[24, 8]"));
}

TEST(ModelWeights, BadShardRangesAreRejected) {
  SyntheticModel model(/*fused=*/false);
  ShardSpec heads;
  heads.head_begin = 4;
  heads.head_end = 9;
  EXPECT_FALSE(Load(model.dir(), heads).ok());
  ShardSpec experts;
  experts.experts = std::vector<int>{4};
  auto w = Load(model.dir(), experts);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr("expert 4"));
}

}  // namespace
}  // namespace moemesh
