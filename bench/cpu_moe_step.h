// Benchmark helper: one MoE layer step on the CPU expert kernels, split the way the expert pool
// splits it: gather each expert's tokens, then (expert, intermediate row block) tasks of GateUp,
// then (expert, output row block) tasks of Down, then each token's sum of its experts. Weights
// come from a caller-chosen PackedExpert per routed expert. Not for the runtime.
// With phases on, Run also adds up where step time goes (PhaseTimes). Thread-safety: Run uses
// the pool; one Run at a time per object.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bench/moe_routing.h"
#include "common/thread_pool.h"
#include "kernels/cpu/expert_ffn.h"

namespace moemesh::bench {

// Seconds of the steps run with phases on, summed over steps. Wall time of the calling thread
// for gather, the weighted sum and the rest (paths, task lists); GateUp and Down as the mean
// busy time per pool thread (sum of their task times / threads), and `wait` the rest of those
// two phases' wall time: threads idle at the end-of-phase barrier or not yet woken.
struct PhaseTimes {
  int64_t steps = 0;
  double total = 0;
  double gather = 0;
  double gate_up = 0;
  double down = 0;
  double wait = 0;
  double sum = 0;
  double other() const { return total - gather - gate_up - down - wait - sum; }
};

class CpuMoeStep {
 public:
  CpuMoeStep(ThreadPool& pool, int64_t hidden, int64_t intermediate)
      : pool_(pool), hidden_(hidden), inter_(intermediate) {}

  // Phase timing: two clock reads per task and five per step when on; none when off.
  void set_phases(bool on) { phases_on_ = on; }
  // About how many (expert, row range) tasks each pool thread gets per phase (default 16).
  void set_tasks_per_thread(int64_t n) { tasks_per_thread_ = std::max<int64_t>(1, n); }
  void ResetPhases() { phases_ = PhaseTimes{}; }
  const PhaseTimes& phases() const { return phases_; }

  // out[t] = sum_j w[t, j] * FFN_{expert(t, j)}(x[t]); experts[g] holds group g's weights.
  // x, out: [routing.tokens, hidden].
  void Run(const StepRouting& r, const ExpertGroups& g,
           const std::vector<const cpu::PackedExpert*>& experts, const float* x, float* out) {
    const Stamp t_start = Now();
    const int64_t routes = static_cast<int64_t>(g.route.size());
    const int64_t groups = g.count();
    xg_.resize(static_cast<size_t>(routes * hidden_));
    yg_.resize(xg_.size());
    h_.resize(static_cast<size_t>(routes * inter_));
    wg_.resize(routes);
    const int k = r.top_k;
    // Gather each expert's token rows and routing weights.
    pool_.ParallelFor(routes, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        const int32_t route = g.route[p];
        std::memcpy(xg_.data() + p * hidden_, x + static_cast<int64_t>(route / k) * hidden_,
                    hidden_ * sizeof(float));
        wg_[p] = r.weights[route];
      }
    });
    const Stamp t_gathered = Now();
    paths_.resize(groups);
    for (int64_t i = 0; i < groups; ++i) {
      paths_[i] = cpu::ChoosePath(experts[i]->gate_up.spec, g.tokens(i));
    }

    MakeTasks(g, inter_);
    busy_ns_[0].store(0, std::memory_order_relaxed);
    busy_ns_[1].store(0, std::memory_order_relaxed);
    const Stamp t_gate_up = Now();
    pool_.ParallelFor(static_cast<int64_t>(tasks_.size()), [&](int64_t b, int64_t e) {
      thread_local cpu::Scratch scratch;
      const Stamp t0 = Now();
      for (int64_t i = b; i < e; ++i) {
        const Task& t = tasks_[i];
        const int64_t p0 = g.begin[t.group];
        cpu::GateUp(*experts[t.group], xg_.data() + p0 * hidden_, g.tokens(t.group), t.begin,
                    t.end, h_.data() + p0 * inter_, paths_[t.group], scratch);
      }
      AddBusy(0, t0);
    }, 1);
    const Stamp t_gate_up_end = Now();

    MakeTasks(g, hidden_);
    const Stamp t_down = Now();
    pool_.ParallelFor(static_cast<int64_t>(tasks_.size()), [&](int64_t b, int64_t e) {
      thread_local cpu::Scratch scratch;
      const Stamp t0 = Now();
      for (int64_t i = b; i < e; ++i) {
        const Task& t = tasks_[i];
        const int64_t p0 = g.begin[t.group];
        const int64_t n = g.tokens(t.group);
        float* y = yg_.data() + p0 * hidden_;
        for (int64_t row = 0; row < n; ++row) {
          std::memset(y + row * hidden_ + t.begin, 0, (t.end - t.begin) * sizeof(float));
        }
        cpu::Down(*experts[t.group], h_.data() + p0 * inter_, n, wg_.data() + p0, t.begin, t.end,
                  y, paths_[t.group], scratch);
      }
      AddBusy(1, t0);
    }, 1);
    const Stamp t_down_end = Now();

    // Each token's sum over its experts (already weighted by Down), in choice order.
    pool_.ParallelFor(r.tokens, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        float* o = out + t * hidden_;
        const float* y0 = yg_.data() + g.pos[t * k] * hidden_;
        std::memcpy(o, y0, hidden_ * sizeof(float));
        for (int j = 1; j < k; ++j) {
          const float* y = yg_.data() + g.pos[t * k + j] * hidden_;
          for (int64_t i = 0; i < hidden_; ++i) o[i] += y[i];
        }
      }
    });
    if (phases_on_) {
      const Stamp t_end = Now();
      const double threads = pool_.num_threads();
      const double gate_up_busy = busy_ns_[0].load(std::memory_order_relaxed) * 1e-9 / threads;
      const double down_busy = busy_ns_[1].load(std::memory_order_relaxed) * 1e-9 / threads;
      PhaseTimes& p = phases_;
      ++p.steps;
      p.total += Seconds(t_start, t_end);
      p.gather += Seconds(t_start, t_gathered);
      p.gate_up += gate_up_busy;
      p.down += down_busy;
      p.wait += Seconds(t_gate_up, t_gate_up_end) - gate_up_busy;
      p.wait += Seconds(t_down, t_down_end) - down_busy;
      p.sum += Seconds(t_down_end, t_end);
    }
  }

 private:
  using Stamp = std::chrono::steady_clock::time_point;

  Stamp Now() const { return phases_on_ ? std::chrono::steady_clock::now() : Stamp(); }
  static double Seconds(Stamp a, Stamp b) { return std::chrono::duration<double>(b - a).count(); }
  void AddBusy(int phase, Stamp t0) {
    if (!phases_on_) return;
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Now() - t0).count();
    busy_ns_[phase].fetch_add(ns, std::memory_order_relaxed);
  }

  struct Task {
    int32_t group;
    int64_t begin;  // rows [begin, end) of the phase's output
    int64_t end;
  };

  // Rows of `size` cut into runs of a multiple of kRowBlock: about 16 tasks per thread in all.
  // Each phase ends at a barrier, so its last tasks run while other threads idle: in decode
  // (weights streamed once) 16 tasks per thread measured 4-9% more GB/s than 8 on a 16-core
  // Xeon, while 32 and 64 lost again (more per-task overhead: activations quantized per task).
  void MakeTasks(const ExpertGroups& g, int64_t size) {
    const int64_t blocks = (size + cpu::kRowBlock - 1) / cpu::kRowBlock;
    const int64_t target = tasks_per_thread_ * static_cast<int64_t>(pool_.num_threads());
    const int64_t per_task = std::clamp<int64_t>(g.count() * blocks / target, 1, blocks);
    tasks_.clear();
    for (int32_t i = 0; i < g.count(); ++i) {
      for (int64_t b = 0; b < blocks; b += per_task) {
        tasks_.push_back({i, b * cpu::kRowBlock, std::min(size, (b + per_task) * cpu::kRowBlock)});
      }
    }
  }

  ThreadPool& pool_;
  const int64_t hidden_;
  const int64_t inter_;
  std::vector<float> xg_, yg_, h_, wg_;
  std::vector<cpu::CpuPath> paths_;
  std::vector<Task> tasks_;
  bool phases_on_ = false;
  int64_t tasks_per_thread_ = 16;
  PhaseTimes phases_;
  std::atomic<int64_t> busy_ns_[2] = {0, 0};  // GateUp, Down: task time summed over threads
};

}  // namespace moemesh::bench
