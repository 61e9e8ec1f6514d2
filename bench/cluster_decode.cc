// bench/cluster_decode: on the demo model, the time per decode step of the distributed path
// (a real `moemesh serve` cluster on loopback) against the single-process reference engine,
// measured in the same run; and the round trip of one activation message (expert worker over
// gRPC on loopback) by size against the same work done in-process.
//
//   build/bin/bench_cluster_decode [--model models/demo] [--steps 64]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <random>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "common/topology.h"
#include "model/reference/reference_engine.h"
#include "model/reference/reference_model.h"
#include "tests/integration/client_util.h"
#include "tests/integration/local_cluster.h"
#include "worker/expert/expert_pool.h"
#include "worker/expert/expert_service.h"
#include "worker/expert/grpc_expert_client.h"
#include "worker/expert/local_expert_client.h"

namespace moemesh {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::vector<int32_t> Prompt(int i) {
  std::vector<int32_t> p;
  for (int t = 0; t < 8 + i % 5; ++t) p.push_back((31 * i + 7 * t + 3) % 500);
  return p;
}

// Seconds per decode step of the reference engine: `batch` requests decoding together.
double ReferenceStep(const ReferenceModel& model, int batch, int steps) {
  ReferenceEngine engine(model, nullptr, {});
  GenerationParams p;
  p.sampling.temperature = 0;
  p.max_tokens = steps + 1;
  p.ignore_eos = true;
  for (int i = 0; i < batch; ++i) (void)engine.Add(Prompt(i), p);
  (void)engine.Step();  // prefill and the first token
  const auto start = Clock::now();
  int done = 0;
  while (engine.HasWork()) {
    (void)engine.Step();
    ++done;
  }
  return Seconds(Clock::now() - start) / done;
}

// Seconds per decode step of a served cluster: mean time per output token after the first,
// with `batch` concurrent requests (one token per request per step).
double ClusterStep(const std::string& model_dir, int tp, int experts, int batch, int steps) {
  auto cluster = testing::LocalCluster::Serve(model_dir, tp, experts, {"--kv_blocks=2048", "--block_size=16"});
  std::string error;
  if (!cluster->WaitReady(std::chrono::seconds(120), &error)) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return -1;
  }
  double per_token = 0;
  // Warm-up: one short request per slot.
  for (int i = 0; i < batch; ++i) {
    grpc::ClientContext ctx;
    auto reader = cluster->stub().Generate(&ctx, testing::GreedyIds(Prompt(i), 2));
    v1::GenerateResponse r;
    while (reader->Read(&r)) {
    }
  }
  // Timed: every request started together; the server reports seconds per output token after
  // the first, and each step gives every request one token.
  std::vector<std::future<double>> timed;
  for (int i = 0; i < batch; ++i) {
    timed.push_back(std::async(std::launch::async, [&, i] {
      grpc::ClientContext ctx;
      auto reader = cluster->stub().Generate(&ctx, testing::GreedyIds(Prompt(i), steps + 1));
      v1::GenerateResponse r;
      double spt = 0;
      while (reader->Read(&r)) {
        if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) spt = r.timings().seconds_per_output_token();
      }
      reader->Finish();
      return spt;
    }));
  }
  for (auto& t : timed) per_token += t.get();
  return per_token / batch;
}

void ActivationRoundTrip(const std::string& model_dir) {
  ThreadPoolOptions threads;
  threads.num_threads = 1;
  auto pool = ExpertPool::Load(model_dir, {}, threads);
  if (!pool.ok()) {
    std::fprintf(stderr, "%s\n", pool.status().ToString().c_str());
    return;
  }
  ExpertService service(pool->get());
  int port = 0;
  auto server = StartExpertServer(&service, "127.0.0.1:0", &port);
  if (!server.ok()) return;
  auto remote_client = std::make_unique<GrpcExpertClient>("127.0.0.1:" + std::to_string(port));
  GrpcExpertClient& remote = *remote_client;
  LocalExpertClient local(pool->get());
  const ModelConfig& c = (*pool)->config();
  int layer = 0;
  while (!c.layer_is_moe[layer]) ++layer;
  std::printf("\nactivation message round trip (layer %d, hidden %d, top-%d), expert worker on loopback gRPC vs in-process\n",
              layer, c.hidden_size, c.experts_per_token);
  std::printf("%8s %12s %14s %14s %14s %8s\n", "tokens", "msg bytes", "in-process us", "gRPC us", "transport us", "ratio");
  std::mt19937 rng(1);
  for (int n : {1, 8, 64, 512, 4096}) {
    const int k = c.experts_per_token;
    std::vector<float> x(static_cast<size_t>(n) * c.hidden_size), w(static_cast<size_t>(n) * k, 1.0f / k), out(x.size());
    std::vector<int32_t> ids(static_cast<size_t>(n) * k);
    std::uniform_real_distribution<float> u(-1, 1);
    for (float& f : x) f = u(rng);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7 + i / k) % c.num_experts);
    for (int t = 0; t < n; ++t) {  // distinct experts per token
      for (int j = 0; j < k; ++j) ids[t * k + j] = (t + j) % c.num_experts;
    }
    ExpertBatch b{layer, n, c.hidden_size, k, x, ids, w};
    auto time = [&](ExpertClient& client) {
      const int reps = n >= 512 ? 10 : 100;
      (void)client.Run(b, absl::MakeSpan(out));  // warm
      const auto start = Clock::now();
      for (int r = 0; r < reps; ++r) (void)client.Run(b, absl::MakeSpan(out));
      return Seconds(Clock::now() - start) / reps * 1e6;
    };
    const double local_us = time(local);
    const double remote_us = time(remote);
    const size_t bytes = x.size() * 4 + ids.size() * 4 + w.size() * 4;
    std::printf("%8d %12zu %14.1f %14.1f %14.1f %8.2f\n", n, bytes, local_us, remote_us, remote_us - local_us,
                remote_us / local_us);
  }
  remote_client.reset();  // closes its stream; the server drains open streams on shutdown
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::string model = "models/demo";
  int steps = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--model") == 0) model = argv[i + 1];
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::atoi(argv[i + 1]);
  }
  auto topo = moemesh::DiscoverTopology();
  std::printf("machine: %s\nmodel: %s, %d decode steps\n", topo.ok() ? topo->Summary().c_str() : "?", model.c_str(), steps);
  moemesh::LoadOptions quiet;
  quiet.show_progress = false;
  auto ref = moemesh::ReferenceModel::Load(model, quiet);
  if (!ref.ok()) {
    std::fprintf(stderr, "%s\n", ref.status().ToString().c_str());
    return 1;
  }
  std::printf("\ndecode step time: distributed (serve on loopback) vs reference engine (one process)\n");
  std::printf("%6s %4s %8s %14s %14s %8s\n", "batch", "TP", "experts", "reference ms", "cluster ms", "ratio");
  for (int batch : {1, 8}) {
    const double r = moemesh::ReferenceStep(**ref, batch, steps);
    for (auto [tp, experts] : {std::pair{1, 1}, std::pair{2, 2}}) {
      const double d = moemesh::ClusterStep(model, tp, experts, batch, steps);
      std::printf("%6d %4d %8d %14.3f %14.3f %8.2f\n", batch, tp, experts, r * 1e3, d * 1e3, d / r);
    }
  }
  moemesh::ActivationRoundTrip(model);
  return 0;
}
