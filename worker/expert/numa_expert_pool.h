// NumaExpertPool: the expert worker's routed experts in a packed format (bf16, int8 or int4 with
// group scales; kernels/cpu), each expert's weights bound to the memory of one NUMA node and
// computed only by that node's threads (never duplicated across nodes). A batch runs as one
// executor phase of (expert, row range) tasks (MoeStepPlan: gather, gate+up, down, per-token
// sum, each task waiting only for the earlier tasks it reads from), each node's threads taking
// its tasks with work stealing. Loading reads and packs expert by expert, so peak memory
// stays near the packed size. Thread-safe as ExpertPool says; results are identical for any
// number of threads and nodes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/expert_ffn.h"
#include "model/io/weight_source.h"
#include "worker/expert/expert_pool.h"
#include "worker/expert/moe_step_plan.h"
#include "worker/expert/route_groups.h"
#include "worker/expert/numa_executor.h"
#include "worker/expert/numa_memory.h"

namespace moemesh {

struct NumaPoolConfig {
  cpu::FormatSpec format;
  std::vector<NumaNodeSpec> nodes;  // at least one; see NodesFromTopology
  bool show_progress = false;       // a progress bar by bytes on stderr
  // Tokens per expert from which the AMX path runs, for this format (cpu::SetAmxThreshold:
  // process-wide). 0: measured at load on a held expert (cpu::MeasurePathThreshold, AMX
  // against AVX-512) where AMX runs; >= 1: this value, unmeasured.
  int64_t amx_threshold = 0;
};

class NumaExpertPool final : public ExpertPool {
 public:
  // As ExpertPool::Load. Experts go to the node with the fewest bytes so far (ties: the lower
  // node), in (layer, expert) order, so each layer's experts spread over the nodes. Then sets
  // the format's AMX threshold (config.amx_threshold) and logs it in one line.
  // INVALID_ARGUMENT for a bad config or expert list (naming the value and the limit).
  static absl::StatusOr<std::unique_ptr<NumaExpertPool>> Load(
      const std::string& model_dir, const std::vector<std::vector<int>>& layer_experts,
      const NumaPoolConfig& config);
  ~NumaExpertPool() override;

  int num_threads() const override { return executor_->num_threads(); }
  std::string format() const override { return format_.Name(); }
  int num_nodes() const { return executor_->num_nodes(); }
  const std::vector<uint64_t>& node_bytes() const { return node_bytes_; }  // packed, per node
  // The node holding a held expert, and its packed weights (for tests and tools).
  int NodeOf(int layer, int expert) const;
  const cpu::PackedExpert& Packed(int layer, int expert) const;

 private:
  struct Held {
    cpu::PackedExpert packed;
    int node = 0;
  };
  NumaExpertPool(ModelConfig config, std::vector<std::vector<int>> held, const NumaPoolConfig& cfg);
  absl::Status LoadExperts(const std::string& model_dir, const WeightSource& source);
  void Compute(const ExpertBatch& batch, absl::Span<float> out) override;

  cpu::FormatSpec format_;
  std::unique_ptr<Hwloc> hwloc_;                   // outlives the arenas and the executor
  std::vector<std::unique_ptr<NodeArena>> arenas_;  // per node: owns the packed weights' memory
  std::vector<std::vector<Held>> experts_;         // [layer][slot]
  std::vector<uint64_t> node_bytes_;
  std::unique_ptr<NumaExecutor> executor_;
  bool show_progress_ = false;

  // Scratch reused across calls (Compute calls are serialised).
  std::vector<int32_t> slot_node_;                // [slots of the layer]: the node of each
  std::vector<const cpu::PackedExpert*> packed_;  // [slots of the layer]
  MoeStep step_;
};

}  // namespace moemesh
