// Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): q/k/v bias ("qkv_bias", no o bias), a shared
// expert scaled by sigmoid(shared_expert_gate . x), norm_topk_prob false in published models.
#include "model/arch/arch_spec.h"

namespace moemesh {

const ArchSpec& Qwen2MoeArch() {
  static const ArchSpec spec = [] {
    ArchSpec s;
    s.model_type = "qwen2_moe";
    s.display_name = "Qwen2-MoE";
    s.key_num_experts = "num_experts";
    s.key_expert_intermediate = "moe_intermediate_size";
    s.key_shared_intermediate = "shared_expert_intermediate_size";
    s.key_attention_bias = "qkv_bias";
    s.bias_on_o_proj = false;
    s.attention_bias_default = true;
    s.has_norm_topk_flag = true;
    s.norm_topk_default = false;
    s.moe_layers = MoeLayerRule::kSparseStep;
    s.moe_prefixes = {"mlp"};
    s.expert_gate = "experts.{E}.gate_proj.weight";
    s.expert_up = "experts.{E}.up_proj.weight";
    s.expert_down = "experts.{E}.down_proj.weight";
    return s;
  }();
  return spec;
}

}  // namespace moemesh
