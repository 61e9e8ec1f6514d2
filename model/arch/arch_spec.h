// Architecture specs: each supported model family described as data (config keys, tensor
// names, forward-pass switches), one small file per family. Code that runs a model reads these
// instead of branching on the family's name. Immutable globals; thread-safe.
#pragma once

#include <string>
#include "absl/strings/string_view.h"
#include <vector>

namespace moemesh {

enum class QkNorm {
  kNone,
  kPerHead,          // Qwen3: RMSNorm over head_dim of each head, before RoPE
  kWholeProjection,  // OLMoE: RMSNorm over the whole q (k) projection, before splitting heads
};

enum class MoeLayerRule {
  kAll,         // every layer is MoE (Mixtral, OLMoE)
  kSparseStep,  // MoE iff layer not in mlp_only_layers and (layer+1) % decoder_sparse_step == 0
};

struct ArchSpec {
  absl::string_view model_type;  // config.json "model_type"
  absl::string_view display_name;

  // config.json keys that differ between families.
  absl::string_view key_num_experts;            // "num_experts" / "num_local_experts"
  absl::string_view key_expert_intermediate;    // "moe_intermediate_size" / "intermediate_size"
  absl::string_view key_shared_intermediate;    // "" when the family has no shared expert
  absl::string_view key_attention_bias;         // "" when there is no attention bias
  bool bias_on_o_proj = false;                 // whether that key also gives o_proj a bias
  bool attention_bias_default = false;
  bool has_norm_topk_flag = true;              // false: always renormalise (Mixtral)
  bool norm_topk_default = false;
  bool has_clip_qkv = false;
  bool supports_sliding_window = false;        // Mixtral's "sliding_window"
  double default_rms_eps = 1e-6;               // used when config.json omits the key
  double default_rope_theta = 10000.0;
  QkNorm qk_norm = QkNorm::kNone;
  MoeLayerRule moe_layers = MoeLayerRule::kAll;

  // Tensor names under "model.layers.{L}." ({E} is the expert index). The MoE block's prefix
  // is tried in order: published checkpoints first, then transformers-v5 names.
  std::vector<absl::string_view> moe_prefixes;  // e.g. {"block_sparse_moe", "mlp"}
  absl::string_view router = "gate.weight";
  absl::string_view expert_gate;                // per-expert names, relative to the MoE prefix
  absl::string_view expert_up;
  absl::string_view expert_down;
  // Fused 3-D expert tensors (transformers v5): gate_up [E, 2I, H] (gate rows first), down [E, H, I].
  absl::string_view fused_gate_up = "experts.gate_up_proj";
  absl::string_view fused_down = "experts.down_proj";
  // Dense MLP of non-MoE layers, relative to "model.layers.{L}.".
  absl::string_view dense_gate = "mlp.gate_proj.weight";
  absl::string_view dense_up = "mlp.up_proj.weight";
  absl::string_view dense_down = "mlp.down_proj.weight";
  // Shared expert (Qwen2-MoE), relative to the MoE prefix.
  absl::string_view shared_gate_proj = "shared_expert.gate_proj.weight";
  absl::string_view shared_up_proj = "shared_expert.up_proj.weight";
  absl::string_view shared_down_proj = "shared_expert.down_proj.weight";
  absl::string_view shared_expert_gate = "shared_expert_gate.weight";  // [1, H], sigmoid
};

// The registry: every family this build supports.
const std::vector<const ArchSpec*>& SupportedArchs();
// Finds a family by config.json "model_type"; nullptr if unknown.
const ArchSpec* FindArch(absl::string_view model_type);
// "qwen3_moe, mixtral, qwen2_moe, olmoe": for error messages.
std::string SupportedArchList();

// Families (each defined in its own file).
const ArchSpec& Qwen3MoeArch();
const ArchSpec& MixtralArch();
const ArchSpec& Qwen2MoeArch();
const ArchSpec& OlmoeArch();

}  // namespace moemesh
