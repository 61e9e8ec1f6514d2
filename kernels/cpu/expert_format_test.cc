// Packing of expert weights: names, the exact byte layout on tiny hand-checked matrices, the
// gate/up interleaving, allocators, and the quantization error of each format against fp32.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/expert_ffn.h"

namespace moemesh::cpu {
namespace {

using ::testing::HasSubstr;

TEST(ExpertFormatTest, NamesRoundTrip) {
  for (const char* name : {"bf16", "int8-g32", "int8-g128", "int4-g32", "int4-g128"}) {
    auto spec = ParseFormat(name);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_EQ(spec->Name(), name);
  }
  EXPECT_EQ(ParseFormat("int8-g128")->format, WeightFormat::kInt8);
  EXPECT_EQ(ParseFormat("int4-g32")->group, 32);
}

TEST(ExpertFormatTest, UnknownNameListsValidOnes) {
  auto spec = ParseFormat("int8-g64");
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("\"int8-g64\""));
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("bf16, int8-g32, int8-g128"));
}

std::vector<uint8_t> Bytes(const PackedMatrix& m) {
  return std::vector<uint8_t>(m.data.get(), m.data.get() + m.data_bytes);
}

TEST(ExpertFormatTest, Bf16LayoutByHand) {
  // 1 + 2^-8 ties to even (1.0); 1 + 3 * 2^-8 ties to even (1 + 2^-6).
  const float w[2 * 3] = {1.0f, -2.0f, 1.0f + 0x1p-8f, 0.5f, 1.0f + 3 * 0x1p-8f, 3.0f};
  const PackedMatrix m = Pack(w, 2, 3, FormatSpec{WeightFormat::kBf16, 32});
  EXPECT_EQ(m.rows_padded, 16);
  EXPECT_EQ(m.cols_padded, 64);
  ASSERT_EQ(m.data_bytes, 32u * 64u);  // one row block, 64 inputs / 2 per line
  EXPECT_EQ(reinterpret_cast<uintptr_t>(m.data.get()) % 64, 0u);
  std::vector<uint8_t> expected(m.data_bytes, 0);
  const uint8_t line0[8] = {0x80, 0x3f, 0x00, 0xc0, 0x00, 0x3f, 0x82, 0x3f};
  const uint8_t line1[8] = {0x80, 0x3f, 0x00, 0x00, 0x40, 0x40, 0x00, 0x00};
  std::memcpy(expected.data(), line0, 8);
  std::memcpy(expected.data() + 64, line1, 8);
  EXPECT_EQ(Bytes(m), expected);
  EXPECT_EQ(m.scales, nullptr);
  EXPECT_EQ(m.bytes(), m.data_bytes);
}

TEST(ExpertFormatTest, Int8LayoutByHand) {
  std::vector<float> w(2 * 40, 0.0f);  // row 1 stays zero
  w[0] = 63.5f;   // group 0: scale 0.5 -> q 127
  w[1] = -32.0f;  // q -64
  w[2] = 0.5f;    // q 1
  w[4] = 1.0f;    // q 2
  w[32] = -127.0f;  // group 1: scale 1 -> q -127
  w[33] = 3.0f;     // q 3
  w[39] = 50.5f;    // ties to even: q 50
  const PackedMatrix m = Pack(w.data(), 2, 40, FormatSpec{WeightFormat::kInt8, 32});
  EXPECT_EQ(m.cols_padded, 64);
  ASSERT_EQ(m.data_bytes, 16u * 64u);
  std::vector<uint8_t> expected(m.data_bytes, 0);
  expected[0] = 127;
  expected[1] = 0xc0;
  expected[2] = 1;
  expected[64] = 2;
  expected[8 * 64 + 0] = 0x81;
  expected[8 * 64 + 1] = 3;
  expected[9 * 64 + 3] = 50;
  EXPECT_EQ(Bytes(m), expected);
  // scales / sums: [block][group][row]
  EXPECT_EQ(m.scales.get()[0], 0.5f);
  EXPECT_EQ(m.scales.get()[16], 1.0f);
  EXPECT_EQ(m.scales.get()[1], 0.0f);
  EXPECT_EQ(m.sums.get()[0], 127 - 64 + 1 + 2);
  EXPECT_EQ(m.sums.get()[16], -127 + 3 + 50);
  EXPECT_EQ(m.sums.get()[17], 0);
  EXPECT_EQ(m.bytes(), m.data_bytes + 16 * 2 * 8);
  const std::vector<float> back = Unpack(m);
  EXPECT_EQ(back[39], 50.0f);
  EXPECT_EQ(back[1], -32.0f);
}

TEST(ExpertFormatTest, Int4LayoutByHand) {
  const int q[10] = {1, 2, 3, -1, -7, 5, 6, 7, -3, 4};
  std::vector<float> w(2 * 10, 0.0f);  // row 0 zero, row 1 = 0.5 * q (scale 3.5 / 7)
  for (int c = 0; c < 10; ++c) w[10 + c] = 0.5f * q[c];
  const PackedMatrix m = Pack(w.data(), 2, 10, FormatSpec{WeightFormat::kInt4, 32});
  ASSERT_EQ(m.data_bytes, 8u * 64u);  // 64 inputs / 8 per line
  std::vector<uint8_t> expected(m.data_bytes, 0);
  // row 1 -> bytes 4..7 of each line; byte j: low nibble input 8o+j, high nibble input 8o+4+j
  const uint8_t line0[4] = {0x91, 0x52, 0x63, 0x7f};
  std::memcpy(expected.data() + 4, line0, 4);
  expected[64 + 4] = 0x0d;
  expected[64 + 5] = 0x04;
  EXPECT_EQ(Bytes(m), expected);
  EXPECT_EQ(m.scales.get()[1], 0.5f);
  EXPECT_EQ(m.sums.get()[1], 17);
  EXPECT_EQ(Unpack(m), w);
}

TEST(ExpertFormatTest, PackExpertInterleavesGateAndUpBlocks) {
  const int64_t hidden = 8, inter = 20;  // 20 -> two row blocks each, the second half padding
  std::vector<float> gate(inter * hidden), up(inter * hidden), down(hidden * inter);
  for (int64_t i = 0; i < inter; ++i) {
    for (int64_t k = 0; k < hidden; ++k) {
      gate[i * hidden + k] = static_cast<float>(i + 1);
      up[i * hidden + k] = -static_cast<float>(i + 1);
    }
  }
  for (size_t i = 0; i < down.size(); ++i) down[i] = static_cast<float>(i % 7) - 3.0f;
  for (const char* name : {"bf16", "int8-g32", "int4-g128"}) {
    SCOPED_TRACE(name);
    const FormatSpec spec = *ParseFormat(name);
    const PackedExpert e = PackExpert(gate.data(), up.data(), down.data(), hidden, inter, spec);
    EXPECT_EQ(e.gate_up.rows, 64);
    EXPECT_EQ(e.down.rows, hidden);
    EXPECT_EQ(e.down.cols, inter);
    std::vector<float> g, u, d;
    UnpackExpert(e, &g, &u, &d);
    if (spec.format != WeightFormat::kInt4) {  // int4 cannot hold 20 levels exactly
      EXPECT_EQ(g, gate);
      EXPECT_EQ(u, up);
    }
    EXPECT_EQ(d, Unpack(e.down));
    const std::vector<float> rows = Unpack(e.gate_up);
    ASSERT_EQ(rows.size(), 64u * hidden);
    EXPECT_EQ(rows[0 * hidden], g[0]);           // block 0: gate rows 0..15
    EXPECT_EQ(rows[16 * hidden], u[0]);          // block 1: up rows 0..15
    EXPECT_EQ(rows[33 * hidden], g[17 * hidden]);  // block 2: gate rows 16..19
    EXPECT_EQ(rows[49 * hidden], u[17 * hidden]);  // block 3: up rows 16..19
    EXPECT_EQ(rows[36 * hidden], 0.0f);            // padding row
  }
}

struct Arena {
  int allocs = 0;
  int frees = 0;
  size_t bytes = 0;
};

TEST(ExpertFormatTest, CustomAllocatorGetsEveryBufferBack) {
  Arena arena;
  std::vector<float> w(20 * 70, 0.25f);
  {
    const PackedMatrix m = Pack(
        w.data(), 20, 70, FormatSpec{WeightFormat::kInt8, 32},
        [](size_t bytes, void* ctx) -> void* {
          auto* a = static_cast<Arena*>(ctx);
          ++a->allocs;
          a->bytes += bytes;
          EXPECT_EQ(bytes % 64, 0u);
          return std::aligned_alloc(64, bytes);
        },
        &arena,
        [](void* p, size_t bytes, void* ctx) {
          ++static_cast<Arena*>(ctx)->frees;
          std::free(p);
        });
    EXPECT_EQ(arena.allocs, 3);  // data, scales, sums
    EXPECT_GE(arena.bytes, m.bytes());
    EXPECT_EQ(arena.frees, 0);
  }
  EXPECT_EQ(arena.frees, 3);
}

// Pack's own error against the fp32 weights (Gaussian, one outlier-free matrix), relative RMS.
TEST(ExpertFormatTest, QuantizationErrorOfEachFormat) {
  const int64_t rows = 64, cols = 4096;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> w(rows * cols);
  for (float& v : w) v = normal(rng);
  struct Bound {
    const char* name;
    double max_rel_rms;
  };
  // Measured (seed 7): bf16 0.00166, int8-g32 0.00536, int8-g128 0.00652, int4-g32 0.0973,
  // int4-g128 0.118 (absmax scales on Gaussian groups: step / sqrt(12) relative to sigma).
  for (const Bound& b : {Bound{"bf16", 0.002}, Bound{"int8-g32", 0.0065},
                         Bound{"int8-g128", 0.008}, Bound{"int4-g32", 0.115},
                         Bound{"int4-g128", 0.14}}) {
    const PackedMatrix m = Pack(w.data(), rows, cols, *ParseFormat(b.name));
    const std::vector<float> back = Unpack(m);
    double err = 0, ref = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      err += (back[i] - w[i]) * static_cast<double>(back[i] - w[i]);
      ref += w[i] * static_cast<double>(w[i]);
      if (m.spec.format == WeightFormat::kBf16) {
        ASSERT_LE(std::fabs(back[i] - w[i]), std::fabs(w[i]) * 0x1p-8f) << i;
      }
    }
    const double rel = std::sqrt(err / ref);
    std::printf("weight quantization %-10s relative RMS error %.5f\n", b.name, rel);
    EXPECT_LT(rel, b.max_rel_rms) << b.name;
  }
}

}  // namespace
}  // namespace moemesh::cpu
