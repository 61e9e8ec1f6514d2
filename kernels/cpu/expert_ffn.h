// CPU kernels for routed experts: one expert's FFN, y[t] += w[t] * down(silu(gate x_t) * up x_t),
// over the tokens routed to it, with weights repacked once at load into the layout the kernels
// stream (PackedExpert). Paths chosen at run time from the CPU's features: AMX tiles when an
// expert has many tokens, AVX-512 (BF16 / VNNI dot products) for few, AVX2+FMA without
// AVX-512, scalar everywhere. Raw pointers and sizes; nothing here knows about models, threads
// or the network: callers split work into (expert, output rows) tasks. Thread-safe: packed
// weights are read-only; each call writes only its own output rows and scratch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moemesh::cpu {

// Weight formats, chosen at load. Quantized formats are symmetric per (output row, group of
// `group` consecutive inputs): w = scale * q, q in [-127, 127] (int8) or [-8, 7] (int4).
enum class WeightFormat { kBf16, kInt8, kInt4 };

struct FormatSpec {
  WeightFormat format = WeightFormat::kBf16;
  int group = 32;  // int8/int4: 32 or 128; ignored for bf16
  std::string Name() const;  // "bf16", "int8-g32", "int4-g128"
};
absl::StatusOr<FormatSpec> ParseFormat(const std::string& name);  // the names above

// Rows are packed in blocks of kRowBlock output rows (zero-padded); inputs are padded with zeros
// to a multiple of the group (and of 64). Within a row block, consecutive inputs are
// interleaved so that one 64-byte line holds kRowBlock rows x (2 bf16 | 4 int8 | 8 int4):
//   bf16: line (b, p)  = rows 16b..16b+15, inputs 2p, 2p+1     (AVX-512 BF16 / AMX BF16 "VNNI")
//   int8: line (b, q)  = rows 16b..16b+15, inputs 4q..4q+3     (VNNI / AMX INT8)
//   int4: line (b, o)  = rows 16b..16b+15, inputs 8o..8o+7, per row 4 bytes: byte j holds
//         input 8o+j in its low nibble and input 8o+4+j in its high nibble (two's complement)
// Lines are stored row block by row block: [n_blocks][k_padded / per_line][64 bytes].
// Scales (quantized formats): float [n_blocks][k_padded / group][kRowBlock].
// Group sums (quantized formats): int32 [n_blocks][k_padded / group][kRowBlock] = sum of the
// group's q values per row (for the unsigned-activation offset of VNNI and AMX).
inline constexpr int kRowBlock = 16;

struct PackedMatrix {
  FormatSpec spec;
  int64_t rows = 0;      // n (outputs)
  int64_t cols = 0;      // k (inputs)
  int64_t rows_padded = 0;
  int64_t cols_padded = 0;
  std::shared_ptr<uint8_t> data;   // 64-byte aligned
  size_t data_bytes = 0;
  std::shared_ptr<float> scales;   // quantized formats
  std::shared_ptr<int32_t> sums;   // quantized formats
  size_t bytes() const;            // all buffers
};

// Packs a row-major fp32 [rows, cols] matrix. `alloc` places the buffers (NUMA binding is the
// caller's; nullptr: aligned_alloc). Buffers from a custom `alloc` are handed to `dealloc` when
// the last PackedMatrix sharing them goes; with dealloc == nullptr they are never freed (an
// arena owns them). Sizes passed to both are multiples of 64. Quantization: per (row, group)
// scale = max|w| / 127 (int8) or / 7 (int4), q = round-to-nearest-even(w / scale), clamped;
// an all-zero group has scale 0. bf16 rounds to nearest even (common/dtype.h F32ToBf16).
// spec.group must be 32 or 128 for the quantized formats (ParseFormat checks text input).
using Allocator = void* (*)(size_t bytes, void* ctx);
using Deallocator = void (*)(void* p, size_t bytes, void* ctx);
PackedMatrix Pack(const float* w, int64_t rows, int64_t cols, const FormatSpec& spec,
                  Allocator alloc = nullptr, void* alloc_ctx = nullptr,
                  Deallocator dealloc = nullptr);
// The fp32 values the packed matrix stands for (dequantized), row-major [rows, cols]: the
// reference kernels compute with exactly these.
std::vector<float> Unpack(const PackedMatrix& m);

struct PackedExpert {
  PackedMatrix gate_up;  // [2I, H]: row block b < I/16 of gate, then the same rows of up, interleaved
                         // by row block: blocks 2j (gate rows 16j..) and 2j+1 (up rows 16j..).
                         // gate and up are each padded to Ip = round_up(I, 16) rows, so
                         // gate_up.rows == rows_padded == 2 * Ip and Unpack(gate_up) returns the
                         // rows in this interleaved order; UnpackExpert gives gate and up apart.
  PackedMatrix down;     // [H, I]
  int64_t hidden = 0;
  int64_t intermediate = 0;
  size_t bytes() const { return gate_up.bytes() + down.bytes(); }
};
PackedExpert PackExpert(const float* gate, const float* up, const float* down, int64_t hidden,
                        int64_t intermediate, const FormatSpec& spec, Allocator alloc = nullptr,
                        void* alloc_ctx = nullptr, Deallocator dealloc = nullptr);
// The fp32 values a packed expert stands for: gate, up [I, H] and down [H, I], row-major.
void UnpackExpert(const PackedExpert& e, std::vector<float>* gate, std::vector<float>* up,
                  std::vector<float>* down);

enum class CpuPath { kScalar, kAvx2, kAvx512, kAmx };
const char* PathName(CpuPath path);
bool PathSupported(CpuPath path);          // CPU features (and, for AMX, the OS granting tiles)
std::vector<CpuPath> SupportedPaths();

// AMX thresholds: from how many tokens per expert the AMX path beats AVX-512, one per weight
// format (bf16 splits activations in two, int4 unpacks its weights first, so they differ; the
// group size shares its format's value). Process-wide, kDefaultAmxThreshold until set: the
// expert pool measures its format's at load (path_threshold.h) or takes a configured value.
inline constexpr int64_t kDefaultAmxThreshold = 16;
inline constexpr int64_t kNeverTokens = INT64_MAX;  // a threshold that is never reached
// The path for an expert of `format` with `tokens` tokens: AMX at or above the format's
// threshold, else AVX-512, AVX2, scalar (the best supported).
CpuPath ChoosePath(const FormatSpec& format, int64_t tokens);
void SetAmxThreshold(WeightFormat format, int64_t tokens);  // tokens >= 1 (MM_CHECK)
int64_t AmxThreshold(WeightFormat format);
const char* WeightFormatName(WeightFormat format);  // "bf16", "int8", "int4"

// Per-thread scratch (activations quantized to u8, intermediate activations, tile buffers).
// `bytes` is what one GateUp/Down call uses; `h` holds ExpertFfn's intermediate activations.
struct Scratch {
  std::vector<uint8_t> bytes;
  std::vector<float> h;
};

// Activation quantization of the AVX-512 (VNNI) and AMX int8/int4 paths, per (token, group of
// the weight format): sx = max|x| / 127, xu = round-to-nearest-even(x / sx) + 128 in [1, 255]
// (128 for an all-zero group, sx = 0). A u8 x s8 dot product over a group then gives
// sum(xu * q) = sum((x/sx) * q) + 128 * group_sum, and the kernels subtract 128 * group_sum
// (PackedMatrix::sums) before scaling by scale_w * sx.

// Phase 1 for intermediate columns [i_begin, i_end) (multiples of kRowBlock, or i_end == I):
// h[t, i] = silu(gate_i . x_t) * (up_i . x_t) for t < n. x: [n, hidden] fp32; h: [n, I] fp32.
// Ranges, n >= 0 and a supported path are checked (MM_CHECK: they are caller bugs). Results do
// not depend on how the range is split.
void GateUp(const PackedExpert& e, const float* x, int64_t n, int64_t i_begin, int64_t i_end,
            float* h, CpuPath path, Scratch& scratch);
// Phase 2 for output columns [o_begin, o_end) (multiples of kRowBlock, or o_end == H):
// y[t, o] += weight[t] * (down_o . h_t). y: [n, hidden] fp32; weight == nullptr means 1.
void Down(const PackedExpert& e, const float* h, int64_t n, const float* weight, int64_t o_begin,
          int64_t o_end, float* y, CpuPath path, Scratch& scratch);
// Both phases on one thread (tests, small experts).
void ExpertFfn(const PackedExpert& e, const float* x, int64_t n, const float* weight, float* y,
               CpuPath path, Scratch& scratch);

}  // namespace moemesh::cpu
