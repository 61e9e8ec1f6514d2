// The paged KV cache's block allocator: hands out fixed-size block ids with reference counts
// (a block shared by several sequences' prefixes is freed when its last holder releases it).
// Bookkeeping only: the KV memory itself lives on the attention workers. Deterministic (lowest
// free ids first). Not thread-safe: owned by the scheduler.
#pragma once

#include <cstdint>
#include <set>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace moemesh {

class KvBlockAllocator {
 public:
  // num_blocks >= 0 and block_size >= 1 (checked).
  KvBlockAllocator(int32_t num_blocks, int32_t block_size);

  // `n` blocks with reference count 1, lowest free ids first, or RESOURCE_EXHAUSTED
  // ("KV cache full: need 5 blocks, 3 free of 64") and nothing allocated. n >= 0 (checked).
  absl::StatusOr<std::vector<int32_t>> Allocate(int32_t n);
  // Adds a holder to an allocated block (checked).
  void Retain(int32_t block);
  // Drops one holder of each block; a block is free again when none is left. Releasing a free
  // block is a broken invariant (checked).
  void Release(absl::Span<const int32_t> blocks);

  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t num_used() const { return num_blocks() - num_free(); }
  int32_t num_blocks() const { return static_cast<int32_t>(ref_counts_.size()); }
  int32_t block_size() const { return block_size_; }
  int32_t ref_count(int32_t block) const;

  // Blocks needed to hold `tokens` tokens: ceil(tokens / block_size).
  static int32_t BlocksFor(int64_t tokens, int32_t block_size);

 private:
  int32_t block_size_;
  std::vector<int32_t> ref_counts_;  // per block; 0 = free
  std::set<int32_t> free_;
};

}  // namespace moemesh
