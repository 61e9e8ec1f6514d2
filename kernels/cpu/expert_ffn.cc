// Dispatch of the CPU expert FFN to its paths, with the range checks every path relies on, and
// the portable helpers the paths share. Portable code: compiled without instruction-set flags.
#include "kernels/cpu/expert_ffn.h"

#include <atomic>
#include <cmath>
#include <cstdint>

#include "common/status.h"
#include "kernels/cpu/expert_ffn_paths.h"

namespace moemesh::cpu {
namespace {

// Indexed by WeightFormat.
std::atomic<int64_t> amx_threshold[3] = {kDefaultAmxThreshold, kDefaultAmxThreshold,
                                         kDefaultAmxThreshold};

std::atomic<int64_t>& ThresholdOf(WeightFormat format) {
  const int i = static_cast<int>(format);
  MM_CHECK(i >= 0 && i < 3);
  return amx_threshold[i];
}

void CheckRange(int64_t begin, int64_t end, int64_t size) {
  MM_CHECK(0 <= begin && begin <= end && end <= size);
  MM_CHECK(begin % kRowBlock == 0);
  MM_CHECK(end % kRowBlock == 0 || end == size);
}

void CheckExpert(const PackedExpert& e, int64_t n, CpuPath path) {
  MM_CHECK(n >= 0);
  MM_CHECK(e.gate_up.data != nullptr && e.down.data != nullptr);
  MM_CHECK(e.gate_up.cols == e.hidden && e.down.cols == e.intermediate);
  MM_CHECK(e.down.rows == e.hidden && e.gate_up.rows_padded >= 2 * e.intermediate);
  MM_CHECK(PathSupported(path));
}

}  // namespace

CpuPath ChoosePath(const FormatSpec& format, int64_t tokens) {
  if (tokens >= AmxThreshold(format.format) && PathSupported(CpuPath::kAmx)) return CpuPath::kAmx;
  if (PathSupported(CpuPath::kAvx512)) return CpuPath::kAvx512;
  if (PathSupported(CpuPath::kAvx2)) return CpuPath::kAvx2;
  return CpuPath::kScalar;
}

void SetAmxThreshold(WeightFormat format, int64_t tokens) {
  MM_CHECK(tokens >= 1);
  ThresholdOf(format).store(tokens, std::memory_order_relaxed);
}

int64_t AmxThreshold(WeightFormat format) {
  return ThresholdOf(format).load(std::memory_order_relaxed);
}

const char* WeightFormatName(WeightFormat format) {
  switch (format) {
    case WeightFormat::kBf16:
      return "bf16";
    case WeightFormat::kInt8:
      return "int8";
    case WeightFormat::kInt4:
      return "int4";
  }
  return "unknown";
}

void GateUp(const PackedExpert& e, const float* x, int64_t n, int64_t i_begin, int64_t i_end,
            float* h, CpuPath path, Scratch& scratch) {
  CheckExpert(e, n, path);
  CheckRange(i_begin, i_end, e.intermediate);
  if (n == 0 || i_begin == i_end) return;
  switch (path) {
    case CpuPath::kScalar:
      return internal::GateUpScalar(e, x, n, i_begin, i_end, h, scratch);
    case CpuPath::kAvx2:
      return internal::GateUpAvx2(e, x, n, i_begin, i_end, h, scratch);
    case CpuPath::kAvx512:
      return internal::GateUpAvx512(e, x, n, i_begin, i_end, h, scratch);
    case CpuPath::kAmx:
      return internal::GateUpAmx(e, x, n, i_begin, i_end, h, scratch);
  }
}

void Down(const PackedExpert& e, const float* h, int64_t n, const float* weight, int64_t o_begin,
          int64_t o_end, float* y, CpuPath path, Scratch& scratch) {
  CheckExpert(e, n, path);
  CheckRange(o_begin, o_end, e.hidden);
  if (n == 0 || o_begin == o_end) return;
  switch (path) {
    case CpuPath::kScalar:
      return internal::DownScalar(e, h, n, weight, o_begin, o_end, y, scratch);
    case CpuPath::kAvx2:
      return internal::DownAvx2(e, h, n, weight, o_begin, o_end, y, scratch);
    case CpuPath::kAvx512:
      return internal::DownAvx512(e, h, n, weight, o_begin, o_end, y, scratch);
    case CpuPath::kAmx:
      return internal::DownAmx(e, h, n, weight, o_begin, o_end, y, scratch);
  }
}

void ExpertFfn(const PackedExpert& e, const float* x, int64_t n, const float* weight, float* y,
               CpuPath path, Scratch& scratch) {
  scratch.h.resize(static_cast<size_t>(n * e.intermediate));
  GateUp(e, x, n, 0, e.intermediate, scratch.h.data(), path, scratch);
  Down(e, scratch.h.data(), n, weight, 0, e.hidden, y, path, scratch);
}

namespace internal {

MatrixView View(const PackedMatrix& m) {
  MatrixView v;
  v.format = m.spec.format;
  v.rows_padded = m.rows_padded;
  v.cols = m.cols;
  v.cols_padded = m.cols_padded;
  v.lines = m.cols_padded / InputsPerLine(m.spec.format);
  v.data = m.data.get();
  if (m.spec.format != WeightFormat::kBf16) {
    v.group = m.spec.group;
    v.groups = m.cols_padded / m.spec.group;
    v.scales = m.scales.get();
    v.sums = m.sums.get();
  }
  return v;
}

uint8_t* ScratchBytes(Scratch& scratch, size_t bytes) {
  if (scratch.bytes.size() < bytes + 64) scratch.bytes.resize(bytes + 64);
  const uintptr_t p = reinterpret_cast<uintptr_t>(scratch.bytes.data());
  return scratch.bytes.data() + ((64 - p % 64) % 64);
}

void QuantizeActivations(const float* x, int64_t n, int64_t ld, int64_t cols,
                         int64_t cols_padded, int group, uint8_t* xu, float* sx) {
  const int64_t groups = cols_padded / group;
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * ld;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * group;
      const int64_t c1 = c0 + group < cols ? c0 + group : cols;
      float amax = 0.0f;
      for (int64_t c = c0; c < c1; ++c) amax = std::fmax(amax, std::fabs(xt[c]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      sx[t * groups + g] = amax / 127.0f;
      uint8_t* out = xu + t * cols_padded;
      for (int64_t c = c0; c < c0 + group; ++c) {
        const float q = c < cols ? std::nearbyint(xt[c] * inv) : 0.0f;
        out[c] = static_cast<uint8_t>(static_cast<int>(q) + 128);
      }
    }
  }
}

}  // namespace internal
}  // namespace moemesh::cpu
