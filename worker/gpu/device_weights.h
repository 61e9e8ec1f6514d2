// DeviceWeights: one attention rank's shard on its GPU, in the layouts the GPU forward pass
// runs: bf16 matrices (q/k/v fused into one [q + 2 kv, H] projection, gate and up fused into one
// [2 I, H]), fp32 norms and biases. Built from the host shard (model/reference/model_weights.h)
// once at load; owns its device memory. Not thread-safe to build; read-only afterwards.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "model/arch/model_config.h"
#include "model/reference/model_weights.h"

namespace moemesh {

struct DeviceMatrix {  // row-major [rows, cols] bf16
  const __nv_bfloat16* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

struct DeviceFfn {
  DeviceMatrix gate_up;  // [2 I, H]: gate rows then up rows
  DeviceMatrix down;     // [H, I]
};

struct DeviceLayer {
  DeviceMatrix wqkv;             // [q + 2 kv, H] of this rank's heads
  const float* bqkv = nullptr;   // [q + 2 kv] or null
  DeviceMatrix wo;               // [H, q]
  const float* bo = nullptr;     // [H] or null
  const float* attn_norm = nullptr;
  const float* mlp_norm = nullptr;
  const float* q_norm = nullptr;  // per-head [d] or this rank's part of the whole projection
  const float* k_norm = nullptr;
  bool is_moe = false;
  DeviceMatrix router;           // [E, H]
  DeviceFfn dense;               // non-MoE layers
  DeviceFfn shared;              // shared expert (rows == 0: none)
  DeviceMatrix shared_gate;      // [1, H]
};

class DeviceWeights {
 public:
  // Uploads the shard to the current device (bf16 for matrices, round to nearest even).
  // RESOURCE_EXHAUSTED naming the bytes when the device lacks memory.
  static absl::StatusOr<DeviceWeights> Upload(const ModelConfig& config, const ModelWeights& w);
  DeviceWeights() = default;
  ~DeviceWeights();
  DeviceWeights(DeviceWeights&& o) noexcept;
  DeviceWeights& operator=(DeviceWeights&& o) noexcept;
  DeviceWeights(const DeviceWeights&) = delete;
  DeviceWeights& operator=(const DeviceWeights&) = delete;

  DeviceMatrix embed;    // [vocab rows, H]
  DeviceMatrix lm_head;  // [vocab rows, H]
  const float* final_norm = nullptr;
  std::vector<DeviceLayer> layers;
  uint64_t bytes = 0;    // device bytes held

 private:
  std::vector<void*> allocations_;
};

}  // namespace moemesh
