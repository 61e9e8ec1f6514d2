// AVX-512 path of the CPU expert FFN, the decode path: few tokens per expert, bounded by memory
// bandwidth, so every 64-byte weight line is loaded once per tile of up to kTile tokens (and
// prefetched kPrefetchBytes ahead) and the 16 rows of a row block accumulate in one zmm per token.
//   bf16: weights widened to fp32 by shifts, FMA with the fp32 activations (no rounding of the
//         activations: results equal the fp32 reference up to summation order).
//   int8/int4: activations quantized per (token, group) to u8 with offset 128 (expert_ffn.h),
//         u8 x s8 dot products with vpdpbusd in int32 per group, the offset removed with the
//         group sums, then fp32 accumulation with scale_w * sx. int4 nibbles become q + 8 in
//         [0, 15] in registers, the extra 8 * sum(xu) removed with the activations' group sums.
// Compiled with AVX-512 flags: call only through expert_ffn.h's dispatch. Calls no C++ library
// templates or inline functions (only intrinsics, C functions, MatrixView and its own internal
// code), so no AVX-512 copy of shared inline code can leak into the portable files at link time.
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

constexpr int kTile = 8;  // tokens per weight pass

// Software prefetch distance in the weight stream. A call reads its row blocks' lines in address
// order, but with few tokens the kernels consume bytes too fast for the out-of-order window to
// keep enough DRAM reads in flight: one core streaming experts from DRAM (Zen 4, 38-40 GB/s
// plain read) reached 15-26 GB/s at 2-4 tokens without it, 30-34 GB/s with it (1 to 8 KiB: the
// further the better, flat beyond). Only the first token tile of a row block prefetches (later
// tiles find the next blocks already on their way), and a call prefetches up to this many bytes
// past its last row block: its neighbour task's lines, read soon anyway. 0 turns it off.
// The prefetches go to L2 (_MM_HINT_T1), not L1: on the 16-core Xeon with every core streaming,
// L1 prefetches held the core's few L1 fill buffers for a whole DRAM round trip each, and
// decode steps of small experts took 15-35% longer (bench_expert_ffn, Qwen3-30B-A3B int4 and
// int8 at 1 and 8 tokens, three interleaved rounds); the demand loads then find the lines in L2.
constexpr int64_t kPrefetchBytes = 8192;

int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }

template <bool kPrefetch>
inline void PrefetchAhead(const uint8_t* line) {
  if constexpr (kPrefetch && kPrefetchBytes > 0) {
    _mm_prefetch(reinterpret_cast<const char*>(line + kPrefetchBytes), _MM_HINT_T1);
  }
}

// The quantized formats stream two more arrays beside the lines: a row block's scales and group
// sums, 64 bytes each per group (int4 group 32: half as many bytes as its lines). Each group
// prefetches theirs as far ahead, in groups, as the lines are (16 groups at least).
template <bool kPrefetch>
inline void PrefetchGroupAhead(const float* scales, const int32_t* sums, int64_t g,
                               int lines_per_group) {
  if constexpr (kPrefetch && kPrefetchBytes > 0) {
    const int64_t ahead = kPrefetchBytes / 64 / lines_per_group;
    const int64_t d = 16 * (g + (ahead < 16 ? 16 : ahead));
    _mm_prefetch(reinterpret_cast<const char*>(scales + d), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(sums + d), _MM_HINT_T1);
  }
}

// A call's first kPrefetchBytes of lines (row blocks [b_begin, b_end)), and as many groups of
// scales and sums as PrefetchGroupAhead keeps in flight, prefetched before the activations are
// prepared: in the row loop each line is prefetched kPrefetchBytes ahead, so without this the
// call's first lines come from DRAM a few demand misses at a time. Measured 1% faster (geometric
// mean over 12 Qwen3 decode rows, within the host's noise; docs/perf.md).
void PrefetchHead(const MatrixView& m, int64_t b_begin, int64_t b_end) {
  const int64_t bytes = Min(kPrefetchBytes, (b_end - b_begin) * m.lines * 64);
  const uint8_t* lines = m.data + b_begin * m.lines * 64;
  for (int64_t o = 0; o < bytes; o += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(lines + o), _MM_HINT_T1);
  }
  if (m.format == WeightFormat::kBf16) return;
  const int64_t lines_per_group = m.group / (m.format == WeightFormat::kInt4 ? 8 : 4);
  const int64_t ahead = kPrefetchBytes / 64 / lines_per_group;
  const int64_t groups = Min(ahead < 16 ? 16 : ahead, (b_end - b_begin) * m.groups);
  const int64_t at = b_begin * m.groups * kRowBlock;
  for (int64_t g = 0; g < groups; ++g) {
    _mm_prefetch(reinterpret_cast<const char*>(m.scales + at + 16 * g), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(m.sums + at + 16 * g), _MM_HINT_T1);
  }
}

// Activations of one call, prepared for one packed matrix.
struct Acts {
  const float* xf = nullptr;  // bf16: [n][ldx] fp32, zero-padded to cols_padded
  int64_t ldx = 0;
  const uint8_t* xu = nullptr;  // quantized: [n][cols_padded] u8
  const float* sx = nullptr;    // quantized: [n][groups]
  const int32_t* xs8 = nullptr;  // int4: [n][groups] 8 * (sum of the group's xu)
  int64_t groups = 0;
};

// xs8[t][g] = 8 * sum of xu[t][g * group, (g + 1) * group) (group 32 or 128).
void GroupSums8(const uint8_t* xu, int64_t n, int64_t cols_padded, int group, int32_t* xs8) {
  const int64_t groups = cols_padded / group;
  const __mmask64 k = group >= 64 ? ~__mmask64{0} : (__mmask64{1} << group) - 1;
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* p = xu + t * cols_padded + g * group;
      __m512i acc = _mm512_setzero_si512();
      for (int c = 0; c < group; c += 64) {
        acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(k, p + c),
                                                    _mm512_setzero_si512()));
      }
      xs8[t * groups + g] = static_cast<int32_t>(8 * _mm512_reduce_add_epi64(acc));
    }
  }
}

Acts Prepare(const MatrixView& m, const float* x, int64_t n, int64_t ld, Scratch& scratch) {
  Acts a;
  const int64_t kp = m.cols_padded;
  if (m.format == WeightFormat::kBf16) {
    if (m.cols == kp) {
      a.xf = x;
      a.ldx = ld;
      return a;
    }
    float* xf = reinterpret_cast<float*>(ScratchBytes(scratch, n * kp * sizeof(float)));
    for (int64_t t = 0; t < n; ++t) {
      memcpy(xf + t * kp, x + t * ld, m.cols * sizeof(float));
      memset(xf + t * kp + m.cols, 0, (kp - m.cols) * sizeof(float));
    }
    a.xf = xf;
    a.ldx = kp;
    return a;
  }
  a.groups = m.groups;
  const int64_t xu_bytes = (n * kp + 63) / 64 * 64;
  const int64_t per_group = n * a.groups * 4;  // sx (float) and xs8 (int32)
  uint8_t* xu = ScratchBytes(scratch, xu_bytes + 2 * per_group);
  float* sx = reinterpret_cast<float*>(xu + xu_bytes);
  QuantizeActivationsAvx512(x, n, ld, m.cols, kp, m.group, xu, sx);
  a.xu = xu;
  a.sx = sx;
  if (m.format == WeightFormat::kInt4) {
    int32_t* xs8 = reinterpret_cast<int32_t*>(xu + xu_bytes + per_group);
    GroupSums8(xu, n, kp, m.group, xs8);
    a.xs8 = xs8;
  }
  return a;
}

int32_t Load32(const uint8_t* p) {
  int32_t v;
  memcpy(&v, p, sizeof(v));
  return v;
}

// out[t][0..15] = row block `lines` . x_t for T tokens, bf16 weights.
template <int T, bool kPrefetch>
void BlockBf16(const uint8_t* lines, int64_t n_lines, const float* x, int64_t ldx, float* out) {
  __m512 even[T];
  __m512 odd[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) even[t] = odd[t] = _mm512_setzero_ps();
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t p = 0; p < n_lines; ++p) {
    PrefetchAhead<kPrefetch>(lines + p * 64);
    const __m512i w = _mm512_load_si512(lines + p * 64);
    const __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    const __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(w, hi_mask));
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const float* xt = x + t * ldx + 2 * p;
      even[t] = _mm512_fmadd_ps(we, _mm512_set1_ps(xt[0]), even[t]);
      odd[t] = _mm512_fmadd_ps(wo, _mm512_set1_ps(xt[1]), odd[t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(out + 16 * t, _mm512_add_ps(even[t], odd[t]));
}

// int8 weights: `chains` int32 accumulators per token hide vpdpbusd's latency for few tokens.
template <int T, bool kPrefetch>
void BlockInt8(const uint8_t* lines, const float* scales, const int32_t* sums, int64_t groups,
               int group, const uint8_t* xu, int64_t ldq, const float* sx, int64_t ld_sx,
               float* out) {
  constexpr int kChains = T <= 2 ? 2 : 1;
  const int lines_per_group = group / 4;
  __m512 acc[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    PrefetchGroupAhead<kPrefetch>(scales, sums, g, lines_per_group);
    const __m512i offset =
        _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(_mm512_loadu_si512(sums + 16 * g), 7));
    __m512i ai[kChains][T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      ai[0][t] = offset;
      if constexpr (kChains == 2) ai[1][t] = _mm512_setzero_si512();
    }
    const uint8_t* gl = lines + g * lines_per_group * 64;
    const uint8_t* gx = xu + g * group;
    for (int l = 0; l < lines_per_group; l += kChains) {
#pragma GCC unroll 2
      for (int c = 0; c < kChains; ++c) {
        PrefetchAhead<kPrefetch>(gl + (l + c) * 64);
        const __m512i w = _mm512_load_si512(gl + (l + c) * 64);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m512i xb = _mm512_set1_epi32(Load32(gx + t * ldq + 4 * (l + c)));
          ai[c][t] = _mm512_dpbusd_epi32(ai[c][t], xb, w);
        }
      }
    }
    const __m512 ws = _mm512_loadu_ps(scales + 16 * g);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      __m512i sum = ai[0][t];
      if constexpr (kChains == 2) sum = _mm512_add_epi32(sum, ai[1][t]);
      const __m512 s = _mm512_mul_ps(ws, _mm512_set1_ps(sx[t * ld_sx + g]));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), s, acc[t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(out + 16 * t, acc[t]);
}

// int4 weights: each line gives two vectors of u = q + 8 in [0, 15] (low nibbles: inputs
// 8o..8o+3, high nibbles: 8o+4..8o+7), one vpternlog each ((nibble ^ 8) & 15), taken as s8 by
// vpdpbusd. sum(xu * u) = sum(xu * q) + 8 * sum(xu), so each token's accumulator starts at
// -128 * group_sum - 8 * sum(xu) (xs8): the same int32 as with sign-extended nibbles.
template <int T, bool kPrefetch>
void BlockInt4(const uint8_t* lines, const float* scales, const int32_t* sums, int64_t groups,
               int group, const uint8_t* xu, int64_t ldq, const float* sx, const int32_t* xs8,
               int64_t ld_sx, float* out) {
  const int lines_per_group = group / 8;
  const __m512i flip = _mm512_set1_epi8(0x08);
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  constexpr int kXorAnd = 0x28;  // ternlog imm8 of (a ^ b) & c with a = 0xf0, b = 0xcc, c = 0xaa
  __m512 acc[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    PrefetchGroupAhead<kPrefetch>(scales, sums, g, lines_per_group);
    const __m512i offset =
        _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(_mm512_loadu_si512(sums + 16 * g), 7));
    __m512i lo_acc[T];
    __m512i hi_acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      lo_acc[t] = _mm512_sub_epi32(offset, _mm512_set1_epi32(xs8[t * ld_sx + g]));
      hi_acc[t] = _mm512_setzero_si512();
    }
    const uint8_t* gl = lines + g * lines_per_group * 64;
    const uint8_t* gx = xu + g * group;
    for (int l = 0; l < lines_per_group; ++l) {
      PrefetchAhead<kPrefetch>(gl + l * 64);
      const __m512i w = _mm512_load_si512(gl + l * 64);
      const __m512i lo = _mm512_ternarylogic_epi32(w, flip, low4, kXorAnd);
      const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(w, 4), flip, low4, kXorAnd);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const uint8_t* xt = gx + t * ldq + 8 * l;
        lo_acc[t] = _mm512_dpbusd_epi32(lo_acc[t], _mm512_set1_epi32(Load32(xt)), lo);
        hi_acc[t] = _mm512_dpbusd_epi32(hi_acc[t], _mm512_set1_epi32(Load32(xt + 4)), hi);
      }
    }
    const __m512 ws = _mm512_loadu_ps(scales + 16 * g);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m512i sum = _mm512_add_epi32(lo_acc[t], hi_acc[t]);
      const __m512 s = _mm512_mul_ps(ws, _mm512_set1_ps(sx[t * ld_sx + g]));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), s, acc[t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(out + 16 * t, acc[t]);
}

// out[t][r] = row (16 b + r) of m . activation t0 + t, for T tokens.
template <int T, bool kPrefetch>
void RowBlockT(const MatrixView& m, int64_t b, const Acts& a, int64_t t0, float* out) {
  const WeightFormat f = m.format;
  const uint8_t* lines = m.data + b * m.lines * 64;
  if (f == WeightFormat::kBf16) {
    BlockBf16<T, kPrefetch>(lines, m.lines, a.xf + t0 * a.ldx, a.ldx, out);
    return;
  }
  const int64_t at = b * a.groups * kRowBlock;
  const uint8_t* xu = a.xu + t0 * m.cols_padded;
  const float* sx = a.sx + t0 * a.groups;
  if (f == WeightFormat::kInt8) {
    BlockInt8<T, kPrefetch>(lines, m.scales + at, m.sums + at, a.groups, m.group, xu,
                            m.cols_padded, sx, a.groups, out);
  } else {
    BlockInt4<T, kPrefetch>(lines, m.scales + at, m.sums + at, a.groups, m.group, xu,
                            m.cols_padded, sx, a.xs8 + t0 * a.groups, a.groups, out);
  }
}

template <bool kPrefetch>
void RowBlockP(const MatrixView& m, int64_t b, const Acts& a, int64_t t0, int tokens,
               float* out) {
  switch (tokens) {
    case 1: return RowBlockT<1, kPrefetch>(m, b, a, t0, out);
    case 2: return RowBlockT<2, kPrefetch>(m, b, a, t0, out);
    case 3: return RowBlockT<3, kPrefetch>(m, b, a, t0, out);
    case 4: return RowBlockT<4, kPrefetch>(m, b, a, t0, out);
    case 5: return RowBlockT<5, kPrefetch>(m, b, a, t0, out);
    case 6: return RowBlockT<6, kPrefetch>(m, b, a, t0, out);
    case 7: return RowBlockT<7, kPrefetch>(m, b, a, t0, out);
    default: return RowBlockT<8, kPrefetch>(m, b, a, t0, out);
  }
}

// Row block b for tokens [t0, t0 + tokens); the first token tile (t0 == 0) prefetches ahead.
void RowBlock(const MatrixView& m, int64_t b, const Acts& a, int64_t t0, int tokens,
              float* out) {
  if (t0 == 0) return RowBlockP<true>(m, b, a, t0, tokens, out);
  return RowBlockP<false>(m, b, a, t0, tokens, out);
}

}  // namespace

void QuantizeActivationsAvx512(const float* x, int64_t n, int64_t ld, int64_t cols,
                               int64_t cols_padded, int group, uint8_t* xu, float* sx) {
  const int64_t groups = cols_padded / group;
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const __m512i bias = _mm512_set1_epi32(128);
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * ld;
    uint8_t* out = xu + t * cols_padded;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * group;
      __m512 vmax = _mm512_setzero_ps();
      for (int64_t c = c0; c < c0 + group; c += 16) {
        const int64_t valid = cols - c;
        const __mmask16 k = valid >= 16 ? 0xffff : valid <= 0 ? 0 : (1u << valid) - 1;
        vmax = _mm512_max_ps(vmax, _mm512_and_ps(_mm512_maskz_loadu_ps(k, xt + c), abs_mask));
      }
      const float amax = _mm512_reduce_max_ps(vmax);
      const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
      sx[t * groups + g] = amax / 127.0f;
      for (int64_t c = c0; c < c0 + group; c += 16) {
        const int64_t valid = cols - c;
        const __mmask16 k = valid >= 16 ? 0xffff : valid <= 0 ? 0 : (1u << valid) - 1;
        const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, xt + c), inv));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c),
                         _mm512_cvtepi32_epi8(_mm512_add_epi32(q, bias)));
      }
    }
  }
}

void GateUpAvx512(const PackedExpert& e, const float* x, int64_t n, int64_t i_begin,
                  int64_t i_end, float* h, Scratch& scratch) {
  const MatrixView m = View(e.gate_up);
  PrefetchHead(m, 2 * (i_begin / kRowBlock), 2 * ((i_end + kRowBlock - 1) / kRowBlock));
  const Acts a = Prepare(m, x, n, e.hidden, scratch);
  alignas(64) float gate[kTile * kRowBlock];
  alignas(64) float up[kTile * kRowBlock];
  for (int64_t j = i_begin / kRowBlock; j * kRowBlock < i_end; ++j) {
    const int64_t i0 = j * kRowBlock;
    const int64_t rows = Min(kRowBlock, i_end - i0);
    for (int64_t t0 = 0; t0 < n; t0 += kTile) {
      const int tokens = static_cast<int>(Min(kTile, n - t0));
      RowBlock(m, 2 * j, a, t0, tokens, gate);
      RowBlock(m, 2 * j + 1, a, t0, tokens, up);
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

void DownAvx512(const PackedExpert& e, const float* h, int64_t n, const float* weight,
                int64_t o_begin, int64_t o_end, float* y, Scratch& scratch) {
  const MatrixView m = View(e.down);
  PrefetchHead(m, o_begin / kRowBlock, (o_end + kRowBlock - 1) / kRowBlock);
  const Acts a = Prepare(m, h, n, e.intermediate, scratch);
  alignas(64) float out[kTile * kRowBlock];
  for (int64_t b = o_begin / kRowBlock; b * kRowBlock < o_end; ++b) {
    const int64_t o0 = b * kRowBlock;
    const int64_t rows = Min(kRowBlock, o_end - o0);
    for (int64_t t0 = 0; t0 < n; t0 += kTile) {
      const int tokens = static_cast<int>(Min(kTile, n - t0));
      RowBlock(m, b, a, t0, tokens, out);
      for (int t = 0; t < tokens; ++t) {
        const float wt = weight == nullptr ? 1.0f : weight[t0 + t];
        float* yt = y + (t0 + t) * e.hidden + o0;
        for (int64_t r = 0; r < rows; ++r) yt[r] += wt * out[t * kRowBlock + r];
      }
    }
  }
}

}  // namespace moemesh::cpu::internal
