// Mixtral (8x7B, 8x22B): w1 = gate, w3 = up, w2 = down; router always renormalises its top-k;
// optional sliding window; published checkpoints use "block_sparse_moe", v5 uses "mlp".
#include "model/arch/arch_spec.h"

namespace moemesh {

const ArchSpec& MixtralArch() {
  static const ArchSpec spec = [] {
    ArchSpec s;
    s.model_type = "mixtral";
    s.display_name = "Mixtral";
    s.key_num_experts = "num_local_experts";
    s.key_expert_intermediate = "intermediate_size";
    s.has_norm_topk_flag = false;
    s.norm_topk_default = true;
    s.supports_sliding_window = true;
    s.moe_layers = MoeLayerRule::kAll;
    s.moe_prefixes = {"block_sparse_moe", "mlp"};
    s.expert_gate = "experts.{E}.w1.weight";
    s.expert_up = "experts.{E}.w3.weight";
    s.expert_down = "experts.{E}.w2.weight";
    s.default_rms_eps = 1e-5;
    s.default_rope_theta = 1e6;
    return s;
  }();
  return spec;
}

}  // namespace moemesh
