// Token sampling: the exact CPU fp32 reference that every other sampler (GPU) is checked against.
// Holds request sampling parameters and the per-request Sampler; the building blocks are in
// penalties.h, filters.h, distribution.h and rng.h. No batching, no GPU code here.
// SamplingParams is a plain value; a Sampler is owned by one request and is not thread-safe.
//
// Sampler::Sample processes one row of logits in this order (all arithmetic in double, the
// input row is never modified):
//   1. NaN logits count as -inf.
//   2. Repetition penalty (HF) over the distinct ids of prompt and generated tokens:
//      s > 0 ? s / p : s * p.
//   3. Frequency and presence penalties (OpenAI) over the generated tokens:
//      s -= frequency * count + presence * (count > 0).
//   4. temperature == 0: greedy, the argmax of the penalised scores (ties -> lowest id), and
//      steps 5-9 are skipped.
//   5. Divide by temperature.
//   6. Top-k: keep the k highest (ties -> lower ids).
//   7. Top-p: keep the smallest set of most probable tokens (ties -> lower ids) whose
//      cumulative probability, renormalised over the top-k survivors, is >= top_p; at least one.
//   8. Min-p: drop tokens with probability < min_p * max probability (distribution after
//      temperature; the ratio is unaffected by steps 6-7).
//   9. Renormalise over the survivors and draw: u in [0, 1) from the request's SplitMix64
//      stream (rng.h), walk the CDF in ascending token id order (DrawIndex in distribution.h).
// Every call consumes exactly one draw, greedy or not, so call i (0-based) of a request uses
// u_i = SplitMix64::ToUnitDouble(SplitMix64::At(seed, i)) whatever happened before.
//
// Non-finite values: -inf logits are never drawn; if some scores are +inf, the +inf tokens
// share the mass equally (the softmax limit). If no score is above -inf after penalties, the
// result is token 0 (and its logprob is -inf when every raw logit is -inf or NaN).
//
// Logprobs come from the log-softmax of the RAW logits (before penalties and temperature, like
// vLLM's default): `logprob` of the chosen token, and `top` the n most likely tokens, sorted by
// logprob descending then id ascending (n = min(logprobs, vocab size)). With logprobs == -1
// they are not computed: logprob stays 0 and top stays empty.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "model/sampling/rng.h"

namespace moemesh {

struct SamplingParams {
  float temperature = 1.0f;         // >= 0, finite; 0 = greedy
  int32_t top_k = 0;                // 0 or -1 = off, else >= 1
  float top_p = 1.0f;               // (0, 1]
  float min_p = 0.0f;               // [0, 1]
  float repetition_penalty = 1.0f;  // > 0, finite; 1 = off
  float presence_penalty = 0.0f;    // [-2, 2]
  float frequency_penalty = 0.0f;   // [-2, 2]
  std::optional<uint64_t> seed;     // same seed + same logits sequence => same tokens
  int32_t logprobs = -1;            // -1 none; 0 chosen token only; n <= 20: plus top-n

  static constexpr int32_t kMaxLogprobs = 20;

  // InvalidArgument naming the field, the value and the allowed range, e.g.
  // "top_p = 1.5 is outside (0, 1]". NaN is outside every range.
  absl::Status Validate() const;
};

struct TokenLogprob {
  int32_t token;
  float logprob;
};

struct SampleResult {
  int32_t token;
  float logprob = 0;              // of `token`, when logprobs >= 0
  std::vector<TokenLogprob> top;  // logprobs alternatives, most likely first
};

class Sampler {
 public:
  // `fallback_seed` is used when params.seed is unset (callers pass a random or counter-based
  // value). `params` must have passed Validate(): invalid params are a caller bug (checked).
  Sampler(const SamplingParams& params, uint64_t fallback_seed);

  // logits: one row of vocab_size (> 0, checked) values. prompt_tokens and generated_tokens feed
  // the penalties (see the header comment); ids outside [0, vocab_size) are ignored.
  SampleResult Sample(absl::Span<const float> logits, absl::Span<const int32_t> prompt_tokens,
                      absl::Span<const int32_t> generated_tokens);

  const SamplingParams& params() const { return params_; }
  // Resumes a request's stream after `n` tokens were already sampled (one draw per Sample), so a
  // request rebuilt elsewhere (after preemption or on another worker) draws what it would have.
  void SkipDraws(uint64_t n) { rng_.Skip(n); }

 private:
  int32_t ChooseToken(absl::Span<const float> logits, absl::Span<const int32_t> prompt_tokens,
                      absl::Span<const int32_t> generated_tokens, double u) const;
  void FillLogprobs(absl::Span<const float> logits, SampleResult& result) const;

  SamplingParams params_;
  SplitMix64 rng_;
};

}  // namespace moemesh
