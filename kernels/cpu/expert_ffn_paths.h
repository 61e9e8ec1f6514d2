// Internal: the per-path implementations behind expert_ffn.h's dispatch. Each lives in its own
// file compiled with that path's instruction-set flags; callers go through GateUp/Down.
#pragma once

#include "kernels/cpu/expert_ffn.h"

namespace moemesh::cpu::internal {

#define MM_EXPERT_PATH_DECL(suffix)                                                           \
  void GateUp##suffix(const PackedExpert& e, const float* x, int64_t n, int64_t i_begin,     \
                      int64_t i_end, float* h, Scratch& scratch);                            \
  void Down##suffix(const PackedExpert& e, const float* h, int64_t n, const float* weight,   \
                    int64_t o_begin, int64_t o_end, float* y, Scratch& scratch);

MM_EXPERT_PATH_DECL(Scalar)
MM_EXPERT_PATH_DECL(Avx2)
MM_EXPERT_PATH_DECL(Avx512)
MM_EXPERT_PATH_DECL(Amx)

#undef MM_EXPERT_PATH_DECL

// Asks the OS for permission to use AMX tile data (Linux arch_prctl); false when refused.
bool RequestAmxPermission();

// Inputs held by one 64-byte line per row (2 bf16, 4 int8, 8 int4). Integer-only on purpose:
// inline code shared with the instruction-set files must not contain floating point, or the
// linker may keep an AVX-512 copy of it for the portable files.
constexpr int InputsPerLine(WeightFormat f) {
  return f == WeightFormat::kBf16 ? 2 : f == WeightFormat::kInt8 ? 4 : 8;
}

// A PackedMatrix as plain pointers and sizes, for the instruction-set files: they call no C++
// library templates (not even shared_ptr::get), so no copy of those compiled with their flags
// can be the one the linker keeps for the portable files.
struct MatrixView {
  WeightFormat format = WeightFormat::kBf16;
  int group = 0;           // quantized formats
  int64_t rows_padded = 0;
  int64_t cols = 0;
  int64_t cols_padded = 0;
  int64_t lines = 0;       // 64-byte lines per row block
  int64_t groups = 0;      // groups per row (quantized formats)
  const uint8_t* data = nullptr;
  const float* scales = nullptr;   // [rows_padded / 16][groups][16]
  const int32_t* sums = nullptr;   // [rows_padded / 16][groups][16]
};
MatrixView View(const PackedMatrix& m);

// 64-byte aligned scratch of at least `bytes` (grows scratch.bytes; earlier pointers die).
uint8_t* ScratchBytes(Scratch& scratch, size_t bytes);

// Quantizes rows t < n of x (row stride ld, `cols` values, then zeros up to cols_padded) per
// group as expert_ffn.h describes: xu [n][cols_padded] bytes, sx [n][cols_padded / group].
// The AVX-512 version gives the same bytes and scales as the portable one.
void QuantizeActivations(const float* x, int64_t n, int64_t ld, int64_t cols,
                         int64_t cols_padded, int group, uint8_t* xu, float* sx);
void QuantizeActivationsAvx512(const float* x, int64_t n, int64_t ld, int64_t cols,
                               int64_t cols_padded, int group, uint8_t* xu, float* sx);

}  // namespace moemesh::cpu::internal
