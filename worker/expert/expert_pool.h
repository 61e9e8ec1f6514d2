// ExpertPool: an expert worker's routed experts (fp32, a subset per MoE layer) and the thread
// pool that runs them over a batch of many tokens. Numerics only: no network, no routing
// decisions (the attention rank routes). Thread-safe: concurrent Run calls are serialised by a
// mutex (each Run uses every thread of the pool); results do not depend on thread timing.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/thread_pool.h"
#include "model/arch/model_config.h"
#include "model/reference/model_weights.h"
#include "runtime/expert_client.h"

namespace moemesh {

class ExpertPool {
 public:
  // Loads the routed experts `layer_experts[layer]` (indexed by layer; entries of non-MoE
  // layers are ignored; empty vector: every expert of every MoE layer) from a Hugging Face
  // model directory, nothing else (ShardSpec::load_dense = false). Logs the bytes loaded.
  static absl::StatusOr<std::unique_ptr<ExpertPool>> Load(
      const std::string& model_dir, const std::vector<std::vector<int>>& layer_experts,
      const ThreadPoolOptions& threads);
  // Wraps weights already loaded (tests, or a process that loaded them itself). The routed
  // experts of each MoE layer are the ones listed in LayerWeights::expert_ids.
  static absl::StatusOr<std::unique_ptr<ExpertPool>> FromWeights(ModelConfig config,
                                                                 ModelWeights weights,
                                                                 const ThreadPoolOptions& threads);

  // out[t, :] = sum over j (in j order) of expert_weights[t, j] * FFN_e(x_t), e = expert_ids[t, j],
  // skipping e = -1. Errors: INVALID_ARGUMENT for a malformed batch (names the field, the value
  // and the limit); FAILED_PRECONDITION for an expert this pool does not hold (names the layer
  // and the expert). `out` is left unspecified on error.
  absl::Status Run(const ExpertBatch& batch, absl::Span<float> out);

  const ModelConfig& config() const { return config_; }
  bool Holds(int layer, int expert) const;
  std::vector<int> HeldExperts(int layer) const;  // ascending; empty for non-MoE layers
  uint64_t bytes() const { return weights_.bytes; }
  int num_threads() const { return pool_->num_threads(); }

 private:
  ExpertPool(ModelConfig config, ModelWeights weights, const ThreadPoolOptions& threads);
  absl::Status Validate(const ExpertBatch& batch, absl::Span<const float> out) const;

  ModelConfig config_;
  ModelWeights weights_;
  std::vector<std::vector<int>> slot_;  // [layer][expert] -> index into LayerWeights::experts, -1

  std::mutex run_mu_;  // one Run at a time: ThreadPool::ParallelFor has a single caller
  std::unique_ptr<ThreadPool> pool_;  // fixed after construction; ParallelFor under run_mu_
  // Scratch reused across calls.
  std::vector<int32_t> route_count_ ABSL_GUARDED_BY(run_mu_);   // per slot, then offsets
  std::vector<int32_t> route_token_ ABSL_GUARDED_BY(run_mu_);   // grouped position -> token
  std::vector<int32_t> route_pos_ ABSL_GUARDED_BY(run_mu_);     // (t, j) -> grouped position
  std::vector<float> route_out_ ABSL_GUARDED_BY(run_mu_);       // [routes held, hidden]
};

}  // namespace moemesh
