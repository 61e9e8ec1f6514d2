// MeasurePathThreshold, structurally: AVX-512 against scalar here (the routine is generic in its
// two paths; the expert pool runs it with AMX against AVX-512). No timing assertions: only that
// the result is shaped right and consistent with its own timings, the slice obeys its budget,
// and bad arguments get a Status. The threshold rule itself is checked on synthetic timings.
#include "kernels/cpu/path_threshold.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "kernels/cpu/expert_ffn.h"
#include "kernels/cpu/test_random.h"

namespace moemesh::cpu {
namespace {

using test_util::Random;

PackedExpert MakeExpert(int64_t hidden, int64_t inter, const char* format) {
  const auto gate = Random(inter * hidden, 0.1f, 1);
  const auto up = Random(inter * hidden, 0.1f, 2);
  const auto down = Random(hidden * inter, 0.1f, 3);
  return PackExpert(gate.data(), up.data(), down.data(), hidden, inter, *ParseFormat(format));
}

std::string TimingsText(const PathThreshold& r) {
  std::string s;
  for (const PathTiming& t : r.timings) {
    s += absl::StrFormat("%d: %.1f vs %.1f us; ", t.tokens, t.seconds_a * 1e6, t.seconds_b * 1e6);
  }
  return s;
}

// The result agrees with its own timings: `a` faster at from_tokens and every larger count, not
// faster at the count just below (or at the last count when never).
void ExpectConsistent(const PathThreshold& r, const PathThresholdOptions& o) {
  SCOPED_TRACE(TimingsText(r));
  ASSERT_EQ(r.timings.size(), o.tokens.size());
  size_t first = r.timings.size();
  for (size_t i = 0; i < r.timings.size(); ++i) {
    const PathTiming& t = r.timings[i];
    EXPECT_EQ(t.tokens, o.tokens[i]);
    EXPECT_TRUE(std::isfinite(t.seconds_a) && t.seconds_a > 0) << t.tokens << ": " << t.seconds_a;
    EXPECT_TRUE(std::isfinite(t.seconds_b) && t.seconds_b > 0) << t.tokens << ": " << t.seconds_b;
    if (t.tokens == r.from_tokens) first = i;
  }
  if (r.never()) {
    EXPECT_GE(r.timings.back().seconds_a, r.timings.back().seconds_b);
    return;
  }
  ASSERT_LT(first, r.timings.size()) << "from_tokens " << r.from_tokens << " was not measured";
  for (size_t i = first; i < r.timings.size(); ++i) {
    EXPECT_LT(r.timings[i].seconds_a, r.timings[i].seconds_b) << r.timings[i].tokens;
  }
  if (first > 0) {
    EXPECT_GE(r.timings[first - 1].seconds_a, r.timings[first - 1].seconds_b);
  }
}

TEST(PathThresholdTest, RuleOnSyntheticTimings) {
  EXPECT_EQ(ThresholdFromTimings({}), kNeverTokens);
  // a faster at 1 but not at 2: the rule wants a faster at every larger count.
  EXPECT_EQ(ThresholdFromTimings({{1, 1.0, 2.0}, {2, 3.0, 2.0}, {4, 1.0, 2.0}, {8, 1.0, 2.0}}), 4);
  EXPECT_EQ(ThresholdFromTimings({{1, 1.0, 2.0}, {2, 1.0, 2.0}}), 1);
  EXPECT_EQ(ThresholdFromTimings({{1, 1.0, 2.0}, {2, 2.0, 2.0}}), kNeverTokens);  // a tie loses
  EXPECT_EQ(ThresholdFromTimings({{1, 3.0, 2.0}, {16, 3.0, 2.0}, {32, 1.0, 2.0}}), 32);
  EXPECT_EQ(ThresholdFromTimings({{1, 1.0, 2.0}, {2, NAN, 2.0}, {4, 3.0, 2.0}}), kNeverTokens);
}

TEST(PathThresholdTest, Avx512AgainstScalarIsConsistent) {
  if (!PathSupported(CpuPath::kAvx512)) {
    GTEST_SKIP() << "path avx512 not supported here: needs AVX-512 F/DQ/BW/VL/BF16/VNNI";
  }
  // Awkward sizes (padding in rows and columns); a small budget so the slice is a part.
  for (const char* format : {"bf16", "int8-g32", "int4-g128"}) {
    SCOPED_TRACE(format);
    const int64_t hidden = 200, inter = 72;
    const PackedExpert e = MakeExpert(hidden, inter, format);
    PathThresholdOptions o;
    o.tokens = {1, 3, 8};
    o.reps = 3;
    o.max_weight_bytes = e.bytes() / 3;
    absl::StatusOr<PathThreshold> r =
        MeasurePathThreshold(e, CpuPath::kAvx512, CpuPath::kScalar, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->a, CpuPath::kAvx512);
    EXPECT_EQ(r->b, CpuPath::kScalar);
    ExpectConsistent(*r, o);
    EXPECT_GT(r->seconds, 0.0);
    // The slice: whole row blocks (or up to the end), within bounds, under the budget unless
    // one row block is already more.
    EXPECT_GE(r->gate_up_rows, 1);
    EXPECT_LE(r->gate_up_rows, inter);
    EXPECT_TRUE(r->gate_up_rows % kRowBlock == 0 || r->gate_up_rows == inter) << r->gate_up_rows;
    EXPECT_GE(r->down_rows, 1);
    EXPECT_LE(r->down_rows, hidden);
    EXPECT_TRUE(r->down_rows % kRowBlock == 0 || r->down_rows == hidden) << r->down_rows;
    EXPECT_LT(r->down_rows, hidden) << "the budget should cut Down's rows";
    EXPECT_GT(r->weight_bytes, 0u);
    EXPECT_LE(r->weight_bytes, e.bytes());
    std::printf("%s: avx512 faster than scalar from %s tokens (%lld+%lld rows, %zu bytes, "
                "%.1f ms): %s\n",
                format, r->never() ? "never" : std::to_string(r->from_tokens).c_str(),
                static_cast<long long>(r->gate_up_rows), static_cast<long long>(r->down_rows),
                r->weight_bytes, r->seconds * 1e3, TimingsText(*r).c_str());

    // Budget 0: the whole expert.
    o.max_weight_bytes = 0;
    o.tokens = {2};
    o.reps = 1;
    r = MeasurePathThreshold(e, CpuPath::kScalar, CpuPath::kAvx512, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->gate_up_rows, inter);
    EXPECT_EQ(r->down_rows, hidden);
    ExpectConsistent(*r, o);
  }
}

TEST(PathThresholdTest, BadArgumentsGetStatus) {
  const PackedExpert e = MakeExpert(64, 32, "bf16");
  const CpuPath best = SupportedPaths().back();
  PathThresholdOptions o;
  o.tokens = {1, 2};
  o.reps = 1;
  EXPECT_EQ(MeasurePathThreshold(e, best, best, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  if (best != CpuPath::kScalar) {
    for (const std::vector<int64_t>& tokens :
         {std::vector<int64_t>{}, std::vector<int64_t>{2, 1}, std::vector<int64_t>{0, 1},
          std::vector<int64_t>{1, 1}}) {
      o.tokens = tokens;
      EXPECT_EQ(MeasurePathThreshold(e, best, CpuPath::kScalar, o).status().code(),
                absl::StatusCode::kInvalidArgument)
          << tokens.size();
    }
    o.tokens = {1};
    o.reps = 0;
    EXPECT_EQ(MeasurePathThreshold(e, best, CpuPath::kScalar, o).status().code(),
              absl::StatusCode::kInvalidArgument);
    o.reps = 1;
    EXPECT_EQ(MeasurePathThreshold(PackedExpert{}, best, CpuPath::kScalar, o).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  // A path this CPU lacks (AMX on most machines), or, where every path runs, a valid call.
  o.tokens = {1};
  o.reps = 1;
  const absl::StatusOr<PathThreshold> amx =
      MeasurePathThreshold(e, CpuPath::kAmx, CpuPath::kScalar, o);
  if (PathSupported(CpuPath::kAmx)) {
    EXPECT_TRUE(amx.ok()) << amx.status();
  } else {
    EXPECT_EQ(amx.status().code(), absl::StatusCode::kFailedPrecondition) << amx.status();
  }
}

}  // namespace
}  // namespace moemesh::cpu
