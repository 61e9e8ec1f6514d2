#include "model/sampling/distribution.h"

#include <cmath>
#include <limits>

#include "common/status.h"

namespace moemesh {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Largest non-NaN score, or -inf when there is none.
double MaxScore(absl::Span<const double> scores) {
  double m = -kInf;
  for (double s : scores) {
    if (s > m) m = s;  // false for NaN
  }
  return m;
}

}  // namespace

std::vector<double> ToScores(absl::Span<const float> logits) {
  std::vector<double> scores(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    scores[i] = std::isnan(logits[i]) ? -kInf : static_cast<double>(logits[i]);
  }
  return scores;
}

std::vector<double> Softmax(absl::Span<const double> scores) {
  std::vector<double> probs(scores.size(), 0.0);
  const double m = MaxScore(scores);
  if (m == -kInf) return probs;
  double total = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (m == kInf) {
      probs[i] = scores[i] == kInf ? 1.0 : 0.0;
    } else {
      probs[i] = std::isnan(scores[i]) ? 0.0 : std::exp(scores[i] - m);
    }
    total += probs[i];
  }
  for (double& p : probs) p /= total;  // total >= 1: the max contributes exp(0) = 1
  return probs;
}

std::vector<double> LogSoftmax(absl::Span<const double> scores) {
  std::vector<double> out(scores.size(), -kInf);
  const double m = MaxScore(scores);
  if (m == -kInf) return out;
  if (m == kInf) {
    double count = 0;
    for (double s : scores) count += (s == kInf);
    for (size_t i = 0; i < scores.size(); ++i) {
      if (scores[i] == kInf) out[i] = -std::log(count);
    }
    return out;
  }
  double sum = 0;
  for (double s : scores) {
    if (!std::isnan(s)) sum += std::exp(s - m);
  }
  const double log_normalizer = m + std::log(sum);
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isnan(scores[i])) out[i] = scores[i] - log_normalizer;
  }
  return out;
}

int32_t ArgMax(absl::Span<const double> scores) {
  MM_CHECK(!scores.empty());
  int32_t best = 0;
  double best_score = -kInf;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (scores[i] > best_score) {  // strict: ties keep the lower index; false for NaN
      best_score = scores[i];
      best = static_cast<int32_t>(i);
    }
  }
  return best;
}

int32_t DrawIndex(absl::Span<const double> weights, double u) {
  double total = 0;
  int32_t last_positive = -1;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i] > 0) {
      total += weights[i];
      last_positive = static_cast<int32_t>(i);
    }
  }
  if (last_positive < 0) return -1;
  const double target = u * total;
  double cumulative = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (!(weights[i] > 0)) continue;
    cumulative += weights[i];
    if (target < cumulative) return static_cast<int32_t>(i);
  }
  return last_positive;
}

}  // namespace moemesh
