// AVX2+FMA path of the CPU expert FFN, for CPUs without AVX-512: each 64-byte line is read as
// two halves of 8 rows; bf16 weights are widened to fp32 by shifts, int8/int4 weights are
// sign-extended to int32 by shifts and converted to fp32, dotted with the fp32 activations per
// group, and the group's dot scaled by the row scales. Activations are not quantized: results
// equal the fp32 reference (on the Unpack()ed weights) up to summation order.
// Compiled with AVX2 flags: call only through expert_ffn.h's dispatch. Calls no C++ library
// templates or inline functions (see expert_ffn_avx512.cc).
// GCC 12's intrinsic headers trip -Wmaybe-uninitialized on their own _mm512_undefined_*()
// (GCC bug 105593); the warning points into the header, so silencing it there is enough.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#include <math.h>
#include <string.h>

#include "kernels/cpu/expert_ffn_paths.h"

namespace moemesh::cpu::internal {
namespace {

constexpr int kTile = 4;  // tokens per weight pass

int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }

// fp32 activations zero-padded to the matrix's cols_padded (x itself when no padding is needed).
const float* Prepare(const MatrixView& m, const float* x, int64_t n, int64_t ld, int64_t* ldx,
                     Scratch& scratch) {
  const int64_t kp = m.cols_padded;
  if (m.cols == kp) {
    *ldx = ld;
    return x;
  }
  float* xf = reinterpret_cast<float*>(ScratchBytes(scratch, n * kp * sizeof(float)));
  for (int64_t t = 0; t < n; ++t) {
    memcpy(xf + t * kp, x + t * ld, m.cols * sizeof(float));
    memset(xf + t * kp + m.cols, 0, (kp - m.cols) * sizeof(float));
  }
  *ldx = kp;
  return xf;
}

// Input j (0..3) of each row's dword, sign-extended: int8 bytes or int4 nibbles.
template <int kShiftLeft, int kShiftRight>
__m256 Widen(__m256i w) {
  return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(w, kShiftLeft), kShiftRight));
}

// out[t][0..7] for rows 8*half.. of a row block; `lines` already offset by 32*half bytes.
template <int T>
void HalfBf16(const uint8_t* lines, int64_t n_lines, const float* x, int64_t ldx, float* out) {
  __m256 even[T];
  __m256 odd[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) even[t] = odd[t] = _mm256_setzero_ps();
  const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t p = 0; p < n_lines; ++p) {
    const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(lines + p * 64));
    const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(w, hi_mask));
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const float* xt = x + t * ldx + 2 * p;
      even[t] = _mm256_fmadd_ps(we, _mm256_set1_ps(xt[0]), even[t]);
      odd[t] = _mm256_fmadd_ps(wo, _mm256_set1_ps(xt[1]), odd[t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm256_storeu_ps(out + 16 * t, _mm256_add_ps(even[t], odd[t]));
}

template <int T, bool kInt4>
void HalfQuant(const MatrixView& m, const uint8_t* lines, const float* scales, const float* x,
               int64_t ldx, float* out) {
  const int per_line = kInt4 ? 8 : 4;
  const int lines_per_group = m.group / per_line;
  __m256 acc[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t g = 0; g < m.groups; ++g) {
    __m256 dot[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) dot[t] = _mm256_setzero_ps();
    for (int l = 0; l < lines_per_group; ++l) {
      const int64_t line = g * lines_per_group + l;
      const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(lines + line * 64));
      __m256 wf[8];
      if constexpr (kInt4) {
        wf[0] = Widen<28, 28>(w);
        wf[1] = Widen<20, 28>(w);
        wf[2] = Widen<12, 28>(w);
        wf[3] = Widen<4, 28>(w);
        wf[4] = Widen<24, 28>(w);
        wf[5] = Widen<16, 28>(w);
        wf[6] = Widen<8, 28>(w);
        wf[7] = Widen<0, 28>(w);
      } else {
        wf[0] = Widen<24, 24>(w);
        wf[1] = Widen<16, 24>(w);
        wf[2] = Widen<8, 24>(w);
        wf[3] = Widen<0, 24>(w);
      }
#pragma GCC unroll 8
      for (int j = 0; j < per_line; ++j) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const float xv = x[t * ldx + line * per_line + j];
          dot[t] = _mm256_fmadd_ps(wf[j], _mm256_set1_ps(xv), dot[t]);
        }
      }
    }
    const __m256 ws = _mm256_loadu_ps(scales + 16 * g);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[t] = _mm256_fmadd_ps(dot[t], ws, acc[t]);
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm256_storeu_ps(out + 16 * t, acc[t]);
}

// out[t][r] = row (16 b + r) of m . x_t for T tokens.
template <int T>
void RowBlockT(const MatrixView& m, int64_t b, const float* x, int64_t ldx, float* out) {
  for (int half = 0; half < 2; ++half) {
    const uint8_t* lines = m.data + b * m.lines * 64 + 32 * half;
    const float* scales =
        m.scales == nullptr ? nullptr : m.scales + b * m.groups * kRowBlock + 8 * half;
    switch (m.format) {
      case WeightFormat::kBf16:
        HalfBf16<T>(lines, m.lines, x, ldx, out + 8 * half);
        break;
      case WeightFormat::kInt8:
        HalfQuant<T, false>(m, lines, scales, x, ldx, out + 8 * half);
        break;
      case WeightFormat::kInt4:
        HalfQuant<T, true>(m, lines, scales, x, ldx, out + 8 * half);
        break;
    }
  }
}

void RowBlock(const MatrixView& m, int64_t b, const float* x, int64_t ldx, int tokens,
              float* out) {
  switch (tokens) {
    case 1: return RowBlockT<1>(m, b, x, ldx, out);
    case 2: return RowBlockT<2>(m, b, x, ldx, out);
    case 3: return RowBlockT<3>(m, b, x, ldx, out);
    default: return RowBlockT<4>(m, b, x, ldx, out);
  }
}

}  // namespace

void GateUpAvx2(const PackedExpert& e, const float* x, int64_t n, int64_t i_begin, int64_t i_end,
                float* h, Scratch& scratch) {
  const MatrixView m = View(e.gate_up);
  int64_t ldx = 0;
  const float* xp = Prepare(m, x, n, e.hidden, &ldx, scratch);
  alignas(32) float gate[kTile * kRowBlock];
  alignas(32) float up[kTile * kRowBlock];
  for (int64_t j = i_begin / kRowBlock; j * kRowBlock < i_end; ++j) {
    const int64_t i0 = j * kRowBlock;
    const int64_t rows = Min(kRowBlock, i_end - i0);
    for (int64_t t0 = 0; t0 < n; t0 += kTile) {
      const int tokens = static_cast<int>(Min(kTile, n - t0));
      RowBlock(m, 2 * j, xp + t0 * ldx, ldx, tokens, gate);
      RowBlock(m, 2 * j + 1, xp + t0 * ldx, ldx, tokens, up);
      for (int t = 0; t < tokens; ++t) {
        float* ht = h + (t0 + t) * e.intermediate + i0;
        for (int64_t r = 0; r < rows; ++r) {
          const float g = gate[t * kRowBlock + r];
          ht[r] = g / (1.0f + expf(-g)) * up[t * kRowBlock + r];
        }
      }
    }
  }
}

void DownAvx2(const PackedExpert& e, const float* h, int64_t n, const float* weight,
              int64_t o_begin, int64_t o_end, float* y, Scratch& scratch) {
  const MatrixView m = View(e.down);
  int64_t ldx = 0;
  const float* hp = Prepare(m, h, n, e.intermediate, &ldx, scratch);
  alignas(32) float out[kTile * kRowBlock];
  for (int64_t b = o_begin / kRowBlock; b * kRowBlock < o_end; ++b) {
    const int64_t o0 = b * kRowBlock;
    const int64_t rows = Min(kRowBlock, o_end - o0);
    for (int64_t t0 = 0; t0 < n; t0 += kTile) {
      const int tokens = static_cast<int>(Min(kTile, n - t0));
      RowBlock(m, b, hp + t0 * ldx, ldx, tokens, out);
      for (int t = 0; t < tokens; ++t) {
        const float wt = weight == nullptr ? 1.0f : weight[t0 + t];
        float* yt = y + (t0 + t) * e.hidden + o0;
        for (int64_t r = 0; r < rows; ++r) yt[r] += wt * out[t * kRowBlock + r];
      }
    }
  }
}

}  // namespace moemesh::cpu::internal
