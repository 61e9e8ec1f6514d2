// SamplingParams::Validate: the ranges of every request sampling field.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "model/sampling/sampling.h"

namespace moemesh {
namespace {

absl::Status Outside(const char* field, double value, const char* range) {
  return absl::InvalidArgumentError(absl::StrCat(field, " = ", value, " is outside ", range));
}

// lo <= v <= hi; false for NaN.
bool InClosed(double v, double lo, double hi) { return v >= lo && v <= hi; }

}  // namespace

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0 && std::isfinite(temperature))) {
    return Outside("temperature", temperature, "[0, inf) (0 = greedy)");
  }
  if (top_k < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k = ", top_k, " is outside {-1, 0} (off) or [1, inf)"));
  }
  if (!(top_p > 0 && top_p <= 1)) return Outside("top_p", top_p, "(0, 1]");
  if (!InClosed(min_p, 0, 1)) return Outside("min_p", min_p, "[0, 1]");
  if (!(repetition_penalty > 0 && std::isfinite(repetition_penalty))) {
    return Outside("repetition_penalty", repetition_penalty, "(0, inf) (1 = off)");
  }
  if (!InClosed(presence_penalty, -2, 2)) {
    return Outside("presence_penalty", presence_penalty, "[-2, 2]");
  }
  if (!InClosed(frequency_penalty, -2, 2)) {
    return Outside("frequency_penalty", frequency_penalty, "[-2, 2]");
  }
  if (logprobs < -1 || logprobs > kMaxLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("logprobs = ", logprobs, " is outside [-1, ", kMaxLogprobs, "] (-1 = none)"));
  }
  return absl::OkStatus();
}

}  // namespace moemesh
