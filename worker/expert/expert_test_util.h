// Test helpers for worker/expert: the fixture model, random routed batches and an independent
// per-token computation of the routed-expert sum with kernels/ref. Test-only; not thread-safe.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/ref/ops.h"
#include "model/arch/model_config.h"
#include "model/reference/model_weights.h"
#include "runtime/expert_client.h"
#include "tests/golden/fixtures.h"

namespace moemesh::testing {

inline std::string ExpertFixtureDir() { return (FixtureDir() / "models" / "qwen3_moe_f32").string(); }

// A batch's storage; batch() views it.
struct RandomBatch {
  int32_t layer = 0;
  int32_t num_tokens = 0;
  int32_t hidden = 0;
  int32_t top_k = 0;
  std::vector<float> hidden_states;
  std::vector<int32_t> expert_ids;
  std::vector<float> expert_weights;

  ExpertBatch batch() const {
    return ExpertBatch{layer, num_tokens, hidden, top_k, hidden_states, expert_ids, expert_weights};
  }
};

// Distinct random experts per token; with `skip_prob` > 0 some routes become -1.
inline RandomBatch MakeRandomBatch(const ModelConfig& c, int layer, int num_tokens, uint32_t seed,
                                   double skip_prob = 0.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.05f, 1.0f);
  std::bernoulli_distribution skip(skip_prob);
  RandomBatch b;
  b.layer = layer;
  b.num_tokens = num_tokens;
  b.hidden = c.hidden_size;
  b.top_k = c.experts_per_token;
  for (int64_t i = 0; i < static_cast<int64_t>(num_tokens) * c.hidden_size; ++i) {
    b.hidden_states.push_back(normal(rng));
  }
  std::vector<int32_t> experts(c.num_experts);
  for (int t = 0; t < num_tokens; ++t) {
    for (int e = 0; e < c.num_experts; ++e) experts[e] = e;
    std::shuffle(experts.begin(), experts.end(), rng);
    for (int j = 0; j < b.top_k; ++j) {
      b.expert_ids.push_back(skip_prob > 0 && skip(rng) ? -1 : experts[j]);
      b.expert_weights.push_back(uniform(rng));
    }
  }
  return b;
}

// Per token and route, in double: sum_j w_j * down_e(silu(gate_e x) * up_e x), one token at a
// time through kernels/ref, reading the experts from fully loaded weights.
inline std::vector<double> IndependentExpertSum(const ModelWeights& w, const ModelConfig& c,
                                                const RandomBatch& b) {
  const int64_t h = c.hidden_size;
  const int64_t inter = c.expert_intermediate_size;
  const LayerWeights& lw = w.layers[b.layer];
  std::vector<double> out(static_cast<size_t>(b.num_tokens) * h, 0.0);
  std::vector<float> gate(inter), up(inter), act(inter), y(h);
  for (int t = 0; t < b.num_tokens; ++t) {
    const float* x = b.hidden_states.data() + t * h;
    for (int j = 0; j < b.top_k; ++j) {
      const int e = b.expert_ids[t * b.top_k + j];
      if (e < 0) continue;
      const auto it = std::find(lw.expert_ids.begin(), lw.expert_ids.end(), e);
      const FfnWeights& f = lw.experts[it - lw.expert_ids.begin()];
      ref::Linear(x, f.gate.data.data(), nullptr, gate.data(), 1, inter, h);
      ref::Linear(x, f.up.data.data(), nullptr, up.data(), 1, inter, h);
      ref::SiluMul(gate.data(), up.data(), act.data(), inter);
      ref::Linear(act.data(), f.down.data.data(), nullptr, y.data(), 1, h, inter);
      for (int64_t i = 0; i < h; ++i) out[t * h + i] += static_cast<double>(b.expert_weights[t * b.top_k + j]) * y[i];
    }
  }
  return out;
}

}  // namespace moemesh::testing
