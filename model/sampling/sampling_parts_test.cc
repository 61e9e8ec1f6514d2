// Unit tests of the sampling building blocks with hand-computed expectations.
#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "model/sampling/distribution.h"
#include "model/sampling/filters.h"
#include "model/sampling/penalties.h"

namespace moemesh {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

TEST(Penalties, RepetitionDividesPositiveMultipliesNegativeOncePerId) {
  std::vector<double> s = {2.0, -1.0, 0.5, 3.0, 0.0};
  // Token 0 appears three times, but is penalised once; 7 and -1 are out of range.
  ApplyRepetitionPenalty(absl::MakeSpan(s), {0, 0, 4}, {1, 7, -1, 0}, 2.0);
  EXPECT_EQ(s, (std::vector<double>{1.0, -2.0, 0.5, 3.0, 0.0}));
}

TEST(Penalties, RepetitionBelowOneBoostsSeenTokens) {
  std::vector<double> s = {2.0, -1.0};
  ApplyRepetitionPenalty(absl::MakeSpan(s), {}, {0, 1}, 0.5);
  EXPECT_EQ(s, (std::vector<double>{4.0, -0.5}));
}

TEST(Penalties, FrequencyCountsPresenceDoesNot) {
  std::vector<double> s = {1.0, 1.0, 1.0, 1.0};
  // counts: token 0 -> 2, token 2 -> 1; 9 is out of range.
  ApplyFrequencyPresencePenalty(absl::MakeSpan(s), {0, 0, 2, 9}, 0.5, 0.25);
  EXPECT_EQ(s, (std::vector<double>{1.0 - 2 * 0.5 - 0.25, 1.0, 1.0 - 0.5 - 0.25, 1.0}));
}

TEST(Penalties, NegativeValuesEncourageRepeats) {
  std::vector<double> s = {0.0, 0.0};
  ApplyFrequencyPresencePenalty(absl::MakeSpan(s), {1, 1, 1}, -0.5, -1.0);
  EXPECT_EQ(s, (std::vector<double>{0.0, 2.5}));
}

TEST(Distribution, ToScoresMapsNanToNegInf) {
  const std::vector<double> s = ToScores({1.5f, std::nanf(""), -2.0f});
  EXPECT_EQ(s, (std::vector<double>{1.5, -kInf, -2.0}));
}

TEST(Distribution, SoftmaxAndLogSoftmaxOfHandValues) {
  const std::vector<double> s = {std::log(1.0), std::log(3.0), -kInf};
  const std::vector<double> p = Softmax(s);
  EXPECT_NEAR(p[0], 0.25, 1e-15);
  EXPECT_NEAR(p[1], 0.75, 1e-15);
  EXPECT_EQ(p[2], 0.0);
  const std::vector<double> lp = LogSoftmax(s);
  EXPECT_NEAR(lp[0], std::log(0.25), 1e-15);
  EXPECT_NEAR(lp[1], std::log(0.75), 1e-15);
  EXPECT_EQ(lp[2], -kInf);
}

TEST(Distribution, SoftmaxIsStableForHugeScores) {
  const std::vector<double> p = Softmax(std::vector<double>{1000.0, 1000.0});
  EXPECT_EQ(p, (std::vector<double>{0.5, 0.5}));
}

TEST(Distribution, PositiveInfinitySharesTheMass) {
  const std::vector<double> s = {1.0, kInf, 3.0, kInf};
  EXPECT_EQ(Softmax(s), (std::vector<double>{0.0, 0.5, 0.0, 0.5}));
  const std::vector<double> lp = LogSoftmax(s);
  EXPECT_EQ(lp[0], -kInf);
  EXPECT_DOUBLE_EQ(lp[1], std::log(0.5));
}

TEST(Distribution, AllNegativeInfinityHasNoDistribution) {
  const std::vector<double> s = {-kInf, -kInf};
  EXPECT_EQ(Softmax(s), (std::vector<double>{0.0, 0.0}));
  EXPECT_EQ(LogSoftmax(s), (std::vector<double>{-kInf, -kInf}));
  EXPECT_EQ(ArgMax(s), 0);
}

TEST(Distribution, ArgMaxTiesGoToLowestIndex) {
  EXPECT_EQ(ArgMax(std::vector<double>{1.0, 3.0, 3.0, 2.0}), 1);
  EXPECT_EQ(ArgMax(std::vector<double>{-kInf, -5.0, -5.0}), 1);
  EXPECT_EQ(ArgMax(std::vector<double>{1.0, kInf, 2.0, kInf}), 1);
}

TEST(Distribution, DrawIndexWalksTheCdfInIdOrder) {
  const std::vector<double> w = {0.0, 1.0, 0.0, 3.0};  // total 4: [0, 0.25) -> 1, rest -> 3
  EXPECT_EQ(DrawIndex(w, 0.0), 1);
  EXPECT_EQ(DrawIndex(w, 0.2499), 1);
  EXPECT_EQ(DrawIndex(w, 0.25), 3);
  EXPECT_EQ(DrawIndex(w, 1.0 - 0x1.0p-53), 3);
  EXPECT_EQ(DrawIndex(std::vector<double>{0.0, 0.0}, 0.5), -1);
}

TEST(Filters, TopKKeepsHighestWithTiesToLowerIds) {
  std::vector<double> s = {1.0, 5.0, 3.0, 5.0, 3.0};
  ApplyTopK(absl::MakeSpan(s), 3);
  EXPECT_EQ(s, (std::vector<double>{-kInf, 5.0, 3.0, 5.0, -kInf}));
  std::vector<double> same = {1.0, 2.0};
  ApplyTopK(absl::MakeSpan(same), 0);
  ApplyTopK(absl::MakeSpan(same), -1);
  ApplyTopK(absl::MakeSpan(same), 2);
  EXPECT_EQ(same, (std::vector<double>{1.0, 2.0}));
}

TEST(Filters, TopPKeepsSmallestPrefixReachingP) {
  // Probabilities 0.1, 0.5, 0.3, 0.1 (ids 0..3). Sorted: 1 (0.5), 2 (0.3), 0 (0.1), 3 (0.1).
  const std::vector<double> base = {std::log(0.1), std::log(0.5), std::log(0.3), std::log(0.1)};
  std::vector<double> s = base;
  ApplyTopP(absl::MakeSpan(s), 0.45);  // 0.5 >= 0.45
  EXPECT_EQ(s, (std::vector<double>{-kInf, base[1], -kInf, -kInf}));
  s = base;
  ApplyTopP(absl::MakeSpan(s), 0.7);  // 0.5, 0.8
  EXPECT_EQ(s, (std::vector<double>{-kInf, base[1], base[2], -kInf}));
  s = base;
  ApplyTopP(absl::MakeSpan(s), 0.85);  // 0.5, 0.8, 0.9: of the two 0.1 tokens id 0 wins
  EXPECT_EQ(s, (std::vector<double>{base[0], base[1], base[2], -kInf}));
  s = base;
  ApplyTopP(absl::MakeSpan(s), 1e-9);  // always at least one
  EXPECT_EQ(s, (std::vector<double>{-kInf, base[1], -kInf, -kInf}));
}

TEST(Filters, MinPIsRelativeToTheLargestProbability) {
  // Probabilities 0.1, 0.5, 0.3, 0.1: min_p 0.5 -> threshold 0.25 keeps ids 1, 2.
  const std::vector<double> base = {std::log(0.1), std::log(0.5), std::log(0.3), std::log(0.1)};
  std::vector<double> s = base;
  ApplyMinP(absl::MakeSpan(s), 0.5);
  EXPECT_EQ(s, (std::vector<double>{-kInf, base[1], base[2], -kInf}));
  s = base;
  ApplyMinP(absl::MakeSpan(s), 1.0);
  EXPECT_EQ(s, (std::vector<double>{-kInf, base[1], -kInf, -kInf}));
  s = base;
  ApplyMinP(absl::MakeSpan(s), 0.1);  // threshold 0.05 keeps all
  EXPECT_EQ(s, base);
}

}  // namespace
}  // namespace moemesh
