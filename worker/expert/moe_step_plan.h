// MoeStepPlan: the tasks of one MoE layer step on the CPU expert kernels, laid out for a single
// executor phase (NumaExecutor::Run, or ThreadPool::ParallelFor with chunk 1) in which each
// node's threads take that node's tasks in list order. Per node the list is
//   gather (an expert's token rows, 32 routes at a time) -> GateUp (intermediate row ranges)
//   -> Down (output row ranges) -> per-token sums (blocks of 8 tokens, round robin over nodes),
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
// thread busy. Thread-safety: Build while no phase runs; during a phase, WaitInputs and Done
// from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/types/span.h"

namespace moemesh {

struct MoeStepTask {
  enum Kind : uint8_t { kGather, kGateUp, kDown, kSum };
  Kind kind;
  int32_t slot;   // the expert's slot; -1 for a sum
  int32_t begin;  // grouped routes (gather), rows (GateUp, Down) or tokens (sum): [begin, end)
  int32_t end;
};

struct MoeStepShape {
  int64_t hidden = 0;
  int64_t intermediate = 0;
  int64_t num_tokens = 0;
  std::vector<int> node_threads;  // per node, >= 1 each
  // About how many GateUp (and Down) tasks each thread gets. With one phase per step only its
  // end waits for the slowest last task, and 8 measured faster than 16 on decode steps of small
  // experts (per-task costs: activation quantization, each task's stream starting cold).
  int tasks_per_thread = 8;
};

class MoeStepPlan {
 public:
  static constexpr int32_t kGatherRoutes = 32;  // routes per gather task
  static constexpr int32_t kSumTokens = 8;      // tokens per sum task

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

}  // namespace moemesh
