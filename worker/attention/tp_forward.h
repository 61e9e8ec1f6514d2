// TpForward: one tensor-parallel rank's share of a batched forward pass (the distributed twin
// of ReferenceModel::Forward): vocab-parallel embedding, head-parallel attention over a paged
// cache, MoE/MLP rows split across ranks with routed experts behind an ExpertClient, and a
// vocab-parallel LM head. Every rank must call Run with the same batch; every collective is
// reached on every rank even when one rank's expert call fails. No request bookkeeping here
// (attention_runner.h). Not thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/arch/model_config.h"
#include "model/reference/model_weights.h"
#include "runtime/collective.h"
#include "runtime/expert_client.h"
#include "worker/attention/forward_pass.h"
#include "worker/attention/paged_kv_cache.h"
#include "worker/attention/tp_layout.h"

namespace moemesh {

class TpForward : public ForwardPass {
 public:
  // All pointers are borrowed and must outlive this object; `experts` may be null only for a
  // model without MoE layers.
  TpForward(const ModelConfig* config, const ModelWeights* weights, TpLayout layout,
            Collective* tp, ExpertClient* experts, PagedKvCache* cache);

  // Runs the batch, writing its K/V into the cache. Returns the full-vocabulary logits
  // [sequences with logits, vocab] (on every rank), in batch order.
  absl::StatusOr<std::vector<float>> Run(absl::Span<const ForwardSequence> batch) override;
  // Run with cascade attention for the levels' members (kernels/ref/cascade.h passes).
  absl::StatusOr<std::vector<float>> RunCascade(
      absl::Span<const ForwardSequence> batch,
      absl::Span<const ForwardCascadeLevel> levels) override;
  absl::Status CopyBlocks(absl::Span<const BlockCopy> copies) override;

 private:
  absl::StatusOr<std::vector<float>> Forward(absl::Span<const ForwardSequence> batch);
  // The attention of the current cascade levels' members over their cached tokens, written to
  // their rows of `attn`; the other sequences attend flat.
  void CascadeAttention(int layer, absl::Span<const ForwardSequence> batch,
                        const std::vector<int64_t>& offsets, const float* q, float* attn);
  absl::Status Attention(int layer, absl::Span<const ForwardSequence> batch,
                         const std::vector<float>& x, std::vector<float>& out);
  absl::Status WholeProjectionNorm(const LayerWeights& lw, int64_t n, float* q, float* k);
  absl::Status Mlp(int layer, const std::vector<float>& x, int64_t n, std::vector<float>& out);
  absl::Status LocalMlp(int layer, const float* x, int64_t m, float* out);
  absl::StatusOr<std::vector<float>> Logits(const std::vector<float>& x,
                                            const std::vector<int64_t>& rows);

  const ModelConfig& c_;
  const ModelWeights& w_;
  const TpLayout layout_;
  Collective* tp_;
  ExpertClient* experts_;
  PagedKvCache* cache_;
  std::vector<float> inv_freq_;
  std::vector<int64_t> positions_;  // of the current batch's tokens
  absl::Span<const ForwardCascadeLevel> cascade_;  // of the current batch (RunCascade)
};

}  // namespace moemesh
