// Top-k, top-p (nucleus) and min-p filters. Each one sets the scores of the tokens it drops to
// -inf in place and never drops every token with a score above -inf. Penalties, temperature and
// drawing live elsewhere (penalties.h, sampler in sampling.h, distribution.h).
// Thread-safe (pure functions).
#pragma once

#include <cstdint>

#include "absl/types/span.h"

namespace moemesh {

// Keeps the `k` highest scores; among equal scores the lower token ids win. k <= 0 or
// k >= scores.size() is a no-op.
void ApplyTopK(absl::Span<double> scores, int32_t k);

// Keeps the smallest prefix of tokens, ordered by score descending then token id ascending,
// whose cumulative probability (softmax of the current scores, i.e. renormalised over what
// earlier filters kept) is >= top_p; always at least one token. top_p >= 1 is a no-op.
void ApplyTopP(absl::Span<double> scores, double top_p);

// Drops tokens whose probability is < min_p * (largest probability), probabilities being the
// softmax of the current scores. The ratio p_i / p_max = exp(s_i - s_max) does not depend on
// which other tokens earlier filters dropped (they never drop the top token), so this equals
// min-p on the distribution right after temperature. min_p <= 0 is a no-op.
void ApplyMinP(absl::Span<double> scores, double min_p);

}  // namespace moemesh
