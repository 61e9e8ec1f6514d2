// bench/prefix_serve: end-to-end serving throughput of a system-prompt workload with prefix
// caching and cascade decoding on and off. For each configuration in turn -- (1) prefix caching
// off, cascade off (the baseline); (2) prefix caching on, cascade off; (3) prefix caching on,
// cascade on; (4) prefix caching on, cascade auto -- it starts a fresh `moemesh serve` cluster on
// loopback, sends ONE warm-up request holding the shared system prompt alone and waits for it (so
// that with prefix caching the prompt's KV blocks are cached, as in a long-running server), then
// sends `--requests` requests at once, each the shared prompt plus its own suffix (greedy,
// ignore_eos, `--max_tokens` each). It prints per configuration the batch's wall time, output and
// total (prompt + output) tokens/s, client-side time to first token, the Usage.cached_tokens sum
// and the cascade levels the coordinator planned; then a markdown table and ratios against (1).
// Every configuration's greedy tokens must equal (1)'s: otherwise it prints MISMATCH with the
// request and exits 1. "Cascade levels" are what the coordinator planned; whether a rank ran them
// as cascade or fell back to flat attention is not visible through the public API.
//
// Not part of ctest (too slow). Smoke run on a CPU-only machine (about 2 s):
//
//   build/bin/bench_prefix_serve --requests 4 --prompt_tokens 256 --max_tokens 8
//
// The full run (32 requests on a ~2K-token system prompt; `--gpus 0` for a GPU attention rank):
//
//   build/bin/bench_prefix_serve [--model models/demo] [--gpus 0] [--repeats 3]
//
// The demo's head_dim 32 has no CUDA cascade kernel; for cascade on a GPU rank serve a
// head_dim-128 model: `python3 bench/make_cascade_model.py DIR`, then `--model DIR --gpus 0`.
//
// Flags (value after a space or '='): --model DIR, --tp N, --gpus 0,1 (one per rank; empty: CPU
// attention ranks), --expert_workers N, --expert_threads N, --cuda_graphs true|false,
// --requests N (32), --prompt_tokens N (0: the largest multiple of the KV block size up to 2048
// that leaves room for the suffix and the output in the model's context), --suffix_tokens N (16),
// --max_tokens N (32), --repeats N (1; distinct suffixes each repeat, the median wall time is
// reported), --block_size N (16), --kv_blocks N (-1: enough for every request without sharing;
// 0: serve's default), --cascade_calibration FILE (for configuration 4), --configs 1,2,3,4,
// --serve_args "FLAG FLAG" (more serve flags), --start_timeout_s N (300), --timeout_s N (600).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "common/topology.h"
#include "tests/integration/client_util.h"
#include "bench/prefix_serve_options.h"
#include "tests/integration/local_cluster.h"

namespace moemesh {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct ServeConfig {
  int number;  // 1-based, as printed
  bool prefix_caching;
  std::string cascade;  // on, off, auto
};

// The prompts of the run, made once from the first cluster's ModelInfo and reused by every
// configuration: the shared system prompt and, per repeat and request, its suffix.
struct Workload {
  std::vector<int32_t> shared;
  std::vector<std::vector<std::vector<int32_t>>> suffixes;  // [repeat][request]
  int context_length = 0;

  std::vector<int32_t> Prompt(int repeat, int request) const {
    std::vector<int32_t> p = shared;
    const auto& s = suffixes[repeat][request];
    p.insert(p.end(), s.begin(), s.end());
    return p;
  }
};

// Pseudo-random token ids in [0, vocab), skipping the end-of-sequence ids.
std::vector<int32_t> RandomIds(int n, uint32_t seed, int32_t vocab,
                               const std::vector<int32_t>& eos) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> ids;
  while (static_cast<int>(ids.size()) < n) {
    const int32_t t = dist(rng);
    if (std::find(eos.begin(), eos.end(), t) == eos.end()) ids.push_back(t);
  }
  return ids;
}

// One Generate call streamed to the end, with the client-side time to its first token.
struct CallResult {
  grpc::Status status;
  std::vector<int32_t> tokens;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  double ttft = -1;  // seconds from the call to its first token
  Clock::time_point end;
};

CallResult Call(v1::Generation::Stub& stub, const v1::GenerateRequest& request, int timeout_s) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_s));
  CallResult c;
  const auto start = Clock::now();
  auto reader = stub.Generate(&ctx, request);
  v1::GenerateResponse r;
  while (reader->Read(&r)) {
    if (c.ttft < 0 && r.tokens_size() > 0) c.ttft = Seconds(Clock::now() - start);
    for (const auto& t : r.tokens()) c.tokens.push_back(t.token_id());
    if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      c.finish = r.finish_reason();
      c.usage = r.usage();
    }
  }
  c.status = reader->Finish();
  c.end = Clock::now();
  return c;
}

std::string Tail(const std::string& log, size_t chars = 6000) {
  return log.size() <= chars ? log : "...\n" + log.substr(log.size() - chars);
}

// An error when a call failed or did not give exactly `max_tokens` tokens (ignore_eos).
std::optional<std::string> CheckCall(const CallResult& c, int max_tokens, const std::string& what) {
  if (!c.status.ok()) {
    return what + ": gRPC " + std::to_string(c.status.error_code()) + " " +
           c.status.error_message();
  }
  if (static_cast<int>(c.tokens.size()) != max_tokens || c.finish != v1::FINISH_REASON_LENGTH) {
    return what + ": " + std::to_string(c.tokens.size()) + " tokens, finish reason " +
           v1::FinishReason_Name(c.finish) + " (expected " + std::to_string(max_tokens) +
           " and FINISH_REASON_LENGTH)";
  }
  return std::nullopt;
}

struct ConfigResult {
  ServeConfig config;
  double warm_seconds = 0;
  int warm_cached = 0;
  std::vector<double> walls;    // per repeat
  std::vector<double> ttfts;    // every request of every repeat
  int64_t cached_tokens = 0;    // over all repeats
  int64_t prompt_tokens = 0;    // one batch
  int64_t output_tokens = 0;    // one batch
  uint64_t cascade_levels = 0;  // planned during the timed batches, all repeats
  std::vector<int32_t> warm_tokens;
  std::vector<std::vector<std::vector<int32_t>>> tokens;  // [repeat][request]

  double MedianWall() const {
    std::vector<double> w = walls;
    std::sort(w.begin(), w.end());
    const size_t m = w.size() / 2;
    return w.size() % 2 == 1 ? w[m] : (w[m - 1] + w[m]) / 2;
  }
  double Ttft(double q) const {  // nearest-rank quantile
    std::vector<double> t = ttfts;
    std::sort(t.begin(), t.end());
    const size_t rank = static_cast<size_t>(std::ceil(q * t.size()));
    return t[std::clamp<size_t>(rank, 1, t.size()) - 1];
  }
  double TtftMean() const {
    double s = 0;
    for (double t : ttfts) s += t;
    return s / ttfts.size();
  }
};

// Blocks per request without sharing, times every request plus the warm-up, plus slack.
int DefaultKvBlocks(const PrefixServeOptions& o, int prompt_tokens) {
  const int per_request =
      (prompt_tokens + o.suffix_tokens + o.max_tokens + o.block_size - 1) / o.block_size + 1;
  return (o.requests + 1) * per_request + 16;
}

// Starts the cluster of one configuration, runs the warm-up and the timed batches. Builds
// `workload` from the cluster's ModelInfo when it is not built yet. Errors are printed; false
// then.
bool RunConfig(const PrefixServeOptions& o, const ServeConfig& sc,
               std::optional<Workload>& workload, ConfigResult& out) {
  out.config = sc;
  std::vector<std::string> args = {
      "serve",
      "--model=" + o.model,
      "--tp=" + std::to_string(o.tp),
      "--expert_workers=" + std::to_string(o.expert_workers),
      "--expert_threads=" + std::to_string(o.expert_threads),
      "--block_size=" + std::to_string(o.block_size),
      "--max_running=" + std::to_string(std::max(64, o.requests + 1)),
      "--max_waiting=" + std::to_string(std::max(256, o.requests + 1)),
      std::string("--prefix_caching=") + (sc.prefix_caching ? "true" : "false"),
      "--cascade=" + sc.cascade,
      "--progress=false",
  };
  if (!o.gpus.empty()) {
    args.push_back("--gpus=" + o.gpus);
    args.push_back("--cuda_graphs=" + o.cuda_graphs);
  }
  if (sc.cascade == "auto" && !o.cascade_calibration.empty()) {
    args.push_back("--cascade_calibration=" + o.cascade_calibration);
  }
  // The KV pool, the same for every configuration: sized for the largest default prompt (2048).
  if (o.kv_blocks != 0) {
    const int blocks = o.kv_blocks > 0
                           ? o.kv_blocks
                           : DefaultKvBlocks(o, o.prompt_tokens > 0 ? o.prompt_tokens : 2048);
    args.push_back("--kv_blocks=" + std::to_string(blocks));
  }
  for (const std::string& a : Split(o.serve_args, ' ')) args.push_back(a);

  std::printf("\n(%d) prefix caching %s, cascade %s: starting moemesh serve", sc.number,
              sc.prefix_caching ? "on" : "off", sc.cascade.c_str());
  for (size_t i = 1; i < args.size(); ++i) std::printf(" %s", args[i].c_str());
  std::printf("\n");
  const auto start = Clock::now();
  auto cluster = testing::LocalCluster::Start(args);
  std::string error;
  if (!cluster->WaitReady(std::chrono::seconds(o.start_timeout_s), &error)) {
    std::fprintf(stderr, "(%d) the cluster did not start (timeout %d s): %s\n", sc.number,
                 o.start_timeout_s, Tail(error).c_str());
    return false;
  }
  v1::ModelInfoResponse info = testing::Info(cluster->stub());
  const auto ready_deadline = start + std::chrono::seconds(o.start_timeout_s);
  while (!info.ready() && Clock::now() < ready_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    info = testing::Info(cluster->stub());
  }
  if (!info.ready()) {
    std::fprintf(stderr, "(%d) the cluster never reported ready; log tail:\n%s\n", sc.number,
                 Tail(cluster->Log()).c_str());
    return false;
  }
  std::printf("    ready in %.1f s: %s, %d KV blocks; %s\n", Seconds(Clock::now() - start),
              info.architecture().c_str(), info.kv_blocks_total(),
              info.placement_summary().c_str());

  if (!workload) {
    Workload w;
    w.context_length = info.context_length();
    const std::vector<int32_t> eos(info.eos_token_ids().begin(), info.eos_token_ids().end());
    int n = o.prompt_tokens;
    const int room = w.context_length - o.suffix_tokens - o.max_tokens;
    if (n == 0) n = std::min(2048, room) / o.block_size * o.block_size;
    if (n < 1 || n > room) {
      std::fprintf(stderr,
                   "prompt of %d tokens + suffix %d + max_tokens %d does not fit the context of %d "
                   "positions\n",
                   n, o.suffix_tokens, o.max_tokens, w.context_length);
      return false;
    }
    w.shared = RandomIds(n, 20240601u, info.vocab_size(), eos);
    // Suffixes start with distinct ids (while the vocabulary has enough) so that requests share
    // exactly the system prompt, not a chance first suffix token as well.
    std::vector<int32_t> firsts;
    for (int32_t t = 0; t < info.vocab_size(); ++t) {
      if (std::find(eos.begin(), eos.end(), t) == eos.end()) firsts.push_back(t);
    }
    std::shuffle(firsts.begin(), firsts.end(), std::mt19937(7));
    w.suffixes.resize(o.repeats);
    for (int r = 0; r < o.repeats; ++r) {
      for (int i = 0; i < o.requests; ++i) {
        const int k = r * o.requests + i;
        std::vector<int32_t> suffix =
            RandomIds(o.suffix_tokens, 1000u + static_cast<uint32_t>(k), info.vocab_size(), eos);
        suffix[0] = firsts[k % firsts.size()];
        w.suffixes[r].push_back(std::move(suffix));
      }
    }
    workload = std::move(w);
    std::printf(
        "    workload: shared system prompt of %d tokens (block size %d: %d full blocks), "
        "%d requests x (prompt + %d-token suffix) -> %d tokens each, greedy, ignore_eos; "
        "vocab %d, context %d\n",
        n, o.block_size, n / o.block_size, o.requests, o.suffix_tokens, o.max_tokens,
        info.vocab_size(), workload->context_length);
  }
  const Workload& w = *workload;

  // Warm-up: the shared prompt alone; with prefix caching its full blocks stay cached.
  const auto warm_start = Clock::now();
  const CallResult warm =
      Call(cluster->stub(), testing::GreedyIds(w.shared, o.max_tokens), o.timeout_s);
  if (auto e = CheckCall(warm, o.max_tokens, "warm-up request")) {
    std::fprintf(stderr, "(%d) %s\nlog tail:\n%s\n", sc.number, e->c_str(),
                 Tail(cluster->Log()).c_str());
    return false;
  }
  out.warm_seconds = Seconds(warm.end - warm_start);
  out.warm_tokens = warm.tokens;
  out.warm_cached = warm.usage.cached_tokens();

  const uint64_t levels_before = testing::Info(cluster->stub()).cascade_levels();
  out.tokens.resize(o.repeats);
  for (int r = 0; r < o.repeats; ++r) {
    std::vector<v1::GenerateRequest> requests;
    out.prompt_tokens = out.output_tokens = 0;
    for (int i = 0; i < o.requests; ++i) {
      requests.push_back(testing::GreedyIds(w.Prompt(r, i), o.max_tokens));
      requests.back().set_request_id("r" + std::to_string(r) + "-" + std::to_string(i));
    }
    const auto batch_start = Clock::now();
    std::vector<std::future<CallResult>> calls;
    for (int i = 0; i < o.requests; ++i) {
      calls.push_back(std::async(
          std::launch::async, [&, i] { return Call(cluster->stub(), requests[i], o.timeout_s); }));
    }
    std::vector<CallResult> results;
    for (auto& c : calls) results.push_back(c.get());
    Clock::time_point batch_end = batch_start;
    bool failed = false;
    for (int i = 0; i < o.requests; ++i) {
      const CallResult& c = results[i];
      if (auto e = CheckCall(c, o.max_tokens,
                             "request " + std::to_string(i) + " of repeat " + std::to_string(r))) {
        std::fprintf(stderr, "(%d) %s\n", sc.number, e->c_str());
        failed = true;
        continue;
      }
      batch_end = std::max(batch_end, c.end);
      out.ttfts.push_back(c.ttft);
      out.cached_tokens += c.usage.cached_tokens();
      out.prompt_tokens += c.usage.prompt_tokens();
      out.output_tokens += c.usage.completion_tokens();
      out.tokens[r].push_back(c.tokens);
    }
    if (failed) {
      std::fprintf(stderr, "(%d) log tail:\n%s\n", sc.number, Tail(cluster->Log()).c_str());
      return false;
    }
    out.walls.push_back(Seconds(batch_end - batch_start));
    std::printf("    repeat %d: %d requests in %.3f s\n", r, o.requests, out.walls.back());
  }
  out.cascade_levels = testing::Info(cluster->stub()).cascade_levels() - levels_before;
  return true;
}

// Prints MISMATCH lines for every request whose tokens differ from the baseline's; the count.
int CompareTokens(const ConfigResult& base, const ConfigResult& got) {
  int mismatches = 0;
  auto first_diff = [](const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
    size_t i = 0;
    while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
    return i;
  };
  if (got.warm_tokens != base.warm_tokens) {
    const size_t d = first_diff(base.warm_tokens, got.warm_tokens);
    std::printf("MISMATCH (%d) vs (1): warm-up request, first difference at output token %zu\n",
                got.config.number, d);
    ++mismatches;
  }
  for (size_t r = 0; r < base.tokens.size(); ++r) {
    for (size_t i = 0; i < base.tokens[r].size(); ++i) {
      if (got.tokens[r][i] == base.tokens[r][i]) continue;
      const size_t d = first_diff(base.tokens[r][i], got.tokens[r][i]);
      std::printf(
          "MISMATCH (%d) vs (1): repeat %zu request %zu, first difference at output token "
          "%zu (%d vs %d)\n",
          got.config.number, r, i, d, d < got.tokens[r][i].size() ? got.tokens[r][i][d] : -1,
          d < base.tokens[r][i].size() ? base.tokens[r][i][d] : -1);
      ++mismatches;
    }
  }
  return mismatches;
}

int Main(int argc, char** argv) {
  PrefixServeOptions o;
  if (!ParsePrefixServeArgs(argc, argv, o)) return 2;
  const std::vector<ServeConfig> all = {
      {1, false, "off"}, {2, true, "off"}, {3, true, "on"}, {4, true, "auto"}};
  std::vector<ServeConfig> configs;
  for (const std::string& c : Split(o.configs, ',')) {
    const int n = std::atoi(c.c_str());
    if (n < 1 || n > 4) {
      std::fprintf(stderr, "--configs: \"%s\" is not 1..4\n", c.c_str());
      return 2;
    }
    configs.push_back(all[n - 1]);
  }
  if (configs.empty() || configs[0].number != 1) {
    std::fprintf(stderr,
                 "--configs must start with 1 (the baseline every ratio and token check uses)\n");
    return 2;
  }

  auto topo = DiscoverTopology();
  std::printf("machine: %s\nmodel: %s, TP %d, attention on %s, %d expert worker(s)\n",
              topo.ok() ? topo->Summary().c_str() : "?", o.model.c_str(), o.tp,
              o.gpus.empty()
                  ? "CPU"
                  : ("GPU " + o.gpus + (o.cuda_graphs == "true" ? " (CUDA graphs)" : "")).c_str(),
              o.expert_workers);
  std::printf(
      "each configuration: a fresh cluster; ONE warm-up request (the shared prompt alone) "
      "runs to the end first,\nthen %d requests (shared prompt + own suffix) are sent at "
      "once and timed from the first send to the last token\n",
      o.requests);

  std::optional<Workload> workload;
  std::vector<ConfigResult> results;
  for (const ServeConfig& sc : configs) {
    ConfigResult r;
    if (!RunConfig(o, sc, workload, r)) {
      std::fprintf(stderr, "configuration (%d) failed\n", sc.number);
      return 1;
    }
    const double wall = r.MedianWall();
    std::printf(
        "    median wall %.3f s, %.1f output tok/s, %.1f total tok/s, TTFT mean %.1f ms; "
        "cached tokens %lld per batch (warm-up: %d, %.2f s); %llu cascade levels planned\n",
        wall, r.output_tokens / wall, (r.prompt_tokens + r.output_tokens) / wall,
        r.TtftMean() * 1e3, static_cast<long long>(r.cached_tokens / o.repeats), r.warm_cached,
        r.warm_seconds, static_cast<unsigned long long>(r.cascade_levels));
    results.push_back(std::move(r));
  }

  int mismatches = 0;
  std::vector<int> config_mismatches(results.size(), 0);
  for (size_t i = 1; i < results.size(); ++i) {
    config_mismatches[i] = CompareTokens(results[0], results[i]);
    mismatches += config_mismatches[i];
  }

  const Workload& w = *workload;
  std::printf(
      "\n%d requests, shared prompt %zu tokens + suffix %d, %d output tokens each, %d repeat(s) "
      "(median wall time; TTFT over all requests, client-side, from each request's send);\n"
      "total tok/s counts every prompt token, cached or computed; cascade levels: planned "
      "by the coordinator per batch\n\n",
      o.requests, w.shared.size(), o.suffix_tokens, o.max_tokens, o.repeats);
  std::printf(
      "| config | prefix caching | cascade | wall s | output tok/s | total tok/s | TTFT mean ms "
      "| TTFT p50 ms | TTFT p99 ms | cached tokens | cascade levels | greedy = (1) |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < results.size(); ++i) {
    const ConfigResult& r = results[i];
    const double wall = r.MedianWall();
    const bool same = config_mismatches[i] == 0;
    std::string cascade = r.config.cascade;
    if (cascade == "auto" && o.cascade_calibration.empty()) {
      cascade += o.gpus.empty() ? " (no calibration: flat)" : " (calibration measured by rank 0)";
    }
    std::printf("| (%d) | %s | %s | %.3f | %.1f | %.1f | %.1f | %.1f | %.1f | %lld | %llu | %s |\n",
                r.config.number, r.config.prefix_caching ? "on" : "off", cascade.c_str(), wall,
                r.output_tokens / wall, (r.prompt_tokens + r.output_tokens) / wall,
                r.TtftMean() * 1e3, r.Ttft(0.5) * 1e3, r.Ttft(0.99) * 1e3,
                static_cast<long long>(r.cached_tokens / o.repeats),
                static_cast<unsigned long long>(r.cascade_levels / o.repeats),
                i == 0 ? "baseline" : (same ? "yes" : "MISMATCH"));
  }
  std::printf("\n");
  const ConfigResult& base = results[0];
  const ConfigResult* prefix_only = nullptr;
  for (const ConfigResult& r : results) {
    if (r.config.number == 2) prefix_only = &r;
  }
  for (size_t i = 1; i < results.size(); ++i) {
    const ConfigResult& r = results[i];
    std::printf("(%d) prefix %s, cascade %s / (1) off: throughput %.2fx, TTFT mean %.2fx lower\n",
                r.config.number, r.config.prefix_caching ? "on" : "off", r.config.cascade.c_str(),
                base.MedianWall() / r.MedianWall(), base.TtftMean() / r.TtftMean());
  }
  if (prefix_only != nullptr) {
    for (const ConfigResult& r : results) {
      if (r.config.number <= 2) continue;
      std::printf("(%d) cascade %s / (2) cascade off: throughput %.2fx\n", r.config.number,
                  r.config.cascade.c_str(), prefix_only->MedianWall() / r.MedianWall());
    }
  }
  if (mismatches > 0) {
    std::printf("\n%d MISMATCH(es): greedy outputs differ from configuration (1)\n", mismatches);
    return 1;
  }
  std::printf("\ngreedy outputs of every configuration equal configuration (1)'s\n");
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  return moemesh::Main(argc, argv);
}
