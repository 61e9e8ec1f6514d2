// NumaExecutor: one ThreadPool per NUMA node, its threads pinned to that node's cores, and one
// way to use them: a phase in which every node works through its own list of tasks at once,
// its threads taking tasks from an atomic counter (work stealing within the node). Tasks never
// move between nodes: a node's tasks read the memory of that node. Idle threads (pool workers
// and node drivers) poll briefly for the next phase before sleeping (WorkerGate). No task queue,
// no futures.
// Thread-safety: Run may be called by one thread at a time (the caller serialises).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "common/thread_pool.h"
#include "common/topology.h"
#include "common/worker_gate.h"

namespace moemesh {

class Hwloc;

// One NUMA node's share of an expert worker: where its weights live and who computes them.
struct NumaNodeSpec {
  int os_index = -1;  // NUMA node the node's weights are bound to (hwloc OS index); -1: unbound
  int threads = 1;    // compute threads (>= 1)
  std::vector<std::vector<int>> cpusets;  // thread i pinned to cpusets[i % size]; empty: unpinned
};

// One spec per NUMA node of `topology`, `total_threads` (0: one per core) spread over the nodes
// in proportion to their cores, at least one each, pinned one thread per core.
std::vector<NumaNodeSpec> NodesFromTopology(const HostTopology& topology, int total_threads);

class NumaExecutor {
 public:
  // `hwloc` (may be null: no pinning of the node drivers) must outlive the executor. spin_us:
  // how long an idle thread (pool worker, node driver, the caller waiting in Run) polls before
  // sleeping, as ThreadPoolOptions::spin_us; kSpinAuto resolves against num_threads().
  NumaExecutor(const std::vector<NumaNodeSpec>& nodes, Hwloc* hwloc, int spin_us = kSpinAuto);
  ~NumaExecutor();
  NumaExecutor(const NumaExecutor&) = delete;
  NumaExecutor& operator=(const NumaExecutor&) = delete;

  int num_nodes() const { return static_cast<int>(pools_.size()); }
  int node_threads(int node) const { return pools_[node]->num_threads(); }
  int num_threads() const;
  // Threads (pool workers and node drivers) asleep waiting for work now (a snapshot; for tests).
  int parked_threads() const;

  // Calls task(node, i) for every node and every i in [0, counts[node]), on that node's threads,
  // and returns when all are done. counts.size() == num_nodes(). With one node the caller's
  // thread is one of the node's threads; with several, each node is driven by a thread pinned
  // to it and the caller waits.
  void Run(const std::vector<int64_t>& counts, const std::function<void(int node, int64_t i)>& task);

 private:
  void DriverLoop(int node);
  void RunNode(int node);

  Hwloc* hwloc_;
  std::vector<NumaNodeSpec> specs_;
  std::vector<std::unique_ptr<ThreadPool>> pools_;
  std::vector<std::thread> drivers_;  // nodes > 1 only

  std::unique_ptr<WorkerGate> gate_;  // caller -> drivers; nodes > 1 only
  // The current phase: written by Run before gate_->Publish, read by drivers between
  // gate_->WaitForWork and gate_->Leave.
  const std::vector<int64_t>* counts_ = nullptr;
  const std::function<void(int, int64_t)>* task_ = nullptr;
};

}  // namespace moemesh
