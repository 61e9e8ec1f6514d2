// Benchmark helper: what machine a benchmark ran on (CPU model, last-level cache from hwloc,
// memory available), so that results say where they come from and working sets can be sized
// against the cache. Header-only, for bench/ binaries; not for the runtime (which uses
// common/topology.h). Thread-safety: plain functions, no shared state.
#pragma once

#include <hwloc.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

namespace moemesh::bench {

struct LastLevelCache {
  int depth = 0;            // 3 for an L3; 0 when hwloc reports no data cache
  int instances = 0;        // how many caches of that level the machine has
  uint64_t bytes_each = 0;  // one instance
  uint64_t bytes_total = 0; // all instances together: what a working set must exceed
};

// The deepest data (or unified) cache level hwloc finds, summed over its instances.
inline LastLevelCache FindLastLevelCache() {
  LastLevelCache llc;
  hwloc_topology_t topo;
  if (hwloc_topology_init(&topo) != 0) return llc;
  if (hwloc_topology_load(topo) != 0) {
    hwloc_topology_destroy(topo);
    return llc;
  }
  for (hwloc_obj_type_t type : {HWLOC_OBJ_L5CACHE, HWLOC_OBJ_L4CACHE, HWLOC_OBJ_L3CACHE,
                                HWLOC_OBJ_L2CACHE, HWLOC_OBJ_L1CACHE}) {
    const int n = hwloc_get_nbobjs_by_type(topo, type);
    if (n <= 0) continue;
    for (int i = 0; i < n; ++i) {
      hwloc_obj_t obj = hwloc_get_obj_by_type(topo, type, i);
      if (obj == nullptr || obj->attr == nullptr) continue;
      llc.depth = static_cast<int>(obj->attr->cache.depth);
      llc.bytes_each = obj->attr->cache.size;
      llc.bytes_total += obj->attr->cache.size;
      ++llc.instances;
    }
    if (llc.instances > 0) break;
  }
  hwloc_topology_destroy(topo);
  return llc;
}

// "model name" of the first processor in /proc/cpuinfo, or "unknown CPU".
inline std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
  }
  return "unknown CPU";
}

// MemAvailable from /proc/meminfo in bytes, or 0 when it cannot be read.
inline uint64_t MemAvailableBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

// The first line of /proc/loadavg ("0.52 0.31 0.20 1/123 4567"): other work on the machine
// makes timings noisy, so benchmarks print it.
inline std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string line;
  std::getline(in, line);
  return line.empty() ? "unknown" : line;
}

inline double Gib(uint64_t bytes) { return static_cast<double>(bytes) / (1ull << 30); }
inline double Mib(uint64_t bytes) { return static_cast<double>(bytes) / (1ull << 20); }

}  // namespace moemesh::bench
