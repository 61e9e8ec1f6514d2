// Benchmark helper: a ring of byte-identical copies of one packed expert (cpu::PackExpert of
// synthetic weights), each in its own memory, handed out in order so that an expert's weights
// are read again only after the whole ring has been read: with a ring larger than the
// last-level cache every step streams its weights from DRAM, as a model with many layers does.
// Not for the runtime. Thread-safety: Next() is not thread-safe; the experts are read-only.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "bench/bench_arena.h"
#include "kernels/cpu/expert_ffn.h"

namespace moemesh::bench {

// Bytes of each buffer of a packed matrix (as cpu::Pack allocates them, before 64-byte rounding).
inline size_t ScaleBytes(const cpu::PackedMatrix& m) {
  if (m.spec.format == cpu::WeightFormat::kBf16) return 0;
  return static_cast<size_t>(m.rows_padded * (m.cols_padded / m.spec.group)) * sizeof(float);
}

class PackedExpertRing {
 public:
  // Packs gate, up [I, H] and down [H, I] (fp32, row-major) once and copies the result into
  // max(1, ring_bytes / expert bytes) places of one arena. False when it cannot be mapped.
  bool Build(const float* gate, const float* up, const float* down, int64_t hidden,
             int64_t intermediate, const cpu::FormatSpec& spec, uint64_t ring_bytes) {
    Release();
    cursor_ = 0;
    const cpu::PackedExpert first = cpu::PackExpert(gate, up, down, hidden, intermediate, spec);
    slot_bytes_ = RoundedBytes(first.gate_up) + RoundedBytes(first.down);
    const int slots = static_cast<int>(std::max<uint64_t>(1, ring_bytes / slot_bytes_));
    if (!arena_.Reset(slot_bytes_ * static_cast<size_t>(slots) + 4096)) return false;
    for (int s = 0; s < slots; ++s) {
      cpu::PackedExpert e = first;
      if (!Copy(first.gate_up, &e.gate_up) || !Copy(first.down, &e.down)) return false;
      experts_.push_back(std::move(e));
    }
    return true;
  }

  // The next expert copy of the ring.
  const cpu::PackedExpert* Next() {
    const cpu::PackedExpert* e = &experts_[cursor_];
    cursor_ = (cursor_ + 1) % experts_.size();
    return e;
  }
  void Rewind() { cursor_ = 0; }
  int slots() const { return static_cast<int>(experts_.size()); }
  size_t expert_bytes() const { return experts_.empty() ? 0 : experts_[0].bytes(); }
  size_t ring_bytes() const { return arena_.used(); }
  void Release() {
    experts_.clear();
    arena_.Release();
  }

  // Bytes one copy takes in the arena (each buffer 64-byte aligned), for sizing a ring.
  static size_t RoundedBytes(const cpu::PackedMatrix& m) {
    return Round64(m.data_bytes) + 2 * Round64(ScaleBytes(m));
  }

 private:
  static size_t Round64(size_t b) { return (b + 63) / 64 * 64; }

  template <class T>
  std::shared_ptr<T> CopyBuffer(const T* src, size_t bytes) {
    void* p = arena_.Allocate(Round64(bytes));
    if (p == nullptr) return nullptr;
    std::memcpy(p, src, bytes);
    return std::shared_ptr<T>(static_cast<T*>(p), [](T*) {});  // the arena owns it
  }

  bool Copy(const cpu::PackedMatrix& from, cpu::PackedMatrix* to) {
    to->data = CopyBuffer(from.data.get(), from.data_bytes);
    if (to->data == nullptr) return false;
    const size_t sb = ScaleBytes(from);
    if (sb == 0) return true;
    to->scales = CopyBuffer(from.scales.get(), sb);
    to->sums = CopyBuffer(from.sums.get(), sb);
    return to->scales != nullptr && to->sums != nullptr;
  }

  Arena arena_;
  std::vector<cpu::PackedExpert> experts_;
  size_t slot_bytes_ = 0;
  size_t cursor_ = 0;
};

}  // namespace moemesh::bench
