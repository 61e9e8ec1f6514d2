// The single-process reference engine's forward pass: fp32 math on the CPU, straight from
// the stored weights, written for obvious correctness (it is the yardstick every distributed
// and GPU configuration is compared with), not speed. Tokens of several sequences run in one
// batch: projections and experts see all tokens, attention runs per sequence over its cache.
// Thread-compatible: Forward calls must not overlap, and each cache belongs to one sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/arch/model_config.h"
#include "model/reference/model_weights.h"

namespace moemesh {

// The KV cache of one sequence: per layer, [length, kv_heads * head_dim] for keys and values.
struct SequenceCache {
  std::vector<std::vector<float>> k;
  std::vector<std::vector<float>> v;
  int64_t length = 0;
};

// One sequence's part of a batch: its new tokens, appended to its cache.
struct BatchEntry {
  SequenceCache* cache = nullptr;
  absl::Span<const int32_t> tokens;
  bool all_logits = false;  // logits for every new token, else only for the last
};

struct LoadOptions {
  bool show_progress = true;  // a progress bar on stderr while weights load
};

class ReferenceModel {
 public:
  // Loads config.json and the safetensors weights of a Hugging Face model directory.
  static absl::StatusOr<std::unique_ptr<ReferenceModel>> Load(const std::string& model_dir,
                                                               const LoadOptions& options = {});
  ReferenceModel(ModelConfig config, ModelWeights weights);

  const ModelConfig& config() const { return config_; }
  uint64_t weight_bytes() const { return weights_.bytes; }

  SequenceCache NewCache() const;

  // Stores keys and values rounded to bf16, as the GPU worker's cache does (off by default), so
  // the engine computes what a GPU rank should.
  void set_bf16_kv_cache(bool on) { bf16_kv_cache_ = on; }

  // Runs every entry's tokens; returns per entry its logits ([n, vocab] flattened, n = number of
  // new tokens or 1). Token ids outside the vocabulary and positions beyond the context give
  // InvalidArgument before anything is computed.
  absl::StatusOr<std::vector<std::vector<float>>> Forward(absl::Span<BatchEntry> batch) const;

 private:
  void Attention(const LayerWeights& lw, int layer, absl::Span<BatchEntry> batch,
                 const std::vector<int64_t>& positions, const std::vector<float>& x,
                 std::vector<float>& out) const;
  void Mlp(const LayerWeights& lw, const std::vector<float>& x, int64_t n,
           std::vector<float>& out) const;

  ModelConfig config_;
  ModelWeights weights_;
  std::vector<float> inv_freq_;
  bool bf16_kv_cache_ = false;
};

}  // namespace moemesh
