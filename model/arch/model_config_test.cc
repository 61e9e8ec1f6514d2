#include "model/arch/model_config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

using ::testing::HasSubstr;

std::string Qwen3Config(const std::string& extra = "") {
  return R"({"model_type": "qwen3_moe", "hidden_size": 64, "num_hidden_layers": 4,
             "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 16,
             "vocab_size": 321, "num_experts": 8, "num_experts_per_tok": 2,
             "moe_intermediate_size": 24, "intermediate_size": 40, "max_position_embeddings": 256)" +
         extra + "}";
}

TEST(ModelConfig, Qwen3HeadDimFromConfigAndDenseLayers) {
  auto c = ParseModelConfig(Qwen3Config(R"(, "mlp_only_layers": [1], "decoder_sparse_step": 1,
                                            "norm_topk_prob": true)"),
                            "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 16);  // not hidden / heads = 10
  EXPECT_EQ(c->q_size(), 96);
  EXPECT_EQ(c->layer_is_moe, (std::vector<bool>{true, false, true, true}));
  EXPECT_TRUE(c->norm_topk_prob);
  EXPECT_EQ(c->arch->qk_norm, QkNorm::kPerHead);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-6f);
}

TEST(ModelConfig, SparseStepMakesEveryOtherLayerMoe) {
  auto c = ParseModelConfig(Qwen3Config(R"(, "decoder_sparse_step": 2)"), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->layer_is_moe, (std::vector<bool>{false, true, false, true}));
}

TEST(ModelConfig, MixtralAlwaysRenormalisesAndKeepsWindow) {
  auto c = ParseModelConfig(R"({"model_type": "mixtral", "hidden_size": 48, "num_hidden_layers": 2,
      "num_attention_heads": 6, "num_key_value_heads": 2, "vocab_size": 100,
      "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 32,
      "sliding_window": 7, "norm_topk_prob": false})",
                            "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->norm_topk_prob);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->sliding_window, 7);
  EXPECT_FLOAT_EQ(c->rope_theta, 1e6f);  // Mixtral's default
}

TEST(ModelConfig, Qwen2MoeBiasDefaultsOnAndSharedExpert) {
  auto c = ParseModelConfig(R"({"model_type": "qwen2_moe", "hidden_size": 48, "num_hidden_layers": 2,
      "num_attention_heads": 3, "vocab_size": 100, "num_experts": 4, "num_experts_per_tok": 2,
      "moe_intermediate_size": 16, "shared_expert_intermediate_size": 40, "intermediate_size": 64})",
                            "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->attention_bias);
  EXPECT_FALSE(c->arch->bias_on_o_proj);
  EXPECT_EQ(c->shared_intermediate_size, 40);
  EXPECT_EQ(c->num_kv_heads, 3);
  EXPECT_FALSE(c->norm_topk_prob);
}

TEST(ModelConfig, OlmoeClipAndWholeProjectionNorm) {
  auto c = ParseModelConfig(R"({"model_type": "olmoe", "hidden_size": 32, "num_hidden_layers": 1,
      "num_attention_heads": 4, "vocab_size": 50, "num_experts": 4, "num_experts_per_tok": 2,
      "intermediate_size": 16, "clip_qkv": 0.5})",
                            "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FLOAT_EQ(c->clip_qkv, 0.5f);
  EXPECT_EQ(c->arch->qk_norm, QkNorm::kWholeProjection);
}

TEST(ModelConfig, ErrorsNameTheFileKeyAndLimit) {
  auto unknown = ParseModelConfig(R"({"model_type": "llama", "hidden_size": 8})", "m/config.json");
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.status().message(), HasSubstr("m/config.json"));
  EXPECT_THAT(unknown.status().message(), HasSubstr("\"llama\""));
  EXPECT_THAT(unknown.status().message(), HasSubstr("qwen3_moe, mixtral, qwen2_moe, olmoe"));

  auto missing = ParseModelConfig(R"({"model_type": "qwen3_moe", "hidden_size": 8})", "config.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("num_hidden_layers"));

  std::string bad_heads = Qwen3Config();
  const std::string kv = "\"num_key_value_heads\": 2";
  bad_heads.replace(bad_heads.find(kv), kv.size(), "\"num_key_value_heads\": 4");
  auto heads = ParseModelConfig(bad_heads, "config.json");
  ASSERT_FALSE(heads.ok());  // 6 query heads cannot be grouped over 4 KV heads
  EXPECT_THAT(heads.status().message(), HasSubstr("num_key_value_heads"));

  auto topk = ParseModelConfig(Qwen3Config(R"(, "num_experts_per_tok": 9)"), "config.json");
  ASSERT_FALSE(topk.ok());
  EXPECT_THAT(topk.status().message(), HasSubstr("exceeds"));

  auto rope = ParseModelConfig(Qwen3Config(R"(, "rope_scaling": {"rope_type": "yarn", "factor": 4})"),
                               "config.json");
  ASSERT_FALSE(rope.ok());
  EXPECT_THAT(rope.status().message(), HasSubstr("yarn"));

  auto window = ParseModelConfig(Qwen3Config(R"(, "use_sliding_window": true)"), "config.json");
  ASSERT_FALSE(window.ok());

  auto negative = ParseModelConfig(Qwen3Config(R"(, "rms_norm_eps": -1)"), "config.json");
  ASSERT_FALSE(negative.ok());
  EXPECT_THAT(negative.status().message(), HasSubstr("rms_norm_eps"));

  auto not_json = ParseModelConfig("{nope", "config.json");
  ASSERT_FALSE(not_json.ok());
}

}  // namespace
}  // namespace moemesh
