// Loads a model's weights, or one shard of them, into fp32 host arrays for the reference
// engine: reads through a WeightSource with slices, so a shard touches only its own bytes.
// Not for the optimized backends (they keep bf16/quantized layouts). Thread-safe once built.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "model/arch/model_config.h"
#include "model/io/weight_source.h"

namespace moemesh {

struct Matrix {  // row-major [rows, cols]
  std::vector<float> data;
  int64_t rows = 0;
  int64_t cols = 0;
  bool empty() const { return data.empty(); }
};

struct FfnWeights {  // down(silu(gate x) * up x)
  Matrix gate;       // [I, H]
  Matrix up;         // [I, H]
  Matrix down;       // [H, I]
};

struct LayerWeights {
  std::vector<float> attn_norm;  // [H]
  std::vector<float> mlp_norm;   // [H]
  Matrix wq, wk, wv, wo;         // wq [q heads * d, H]; wo [H, q heads * d]
  std::vector<float> bq, bk, bv, bo;  // empty when the model has no such bias
  std::vector<float> q_norm, k_norm;  // per-head [d] or whole-projection; empty if none
  bool is_moe = false;
  Matrix router;                 // [E, H] (all experts: routing is replicated)
  std::vector<int> expert_ids;   // experts held by this shard, ascending
  std::vector<FfnWeights> experts;  // parallel to expert_ids
  FfnWeights dense;              // non-MoE layers
  FfnWeights shared;             // Qwen2-MoE shared expert
  std::vector<float> shared_expert_gate;  // [H]
};

// What part of the model to load. The defaults load everything.
struct ShardSpec {
  int head_begin = 0;       // query heads [head_begin, head_end); KV heads follow them
  int head_end = -1;        // -1: all
  int64_t vocab_begin = 0;  // embedding and LM head rows [vocab_begin, vocab_end)
  int64_t vocab_end = -1;
  std::optional<std::vector<int>> experts;  // routed experts of every MoE layer; nullopt: all
  // Per-layer routed experts (indexed by layer); when non-empty it overrides `experts`.
  std::vector<std::vector<int>> layer_experts;
  // Embedding, norms, attention, router, dense MLPs, shared expert and LM head. Off for expert
  // workers, which hold routed experts only.
  bool load_dense = true;
};

struct ModelWeights {
  Matrix embed;                 // [vocab rows, H]
  std::vector<float> final_norm;
  Matrix lm_head;               // [vocab rows, H]; a copy of embed when tied
  std::vector<LayerWeights> layers;
  int kv_head_begin = 0;        // KV heads held: [kv_head_begin, kv_head_end)
  int kv_head_end = 0;
  uint64_t bytes = 0;           // fp32 bytes held
};

// Called after each tensor with the stored bytes read so far and the total the shard reads.
using LoadProgress = std::function<void(uint64_t done, uint64_t total)>;

// Loads the shard; every tensor's shape is checked against the config, and errors name the
// file and the tensor. The shard is planned first (names, slices, shapes), then read.
absl::StatusOr<ModelWeights> LoadModelWeights(const ModelConfig& config, const WeightSource& source,
                                              const ShardSpec& shard, const LoadProgress& progress = {});

// Rounds every weight the GPU worker stores in bf16 (matrices and the shared-expert gate; not
// norms or biases) to bf16 in place: the reference engine run on such weights computes what
// the GPU worker should, for checkpoints stored in higher precision.
void RoundMatricesToBf16(ModelWeights& w);

}  // namespace moemesh
