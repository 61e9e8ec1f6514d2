#include "coordinator/placement.h"

#include <algorithm>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kGiB = 1ull << 30;

// Qwen3-30B-A3B's shape: 48 layers, 128 experts of 2048 x 768, 32 query and 4 KV heads.
ModelConfig Qwen3_30B(const std::string& extra = "", int heads = 32, int kv_heads = 4) {
  auto c = ParseModelConfig(
      absl::StrCat(R"({"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48,
          "num_attention_heads": )", heads, R"(, "num_key_value_heads": )", kv_heads,
                   R"(, "head_dim": 128,
          "vocab_size": 151936, "num_experts": 128, "num_experts_per_tok": 8,
          "moe_intermediate_size": 768, "intermediate_size": 6144,
          "max_position_embeddings": 40960)", extra, "}"),
      "qwen3-30b-a3b/config.json");
  if (!c.ok()) {
    ADD_FAILURE() << c.status();
    return ModelConfig{};
  }
  return *c;
}

std::vector<WorkerInventory> Workers(int attention, int experts, uint64_t dram) {
  std::vector<WorkerInventory> w;
  for (int i = 0; i < attention; ++i) {
    w.push_back({.id = "a" + std::to_string(i), .role = WorkerRole::kAttention, .dram_bytes = dram});
  }
  for (int i = 0; i < experts; ++i) {
    w.push_back({.id = "e" + std::to_string(i), .role = WorkerRole::kExpert, .dram_bytes = dram});
  }
  return w;
}

TEST(Placement, ExpertBytesOfQwen3_30B) {
  // gate, up and down: 3 * 2048 * 768 bf16 weights = 9 MiB.
  EXPECT_EQ(ExpertBytes(Qwen3_30B(), 2), 9ull << 20);
}

TEST(Placement, QuantizedFormatsTakeTheirBytesPerWeight) {
  // int4-g32: 0.5 byte per weight + a float scale and an int32 sum per 32 weights = 0.75.
  EXPECT_EQ(ExpertBytes(Qwen3_30B(), 0.75), 3ull * 2048 * 768 * 3 / 4);
  EXPECT_EQ(ExpertBytes(Qwen3_30B(), 1.0625), 3ull * 2048 * 768 * 17 / 16);  // int8-g128
  // One expert worker with room for every expert in int4-g32 but not in bf16.
  const ModelConfig model = Qwen3_30B();
  const uint64_t experts = static_cast<uint64_t>(model.num_moe_layers()) * model.num_experts;
  const uint64_t bf16 = experts * ExpertBytes(model, 2);
  const uint64_t int4 = experts * ExpertBytes(model, 0.75);
  const uint64_t dram = static_cast<uint64_t>((bf16 + int4) / 2 / 0.9);
  auto too_small = PlanPlacement(model, Workers(1, 1, dram), {.tp_size = 1});
  EXPECT_EQ(too_small.status().code(), absl::StatusCode::kResourceExhausted);
  auto fits = PlanPlacement(model, Workers(1, 1, dram), {.tp_size = 1, .bytes_per_weight = 0.75});
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ(fits->worker_bytes[0], int4);
  auto bad = PlanPlacement(model, Workers(1, 1, dram), {.tp_size = 1, .bytes_per_weight = 0});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Placement, BalancedByBytesWithinOneExpert) {
  const ModelConfig model = Qwen3_30B();
  const uint64_t expert = 9ull << 20;
  auto p = PlanPlacement(model, Workers(2, 5, 64 * kGiB), {.tp_size = 2});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_THAT(p->attention_ranks, ElementsAre("a0", "a1"));
  ASSERT_EQ(p->expert_workers.size(), 5u);
  const auto [min, max] = std::minmax_element(p->worker_bytes.begin(), p->worker_bytes.end());
  EXPECT_LE(*max - *min, expert);
  uint64_t total = 0;
  for (uint64_t b : p->worker_bytes) total += b;
  EXPECT_EQ(total, 48ull * 128 * expert);
  // Every expert has one owner, and the two views agree.
  for (int layer = 0; layer < 48; ++layer) {
    ASSERT_EQ(p->owners[layer].size(), 128u);
    for (int e = 0; e < 128; ++e) {
      ASSERT_EQ(p->owners[layer][e].size(), 1u);
      const auto& held = p->worker_layer_experts[p->owners[layer][e][0]][layer];
      EXPECT_TRUE(std::binary_search(held.begin(), held.end(), e));
    }
  }
  for (size_t w = 0; w < 5; ++w) {
    size_t experts = 0;
    for (const auto& layer : p->worker_layer_experts[w]) {
      EXPECT_TRUE(std::is_sorted(layer.begin(), layer.end()));
      experts += layer.size();
    }
    EXPECT_EQ(p->worker_bytes[w], experts * expert);
  }
}

TEST(Placement, ReplicasOnDistinctWorkers) {
  auto p = PlanPlacement(Qwen3_30B(), Workers(1, 3, 128 * kGiB), {.expert_replicas = 2});
  ASSERT_TRUE(p.ok()) << p.status();
  for (const auto& layer : p->owners) {
    for (const auto& owners : layer) {
      ASSERT_EQ(owners.size(), 2u);
      EXPECT_NE(owners[0], owners[1]);
    }
  }
  const auto [min, max] = std::minmax_element(p->worker_bytes.begin(), p->worker_bytes.end());
  EXPECT_LE(*max - *min, 9ull << 20);

  auto too_few = PlanPlacement(Qwen3_30B(), Workers(1, 1, 128 * kGiB), {.expert_replicas = 2});
  EXPECT_EQ(too_few.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(too_few.status().message(), HasSubstr("need at least 2 expert workers, 1 registered"));
}

TEST(Placement, SameInventoryInAnyOrderGivesTheSamePlacement) {
  std::vector<WorkerInventory> workers = Workers(2, 4, 64 * kGiB);
  workers[3].dram_bytes = 28 * kGiB;  // e1 is smaller and fills up: heterogeneous capacities
  auto reference = PlanPlacement(Qwen3_30B(), workers, {.tp_size = 2, .expert_replicas = 2});
  ASSERT_TRUE(reference.ok()) << reference.status();
  std::mt19937 rng(3);
  for (int trial = 0; trial < 5; ++trial) {
    std::shuffle(workers.begin(), workers.end(), rng);
    auto p = PlanPlacement(Qwen3_30B(), workers, {.tp_size = 2, .expert_replicas = 2});
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->attention_ranks, reference->attention_ranks);
    EXPECT_EQ(p->expert_workers, reference->expert_workers);
    EXPECT_EQ(p->owners, reference->owners);
    EXPECT_EQ(p->worker_layer_experts, reference->worker_layer_experts);
    EXPECT_EQ(p->worker_bytes, reference->worker_bytes);
    EXPECT_EQ(p->Summary(), reference->Summary());
  }
}

TEST(Placement, NeverBeyondAWorkersUsableDram) {
  std::vector<WorkerInventory> workers = Workers(1, 3, 40 * kGiB);
  workers[1].dram_bytes = 10 * kGiB;  // e0: 9 GiB usable, far below an even share of 54 GiB
  auto p = PlanPlacement(Qwen3_30B(), workers, {});
  ASSERT_TRUE(p.ok()) << p.status();
  for (size_t w = 0; w < 3; ++w) {
    const uint64_t dram = w == 0 ? 10 * kGiB : 40 * kGiB;
    EXPECT_LE(p->worker_bytes[w], static_cast<uint64_t>(dram * 0.9)) << w;
  }
  EXPECT_GT(p->worker_bytes[0], 8 * kGiB);  // filled up, not skipped
}

TEST(Placement, NotFittingSaysBytesNeededAndOffered) {
  // 48 x 128 x 9 MiB = 54 GiB, twice; 4 workers x 16 GiB x 0.9 = 57.6 GiB usable.
  auto p = PlanPlacement(Qwen3_30B(), Workers(1, 4, 16 * kGiB), {.expert_replicas = 2});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(p.status().message(),
            "routed experts need 108.0 GiB (x2 replicas), expert workers offer 57.6 GiB usable "
            "(90% of 64.0 GiB)");
}

TEST(Placement, FragmentedCapacityIsRefusedToo) {
  // 210 GiB offered for 108 GiB, but one worker holds most of it: replicas must be distinct.
  std::vector<WorkerInventory> workers = Workers(1, 2, 20 * kGiB);
  workers[2].dram_bytes = 400 * kGiB;
  auto p = PlanPlacement(Qwen3_30B(), workers, {.expert_replicas = 2, .usable_dram_fraction = 0.5});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(p.status().message(), HasSubstr("no 2 distinct expert workers have 9.0 MiB left"));
}

TEST(Placement, TensorParallelMustDivideTheHeads) {
  auto kv_not_dividing = PlanPlacement(Qwen3_30B(), Workers(3, 1, 128 * kGiB), {.tp_size = 3});
  EXPECT_EQ(kv_not_dividing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(kv_not_dividing.status().message(),
              HasSubstr("TP 3 does not divide the model: 32 attention heads"));
  EXPECT_THAT(kv_not_dividing.status().message(), HasSubstr("4 KV heads"));
  // 8 ranks over 4 KV heads: each KV head replicated on two ranks.
  EXPECT_TRUE(PlanPlacement(Qwen3_30B(), Workers(8, 1, 128 * kGiB), {.tp_size = 8}).ok());
  // 48 heads and 6 KV heads, TP 4: the KV heads and TP do not divide each other.
  const ModelConfig six_kv = Qwen3_30B("", 48, 6);
  auto kv_mismatch = PlanPlacement(six_kv, Workers(4, 1, 128 * kGiB), {.tp_size = 4});
  EXPECT_EQ(kv_mismatch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(kv_mismatch.status().message(), HasSubstr("6 KV heads"));
}

TEST(Placement, NeedsExactlyTpAttentionWorkers) {
  auto p = PlanPlacement(Qwen3_30B(), Workers(1, 2, 128 * kGiB), {.tp_size = 2});
  EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(p.status().message(), "TP 2 needs exactly 2 attention workers, 1 registered");
  auto dup = Workers(1, 2, 128 * kGiB);
  dup[2].id = "e0";
  EXPECT_EQ(PlanPlacement(Qwen3_30B(), dup, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Placement, DenseLayersGetNoOwners) {
  const ModelConfig model = Qwen3_30B(R"(, "mlp_only_layers": [0, 47])");
  auto p = PlanPlacement(model, Workers(1, 2, 128 * kGiB), {});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->owners[0].empty());
  EXPECT_TRUE(p->owners[47].empty());
  EXPECT_EQ(p->owners[1].size(), 128u);
  for (const auto& layers : p->worker_layer_experts) {
    EXPECT_TRUE(layers[0].empty());
    EXPECT_TRUE(layers[47].empty());
  }
  EXPECT_EQ(p->worker_bytes[0] + p->worker_bytes[1], 46ull * 128 * (9ull << 20));
}

TEST(Placement, SummaryNamesRanksAndWorkers) {
  auto p = PlanPlacement(Qwen3_30B(), Workers(2, 2, 64 * kGiB), {.tp_size = 2});
  ASSERT_TRUE(p.ok());
  // 6144 expert slots split evenly: 3072 x 9 MiB = 27 GiB each.
  EXPECT_EQ(p->Summary(),
            "TP 2 on a0,a1; 2 expert workers: e0 27.0 GiB (3072 experts), e1 27.0 GiB (3072 experts)");
}

}  // namespace
}  // namespace moemesh
