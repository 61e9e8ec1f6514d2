#include "common/topology.h"

#include <hwloc.h>

#include "absl/strings/str_format.h"
#include "common/progress.h"

namespace moemesh {

int HostTopology::total_cores() const {
  int n = 0;
  for (const auto& node : numa_nodes) n += node.cores;
  return n;
}

int HostTopology::total_pus() const {
  int n = 0;
  for (const auto& node : numa_nodes) n += node.pus;
  return n;
}

uint64_t HostTopology::total_memory_bytes() const {
  uint64_t n = 0;
  for (const auto& node : numa_nodes) n += node.memory_bytes;
  return n;
}

std::string HostTopology::Summary() const {
  return absl::StrFormat("%d NUMA node%s, %d cores, %d threads, %s", numa_nodes.size(),
                         numa_nodes.size() == 1 ? "" : "s", total_cores(), total_pus(),
                         FormatBytes(total_memory_bytes()));
}

std::vector<std::vector<int>> HostTopology::CoreCpusets() const {
  std::vector<std::vector<int>> out;
  for (const auto& node : numa_nodes) out.insert(out.end(), node.core_pus.begin(), node.core_pus.end());
  return out;
}

namespace {

// The OS indices of the PUs of every core inside `set`.
std::vector<std::vector<int>> CorePus(hwloc_topology_t topo, hwloc_const_cpuset_t set) {
  std::vector<std::vector<int>> out;
  const int n = hwloc_get_nbobjs_inside_cpuset_by_type(topo, set, HWLOC_OBJ_CORE);
  for (int i = 0; i < n; ++i) {
    hwloc_obj_t core = hwloc_get_obj_inside_cpuset_by_type(topo, set, HWLOC_OBJ_CORE, i);
    std::vector<int> pus;
    unsigned pu = 0;
    hwloc_bitmap_foreach_begin(pu, core->cpuset) pus.push_back(static_cast<int>(pu));
    hwloc_bitmap_foreach_end();
    out.push_back(std::move(pus));
  }
  return out;
}

}  // namespace

absl::StatusOr<HostTopology> DiscoverTopology() {
  hwloc_topology_t topo;
  if (hwloc_topology_init(&topo) != 0) return absl::InternalError("hwloc_topology_init failed");
  if (hwloc_topology_load(topo) != 0) {
    hwloc_topology_destroy(topo);
    return absl::InternalError("hwloc_topology_load failed");
  }
  HostTopology result;
  const int n_numa = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
  for (int i = 0; i < n_numa; ++i) {
    hwloc_obj_t numa = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, i);
    NumaNode node;
    node.os_index = static_cast<int>(numa->os_index);
    node.memory_bytes = numa->attr ? numa->attr->numanode.local_memory : 0;
    node.cores = hwloc_get_nbobjs_inside_cpuset_by_type(topo, numa->cpuset, HWLOC_OBJ_CORE);
    node.pus = hwloc_get_nbobjs_inside_cpuset_by_type(topo, numa->cpuset, HWLOC_OBJ_PU);
    node.core_pus = CorePus(topo, numa->cpuset);
    result.numa_nodes.push_back(node);
  }
  if (result.numa_nodes.empty()) {  // no NUMA information: one node holding the whole machine
    NumaNode node;
    node.cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
    node.pus = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
    node.core_pus = CorePus(topo, hwloc_topology_get_topology_cpuset(topo));
    result.numa_nodes.push_back(node);
  }
  hwloc_topology_destroy(topo);
  return result;
}

}  // namespace moemesh
