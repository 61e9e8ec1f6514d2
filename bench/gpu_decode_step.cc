// bench_gpu_decode_step: one decode step of a Qwen3-30B-A3B-shaped model on the GPU attention
// worker's forward pass (worker/gpu), with and without CUDA graphs, at batch 1, 8 and 64.
// Synthetic weights: the whole layer stack (48 layers, hidden 2048, 32 query / 4 KV heads of
// 128, 128 experts top-8 of 768, vocabulary 151936) on one GPU at TP 1; routed experts on the
// host's CPU cores through the CPU expert kernels (the expert worker's kernels, in-process; the
// weight ring is larger than the last-level cache so every step streams them from DRAM), or
// with --experts=none an expert client that returns at once, which isolates the GPU's part.
// Each sequence decodes at position --context (the KV cache holds that many tokens, zeros).
// Prints per batch: ms per step with the graph and eagerly, the time inside expert calls, and
// the GPU's share. Usage: bench_gpu_decode_step [--layers=48] [--context=1024] [--steps=20]
//                         [--batches=1,8,64] [--experts=cpu|none] [--format=int4-g128]
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/cpu_moe_step.h"
#include "bench/moe_routing.h"
#include "bench/packed_expert_ring.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "kernels/cpu/expert_ffn.h"
#include "model/arch/model_config.h"
#include "worker/attention/tp_layout.h"
#include "worker/gpu/gpu_forward.h"

namespace moemesh {
namespace {

struct Flags {
  int layers = 48;
  int context = 1024;
  int steps = 20;
  std::vector<int> batches = {1, 8, 64};
  std::string experts = "cpu";
  std::string format = "int4-g128";
};

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      const std::string p = std::string("--") + name + "=";
      return a.rfind(p, 0) == 0 ? argv[i] + p.size() : nullptr;
    };
    const char* v;
    if ((v = value("layers"))) {
      f.layers = std::atoi(v);
    } else if ((v = value("context"))) {
      f.context = std::atoi(v);
    } else if ((v = value("steps"))) {
      f.steps = std::atoi(v);
    } else if ((v = value("batches"))) {
      f.batches.clear();
      for (absl::string_view s : absl::StrSplit(v, ',')) f.batches.push_back(std::atoi(std::string(s).c_str()));
    } else if ((v = value("experts"))) {
      f.experts = v;
    } else if ((v = value("format"))) {
      f.format = v;
    } else {
      std::fprintf(stderr, "unknown argument %s (see the header of bench/gpu_decode_step.cc)\n", argv[i]);
      std::exit(2);
    }
  }
  return f;
}

std::string Qwen3_30B_A3B(int layers) {
  return R"({"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": )" +
         std::to_string(layers) + R"(, "num_attention_heads": 32, "num_key_value_heads": 4,
      "head_dim": 128, "vocab_size": 151936, "num_experts": 128, "num_experts_per_tok": 8,
      "moe_intermediate_size": 768, "intermediate_size": 6144, "norm_topk_prob": true,
      "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6})";
}

void Fill(std::vector<float>& v, size_t n, float scale, uint64_t seed) {
  v.resize(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = scale * (static_cast<float>(static_cast<int32_t>(s >> 32)) / 2147483648.0f);
  }
}

Matrix Random(int64_t rows, int64_t cols, uint64_t seed) {
  Matrix m;
  m.rows = rows;
  m.cols = cols;
  Fill(m.data, static_cast<size_t>(rows * cols), 0.03f, seed);
  return m;
}

// Host weights of the attention rank (TP 1): everything but the routed experts.
ModelWeights SyntheticShard(const ModelConfig& c) {
  ModelWeights w;
  w.embed = Random(c.vocab_size, c.hidden_size, 1);
  w.lm_head = Random(c.vocab_size, c.hidden_size, 2);
  w.final_norm.assign(c.hidden_size, 1.0f);
  w.kv_head_end = c.num_kv_heads;
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights lw;
    lw.attn_norm.assign(c.hidden_size, 1.0f);
    lw.mlp_norm.assign(c.hidden_size, 1.0f);
    lw.wq = Random(c.q_size(), c.hidden_size, 10 + l);
    lw.wk = Random(c.kv_size(), c.hidden_size, 1000 + l);
    lw.wv = Random(c.kv_size(), c.hidden_size, 2000 + l);
    lw.wo = Random(c.hidden_size, c.q_size(), 3000 + l);
    lw.q_norm.assign(c.head_dim, 1.0f);
    lw.k_norm.assign(c.head_dim, 1.0f);
    lw.is_moe = true;
    lw.router = Random(c.num_experts, c.hidden_size, 4000 + l);
    w.layers.push_back(std::move(lw));
  }
  return w;
}

// Routed experts on the CPU kernels: each call groups the batch's routes by expert and runs
// them with weights taken in turn from a ring of packed experts larger than the LLC.
class CpuExperts final : public ExpertClient {
 public:
  CpuExperts(ThreadPool& pool, const ModelConfig& c, const cpu::FormatSpec& spec)
      : step_(pool, c.hidden_size, c.expert_intermediate_size), experts_(c.num_experts) {
    std::vector<float> gate, up, down;
    const int64_t h = c.hidden_size, i = c.expert_intermediate_size;
    Fill(gate, i * h, 0.03f, 7);
    Fill(up, i * h, 0.03f, 8);
    Fill(down, h * i, 0.03f, 9);
    ok_ = ring_.Build(gate.data(), up.data(), down.data(), h, i, spec, 4ull << 30);
  }
  bool ok() const { return ok_; }

  absl::Status Run(const ExpertBatch& batch, absl::Span<float> out) override {
    bench::StepRouting r;
    r.tokens = batch.num_tokens;
    r.top_k = batch.top_k;
    r.ids.assign(batch.expert_ids.begin(), batch.expert_ids.end());
    r.weights.assign(batch.expert_weights.begin(), batch.expert_weights.end());
    const bench::ExpertGroups g = bench::GroupByExpert(r, experts_);
    std::vector<const cpu::PackedExpert*> weights;
    for (int64_t k = 0; k < g.count(); ++k) weights.push_back(ring_.Next());
    step_.Run(r, g, weights, batch.hidden_states.data(), out.data());
    return absl::OkStatus();
  }

 private:
  bench::CpuMoeStep step_;
  bench::PackedExpertRing ring_;
  int experts_;
  bool ok_ = false;
};

class NoExperts final : public ExpertClient {
 public:
  absl::Status Run(const ExpertBatch&, absl::Span<float>) override { return absl::OkStatus(); }
};

int Main(int argc, char** argv) {
  const Flags f = ParseFlags(argc, argv);
  auto config = ParseModelConfig(Qwen3_30B_A3B(f.layers), "qwen3-30b-a3b (synthetic)");
  MM_CHECK(config.ok());
  const ModelConfig& c = *config;
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    std::fprintf(stderr, "bench_gpu_decode_step: no CUDA device\n");
    return 1;
  }
  const int max_batch = *std::max_element(f.batches.begin(), f.batches.end());
  std::printf("== bench_gpu_decode_step ==\nGPU: %s; host threads: %u\n", prop.name,
              std::thread::hardware_concurrency());
  std::printf("model: Qwen3-30B-A3B shape, %d layers, hidden %d, %d q / %d kv heads x %d, %d experts "
              "top-%d x %d, vocab %d; TP 1; context %d; experts: %s (%s)\n",
              c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.num_experts,
              c.experts_per_token, c.expert_intermediate_size, c.vocab_size, f.context,
              f.experts.c_str(), f.experts == "cpu" ? f.format.c_str() : "-");
  const TpLayout layout = MakeTpLayout(c, 0, 1);
  auto device_weights = DeviceWeights::Upload(c, SyntheticShard(c));
  if (!device_weights.ok()) {
    std::fprintf(stderr, "%s\n", device_weights.status().ToString().c_str());
    return 1;
  }
  ThreadPool pool(static_cast<int>(std::thread::hardware_concurrency()));
  std::unique_ptr<ExpertClient> experts;
  if (f.experts == "cpu") {
    auto spec = cpu::ParseFormat(f.format);
    if (!spec.ok()) {
      std::fprintf(stderr, "--format: %s\n", spec.status().ToString().c_str());
      return 2;
    }
    auto cpu_experts = std::make_unique<CpuExperts>(pool, c, *spec);
    if (!cpu_experts->ok()) {
      std::fprintf(stderr, "cannot map the expert weight ring\n");
      return 1;
    }
    experts = std::move(cpu_experts);
  } else {
    experts = std::make_unique<NoExperts>();
  }
  const int block = 16;
  const int per_seq = (f.context + 2 * f.steps + 8 + block - 1) / block;
  GpuForwardConfig cfg;
  cfg.block_size = block;
  cfg.num_kv_blocks = per_seq * max_batch;
  cfg.max_sequences = max_batch;
  cfg.max_step_tokens = max_batch;
  cfg.max_context = per_seq * block;
  auto gpu = GpuForward::Create(c, layout, std::move(*device_weights), nullptr, experts.get(), cfg);
  if (!gpu.ok()) {
    std::fprintf(stderr, "%s\n", gpu.status().ToString().c_str());
    return 1;
  }
  std::printf("weights on the GPU: %.2f GiB; KV cache: %.2f GiB\n\n", (*gpu)->weight_bytes() / 1073741824.0,
              (*gpu)->kv_bytes() / 1073741824.0);
  std::printf("%6s %14s %14s %10s %14s %14s\n", "batch", "graph ms/step", "eager ms/step", "eager/graph",
              "expert ms", "GPU ms (graph)");
  for (int batch : f.batches) {
    std::vector<std::vector<int32_t>> tables(batch), tokens(batch, std::vector<int32_t>{1});
    for (int b = 0; b < batch; ++b) {
      for (int j = 0; j < per_seq; ++j) tables[b].push_back(b * per_seq + j);
    }
    double ms[2] = {0, 0}, expert_ms = 0;
    for (int mode = 0; mode < 2; ++mode) {
      (*gpu)->set_cuda_graphs(mode == 0);
      int64_t position = f.context;
      auto step = [&]() {
        std::vector<ForwardSequence> seqs;
        for (int b = 0; b < batch; ++b) seqs.push_back({tokens[b], position, tables[b], true});
        auto r = (*gpu)->Run(seqs);
        MM_CHECK(r.ok());
        ++position;
      };
      step();  // warm-up (eager); the second step captures the graph
      step();
      double experts_s = 0;
      const auto start = std::chrono::steady_clock::now();
      for (int s = 0; s < f.steps; ++s) {
        step();
        experts_s += (*gpu)->last_step().expert_seconds;
        if (mode == 0) MM_CHECK((*gpu)->last_step().graph);
      }
      ms[mode] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / f.steps;
      if (mode == 0) expert_ms = experts_s * 1000.0 / f.steps;
    }
    std::printf("%6d %14.3f %14.3f %10.2f %14.3f %14.3f\n", batch, ms[0], ms[1], ms[1] / ms[0], expert_ms,
                ms[0] - expert_ms);
  }
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
