#include "model/sampling/filters.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "model/sampling/distribution.h"

namespace moemesh {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Token ids ordered by score descending, then id ascending. Scores hold no NaN (ToScores).
std::vector<int32_t> OrderByScore(absl::Span<const double> scores) {
  std::vector<int32_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
  return order;
}

}  // namespace

void ApplyTopK(absl::Span<double> scores, int32_t k) {
  if (k <= 0 || static_cast<size_t>(k) >= scores.size()) return;
  const std::vector<int32_t> order = OrderByScore(scores);
  for (size_t rank = k; rank < order.size(); ++rank) scores[order[rank]] = kNegInf;
}

void ApplyTopP(absl::Span<double> scores, double top_p) {
  if (top_p >= 1.0) return;
  const std::vector<double> probs = Softmax(scores);
  const std::vector<int32_t> order = OrderByScore(scores);
  double cumulative = 0;
  size_t kept = 0;
  while (kept < order.size()) {
    cumulative += probs[order[kept]];
    ++kept;
    if (cumulative >= top_p) break;
  }
  for (size_t rank = kept; rank < order.size(); ++rank) scores[order[rank]] = kNegInf;
}

void ApplyMinP(absl::Span<double> scores, double min_p) {
  if (min_p <= 0.0 || scores.empty()) return;
  const std::vector<double> probs = Softmax(scores);
  const double p_max = *std::max_element(probs.begin(), probs.end());
  if (p_max == 0.0) return;  // every score is -inf: nothing to keep or drop
  const double threshold = min_p * p_max;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (probs[i] < threshold) scores[i] = kNegInf;
  }
}

}  // namespace moemesh
