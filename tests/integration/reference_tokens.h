// Test helper: the reference engine's greedy tokens for a fixture, optionally with its weights
// adjusted first (rounded to what an optimized backend stores) and a bf16 KV cache, so cluster
// tests compare with the engine computing at the backend's storage precision. Aborts on a
// fixture it cannot load (a broken fixture is a test bug). Not thread-safe.
#pragma once

#include <filesystem>
#include <functional>
#include <vector>

#include "common/status.h"
#include "model/arch/model_config.h"
#include "model/io/weight_source.h"
#include "model/reference/reference_engine.h"
#include "model/reference/reference_model.h"

namespace moemesh::testing {

inline std::vector<std::vector<int32_t>> ReferenceGreedy(
    const std::filesystem::path& model, const std::vector<std::vector<int32_t>>& prompts,
    int max_tokens, const std::function<void(ModelWeights&)>& adjust, bool bf16_kv_cache) {
  auto config = LoadModelConfig(model.string());
  MM_CHECK(config.ok());
  auto source = OpenSafetensorsDir(model.string());
  MM_CHECK(source.ok());
  auto weights = LoadModelWeights(*config, **source, ShardSpec{});
  MM_CHECK(weights.ok());
  if (adjust) adjust(*weights);
  ReferenceModel reference(*config, std::move(*weights));
  reference.set_bf16_kv_cache(bf16_kv_cache);
  ReferenceEngine engine(reference, nullptr, {});
  GenerationParams params;
  params.sampling.temperature = 0;
  params.max_tokens = max_tokens;
  params.ignore_eos = true;
  auto results = GenerateAll(engine, prompts, std::vector<GenerationParams>(prompts.size(), params));
  MM_CHECK(results.ok());
  std::vector<std::vector<int32_t>> tokens;
  for (const GenerationResult& r : *results) tokens.push_back(r.tokens);
  return tokens;
}

}  // namespace moemesh::testing
