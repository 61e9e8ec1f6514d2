// Host topology found with hwloc: NUMA nodes, their cores and memory. Used to size thread
// pools and, later, to place expert weights. Thread-safe after construction (read-only).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moemesh {

struct NumaNode {
  int os_index = 0;
  int cores = 0;               // physical cores
  int pus = 0;                 // hardware threads
  uint64_t memory_bytes = 0;   // local memory
  std::vector<std::vector<int>> core_pus;  // per physical core: its OS processor (PU) indices
};

struct HostTopology {
  std::vector<NumaNode> numa_nodes;
  int total_cores() const;
  int total_pus() const;
  uint64_t total_memory_bytes() const;
  std::string Summary() const;  // "1 NUMA node, 2 cores, 4 threads, 23.4 GiB"
  // One cpuset per physical core of every node (node order), for pinning one thread per core.
  std::vector<std::vector<int>> CoreCpusets() const;
};

absl::StatusOr<HostTopology> DiscoverTopology();

}  // namespace moemesh
