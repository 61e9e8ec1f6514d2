// Scalar path of the CPU expert FFN: plain loops over the packed layout, each weight row
// dequantized once to fp32 and dotted with every token's fp32 activations. Runs on any x86-64
// (compiled without instruction-set flags); the fallback and the baseline of the fast paths.
#include <cmath>
#include <cstring>

#include "kernels/cpu/expert_ffn_paths.h"

namespace moemesh::cpu::internal {
namespace {

// Packed row r of m as fp32, `m.cols` values.
void DequantRow(const PackedMatrix& m, int64_t r, float* out) {
  const WeightFormat f = m.spec.format;
  const int64_t lines = m.cols_padded / InputsPerLine(f);
  const int64_t b = r / kRowBlock;
  const int64_t rr = r % kRowBlock;
  const uint8_t* block = m.data.get() + b * lines * 64 + rr * 4;
  if (f == WeightFormat::kBf16) {
    for (int64_t c = 0; c < m.cols; ++c) {
      uint16_t v;
      std::memcpy(&v, block + (c / 2) * 64 + (c % 2) * 2, sizeof(v));
      const uint32_t bits = static_cast<uint32_t>(v) << 16;
      std::memcpy(&out[c], &bits, sizeof(float));
    }
    return;
  }
  const int64_t groups = m.cols_padded / m.spec.group;
  const float* scales = m.scales.get() + b * groups * kRowBlock + rr;
  for (int64_t c = 0; c < m.cols; ++c) {
    int q;
    if (f == WeightFormat::kInt8) {
      q = static_cast<int8_t>(block[(c / 4) * 64 + c % 4]);
    } else {
      const int j = static_cast<int>(c % 8);
      const uint8_t byte = block[(c / 8) * 64 + j % 4];
      const int nibble = j < 4 ? (byte & 0x0f) : (byte >> 4);
      q = nibble >= 8 ? nibble - 16 : nibble;
    }
    out[c] = scales[(c / m.spec.group) * kRowBlock] * static_cast<float>(q);
  }
}

float Dot(const float* a, const float* b, int64_t k) {
  float acc = 0.0f;
  for (int64_t i = 0; i < k; ++i) acc += a[i] * b[i];
  return acc;
}

}  // namespace

void GateUpScalar(const PackedExpert& e, const float* x, int64_t n, int64_t i_begin,
                  int64_t i_end, float* h, Scratch& scratch) {
  const int64_t hidden = e.hidden;
  float* gate = reinterpret_cast<float*>(ScratchBytes(scratch, 2 * hidden * sizeof(float)));
  float* up = gate + hidden;
  for (int64_t i = i_begin; i < i_end; ++i) {
    const int64_t r = 2 * (i / kRowBlock) * kRowBlock + i % kRowBlock;
    DequantRow(e.gate_up, r, gate);
    DequantRow(e.gate_up, r + kRowBlock, up);
    for (int64_t t = 0; t < n; ++t) {
      const float g = Dot(gate, x + t * hidden, hidden);
      const float u = Dot(up, x + t * hidden, hidden);
      h[t * e.intermediate + i] = g / (1.0f + std::exp(-g)) * u;
    }
  }
}

void DownScalar(const PackedExpert& e, const float* h, int64_t n, const float* weight,
                int64_t o_begin, int64_t o_end, float* y, Scratch& scratch) {
  const int64_t inter = e.intermediate;
  float* row = reinterpret_cast<float*>(ScratchBytes(scratch, inter * sizeof(float)));
  for (int64_t o = o_begin; o < o_end; ++o) {
    DequantRow(e.down, o, row);
    for (int64_t t = 0; t < n; ++t) {
      const float wt = weight == nullptr ? 1.0f : weight[t];
      y[t * e.hidden + o] += wt * Dot(row, h + t * inter, inter);
    }
  }
}

}  // namespace moemesh::cpu::internal
