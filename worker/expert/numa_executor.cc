#include "worker/expert/numa_executor.h"

#include <algorithm>

#include "common/logging.h"
#include "common/status.h"
#include "worker/expert/numa_memory.h"

namespace moemesh {

std::vector<NumaNodeSpec> NodesFromTopology(const HostTopology& topology, int total_threads) {
  std::vector<NumaNodeSpec> out;
  const int cores = std::max(1, topology.total_cores());
  if (total_threads <= 0) total_threads = cores;
  const int n = static_cast<int>(topology.numa_nodes.size());
  int given = 0;
  for (int i = 0; i < n; ++i) {
    const NumaNode& node = topology.numa_nodes[i];
    NumaNodeSpec spec;
    spec.os_index = node.memory_bytes > 0 ? node.os_index : -1;  // -1: hwloc found no NUMA node
    // Cumulative rounding: node i gets the threads between its cores' cumulative shares.
    int before = 0;
    for (int j = 0; j <= i; ++j) before += topology.numa_nodes[j].cores;
    const int upto = static_cast<int>(static_cast<int64_t>(before) * total_threads / cores);
    spec.threads = std::max(1, upto - given);
    given += spec.threads;
    spec.cpusets = node.core_pus;
    out.push_back(std::move(spec));
  }
  if (out.empty()) out.push_back(NumaNodeSpec{-1, total_threads, {}});
  return out;
}

NumaExecutor::NumaExecutor(const std::vector<NumaNodeSpec>& nodes, Hwloc* hwloc, int spin_us)
    : hwloc_(hwloc), specs_(nodes) {
  MM_CHECK(!nodes.empty());
  const bool drivers = nodes.size() > 1;
  int total_threads = 0;
  for (const NumaNodeSpec& spec : nodes) {
    MM_CHECK(spec.threads >= 1);
    total_threads += spec.threads;
  }
  spin_us = ResolveSpinUs(spin_us, total_threads);
  for (const NumaNodeSpec& spec : nodes) {
    ThreadPoolOptions options;
    options.num_threads = spec.threads;
    // With a driver per node, the driver is the pool's caller: background thread i takes
    // cpusets[i] and the driver the next one, so every thread has its own core.
    options.cpusets = spec.cpusets;
    options.spin_us = spin_us;
    pools_.push_back(std::make_unique<ThreadPool>(options));
  }
  if (drivers) {
    gate_ = std::make_unique<WorkerGate>(spin_us);
    for (int n = 0; n < num_nodes(); ++n) drivers_.emplace_back([this, n] { DriverLoop(n); });
  }
}

NumaExecutor::~NumaExecutor() {
  if (gate_ != nullptr) gate_->Stop();
  for (std::thread& t : drivers_) t.join();
}

int NumaExecutor::num_threads() const {
  int n = 0;
  for (const auto& p : pools_) n += p->num_threads();
  return n;
}

int NumaExecutor::parked_threads() const {
  int n = gate_ != nullptr ? gate_->parked_workers() : 0;
  for (const auto& p : pools_) n += p->parked_threads();
  return n;
}

void NumaExecutor::RunNode(int node) {
  const int64_t count = (*counts_)[node];
  const auto& task = *task_;
  pools_[node]->ParallelFor(
      count, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) task(node, i);
      },
      1);
}

void NumaExecutor::DriverLoop(int node) {
  const NumaNodeSpec& spec = specs_[node];
  if (hwloc_ != nullptr && !spec.cpusets.empty()) {
    const auto& cpus = spec.cpusets[(spec.threads - 1) % spec.cpusets.size()];
    absl::Status st = hwloc_->BindThread(cpus);
    if (!st.ok()) {
      MM_LOG(WARNING) << "numa executor: cannot pin node " << node << "'s driver: " << st.message();
    }
  }
  uint64_t seen = 0;
  while (gate_->WaitForWork(&seen)) {
    RunNode(node);
    gate_->Leave();
  }
}

void NumaExecutor::Run(const std::vector<int64_t>& counts,
                       const std::function<void(int node, int64_t i)>& task) {
  MM_CHECK(static_cast<int>(counts.size()) == num_nodes());
  counts_ = &counts;
  task_ = &task;
  if (drivers_.empty()) {
    RunNode(0);
  } else {
    gate_->Publish(num_nodes());
    gate_->WaitDone();
  }
  counts_ = nullptr;
  task_ = nullptr;
}

}  // namespace moemesh
