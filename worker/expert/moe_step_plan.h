// MoeStepPlan: the tasks of one MoE layer step on the CPU expert kernels, laid out for a single
// executor phase (NumaExecutor::Run, or ThreadPool::ParallelFor with chunk 1) in which each
// node's threads take that node's tasks in list order. Per node the list is
//   gather (the token rows of an expert with 2+ routes, 32 routes at a time; an expert with one
//   route reads its token's row in place) -> GateUp (intermediate row ranges) -> Down (output
//   row ranges) -> sums (ranges of the step's [tokens, hidden] output, round robin over nodes),
// and each task first waits (WaitInputs) for the earlier tasks whose output it reads: GateUp for
// its expert's gathers, Down for its expert's GateUps, a sum for every Down of the step. The
// kinds used to be separate phases; each phase boundary woke every thread and waited for the
// slowest last task, which on decode steps of small experts (0.2 ms) was 10-15% of the step.
// Now a thread goes straight on to the next task, whose inputs are usually complete (every
// GateUp task precedes every Down task in the list).
//
// Why a phase always finishes: a task waits only for tasks of its own node that precede it in
// the list (sums: for Down tasks of any node, which wait for nothing but their own node's
// earlier tasks). Threads take a node's tasks in order, so every task a waiting task needs has
// been taken by a running thread, and by induction over list positions every task completes.
// Expert rows are split in proportion to each expert's share of its node's work (weights
// streamed plus tokens), about tasks_per_thread tasks per thread, so skewed routing keeps every
// thread busy. The sums are cut into about two ranges per thread: one thread summing
// 8 tokens of 8 experts (data the other cores just wrote) took 5% of a decode step while every
// other thread waited. Thread-safety: Build while no phase runs; during a phase, WaitInputs,
// Done and RunMoeStepTask from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/types/span.h"
#include "kernels/cpu/expert_ffn.h"
#include "runtime/expert_client.h"
#include "worker/expert/route_groups.h"

namespace moemesh {

struct MoeStepTask {
  enum Kind : uint8_t { kGather, kGateUp, kDown, kSum };
  Kind kind;
  int32_t slot;   // the expert's slot; -1 for a sum
  // [begin, end): grouped routes (gather), rows (GateUp, Down), or elements of the row-major
  // [num_tokens, hidden] output (sum).
  int32_t begin;
  int32_t end;
};

struct MoeStepShape {
  int64_t hidden = 0;
  int64_t intermediate = 0;
  int64_t num_tokens = 0;
  std::vector<int> node_threads;  // per node, >= 1 each
  // About how many GateUp (and Down) tasks each thread gets. Each task costs a stream starting
  // cold and its activations quantized; too few leave threads idle at the step's end. Since the
  // sums run on every thread, 4 measured 7-12% faster than 8 on Qwen3-30B-A3B decode steps
  // (0.17-1.4 ms) and within noise on Qwen3-235B-A22B (docs/perf.md).
  int tasks_per_thread = 4;
};

class MoeStepPlan {
 public:
  static constexpr int32_t kGatherRoutes = 32;  // routes per gather task
  static constexpr int64_t kMinSumElements = 256;  // a sum task's least output elements

  // Whether a slot with `routes` routes has its token rows gathered (else read in place).
  static bool Gathers(int64_t routes) { return routes > 1; }

  // route_offsets: per slot its first grouped route, n_slots + 1 entries (the last = routes);
  // slot_node: per slot the node whose threads compute it. Slots without routes get no tasks.
  void Build(const MoeStepShape& shape, absl::Span<const int32_t> route_offsets,
             absl::Span<const int32_t> slot_node);

  int nodes() const { return static_cast<int>(tasks_.size()); }
  const std::vector<int64_t>& counts() const { return counts_; }  // tasks per node
  const MoeStepTask& task(int node, int64_t i) const { return tasks_[node][i]; }

  // Blocks until every task whose output `t` reads is Done.
  void WaitInputs(const MoeStepTask& t) const;
  // Marks `t` complete (its outputs written) for the tasks that wait for it.
  void Done(const MoeStepTask& t);

 private:
  std::vector<std::vector<MoeStepTask>> tasks_;
  std::vector<int64_t> counts_;
  // Per slot: gathers left, GateUps left. Step-wide: Downs left.
  std::unique_ptr<std::atomic<int32_t>[]> gathers_left_, gate_ups_left_;
  size_t slots_capacity_ = 0;
  std::atomic<int64_t> downs_left_{0};
};

// What one step's tasks read and write, for RunMoeStepTask. Slots index experts and paths.
struct MoeStepData {
  int64_t hidden = 0;
  int64_t intermediate = 0;
  int64_t top_k = 0;
  const float* x = nullptr;              // [num_tokens, hidden]
  const float* route_weights = nullptr;  // [num_tokens, top_k]
  const RouteGroups* routes = nullptr;   // grouped by slot, as the plan was built from
  const cpu::PackedExpert* const* experts = nullptr;  // per slot
  const cpu::CpuPath* paths = nullptr;                // per slot
  float* xg = nullptr;   // [held, hidden]: gathered token rows
  float* h = nullptr;    // [held, intermediate]
  float* y = nullptr;    // [held, hidden]: each grouped route's expert output
  float* out = nullptr;  // [num_tokens, hidden]
};

// The work of task `t` (its inputs complete: call WaitInputs first, Done after). Each token's
// output is summed over its routes in choice order, so results do not depend on threads,
// nodes or how rows were cut.
void RunMoeStepTask(const MoeStepTask& t, const MoeStepData& d, cpu::Scratch& scratch);

// What a MoE layer step keeps from one step to the next: the batch's routes grouped by slot,
// the gathered rows, intermediate and per-route outputs, each slot's kernel path and the plan.
// The expert pool and bench_expert_ffn prepare their steps through it. Thread-safety: Prepare
// while no phase runs; a phase's tasks then read data() and the plan.
class MoeStep {
 public:
  // Prepares a step of batch `b`, writing `out` ([num_tokens, hidden]): groups its routes by
  // slot (`slot` maps an expert id of the batch to its slot), picks each routed slot's kernel
  // path for its token count (cpu::ChoosePath), sizes the buffers and builds the plan from
  // `shape` (hidden, intermediate, node_threads, tasks_per_thread; num_tokens is b's).
  // experts[s] holds slot s's weights and slot_node[s] its node; both outlive the step.
  const MoeStepData& Prepare(const ExpertBatch& b, absl::FunctionRef<int32_t(int32_t)> slot,
                             absl::Span<const cpu::PackedExpert* const> experts,
                             absl::Span<const int32_t> slot_node, MoeStepShape shape, float* out);
  const MoeStepData& data() const { return data_; }
  MoeStepPlan& plan() { return plan_; }

 private:
  RouteGroups routes_;
  std::vector<float> xg_, h_, y_;
  std::vector<cpu::CpuPath> paths_;
  MoeStepPlan plan_;
  MoeStepData data_;
};

}  // namespace moemesh
