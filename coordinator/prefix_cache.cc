#include "coordinator/prefix_cache.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {
namespace {

// Leading tokens a and b have in common.
int64_t CommonPrefix(absl::Span<const int32_t> a, absl::Span<const int32_t> b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return static_cast<int64_t>(i);
}

bool IsPrefix(absl::Span<const int32_t> prefix, absl::Span<const int32_t> of) {
  return prefix.size() <= of.size() &&
         CommonPrefix(prefix, of) == static_cast<int64_t>(prefix.size());
}

}  // namespace

PrefixCache::PrefixCache(int32_t num_blocks, int32_t block_size, bool enabled)
    : enabled_(enabled), allocator_(num_blocks, block_size), node_of_block_(num_blocks, 0) {
  nodes_[0] = Node{};  // the root
}

int32_t PrefixCache::holders(int32_t block) const {
  return allocator_.ref_count(block) - (is_cached(block) ? 1 : 0);
}

bool PrefixCache::is_cached(int32_t block) const {
  MM_CHECK(block >= 0 && block < num_blocks());
  return node_of_block_[block] != 0;
}

PrefixCache::Match PrefixCache::Lookup(absl::Span<const int32_t> tokens) const {
  Match match;
  const int64_t total = static_cast<int64_t>(tokens.size());
  if (!enabled_ || total < 2) return match;
  const int64_t bs = block_size();
  // Full blocks, by content.
  std::vector<uint64_t> chain;  // matched nodes
  uint64_t parent = 0;
  FullKey key;
  while ((static_cast<int64_t>(chain.size()) + 1) * bs <= total) {
    const int64_t begin = static_cast<int64_t>(chain.size()) * bs;
    key.parent = parent;
    key.tokens.assign(tokens.begin() + begin, tokens.begin() + begin + bs);
    auto it = full_.find(key);
    if (it == full_.end()) break;
    chain.push_back(it->second);
    parent = it->second;
  }
  const int64_t full = static_cast<int64_t>(chain.size()) * bs;
  // Then the child sharing the longest run of leading tokens with the rest (ties: the most
  // recently used, then the lowest node id).
  int64_t best = 0;
  int32_t best_block = -1;
  uint64_t best_tick = 0, best_id = 0;
  if (full < total) {
    const absl::Span<const int32_t> rest = tokens.subspan(full);
    const Node& p = nodes_.at(parent);
    auto [lo, hi] = p.children.equal_range(rest[0]);
    for (auto it = lo; it != hi; ++it) {
      const Node& child = nodes_.at(it->second);
      const int64_t common = CommonPrefix(child.tokens, rest);
      const bool better =
          common > best ||
          (common == best && common > 0 &&
           (child.tick > best_tick || (child.tick == best_tick && it->second < best_id)));
      if (better) {
        best = common;
        best_block = child.block;
        best_tick = child.tick;
        best_id = it->second;
      }
    }
  }
  // A full-length partial node (its content was keyed in another block first) is still copied.
  best = std::min(best, bs - 1);
  const int64_t cached = std::min(full + best, total - 1);
  if (cached <= 0) return match;
  const int64_t whole = cached / bs;  // blocks attached as they are
  const int64_t rows = cached % bs;   // valid rows of a copied block
  for (int64_t i = 0; i < whole; ++i) match.shared.push_back(nodes_.at(chain[i]).block);
  match.node = whole > 0 ? chain[whole - 1] : 0;
  if (rows > 0) {
    // The block holding position `cached` is written by the request: copy it. It is either the
    // last full match (the prompt's last token is recomputed) or the partial match.
    match.copy_src =
        whole < static_cast<int64_t>(chain.size()) ? nodes_.at(chain[whole]).block : best_block;
    MM_CHECK(match.copy_src >= 0);
  }
  match.tokens = cached;
  return match;
}

void PrefixCache::Acquire(absl::Span<const int32_t> blocks) {
  for (int32_t b : blocks) {
    allocator_.Retain(b);
    const uint64_t id = node_of_block_[b];
    if (id == 0) continue;
    if (allocator_.ref_count(b) == 2) --idle_cached_;  // was held by the tree alone
    Touch(id);
    UpdateLru(id);
  }
}

void PrefixCache::Release(absl::Span<const int32_t> blocks) {
  for (int32_t b : blocks) {
    MM_CHECK(b >= 0 && b < num_blocks());
    const uint64_t id = node_of_block_[b];
    if (id != 0) MM_CHECK(allocator_.ref_count(b) >= 2);  // a request's hold plus the tree's
    allocator_.Release({&b, 1});
    if (id == 0) continue;
    if (allocator_.ref_count(b) == 1) ++idle_cached_;
    Touch(id);
    UpdateLru(id);
  }
}

absl::StatusOr<std::vector<int32_t>> PrefixCache::Allocate(int32_t n) {
  MM_CHECK(n >= 0);
  if (n > num_available()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: need ", n, " blocks, ", num_available(), " available of ", num_blocks()));
  }
  while (allocator_.num_free() < n) EvictOne();
  return allocator_.Allocate(n);
}

void PrefixCache::EvictOne() {
  MM_CHECK(!lru_.empty());
  const int32_t block = std::get<2>(*lru_.begin());
  const uint64_t id = node_of_block_[block];
  MM_CHECK(id != 0);
  Node& n = nodes_.at(id);
  MM_CHECK(n.children.empty() && allocator_.ref_count(block) == 1);
  lru_.erase(lru_.begin());
  Node& parent = nodes_.at(n.parent);
  auto [lo, hi] = parent.children.equal_range(n.tokens[0]);
  for (auto it = lo; it != hi; ++it) {
    if (it->second == id) {
      parent.children.erase(it);
      break;
    }
  }
  if (n.keyed) full_.erase(FullKey{n.parent, n.tokens});
  const uint64_t parent_id = n.parent;
  nodes_.erase(id);
  node_of_block_[block] = 0;
  --idle_cached_;
  allocator_.Release({&block, 1});
  if (parent_id != 0) UpdateLru(parent_id);  // may have become an idle leaf
}

uint64_t PrefixCache::AddNode(uint64_t parent, int32_t block, std::vector<int32_t> tokens) {
  MM_CHECK(node_of_block_[block] == 0 && !tokens.empty());
  const uint64_t id = next_node_++;
  Node& n = nodes_[id];
  Node& p = nodes_.at(parent);
  n.parent = parent;
  n.block = block;
  n.depth = p.depth + 1;
  n.tokens = std::move(tokens);
  p.children.emplace(n.tokens[0], id);
  node_of_block_[block] = id;
  allocator_.Retain(block);  // the tree's hold; the request holds it too, so it is not idle
  if (static_cast<int32_t>(n.tokens.size()) == block_size()) {
    n.keyed = full_.emplace(FullKey{parent, n.tokens}, id).second;
    MM_CHECK(n.keyed);  // callers look the key up first
  }
  Touch(id);
  if (parent != 0) UpdateLru(parent);  // no longer a leaf
  return id;
}

// Grows a partial node whose holder wrote more rows (its first tokens never change).
void PrefixCache::SetTokens(uint64_t id, std::vector<int32_t> tokens) {
  Node& n = nodes_.at(id);
  MM_CHECK(!n.keyed && IsPrefix(n.tokens, tokens));
  n.tokens = std::move(tokens);
  if (static_cast<int32_t>(n.tokens.size()) == block_size()) {
    n.keyed = full_.emplace(FullKey{n.parent, n.tokens}, id).second;
  }
  Touch(id);
}

void PrefixCache::Touch(uint64_t id) {
  Node& n = nodes_.at(id);
  if (n.in_lru) {
    lru_.erase(KeyOf(n));
    n.in_lru = false;
  }
  n.tick = ++clock_;
  UpdateLru(id);
}

void PrefixCache::UpdateLru(uint64_t id) {
  Node& n = nodes_.at(id);
  const bool evictable = n.children.empty() && allocator_.ref_count(n.block) == 1;
  if (evictable == n.in_lru) return;
  if (evictable) {
    lru_.insert(KeyOf(n));
  } else {
    lru_.erase(KeyOf(n));
  }
  n.in_lru = evictable;
}

void PrefixCache::Insert(absl::Span<const int32_t> tokens, absl::Span<const int32_t> table,
                         int64_t computed, Chain& chain) {
  if (!enabled_ || chain.stopped) return;
  const int64_t bs = block_size();
  MM_CHECK(computed <= static_cast<int64_t>(tokens.size()));
  MM_CHECK(static_cast<int64_t>(table.size()) * bs >= computed);
  MM_CHECK(nodes_.contains(chain.node));  // the request holds it (or it is the root)
  MM_CHECK(nodes_.at(chain.node).depth == chain.blocks);
  FullKey key;
  while ((static_cast<int64_t>(chain.blocks) + 1) * bs <= computed) {
    const int64_t i = chain.blocks;
    const int32_t block = table[i];
    key.parent = chain.node;
    key.tokens.assign(tokens.begin() + i * bs, tokens.begin() + (i + 1) * bs);
    uint64_t id = 0;
    if (auto it = full_.find(key); it != full_.end()) {
      id = it->second;
      if (nodes_.at(id).block != block) {
        chain.stopped = true;  // the same content is cached in another block
        return;
      }
    } else if (node_of_block_[block] != 0) {
      id = node_of_block_[block];  // the request's own partial block, now full
      const Node& n = nodes_.at(id);
      MM_CHECK(n.parent == chain.node);
      SetTokens(id, std::move(key.tokens));
      if (!nodes_.at(id).keyed) {
        chain.stopped = true;
        return;
      }
    } else {
      id = AddNode(chain.node, block, std::move(key.tokens));
    }
    chain.node = id;
    chain.blocks = static_cast<int32_t>(i + 1);
  }
  const int64_t tail_begin = static_cast<int64_t>(chain.blocks) * bs;
  if (computed <= tail_begin) return;
  const int32_t block = table[chain.blocks];
  std::vector<int32_t> tail(tokens.begin() + tail_begin, tokens.begin() + computed);
  if (const uint64_t id = node_of_block_[block]; id != 0) {
    MM_CHECK(nodes_.at(id).parent == chain.node);
    if (nodes_.at(id).tokens.size() < tail.size()) SetTokens(id, std::move(tail));
  } else {
    AddNode(chain.node, block, std::move(tail));
  }
}

absl::Status PrefixCache::CheckConsistency() const {
  auto fail = [](auto&&... parts) { return absl::InternalError(absl::StrCat(parts...)); };
  int32_t idle = 0;
  size_t evictable = 0;
  for (const auto& [id, n] : nodes_) {
    if (id == 0) {
      if (n.block != -1 || n.depth != 0) return fail("root has a block");
      continue;
    }
    if (n.block < 0 || n.block >= num_blocks()) return fail("node ", id, ": block ", n.block);
    if (node_of_block_[n.block] != id) return fail("node ", id, ": block map disagrees");
    if (n.tokens.empty() || static_cast<int32_t>(n.tokens.size()) > block_size()) {
      return fail("node ", id, ": ", n.tokens.size(), " tokens");
    }
    const int32_t refs = allocator_.ref_count(n.block);
    if (refs < 1) return fail("node ", id, ": block ", n.block, " is free");
    if (refs == 1) ++idle;
    auto p = nodes_.find(n.parent);
    if (p == nodes_.end()) return fail("node ", id, ": parent ", n.parent, " is gone");
    if (n.depth != p->second.depth + 1) return fail("node ", id, ": depth");
    bool linked = false;
    auto [lo, hi] = p->second.children.equal_range(n.tokens[0]);
    for (auto it = lo; it != hi; ++it) linked |= it->second == id;
    if (!linked) return fail("node ", id, ": not among its parent's children");
    if (n.keyed) {
      auto it = full_.find(FullKey{n.parent, n.tokens});
      if (it == full_.end() || it->second != id) return fail("node ", id, ": key missing");
      if (static_cast<int32_t>(n.tokens.size()) != block_size())
        return fail("node ", id, ": keyed partial");
    }
    const bool should = refs == 1 && n.children.empty();
    if (should != n.in_lru || (n.in_lru && !lru_.contains(KeyOf(n)))) {
      return fail("node ", id, ": eviction order disagrees");
    }
    evictable += n.in_lru;
  }
  for (const auto& [key, id] : full_) {
    if (!nodes_.contains(id) || !nodes_.at(id).keyed) return fail("key of node ", id, " is stale");
  }
  if (evictable != lru_.size())
    return fail("eviction set has ", lru_.size(), " entries, ", evictable, " nodes");
  if (idle != idle_cached_)
    return fail("idle cached blocks: counted ", idle_cached_, ", found ", idle);
  for (int32_t b = 0; b < num_blocks(); ++b) {
    if (node_of_block_[b] != 0 && !nodes_.contains(node_of_block_[b]))
      return fail("block ", b, ": stale node");
  }
  return absl::OkStatus();
}

}  // namespace moemesh
