// End-to-end tests of Sampler and SamplingParams::Validate. Expected values are computed here
// by hand or by independent long-double formulas, never by the code under test.
#include "model/sampling/sampling.h"

#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

using ::testing::HasSubstr;

constexpr float kInfF = std::numeric_limits<float>::infinity();

SamplingParams Greedy() {
  SamplingParams p;
  p.temperature = 0.0f;
  return p;
}

int32_t SampleOnce(const SamplingParams& params, const std::vector<float>& logits,
                   const std::vector<int32_t>& prompt = {},
                   const std::vector<int32_t>& generated = {}) {
  Sampler sampler(params, /*fallback_seed=*/1);
  return sampler.Sample(logits, prompt, generated).token;
}

// Counts of each token over `draws` calls of one sampler.
std::vector<int64_t> Histogram(SamplingParams params, const std::vector<float>& logits, int draws,
                               uint64_t seed) {
  params.seed = seed;
  Sampler sampler(params, 0);
  std::vector<int64_t> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts[sampler.Sample(logits, {}, {}).token];
  return counts;
}

// Independent reference: softmax(logits / temperature) in long double.
std::vector<double> ReferenceProbs(const std::vector<float>& logits, long double temperature) {
  long double total = 0;
  std::vector<long double> w;
  for (float l : logits) {
    w.push_back(std::exp(static_cast<long double>(l) / temperature));
    total += w.back();
  }
  std::vector<double> p;
  for (long double x : w) p.push_back(static_cast<double>(x / total));
  return p;
}

double ChiSquare(const std::vector<int64_t>& counts, const std::vector<double>& probs, int draws) {
  double chi2 = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double expected = probs[i] * draws;
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
  }
  return chi2;
}

// ---- greedy ----

TEST(SamplerGreedy, PicksArgmaxWithTiesToLowestId) {
  EXPECT_EQ(SampleOnce(Greedy(), {0.1f, 2.0f, -1.0f}), 1);
  EXPECT_EQ(SampleOnce(Greedy(), {1.0f, 3.0f, 3.0f, 2.0f}), 1);
  EXPECT_EQ(SampleOnce(Greedy(), {5.0f, 5.0f}), 0);
  EXPECT_EQ(SampleOnce(Greedy(), {-3.0f, -2.0f, -2.0f}), 1);
}

TEST(SamplerGreedy, NanCountsAsNegativeInfinity) {
  EXPECT_EQ(SampleOnce(Greedy(), {std::nanf(""), 1.0f, 5.0f, std::nanf("")}), 2);
  EXPECT_EQ(SampleOnce(Greedy(), {-kInfF, std::nanf(""), -7.0f}), 2);
  EXPECT_EQ(SampleOnce(Greedy(), {1.0f, kInfF, 2.0f, kInfF}), 1);
}

TEST(SamplerGreedy, NothingFiniteGivesTokenZeroWithLogprobMinusInf) {
  for (float temperature : {0.0f, 1.0f}) {
    SamplingParams p;
    p.temperature = temperature;
    p.logprobs = 2;
    Sampler sampler(p, 3);
    const SampleResult r = sampler.Sample({std::nanf(""), -kInfF, std::nanf("")}, {}, {});
    EXPECT_EQ(r.token, 0);
    EXPECT_EQ(r.logprob, -kInfF);
    ASSERT_EQ(r.top.size(), 2u);
    EXPECT_EQ(r.top[0].token, 0);
    EXPECT_EQ(r.top[1].token, 1);
  }
}

// ---- penalties (greedy makes the effect visible as the chosen token) ----

TEST(SamplerPenalties, RepetitionPenaltyOverPromptAndGenerated) {
  // Penalty 2: token 0 (prompt, 2.0 -> 1.0) falls below token 1 (1.5).
  const std::vector<float> logits = {2.0f, 1.5f, -1.0f, -1.2f};
  SamplingParams p = Greedy();
  EXPECT_EQ(SampleOnce(p, logits, {0}, {3}), 0);  // penalty off
  p.repetition_penalty = 2.0f;
  EXPECT_EQ(SampleOnce(p, logits, {0}, {3}), 1);
  EXPECT_EQ(SampleOnce(p, logits, {}, {0}), 1);  // generated tokens count too
  EXPECT_EQ(SampleOnce(p, logits, {2, 3}, {}), 0);
  // Negative logits are multiplied: -1.0 -> -2.0 falls below -1.5.
  EXPECT_EQ(SampleOnce(p, {-1.0f, -1.5f}, {0}, {}), 1);
}

TEST(SamplerPenalties, FrequencyAndPresenceOverGeneratedOnly) {
  // generated {0, 0, 1}: 1.0 - 2*0.3 - 0.1 = 0.3, 0.8 - 0.3 - 0.1 = 0.4, 0.5 untouched.
  const std::vector<float> logits = {1.0f, 0.8f, 0.5f};
  SamplingParams p = Greedy();
  p.frequency_penalty = 0.3f;
  p.presence_penalty = 0.1f;
  EXPECT_EQ(SampleOnce(p, logits, {}, {0, 0, 1}), 2);
  EXPECT_EQ(SampleOnce(p, logits, {2, 2, 2}, {0, 0, 1}), 2);  // prompt ignored
  EXPECT_EQ(SampleOnce(p, logits, {0, 0, 0, 0}, {}), 0);      // prompt only: no effect
}

TEST(SamplerPenalties, PresenceDoesNotGrowWithCountFrequencyDoes) {
  // generated {0 x4}: presence 0.2 -> 0.8 < 0.9; frequency 0.02 -> 1.0 - 0.08 = 0.92 > 0.9.
  const std::vector<float> logits = {1.0f, 0.9f};
  SamplingParams presence = Greedy();
  presence.presence_penalty = 0.2f;
  EXPECT_EQ(SampleOnce(presence, logits, {}, {0, 0, 0, 0}), 1);
  EXPECT_EQ(SampleOnce(presence, logits, {}, {0}), 1);
  SamplingParams frequency = Greedy();
  frequency.frequency_penalty = 0.02f;
  EXPECT_EQ(SampleOnce(frequency, logits, {}, {0, 0, 0, 0}), 0);
  EXPECT_EQ(SampleOnce(frequency, logits, {}, std::vector<int32_t>(6, 0)), 1);  // 0.88 < 0.9
}

TEST(SamplerPenalties, RepetitionAppliesBeforeFrequency) {
  // 3.0 / 2 - 1.0 = 0.5 (rep first) vs (3.0 - 1.0) / 2 = 1.0 (the other order); token 1 = 0.8.
  SamplingParams p = Greedy();
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 1.0f;
  EXPECT_EQ(SampleOnce(p, {3.0f, 0.8f}, {}, {0}), 1);
}

// ---- seeds ----

std::vector<int32_t> Generate(const SamplingParams& params, uint64_t fallback_seed, int steps) {
  std::vector<float> logits(64);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(std::sin(i * 1.7));
  Sampler sampler(params, fallback_seed);
  std::vector<int32_t> out;
  for (int i = 0; i < steps; ++i) out.push_back(sampler.Sample(logits, {}, out).token);
  return out;
}

TEST(SamplerSeed, SameSeedSameTokensDifferentSeedsDiffer) {
  SamplingParams p;
  p.seed = 1234;
  const std::vector<int32_t> a = Generate(p, 1, 500);
  EXPECT_EQ(a, Generate(p, 2, 500));  // explicit seed wins over the fallback
  std::set<std::vector<int32_t>> sequences;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    p.seed = seed;
    sequences.insert(Generate(p, 0, 500));
  }
  EXPECT_EQ(sequences.size(), 20u);
  // Two seeds agree at a position with probability ~ sum p_i^2 (about 1/40 here), not always.
  p.seed = 1;
  const std::vector<int32_t> s1 = Generate(p, 0, 500);
  p.seed = 2;
  const std::vector<int32_t> s2 = Generate(p, 0, 500);
  int same = 0;
  for (int i = 0; i < 500; ++i) same += s1[i] == s2[i];
  EXPECT_LT(same, 50);
}

TEST(SamplerSeed, FallbackSeedUsedWhenUnset) {
  SamplingParams unset;
  SamplingParams seeded;
  seeded.seed = 77;
  EXPECT_EQ(Generate(unset, 77, 300), Generate(seeded, 5, 300));
  EXPECT_NE(Generate(unset, 77, 300), Generate(unset, 78, 300));
}

TEST(SamplerSeed, CallIUsesDrawIOfTheStream) {
  // Two equal logits: token = u < 0.5 ? 0 : 1, with u the draw of this call's index.
  SamplingParams p;
  p.seed = 99;
  Sampler sampler(p, 0);
  for (uint64_t i = 0; i < 200; ++i) {
    const double u = SplitMix64::ToUnitDouble(SplitMix64::At(99, i));
    // Alternate two and three equal logits: the CDF steps are at 1/2, or at 1/3 and 2/3.
    const bool two = i % 3 == 0;
    const std::vector<float> logits(two ? 2 : 3, 0.0f);
    int32_t expected;
    if (two) {
      expected = u < 0.5 ? 0 : 1;
    } else {
      expected = u < 1.0 / 3 ? 0 : (u < 2.0 / 3 ? 1 : 2);
    }
    EXPECT_EQ(sampler.Sample(logits, {}, {}).token, expected) << i;
  }
}

// ---- filters: never outside the allowed set ----

// Probabilities 0.3, 0.1, 0.05, 0.4, 0.15 at ids 0..4 (sorted: 3, 0, 4, 1, 2).
std::vector<float> FiveTokenLogits() {
  std::vector<float> l;
  for (double p : {0.3, 0.1, 0.05, 0.4, 0.15}) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

void ExpectOnlyFrom(const SamplingParams& params, const std::vector<float>& logits,
                    const std::set<int32_t>& allowed) {
  constexpr int kDraws = 20000;
  const std::vector<int64_t> counts = Histogram(params, logits, kDraws, 4242);
  for (size_t t = 0; t < counts.size(); ++t) {
    if (allowed.count(t)) {
      EXPECT_GT(counts[t], 0) << "allowed token " << t << " never drawn";
    } else {
      EXPECT_EQ(counts[t], 0) << "token " << t << " is outside the allowed set";
    }
  }
}

TEST(SamplerFilters, TopK) {
  SamplingParams p;
  p.top_k = 2;
  ExpectOnlyFrom(p, FiveTokenLogits(), {3, 0});
  p.top_k = 1;
  ExpectOnlyFrom(p, FiveTokenLogits(), {3});
  p.top_k = 2;
  ExpectOnlyFrom(p, std::vector<float>(6, 0.5f), {0, 1});  // ties -> lowest ids
  p.top_k = -1;
  ExpectOnlyFrom(p, FiveTokenLogits(), {0, 1, 2, 3, 4});
}

TEST(SamplerFilters, TopKRenormalises) {
  SamplingParams p;
  p.top_k = 2;
  constexpr int kDraws = 50000;
  const std::vector<int64_t> counts = Histogram(p, FiveTokenLogits(), kDraws, 5);
  // 0.4 / 0.7 and 0.3 / 0.7; binomial sd ~ 0.0022, tolerance ~ 5 sd.
  EXPECT_NEAR(counts[3] / double(kDraws), 0.4 / 0.7, 0.011);
  EXPECT_NEAR(counts[0] / double(kDraws), 0.3 / 0.7, 0.011);
}

TEST(SamplerFilters, TopP) {
  SamplingParams p;
  p.top_p = 0.65f;  // 0.4, 0.7
  ExpectOnlyFrom(p, FiveTokenLogits(), {3, 0});
  p.top_p = 0.75f;  // 0.4, 0.7, 0.85
  ExpectOnlyFrom(p, FiveTokenLogits(), {3, 0, 4});
  p.top_p = 0.01f;  // at least one
  ExpectOnlyFrom(p, FiveTokenLogits(), {3});
  p.top_p = 0.4f;  // equal probabilities 1/6: 1/6, 2/6, 3/6 >= 0.4, ties -> lowest ids
  ExpectOnlyFrom(p, std::vector<float>(6, 0.0f), {0, 1, 2});
}

TEST(SamplerFilters, TopPAfterTopKUsesRenormalisedProbabilities) {
  // Alone, top_p 0.8 needs 0.4 + 0.3 + 0.15. After top_k 3 the survivors are renormalised over
  // 0.85: 0.47, 0.82 >= 0.8, so only two tokens remain.
  SamplingParams p;
  p.top_p = 0.8f;
  ExpectOnlyFrom(p, FiveTokenLogits(), {3, 0, 4});
  p.top_k = 3;
  ExpectOnlyFrom(p, FiveTokenLogits(), {3, 0});
}

TEST(SamplerFilters, MinP) {
  SamplingParams p;
  p.min_p = 0.3f;  // threshold 0.12
  ExpectOnlyFrom(p, FiveTokenLogits(), {3, 0, 4});
  p.min_p = 0.5f;  // threshold 0.2
  ExpectOnlyFrom(p, FiveTokenLogits(), {3, 0});
  p.min_p = 1.0f;
  ExpectOnlyFrom(p, FiveTokenLogits(), {3});
}

TEST(SamplerFilters, MinPUsesTheDistributionAfterTemperature) {
  // Temperature 0.5 squares the ratios: p_i / p_max = (q_i / 0.4)^2, i.e. 0.5625, 0.0625,
  // 0.015625, 1, 0.140625. min_p 0.1 keeps ids 3, 0, 4 (at temperature 1 it would keep all).
  SamplingParams p;
  p.min_p = 0.1f;
  ExpectOnlyFrom(p, FiveTokenLogits(), {0, 1, 2, 3, 4});
  p.temperature = 0.5f;
  ExpectOnlyFrom(p, FiveTokenLogits(), {3, 0, 4});
}

TEST(SamplerFilters, NonFiniteLogitsAreNeverDrawnExceptPlusInf) {
  SamplingParams p;
  ExpectOnlyFrom(p, {std::nanf(""), 1.0f, -kInfF, 0.5f}, {1, 3});
  ExpectOnlyFrom(p, {1.0f, kInfF, 3.0f, kInfF}, {1, 3});
}

// ---- the distribution itself ----

TEST(SamplerDistribution, MatchesSoftmaxAtTemperature07) {
  const std::vector<float> logits = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, -1.0f, 1.2f, 0.7f};
  SamplingParams p;
  p.temperature = 0.7f;
  constexpr int kDraws = 200000;
  const std::vector<int64_t> counts = Histogram(p, logits, kDraws, 2024);
  const double chi2 = ChiSquare(counts, ReferenceProbs(logits, 0.7L), kDraws);
  // 7 degrees of freedom: P(chi2 > 24.32) = 0.001.
  EXPECT_LT(chi2, 24.32);
  // The test has power: the same draws are far from the temperature-1 distribution.
  EXPECT_GT(ChiSquare(counts, ReferenceProbs(logits, 1.0L), kDraws), 1000.0);
}

TEST(SamplerDistribution, TemperatureTwoFlattens) {
  const std::vector<float> logits = {2.0f, 1.0f, 0.0f, -1.0f};
  constexpr int kDraws = 100000;
  SamplingParams t1;
  SamplingParams t2;
  t2.temperature = 2.0f;
  const std::vector<int64_t> c1 = Histogram(t1, logits, kDraws, 11);
  const std::vector<int64_t> c2 = Histogram(t2, logits, kDraws, 11);
  auto entropy = [](const std::vector<int64_t>& c) {
    double h = 0;
    for (int64_t n : c) h -= n ? (n / double(kDraws)) * std::log(n / double(kDraws)) : 0;
    return h;
  };
  EXPECT_GT(entropy(c2), entropy(c1) + 0.1);
  EXPECT_LT(c2[0], c1[0]);
  EXPECT_GT(c2[3], c1[3]);
  const std::vector<double> ref2 = ReferenceProbs(logits, 2.0L);
  for (size_t i = 0; i < logits.size(); ++i) {
    EXPECT_NEAR(c2[i] / double(kDraws), ref2[i], 0.008) << i;  // sd <= 0.0016
  }
  EXPECT_LT(ChiSquare(c2, ref2, kDraws), 16.27);  // 3 dof, P = 0.001
}

// ---- logprobs ----

TEST(SamplerLogprobs, LogSoftmaxOfRawLogits) {
  std::vector<float> logits(40);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(std::cos(i * 0.9) * 3);
  logits[7] = logits[21] = 4.0f;  // a tie at the top: ids 7 then 21
  logits[30] = std::nanf("");
  // Independent log_softmax in long double over the raw logits (NaN excluded).
  long double m = -INFINITY;
  for (float l : logits) {
    if (!std::isnan(l)) m = std::max<long double>(m, l);
  }
  long double sum = 0;
  for (float l : logits) {
    if (!std::isnan(l)) sum += std::exp(static_cast<long double>(l) - m);
  }
  auto ref = [&](int32_t t) { return static_cast<double>(logits[t] - m - std::log(sum)); };

  SamplingParams p;
  p.temperature = 0.5f;  // neither temperature nor penalties change logprobs
  p.repetition_penalty = 1.7f;
  p.presence_penalty = 1.0f;
  p.logprobs = 5;
  Sampler sampler(p, 8);
  for (int step = 0; step < 20; ++step) {
    const SampleResult r = sampler.Sample(logits, {1, 2, 3}, {7, 7, 21});
    EXPECT_NEAR(r.logprob, ref(r.token), 1e-5);
    ASSERT_EQ(r.top.size(), 5u);
    EXPECT_EQ(r.top[0].token, 7);
    EXPECT_EQ(r.top[1].token, 21);
    for (size_t i = 0; i < r.top.size(); ++i) {
      EXPECT_NEAR(r.top[i].logprob, ref(r.top[i].token), 1e-5);
      if (i > 0) {
        EXPECT_GE(r.top[i - 1].logprob, r.top[i].logprob);
      }
    }
    // Nothing outside the top 5 is more likely than the fifth.
    for (size_t t = 0; t < logits.size(); ++t) {
      bool listed = false;
      for (const TokenLogprob& tl : r.top) listed |= tl.token == static_cast<int32_t>(t);
      if (!listed && !std::isnan(logits[t])) {
        EXPECT_LE(ref(t), r.top[4].logprob + 1e-6);
      }
    }
  }
}

TEST(SamplerLogprobs, NoneChosenOnlyAndCappedAtVocab) {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // probabilities 0.25, 0.75
  SamplingParams p = Greedy();
  SampleResult r = Sampler(p, 0).Sample(logits, {}, {});
  EXPECT_EQ(r.logprob, 0.0f);
  EXPECT_TRUE(r.top.empty());
  p.logprobs = 0;
  r = Sampler(p, 0).Sample(logits, {}, {});
  EXPECT_EQ(r.token, 1);
  EXPECT_NEAR(r.logprob, std::log(0.75), 1e-6);
  EXPECT_TRUE(r.top.empty());
  p.logprobs = 20;
  r = Sampler(p, 0).Sample(logits, {}, {});
  ASSERT_EQ(r.top.size(), 2u);
  EXPECT_EQ(r.top[0].token, 1);
  EXPECT_NEAR(r.top[1].logprob, std::log(0.25), 1e-6);
}

// ---- Validate ----

TEST(SamplingParamsValidate, DefaultsAndEdgesAreValid) {
  EXPECT_TRUE(SamplingParams().Validate().ok());
  SamplingParams p;
  p.temperature = 0;
  p.top_k = -1;
  p.top_p = 1e-6f;
  p.min_p = 1;
  p.repetition_penalty = 0.01f;
  p.presence_penalty = -2;
  p.frequency_penalty = 2;
  p.logprobs = 20;
  EXPECT_TRUE(p.Validate().ok()) << p.Validate();
}

void ExpectRejected(const SamplingParams& p, const std::string& field, const std::string& value) {
  const absl::Status s = p.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
  EXPECT_THAT(std::string(s.message()), HasSubstr(field + " = " + value)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("outside")) << s;
}

TEST(SamplingParamsValidate, RejectsEachBadField) {
  const SamplingParams ok;
  auto with = [&](auto mutate) {
    SamplingParams p = ok;
    mutate(p);
    return p;
  };
  ExpectRejected(with([](auto& p) { p.temperature = -0.5f; }), "temperature", "-0.5");
  ExpectRejected(with([](auto& p) { p.temperature = kInfF; }), "temperature", "inf");
  ExpectRejected(with([](auto& p) { p.temperature = std::nanf(""); }), "temperature", "nan");
  ExpectRejected(with([](auto& p) { p.top_k = -2; }), "top_k", "-2");
  ExpectRejected(with([](auto& p) { p.top_p = 0.0f; }), "top_p", "0");
  ExpectRejected(with([](auto& p) { p.top_p = std::nanf(""); }), "top_p", "nan");
  ExpectRejected(with([](auto& p) { p.min_p = -0.25f; }), "min_p", "-0.25");
  ExpectRejected(with([](auto& p) { p.min_p = 1.5f; }), "min_p", "1.5");
  ExpectRejected(with([](auto& p) { p.repetition_penalty = 0.0f; }), "repetition_penalty", "0");
  ExpectRejected(with([](auto& p) { p.presence_penalty = 2.5f; }), "presence_penalty", "2.5");
  ExpectRejected(with([](auto& p) { p.frequency_penalty = -3.0f; }), "frequency_penalty", "-3");
  ExpectRejected(with([](auto& p) { p.logprobs = 21; }), "logprobs", "21");
  ExpectRejected(with([](auto& p) { p.logprobs = -2; }), "logprobs", "-2");
  EXPECT_EQ(with([](auto& p) { p.top_p = 1.5f; }).Validate().message(),
            "top_p = 1.5 is outside (0, 1]");
}

}  // namespace
}  // namespace moemesh
