// CUDA token sampling with the exact semantics of model/sampling/sampling.h (Sampler::Sample):
// NaN as -inf, repetition / frequency / presence penalties, greedy at temperature 0, otherwise
// temperature, top-k, top-p, min-p and one draw u walking the CDF in ascending token order.
// The draw u is computed by the caller from the request's SplitMix64 stream, so a request
// samples the same tokens here and in the CPU reference (up to rounding at CDF boundaries).
// One thread block per row; scratch is the caller's, so launches never allocate and can be
// captured in a CUDA graph. Thread-safe (stateless launches).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moemesh::cuda {

struct SampleRowParams {
  float temperature = 1.0f;  // 0 = greedy
  int32_t top_k = 0;         // <= 0: off
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  double u = 0.0;            // the row's uniform draw in [0, 1)
  // Penalised tokens of this row: entries [penalty_begin, penalty_end) of the penalty arrays.
  int32_t penalty_begin = 0;
  int32_t penalty_end = 0;
  int32_t want_logprob = 0;  // 1: write the chosen token's log-softmax of the raw logits
};

// Each penalty entry is one distinct token of the request's prompt or output: its id and how
// many times it was generated (0 for a prompt-only token). Repetition penalties apply to every
// entry, frequency and presence penalties to entries with a count > 0. Ids outside [0, vocab) are
// ignored; an id listed twice in one row is penalised once (with one of its entries' counts).
struct PenaltyTokens {
  const int32_t* ids = nullptr;
  const int32_t* generated_counts = nullptr;
};

// Scratch bytes Sample needs for `rows` rows of `vocab` logits: one fp64 row per block, at most
// 256 blocks (more rows are taken in turn), so min(rows, 256) * vocab * 8 bytes, rounded up.
size_t SampleWorkspaceBytes(int64_t rows, int64_t vocab);

// logits [rows, vocab] fp32 (not modified); params [rows] on the device; tokens [rows] and
// logprobs [rows] (may be null) on the device. logprobs[row] is 0 when the row's want_logprob is
// 0. vocab must be in [1, 2^20] and workspace_bytes >= SampleWorkspaceBytes(rows, vocab) (else the
// call aborts: a caller bug). The same inputs give the same outputs, bit for bit.
void Sample(const float* logits, int64_t rows, int64_t vocab, const SampleRowParams* params,
            PenaltyTokens penalties, int32_t* tokens, float* logprobs, void* workspace,
            size_t workspace_bytes, cudaStream_t stream);

}  // namespace moemesh::cuda
