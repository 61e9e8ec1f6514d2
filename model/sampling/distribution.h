// Turning a row of scores into a probability distribution and choosing from it: NaN cleanup,
// softmax / log-softmax with double accumulation, argmax, and a CDF walk for one uniform draw.
// No penalties or filters here (see penalties.h, filters.h). Thread-safe (pure functions).
//
// Non-finite scores follow the limits of softmax: NaN counts as -inf; -inf has probability 0;
// if any score is +inf, the +inf scores share all the mass equally; if every score is -inf
// there is no distribution (Softmax returns all zeros, LogSoftmax all -inf).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace moemesh {

// Widens logits to double, NaN -> -inf.
std::vector<double> ToScores(absl::Span<const float> logits);

// Probabilities of `scores` (sum 1, or all 0 when every score is -inf). Sums in double.
std::vector<double> Softmax(absl::Span<const double> scores);

// log(Softmax(scores)), computed as s - (max + log(sum(exp(s - max)))) in double.
std::vector<double> LogSoftmax(absl::Span<const double> scores);

// Index of the largest score; ties go to the lowest index (like torch.argmax). NaN counts as
// -inf. When no score is above -inf, returns 0. `scores` must not be empty.
int32_t ArgMax(absl::Span<const double> scores);

// Chooses an index from non-negative `weights` (need not sum to 1) with a uniform draw
// u in [0, 1): walks the cumulative sum in ascending index order and returns the first index i
// with weights[i] > 0 and u * total < cumsum(0..i). Rounding at the top end falls back to the
// last index with positive weight. Returns -1 when every weight is 0.
int32_t DrawIndex(absl::Span<const double> weights, double u);

}  // namespace moemesh
