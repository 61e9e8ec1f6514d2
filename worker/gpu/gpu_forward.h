// GpuForward: one tensor-parallel attention rank's forward pass on its GPU (the ForwardPass of
// worker/attention/forward_pass.h). Weights are bf16 on the device (device_weights.h),
// activations fp32, projections through cuBLASLt with split-bf16 activations (kernels/cuda/
// gemm.h), the KV cache a paged bf16 pool in device memory, collectives over NCCL. Routed
// experts run on CPU expert workers behind an ExpertClient: each MoE layer copies its rows to
// pinned host buffers, calls the experts from a host callback enqueued on the stream, and
// copies the result back. Rows of the MLP are split across ranks and all-gathered, like the CPU
// TpForward, so every expert call happens once per (step, layer, rank's rows).
//
// Steps whose sequences all decode one token run as CUDA graphs captured per (batch bucket,
// context bucket) and replayed (inputs are copied into fixed device buffers first; padding rows
// write nothing and are dropped); other steps (prefill chunks) run eagerly. Every rank must run
// the same batches in the same order. Not thread-safe.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/gemm.h"
#include "model/arch/model_config.h"
#include "runtime/expert_client.h"
#include "worker/attention/forward_pass.h"
#include "worker/attention/tp_layout.h"
#include "worker/gpu/device_weights.h"
#include "worker/gpu/nccl_group.h"

namespace moemesh {

struct GpuForwardConfig {
  int device = 0;                   // CUDA device (made current on the calling thread)
  int32_t num_kv_blocks = 0;        // 0: as many as fit in kv_memory_fraction of free memory
  int32_t block_size = 16;
  int32_t max_step_tokens = 2048;   // tokens per step (the scheduler's budget)
  int32_t max_sequences = 64;       // sequences per step
  int32_t max_context = 4096;       // positions per sequence
  double kv_memory_fraction = 0.9;  // of the memory free after weights and buffers
  bool cuda_graphs = true;          // capture decode steps
  int32_t max_cascade_levels = 0;   // levels per step the cascade path takes (0: always flat;
                                    // served GPU ranks get the coordinator's assignment)
  int32_t max_cascade_depth = 4;    // levels holding any one sequence
  cuda::Precision precision = cuda::Precision::kSplit;
};

// Per-step timing of the last Run, for benchmarks.
struct GpuStepStats {
  bool graph = false;      // replayed a captured graph
  bool cascade = false;    // decode attention ran as cascade
  bool captured = false;   // captured one in this step
  int32_t batch_bucket = 0;
  double expert_seconds = 0;  // inside the host callbacks (expert calls)
};

class GpuForward final : public ForwardPass {
 public:
  // `tp` may be null for a single rank; `experts` may be null only without MoE layers. Both
  // are borrowed. The current CUDA device must be set by the caller. Errors: RESOURCE_EXHAUSTED
  // naming the bytes when weights, buffers or the requested KV blocks do not fit.
  static absl::StatusOr<std::unique_ptr<GpuForward>> Create(const ModelConfig& config,
                                                            TpLayout layout, DeviceWeights weights,
                                                            NcclGroup* tp, ExpertClient* experts,
                                                            GpuForwardConfig cfg);
  ~GpuForward() override;

  // Logits are returned on rank 0 only (other ranks get an empty vector).
  absl::StatusOr<std::vector<float>> Run(absl::Span<const ForwardSequence> batch) override;
  // Decode attention of the levels' members as cascade (kernels/cuda/cascade.h, the fused
  // single-launch form, inside the decode graph). Steps with prefill chunks, or levels beyond
  // the bounds below, run flat (the same result up to rounding).
  absl::StatusOr<std::vector<float>> RunCascade(absl::Span<const ForwardSequence> batch,
                                                absl::Span<const ForwardCascadeLevel> levels) override;
  // Copy-on-write of prefix-cached blocks: device-to-device copies of every layer's K and V.
  absl::Status CopyBlocks(absl::Span<const BlockCopy> copies) override;

  int32_t num_kv_blocks() const { return num_kv_blocks_; }
  uint64_t kv_bytes() const { return kv_bytes_; }
  uint64_t weight_bytes() const { return weights_.bytes; }
  const GpuStepStats& last_step() const { return stats_; }
  // Turns decode-step graphs on or off for later steps (benchmarks compare the two).
  void set_cuda_graphs(bool on) { cuda_graphs_ = on; }

  // Host callback target (public for the C callback trampoline only).
  void RunExperts(int layer);

 private:
  struct Buffers;
  struct Step;  // the shapes and host inputs of one step
  GpuForward(const ModelConfig& config, TpLayout layout, DeviceWeights weights, NcclGroup* tp,
             ExpertClient* experts, GpuForwardConfig cfg);
  absl::Status Init();
  absl::StatusOr<std::vector<float>> Execute(absl::Span<const ForwardSequence> batch,
                                             absl::Span<const ForwardCascadeLevel> levels);
  absl::Status PrepareStep(absl::Span<const ForwardSequence> batch, bool graph, Step& step);
  absl::Status PrepareCascade(absl::Span<const ForwardCascadeLevel> levels, Step& step);
  absl::Status Enqueue(const Step& step);
  absl::Status Attention(const Step& step, int layer);
  absl::Status Mlp(const Step& step, int layer);
  absl::Status Logits(const Step& step);
  absl::Status AllReduce(float* data, size_t count);
  absl::Status AllGather(const float* in, size_t count, float* out);

  const ModelConfig c_;  // a copy: callers may move theirs away
  const TpLayout layout_;
  DeviceWeights weights_;
  NcclGroup* tp_;
  ExpertClient* experts_;
  const GpuForwardConfig cfg_;
  bool cuda_graphs_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Gemm> gemm_, head_gemm_;
  std::unique_ptr<Buffers> buf_;
  std::vector<cuda::PagedKv> kv_;
  int32_t num_kv_blocks_ = 0;
  uint64_t kv_bytes_ = 0;
  // Captured decode graphs by (batch bucket, context bucket).
  std::map<std::pair<int32_t, int32_t>, cudaGraphExec_t> graphs_;
  absl::flat_hash_set<std::pair<int32_t, int32_t>> warmed_;  // run once eagerly
  // What the host callbacks of the step in flight need (set before launch).
  std::unique_ptr<Step> current_;
  std::vector<std::pair<GpuForward*, int>> callback_args_;
  absl::Status expert_status_;
  GpuStepStats stats_;
};

}  // namespace moemesh
