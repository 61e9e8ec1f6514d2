// Repetition, frequency and presence penalties applied in place to one row of scores.
// Nothing about temperature, filtering or drawing (see filters.h, distribution.h).
// Thread-safe (pure functions). Token ids outside [0, scores.size()) match no score and are
// ignored (request validation upstream rejects them; the sampler does not crash on them).
#pragma once

#include <cstdint>

#include "absl/types/span.h"

namespace moemesh {

// Hugging Face semantics: every distinct token id that occurs in `prompt_tokens` or
// `generated_tokens` is penalised exactly once, score > 0 ? score / penalty : score * penalty.
// penalty == 1 is a no-op.
void ApplyRepetitionPenalty(absl::Span<double> scores, absl::Span<const int32_t> prompt_tokens,
                            absl::Span<const int32_t> generated_tokens, double penalty);

// OpenAI semantics over the generated tokens only, with count = occurrences of the id in
// `generated_tokens`: score -= frequency * count + presence * (count > 0).
void ApplyFrequencyPresencePenalty(absl::Span<double> scores,
                                   absl::Span<const int32_t> generated_tokens, double frequency,
                                   double presence);

}  // namespace moemesh
