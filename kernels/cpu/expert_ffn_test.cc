// Conformance of every CPU expert-FFN path against ref::ExpertFfn on the Unpack()ed weights:
// every path x format x shape x token count, NaN/Inf checks, a tolerance per (path, format),
// split ranges against one call, and the activation quantization shared by the VNNI/AMX paths.
#include <cmath>
#include <cstdio>
#include <map>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/expert_ffn.h"
#include "kernels/cpu/test_random.h"
#include "kernels/cpu/expert_ffn_paths.h"
#include "kernels/ref/expert_ffn_ref.h"

namespace moemesh::cpu {

void PrintTo(CpuPath path, std::ostream* os) { *os << PathName(path); }

namespace {

constexpr CpuPath kAllPaths[] = {CpuPath::kScalar, CpuPath::kAvx2, CpuPath::kAvx512,
                                 CpuPath::kAmx};

const char* Requirements(CpuPath path) {
  switch (path) {
    case CpuPath::kScalar:
      return "nothing";
    case CpuPath::kAvx2:
      return "AVX2, FMA and F16C";
    case CpuPath::kAvx512:
      return "AVX-512 F/DQ/BW/VL/BF16/VNNI with OS ZMM state";
    case CpuPath::kAmx:
      return "AMX-TILE/BF16/INT8 and the OS granting tile data (arch_prctl)";
  }
  return "?";
}

#define MM_SKIP_IF_UNSUPPORTED(path)                                                    \
  if (!PathSupported(path)) {                                                           \
    GTEST_SKIP() << "path " << PathName(path) << " not supported here: needs "          \
                 << Requirements(path);                                                 \
  }

// Paths that quantize activations to int8 for quantized weights (VNNI / AMX INT8).
bool QuantizesActivations(CpuPath path, const FormatSpec& spec) {
  return spec.format != WeightFormat::kBf16 && (path == CpuPath::kAvx512 || path == CpuPath::kAmx);
}

// Error bounds relative to the RMS of the reference output (the expert's contribution), per
// format, measured first (the summary this test prints) and given ~1.4x headroom. With fp32
// activations only the summation order differs (measured <= 2e-6 RMS, 3e-5 max). With int8
// activations (per group of the weight format, offset u8) the activation rounding of x and h
// dominates; measured (seeded data with 8-sigma outliers in x):
//   int8-g32 2.2e-2 RMS / 0.19 max, int8-g128 3.6e-2 / 0.28,
//   int4-g32 1.8e-2 / 0.20,         int4-g128 3.0e-2 / 0.24.
// (The weights' own quantization error is ExpertFormatTest.QuantizationErrorOfEachFormat's.)
struct Tolerance {
  double rel_rms;
  double rel_max;
};
Tolerance ToleranceFor(CpuPath path, const FormatSpec& spec) {
  if (!QuantizesActivations(path, spec)) return {1e-5, 1e-4};
  if (spec.group == 32) return {0.03, 0.3};
  return {0.05, 0.4};
}

struct Case {
  FormatSpec spec;
  int64_t hidden;
  int64_t inter;
  int64_t n;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.spec.Name() << " hidden " << c.hidden << " intermediate " << c.inter << " tokens "
      << c.n;
}

std::vector<Case> Cases() {
  struct Shape {
    int64_t hidden, inter;
    std::vector<int64_t> tokens;
  };
  const Shape shapes[] = {
      {96, 48, {1, 3, 17, 300}},   {96, 1536, {1, 3, 17, 300}}, {4096, 48, {1, 3, 17, 300}},
      {4096, 1536, {1, 3, 17}},    {100, 40, {1, 9, 17}},  // awkward: padding everywhere
  };
  std::vector<Case> cases;
  for (const Shape& s : shapes) {
    for (const char* f : {"bf16", "int8-g32", "int8-g128", "int4-g32", "int4-g128"}) {
      for (int64_t n : s.tokens) cases.push_back({*ParseFormat(f), s.hidden, s.inter, n});
    }
  }
  return cases;
}

using test_util::Random;

// Weights, packing and reference results are shared by the consecutive tests of one case.
struct Fixture {
  int64_t hidden = 0, inter = 0;
  std::string format;
  int64_t n = -1;
  std::vector<float> gate, up, down;  // fp32 originals
  PackedExpert packed;
  std::vector<float> qgate, qup, qdown;  // Unpack()ed
  std::vector<float> x, weight, y0, expected;
};

const Fixture& Prepare(const Case& c) {
  static Fixture f;
  if (f.hidden != c.hidden || f.inter != c.inter) {
    f = Fixture{};
    f.hidden = c.hidden;
    f.inter = c.inter;
    const float sg = 1.0f / std::sqrt(static_cast<float>(c.hidden));
    f.gate = Random(c.inter * c.hidden, sg, 1);
    f.up = Random(c.inter * c.hidden, sg, 2);
    f.down = Random(c.hidden * c.inter, 1.0f / std::sqrt(static_cast<float>(c.inter)), 3);
  }
  if (f.format != c.spec.Name()) {
    f.format = c.spec.Name();
    f.n = -1;
    f.packed = PackExpert(f.gate.data(), f.up.data(), f.down.data(), c.hidden, c.inter, c.spec);
    UnpackExpert(f.packed, &f.qgate, &f.qup, &f.qdown);
  }
  if (f.n != c.n) {
    f.n = c.n;
    f.x = Random(c.n * c.hidden, 1.0f, 4);
    for (int64_t t = 0; t < c.n; t += 5) f.x[t * c.hidden + t % c.hidden] = 8.0f;  // outliers
    f.weight = Random(c.n, 0.3f, 5);
    f.y0 = Random(c.n * c.hidden, 0.1f, 6);
    f.expected = f.y0;
    ref::ExpertFfn(f.qgate.data(), f.qup.data(), f.qdown.data(), c.hidden, c.inter, f.x.data(),
                   c.n, f.weight.data(), f.expected.data());
  }
  return f;
}

// Largest errors seen per (path, format), printed at the end for the docs.
std::map<std::string, std::pair<double, double>>& Measured() {
  static std::map<std::string, std::pair<double, double>> m;
  return m;
}

class PrintMeasured : public ::testing::Environment {
 public:
  void TearDown() override {
    for (const auto& [key, err] : Measured()) {
      std::printf("measured %-20s max relative RMS error %.2e, max relative max error %.2e\n",
                  key.c_str(), err.first, err.second);
    }
  }
};
const auto* const kPrintMeasured = ::testing::AddGlobalTestEnvironment(new PrintMeasured);

class ExpertFfnConformance : public ::testing::TestWithParam<std::tuple<Case, CpuPath>> {};

TEST_P(ExpertFfnConformance, MatchesReference) {
  const auto& [c, path] = GetParam();
  MM_SKIP_IF_UNSUPPORTED(path);
  const Fixture& f = Prepare(c);
  std::vector<float> y = f.y0;
  Scratch scratch;
  ExpertFfn(f.packed, f.x.data(), c.n, f.weight.data(), y.data(), path, scratch);
  double err2 = 0, ref2 = 0, err_max = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    ASSERT_TRUE(std::isfinite(y[i])) << "output " << i << " is " << y[i];
    const double d = static_cast<double>(y[i]) - f.expected[i];
    const double r = static_cast<double>(f.expected[i]) - f.y0[i];
    err2 += d * d;
    ref2 += r * r;
    err_max = std::max(err_max, std::fabs(d));
  }
  const double rms = std::sqrt(ref2 / y.size());
  ASSERT_GT(rms, 0.0);
  const double rel_rms = std::sqrt(err2 / y.size()) / rms;
  const double rel_max = err_max / rms;
  auto& m = Measured()[absl::StrCat(PathName(path), " ", c.spec.Name())];
  m.first = std::max(m.first, rel_rms);
  m.second = std::max(m.second, rel_max);
  const Tolerance tol = ToleranceFor(path, c.spec);
  EXPECT_LE(rel_rms, tol.rel_rms);
  EXPECT_LE(rel_max, tol.rel_max);
}

std::string CaseName(const ::testing::TestParamInfo<std::tuple<Case, CpuPath>>& info) {
  const auto& [c, path] = info.param;
  std::string name = absl::StrCat(c.spec.Name(), "_h", c.hidden, "_i", c.inter, "_n", c.n, "_",
                                  PathName(path));
  for (char& ch : name) {
    if (ch == '-') ch = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(AllPaths, ExpertFfnConformance,
                         ::testing::Combine(::testing::ValuesIn(Cases()),
                                            ::testing::ValuesIn(kAllPaths)),
                         CaseName);

// GateUp and Down over sub-ranges, assembled, give exactly what one call gives.
class ExpertFfnSplit : public ::testing::TestWithParam<CpuPath> {};

TEST_P(ExpertFfnSplit, SubRangesEqualOneCall) {
  const CpuPath path = GetParam();
  MM_SKIP_IF_UNSUPPORTED(path);
  struct Split {
    int64_t hidden, inter;
    std::vector<int64_t> i_cuts, o_cuts;
  };
  for (const Split& s : {Split{96, 48, {0, 16, 32, 48}, {0, 32, 96}},
                         Split{100, 40, {0, 16, 40}, {0, 48, 64, 100}}}) {
    for (const char* name : {"bf16", "int8-g32", "int4-g128"}) {
      for (int64_t n : {5, 11}) {
        SCOPED_TRACE(absl::StrCat(name, " h", s.hidden, " i", s.inter, " n", n));
        const auto gate = Random(s.inter * s.hidden, 0.1f, 11);
        const auto up = Random(s.inter * s.hidden, 0.1f, 12);
        const auto down = Random(s.hidden * s.inter, 0.1f, 13);
        const auto x = Random(n * s.hidden, 1.0f, 14);
        const auto weight = Random(n, 1.0f, 15);
        const PackedExpert e = PackExpert(gate.data(), up.data(), down.data(), s.hidden, s.inter,
                                          *ParseFormat(name));
        Scratch scratch;
        std::vector<float> h_one(n * s.inter), h_split(n * s.inter, -1.0f);
        GateUp(e, x.data(), n, 0, s.inter, h_one.data(), path, scratch);
        for (size_t k = 0; k + 1 < s.i_cuts.size(); ++k) {
          GateUp(e, x.data(), n, s.i_cuts[k], s.i_cuts[k + 1], h_split.data(), path, scratch);
        }
        EXPECT_EQ(h_split, h_one);
        std::vector<float> y_one(n * s.hidden, 0.5f), y_split(n * s.hidden, 0.5f);
        Down(e, h_one.data(), n, weight.data(), 0, s.hidden, y_one.data(), path, scratch);
        for (size_t k = 0; k + 1 < s.o_cuts.size(); ++k) {
          Down(e, h_one.data(), n, weight.data(), s.o_cuts[k], s.o_cuts[k + 1], y_split.data(),
               path, scratch);
        }
        EXPECT_EQ(y_split, y_one);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllPaths, ExpertFfnSplit, ::testing::ValuesIn(kAllPaths),
                         [](const auto& info) { return std::string(PathName(info.param)); });

TEST(ExpertFfnTest, ZeroTokensAndNullWeightMeansOne) {
  const int64_t hidden = 64, inter = 32, n = 2;
  const auto gate = Random(inter * hidden, 0.1f, 21);
  const auto up = Random(inter * hidden, 0.1f, 22);
  const auto down = Random(hidden * inter, 0.1f, 23);
  const auto x = Random(n * hidden, 1.0f, 24);
  const PackedExpert e = PackExpert(gate.data(), up.data(), down.data(), hidden, inter,
                                    FormatSpec{WeightFormat::kBf16, 32});
  for (CpuPath path : SupportedPaths()) {
    SCOPED_TRACE(PathName(path));
    Scratch scratch;
    std::vector<float> y(n * hidden, 0.0f), y_ones(n * hidden, 0.0f);
    ExpertFfn(e, x.data(), 0, nullptr, y.data(), path, scratch);
    EXPECT_EQ(y, std::vector<float>(n * hidden, 0.0f));
    const float ones[n] = {1.0f, 1.0f};
    ExpertFfn(e, x.data(), n, nullptr, y.data(), path, scratch);
    ExpertFfn(e, x.data(), n, ones, y_ones.data(), path, scratch);
    EXPECT_EQ(y, y_ones);
  }
}

// One AMX threshold per weight format (group sizes share it): ChoosePath follows each one and
// never picks AMX where it is not supported.
TEST(ExpertFfnTest, ChoosePathFollowsPerFormatThresholds) {
  const WeightFormat kFormats[] = {WeightFormat::kBf16, WeightFormat::kInt8, WeightFormat::kInt4};
  int64_t saved[3];
  for (WeightFormat f : kFormats) {
    saved[static_cast<int>(f)] = AmxThreshold(f);
    EXPECT_EQ(AmxThreshold(f), kDefaultAmxThreshold) << WeightFormatName(f);
  }
  SetAmxThreshold(WeightFormat::kBf16, 4);
  SetAmxThreshold(WeightFormat::kInt8, 9);
  SetAmxThreshold(WeightFormat::kInt4, kNeverTokens);
  EXPECT_EQ(AmxThreshold(WeightFormat::kBf16), 4);
  EXPECT_EQ(AmxThreshold(WeightFormat::kInt8), 9);
  EXPECT_EQ(AmxThreshold(WeightFormat::kInt4), kNeverTokens);
  const bool amx = PathSupported(CpuPath::kAmx);
  const CpuPath below = ChoosePath(*ParseFormat("bf16"), 1);  // the best non-AMX path
  EXPECT_NE(below, CpuPath::kAmx);
  EXPECT_TRUE(PathSupported(below));
  if (PathSupported(CpuPath::kAvx512)) {
    EXPECT_EQ(below, CpuPath::kAvx512);
  }
  struct Expect {
    const char* format;
    int64_t tokens;
    bool amx;  // where AMX is supported
  };
  for (const Expect& e : {Expect{"bf16", 3, false}, Expect{"bf16", 4, true},
                          Expect{"bf16", 1000, true}, Expect{"int8-g32", 8, false},
                          Expect{"int8-g128", 8, false}, Expect{"int8-g32", 9, true},
                          Expect{"int8-g128", 9, true}, Expect{"int4-g32", 9, false},
                          Expect{"int4-g128", int64_t{1} << 40, false}}) {
    const CpuPath p = ChoosePath(*ParseFormat(e.format), e.tokens);
    EXPECT_EQ(p, e.amx && amx ? CpuPath::kAmx : below) << e.format << " tokens " << e.tokens;
  }
  for (WeightFormat f : kFormats) SetAmxThreshold(f, saved[static_cast<int>(f)]);
  const auto paths = SupportedPaths();
  ASSERT_FALSE(paths.empty());
  EXPECT_EQ(paths.front(), CpuPath::kScalar);
  std::string names;
  for (CpuPath p : paths) absl::StrAppend(&names, PathName(p), " ");
  std::printf("supported paths: %s\n", names.c_str());
}

// The activation quantization of the VNNI/AMX paths: within half a step of x, and the AVX-512
// version byte-identical to the portable one.
TEST(ExpertFfnTest, ActivationQuantization) {
  const int64_t n = 3, cols = 100, ld = 104;
  auto x = Random(n * ld, 1.0f, 31);
  for (int64_t c = 64; c < 96; ++c) x[1 * ld + c] = 0.0f;  // an all-zero group
  x[2 * ld + 5] = -20.0f;
  for (int group : {32, 128}) {
    const int64_t kp = 128;
    const int64_t groups = kp / group;
    std::vector<uint8_t> xu(n * kp);
    std::vector<float> sx(n * groups);
    internal::QuantizeActivations(x.data(), n, ld, cols, kp, group, xu.data(), sx.data());
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t c = 0; c < kp; ++c) {
        const float s = sx[t * groups + c / group];
        const uint8_t q = xu[t * kp + c];
        ASSERT_GE(q, 1);
        if (c >= cols) {
          EXPECT_EQ(q, 128) << c;
          continue;
        }
        EXPECT_LE(std::fabs(s * (q - 128) - x[t * ld + c]), 0.5f * s * 1.0001f + 1e-30f) << c;
      }
    }
    EXPECT_EQ(sx[1 * groups + 64 / group] == 0.0f, group == 32);
    if (PathSupported(CpuPath::kAvx512)) {
      std::vector<uint8_t> xu2(n * kp, 0);
      std::vector<float> sx2(n * groups, -1.0f);
      internal::QuantizeActivationsAvx512(x.data(), n, ld, cols, kp, group, xu2.data(),
                                          sx2.data());
      EXPECT_EQ(xu2, xu);
      EXPECT_EQ(sx2, sx);
    }
  }
}

}  // namespace
}  // namespace moemesh::cpu
