// NumaExpertPool against the fp32 reference pool on every fixture model and format, its
// determinism across threads and nodes, and how it places experts on nodes.
#include "worker/expert/numa_expert_pool.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kernels/cpu/path_threshold.h"
#include "model/io/weight_source.h"
#include "worker/expert/expert_format.h"
#include "worker/expert/expert_test_util.h"
#include "worker/expert/reference_expert_pool.h"

namespace moemesh {
namespace {

using ::moemesh::testing::ExpertFixtureDir;
using ::moemesh::testing::MakeRandomBatch;
using ::moemesh::testing::RandomBatch;
using ::testing::HasSubstr;

const char* const kFormats[] = {"bf16", "int8-g32", "int8-g128", "int4-g32", "int4-g128"};

// Two unpinned, unbound "nodes" of 2 and 1 threads: exercises the multi-node paths anywhere.
std::vector<NumaNodeSpec> TwoNodes() { return {NumaNodeSpec{-1, 2, {}}, NumaNodeSpec{-1, 1, {}}}; }

std::unique_ptr<NumaExpertPool> LoadPacked(const std::string& dir, const std::string& format,
                                           std::vector<NumaNodeSpec> nodes,
                                           const std::vector<std::vector<int>>& layer_experts = {}) {
  NumaPoolConfig cfg;
  auto spec = ParseExpertFormat(format);
  MM_CHECK(spec.ok() && !spec->fp32);
  cfg.format = spec->spec;
  cfg.nodes = std::move(nodes);
  auto pool = NumaExpertPool::Load(dir, layer_experts, cfg);
  EXPECT_TRUE(pool.ok()) << dir << " " << format << ": " << pool.status();
  return pool.ok() ? std::move(*pool) : nullptr;
}

// The fp32 reference pool holding what the packed pool stands for (its dequantized weights).
std::unique_ptr<ExpertPool> ReferenceOf(const std::string& dir, const NumaExpertPool& packed) {
  const ModelConfig& c = packed.config();
  auto source = OpenSafetensorsDir(dir);
  MM_CHECK(source.ok());
  ShardSpec shard;
  shard.load_dense = false;
  auto weights = LoadModelWeights(c, **source, shard);
  MM_CHECK(weights.ok());
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights& lw = weights->layers[l];
    for (size_t i = 0; i < lw.expert_ids.size(); ++i) {
      FfnWeights& f = lw.experts[i];
      cpu::UnpackExpert(packed.Packed(l, lw.expert_ids[i]), &f.gate.data, &f.up.data, &f.down.data);
    }
  }
  auto pool = ReferenceExpertPool::FromWeights(c, std::move(*weights), ThreadPoolOptions{2, {}});
  MM_CHECK(pool.ok());
  return std::move(*pool);
}

std::vector<int> MoeLayers(const ModelConfig& c) {
  std::vector<int> layers;
  for (int l = 0; l < c.num_layers; ++l) {
    if (c.layer_is_moe[l]) layers.push_back(l);
  }
  return layers;
}

struct Errors {
  double rel_rms = 0;  // RMS error / RMS of the reference output
  double rel_max = 0;  // max error / RMS of the reference output
};

Errors Compare(const std::vector<float>& got, const std::vector<float>& want) {
  double err2 = 0, ref2 = 0, err_max = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_TRUE(std::isfinite(got[i])) << "output " << i;
    const double d = static_cast<double>(got[i]) - want[i];
    err2 += d * d;
    ref2 += static_cast<double>(want[i]) * want[i];
    err_max = std::max(err_max, std::fabs(d));
  }
  const double rms = std::sqrt(ref2 / want.size());
  return {std::sqrt(err2 / want.size()) / rms, err_max / rms};
}

// The kernel conformance test's bounds (kernels/cpu/expert_ffn_test.cc): fp32 activations for
// bf16 weights; int8 activations per weight group for the quantized formats.
Errors Bound(const std::string& format) {
  if (format == "bf16") return {1e-5, 1e-4};
  if (format.find("-g32") != std::string::npos) return {0.03, 0.3};
  return {0.05, 0.4};
}

std::vector<float> RunPool(ExpertPool& pool, const RandomBatch& b) {
  std::vector<float> out(static_cast<size_t>(b.num_tokens) * b.hidden, 12345.0f);
  const absl::Status st = pool.Run(b.batch(), absl::MakeSpan(out));
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

class EveryFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryFixture, EveryFormatMatchesTheReferencePool) {
  const std::string dir = (testing::FixtureDir() / "models" / GetParam()).string();
  for (const char* format : kFormats) {
    SCOPED_TRACE(format);
    auto pool = LoadPacked(dir, format, TwoNodes());
    ASSERT_NE(pool, nullptr);
    EXPECT_EQ(pool->format(), format);
    auto reference = ReferenceOf(dir, *pool);
    const Errors bound = Bound(format);
    uint32_t seed = 7;
    for (int layer : MoeLayers(pool->config())) {
      for (int tokens : {1, 3, 17, 300}) {
        SCOPED_TRACE(::testing::Message() << "layer " << layer << " tokens " << tokens);
        const RandomBatch b = MakeRandomBatch(pool->config(), layer, tokens, seed++, 0.1);
        const Errors e = Compare(RunPool(*pool, b), RunPool(*reference, b));
        EXPECT_LE(e.rel_rms, bound.rel_rms);
        EXPECT_LE(e.rel_max, bound.rel_max);
      }
    }
  }
}

// bf16 fixtures hold bf16 weights: packing them in bf16 loses nothing, so the packed pool must
// match the fp32 pool loaded straight from the files.
TEST_P(EveryFixture, Bf16MatchesTheFp32PoolOnBf16Weights) {
  const std::string dir = (testing::FixtureDir() / "models" / GetParam()).string();
  if (testing::ReadJson(std::filesystem::path(dir) / "reference.json")["weights_dtype"] != "bfloat16") {
    GTEST_SKIP() << "weights stored in f32: bf16 rounds them (EveryFormatMatchesTheReferencePool covers it)";
  }
  auto pool = LoadPacked(dir, "bf16", TwoNodes());
  ASSERT_NE(pool, nullptr);
  auto reference = ExpertPool::Load(dir, {}, ThreadPoolOptions{1, {}});
  ASSERT_TRUE(reference.ok()) << reference.status();
  uint32_t seed = 100;
  for (int layer : MoeLayers(pool->config())) {
    for (int tokens : {1, 3, 17, 300}) {
      const RandomBatch b = MakeRandomBatch(pool->config(), layer, tokens, seed++);
      EXPECT_LE(Compare(RunPool(*pool, b), RunPool(**reference, b)).rel_max, 1e-4)
          << "layer " << layer << " tokens " << tokens;
    }
  }
}

std::vector<std::string> FixtureNames() {
  std::vector<std::string> names;
  for (const auto& dir : testing::ModelFixtures()) names.push_back(dir.filename().string());
  return names;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EveryFixture, ::testing::ValuesIn(FixtureNames()),
                         [](const auto& info) { return info.param; });

TEST(NumaExpertPoolTest, IdenticalForAnyThreadsAndNodes) {
  for (const char* format : {"bf16", "int8-g32", "int4-g128"}) {
    SCOPED_TRACE(format);
    auto one = LoadPacked(ExpertFixtureDir(), format, {NumaNodeSpec{-1, 1, {}}});
    auto four = LoadPacked(ExpertFixtureDir(), format, {NumaNodeSpec{-1, 4, {}}});
    auto three_nodes = LoadPacked(ExpertFixtureDir(), format,
                                  {NumaNodeSpec{-1, 2, {}}, NumaNodeSpec{-1, 1, {}}, NumaNodeSpec{-1, 3, {}}});
    ASSERT_TRUE(one && four && three_nodes);
    EXPECT_EQ(three_nodes->num_threads(), 6);
    for (int tokens : {1, 17, 300}) {
      const RandomBatch b = MakeRandomBatch(one->config(), 2, tokens, 40 + tokens, 0.2);
      const std::vector<float> want = RunPool(*one, b);
      for (int round = 0; round < 3; ++round) {
        ASSERT_EQ(RunPool(*four, b), want) << tokens << " tokens, round " << round;
        ASSERT_EQ(RunPool(*three_nodes, b), want) << tokens << " tokens, round " << round;
      }
    }
  }
}

TEST(NumaExpertPoolTest, SkewedRoutingIsCorrect) {
  // Every token to the same two experts: one node does all the work.
  auto pool = LoadPacked(ExpertFixtureDir(), "bf16", TwoNodes());
  ASSERT_NE(pool, nullptr);
  auto reference = ReferenceOf(ExpertFixtureDir(), *pool);
  RandomBatch b = MakeRandomBatch(pool->config(), 0, 300, 5);
  for (size_t r = 0; r < b.expert_ids.size(); ++r) b.expert_ids[r] = r % b.top_k == 0 ? 4 : -1;
  EXPECT_LE(Compare(RunPool(*pool, b), RunPool(*reference, b)).rel_max, 1e-4);
}

TEST(NumaExpertPoolTest, ExpertsSpreadOverNodesByBytesNeverDuplicated) {
  std::vector<NumaNodeSpec> nodes = {NumaNodeSpec{-1, 1, {}}, NumaNodeSpec{-1, 1, {}},
                                     NumaNodeSpec{-1, 1, {}}, NumaNodeSpec{-1, 1, {}}};
  auto pool = LoadPacked(ExpertFixtureDir(), "int8-g32", nodes);
  ASSERT_NE(pool, nullptr);
  const ModelConfig& c = pool->config();
  ASSERT_EQ(pool->num_nodes(), 4);
  uint64_t one_expert = 0;
  std::vector<uint64_t> counted(4, 0);
  for (int layer : MoeLayers(c)) {
    std::vector<int> per_node(4, 0);
    for (int e : pool->HeldExperts(layer)) {
      const int node = pool->NodeOf(layer, e);
      ASSERT_GE(node, 0);
      ASSERT_LT(node, 4);
      ++per_node[node];
      one_expert = pool->Packed(layer, e).bytes();
      counted[node] += one_expert;
    }
    // 6 experts over 4 nodes: each layer's experts spread (counts differ by at most 2 as the
    // balance carries over between layers).
    EXPECT_LE(*std::max_element(per_node.begin(), per_node.end()) -
                  *std::min_element(per_node.begin(), per_node.end()), 2) << "layer " << layer;
  }
  EXPECT_EQ(counted, pool->node_bytes());  // each expert counted on exactly one node
  uint64_t total = 0;
  for (uint64_t b : pool->node_bytes()) total += b;
  EXPECT_EQ(total, pool->bytes());
  EXPECT_LE(*std::max_element(counted.begin(), counted.end()) -
                *std::min_element(counted.begin(), counted.end()), one_expert);
  // int8-g32 of hidden 48, intermediate 16: far below fp32 (3 * 48 * 16 * 4 bytes per expert).
  EXPECT_LT(one_expert, 3u * 48 * 16 * 4);
}

TEST(NumaExpertPoolTest, HoldsOnlyListedExperts) {
  auto pool = LoadPacked(ExpertFixtureDir(), "bf16", TwoNodes(), {{0, 2}, {}, {5, 1, 1}});
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->HeldExperts(0), (std::vector<int>{0, 2}));
  EXPECT_EQ(pool->HeldExperts(2), (std::vector<int>{1, 5}));
  EXPECT_TRUE(pool->HeldExperts(1).empty());
  RandomBatch b = MakeRandomBatch(pool->config(), 0, 4, 3);
  b.expert_ids[0] = 3;
  std::vector<float> out(4 * b.hidden);
  const absl::Status st = pool->Run(b.batch(), absl::MakeSpan(out));
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("layer 0 expert 3"));
}

TEST(NumaExpertPoolTest, RejectsBadConfigs) {
  NumaPoolConfig cfg;
  cfg.nodes = {};
  auto none = NumaExpertPool::Load(ExpertFixtureDir(), {}, cfg);
  EXPECT_THAT(none.status().message(), HasSubstr("no NUMA nodes"));
  cfg.nodes = {NumaNodeSpec{-1, 0, {}}};
  auto zero = NumaExpertPool::Load(ExpertFixtureDir(), {}, cfg);
  EXPECT_THAT(zero.status().message(), HasSubstr("0 threads"));
  cfg.nodes = TwoNodes();
  auto layers = NumaExpertPool::Load(ExpertFixtureDir(), {{0}}, cfg);
  EXPECT_THAT(layers.status().message(), HasSubstr("cover 1 layers; the model has 3"));
  auto expert = NumaExpertPool::Load(ExpertFixtureDir(), {{0}, {}, {6}}, cfg);
  EXPECT_THAT(expert.status().message(), HasSubstr("layer 2 expert 6 is outside [0, 6)"));
  auto missing = NumaExpertPool::Load("/nonexistent/model", {}, cfg);
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent/model"));
}

TEST(NumaExpertPoolTest, LoadThroughExpertPoolByFormatName) {
  ExpertPoolOptions options;
  options.format = "int4-g32";
  options.nodes = TwoNodes();
  auto pool = ExpertPool::Load(ExpertFixtureDir(), {}, options);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->format(), "int4-g32");
  EXPECT_EQ((*pool)->num_threads(), 3);
  options.format = "fp32";
  auto fp32 = ExpertPool::Load(ExpertFixtureDir(), {}, options);
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_EQ((*fp32)->format(), "fp32");
  EXPECT_EQ((*fp32)->num_threads(), 3);
  options.format = "int3";
  auto bad = ExpertPool::Load(ExpertFixtureDir(), {}, options);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("\"int3\""));
}

// A configured AMX threshold is set for the pool's format only (any machine: ChoosePath still
// asks whether AMX runs); 0 measures where AMX runs and leaves the default elsewhere; a
// negative one is refused.
TEST(NumaExpertPoolTest, AmxThresholdConfiguredOrMeasured) {
  const int64_t int8_before = cpu::AmxThreshold(cpu::WeightFormat::kInt8);
  const int64_t bf16_before = cpu::AmxThreshold(cpu::WeightFormat::kBf16);
  ExpertPoolOptions options;
  options.format = "int8-g32";
  options.nodes = TwoNodes();
  options.amx_threshold = 7;
  auto pool = ExpertPool::Load(ExpertFixtureDir(), {}, options);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(cpu::AmxThreshold(cpu::WeightFormat::kInt8), 7);
  EXPECT_EQ(cpu::AmxThreshold(cpu::WeightFormat::kBf16), bf16_before);
  cpu::SetAmxThreshold(cpu::WeightFormat::kInt8, int8_before);

  options.format = "bf16";
  options.amx_threshold = 0;
  pool = ExpertPool::Load(ExpertFixtureDir(), {}, options);
  ASSERT_TRUE(pool.ok()) << pool.status();
  const int64_t measured = cpu::AmxThreshold(cpu::WeightFormat::kBf16);
  if (cpu::PathSupported(cpu::CpuPath::kAmx)) {
    const std::vector<int64_t> counts = cpu::PathThresholdOptions().tokens;  // those measured
    EXPECT_TRUE(measured == cpu::kNeverTokens ||
                std::find(counts.begin(), counts.end(), measured) != counts.end())
        << measured;
  } else {
    EXPECT_EQ(measured, bf16_before);
  }
  cpu::SetAmxThreshold(cpu::WeightFormat::kBf16, bf16_before);

  options.amx_threshold = -1;
  auto bad = ExpertPool::Load(ExpertFixtureDir(), {}, options);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("AMX threshold is -1"));
}

}  // namespace
}  // namespace moemesh
