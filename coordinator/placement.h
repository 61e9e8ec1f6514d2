// The placement planner: a pure function from the model's shape and the workers' inventory to
// where every attention rank and every routed expert goes, or an error that says what is
// missing. No membership, no I/O, no weight loading here. Thread-safe (stateless).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/arch/model_config.h"

namespace moemesh {

enum class WorkerRole { kAttention, kExpert };

struct WorkerInventory {
  std::string id;
  WorkerRole role = WorkerRole::kExpert;
  uint64_t dram_bytes = 0;
  int32_t cores = 0;
  int32_t numa_nodes = 1;
  uint64_t gpu_memory_bytes = 0;
};

struct PlacementPolicy {
  int32_t tp_size = 1;
  int32_t expert_replicas = 1;         // distinct expert workers holding each routed expert
  double usable_dram_fraction = 0.9;   // of an expert worker's DRAM, for expert weights
  // Resident bytes per routed-expert weight in the experts' format: 2 (bf16), 1.25 (int8-g32),
  // 0.75 (int4-g32), ... (worker/expert/expert_format.h ExpertFormat::BytesPerWeight).
  double bytes_per_weight = 2;
};

struct Placement {
  std::vector<std::string> attention_ranks;  // worker id per TP rank
  std::vector<std::string> expert_workers;   // expert worker ids, index = expert worker index
  // [layer][expert] -> expert worker indices holding it (replicas, ascending); empty for dense
  // layers.
  std::vector<std::vector<std::vector<int32_t>>> owners;
  // [expert worker][layer] -> experts held (ascending).
  std::vector<std::vector<std::vector<int32_t>>> worker_layer_experts;
  std::vector<uint64_t> worker_bytes;  // expert weight bytes per expert worker

  // "TP 2 on a0,a1; 3 expert workers: e0 1.2 GiB (43 experts), ..."
  std::string Summary() const;
};

// Bytes of one routed expert's weights (gate, up and down projections), rounded up.
uint64_t ExpertBytes(const ModelConfig& model, double bytes_per_weight);

// Attention ranks: exactly policy.tp_size attention workers, ordered by id (FAILED_PRECONDITION
// otherwise); num_heads % tp == 0 and num_kv_heads % tp == 0 or tp % num_kv_heads == 0
// (INVALID_ARGUMENT otherwise). Routed experts: each expert of each MoE layer on
// `expert_replicas` distinct expert workers, greedily to the least-loaded worker by bytes (ties
// to the lower index; workers indexed by id, so the input order does not matter), never beyond a
// worker's usable DRAM (RESOURCE_EXHAUSTED with the bytes needed and offered). Duplicate worker
// ids and invalid policies are INVALID_ARGUMENT.
absl::StatusOr<Placement> PlanPlacement(const ModelConfig& model,
                                        const std::vector<WorkerInventory>& workers,
                                        const PlacementPolicy& policy);

}  // namespace moemesh
