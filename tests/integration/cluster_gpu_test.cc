// The GPU attention worker end to end: every fixture model served with its attention ranks on
// GPUs (`moemesh serve --gpus ...`, CPU expert workers) gives the greedy tokens of the reference
// engine computing with the GPU's storage precision (weights and KV cache in bf16; activations
// stay fp32-accurate on the GPU). TP 1 on one GPU, and the smallest TP > 1 each fixture's heads
// allow on as many GPUs (TP 2, or TP 4 for the 8-head fixtures when four GPUs exist); decode
// steps replayed as CUDA graphs, and once with graphs off; and cascade levels on a GPU rank (a
// generated head_dim-128 model, below). Skipped, saying why, without GPUs.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
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

// Cascade on a GPU rank end to end. The fixtures' head dims (8 to 32) have no CUDA cascade
// kernel, so this case serves a random-weight model of head_dim 128 (8 query heads over 1 KV
// head) that bench/make_cascade_model.py writes (it needs python3 with torch and transformers;
// the case is skipped, saying so, without them). Requests sharing a cached prompt give the same
// greedy tokens with cascade on, where the GPU rank runs the planned levels, as with it off; with
// cascade=auto attention rank 0 measures the cost model's constants at start-up.
TEST(GpuClusterCascade, LevelsRunOnTheGpuWithTheFlatTokensAndAutoMeasuresItsCalibration) {
  std::string why;
  if (GpuCount(&why) == 0) GTEST_SKIP() << why;
  if (std::system("python3 -c 'import torch, transformers' > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "python3 with torch and transformers is needed to write the head_dim-128 "
                    "model (bench/make_cascade_model.py)";
  }
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    ("moemesh_cascade_model_" + std::to_string(::getpid()));
  std::string make = "python3 ";
  make.append((testing::SourceDir() / "bench" / "make_cascade_model.py").string());
  make.append(" ").append(dir.string()).append(" > ").append(dir.string()).append(".log 2>&1");
  ASSERT_EQ(std::system(make.c_str()), 0) << make;
  // A 64-token shared prompt (4 blocks of 16) and 6 requests on it with 3 to 8 tokens of their own.
  std::vector<int32_t> shared;
  for (int i = 0; i < 64; ++i) shared.push_back((i * 37 + 11) % 400);
  std::vector<std::vector<int32_t>> prompts;
  for (int r = 0; r < 6; ++r) {
    prompts.push_back(shared);
    for (int i = 0; i < 3 + r; ++i) prompts.back().push_back((r * 131 + i * 17 + 5) % 400);
  }
  const int max_tokens = 12;
  auto serve = [&](const std::string& cascade, std::string* log) {
    std::vector<std::vector<int32_t>> tokens;
    auto cluster = testing::LocalCluster::Serve(dir.string(), 1, 1,
                                                {"--gpus=0", "--cascade=" + cascade});
    std::string error;
    EXPECT_TRUE(cluster->WaitReady(std::chrono::seconds(180), &error)) << error;
    if (!error.empty()) return tokens;
    const testing::Completion warm =
        testing::Complete(cluster->stub(), testing::GreedyIds(shared, max_tokens));
    EXPECT_TRUE(warm.status.ok()) << warm.status.error_message() << "\n" << cluster->Log();
    std::vector<std::future<testing::Completion>> calls;
    for (const auto& prompt : prompts) {
      const auto request = testing::GreedyIds(prompt, max_tokens);
      calls.push_back(std::async(std::launch::async, [&, request] {
        return testing::Complete(cluster->stub(), request);
      }));
    }
    for (auto& call : calls) {
      const testing::Completion got = call.get();
      EXPECT_TRUE(got.status.ok()) << got.status.error_message() << "\n" << cluster->Log();
      tokens.push_back(got.tokens);
    }
    if (cascade == "on") {
      EXPECT_GT(testing::Info(cluster->stub()).cascade_levels(), 0u) << "no cascade level ran";
    }
    *log = cluster->Log();
    return tokens;
  };
  std::string off_log, on_log, auto_log;
  const auto off = serve("off", &off_log);
  const auto on = serve("on", &on_log);
  const auto automatic = serve("auto", &auto_log);
  std::filesystem::remove_all(dir);
  std::filesystem::remove(dir.string() + ".log");
  ASSERT_EQ(off.size(), prompts.size());
  EXPECT_EQ(on, off) << on_log;
  EXPECT_EQ(automatic, off) << auto_log;
  EXPECT_NE(auto_log.find("cascade calibration measured on attention rank 0"), std::string::npos)
      << auto_log;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GpuCluster, ::testing::ValuesIn(Cases()),
                         [](const auto& info) {
                           return info.param.model.filename().string() + "_tp" +
                                  std::to_string(info.param.tp) +
                                  (info.param.graphs ? "" : "_no_graphs");
                         });

}  // namespace
}  // namespace moemesh
