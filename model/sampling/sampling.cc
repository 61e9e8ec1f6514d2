#include "model/sampling/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/status.h"
#include "model/sampling/distribution.h"
#include "model/sampling/filters.h"
#include "model/sampling/penalties.h"

namespace moemesh {

Sampler::Sampler(const SamplingParams& params, uint64_t fallback_seed)
    : params_(params), rng_(params.seed.value_or(fallback_seed)) {
  MM_CHECK(params_.Validate().ok());
}

SampleResult Sampler::Sample(absl::Span<const float> logits,
                             absl::Span<const int32_t> prompt_tokens,
                             absl::Span<const int32_t> generated_tokens) {
  MM_CHECK(!logits.empty());
  const double u = rng_.NextDouble();  // one draw per call, used or not (see header)
  SampleResult result;
  result.token = ChooseToken(logits, prompt_tokens, generated_tokens, u);
  if (params_.logprobs >= 0) FillLogprobs(logits, result);
  return result;
}

int32_t Sampler::ChooseToken(absl::Span<const float> logits,
                             absl::Span<const int32_t> prompt_tokens,
                             absl::Span<const int32_t> generated_tokens, double u) const {
  std::vector<double> scores = ToScores(logits);
  ApplyRepetitionPenalty(absl::MakeSpan(scores), prompt_tokens, generated_tokens,
                         params_.repetition_penalty);
  ApplyFrequencyPresencePenalty(absl::MakeSpan(scores), generated_tokens, params_.frequency_penalty,
                                params_.presence_penalty);
  if (params_.temperature == 0.0f) return ArgMax(scores);

  const double temperature = params_.temperature;
  for (double& s : scores) s /= temperature;
  ApplyTopK(absl::MakeSpan(scores), params_.top_k);
  ApplyTopP(absl::MakeSpan(scores), params_.top_p);
  ApplyMinP(absl::MakeSpan(scores), params_.min_p);
  const int32_t token = DrawIndex(Softmax(scores), u);
  return token < 0 ? 0 : token;  // no score above -inf: token 0 (see header)
}

void Sampler::FillLogprobs(absl::Span<const float> logits, SampleResult& result) const {
  const std::vector<double> logp = LogSoftmax(ToScores(logits));
  result.logprob = static_cast<float>(logp[result.token]);
  const size_t n = std::min<size_t>(params_.logprobs, logp.size());
  if (n == 0) return;
  std::vector<int32_t> order(logp.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + n, order.end(), [&](int32_t a, int32_t b) {
    return logp[a] != logp[b] ? logp[a] > logp[b] : a < b;
  });
  result.top.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    result.top.push_back({order[i], static_cast<float>(logp[order[i]])});
  }
}

}  // namespace moemesh
