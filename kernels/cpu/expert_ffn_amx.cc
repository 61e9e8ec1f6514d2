// AMX path of the expert FFN, for experts with many tokens (compute-bound prefill). Tokens go in
// A tiles of 16 rows; the packed weight lines (16 output rows x 2 bf16 | 4 int8 per 64 bytes) are
// already the AMX B-tile row format, so B tiles load straight from the packed data, stride 64.
//   bf16: each activation is split into hi = bf16(x) and lo = bf16(x - hi), both multiplied by
//         the weights (two TDPBF16PS per tile): about 2^-16 relative error against fp32.
//   int8: activations quantized per (token, group) as expert_ffn.h says (the AVX-512 path's
//         bytes), taken as s8 (xu - 128) so TDPBSSD needs no group-sum correction; one int32
//         tile sum per group (32 inputs: a half-width K step; 128: two full steps), then fp32
//         with scale_w * sx. int4 lines are first unpacked to int8 lines in scratch (AVX-512).
// Tiles: 0-3 accumulators C[token tile][output block], 4-5 activations, 6-7 weights; two token
// tiles x two output blocks per inner loop. Thread-safe: writes only its output rows and scratch.
// GCC 12's AVX-512 intrinsics trip -Wmaybe-uninitialized on their own _mm512_undefined_*()
// (GCC bug 105593); the pragma covers the header's lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstring>

#include "kernels/cpu/expert_ffn_paths.h"

namespace moemesh::cpu::internal {
namespace {

constexpr int64_t kTile = 16;      // tokens per A tile, outputs per B tile (== kRowBlock)
constexpr int64_t kLine = 64;      // bytes per tile row and per packed line
constexpr int64_t kTileBytes = kTile * kLine;

static_assert(kRowBlock == kTile, "packed row blocks must match the AMX tile width");

// Palette-1 tile configuration (the layout LDTILECFG reads).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// GCC's tile intrinsics are asm statements that do not tell the compiler what memory they read
// (LDTILECFG names 8 bytes of its 64, TILELOADD none): without this barrier, stores to the tile
// config, packed activations or unpacked weights may be dropped or sunk past the tile loads.
inline void CompilerBarrier(const void* p) { __asm__ volatile("" : : "r"(p) : "memory"); }

// a_bytes: bytes of one activation tile row (the K step: 64, or 32 for int8 groups of 32).
void ConfigureTiles(int a_bytes) {
  TileConfig cfg;
  for (int t = 0; t < 4; ++t) {
    cfg.rows[t] = kTile;
    cfg.colsb[t] = kLine;
  }
  for (int t = 4; t < 6; ++t) {
    cfg.rows[t] = kTile;
    cfg.colsb[t] = static_cast<uint16_t>(a_bytes);
  }
  for (int t = 6; t < 8; ++t) {
    cfg.rows[t] = static_cast<uint8_t>(a_bytes / 4);
    cfg.colsb[t] = kLine;
  }
  CompilerBarrier(&cfg);
  _tile_loadconfig(&cfg);
}

bool AmxUsable() {
  static const bool granted = RequestAmxPermission();
  return granted;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }

size_t Rounded(size_t bytes) { return (bytes + 63) & ~size_t{63}; }

// Hands out 64-byte aligned pieces of one ScratchBytes() block.
class Carver {
 public:
  Carver(Scratch& s, size_t bytes) : next_(ScratchBytes(s, bytes)) {}
  template <typename T>
  T* Take(size_t bytes) {
    T* p = reinterpret_cast<T*>(next_);
    next_ += Rounded(bytes);
    return p;
  }

 private:
  uint8_t* next_;
};

// ---- activation packing -----------------------------------------------------------------------

// x [n, k] (row stride ld) -> bf16 hi/lo A tiles [tile][k/32][hi|lo][16 rows][32], zero-padded
// to whole tiles and to kp inputs.
void PackBf16HiLo(const float* x, int64_t n, int64_t k, int64_t ld, int64_t kp, uint8_t* out) {
  const int64_t steps = kp / 32;
  const int64_t tiles = CeilDiv(n, kTile);
  for (int64_t t = 0; t < tiles * kTile; ++t) {
    uint8_t* row_base = out + (t / kTile) * steps * 2 * kTileBytes + (t % kTile) * kLine;
    for (int64_t s = 0; s < steps; ++s) {
      __m512 x0 = _mm512_setzero_ps(), x1 = _mm512_setzero_ps();
      const int64_t k0 = s * 32;
      if (t < n && k0 < k) {
        const float* src = x + t * ld + k0;
        const int64_t left = k - k0;
        const __mmask16 m0 = left >= 16 ? 0xffff : static_cast<__mmask16>((1u << left) - 1);
        const __mmask16 m1 = left >= 32   ? 0xffff
                             : left <= 16 ? 0
                                          : static_cast<__mmask16>((1u << (left - 16)) - 1);
        x0 = _mm512_maskz_loadu_ps(m0, src);
        x1 = _mm512_maskz_loadu_ps(m1, src + 16);
      }
      const __m512i hi = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
      const __m512 hi0 = _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(hi)), 16));
      const __m512 hi1 = _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(hi, 1)), 16));
      const __m512i lo =
          (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(x1, hi1), _mm512_sub_ps(x0, hi0));
      uint8_t* dst = row_base + s * 2 * kTileBytes;
      _mm512_store_si512(dst, hi);
      _mm512_store_si512(dst + kTileBytes, lo);
    }
  }
}

// x [n, k] -> s8 A tiles [tile][k/step][16 rows][step bytes] and scales sx [tiles*16][kp/group],
// zero-padded. Quantized by QuantizeActivationsAvx512 (the AVX-512 path's bytes and scales), then
// xu - 128 (== xu ^ 0x80) as s8: the products equal the u8 x s8 ones less 128 * group_sum.
void PackInt8(const float* x, int64_t n, int64_t k, int64_t kp, int group, int64_t step,
              uint8_t* xu, int8_t* out, float* sx) {
  const int64_t steps = kp / step;
  const int64_t groups = kp / group;
  const int64_t rows = CeilDiv(n, kTile) * kTile;
  QuantizeActivationsAvx512(x, n, k, k, kp, group, xu, sx);
  std::memset(sx + n * groups, 0, (rows - n) * groups * sizeof(float));
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __mmask64 mask = step == 64 ? ~__mmask64{0} : (__mmask64{1} << step) - 1;
  for (int64_t t = 0; t < rows; ++t) {
    int8_t* dst = out + (t / kTile) * steps * kTile * step + (t % kTile) * step;
    const uint8_t* src = xu + t * kp;
    for (int64_t s = 0; s < steps; ++s) {
      const __m512i v = t < n ? _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, src + s * step), flip)
                              : _mm512_setzero_si512();
      _mm512_mask_storeu_epi8(dst + s * kTile * step, mask, v);
    }
  }
}

// One row block of int4 lines (kp/8 lines) -> int8 lines (kp/4): int4 line o gives int8 line 2o
// (low nibbles, inputs 8o..8o+3) and 2o+1 (high nibbles, inputs 8o+4..8o+7).
void UnpackInt4Block(const uint8_t* src, int64_t kp, int8_t* dst) {
  const __m512i mask = _mm512_set1_epi8(0x0f);
  const __m512i eight = _mm512_set1_epi8(8);
  for (int64_t o = 0; o < kp / 8; ++o) {
    const __m512i v = _mm512_load_si512(src + o * kLine);
    const __m512i lo = _mm512_and_si512(v, mask);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
    _mm512_store_si512(dst + 2 * o * kLine,
                       _mm512_sub_epi8(_mm512_xor_si512(lo, eight), eight));
    _mm512_store_si512(dst + (2 * o + 1) * kLine,
                       _mm512_sub_epi8(_mm512_xor_si512(hi, eight), eight));
  }
}

// ---- tile loops -------------------------------------------------------------------------------

// C[NT][NB][16][16] fp32 = A (NT token tiles, hi+lo) x B (NB row blocks) over `steps` K steps.
template <int NT, int NB>
void Bf16Tiles(const uint8_t* a, int64_t a_tile_stride, const uint8_t* const* b, int64_t steps,
               float* c) {
  CompilerBarrier(a);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t s = 0; s < steps; ++s) {
    _tile_loadd(6, b[0] + s * kTileBytes, kLine);
    if constexpr (NB == 2) _tile_loadd(7, b[1] + s * kTileBytes, kLine);
    for (int half = 0; half < 2; ++half) {
      const uint8_t* as = a + (2 * s + half) * kTileBytes;
      _tile_loadd(4, as, kLine);
      if constexpr (NT == 2) _tile_loadd(5, as + a_tile_stride, kLine);
      _tile_dpbf16ps(0, 4, 6);
      if constexpr (NB == 2) _tile_dpbf16ps(1, 4, 7);
      if constexpr (NT == 2) _tile_dpbf16ps(2, 5, 6);
      if constexpr (NT == 2 && NB == 2) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, kLine);
  if constexpr (NB == 2) _tile_stored(1, c + 256, kLine);
  if constexpr (NT == 2) _tile_stored(2, c + 2 * 256, kLine);
  if constexpr (NT == 2 && NB == 2) _tile_stored(3, c + 3 * 256, kLine);
}

struct Int8Operands {
  const int8_t* a;          // token tile 0: [k step][16][step]
  int64_t a_tile_stride;    // bytes to token tile 1
  const float* sx[2];       // per token tile: [16][groups]
  const int8_t* b[2];       // per row block: int8 lines
  const float* sw[2];       // per row block: [groups][16]
  int64_t step;             // input bytes per K step (32 or 64)
  int64_t steps_per_group;
  int64_t groups;
};

// C[NT][NB][16][16] fp32 = sum over groups of sx * sw * (A . B)_group, with s8 x s8 tiles.
template <int NT, int NB>
void Int8Tiles(const Int8Operands& op, int32_t* ci, float* c) {
  std::memset(c, 0, sizeof(float) * 4 * 256);
  CompilerBarrier(op.a);
  const int64_t a_step_bytes = kTile * op.step;
  for (int64_t g = 0; g < op.groups; ++g) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t s = g * op.steps_per_group; s < (g + 1) * op.steps_per_group; ++s) {
      _tile_loadd(6, op.b[0] + s * a_step_bytes, kLine);
      if constexpr (NB == 2) _tile_loadd(7, op.b[1] + s * a_step_bytes, kLine);
      _tile_loadd(4, op.a + s * a_step_bytes, op.step);
      if constexpr (NT == 2) _tile_loadd(5, op.a + op.a_tile_stride + s * a_step_bytes, op.step);
      _tile_dpbssd(0, 4, 6);
      if constexpr (NB == 2) _tile_dpbssd(1, 4, 7);
      if constexpr (NT == 2) _tile_dpbssd(2, 5, 6);
      if constexpr (NT == 2 && NB == 2) _tile_dpbssd(3, 5, 7);
    }
    _tile_stored(0, ci, kLine);
    if constexpr (NB == 2) _tile_stored(1, ci + 256, kLine);
    if constexpr (NT == 2) _tile_stored(2, ci + 2 * 256, kLine);
    if constexpr (NT == 2 && NB == 2) _tile_stored(3, ci + 3 * 256, kLine);
    for (int i = 0; i < NT; ++i) {
      for (int j = 0; j < NB; ++j) {
        const __m512 sw = _mm512_loadu_ps(op.sw[j] + g * kTile);
        const int32_t* cij = ci + (2 * i + j) * 256;
        float* acc = c + (2 * i + j) * 256;
        for (int r = 0; r < kTile; ++r) {
          const __m512 v = _mm512_cvtepi32_ps(_mm512_load_si512(cij + r * kTile));
          const __m512 scale = _mm512_mul_ps(sw, _mm512_set1_ps(op.sx[i][r * op.groups + g]));
          _mm512_store_ps(acc + r * kTile,
                          _mm512_fmadd_ps(v, scale, _mm512_load_ps(acc + r * kTile)));
        }
      }
    }
  }
}

// ---- shared driver ----------------------------------------------------------------------------

// The activations packed as A tiles, and the buffers the tile loops use.
struct Work {
  const uint8_t* bf16 = nullptr;  // hi/lo tiles
  const int8_t* q = nullptr;      // s8 tiles
  const float* sx = nullptr;      // [tiles * 16][groups]
  int64_t tiles = 0;
  int64_t tile_bytes = 0;         // bytes per token tile
  float* c = nullptr;             // fp32 results [2][2][16][16]
  int32_t* ci = nullptr;          // int32 tile stores [2][2][16][16]
  int8_t* unpacked = nullptr;     // int4 -> int8 lines of two row blocks
};

int64_t IntStep(const MatrixView& m) { return Min(m.group, kLine); }

// Packs x [n, k] for matrix m into scratch and configures the tiles.
Work Prepare(const MatrixView& m, const float* x, int64_t n, int64_t k, Scratch& scratch) {
  const WeightFormat format = m.format;
  const int64_t kp = m.cols_padded;
  Work w;
  w.tiles = CeilDiv(n, kTile);
  const int64_t rows = w.tiles * kTile;
  const size_t results = Rounded(sizeof(float) * 4 * 256);
  const size_t unpacked = format == WeightFormat::kInt4 ? Rounded(kTile * kp) : 0;
  size_t bytes = 2 * results + 2 * unpacked;
  if (format == WeightFormat::kBf16) {
    w.tile_bytes = kp * 2 * 2 * kTile;
    bytes += Rounded(rows * w.tile_bytes / kTile);
  } else {
    w.tile_bytes = kp * kTile;
    bytes += Rounded(n * kp) + Rounded(rows * kp) + Rounded(rows * (kp / m.group) * 4);
  }
  Carver carve(scratch, bytes);
  w.c = carve.Take<float>(results);
  w.ci = carve.Take<int32_t>(results);
  if (format == WeightFormat::kInt4) w.unpacked = carve.Take<int8_t>(2 * unpacked);
  if (format == WeightFormat::kBf16) {
    uint8_t* buf = carve.Take<uint8_t>(rows * w.tile_bytes / kTile);
    PackBf16HiLo(x, n, k, k, kp, buf);
    w.bf16 = buf;
    ConfigureTiles(kLine);
  } else {
    uint8_t* xu = carve.Take<uint8_t>(n * kp);
    int8_t* buf = carve.Take<int8_t>(rows * kp);
    float* sx = carve.Take<float>(rows * (kp / m.group) * 4);
    PackInt8(x, n, k, kp, m.group, IntStep(m), xu, buf, sx);
    w.q = buf;
    w.sx = sx;
    ConfigureTiles(static_cast<int>(IntStep(m)));
  }
  return w;
}

// Runs the tiles for one or two row blocks of m over all token tiles; emit(tile, c) gets the
// fp32 results c[tt_in_pair][block][16][16] for token tiles (tile, tile+1 if present).
template <typename Emit>
void RunBlocks(const MatrixView& m, const Work& act, const int64_t* blocks, int nb,
               Emit&& emit) {
  float* c = act.c;
  const int64_t kp = m.cols_padded;
  const WeightFormat format = m.format;
  const int per_line = InputsPerLine(format);
  const int64_t block_bytes = kp / per_line * kLine;
  const uint8_t* b[2] = {nullptr, nullptr};
  for (int j = 0; j < nb; ++j) {
    b[j] = m.data + blocks[j] * block_bytes;
    if (format == WeightFormat::kInt4) {
      int8_t* dst = act.unpacked + j * Rounded(kTile * kp);
      UnpackInt4Block(b[j], kp, dst);
      b[j] = reinterpret_cast<const uint8_t*>(dst);
    }
  }
  Int8Operands op{};
  if (format != WeightFormat::kBf16) {
    const int64_t groups = kp / m.group;
    op.a_tile_stride = act.tile_bytes;
    op.step = IntStep(m);
    op.steps_per_group = m.group / op.step;
    op.groups = groups;
    for (int j = 0; j < nb; ++j) {
      op.b[j] = reinterpret_cast<const int8_t*>(b[j]);
      op.sw[j] = m.scales + blocks[j] * groups * kTile;
    }
  }
  for (int64_t t = 0; t < act.tiles; t += 2) {
    const int nt = act.tiles - t >= 2 ? 2 : 1;
    if (format == WeightFormat::kBf16) {
      const uint8_t* a = act.bf16 + t * act.tile_bytes;
      const int64_t steps = kp / 32;
      if (nt == 2 && nb == 2) Bf16Tiles<2, 2>(a, act.tile_bytes, b, steps, c);
      else if (nt == 2) Bf16Tiles<2, 1>(a, act.tile_bytes, b, steps, c);
      else if (nb == 2) Bf16Tiles<1, 2>(a, act.tile_bytes, b, steps, c);
      else Bf16Tiles<1, 1>(a, act.tile_bytes, b, steps, c);
    } else {
      op.a = act.q + t * act.tile_bytes;
      op.sx[0] = act.sx + t * kTile * op.groups;
      op.sx[1] = op.sx[0] + kTile * op.groups;
      if (nt == 2 && nb == 2) Int8Tiles<2, 2>(op, act.ci, c);
      else if (nt == 2) Int8Tiles<2, 1>(op, act.ci, c);
      else if (nb == 2) Int8Tiles<1, 2>(op, act.ci, c);
      else Int8Tiles<1, 1>(op, act.ci, c);
    }
    for (int i = 0; i < nt; ++i) emit(t + i, c + 2 * i * 256);
  }
}

// silu(g) * u for 16 lanes; exp by range reduction and a degree-6 polynomial (~1 ulp).
__m512 SiluMul(__m512 g, __m512 u) {
  const __m512 x = _mm512_max_ps(_mm512_min_ps(_mm512_sub_ps(_mm512_setzero_ps(), g),
                                               _mm512_set1_ps(88.0f)),
                                 _mm512_set1_ps(-88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504089f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512 e = _mm512_scalef_ps(p, n);  // exp(-g)
  return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}

__mmask16 ColumnMask(int64_t first, int64_t end) {
  const int64_t valid = Min(kTile, end - first);
  return valid >= kTile ? 0xffff : static_cast<__mmask16>((1u << valid) - 1);
}

}  // namespace

void GateUpAmx(const PackedExpert& e, const float* x, int64_t n, int64_t i_begin, int64_t i_end,
               float* h, Scratch& scratch) {
  if (n <= 0 || i_begin >= i_end) return;
  if (!AmxUsable()) return GateUpAvx512(e, x, n, i_begin, i_end, h, scratch);
  const MatrixView m = View(e.gate_up);
  const int64_t inter = e.intermediate;
  const Work act = Prepare(m, x, n, e.hidden, scratch);
  for (int64_t j = i_begin / kTile; j < CeilDiv(i_end, kTile); ++j) {
    const int64_t blocks[2] = {2 * j, 2 * j + 1};  // gate rows 16j.., up rows 16j..
    const int64_t col0 = j * kTile;
    const __mmask16 mask = ColumnMask(col0, i_end);
    RunBlocks(m, act, blocks, 2, [&](int64_t tile, const float* res) {
      for (int64_t r = 0; r < kTile && tile * kTile + r < n; ++r) {
        const __m512 g = _mm512_load_ps(res + r * kTile);
        const __m512 u = _mm512_load_ps(res + 256 + r * kTile);
        _mm512_mask_storeu_ps(h + (tile * kTile + r) * inter + col0, mask, SiluMul(g, u));
      }
    });
  }
  _tile_release();
}

void DownAmx(const PackedExpert& e, const float* h, int64_t n, const float* weight, int64_t o_begin,
             int64_t o_end, float* y, Scratch& scratch) {
  if (n <= 0 || o_begin >= o_end) return;
  if (!AmxUsable()) return DownAvx512(e, h, n, weight, o_begin, o_end, y, scratch);
  const MatrixView m = View(e.down);
  const int64_t hidden = e.hidden;
  const Work act = Prepare(m, h, n, e.intermediate, scratch);
  const int64_t b_end = CeilDiv(o_end, kTile);
  for (int64_t b = o_begin / kTile; b < b_end; b += 2) {
    const int nb = b_end - b >= 2 ? 2 : 1;
    const int64_t blocks[2] = {b, b + 1};
    RunBlocks(m, act, blocks, nb, [&](int64_t tile, const float* res) {
      for (int64_t r = 0; r < kTile && tile * kTile + r < n; ++r) {
        const int64_t t = tile * kTile + r;
        const __m512 w = _mm512_set1_ps(weight != nullptr ? weight[t] : 1.0f);
        for (int j = 0; j < nb; ++j) {
          const int64_t col0 = (b + j) * kTile;
          const __mmask16 mask = ColumnMask(col0, o_end);
          float* dst = y + t * hidden + col0;
          const __m512 prev = _mm512_maskz_loadu_ps(mask, dst);
          _mm512_mask_storeu_ps(dst, mask,
                                _mm512_fmadd_ps(w, _mm512_load_ps(res + j * 256 + r * kTile), prev));
        }
      }
    });
  }
  _tile_release();
}

}  // namespace moemesh::cpu::internal
