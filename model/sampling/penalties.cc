#include "model/sampling/penalties.h"

#include <vector>

namespace moemesh {
namespace {

bool InRange(int32_t token, size_t vocab_size) {
  return token >= 0 && static_cast<size_t>(token) < vocab_size;
}

}  // namespace

void ApplyRepetitionPenalty(absl::Span<double> scores, absl::Span<const int32_t> prompt_tokens,
                            absl::Span<const int32_t> generated_tokens, double penalty) {
  if (penalty == 1.0) return;
  std::vector<bool> seen(scores.size(), false);
  for (absl::Span<const int32_t> tokens : {prompt_tokens, generated_tokens}) {
    for (int32_t t : tokens) {
      if (InRange(t, scores.size())) seen[t] = true;
    }
  }
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!seen[i]) continue;
    scores[i] = scores[i] > 0 ? scores[i] / penalty : scores[i] * penalty;
  }
}

void ApplyFrequencyPresencePenalty(absl::Span<double> scores,
                                   absl::Span<const int32_t> generated_tokens, double frequency,
                                   double presence) {
  if (frequency == 0.0 && presence == 0.0) return;
  std::vector<int64_t> counts(scores.size(), 0);
  for (int32_t t : generated_tokens) {
    if (InRange(t, scores.size())) ++counts[t];
  }
  for (size_t i = 0; i < scores.size(); ++i) {
    if (counts[i] == 0) continue;
    scores[i] -= frequency * static_cast<double>(counts[i]) + presence;
  }
}

}  // namespace moemesh
