// Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): per-head q/k RMSNorm before RoPE, head_dim from
// config, norm_topk_prob (true in published models), optional dense layers.
#include "model/arch/arch_spec.h"

namespace moemesh {

const ArchSpec& Qwen3MoeArch() {
  static const ArchSpec spec = [] {
    ArchSpec s;
    s.model_type = "qwen3_moe";
    s.display_name = "Qwen3-MoE";
    s.key_num_experts = "num_experts";
    s.key_expert_intermediate = "moe_intermediate_size";
    s.key_attention_bias = "attention_bias";
    s.bias_on_o_proj = true;
    s.has_norm_topk_flag = true;
    s.norm_topk_default = false;
    s.qk_norm = QkNorm::kPerHead;
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
