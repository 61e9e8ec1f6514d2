// NUMA-bound memory for expert weights and thread binding, through hwloc: Hwloc hands out memory
// bound to one NUMA node and binds threads to cpus; NodeArena is a bump allocator over large
// node-bound chunks, so that a model's 10^5 weight buffers take a few hundred mappings (not one
// each, under vm.max_map_count) and no per-buffer page rounding. Not for scratch or activations.
// Thread-safety: Hwloc is thread-safe after Open; a NodeArena is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moemesh {

class Hwloc {
 public:
  static absl::StatusOr<std::unique_ptr<Hwloc>> Open();
  ~Hwloc();
  Hwloc(const Hwloc&) = delete;
  Hwloc& operator=(const Hwloc&) = delete;

  // `bytes` of page-aligned memory bound (HWLOC_MEMBIND_BIND, by nodeset) to the NUMA node with
  // OS index `node`; os_index < 0: not bound. Pages become resident when first written.
  // RESOURCE_EXHAUSTED naming the size and the node when the mapping fails.
  absl::StatusOr<void*> AllocOnNode(int node, size_t bytes);
  void Free(void* p, size_t bytes);  // hwloc_free
  // Binds the calling thread to the OS processor indices `cpus`.
  absl::Status BindThread(const std::vector<int>& cpus);
  // The OS indices of the NUMA nodes the area's memory is bound to (its policy's nodeset).
  absl::StatusOr<std::vector<int>> AreaNodes(const void* p, size_t bytes);

 private:
  explicit Hwloc(void* topology) : topology_(topology) {}
  void* topology_;  // hwloc_topology_t
};

class NodeArena {
 public:
  // Chunks of at least `chunk_bytes` from hwloc->AllocOnNode(node, ...); `hwloc` must outlive
  // the arena.
  NodeArena(Hwloc* hwloc, int node, size_t chunk_bytes = size_t{64} << 20);
  ~NodeArena();  // hwloc_free of every chunk: every buffer handed out goes with it
  NodeArena(const NodeArena&) = delete;
  NodeArena& operator=(const NodeArena&) = delete;

  // Makes sure the current chunk has `bytes` free (a new chunk otherwise), so that the next
  // Allocate calls totalling `bytes` cannot fail.
  absl::Status Reserve(size_t bytes);
  // 64-byte aligned; nullptr only if a new chunk was needed and could not be mapped.
  void* Allocate(size_t bytes);
  // For cpu::PackExpert: Allocator with ctx = NodeArena* (buffers are freed with the arena, so
  // PackExpert takes no Deallocator).
  static void* AllocateFn(size_t bytes, void* arena);

  int node() const { return node_; }
  uint64_t used_bytes() const { return used_; }      // handed out
  uint64_t mapped_bytes() const { return mapped_; }  // chunks (virtual; untouched pages not resident)

 private:
  struct Chunk {
    void* p;
    size_t bytes;
  };
  Hwloc* hwloc_;
  int node_;
  size_t chunk_bytes_;
  std::vector<Chunk> chunks_;
  size_t offset_ = 0;  // into chunks_.back()
  uint64_t used_ = 0;
  uint64_t mapped_ = 0;
};

}  // namespace moemesh
