// ReferenceExpertPool: the fp32 expert pool, computing with kernels/ref from the weights as
// loaded (fp32). The yardstick for the packed pools (numa_expert_pool.h) and `--expert_format
// fp32`; not fast. Thread-safe as ExpertPool says.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "worker/expert/expert_pool.h"
#include "worker/expert/route_groups.h"

namespace moemesh {

class ReferenceExpertPool final : public ExpertPool {
 public:
  // As ExpertPool::Load, in fp32, on one thread pool.
  static absl::StatusOr<std::unique_ptr<ReferenceExpertPool>> Load(
      const std::string& model_dir, const std::vector<std::vector<int>>& layer_experts,
      const ThreadPoolOptions& threads);
  // Wraps weights already loaded (tests, or a process that loaded them itself). The routed
  // experts of each MoE layer are the ones listed in LayerWeights::expert_ids.
  static absl::StatusOr<std::unique_ptr<ReferenceExpertPool>> FromWeights(
      ModelConfig config, ModelWeights weights, const ThreadPoolOptions& threads);

  int num_threads() const override { return pool_->num_threads(); }
  std::string format() const override { return "fp32"; }

 private:
  ReferenceExpertPool(ModelConfig config, ModelWeights weights, std::vector<std::vector<int>> held,
                      const ThreadPoolOptions& threads);
  void Compute(const ExpertBatch& batch, absl::Span<float> out) override;

  ModelWeights weights_;
  std::unique_ptr<ThreadPool> pool_;
  // Scratch reused across calls (Compute calls are serialised).
  RouteGroups routes_;  // the current batch's routes grouped by expert
  std::vector<float> route_out_;      // [routes held, hidden]
};

}  // namespace moemesh
