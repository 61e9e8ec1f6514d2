// AttentionRunner: one tensor-parallel attention rank. Executes the coordinator's StepPlans:
// keeps each request's state (block table, cached length; on rank 0 also its Sampler and token
// history), runs the plan's block copies and then the step's tokens as one batch through the
// forward pass (flat, or with the plan's cascade levels), and on rank 0 samples. The KV blocks
// are allocated by the coordinator; this class only checks and uses them: blocks are
// reference-counted (prefix caching shares them between requests), and a request may write
// only blocks no other request holds.
// Not thread-safe: Execute calls are sequential, one runner per rank (each on its own thread
// or process), every rank executing the same plans in the same order.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "model/arch/model_config.h"
#include "model/reference/model_weights.h"
#include "model/sampling/sampling.h"
#include "runtime/collective.h"
#include "runtime/expert_client.h"
#include "runtime/step_plan.h"
#include "worker/attention/forward_pass.h"
#include "worker/attention/paged_kv_cache.h"
#include "worker/attention/tp_forward.h"
#include "worker/attention/tp_layout.h"

namespace moemesh {

struct AttentionRunnerConfig {
  int32_t num_kv_blocks = 1024;
  int32_t block_size = 16;
};

class AttentionRunner {
 public:
  // `weights` is this rank's shard, loaded with ShardFor(config, tp->rank(), tp->size()).
  // `tp` and `experts` are borrowed and must outlive the runner (`experts` may be null only for
  // a model without MoE layers). The config must pass CheckTp (checked).
  AttentionRunner(ModelConfig config, ModelWeights weights, AttentionRunnerConfig cfg,
                  Collective* tp, ExpertClient* experts);
  // Runs the steps through another forward pass (the GPU one), which owns this rank's weights
  // and KV cache of cfg.num_kv_blocks blocks. `tp` is still used to know the rank.
  AttentionRunner(ModelConfig config, AttentionRunnerConfig cfg, Collective* tp,
                  std::unique_ptr<ForwardPass> forward);

  // Query heads split evenly; vocabulary split evenly (the last rank takes the rest); no routed
  // experts; replicated norms, router, dense MLPs and shared experts.
  static ShardSpec ShardFor(const ModelConfig& config, int rank, int tp_size);
  // INVALID_ARGUMENT naming the numbers unless heads % tp == 0 and (kv % tp == 0 or
  // tp % kv == 0) (and tp <= vocabulary size).
  static absl::Status CheckTp(const ModelConfig& config, int tp_size);

  // Runs one step. Every rank returns OK or an error (plan errors are found on every rank
  // before any communication; a failed step changes no request state except `finished`).
  // Only rank 0 fills tokens: one per sequence with sample = true, in plan order.
  // Errors: FAILED_PRECONDITION for unknown or duplicate request ids, positions that do not
  // continue the cache, new blocks or copy destinations already in use, too few blocks, a write
  // into a block another request holds, cascade members whose tables differ over the level;
  // INVALID_ARGUMENT for token ids outside the vocabulary, block ids outside the pool, invalid
  // sampling params, positions past the context, malformed prefixes (blocks not covering
  // prefix_tokens, no token left to compute), copies and cascade levels (a copy into its own
  // source or twice into a block, a level with fewer than 2 members, a member that is not a
  // one-token sequence, levels that do not tile a member's table from block 0 or reach its
  // query, or a window that does not see them); the collective's or expert client's status,
  // or the forward pass's CopyBlocks status, when those fail.
  absl::StatusOr<StepResult> Execute(const StepPlan& plan);

  // Blocks no request holds.
  int32_t free_blocks() const { return free_blocks_; }
  int num_requests() const { return static_cast<int>(requests_.size()); }
  // Rank 0: the full-vocabulary logits of the last successful step's sampled rows
  // ([sampled sequences, vocab], plan order). For tests and debugging.
  const std::vector<float>& last_logits() const { return last_logits_; }

 private:
  struct RequestState {
    std::vector<int32_t> prompt;
    std::vector<int32_t> generated;  // rank 0: earlier output, then each sampled token
    std::optional<Sampler> sampler;  // rank 0 only
    std::vector<int32_t> block_table;
    int64_t num_cached = 0;
  };
  // A scheduled sequence after validation: its state and its block table including this
  // step's new blocks.
  struct Staged {
    const ScheduledSequence* seq;
    RequestState* state;
    std::vector<int32_t> table;
  };

  // Blocks this plan claims: new requests' prefix blocks (holds), new and copied-into blocks.
  struct Claims {
    absl::flat_hash_map<int32_t, int32_t> prefix_holds;  // block -> new holders
    absl::flat_hash_set<int32_t> fresh;                  // new blocks and copy destinations
  };

  void DropFinished(const std::vector<uint64_t>& finished);
  absl::Status StageNewRequests(const StepPlan& plan,
                                absl::flat_hash_map<uint64_t, RequestState>& fresh,
                                Claims& claims) const;
  absl::Status StageCopies(const StepPlan& plan, Claims& claims) const;
  absl::Status StageSequences(const StepPlan& plan,
                              absl::flat_hash_map<uint64_t, RequestState>& fresh,
                              Claims& claims, std::vector<Staged>& staged);
  absl::Status StageCascade(const StepPlan& plan, const std::vector<Staged>& staged,
                            std::vector<ForwardCascadeLevel>& levels) const;
  void Commit(absl::flat_hash_map<uint64_t, RequestState>& fresh, std::vector<Staged>& staged);
  void Hold(int32_t block);

  const ModelConfig config_;
  const ModelWeights weights_;  // empty when the forward pass owns its weights
  const AttentionRunnerConfig cfg_;
  Collective* tp_;
  std::unique_ptr<PagedKvCache> cache_;  // the CPU forward pass's cache
  std::unique_ptr<ForwardPass> forward_;
  absl::flat_hash_map<uint64_t, RequestState> requests_;
  std::vector<int32_t> block_refs_;  // requests holding each block
  int32_t free_blocks_;
  std::vector<float> last_logits_;
};

}  // namespace moemesh
