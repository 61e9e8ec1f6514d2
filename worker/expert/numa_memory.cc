#include "worker/expert/numa_memory.h"

#include <hwloc.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "common/progress.h"
#include "common/status.h"

// Every hwloc call that reports through its return value goes through this: a non-zero result
// becomes an INTERNAL Status naming the call, the file and the line.
#define MM_HWLOC_CALL(expr) ::moemesh::HwlocStatus((expr), #expr, __FILE__, __LINE__)

namespace moemesh {
namespace {

constexpr size_t kAlign = 64;

absl::Status HwlocStatus(int rc, const char* expr, const char* file, int line) {
  if (rc == 0) return absl::OkStatus();
  const int err = errno;
  return absl::InternalError(
      absl::StrFormat("%s:%d: %s returned %d (%s)", file, line, expr, rc, std::strerror(err)));
}

hwloc_topology_t Topo(void* t) { return static_cast<hwloc_topology_t>(t); }

// A bitmap freed on scope exit.
struct Bitmap {
  hwloc_bitmap_t set = hwloc_bitmap_alloc();
  ~Bitmap() {
    if (set != nullptr) hwloc_bitmap_free(set);
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Hwloc>> Hwloc::Open() {
  hwloc_topology_t topo;
  absl::Status st = MM_HWLOC_CALL(hwloc_topology_init(&topo));
  if (!st.ok()) return st;
  st = MM_HWLOC_CALL(hwloc_topology_load(topo));
  if (!st.ok()) {
    hwloc_topology_destroy(topo);
    return st;
  }
  return std::unique_ptr<Hwloc>(new Hwloc(topo));
}

Hwloc::~Hwloc() { hwloc_topology_destroy(Topo(topology_)); }

absl::StatusOr<void*> Hwloc::AllocOnNode(int node, size_t bytes) {
  void* p = nullptr;
  if (node < 0) {
    p = hwloc_alloc(Topo(topology_), bytes);
  } else {
    Bitmap nodes;
    if (nodes.set == nullptr) return absl::ResourceExhaustedError("hwloc_bitmap_alloc failed");
    absl::Status st = MM_HWLOC_CALL(hwloc_bitmap_only(nodes.set, static_cast<unsigned>(node)));
    if (!st.ok()) return st;
    p = hwloc_alloc_membind(Topo(topology_), bytes, nodes.set, HWLOC_MEMBIND_BIND,
                            HWLOC_MEMBIND_BYNODESET);
  }
  if (p == nullptr) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "cannot map %s bound to NUMA node %d: %s", FormatBytes(bytes), node, std::strerror(errno)));
  }
  return p;
}

void Hwloc::Free(void* p, size_t bytes) { hwloc_free(Topo(topology_), p, bytes); }

absl::Status Hwloc::BindThread(const std::vector<int>& cpus) {
  if (cpus.empty()) return absl::InvalidArgumentError("empty cpuset");
  Bitmap set;
  if (set.set == nullptr) return absl::ResourceExhaustedError("hwloc_bitmap_alloc failed");
  for (int cpu : cpus) {
    if (cpu < 0) return absl::InvalidArgumentError(absl::StrFormat("cpu index %d is negative", cpu));
    absl::Status st = MM_HWLOC_CALL(hwloc_bitmap_set(set.set, static_cast<unsigned>(cpu)));
    if (!st.ok()) return st;
  }
  return MM_HWLOC_CALL(hwloc_set_cpubind(Topo(topology_), set.set, HWLOC_CPUBIND_THREAD));
}

absl::StatusOr<std::vector<int>> Hwloc::AreaNodes(const void* p, size_t bytes) {
  Bitmap set;
  if (set.set == nullptr) return absl::ResourceExhaustedError("hwloc_bitmap_alloc failed");
  hwloc_membind_policy_t policy;
  absl::Status st = MM_HWLOC_CALL(
      hwloc_get_area_membind(Topo(topology_), p, bytes, set.set, &policy, HWLOC_MEMBIND_BYNODESET));
  if (!st.ok()) return st;
  std::vector<int> nodes;
  unsigned i = 0;
  hwloc_bitmap_foreach_begin(i, set.set) nodes.push_back(static_cast<int>(i));
  hwloc_bitmap_foreach_end();
  return nodes;
}

NodeArena::NodeArena(Hwloc* hwloc, int node, size_t chunk_bytes)
    : hwloc_(hwloc), node_(node), chunk_bytes_(chunk_bytes) {}

NodeArena::~NodeArena() {
  for (const Chunk& c : chunks_) hwloc_->Free(c.p, c.bytes);
}

absl::Status NodeArena::Reserve(size_t bytes) {
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  if (!chunks_.empty() && chunks_.back().bytes - offset_ >= bytes) return absl::OkStatus();
  const size_t size = std::max(chunk_bytes_, bytes);
  MM_ASSIGN_OR_RETURN(void* p, hwloc_->AllocOnNode(node_, size));
  chunks_.push_back({p, size});
  offset_ = 0;
  mapped_ += size;
  return absl::OkStatus();
}

void* NodeArena::Allocate(size_t bytes) {
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  if (!Reserve(bytes).ok()) return nullptr;
  void* p = static_cast<uint8_t*>(chunks_.back().p) + offset_;
  offset_ += bytes;
  used_ += bytes;
  return p;
}

void* NodeArena::AllocateFn(size_t bytes, void* arena) {
  return static_cast<NodeArena*>(arena)->Allocate(bytes);
}

}  // namespace moemesh
