// The GPU attention worker end to end: every fixture model served with its attention ranks on
// GPUs (`moemesh serve --gpus ...`, CPU expert workers) gives the greedy tokens of the reference
// engine computing with the GPU's storage precision (weights and KV cache in bf16; activations
// stay fp32-accurate on the GPU). TP 1 on one GPU, and the smallest TP > 1 each fixture's heads
// allow on as many GPUs (TP 2, or TP 4 for the 8-head fixtures when four GPUs exist); decode
// steps replayed as CUDA graphs, and once with graphs off. Skipped, saying why, without GPUs.
#include <future>

#ifdef MOEMESH_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include "common/status.h"
#include "gtest/gtest.h"
#include "model/arch/model_config.h"
#include "model/io/weight_source.h"
#include "model/reference/reference_engine.h"
#include "model/reference/reference_model.h"
#include "tests/golden/fixtures.h"
#include "tests/integration/client_util.h"
#include "tests/integration/local_cluster.h"
#include "tests/integration/reference_tokens.h"

namespace moemesh {
namespace {

int GpuCount(std::string* why) {
#ifndef MOEMESH_HAVE_CUDA
  *why = "built without CUDA (no nvcc found at configure time)";
  return 0;
#else
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    *why = std::string("no CUDA device on this machine (") + cudaGetErrorString(err) + ")";
    return 0;
  }
  return count;
#endif
}

// Greedy tokens of the reference engine on bf16-rounded weights with a bf16 KV cache.
std::vector<std::vector<int32_t>> GpuPrecisionReference(const std::filesystem::path& model,
                                                        const std::vector<std::vector<int32_t>>& prompts,
                                                        int max_tokens) {
  return testing::ReferenceGreedy(model, prompts, max_tokens, RoundMatricesToBf16, /*bf16_kv_cache=*/true);
}

struct GpuCase {
  std::filesystem::path model;
  int tp;
  bool graphs;
};

std::vector<GpuCase> Cases() {
  std::vector<GpuCase> cases;
  bool first = true;
  for (const auto& dir : testing::ModelFixtures()) {
    auto config = LoadModelConfig(dir.string());
    if (!config.ok()) continue;
    cases.push_back({dir, 1, true});
    if (first) cases.push_back({dir, 1, false});
    first = false;
    for (int tp : {2, 4}) {
      const bool heads_ok = config->num_heads % tp == 0;
      const bool kv_ok = config->num_kv_heads % tp == 0 || tp % config->num_kv_heads == 0;
      if (heads_ok && kv_ok) cases.push_back({dir, tp, true});
    }
  }
  return cases;
}

class GpuCluster : public ::testing::TestWithParam<GpuCase> {};

TEST_P(GpuCluster, GreedyTokensMatchTheReference) {
  const GpuCase c = GetParam();
  std::string why;
  const int gpus = GpuCount(&why);
  if (gpus == 0) GTEST_SKIP() << why;
  if (gpus < c.tp) GTEST_SKIP() << "TP " << c.tp << " needs " << c.tp << " GPUs; this host has " << gpus;
  std::string devices;
  for (int r = 0; r < c.tp; ++r) devices += (r ? "," : "") + std::to_string(r);
  auto cluster = testing::LocalCluster::Serve(
      c.model.string(), c.tp, 2,
      {"--gpus=" + devices, std::string("--cuda_graphs=") + (c.graphs ? "true" : "false")});
  std::string error;
  ASSERT_TRUE(cluster->WaitReady(std::chrono::seconds(180), &error)) << error;
  const auto reference = testing::ReadJson(c.model / "reference.json");
  std::vector<std::vector<int32_t>> prompts;
  int max_tokens = 0;
  std::vector<std::future<testing::Completion>> calls;
  for (const auto& g : reference["greedy"]) {
    prompts.push_back(g["prompt_ids"].get<std::vector<int32_t>>());
    max_tokens = static_cast<int>(g["output_ids"].size());
    const auto request = testing::GreedyIds(prompts.back(), max_tokens);
    calls.push_back(std::async(std::launch::async, [&, request] { return testing::Complete(cluster->stub(), request); }));
  }
  ASSERT_GE(calls.size(), 3u);
  const auto expected = GpuPrecisionReference(c.model, prompts, max_tokens);
  for (size_t i = 0; i < calls.size(); ++i) {
    testing::Completion got = calls[i].get();
    ASSERT_TRUE(got.status.ok()) << got.status.error_message() << "\n" << cluster->Log();
    EXPECT_EQ(got.tokens, expected[i]) << "prompt " << i << "\n" << cluster->Log();
  }
  const std::string log = cluster->Log();
  EXPECT_NE(log.find("ready on cuda:"), std::string::npos) << log;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GpuCluster, ::testing::ValuesIn(Cases()),
                         [](const auto& info) {
                           return info.param.model.filename().string() + "_tp" +
                                  std::to_string(info.param.tp) +
                                  (info.param.graphs ? "" : "_no_graphs");
                         });

}  // namespace
}  // namespace moemesh
