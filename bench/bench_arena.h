// Benchmark helper: one anonymous mapping carved into 64-byte aligned pieces (bump allocation),
// so a benchmark's working set is a known number of bytes and is freed at once. Transparent
// huge pages are requested (madvise), the same for every side a benchmark compares. Not for
// the runtime. Thread-safety: Allocate is not thread-safe; the memory itself is plain memory.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>

namespace moemesh::bench {

class Arena {
 public:
  Arena() = default;
  explicit Arena(size_t capacity) { Reset(capacity); }
  ~Arena() { Release(); }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // Maps `capacity` bytes (rounded up to 2 MiB); false when the mapping fails.
  bool Reset(size_t capacity) {
    Release();
    capacity = (capacity + kHuge - 1) / kHuge * kHuge;
    void* p = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    madvise(p, capacity, MADV_HUGEPAGE);  // advice only: ignored where THP is off
    base_ = static_cast<uint8_t*>(p);
    capacity_ = capacity;
    used_ = 0;
    return true;
  }
  void Release() {
    if (base_ != nullptr) munmap(base_, capacity_);
    base_ = nullptr;
    capacity_ = used_ = 0;
  }
  // 64-byte aligned piece of `bytes`, or nullptr when the arena is full.
  void* Allocate(size_t bytes) {
    const size_t at = (used_ + 63) / 64 * 64;
    if (base_ == nullptr || at + bytes > capacity_) return nullptr;
    used_ = at + bytes;
    return base_ + at;
  }
  // An Allocator for cpu::Pack / cpu::PackExpert (ctx is the Arena).
  static void* AllocateFn(size_t bytes, void* ctx) {
    return static_cast<Arena*>(ctx)->Allocate(bytes);
  }

  uint8_t* base() const { return base_; }
  size_t capacity() const { return capacity_; }
  size_t used() const { return used_; }

 private:
  static constexpr size_t kHuge = size_t{2} << 20;
  uint8_t* base_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
};

}  // namespace moemesh::bench
