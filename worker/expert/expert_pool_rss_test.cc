// Resident memory of a loaded packed pool: a real-shaped synthetic expert set (1 MoE layer, 32
// experts, hidden 1024 x intermediate 512, stored in bf16: 96 MiB) is loaded in bf16 and the
// process's resident memory may grow by at most 1.05 x the packed bytes + 48 MiB. Runs alone
// in its own process so that nothing else moves the RSS.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "common/dtype.h"
#include "common/progress.h"
#include "common/topology.h"
#include "model/io/safetensors_writer.h"
#include "model/io/test_temp_dir.h"
#include "worker/expert/numa_expert_pool.h"
#include "worker/expert/resident_memory.h"

namespace moemesh {
namespace {

constexpr int kExperts = 32;
constexpr int64_t kHidden = 1024;
constexpr int64_t kInter = 512;

// Writes the model in a child process, so that the writer's buffers never count in this one.
void WriteModel(const std::string& dir) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::ofstream(dir + "/config.json") << R"({
      "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
      "hidden_size": 1024, "intermediate_size": 2048, "moe_intermediate_size": 512,
      "num_hidden_layers": 1, "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 64,
      "num_experts": 32, "num_experts_per_tok": 4, "norm_topk_prob": true, "decoder_sparse_step": 1,
      "mlp_only_layers": [], "vocab_size": 1000, "max_position_embeddings": 256,
      "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true,
      "hidden_act": "silu", "attention_bias": false, "dtype": "bfloat16"})";
    SafetensorsWriter writer;
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 0.03f);
    std::vector<float> w(kHidden * kInter);
    for (int e = 0; e < kExperts; ++e) {
      for (const char* name : {"gate_proj", "up_proj", "down_proj"}) {
        for (float& v : w) v = normal(rng);
        const std::vector<int64_t> shape = std::string(name) == "down_proj"
                                               ? std::vector<int64_t>{kHidden, kInter}
                                               : std::vector<int64_t>{kInter, kHidden};
        const std::string tensor = "model.layers.0.mlp.experts." + std::to_string(e) + "." + name + ".weight";
        if (!writer.AddF32(tensor, DType::kBF16, shape, w).ok()) _exit(1);
      }
    }
    std::vector<float> router(kExperts * kHidden);  // the loader looks the router up
    for (float& v : router) v = normal(rng);
    if (!writer.AddF32("model.layers.0.mlp.gate.weight", DType::kBF16, {kExperts, kHidden}, router).ok()) {
      _exit(1);
    }
    _exit(writer.Write(dir + "/model.safetensors").ok() ? 0 : 2);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "writing the model failed";
}

TEST(ExpertPoolRssTest, ResidentMemoryStaysNearThePackedBytes) {
  TestTempDir dir;
  WriteModel(dir.path());
  auto before = ResidentBytes();
  ASSERT_TRUE(before.ok()) << before.status();
  NumaPoolConfig cfg;
  cfg.format = cpu::FormatSpec{cpu::WeightFormat::kBf16, 32};
  auto topology = DiscoverTopology();  // bound to the host's NUMA nodes, as the worker does
  ASSERT_TRUE(topology.ok()) << topology.status();
  cfg.nodes = NodesFromTopology(*topology, 2);
  auto pool = NumaExpertPool::Load(dir.path(), {}, cfg);
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto after = ResidentBytes();
  ASSERT_TRUE(after.ok());
  const uint64_t packed = (*pool)->bytes();
  const uint64_t growth = *after > *before ? *after - *before : 0;
  const uint64_t limit = static_cast<uint64_t>(1.05 * packed) + (uint64_t{48} << 20);
  std::printf("packed weights %s (%llu B); RSS before load %s, after %s, growth %s = %.3f x packed; "
              "limit %s\n",
              FormatBytes(packed).c_str(), static_cast<unsigned long long>(packed),
              FormatBytes(*before).c_str(), FormatBytes(*after).c_str(), FormatBytes(growth).c_str(),
              static_cast<double>(growth) / packed, FormatBytes(limit).c_str());
  EXPECT_EQ(packed, static_cast<uint64_t>(kExperts) * 3 * kHidden * kInter * 2);  // no padding here
  EXPECT_LE(growth, limit);
  // The weights are really resident (not just mapped): growth covers at least the packed bytes.
  EXPECT_GE(growth, packed * 0.95);
}

}  // namespace
}  // namespace moemesh
