// Benchmark helper: one MoE layer step on the CPU expert kernels, run the way the expert pool
// runs it: the pool's route grouping, task plan and task bodies (worker/expert/moe_step_plan.h:
// gather, (expert, row range) tasks of GateUp, then of Down, then ranges of the tokens' sums)
// in one ThreadPool phase, each task waiting only for the earlier tasks it reads from. Weights
// come from a caller-chosen PackedExpert per routed expert. Not for the runtime.
// With phases on, Run also adds up where thread time goes (PhaseTimes). Thread-safety: Run uses
// the pool; one Run at a time per object.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/moe_routing.h"
#include "common/thread_pool.h"
#include "kernels/cpu/expert_ffn.h"
#include "runtime/expert_client.h"
#include "worker/expert/moe_step_plan.h"

namespace moemesh::bench {

// Seconds of the steps run with phases on, summed over steps. total: wall time of Run. The rest
// are thread time divided by the pool's threads (so they add up to about total): `plan` the
// wall time before the phase (paths, task lists: every other thread idles), each task kind's
// busy time, `wait` the time tasks spent waiting for their inputs (WaitInputs), `start` the
// threads' delay from the phase's start to their first task, `tail` their idle time after their
// last task until Run returns, and other() what is left (taking tasks, between tasks).
struct PhaseTimes {
  int64_t steps = 0;
  double total = 0;
  double plan = 0;
  double gather = 0;
  double gate_up = 0;
  double down = 0;
  double wait = 0;
  double sum = 0;
  double start = 0;
  double tail = 0;
  double other() const { return total - plan - gather - gate_up - down - wait - sum - start - tail; }
};

// One task of a step with phases on, times in ns from the end of planning (--timeline).
struct TaskRecord {
  int32_t thread;  // order in which the pool's threads took their first task of the step
  MoeStepTask task;
  int64_t wait_ns, start_ns, end_ns;  // WaitInputs entered, work started, task done
};

class CpuMoeStep {
 public:
  CpuMoeStep(ThreadPool& pool, int64_t hidden, int64_t intermediate)
      : pool_(pool), hidden_(hidden), inter_(intermediate) {}

  // Phase timing: clock reads around each task's wait and work when on; none when off.
  void set_phases(bool on) { phases_on_ = on; }
  // About how many (expert, row range) tasks each pool thread gets per kind (default: the expert
  // pool's).
  void set_tasks_per_thread(int64_t n) { tasks_per_thread_ = std::max<int64_t>(1, n); }
  void ResetPhases() { phases_ = PhaseTimes{}; }
  // The last step's tasks in list order (phases on only; empty otherwise).
  const std::vector<TaskRecord>& last_step_tasks() const { return records_; }
  const PhaseTimes& phases() const { return phases_; }

  // out[t] = sum_j w[t, j] * FFN_{expert(t, j)}(x[t]); experts[g] holds group g's weights.
  // x, out: [routing.tokens, hidden].
  void Run(const StepRouting& r, const ExpertGroups& g,
           const std::vector<const cpu::PackedExpert*>& experts, const float* x, float* out) {
    const Stamp t_start = Now();
    const int64_t groups = g.count();
    // The expert pool's grouping (worker/expert/route_groups.h), slots in the groups' order.
    int32_t max_id = 0;
    for (int32_t e : g.expert) max_id = std::max(max_id, e);
    group_of_.assign(static_cast<size_t>(max_id) + 1, -1);
    for (int64_t i = 0; i < groups; ++i) group_of_[g.expert[i]] = static_cast<int32_t>(i);
    ExpertBatch batch;
    batch.num_tokens = r.tokens;
    batch.hidden = static_cast<int32_t>(hidden_);
    batch.top_k = r.top_k;
    batch.hidden_states = absl::MakeConstSpan(x, static_cast<size_t>(r.tokens * hidden_));
    batch.expert_ids = r.ids;
    batch.expert_weights = r.weights;
    nodes_.assign(groups, 0);
    MoeStepShape shape;
    shape.hidden = hidden_;
    shape.intermediate = inter_;
    shape.node_threads = {pool_.num_threads()};
    shape.tasks_per_thread = static_cast<int>(tasks_per_thread_);
    const MoeStepData& d = step_.Prepare(batch, [&](int32_t e) { return group_of_[e]; }, experts,
                                         nodes_, shape, out);
    MoeStepPlan& plan = step_.plan();
    for (auto& t : thread_ns_) t.store(0, std::memory_order_relaxed);
    threads_seen_.store(0, std::memory_order_relaxed);
    first_start_ns_.store(0, std::memory_order_relaxed);
    last_end_sum_ns_.store(0, std::memory_order_relaxed);
    static std::atomic<int64_t> steps_started{0};  // process-wide: threads outlive this object
    step_id_ = steps_started.fetch_add(1, std::memory_order_relaxed) + 1;
    if (phases_on_) records_.resize(static_cast<size_t>(plan.counts()[0]));
    const Stamp t_planned = Now();

    pool_.ParallelFor(plan.counts()[0], [&](int64_t b, int64_t e) {
      thread_local cpu::Scratch scratch;
      for (int64_t i = b; i < e; ++i) {
        const MoeStepTask& t = plan.task(0, i);
        const Stamp t0 = Now();
        plan.WaitInputs(t);
        const Stamp t1 = Now();
        RunMoeStepTask(t, d, scratch);
        plan.Done(t);
        if (phases_on_) {
          const Stamp t2 = Now();
          thread_ns_[0].fetch_add(Ns(t0, t1), std::memory_order_relaxed);
          thread_ns_[1 + t.kind].fetch_add(Ns(t1, t2), std::memory_order_relaxed);
          // Per thread: its first task's start (once per step) and, kept as a running sum over
          // threads, its last task's end (each task moves this thread's term to its own end).
          thread_local int64_t step_seen = -1;
          thread_local int64_t last_end_ns = 0;
          thread_local int32_t thread_order = 0;
          const int64_t end_ns = Ns(t_planned, t2);
          if (step_seen != step_id_) {
            step_seen = step_id_;
            last_end_ns = 0;
            thread_order = static_cast<int32_t>(threads_seen_.fetch_add(1, std::memory_order_relaxed));
            first_start_ns_.fetch_add(Ns(t_planned, t0), std::memory_order_relaxed);
          }
          records_[static_cast<size_t>(i)] = {thread_order, t, Ns(t_planned, t0), Ns(t_planned, t1), end_ns};
          last_end_sum_ns_.fetch_add(end_ns - last_end_ns, std::memory_order_relaxed);
          last_end_ns = end_ns;
        }
      }
    }, 1);
    if (phases_on_) {
      const double threads = pool_.num_threads();
      auto share = [&](int i) { return thread_ns_[i].load(std::memory_order_relaxed) * 1e-9 / threads; };
      PhaseTimes& p = phases_;
      ++p.steps;
      const Stamp t_end = Now();
      p.total += Seconds(t_start, t_end);
      p.plan += Seconds(t_start, t_planned);
      // Threads that took no task idled through the whole phase: all start, no tail.
      const int64_t seen = threads_seen_.load(std::memory_order_relaxed);
      const double phase = Seconds(t_planned, t_end);
      p.start += (first_start_ns_.load(std::memory_order_relaxed) * 1e-9 + (threads - seen) * phase) / threads;
      p.tail += (seen * phase - last_end_sum_ns_.load(std::memory_order_relaxed) * 1e-9) / threads;
      p.wait += share(0);
      p.gather += share(1 + MoeStepTask::kGather);
      p.gate_up += share(1 + MoeStepTask::kGateUp);
      p.down += share(1 + MoeStepTask::kDown);
      p.sum += share(1 + MoeStepTask::kSum);
    }
  }

 private:
  using Stamp = std::chrono::steady_clock::time_point;

  Stamp Now() const { return phases_on_ ? std::chrono::steady_clock::now() : Stamp(); }
  static double Seconds(Stamp a, Stamp b) { return std::chrono::duration<double>(b - a).count(); }
  static int64_t Ns(Stamp a, Stamp b) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count();
  }

  ThreadPool& pool_;
  const int64_t hidden_;
  const int64_t inter_;
  std::vector<int32_t> nodes_, group_of_;
  MoeStep step_;
  bool phases_on_ = false;
  int64_t tasks_per_thread_ = MoeStepShape{}.tasks_per_thread;
  PhaseTimes phases_;
  std::vector<TaskRecord> records_;
  std::atomic<int64_t> thread_ns_[5] = {0, 0, 0, 0, 0};  // waiting, then busy per task kind
  int64_t step_id_ = 0;  // tells a thread's first task of a step (unique in the process)
  std::atomic<int64_t> threads_seen_{0}, first_start_ns_{0}, last_end_sum_ns_{0};
};

// One line of shares of thread time (bench_expert_ffn --phases).
inline void PrintPhases(const PhaseTimes& p) {
  if (p.steps == 0 || p.total <= 0) return;
  auto pct = [&](double v) { return 100 * v / p.total; };
  std::printf("%-10s thread time over %lld steps: plan %.1f%%, gather %.1f%%, GateUp %.1f%%, Down %.1f%%, "
              "weighted sum %.1f%%, waiting for inputs %.1f%%, start %.1f%%, tail %.1f%%, other %.1f%% "
              "(mean step %.3f ms)\n",
              "", static_cast<long long>(p.steps), pct(p.plan), pct(p.gather), pct(p.gate_up), pct(p.down),
              pct(p.sum), pct(p.wait), pct(p.start), pct(p.tail), pct(p.other()),
              1e3 * p.total / p.steps);
}

// bench_expert_ffn --timeline: a CSV file with its header line (nullptr and errno when it
// cannot be created), and the lines of a row's recorded steps (numbered from 1), a line per task.
inline std::FILE* OpenTimeline(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f != nullptr) std::fprintf(f, "row,step,thread,kind,slot,begin,end,wait_ns,start_ns,end_ns\n");
  return f;
}
inline void WriteTimeline(std::FILE* file, const std::string& row,
                          const std::vector<std::vector<TaskRecord>>& steps) {
  static const char* const kKinds[] = {"gather", "gateup", "down", "sum"};
  for (size_t i = 0; i < steps.size(); ++i) {
    for (const TaskRecord& r : steps[i]) {
      std::fprintf(file, "%s,%zu,%d,%s,%d,%d,%d,%lld,%lld,%lld\n", row.c_str(), i + 1, r.thread,
                   kKinds[r.task.kind], r.task.slot, r.task.begin, r.task.end,
                   static_cast<long long>(r.wait_ns), static_cast<long long>(r.start_ns),
                   static_cast<long long>(r.end_ns));
    }
  }
}

}  // namespace moemesh::bench
