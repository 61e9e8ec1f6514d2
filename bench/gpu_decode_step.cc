// bench_gpu_decode_step: one decode step of a Qwen3-30B-A3B-shaped model on the GPU attention
// worker's forward pass (worker/gpu), with and without CUDA graphs, at batch 1, 8 and 64.
// Synthetic weights: the whole layer stack (48 layers, hidden 2048, 32 query / 4 KV heads of
// 128, 128 experts top-8 of 768, vocabulary 151936) on one GPU at TP 1; routed experts on the
// host's CPU cores through the CPU expert kernels (the expert worker's kernels, in-process; the
// weight ring is larger than the last-level cache so every step streams them from DRAM), or
// with --experts=none an expert client that returns at once, which isolates the GPU's part.
// Each sequence decodes at position --context (the KV cache holds that many tokens, zeros).
// Prints per batch: ms per step with the graph and eagerly, the time inside expert calls, and
// the GPU's share. --shape=mixtral-8x22b (56 layers, hidden 6144, 48 query / 8 KV heads of
// 128, 8 experts top-2 of 16384, vocabulary 32768) with --tp=1,2,4 runs the stack tensor-
// parallel over that many GPUs (one thread per rank, NCCL), and times an NCCL all-reduce of one
// layer's activations ([batch, hidden] fp32) in the same run.
// Usage: bench_gpu_decode_step [--shape=qwen3-30b-a3b|mixtral-8x22b] [--tp=1] [--layers=N]
//          [--context=1024] [--steps=20] [--batches=1,8,64] [--experts=cpu|none]
//          [--format=int4-g128]
#include <cuda_runtime.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <mutex>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gloo/rendezvous/hash_store.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/cpu_moe_step.h"
#include "bench/moe_routing.h"
#include "bench/packed_expert_ring.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "kernels/cpu/expert_ffn.h"
#include "model/arch/model_config.h"
#include "worker/attention/attention_runner.h"
#include "worker/attention/tp_layout.h"
#include "worker/gpu/gpu_forward.h"
#include "worker/gpu/nccl_group.h"

namespace moemesh {
namespace {

struct Flags {
  std::string shape = "qwen3-30b-a3b";
  std::vector<int> tp = {1};
  int layers = 0;  // 0: the shape's
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
    if ((v = value("shape"))) {
      f.shape = v;
    } else if ((v = value("tp"))) {
      f.tp.clear();
      for (absl::string_view t : absl::StrSplit(v, ',')) f.tp.push_back(std::atoi(std::string(t).c_str()));
    } else if ((v = value("layers"))) {
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

std::string Mixtral_8x22B(int layers) {
  return R"({"model_type": "mixtral", "hidden_size": 6144, "num_hidden_layers": )" +
         std::to_string(layers) + R"(, "num_attention_heads": 48, "num_key_value_heads": 8,
      "vocab_size": 32768, "num_local_experts": 8, "num_experts_per_tok": 2,
      "intermediate_size": 16384, "max_position_embeddings": 65536, "rope_theta": 1000000.0,
      "rms_norm_eps": 1e-5})";
}

std::string Qwen3_30B_A3B(int layers) {
  return R"({"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": )" +
         std::to_string(layers) + R"(, "num_attention_heads": 32, "num_key_value_heads": 4,
      "head_dim": 128, "vocab_size": 151936, "num_experts": 128, "num_experts_per_tok": 8,
      "moe_intermediate_size": 768, "intermediate_size": 6144, "norm_topk_prob": true,
      "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6})";
}

// Pseudo-random values: a random block of 64K values repeated at a seed-dependent offset (the
// bench times memory traffic; the values only need to be finite and varied).
void Fill(std::vector<float>& v, size_t n, float scale, uint64_t seed) {
  static const std::vector<float> block = [] {
    std::vector<float> b(1 << 16);
    uint64_t s = 12345;
    for (float& x : b) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      x = static_cast<float>(static_cast<int32_t>(s >> 32)) / 2147483648.0f;
    }
    return b;
  }();
  v.resize(n);
  const size_t offset = (seed * 7919) % block.size();
  for (size_t i = 0; i < n; i += block.size()) {
    const size_t count = std::min(block.size(), n - i);
    for (size_t j = 0; j < count; ++j) v[i + j] = scale * block[(offset + j) % block.size()];
  }
}

Matrix Random(int64_t rows, int64_t cols, uint64_t seed) {
  Matrix m;
  m.rows = rows;
  m.cols = cols;
  Fill(m.data, static_cast<size_t>(rows * cols), 0.03f, seed);
  return m;
}

// Host weights of one attention rank: everything but the routed experts, in the shapes of the
// rank's heads and vocabulary slice.
ModelWeights SyntheticShard(const ModelConfig& c, const TpLayout& t) {
  ModelWeights w;
  const int64_t vocab = t.vocab_end - t.vocab_begin;
  const int64_t qs = static_cast<int64_t>(t.num_heads()) * c.head_dim;
  const int64_t kvs = static_cast<int64_t>(t.num_kv_heads()) * c.head_dim;
  w.embed = Random(vocab, c.hidden_size, 1);
  w.lm_head = Random(vocab, c.hidden_size, 2);
  w.final_norm.assign(c.hidden_size, 1.0f);
  w.kv_head_begin = t.kv_head_begin;
  w.kv_head_end = t.kv_head_end;
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights lw;
    lw.attn_norm.assign(c.hidden_size, 1.0f);
    lw.mlp_norm.assign(c.hidden_size, 1.0f);
    lw.wq = Random(qs, c.hidden_size, 10 + l);
    lw.wk = Random(kvs, c.hidden_size, 1000 + l);
    lw.wv = Random(kvs, c.hidden_size, 2000 + l);
    lw.wo = Random(c.hidden_size, qs, 3000 + l);
    if (c.arch->qk_norm == QkNorm::kPerHead) {
      lw.q_norm.assign(c.head_dim, 1.0f);
      lw.k_norm.assign(c.head_dim, 1.0f);
    }
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

// Serialises the ranks' expert calls into one CPU expert pool (one expert worker).
class LockedExperts final : public ExpertClient {
 public:
  explicit LockedExperts(ExpertClient* inner) : inner_(inner) {}
  absl::Status Run(const ExpertBatch& batch, absl::Span<float> out) override {
    std::lock_guard<std::mutex> lock(mu_);
    return inner_->Run(batch, out);
  }

 private:
  ExpertClient* inner_;
  std::mutex mu_;
};

struct Row {
  int batch = 0;
  double graph_ms = 0, eager_ms = 0, expert_ms = 0, allreduce_us = 0;
};

// Runs the stack at tensor-parallel size `tp` (ranks on GPUs 0..tp-1, one thread each).
bool RunTp(const ModelConfig& c, const Flags& f, int tp, ExpertClient* experts, std::vector<Row>* rows) {
  const int max_batch = *std::max_element(f.batches.begin(), f.batches.end());
  const int block = 16;
  const int per_seq = (f.context + 2 * f.steps + 8 + block - 1) / block;
  gloo::rendezvous::HashStore store;
  std::barrier sync(tp);
  std::vector<Row> result(f.batches.size());
  std::atomic<bool> ok{true};
  auto rank_main = [&](int r) {
    cudaSetDevice(r);
    const TpLayout layout = MakeTpLayout(c, r, tp);
    auto weights = DeviceWeights::Upload(c, SyntheticShard(c, layout));
    std::unique_ptr<NcclGroup> nccl;
    if (weights.ok() && tp > 1) {
      auto g = NcclGroup::Create(store, "bench-tp" + std::to_string(tp), r, tp);
      if (g.ok()) nccl = std::move(*g);
      else std::fprintf(stderr, "rank %d: %s\n", r, g.status().ToString().c_str());
    }
    GpuForwardConfig cfg;
    cfg.device = r;
    cfg.block_size = block;
    cfg.num_kv_blocks = per_seq * max_batch;
    cfg.max_sequences = max_batch;
    cfg.max_step_tokens = max_batch;
    cfg.max_context = per_seq * block;
    absl::StatusOr<std::unique_ptr<GpuForward>> gpu = absl::UnknownError("not created");
    if (weights.ok() && (tp == 1 || nccl)) {
      gpu = GpuForward::Create(c, layout, std::move(*weights), nccl.get(), experts, cfg);
    } else if (!weights.ok()) {
      gpu = weights.status();
    }
    if (!gpu.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", r, gpu.status().ToString().c_str());
      ok = false;
    }
    sync.arrive_and_wait();
    if (!ok) return;
    if (r == 0) {
      std::printf("TP %d: %.2f GiB of weights and %.2f GiB of KV cache per GPU\n", tp,
                  (*gpu)->weight_bytes() / 1073741824.0, (*gpu)->kv_bytes() / 1073741824.0);
    }
    for (size_t bi = 0; bi < f.batches.size(); ++bi) {
      const int batch = f.batches[bi];
      std::vector<std::vector<int32_t>> tables(batch), tokens(batch, std::vector<int32_t>{1});
      for (int b = 0; b < batch; ++b) {
        for (int j = 0; j < per_seq; ++j) tables[b].push_back(b * per_seq + j);
      }
      Row row;
      row.batch = batch;
      for (int mode = 0; mode < 2; ++mode) {
        (*gpu)->set_cuda_graphs(mode == 0);
        int64_t position = f.context;
        auto step = [&]() {
          std::vector<ForwardSequence> seqs;
          for (int b = 0; b < batch; ++b) seqs.push_back({tokens[b], position, tables[b], true});
          auto out = (*gpu)->Run(seqs);
          MM_CHECK(out.ok());
          ++position;
        };
        step();  // warm-up (eager); the second step captures the graph
        step();
        sync.arrive_and_wait();
        double experts_s = 0;
        const auto start = std::chrono::steady_clock::now();
        for (int s = 0; s < f.steps; ++s) {
          step();
          experts_s += (*gpu)->last_step().expert_seconds;
          if (mode == 0) MM_CHECK((*gpu)->last_step().graph);
        }
        const double ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() /
            f.steps;
        sync.arrive_and_wait();
        (mode == 0 ? row.graph_ms : row.eager_ms) = ms;
        if (mode == 0) row.expert_ms = experts_s * 1000.0 / f.steps;
      }
      // One layer's all-reduce ([batch, hidden] fp32) on its own, timed over many calls.
      if (tp > 1) {
        float* buf = nullptr;
        cudaMalloc(&buf, static_cast<size_t>(batch) * c.hidden_size * sizeof(float));
        cudaMemset(buf, 0, static_cast<size_t>(batch) * c.hidden_size * sizeof(float));
        cudaStream_t stream;
        cudaStreamCreate(&stream);
        const int calls = 200;
        for (int i = 0; i < 10; ++i) MM_CHECK(nccl->AllReduceSumAsync(buf, batch * c.hidden_size, stream).ok());
        cudaStreamSynchronize(stream);
        sync.arrive_and_wait();
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < calls; ++i) MM_CHECK(nccl->AllReduceSumAsync(buf, batch * c.hidden_size, stream).ok());
        cudaStreamSynchronize(stream);
        row.allreduce_us =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / calls;
        sync.arrive_and_wait();
        cudaStreamDestroy(stream);
        cudaFree(buf);
      }
      if (r == 0) result[bi] = row;
    }
    gpu->reset();
    sync.arrive_and_wait();
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < tp; ++r) threads.emplace_back(rank_main, r);
  for (auto& t : threads) t.join();
  if (!ok) return false;
  *rows = result;
  return true;
}

int Main(int argc, char** argv) {
  Flags f = ParseFlags(argc, argv);
  const bool mixtral = f.shape == "mixtral-8x22b";
  if (!mixtral && f.shape != "qwen3-30b-a3b") {
    std::fprintf(stderr, "--shape: qwen3-30b-a3b or mixtral-8x22b\n");
    return 2;
  }
  if (f.layers == 0) f.layers = mixtral ? 56 : 48;
  auto config = ParseModelConfig(mixtral ? Mixtral_8x22B(f.layers) : Qwen3_30B_A3B(f.layers),
                                 f.shape + " (synthetic)");
  MM_CHECK(config.ok());
  const ModelConfig& c = *config;
  int devices = 0;
  cudaDeviceProp prop;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0 ||
      cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    std::fprintf(stderr, "bench_gpu_decode_step: no CUDA device\n");
    return 1;
  }
  std::printf("== bench_gpu_decode_step ==\nGPU: %d x %s; host threads: %u\n", devices, prop.name,
              std::thread::hardware_concurrency());
  std::printf("model: %s shape, %d layers, hidden %d, %d q / %d kv heads x %d, %d experts top-%d x %d, "
              "vocab %d; context %d; experts: %s (%s)\n",
              f.shape.c_str(), c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
              c.num_experts, c.experts_per_token, c.expert_intermediate_size, c.vocab_size, f.context,
              f.experts.c_str(), f.experts == "cpu" ? f.format.c_str() : "-");
  ThreadPool pool(static_cast<int>(std::thread::hardware_concurrency()));
  std::unique_ptr<ExpertClient> inner;
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
    inner = std::move(cpu_experts);
  } else {
    inner = std::make_unique<NoExperts>();
  }
  LockedExperts experts(inner.get());
  std::printf("\n%4s %6s %14s %14s %10s %12s %14s %14s\n", "TP", "batch", "graph ms/step", "eager ms/step",
              "eager/graph", "expert ms", "GPU ms (graph)", "all-reduce us");
  for (int tp : f.tp) {
    if (tp > devices) {
      std::printf("%4d: not run: %d GPUs on this host\n", tp, devices);
      continue;
    }
    if (!AttentionRunner::CheckTp(c, tp).ok()) {
      std::printf("%4d: not run: %s\n", tp, AttentionRunner::CheckTp(c, tp).ToString().c_str());
      continue;
    }
    std::vector<Row> rows;
    if (!RunTp(c, f, tp, &experts, &rows)) return 1;
    for (const Row& r : rows) {
      std::printf("%4d %6d %14.3f %14.3f %10.2f %12.3f %14.3f %14.1f\n", tp, r.batch, r.graph_ms, r.eager_ms,
                  r.eager_ms / r.graph_ms, r.expert_ms, r.graph_ms - r.expert_ms, r.allreduce_us);
    }
  }
  std::printf("\nper layer the pass makes one all-reduce (o_proj) and one all-gather (MLP rows) of "
              "[batch, hidden] fp32 plus the embedding all-reduce and the logits all-gather per step\n");
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
