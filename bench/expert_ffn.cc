// bench/expert_ffn: the CPU expert kernels (kernels/cpu/expert_ffn.h) on real MoE shapes, at
// DRAM speed or not. For each shape, weight format and tokens per step, one MoE layer step
// (realistic skewed top-k routing; the expert pool's task plan, worker/expert/moe_step_plan.h,
// in one thread-pool phase) with every expert's weights read from DRAM: experts come from a ring
// of copies larger than the last-level cache. Baselines measured in the same run:
//   - memory-read bandwidth (all threads summing a buffer > 2x LLC): decode rows print weight
//     bytes per second as a fraction of it (goal >= 80%);
//   - oneDNN matmul (bf16, and int8 with per-channel scales) doing the same FFN on the same
//     routing and the same kind of weight ring: time ratio ours / oneDNN (goal < 1 for decode);
//   - AVX-512 vs AMX on one expert and one thread per weight format: the AMX thresholds of
//     ChoosePath, by the routine the expert pool runs at load (kernels/cpu/path_threshold.h).
//
//   build/bin/bench_expert_ffn [--quick] [--shapes qwen3-30b-a3b,...] [--formats bf16,...]
//       [--tokens 1,8,64,512] [--threads N] [--max_gib 8] [--min_time 0.5] [--skew 0.8]
//       [--amx_threshold N] [--tasks_per_thread 4] [--no_onednn] [--no_pin] [--phases]
//       [--timeline FILE]
//   --tasks_per_thread: about how many (expert, row range) tasks of each kind a thread gets.
//   --phases: after each of our rows, the shares of thread time in gather, GateUp, Down, the
//   weighted sum, waiting for inputs and the rest (bench/cpu_moe_step.h PhaseTimes).
//   --timeline FILE: implies --phases; writes every task of the first 32 timed steps of each of
//   our rows to FILE as CSV (row, step, thread, kind, slot, begin, end, and the ns from the
//   end of planning at which it started waiting, started work and finished).
#include <omp.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/cpu_moe_step.h"
#include "bench/machine_info.h"
#include "bench/moe_routing.h"
#include "bench/onednn_moe_step.h"
#include "bench/packed_expert_ring.h"
#include "bench/read_bandwidth.h"
#include "common/thread_pool.h"
#include "common/topology.h"
#include "kernels/cpu/expert_ffn.h"
#include "kernels/cpu/path_threshold.h"

namespace moemesh::bench {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct MoeShape {
  const char* name;
  int64_t hidden;
  int64_t intermediate;
  int experts;
  int top_k;
};
constexpr MoeShape kShapes[] = {
    {"qwen3-30b-a3b", 2048, 768, 128, 8},
    {"qwen3-235b-a22b", 4096, 1536, 128, 8},
    {"mixtral-8x7b", 4096, 14336, 8, 2},
    {"deepseek-v3", 7168, 2048, 256, 8},
};

struct Flags {
  std::vector<std::string> shapes = {"qwen3-30b-a3b", "qwen3-235b-a22b", "mixtral-8x7b", "deepseek-v3"};
  std::vector<std::string> formats = {"bf16", "int8-g32", "int8-g128", "int4-g32", "int4-g128"};
  std::vector<int> tokens = {1, 8, 64, 512};
  int threads = 0;          // 0: one per physical core
  double max_gib = 8;       // all allocations of the benchmark together
  double min_time = 0.5;    // seconds of timed steps per row (at least min_steps)
  int min_steps = 2;
  int max_steps = 2000;
  double skew = 0.8;        // Zipf exponent of expert popularity
  int amx_threshold = 0;    // 0: measure
  bool onednn = true;
  bool pin = true;
  bool quick = false;
  bool phases = false;      // per row: shares of step time in gather, GateUp, wait, Down, sum
  std::string timeline;     // CSV of every task of the first timed steps; empty: none
  int tasks_per_thread = MoeStepShape{}.tasks_per_thread;
};

std::vector<std::string> SplitList(const char* s) {
  return absl::StrSplit(s, ',', absl::SkipEmpty());
}

// Parses argv; prints a message and returns nullopt on a bad flag.
std::optional<Flags> ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {  // --quick first: it sets defaults that other flags override
    if (std::strcmp(argv[i], "--quick") != 0) continue;
    f.quick = true;
    f.shapes = {"qwen3-30b-a3b"};
    f.formats = {"bf16", "int8-g128", "int4-g128"};
    f.tokens = {1, 64};
    f.min_time = 0.05;
    f.min_steps = 1;
  }
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") continue;
    if (a == "--no_onednn") { f.onednn = false; continue; }
    if (a == "--no_pin") { f.pin = false; continue; }
    if (a == "--phases") { f.phases = true; continue; }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "flag %s: missing value (or unknown flag)\n", a.c_str());
      return std::nullopt;
    }
    const char* v = argv[++i];
    if (a == "--shapes") {
      f.shapes = SplitList(v);
    } else if (a == "--formats") {
      f.formats = SplitList(v);
    } else if (a == "--tokens") {
      f.tokens.clear();
      for (const std::string& t : SplitList(v)) f.tokens.push_back(std::atoi(t.c_str()));
    } else if (a == "--threads") {
      f.threads = std::atoi(v);
    } else if (a == "--max_gib") {
      f.max_gib = std::atof(v);
    } else if (a == "--min_time") {
      f.min_time = std::atof(v);
    } else if (a == "--skew") {
      f.skew = std::atof(v);
    } else if (a == "--amx_threshold") {
      f.amx_threshold = std::atoi(v);
    } else if (a == "--timeline") {
      f.timeline = v;
      f.phases = true;
    } else if (a == "--tasks_per_thread") {
      f.tasks_per_thread = std::atoi(v);
      if (f.tasks_per_thread < 1 || f.tasks_per_thread > 1024) {
        std::fprintf(stderr, "--tasks_per_thread: %d is outside [1, 1024]\n", f.tasks_per_thread);
        return std::nullopt;
      }
    } else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return std::nullopt;
    }
  }
  for (int t : f.tokens) {
    if (t < 1 || t > 65536) {
      std::fprintf(stderr, "--tokens: %d is outside [1, 65536]\n", t);
      return std::nullopt;
    }
  }
  if (f.max_gib <= 0 || f.threads < 0 || f.min_time < 0) {
    std::fprintf(stderr, "--max_gib must be > 0, --threads >= 0, --min_time >= 0\n");
    return std::nullopt;
  }
  return f;
}

std::vector<float> RandomUniform(size_t n, float bound, uint64_t seed) {
  std::vector<float> v(n);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-bound, bound);
  for (float& f : v) f = u(rng);
  return v;
}

// ---------------------------------------------------------------------------------------------
// AMX thresholds, one per weight format of --formats: the expert pool's own measurement
// (cpu::MeasurePathThreshold, AMX against AVX-512, one thread, weights in cache) on one
// (4096, 1536) expert; the rows below run with them.

void MeasureAmxThresholds(const Flags& flags) {
  std::printf("\n== AMX thresholds: cpu::MeasurePathThreshold (AMX against AVX-512), "
              "one (4096, 1536) expert, one thread ==\n");
  std::vector<cpu::FormatSpec> kinds;  // the first format of each kind (group sizes share it)
  for (const std::string& name : flags.formats) {
    const cpu::FormatSpec spec = *cpu::ParseFormat(name);
    bool seen = false;
    for (const cpu::FormatSpec& k : kinds) seen |= k.format == spec.format;
    if (!seen) kinds.push_back(spec);
  }
  if (flags.amx_threshold > 0) {
    for (const cpu::FormatSpec& k : kinds) cpu::SetAmxThreshold(k.format, flags.amx_threshold);
    std::printf("set by --amx_threshold: AMX from %d tokens per expert for every format\n",
                flags.amx_threshold);
    return;
  }
  if (!cpu::PathSupported(cpu::CpuPath::kAmx)) {
    std::printf("skipped: this CPU (or its OS) has no AMX; ChoosePath picks %s for every "
                "token count\n", cpu::PathName(cpu::ChoosePath(cpu::FormatSpec{}, 1)));
    return;
  }
  const int64_t h = 4096, inter = 1536;
  const std::vector<float> gate = RandomUniform(h * inter, 1.0f / std::sqrt(h), 11);
  const std::vector<float> up = RandomUniform(h * inter, 1.0f / std::sqrt(h), 12);
  const std::vector<float> down = RandomUniform(h * inter, 1.0f / std::sqrt(inter), 13);
  std::string summary;
  for (const cpu::FormatSpec& spec : kinds) {
    const std::string name = spec.Name();
    const cpu::PackedExpert e = cpu::PackExpert(gate.data(), up.data(), down.data(), h, inter, spec);
    const absl::StatusOr<cpu::PathThreshold> r =
        cpu::MeasurePathThreshold(e, cpu::CpuPath::kAmx, cpu::CpuPath::kAvx512);
    if (!r.ok()) {
      std::printf("%s: %s (threshold stays %lld)\n", name.c_str(), r.status().ToString().c_str(),
                  static_cast<long long>(cpu::AmxThreshold(spec.format)));
      continue;
    }
    std::printf("%-10s %8s %14s %14s %12s\n", "format", "tokens", "avx512 us", "amx us",
                "amx/avx512");
    for (const cpu::PathTiming& t : r->timings) {
      std::printf("%-10s %8lld %14.1f %14.1f %12.2f\n", name.c_str(),
                  static_cast<long long>(t.tokens), t.seconds_b * 1e6, t.seconds_a * 1e6,
                  t.seconds_a / t.seconds_b);
    }
    const std::string from = r->never() ? "never" : std::to_string(r->from_tokens);
    std::printf("%s: AMX from %s tokens per expert (measured in %.0f ms on %.1f MiB: GateUp "
                "rows [0, %lld), Down rows [0, %lld))\n",
                cpu::WeightFormatName(spec.format), from.c_str(), r->seconds * 1e3,
                Mib(r->weight_bytes), static_cast<long long>(r->gate_up_rows),
                static_cast<long long>(r->down_rows));
    cpu::SetAmxThreshold(spec.format, r->from_tokens);
    summary += std::string(summary.empty() ? "" : ", ") + cpu::WeightFormatName(spec.format) +
               " " + from;
  }
  std::printf("AMX thresholds (tokens per expert): %s\n", summary.c_str());
}

// ---------------------------------------------------------------------------------------------
// One shape: its synthetic weights, activations and routing, shared by every side.

struct Routed {
  StepRouting routing;
  ExpertGroups groups;
};

class ShapeData {
 public:
  ShapeData(const MoeShape& s, double skew) : shape_(s), skew_(skew) {
    const size_t n = static_cast<size_t>(s.hidden * s.intermediate);
    gate_ = RandomUniform(n, 1.0f / std::sqrt(static_cast<float>(s.hidden)), 1);
    up_ = RandomUniform(n, 1.0f / std::sqrt(static_cast<float>(s.hidden)), 2);
    down_ = RandomUniform(n, 1.0f / std::sqrt(static_cast<float>(s.intermediate)), 3);
  }
  const MoeShape& shape() const { return shape_; }
  const float* gate() const { return gate_.data(); }
  const float* up() const { return up_.data(); }
  const float* down() const { return down_.data(); }

  const float* x(int tokens) {
    auto& v = x_[tokens];
    if (v.empty()) v = RandomUniform(static_cast<size_t>(tokens * shape_.hidden), 1.0f, 100 + tokens);
    return v.data();
  }
  // Step `i` of the run at `tokens` tokens: the same for every side.
  const Routed& Step(int tokens, int i) {
    std::vector<Routed>& steps = steps_[tokens];
    while (static_cast<int>(steps.size()) <= i) {
      Routed r;
      r.routing = MakeRouting(shape_.experts, shape_.top_k, tokens, skew_, 7, steps.size());
      r.groups = GroupByExpert(r.routing, shape_.experts);
      steps.push_back(std::move(r));
    }
    return steps[i];
  }

 private:
  const MoeShape& shape_;
  const double skew_;
  std::vector<float> gate_, up_, down_;
  std::map<int, std::vector<float>> x_;
  std::map<int, std::vector<Routed>> steps_;
};

struct Timing {
  int steps = 0;
  double seconds_per_step = 0;  // median over the timed steps (robust to other processes)
  double experts_per_step = 0;  // distinct experts (= expert weight sets read) per step
  double routes_per_step = 0;
  std::vector<float> first_out;  // output of the untimed first step, for the cross-check
};

// Runs step 0 untimed (warm-up, output kept), then steps 1.. timed one by one until min_time
// and min_steps; `prepare` runs before each step, untimed.
template <class Prepare, class Run>
Timing TimeSteps(ShapeData& data, int tokens, const Flags& flags, Prepare prepare, Run run) {
  Timing t;
  std::vector<float> out(static_cast<size_t>(tokens * data.shape().hidden));
  const Routed& r0 = data.Step(tokens, 0);
  prepare(r0);
  run(r0, out.data());
  t.first_out = out;
  double total = 0, experts = 0, routes = 0;
  std::vector<double> times;
  while (t.steps < flags.min_steps || (total < flags.min_time && t.steps < flags.max_steps)) {
    const Routed& r = data.Step(tokens, 1 + t.steps);
    prepare(r);
    const auto start = Clock::now();
    run(r, out.data());
    times.push_back(Seconds(Clock::now() - start));
    total += times.back();
    experts += static_cast<double>(r.groups.count());
    routes += static_cast<double>(r.groups.route.size());
    ++t.steps;
  }
  std::sort(times.begin(), times.end());
  t.seconds_per_step = times.size() % 2 == 1
                           ? times[times.size() / 2]
                           : 0.5 * (times[times.size() / 2 - 1] + times[times.size() / 2]);
  t.experts_per_step = experts / t.steps;
  t.routes_per_step = routes / t.steps;
  return t;
}

double RelativeDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num += (a[i] - b[i]) * static_cast<double>(a[i] - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : (num > 0 ? INFINITY : 0.0);
}

struct PeerResult {
  Timing timing;
  size_t expert_bytes = 0;
  std::string impl;
};

struct Row {  // one decode row, for the summary
  std::string what;
  double bw_fraction = 0;
  double peer_ratio = 0;  // 0: no peer
};

struct Context {
  Flags flags;
  ThreadPool* pool = nullptr;
  LastLevelCache llc;
  double read_gbps = 0;
  uint64_t bw_bytes = 0;  // buffer of the read bandwidth test
  std::vector<Row> decode_rows;
  std::FILE* timeline = nullptr;  // --timeline
};

uint64_t RingTarget(const Context& c, uint64_t budget) {
  const uint64_t want = std::max<uint64_t>(4 * c.llc.bytes_total, uint64_t{1} << 30);
  return std::min(want, budget);
}

void RunShape(Context& c, const MoeShape& s) {
  const Flags& f = c.flags;
  const int max_tokens = *std::max_element(f.tokens.begin(), f.tokens.end());
  const uint64_t routes_max = static_cast<uint64_t>(max_tokens) * s.top_k;
  const uint64_t fixed = 3 * s.hidden * s.intermediate * 4 + max_tokens * s.hidden * 4 * 8 +
                         routes_max * (3 * s.hidden + 4 * s.intermediate) * 4 * 2;
  const uint64_t cap = static_cast<uint64_t>(f.max_gib * (1ull << 30));
  const uint64_t avail = MemAvailableBytes() * 7 / 10;
  const uint64_t limit = avail > 0 ? std::min(cap, avail) : cap;
  std::printf("\n== %s: hidden %lld, intermediate %lld, %d experts, top-%d; 6*H*I = %.1f MFLOP per routed token ==\n",
              s.name, static_cast<long long>(s.hidden), static_cast<long long>(s.intermediate), s.experts,
              s.top_k, 6.0 * s.hidden * s.intermediate / 1e6);
  if (fixed >= limit) {
    std::printf("skipped: its activations and fp32 source weights (%.2f GiB) exceed the limit %.2f GiB\n",
                Gib(fixed), Gib(limit));
    return;
  }
  const uint64_t ring = RingTarget(c, limit - fixed);
  ShapeData data(s, f.skew);
  auto tokens_ref = [&](int tokens) {  // typical tokens per routed expert
    return std::max<int64_t>(1, std::llround(static_cast<double>(tokens) * s.top_k / s.experts));
  };

  // The peers first: their results are shown on every format's rows.
  std::map<std::pair<int, int>, PeerResult> peer;  // (type, tokens)
  bool need[2] = {false, false};
  for (const std::string& name : f.formats) need[name == "bf16" ? 0 : 1] = true;
  for (int type = 0; type < 2 && f.onednn; ++type) {
    if (!need[type]) continue;
    const auto t = type == 0 ? OnednnMoeStep::Type::kBf16 : OnednnMoeStep::Type::kInt8;
    OnednnMoeStep step(t, s.hidden, s.intermediate, data.gate(), data.up(), data.down());
    for (int tokens : f.tokens) {
      absl::Status st = step.Prepare(tokens_ref(tokens), ring);
      if (!st.ok()) {
        std::printf("%s: %s\n", OnednnMoeStep::TypeName(t), st.ToString().c_str());
        break;
      }
      PeerResult p;
      p.timing = TimeSteps(data, tokens, f, [&](const Routed& r) {
        absl::Status w = step.Warm(r.groups);
        if (!w.ok()) std::printf("%s\n", w.ToString().c_str());
      }, [&](const Routed& r, float* out) { step.Run(r.routing, r.groups, data.x(tokens), out); });
      p.expert_bytes = step.expert_bytes();
      p.impl = step.ImplName(tokens_ref(tokens));
      std::printf("peer %-12s tokens %4d: ring %d x %.1f MiB = %.2f GiB (%.1fx LLC); oneDNN impl %s\n",
                  OnednnMoeStep::TypeName(t), tokens, step.slots(), Mib(step.expert_bytes()),
                  Gib(step.ring_bytes()), static_cast<double>(step.ring_bytes()) / c.llc.bytes_total,
                  p.impl.c_str());
      peer[{type, tokens}] = std::move(p);
    }
  }

  std::printf("%-10s %5s %7s %9s %9s %8s %7s %7s %9s | %-11s %9s %8s %9s %7s %9s\n", "format", "tok",
              "exp/st", "MiB/step", "ms/step", "GB/s", "readBW", "%readBW", "GFLOP/s", "peer", "ms/step", "GB/s",
              "GFLOP/s", "ours/pr", "rel.diff");
  for (const std::string& name : f.formats) {
    absl::StatusOr<cpu::FormatSpec> spec = cpu::ParseFormat(name);
    if (!spec.ok()) {
      std::printf("--formats: %s\n", spec.status().ToString().c_str());
      continue;
    }
    PackedExpertRing experts;
    if (!experts.Build(data.gate(), data.up(), data.down(), s.hidden, s.intermediate, *spec, ring)) {
      std::printf("%s: cannot map a ring of %.2f GiB\n", name.c_str(), Gib(ring));
      continue;
    }
    std::printf("%-10s ring %d x %.2f MiB = %.2f GiB (%.1fx LLC)%s\n", name.c_str(),
                experts.slots(), Mib(experts.expert_bytes()), Gib(experts.ring_bytes()),
                static_cast<double>(experts.ring_bytes()) / c.llc.bytes_total,
                experts.ring_bytes() < 2 * c.llc.bytes_total ? "  WARNING: < 2x LLC, some reads hit the cache" : "");
    CpuMoeStep step(*c.pool, s.hidden, s.intermediate);
    step.set_phases(f.phases);
    step.set_tasks_per_thread(f.tasks_per_thread);
    std::vector<const cpu::PackedExpert*> slots;
    for (int tokens : f.tokens) {
      // The read bandwidth again, just before this row (best of 3): on a shared machine it
      // drifts by 10-20% within a minute.
      const ReadBandwidth now = MeasureReadBandwidth(*c.pool, c.bw_bytes, 3);
      const double read_gbps = now.passes > 0 ? now.best_gbps : c.read_gbps;
      int steps_prepared = 0;
      std::vector<std::vector<TaskRecord>> recorded;
      const std::string row = std::string(s.name) + " " + name + " x" + std::to_string(tokens);
      const Timing t = TimeSteps(data, tokens, f, [&](const Routed& r) {
        if (++steps_prepared == 2) step.ResetPhases();  // count the timed steps only
        // Kept, and written after the row: writing between steps would slow the next one.
        if (c.timeline && steps_prepared >= 3 && steps_prepared <= 34) recorded.push_back(step.last_step_tasks());
        slots.clear();
        for (int64_t g = 0; g < r.groups.count(); ++g) slots.push_back(experts.Next());
      }, [&](const Routed& r, float* out) { step.Run(r.routing, r.groups, slots, data.x(tokens), out); });
      if (c.timeline != nullptr) WriteTimeline(c.timeline, row, recorded);
      const double bytes = t.experts_per_step * experts.expert_bytes();
      const double gbps = bytes / t.seconds_per_step / 1e9;
      const double flops = t.routes_per_step * 6.0 * s.hidden * s.intermediate / t.seconds_per_step;
      std::printf("%-10s %5d %7.1f %9.1f %9.3f %8.1f %7.1f %6.1f%% %9.1f |", name.c_str(), tokens,
                  t.experts_per_step, bytes / (1 << 20), t.seconds_per_step * 1e3, gbps, read_gbps,
                  100 * gbps / read_gbps, flops / 1e9);
      const int type = spec->format == cpu::WeightFormat::kBf16 ? 0 : 1;
      auto it = peer.find({type, tokens});
      double ratio = 0;
      if (it == peer.end()) {
        std::printf(" %-11s\n", "-");
      } else {
        const Timing& p = it->second.timing;
        ratio = t.seconds_per_step / p.seconds_per_step;
        const double pgbps = p.experts_per_step * it->second.expert_bytes / p.seconds_per_step / 1e9;
        const double pflops = p.routes_per_step * 6.0 * s.hidden * s.intermediate / p.seconds_per_step;
        std::printf(" %-11s %9.3f %8.1f %9.1f %7.2f %9.2e\n", type == 0 ? "onednn-bf16" : "onednn-int8",
                    p.seconds_per_step * 1e3, pgbps, pflops / 1e9, ratio, RelativeDiff(t.first_out, p.first_out));
      }
      if (f.phases) PrintPhases(step.phases());
      if (tokens <= 8) {
        c.decode_rows.push_back({row, gbps / read_gbps, ratio});
      }
    }
  }
}

void PrintSummary(const Context& c) {
  if (c.decode_rows.empty()) return;
  std::printf("\n== decode summary (1 and 8 tokens per step): goals >= 80%% of read bandwidth, faster than oneDNN ==\n");
  int bw_ok = 0, peer_ok = 0, peer_rows = 0;
  double worst_bw = 1e9, worst_ratio = 0;
  std::string worst_bw_row, worst_ratio_row;
  for (const Row& r : c.decode_rows) {
    if (r.bw_fraction >= 0.8) ++bw_ok;
    if (r.bw_fraction < worst_bw) worst_bw = r.bw_fraction, worst_bw_row = r.what;
    if (r.peer_ratio > 0) {
      ++peer_rows;
      if (r.peer_ratio < 1) ++peer_ok;
      if (r.peer_ratio > worst_ratio) worst_ratio = r.peer_ratio, worst_ratio_row = r.what;
    }
  }
  std::printf(">= 80%% of read bandwidth: %d of %zu rows (lowest %.1f%%: %s)\n", bw_ok, c.decode_rows.size(),
              100 * worst_bw, worst_bw_row.c_str());
  if (peer_rows > 0) {
    std::printf("faster than oneDNN: %d of %d rows (worst ours/oneDNN %.2f: %s)\n", peer_ok, peer_rows,
                worst_ratio, worst_ratio_row.c_str());
  }
}

}  // namespace
}  // namespace moemesh::bench

int main(int argc, char** argv) {
  using namespace moemesh;
  using namespace moemesh::bench;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::optional<Flags> flags = ParseFlags(argc, argv);
  if (!flags) return 2;
  Context c;
  c.flags = *flags;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> timeline(nullptr, &std::fclose);
  if (!c.flags.timeline.empty()) {
    timeline.reset(OpenTimeline(c.flags.timeline));
    if (timeline == nullptr) {
      std::fprintf(stderr, "--timeline: cannot open %s for writing: %s\n", c.flags.timeline.c_str(),
                   std::strerror(errno));
      return 2;
    }
    c.timeline = timeline.get();
  }
  for (const std::string& name : c.flags.shapes) {
    bool known = false;
    for (const MoeShape& s : kShapes) known |= name == s.name;
    if (!known) {
      std::fprintf(stderr, "--shapes: unknown shape %s (known: qwen3-30b-a3b, qwen3-235b-a22b, mixtral-8x7b, deepseek-v3)\n",
                   name.c_str());
      return 2;
    }
  }
  for (const std::string& name : c.flags.formats) {
    if (!cpu::ParseFormat(name).ok()) {
      std::fprintf(stderr, "--formats: unknown format %s (known: bf16, int8-g32, int8-g128, int4-g32, int4-g128)\n",
                   name.c_str());
      return 2;
    }
  }

  auto topo = DiscoverTopology();
  c.llc = FindLastLevelCache();
  if (c.llc.bytes_total == 0) c.llc.bytes_total = c.llc.bytes_each = 32ull << 20;  // unknown: assume 32 MiB
  const int cores = topo.ok() ? topo->total_cores() : 1;
  const int threads = c.flags.threads > 0 ? c.flags.threads : std::max(1, cores);
  ThreadPoolOptions options;
  options.num_threads = threads;
  if (c.flags.pin && topo.ok() && threads <= cores) {
    // Background threads on cores 1..; the calling thread stays unpinned (oneDNN's OpenMP
    // threads, created from it, inherit its mask).
    std::vector<std::vector<int>> sets = topo->CoreCpusets();
    std::rotate(sets.begin(), sets.begin() + 1, sets.end());
    options.cpusets = sets;
  }
  ThreadPool pool(options);
  c.pool = &pool;
  omp_set_num_threads(threads);

  std::string paths;
  for (cpu::CpuPath p : cpu::SupportedPaths()) paths += std::string(paths.empty() ? "" : ", ") + cpu::PathName(p);
  std::printf("== machine ==\ncpu: %s\nhwloc: %s\nLLC: L%d, %d x %.1f MiB = %.1f MiB\nmemory available: %.1f GiB\n"
              "kernel paths supported: %s\nthreads: %d (%s), oneDNN: %d OpenMP threads\n"
              "load average at start: %s (other processes make timings noisy)\n",
              CpuModel().c_str(), topo.ok() ? topo->Summary().c_str() : topo.status().ToString().c_str(),
              c.llc.depth, c.llc.instances, Mib(c.llc.bytes_each), Mib(c.llc.bytes_total),
              Gib(MemAvailableBytes()), paths.c_str(), threads,
              options.cpusets.empty() ? "not pinned" : "background threads pinned one per core",
              omp_get_max_threads(), LoadAverage().c_str());
  std::printf("flags: shapes %s; formats %s; tokens %s; max_gib %.1f; min_time %.2f s; skew %.2f; "
              "onednn %s; phases %s; tasks per thread %d\n",
              absl::StrJoin(c.flags.shapes, ",").c_str(), absl::StrJoin(c.flags.formats, ",").c_str(),
              absl::StrJoin(c.flags.tokens, ",").c_str(), c.flags.max_gib, c.flags.min_time, c.flags.skew,
              c.flags.onednn ? "on" : "off", c.flags.phases ? "on" : "off", c.flags.tasks_per_thread);

  const uint64_t bw_bytes = std::min<uint64_t>(std::max<uint64_t>(4 * c.llc.bytes_total, 1ull << 30),
                                               static_cast<uint64_t>(c.flags.max_gib * (1ull << 30)) / 2);
  c.bw_bytes = bw_bytes;
  const ReadBandwidth bw = MeasureReadBandwidth(pool, bw_bytes, c.flags.quick ? 3 : 8);
  if (bw.passes == 0) {
    std::fprintf(stderr, "cannot map %.2f GiB for the read bandwidth test\n", Gib(bw_bytes));
    return 1;
  }
  c.read_gbps = bw.best_gbps;
  std::printf("\n== memory read bandwidth: %d threads summing %.2f GiB (%.1fx LLC) with %s loads ==\n"
              "best %.1f GB/s, median %.1f GB/s over %d passes; measured again (best of 3) before each\n"
              "row, and %%readBW uses that\n",
              threads, Gib(bw.buffer_bytes), static_cast<double>(bw.buffer_bytes) / c.llc.bytes_total, bw.loads,
              bw.best_gbps, bw.median_gbps, bw.passes);

  MeasureAmxThresholds(c.flags);

  std::printf("\nEach row: one MoE layer step (gather, GateUp, Down, weighted sum) over `tok` tokens, skewed\n"
              "top-k routing (Zipf exponent %.2f, fixed seed), each routed expert's weights taken from the\n"
              "next copy of a ring larger than the LLC, so they stream from DRAM. exp/st: experts read per\n"
              "step; MiB/step: their weight bytes (ours packed, with scales); ms/step: median over the timed\n"
              "steps (at least min_time of them); GB/s = MiB/step / ms/step; readBW: the read bandwidth\n"
              "measured just before the row (GB/s), %%readBW = GB/s against it; GFLOP/s counts 6*H*I per routed token. Peer: oneDNN matmul\n"
              "doing the same FFN (bf16 for bf16, int8 for int8 and int4); ours/pr = our time / its time;\n"
              "rel.diff: L2 difference of the two outputs on the first step (quantization differs).\n",
              c.flags.skew);
  for (const std::string& name : c.flags.shapes) {
    for (const MoeShape& s : kShapes) {
      if (name == s.name) RunShape(c, s);
    }
  }
  PrintSummary(c);
  std::printf("load average at end: %s\n", LoadAverage().c_str());
  return 0;
}
