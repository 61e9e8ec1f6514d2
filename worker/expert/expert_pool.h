// ExpertPool: an expert worker's routed experts (a subset per MoE layer) and the threads that run
// them over a batch of many tokens of one layer. Two kinds: the fp32 reference pool
// (reference_expert_pool.h: kernels/ref, for checking) and the packed NUMA pool
// (numa_expert_pool.h: kernels/cpu in bf16/int8/int4, weights bound to NUMA nodes). Numerics
// only: no network, no routing decisions (the attention rank routes). Thread-safe: concurrent
// Run calls are serialised by a mutex (each Run uses every thread of the pool); results do not
// depend on thread timing or thread counts.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/thread_pool.h"
#include "model/arch/model_config.h"
#include "model/reference/model_weights.h"
#include "runtime/expert_client.h"
#include "worker/expert/numa_executor.h"

namespace moemesh {

struct ExpertPoolOptions {
  std::string format = "bf16";  // an ExpertFormat name (expert_format.h); "fp32": the reference
  int num_threads = 0;          // total compute threads when `nodes` is empty; 0: one per core
  // Packed formats: the NUMA nodes to use; empty: every node of the host (hwloc), threads pinned
  // one per core. The fp32 pool uses the total of their threads, pinned to their cpusets.
  std::vector<NumaNodeSpec> nodes;
  bool show_progress = false;   // a progress bar (by bytes) on stderr while loading
  int64_t amx_threshold = 0;    // packed formats: NumaPoolConfig::amx_threshold (0: measure)
};

class ExpertPool {
 public:
  virtual ~ExpertPool();
  ExpertPool(const ExpertPool&) = delete;
  ExpertPool& operator=(const ExpertPool&) = delete;

  // Loads the routed experts `layer_experts[layer]` (indexed by layer; entries of non-MoE layers
  // are ignored; empty vector: every expert of every MoE layer) from a Hugging Face model
  // directory, nothing else, in options.format. Logs the bytes loaded (per NUMA node).
  static absl::StatusOr<std::unique_ptr<ExpertPool>> Load(
      const std::string& model_dir, const std::vector<std::vector<int>>& layer_experts,
      const ExpertPoolOptions& options);
  // The fp32 reference pool (as ReferenceExpertPool::Load / FromWeights).
  static absl::StatusOr<std::unique_ptr<ExpertPool>> Load(
      const std::string& model_dir, const std::vector<std::vector<int>>& layer_experts,
      const ThreadPoolOptions& threads);
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
  uint64_t bytes() const { return bytes_; }       // weight bytes held (fp32 or packed)
  virtual int num_threads() const = 0;
  virtual std::string format() const = 0;         // "fp32", "bf16", "int8-g32", ...

 protected:
  // `held[layer]`: the experts held, ascending (empty for non-MoE layers); checked by the caller.
  ExpertPool(ModelConfig config, std::vector<std::vector<int>> held, uint64_t bytes);
  // Runs a validated batch; calls are serialised by Run.
  virtual void Compute(const ExpertBatch& batch, absl::Span<float> out) = 0;
  // Index of `expert` in HeldExperts(layer), or -1.
  int Slot(int layer, int expert) const { return slot_[layer][expert]; }
  void set_bytes(uint64_t bytes) { bytes_ = bytes; }  // while loading, before any Run

 private:
  absl::Status Validate(const ExpertBatch& batch, absl::Span<const float> out) const;

  ModelConfig config_;
  std::vector<std::vector<int>> held_;
  std::vector<std::vector<int>> slot_;  // [layer][expert] -> index into held_[layer], or -1
  uint64_t bytes_ = 0;
  std::mutex run_mu_;  // one Compute at a time: it uses every thread of the pool
};

}  // namespace moemesh
