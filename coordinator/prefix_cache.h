// The coordinator's KV blocks with automatic prefix caching: a KvBlockAllocator plus a prefix
// tree of computed blocks keyed by content (parent node, the block's tokens), in the manner of
// a hash chain. A new request whose tokens start with cached blocks reuses them instead of
// computing them; blocks stay cached after their requests finish and are evicted, least recently
// used first and only when no request holds them, when an allocation needs room.
//
// Who may write a block: a request writes only blocks it holds alone. Cached blocks a request
// attaches are full and read-only; a cached block that would be written (a partly filled one,
// or the full block holding a prompt's last token, which must be recomputed for its logits) is
// never attached but copied into a fresh block (Match::copy_src), the copy-on-write the workers
// run from the step plan's block copies.
//
// Bookkeeping only (the KV lives on the attention workers); no threads. Not thread-safe: owned
// by the scheduler.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "coordinator/kv_block_allocator.h"

namespace moemesh {

class PrefixCache {
 public:
  // With enabled = false nothing is ever cached: a plain reference-counted allocator.
  PrefixCache(int32_t num_blocks, int32_t block_size, bool enabled);

  // The longest cached prefix of `tokens` that leaves at least the last token to compute (its
  // logits are needed). Full blocks match by content through the tree; after the last full match,
  // the child block sharing the longest run of leading tokens with the rest matches partly.
  struct Match {
    std::vector<int32_t> shared;  // cached full blocks, read-only: the table's first blocks
    int32_t copy_src = -1;        // >= 0: a cached block whose first tokens % block_size rows
                                  // are valid; copied into the table's next block
    int64_t tokens = 0;           // cached tokens (shared.size() * block_size + the copied rows)
    uint64_t node = 0;            // the tree node of the last shared block (Chain::node)
  };
  Match Lookup(absl::Span<const int32_t> tokens) const;

  // A request starts holding these allocated blocks (a Match's shared blocks; copy sources are
  // held the same way until the plan carrying the copy is built).
  void Acquire(absl::Span<const int32_t> blocks);
  // Drops one hold on each block. Cached blocks stay cached; the others are freed when no one
  // holds them.
  void Release(absl::Span<const int32_t> blocks);
  // `n` fresh blocks, each held once: lowest free ids first, after evicting cached blocks no
  // request holds (least recently used first, leaves of the tree before their parents) when too
  // few are free. RESOURCE_EXHAUSTED with nothing changed when fewer than n are available.
  absl::StatusOr<std::vector<int32_t>> Allocate(int32_t n);

  // Where a request's blocks hang in the tree: its last registered full block's node and how
  // many full blocks precede it. Start from Match::node and Match::shared.size() (or zeros).
  struct Chain {
    uint64_t node = 0;
    int32_t blocks = 0;
    bool stopped = false;  // a block's content was already cached in another block
  };
  // Caches the request's computed blocks: `tokens` are its tokens (prompt, then output), `table`
  // its block table, `computed` how many positions hold (or this step will hold) KV. Full blocks
  // become (or extend to) keyed nodes; a partly filled last block becomes a partial node that
  // grows as the request writes. When a block's content is already cached in another block,
  // the request's chain stops there (its later blocks stay private).
  void Insert(absl::Span<const int32_t> tokens, absl::Span<const int32_t> table, int64_t computed,
              Chain& chain);

  bool enabled() const { return enabled_; }
  int32_t block_size() const { return allocator_.block_size(); }
  int32_t num_blocks() const { return allocator_.num_blocks(); }
  // Blocks Allocate can hand out now: free ones and cached ones no request holds.
  int32_t num_available() const { return allocator_.num_free() + idle_cached_; }
  // Cached blocks no request holds (counted in num_available).
  int32_t num_cached_idle() const { return idle_cached_; }
  int32_t num_cached() const { return static_cast<int32_t>(nodes_.size()) - 1; }
  // Holds of requests on `block` (not counting the tree's own).
  int32_t holders(int32_t block) const;
  bool is_cached(int32_t block) const;

  // Internal consistency (tree links, reference counts, the eviction order), for tests: OK or
  // INTERNAL naming the first broken invariant.
  absl::Status CheckConsistency() const;

 private:
  struct Node {
    uint64_t parent = 0;
    int32_t block = -1;
    int32_t depth = 0;                          // blocks from the root (the root: 0)
    std::vector<int32_t> tokens;                // the block's tokens, 1..block_size of them
    bool keyed = false;                         // full and in full_
    uint64_t tick = 0;                          // last use, for LRU
    std::multimap<int32_t, uint64_t> children;  // by first token
    bool in_lru = false;
  };
  struct FullKey {
    uint64_t parent;
    std::vector<int32_t> tokens;
    bool operator==(const FullKey& o) const { return parent == o.parent && tokens == o.tokens; }
    template <typename H>
    friend H AbslHashValue(H h, const FullKey& k) {
      return H::combine(std::move(h), k.parent, k.tokens);
    }
  };
  using LruKey = std::tuple<uint64_t, int32_t, int32_t>;  // (tick, -depth, block)

  uint64_t AddNode(uint64_t parent, int32_t block, std::vector<int32_t> tokens);
  void SetTokens(uint64_t id, std::vector<int32_t> tokens);
  void Touch(uint64_t id);
  // Puts the node in the LRU set iff no request holds it and it has no children.
  void UpdateLru(uint64_t id);
  void EvictOne();
  static LruKey KeyOf(const Node& n) { return {n.tick, -n.depth, n.block}; }

  const bool enabled_;
  KvBlockAllocator allocator_;                 // the tree holds one reference on each cached block
  absl::node_hash_map<uint64_t, Node> nodes_;  // 0: the root (no block); stable references
  absl::flat_hash_map<FullKey, uint64_t> full_;
  std::vector<uint64_t> node_of_block_;  // 0: not cached
  std::set<LruKey> lru_;                 // evictable nodes: no holder, no children
  int32_t idle_cached_ = 0;
  uint64_t next_node_ = 1;
  uint64_t clock_ = 0;
};

}  // namespace moemesh
