// The AMX path of the expert FFN against the fp32 reference (ref::ExpertFfn on the Unpack()ed
// weights) for every weight format at awkward sizes, and split ranges against whole ones.
// Skipped, with the reason, on CPUs or kernels without AMX.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/expert_ffn.h"
#include "kernels/ref/expert_ffn_ref.h"

namespace moemesh::cpu {
namespace {

struct Case {
  const char* format;
  int64_t hidden;
  int64_t inter;
  int64_t tokens;
};

// Allowed error against the reference, relative to the root mean square of what the FFN adds to
// y: `norm` for the root mean square of the error, `max` for its largest element. bf16: the
// hi/lo split leaves ~2^-16 of each activation. Quantized formats: the weights are compared as
// the reference sees them (dequantized), so what remains is the activations' per-group 8-bit
// rounding (x and h), the same as the AVX-512 path's; bounds are ~2x the largest measured.
struct Tolerance {
  double norm;
  double max;
};
Tolerance TolFor(const std::string& format) {
  if (format == "bf16") return {2e-5, 2e-4};  // measured (emulated tiles) 6e-6, 6e-5
  return {3e-2, 0.4};                           // measured 0.016, 0.19
}

std::vector<float> Random(size_t n, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (float& f : v) f = d(rng);
  return v;
}

struct Expert {
  PackedExpert packed;
  std::vector<float> gate, up, down;  // what the packed weights stand for
};

Expert MakeExpert(const FormatSpec& spec, int64_t hidden, int64_t inter, std::mt19937& rng) {
  const std::vector<float> gate = Random(inter * hidden, 1.0f / std::sqrt(float(hidden)), rng);
  const std::vector<float> up = Random(inter * hidden, 1.0f / std::sqrt(float(hidden)), rng);
  const std::vector<float> down = Random(hidden * inter, 1.0f / std::sqrt(float(inter)), rng);
  Expert e;
  e.packed = PackExpert(gate.data(), up.data(), down.data(), hidden, inter, spec);
  UnpackExpert(e.packed, &e.gate, &e.up, &e.down);
  return e;
}

class AmxExpertFfnTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!PathSupported(CpuPath::kAmx)) {
      GTEST_SKIP() << "AMX path not supported here: the CPU lacks AMX-TILE/BF16/INT8 (with "
                      "AVX-512) or the OS refused tile data";
    }
  }
};

TEST_P(AmxExpertFfnTest, MatchesReference) {
  const Case c = GetParam();
  auto spec = ParseFormat(c.format);
  ASSERT_TRUE(spec.ok()) << spec.status();
  std::mt19937 rng(1234 + c.hidden + c.tokens);
  const Expert e = MakeExpert(*spec, c.hidden, c.inter, rng);
  const std::vector<float> x = Random(c.tokens * c.hidden, 1.0f, rng);
  std::vector<float> weight(c.tokens);
  for (int64_t t = 0; t < c.tokens; ++t) weight[t] = 0.25f + 0.5f * float(t % 4);
  // Start from a non-zero y: both sides accumulate into it.
  const std::vector<float> y0 = Random(c.tokens * c.hidden, 0.1f, rng);

  std::vector<float> want = y0;
  ref::ExpertFfn(e.gate.data(), e.up.data(), e.down.data(), c.hidden, c.inter, x.data(),
                 c.tokens, weight.data(), want.data());
  std::vector<float> got = y0;
  Scratch scratch;
  ExpertFfn(e.packed, x.data(), c.tokens, weight.data(), got.data(), CpuPath::kAmx, scratch);

  double sum_sq = 0.0;
  double err_sq = 0.0;
  double max_err = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << "y[" << i << "] = " << got[i];
    const double d = double(want[i]) - double(y0[i]);
    const double err = std::fabs(double(got[i]) - double(want[i]));
    sum_sq += d * d;
    err_sq += err * err;
    max_err = std::fmax(max_err, err);
  }
  ASSERT_GT(sum_sq, 0.0);
  const double norm_rel = std::sqrt(err_sq / sum_sq);
  const double rms = std::sqrt(sum_sq / double(want.size()));
  const double max_rel = max_err / rms;
  const Tolerance tol = TolFor(c.format);
  EXPECT_LE(norm_rel, tol.norm) << c.format << " hidden " << c.hidden << " inter " << c.inter
                                << " tokens " << c.tokens;
  EXPECT_LE(max_rel, tol.max) << c.format << " hidden " << c.hidden << " inter " << c.inter
                              << " tokens " << c.tokens;
  std::printf("%-10s h%-5lld i%-5lld n%-4lld err/rms: norm %.3g max %.3g\n", c.format,
              static_cast<long long>(c.hidden), static_cast<long long>(c.inter),
              static_cast<long long>(c.tokens), norm_rel, max_rel);
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (const char* f : {"bf16", "int8-g32", "int8-g128", "int4-g32", "int4-g128"}) {
    for (auto [h, i] : {std::pair<int64_t, int64_t>{96, 48}, {4096, 1536}}) {
      for (int64_t n : {1, 17, 300}) cases.push_back({f, h, i, n});
    }
  }
  return cases;
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  std::string name = std::string(info.param.format) + "_h" + std::to_string(info.param.hidden) +
                     "_i" + std::to_string(info.param.inter) + "_n" +
                     std::to_string(info.param.tokens);
  for (char& ch : name) {
    if (ch == '-') ch = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Formats, AmxExpertFfnTest, ::testing::ValuesIn(Cases()), CaseName);

// Any split of the ranges into row-block pieces (odd ones too) gives the same bits as one call.
class AmxSplitTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (!PathSupported(CpuPath::kAmx)) GTEST_SKIP() << "AMX path not supported here";
  }
};

TEST_P(AmxSplitTest, SplitRangesMatchWholeCall) {
  auto spec = ParseFormat(GetParam());
  ASSERT_TRUE(spec.ok()) << spec.status();
  constexpr int64_t kHidden = 224, kInter = 80, kTokens = 35;
  std::mt19937 rng(7);
  const Expert e = MakeExpert(*spec, kHidden, kInter, rng);
  const std::vector<float> x = Random(kTokens * kHidden, 1.0f, rng);
  Scratch scratch;

  std::vector<float> h_whole(kTokens * kInter), h_split(kTokens * kInter, -1.0f);
  GateUp(e.packed, x.data(), kTokens, 0, kInter, h_whole.data(), CpuPath::kAmx, scratch);
  for (auto [b, en] : {std::pair<int64_t, int64_t>{0, 16}, {16, 64}, {64, kInter}}) {
    GateUp(e.packed, x.data(), kTokens, b, en, h_split.data(), CpuPath::kAmx, scratch);
  }
  EXPECT_EQ(h_whole, h_split);

  std::vector<float> y_whole(kTokens * kHidden, 0.5f), y_split(kTokens * kHidden, 0.5f);
  Down(e.packed, h_whole.data(), kTokens, nullptr, 0, kHidden, y_whole.data(), CpuPath::kAmx,
       scratch);
  for (auto [b, en] : {std::pair<int64_t, int64_t>{0, 48}, {48, 80}, {80, 208}, {208, kHidden}}) {
    Down(e.packed, h_whole.data(), kTokens, nullptr, b, en, y_split.data(), CpuPath::kAmx,
         scratch);
  }
  EXPECT_EQ(y_whole, y_split);
}

INSTANTIATE_TEST_SUITE_P(Formats, AmxSplitTest,
                         ::testing::Values("bf16", "int8-g32", "int8-g128", "int4-g32",
                                           "int4-g128"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string name = info.param;
                           for (char& ch : name) {
                             if (ch == '-') ch = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace moemesh::cpu
