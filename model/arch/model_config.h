// The parsed, validated shape of a model: config.json read through its ArchSpec, plus the
// generation defaults of generation_config.json. Plain data; thread-safe once built.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/arch/arch_spec.h"

namespace moemesh {

struct ModelConfig {
  const ArchSpec* arch = nullptr;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v (and o when the arch says so) have biases
  float clip_qkv = 0.0f;        // 0: no clamp
  int64_t sliding_window = 0;   // 0: full attention

  int num_experts = 0;
  int experts_per_token = 0;
  int expert_intermediate_size = 0;
  int dense_intermediate_size = 0;   // MLP of non-MoE layers
  int shared_intermediate_size = 0;  // 0: no shared expert
  bool norm_topk_prob = false;
  std::vector<bool> layer_is_moe;    // one entry per layer

  int q_size() const { return num_heads * head_dim; }
  int kv_size() const { return num_kv_heads * head_dim; }
  int num_moe_layers() const;
  std::string Summary() const;  // one line for logs
};

struct GenerationDefaults {
  std::vector<int32_t> eos_token_ids;
  std::optional<int32_t> bos_token_id;
  std::optional<float> temperature;  // only when do_sample is true in the file
  std::optional<float> top_p;
  std::optional<int32_t> top_k;
  std::optional<float> repetition_penalty;
};

// Parses config.json text; `source` names the file in errors. Unknown "model_type" lists the
// supported ones; every invalid value names the key, the value and the limit.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json, absl::string_view source);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

// Reads generation_config.json if present (a missing file gives empty defaults).
absl::StatusOr<GenerationDefaults> LoadGenerationDefaults(const std::string& model_dir);

}  // namespace moemesh
