// GpuForward against the reference engine at the logits level, in one process: every fixture
// model at TP 1 (experts in-process), a batch of prompts prefilled together (eager), then decode
// steps (the first of a shape runs eagerly, the second captures a CUDA graph, later ones replay
// it), each step's logits compared with the reference engine computing in the GPU's storage
// precision (bf16 weights and KV cache). Skipped, saying why, without a GPU.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <random>

#include "common/status.h"
#include "gtest/gtest.h"
#include "model/io/weight_source.h"
#include "model/reference/reference_model.h"
#include "tests/golden/fixtures.h"
#include "worker/attention/tp_layout.h"
#include "worker/expert/local_expert_client.h"
#include "worker/expert/reference_expert_pool.h"
#include "worker/gpu/gpu_forward.h"

namespace moemesh {
namespace {

std::string NoGpu() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    return std::string("no CUDA device on this machine (") + cudaGetErrorString(err) + ")";
  }
  return "";
}

ModelWeights LoadRounded(const ModelConfig& config, const std::filesystem::path& dir,
                         const ShardSpec& shard) {
  auto source = OpenSafetensorsDir(dir.string());
  MM_CHECK(source.ok());
  auto weights = LoadModelWeights(config, **source, shard);
  MM_CHECK(weights.ok());
  RoundMatricesToBf16(*weights);
  return std::move(*weights);
}

// A model of real head sizes (64 or 128, the tiled attention kernels' sizes; the fixtures' heads
// are 8 to 24 wide and take the generic kernel), with random weights held in memory.
struct Synthetic {
  ModelConfig config;
  ModelWeights weights;
};

Synthetic MakeSynthetic(int head_dim, int heads, int kv_heads) {
  const std::string json = R"({"model_type": "qwen3_moe", "hidden_size": 256, "num_hidden_layers": 2,
      "num_attention_heads": )" + std::to_string(heads) + R"(, "num_key_value_heads": )" +
                           std::to_string(kv_heads) + R"(, "head_dim": )" + std::to_string(head_dim) +
                           R"(, "vocab_size": 384, "num_experts": 4, "num_experts_per_tok": 2,
      "moe_intermediate_size": 64, "intermediate_size": 128, "norm_topk_prob": true,
      "max_position_embeddings": 512, "rope_theta": 10000.0})";
  auto config = ParseModelConfig(json, "synthetic config.json");
  MM_CHECK(config.ok());
  const ModelConfig& c = *config;
  std::mt19937 rng(head_dim * 131 + heads);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto matrix = [&](int64_t rows, int64_t cols) {
    Matrix m;
    m.rows = rows;
    m.cols = cols;
    m.data.resize(rows * cols);
    const float scale = 1.0f / std::sqrt(static_cast<float>(cols));
    for (float& f : m.data) f = normal(rng) * scale;
    return m;
  };
  auto norm = [&](int64_t n) {
    std::vector<float> v(n);
    for (float& f : v) f = 1.0f + 0.1f * normal(rng);
    return v;
  };
  Synthetic s{c, {}};
  ModelWeights& w = s.weights;
  w.embed = matrix(c.vocab_size, c.hidden_size);
  for (float& f : w.embed.data) f *= 16.0f;  // unit-size rows
  w.lm_head = matrix(c.vocab_size, c.hidden_size);
  w.final_norm = norm(c.hidden_size);
  w.kv_head_end = c.num_kv_heads;
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights lw;
    lw.attn_norm = norm(c.hidden_size);
    lw.mlp_norm = norm(c.hidden_size);
    lw.wq = matrix(c.q_size(), c.hidden_size);
    lw.wk = matrix(c.kv_size(), c.hidden_size);
    lw.wv = matrix(c.kv_size(), c.hidden_size);
    lw.wo = matrix(c.hidden_size, c.q_size());
    lw.q_norm = norm(c.head_dim);
    lw.k_norm = norm(c.head_dim);
    lw.is_moe = true;
    lw.router = matrix(c.num_experts, c.hidden_size);
    for (int e = 0; e < c.num_experts; ++e) {
      lw.expert_ids.push_back(e);
      FfnWeights f;
      f.gate = matrix(c.expert_intermediate_size, c.hidden_size);
      f.up = matrix(c.expert_intermediate_size, c.hidden_size);
      f.down = matrix(c.hidden_size, c.expert_intermediate_size);
      lw.experts.push_back(std::move(f));
    }
    w.layers.push_back(std::move(lw));
  }
  RoundMatricesToBf16(w);
  return s;
}

// Largest |got - want| / (1 + |want|) over a row.
double MaxError(const float* got, const float* want, int64_t n) {
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    worst = std::max(worst, std::abs(static_cast<double>(got[i]) - want[i]) / (1.0 + std::abs(want[i])));
  }
  return worst;
}

// A model: a fixture directory, or "synthetic-dD-hH-kvK".
class GpuForwardTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuForwardTest, LogitsMatchTheReferenceThroughPrefillAndGraphDecode) {
  const std::string why = NoGpu();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string name = GetParam();
  std::optional<ModelConfig> config;
  ModelWeights full, pool_weights, shard;
  if (name.rfind("synthetic", 0) == 0) {
    int d = 0, h = 0, kv = 0;
    ASSERT_EQ(std::sscanf(name.c_str(), "synthetic-d%d-h%d-kv%d", &d, &h, &kv), 3) << name;
    Synthetic s = MakeSynthetic(d, h, kv);
    config = s.config;
    full = s.weights;
    pool_weights = s.weights;
    shard = std::move(s.weights);
    for (LayerWeights& lw : shard.layers) {
      lw.experts.clear();
      lw.expert_ids.clear();
    }
  } else {
    auto c = LoadModelConfig(name);
    ASSERT_TRUE(c.ok()) << c.status();
    config = *c;
    full = LoadRounded(*config, name, ShardSpec{});
    pool_weights = LoadRounded(*config, name, ShardSpec{});
    shard = LoadRounded(*config, name, ShardForLayout(MakeTpLayout(*config, 0, 1)));
  }
  const std::string dir = std::filesystem::path(name).filename().string();
  const TpLayout layout = MakeTpLayout(*config, 0, 1);
  ReferenceModel reference(*config, std::move(full));
  reference.set_bf16_kv_cache(true);

  std::unique_ptr<ReferenceExpertPool> pool;
  std::unique_ptr<LocalExpertClient> experts;
  if (config->num_moe_layers() > 0) {
    auto p = ReferenceExpertPool::FromWeights(*config, std::move(pool_weights), {});
    ASSERT_TRUE(p.ok()) << p.status();
    pool = std::move(*p);
    experts = std::make_unique<LocalExpertClient>(pool.get());
  }
  auto device_weights = DeviceWeights::Upload(*config, shard);
  ASSERT_TRUE(device_weights.ok()) << device_weights.status();
  GpuForwardConfig cfg;
  cfg.num_kv_blocks = 64;
  cfg.block_size = 4;  // several blocks per sequence even for short prompts
  cfg.max_step_tokens = 256;
  cfg.max_sequences = 8;
  cfg.max_context = 256;
  auto gpu = GpuForward::Create(*config, layout, std::move(*device_weights), nullptr, experts.get(), cfg);
  ASSERT_TRUE(gpu.ok()) << gpu.status();

  // Three sequences with prompts of different lengths, block tables from a shuffled pool.
  const std::vector<std::vector<int32_t>> prompts = {{1, 5, 9, 13, 2, 7, 11}, {3, 8}, {4, 6, 10, 12, 14}};
  const int64_t vocab = config->vocab_size;
  std::vector<std::vector<int32_t>> tables = {{9, 2, 33, 17, 5, 40, 22, 3, 50, 60, 61, 62},
                                              {1, 30, 7, 44, 12, 8, 55, 56, 57, 58, 59, 63},
                                              {0, 21, 19, 35, 6, 11, 41, 42, 43, 45, 46, 47}};
  std::vector<SequenceCache> caches;
  for (size_t i = 0; i < prompts.size(); ++i) caches.push_back(reference.NewCache());
  std::vector<std::vector<int32_t>> step_tokens = prompts;
  std::vector<int64_t> start(prompts.size(), 0);
  for (int step = 0; step < 7; ++step) {
    std::vector<ForwardSequence> batch;
    std::vector<BatchEntry> ref_batch;
    for (size_t i = 0; i < prompts.size(); ++i) {
      batch.push_back({step_tokens[i], start[i], tables[i], true});
      ref_batch.push_back({&caches[i], step_tokens[i], false});
    }
    auto got = (*gpu)->Run(batch);
    ASSERT_TRUE(got.ok()) << "step " << step << ": " << got.status();
    auto want = reference.Forward(absl::MakeSpan(ref_batch));
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_EQ(got->size(), prompts.size() * vocab);
    for (size_t i = 0; i < prompts.size(); ++i) {
      const float* g = got->data() + i * vocab;
      const float* w = (*want)[i].data();
      const double err = MaxError(g, w, vocab);
      // 2e-2: K and V are rounded to bf16 from slightly different fp32 values on each side, so
      // an element next to a rounding boundary can land one bf16 step apart (toy heads of 8-24
      // values feel that); a wrong kernel is off by O(1).
      EXPECT_LT(err, 2e-2) << dir << " step " << step << " sequence " << i
                           << " (graph " << (*gpu)->last_step().graph << ")";
      // The next input is the reference's greedy token, so both sides stay on one path.
      const int32_t next = static_cast<int32_t>(std::max_element(w, w + vocab) - w);
      start[i] += static_cast<int64_t>(step_tokens[i].size());
      step_tokens[i] = {next};
    }
    if (step == 2) {
      EXPECT_TRUE((*gpu)->last_step().captured) << "the second decode step captures";
    }
    if (step >= 3) {
      EXPECT_TRUE((*gpu)->last_step().graph) << "later decode steps replay";
    }
  }
}

// Three sequences whose prompts start with the same 8 tokens (two blocks of 4, prefilled once by
// the first sequence and shared by the others, as the prefix cache arranges), then decode steps
// run through RunCascade with one level over the shared blocks: logits must match the reference
// engine, which gives every sequence its own full prompt.
class GpuCascadeTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuCascadeTest, SharedPrefixDecodesThroughCascadeLevels) {
  const std::string why = NoGpu();
  if (!why.empty()) GTEST_SKIP() << why;
  int d = 0, h = 0, kv = 0;
  ASSERT_EQ(std::sscanf(GetParam().c_str(), "synthetic-d%d-h%d-kv%d", &d, &h, &kv), 3);
  Synthetic s = MakeSynthetic(d, h, kv);
  const ModelConfig config = s.config;
  ModelWeights shard = s.weights;
  for (LayerWeights& lw : shard.layers) {
    lw.experts.clear();
    lw.expert_ids.clear();
  }
  ReferenceModel reference(config, s.weights);
  reference.set_bf16_kv_cache(true);
  auto pool = ReferenceExpertPool::FromWeights(config, s.weights, {});
  ASSERT_TRUE(pool.ok()) << pool.status();
  LocalExpertClient experts(pool->get());
  auto device_weights = DeviceWeights::Upload(config, shard);
  ASSERT_TRUE(device_weights.ok()) << device_weights.status();
  GpuForwardConfig cfg;
  cfg.num_kv_blocks = 64;
  cfg.block_size = 4;
  cfg.max_step_tokens = 64;
  cfg.max_sequences = 8;
  cfg.max_context = 256;
  cfg.max_cascade_levels = 4;
  auto gpu = GpuForward::Create(config, MakeTpLayout(config, 0, 1), std::move(*device_weights), nullptr,
                                &experts, cfg);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const std::vector<int32_t> shared = {5, 17, 3, 99, 42, 7, 61, 8};
  const std::vector<std::vector<int32_t>> own = {{11, 12, 13}, {21, 22, 23, 24, 25}, {31, 32}};
  const std::vector<std::vector<int32_t>> tables = {{40, 41, 9, 2, 33, 17, 5, 50, 60, 61},
                                                    {40, 41, 1, 30, 7, 44, 12, 51, 62, 63},
                                                    {40, 41, 0, 21, 19, 35, 6, 52, 53, 54}};
  const int64_t vocab = config.vocab_size;
  std::vector<SequenceCache> caches;
  std::vector<std::vector<int32_t>> next(3);
  std::vector<int64_t> start(3);
  // Step 0: sequence 0's whole prompt; step 1: the others' own tokens after the shared blocks.
  for (int step = 0; step < 2; ++step) {
    std::vector<ForwardSequence> batch;
    std::vector<BatchEntry> ref_batch;
    std::vector<int> ids = step == 0 ? std::vector<int>{0} : std::vector<int>{1, 2};
    std::vector<std::vector<int32_t>> tokens(3);
    for (int i : ids) {
      std::vector<int32_t> full = shared;
      full.insert(full.end(), own[i].begin(), own[i].end());
      caches.resize(3, reference.NewCache());
      caches[i] = reference.NewCache();
      tokens[i] = step == 0 ? full : own[i];
      start[i] = step == 0 ? 0 : static_cast<int64_t>(shared.size());
      batch.push_back({tokens[i], start[i], tables[i], true});
      next[i] = full;  // the reference runs the full prompt
    }
    for (int i : ids) ref_batch.push_back({&caches[i], next[i], false});
    auto got = (*gpu)->Run(batch);
    ASSERT_TRUE(got.ok()) << got.status();
    auto want = reference.Forward(absl::MakeSpan(ref_batch));
    ASSERT_TRUE(want.ok()) << want.status();
    for (size_t k = 0; k < ids.size(); ++k) {
      const float* w = (*want)[k].data();
      EXPECT_LT(MaxError(got->data() + k * vocab, w, vocab), 2e-3) << "prefill step " << step;
      const int i = ids[k];
      start[i] += static_cast<int64_t>(tokens[i].size());
      next[i] = {static_cast<int32_t>(std::max_element(w, w + vocab) - w)};
    }
  }
  const std::vector<ForwardCascadeLevel> levels = {{{0, 1, 2}, 0, 2}};
  for (int step = 0; step < 5; ++step) {
    std::vector<ForwardSequence> batch;
    std::vector<BatchEntry> ref_batch;
    for (int i = 0; i < 3; ++i) {
      batch.push_back({next[i], start[i], tables[i], true});
      ref_batch.push_back({&caches[i], next[i], false});
    }
    auto got = (*gpu)->RunCascade(batch, levels);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE((*gpu)->last_step().cascade) << "decode step " << step;
    if (step >= 2) {
      EXPECT_TRUE((*gpu)->last_step().graph) << "decode step " << step;
    }
    auto want = reference.Forward(absl::MakeSpan(ref_batch));
    ASSERT_TRUE(want.ok()) << want.status();
    for (int i = 0; i < 3; ++i) {
      const float* w = (*want)[i].data();
      EXPECT_LT(MaxError(got->data() + i * vocab, w, vocab), 2e-3) << "decode step " << step << " sequence " << i;
      start[i] += 1;
      next[i] = {static_cast<int32_t>(std::max_element(w, w + vocab) - w)};
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GpuCascadeTest,
                         ::testing::Values("synthetic-d128-h8-kv2", "synthetic-d64-h6-kv1"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) if (ch == '-') ch = '_';
                           return n;
                         });

std::vector<std::string> Models() {
  std::vector<std::string> models = {"synthetic-d128-h8-kv2", "synthetic-d64-h6-kv1",
                                     "synthetic-d128-h4-kv4"};
  for (const auto& dir : testing::ModelFixtures()) models.push_back(dir.string());
  return models;
}

INSTANTIATE_TEST_SUITE_P(Models, GpuForwardTest, ::testing::ValuesIn(Models()),
                         [](const auto& info) {
                           std::string n = std::filesystem::path(info.param).filename().string();
                           for (char& ch : n) if (ch == '-') ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace moemesh
