#include "coordinator/kv_block_allocator.h"

#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {

KvBlockAllocator::KvBlockAllocator(int32_t num_blocks, int32_t block_size)
    : block_size_(block_size) {
  MM_CHECK(num_blocks >= 0);
  MM_CHECK(block_size >= 1);
  ref_counts_.assign(num_blocks, 0);
  for (int32_t b = 0; b < num_blocks; ++b) free_.insert(free_.end(), b);
}

absl::StatusOr<std::vector<int32_t>> KvBlockAllocator::Allocate(int32_t n) {
  MM_CHECK(n >= 0);
  if (n > num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: need ", n, " blocks, ",
                                                     num_free(), " free of ", num_blocks()));
  }
  std::vector<int32_t> blocks;
  blocks.reserve(n);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t b = *free_.begin();
    free_.erase(free_.begin());
    ref_counts_[b] = 1;
    blocks.push_back(b);
  }
  return blocks;
}

void KvBlockAllocator::Retain(int32_t block) {
  MM_CHECK(block >= 0 && block < num_blocks());
  MM_CHECK(ref_counts_[block] > 0);
  ++ref_counts_[block];
}

void KvBlockAllocator::Release(absl::Span<const int32_t> blocks) {
  for (int32_t b : blocks) {
    MM_CHECK(b >= 0 && b < num_blocks());
    MM_CHECK(ref_counts_[b] > 0);
    if (--ref_counts_[b] == 0) free_.insert(b);
  }
}

int32_t KvBlockAllocator::ref_count(int32_t block) const {
  MM_CHECK(block >= 0 && block < num_blocks());
  return ref_counts_[block];
}

int32_t KvBlockAllocator::BlocksFor(int64_t tokens, int32_t block_size) {
  MM_CHECK(tokens >= 0);
  MM_CHECK(block_size >= 1);
  const int64_t blocks = (tokens + block_size - 1) / block_size;
  MM_CHECK(blocks <= std::numeric_limits<int32_t>::max());
  return static_cast<int32_t>(blocks);
}

}  // namespace moemesh
