// Weight formats of the CPU expert kernels: names, and packing fp32 matrices into the row-block
// layout expert_ffn.h describes (and back, for the reference checks). Portable code: compiled
// without instruction-set flags.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status.h"
#include "kernels/cpu/expert_ffn.h"
#include "kernels/cpu/expert_ffn_paths.h"

namespace moemesh::cpu {
namespace {

constexpr size_t kAlign = 64;

int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

bool Quantized(const FormatSpec& spec) { return spec.format != WeightFormat::kBf16; }

void CheckSpec(const FormatSpec& spec) {
  if (Quantized(spec)) MM_CHECK(spec.group == 32 || spec.group == 128);
}

int64_t ColsPadded(int64_t cols, const FormatSpec& spec) {
  return RoundUp(cols, Quantized(spec) ? std::max<int64_t>(64, spec.group) : 64);
}

// A zeroed, 64-byte aligned buffer of at least `bytes`, freed as Pack's comment says.
template <class T>
std::shared_ptr<T> Allocate(size_t bytes, Allocator alloc, void* ctx, Deallocator dealloc) {
  bytes = static_cast<size_t>(RoundUp(static_cast<int64_t>(std::max(bytes, kAlign)), kAlign));
  void* p = nullptr;
  std::shared_ptr<T> out;
  if (alloc == nullptr) {
    p = std::aligned_alloc(kAlign, bytes);
    MM_CHECK(p != nullptr);
    out = std::shared_ptr<T>(static_cast<T*>(p), [](T* q) { std::free(q); });
  } else {
    p = alloc(bytes, ctx);
    MM_CHECK(p != nullptr && reinterpret_cast<uintptr_t>(p) % kAlign == 0);
    if (dealloc == nullptr) {
      out = std::shared_ptr<T>(static_cast<T*>(p), [](T*) {});
    } else {
      out = std::shared_ptr<T>(static_cast<T*>(p),
                               [dealloc, bytes, ctx](T* q) { dealloc(q, bytes, ctx); });
    }
  }
  std::memset(p, 0, bytes);
  return out;
}

// Packs rows_padded rows; row(r) gives packed row r's fp32 values (cols of them) or nullptr for
// a zero row. `rows` is what PackedMatrix::rows reports.
template <class RowFn>
PackedMatrix PackRows(int64_t rows, int64_t rows_padded, int64_t cols, const FormatSpec& spec,
                      RowFn row, Allocator alloc, void* ctx, Deallocator dealloc) {
  CheckSpec(spec);
  MM_CHECK(rows >= 0 && cols >= 0 && rows_padded % kRowBlock == 0 && rows_padded >= rows);
  PackedMatrix m;
  m.spec = spec;
  m.rows = rows;
  m.cols = cols;
  m.rows_padded = rows_padded;
  m.cols_padded = ColsPadded(cols, spec);
  const int64_t blocks = m.rows_padded / kRowBlock;
  const int64_t lines = m.cols_padded / internal::InputsPerLine(spec.format);
  m.data_bytes = static_cast<size_t>(blocks * lines * 64);
  m.data = Allocate<uint8_t>(m.data_bytes, alloc, ctx, dealloc);
  const int64_t groups = Quantized(spec) ? m.cols_padded / spec.group : 0;
  if (Quantized(spec)) {
    const size_t n = static_cast<size_t>(blocks * groups * kRowBlock);
    m.scales = Allocate<float>(n * sizeof(float), alloc, ctx, dealloc);
    m.sums = Allocate<int32_t>(n * sizeof(int32_t), alloc, ctx, dealloc);
  }
  uint8_t* data = m.data.get();
  const float qmax = spec.format == WeightFormat::kInt8 ? 127.0f : 7.0f;
  const float qmin = spec.format == WeightFormat::kInt8 ? -127.0f : -8.0f;
  for (int64_t r = 0; r < rows_padded; ++r) {
    const float* w = row(r);
    if (w == nullptr) continue;  // buffers start zeroed
    const int64_t b = r / kRowBlock;
    const int64_t rr = r % kRowBlock;
    uint8_t* block = data + b * lines * 64 + rr * 4;
    if (spec.format == WeightFormat::kBf16) {
      for (int64_t c = 0; c < cols; ++c) {
        const uint16_t v = F32ToBf16(w[c]);
        std::memcpy(block + (c / 2) * 64 + (c % 2) * 2, &v, sizeof(v));
      }
      continue;
    }
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * spec.group;
      const int64_t c1 = std::min(cols, c0 + spec.group);
      float amax = 0.0f;
      for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(w[c]));
      const float scale = amax / qmax;
      int32_t sum = 0;
      for (int64_t c = c0; c < c1; ++c) {
        float qf = scale > 0.0f ? std::nearbyint(w[c] / scale) : 0.0f;
        qf = qf > qmax ? qmax : (qf >= qmin ? qf : qmin);  // NaN -> qmin, deterministically
        const int q = static_cast<int>(qf);
        sum += q;
        if (spec.format == WeightFormat::kInt8) {
          block[(c / 4) * 64 + c % 4] = static_cast<uint8_t>(static_cast<int8_t>(q));
        } else {
          const int j = static_cast<int>(c % 8);
          uint8_t& byte = block[(c / 8) * 64 + j % 4];
          const uint8_t nibble = static_cast<uint8_t>(q) & 0x0f;
          byte = j < 4 ? static_cast<uint8_t>((byte & 0xf0) | nibble)
                       : static_cast<uint8_t>((byte & 0x0f) | (nibble << 4));
        }
      }
      const int64_t at = (b * groups + g) * kRowBlock + rr;
      m.scales.get()[at] = scale;
      m.sums.get()[at] = sum;
    }
  }
  return m;
}

}  // namespace

std::string FormatSpec::Name() const {
  switch (format) {
    case WeightFormat::kBf16:
      return "bf16";
    case WeightFormat::kInt8:
      return absl::StrCat("int8-g", group);
    case WeightFormat::kInt4:
      return absl::StrCat("int4-g", group);
  }
  return "unknown";
}

absl::StatusOr<FormatSpec> ParseFormat(const std::string& name) {
  static constexpr std::pair<const char*, FormatSpec> kFormats[] = {
      {"bf16", {WeightFormat::kBf16, 32}},     {"int8-g32", {WeightFormat::kInt8, 32}},
      {"int8-g128", {WeightFormat::kInt8, 128}}, {"int4-g32", {WeightFormat::kInt4, 32}},
      {"int4-g128", {WeightFormat::kInt4, 128}},
  };
  std::string valid;
  for (const auto& [known, spec] : kFormats) {
    if (name == known) return spec;
    absl::StrAppend(&valid, valid.empty() ? "" : ", ", known);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("weight format \"", name, "\" is not one of: ", valid));
}

size_t PackedMatrix::bytes() const {
  size_t total = data_bytes;
  if (spec.format != WeightFormat::kBf16 && spec.group > 0) {
    const size_t n = static_cast<size_t>(rows_padded * (cols_padded / spec.group));
    total += n * (sizeof(float) + sizeof(int32_t));
  }
  return total;
}

PackedMatrix Pack(const float* w, int64_t rows, int64_t cols, const FormatSpec& spec,
                  Allocator alloc, void* alloc_ctx, Deallocator dealloc) {
  return PackRows(
      rows, RoundUp(rows, kRowBlock), cols, spec,
      [&](int64_t r) { return r < rows ? w + r * cols : nullptr; }, alloc, alloc_ctx, dealloc);
}

std::vector<float> Unpack(const PackedMatrix& m) {
  std::vector<float> out(static_cast<size_t>(m.rows * m.cols));
  const FormatSpec& spec = m.spec;
  const int64_t lines = m.cols_padded / internal::InputsPerLine(spec.format);
  const int64_t groups = Quantized(spec) ? m.cols_padded / spec.group : 0;
  for (int64_t r = 0; r < m.rows; ++r) {
    const int64_t b = r / kRowBlock;
    const int64_t rr = r % kRowBlock;
    const uint8_t* block = m.data.get() + b * lines * 64 + rr * 4;
    float* o = out.data() + r * m.cols;
    for (int64_t c = 0; c < m.cols; ++c) {
      if (spec.format == WeightFormat::kBf16) {
        uint16_t v;
        std::memcpy(&v, block + (c / 2) * 64 + (c % 2) * 2, sizeof(v));
        o[c] = Bf16ToF32(v);
        continue;
      }
      int q;
      if (spec.format == WeightFormat::kInt8) {
        q = static_cast<int8_t>(block[(c / 4) * 64 + c % 4]);
      } else {
        const int j = static_cast<int>(c % 8);
        const uint8_t byte = block[(c / 8) * 64 + j % 4];
        const int nibble = j < 4 ? (byte & 0x0f) : (byte >> 4);
        q = nibble >= 8 ? nibble - 16 : nibble;
      }
      o[c] = m.scales.get()[(b * groups + c / spec.group) * kRowBlock + rr] * static_cast<float>(q);
    }
  }
  return out;
}

PackedExpert PackExpert(const float* gate, const float* up, const float* down, int64_t hidden,
                        int64_t intermediate, const FormatSpec& spec, Allocator alloc,
                        void* alloc_ctx, Deallocator dealloc) {
  PackedExpert e;
  e.hidden = hidden;
  e.intermediate = intermediate;
  const int64_t ip = RoundUp(intermediate, kRowBlock);
  e.gate_up = PackRows(
      2 * ip, 2 * ip, hidden, spec,
      [&](int64_t r) -> const float* {
        const int64_t b = r / kRowBlock;
        const int64_t i = (b / 2) * kRowBlock + r % kRowBlock;
        if (i >= intermediate) return nullptr;
        return (b % 2 == 0 ? gate : up) + i * hidden;
      },
      alloc, alloc_ctx, dealloc);
  e.down = Pack(down, hidden, intermediate, spec, alloc, alloc_ctx, dealloc);
  return e;
}

void UnpackExpert(const PackedExpert& e, std::vector<float>* gate, std::vector<float>* up,
                  std::vector<float>* down) {
  const int64_t h = e.hidden;
  const std::vector<float> gu = Unpack(e.gate_up);
  gate->resize(static_cast<size_t>(e.intermediate * h));
  up->resize(static_cast<size_t>(e.intermediate * h));
  for (int64_t i = 0; i < e.intermediate; ++i) {
    const int64_t r = 2 * (i / kRowBlock) * kRowBlock + i % kRowBlock;
    std::copy_n(gu.data() + r * h, h, gate->data() + i * h);
    std::copy_n(gu.data() + (r + kRowBlock) * h, h, up->data() + i * h);
  }
  *down = Unpack(e.down);
}

}  // namespace moemesh::cpu
