// OLMoE (OLMoE-1B-7B): q/k RMSNorm over the whole projection before splitting heads, optional
// clip_qkv clamp of q, k and v, top-k probabilities not renormalised by default.
#include "model/arch/arch_spec.h"

namespace moemesh {

const ArchSpec& OlmoeArch() {
  static const ArchSpec spec = [] {
    ArchSpec s;
    s.model_type = "olmoe";
    s.display_name = "OLMoE";
    s.key_num_experts = "num_experts";
    s.key_expert_intermediate = "intermediate_size";
    s.key_attention_bias = "attention_bias";
    s.bias_on_o_proj = true;
    s.has_norm_topk_flag = true;
    s.norm_topk_default = false;
    s.has_clip_qkv = true;
    s.qk_norm = QkNorm::kWholeProjection;
    s.moe_layers = MoeLayerRule::kAll;
    s.moe_prefixes = {"mlp"};
    s.expert_gate = "experts.{E}.gate_proj.weight";
    s.expert_up = "experts.{E}.up_proj.weight";
    s.expert_down = "experts.{E}.down_proj.weight";
    s.default_rms_eps = 1e-5;
    s.default_rope_theta = 10000.0;
    return s;
  }();
  return spec;
}

}  // namespace moemesh
