// CUDA elementwise, normalisation, rotary, embedding and routing operators of the attention
// worker's forward pass. Activations are fp32 on the device; weights that are large (the
// embedding table) are bf16, small ones (norm weights, rotary frequencies) fp32. Each op has
// its scalar twin in kernels/ref/ops.h and a case in tests/conformance. Raw device pointers and
// a stream; every launch is asynchronous and CUDA-graph capturable (no allocation, no host
// synchronisation, launch shapes depend only on the sizes passed). Thread-safe (stateless).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace moemesh::cuda {

// out = x / sqrt(mean(x^2) + eps) * weight for `rows` rows of n (also per-head q/k norms:
// rows = tokens * heads, n = head_dim). out may alias x.
void RmsNorm(const float* x, const float* weight, float* out, int64_t rows, int64_t n, float eps,
             cudaStream_t stream);

// Residual add fused with the next norm: x += branch, then out = RmsNorm(x).
void AddRmsNorm(float* x, const float* branch, const float* weight, float* out, int64_t rows,
                int64_t n, float eps, cudaStream_t stream);

// x[i] += y[i].
void Add(float* x, const float* y, int64_t n, cudaStream_t stream);

// x[i] = clamp(x[i], -limit, limit); NaN stays NaN (like std::clamp), infinities clamp.
void Clamp(float* x, int64_t n, float limit, cudaStream_t stream);

// NeoX (rotate-half) RoPE in place, like ref::RopeNeox: x is [tokens, heads, head_dim]; token t
// is at positions[t]; inv_freq has head_dim / 2 values. Angles position * inv_freq in fp32.
void RopeNeox(float* x, const int32_t* positions, const float* inv_freq, int64_t tokens,
              int heads, int head_dim, cudaStream_t stream);

// gate_up is [rows, 2 * inter] (the gate then the up projection of each row);
// out[r, i] = silu(gate[r, i]) * up[r, i], out is [rows, inter].
void SiluMul(const float* gate_up, float* out, int64_t rows, int64_t inter, cudaStream_t stream);

// Vocab-parallel embedding: out[t] = table[ids[t] - vocab_begin] (bf16 widened to fp32) when the
// id lies in [vocab_begin, vocab_begin + vocab_rows), else zeros. table is [vocab_rows, hidden].
void Embedding(const int32_t* ids, const __nv_bfloat16* table, int64_t vocab_begin,
               int64_t vocab_rows, float* out, int64_t tokens, int64_t hidden,
               cudaStream_t stream);

// Router, like ref::RouteTopK per row: softmax over n_experts in fp32, the top_k largest (ties
// to the lower id), optionally renormalised. logits [rows, n_experts]; ids and weights
// [rows, top_k]. n_experts <= 1024, top_k <= min(32, n_experts) (else aborts: caller bug).
// One warp per row. With NaN logits the ids stay in [0, n_experts) but are unspecified.
void RouteTopK(const float* logits, int64_t rows, int n_experts, int top_k, bool renormalize,
               int32_t* ids, float* weights, cudaStream_t stream);

// Splits fp32 values into two bf16 parts: hi = bf16(x), lo = bf16(x - hi), so hi + lo carries
// about 16 significant bits. Used to run fp32 activations through bf16 tensor-core GEMMs.
void SplitBf16(const float* x, __nv_bfloat16* hi, __nv_bfloat16* lo, int64_t n,
               cudaStream_t stream);

// Widens / narrows between fp32 and bf16 (round to nearest even).
void ToBf16(const float* x, __nv_bfloat16* out, int64_t n, cudaStream_t stream);
void ToFloat(const __nv_bfloat16* x, float* out, int64_t n, cudaStream_t stream);

// The two small kernels of the bf16 GEMM (gemm.h); exposed for it and for its tests.

// y[r, j] = a[r, j] + b[r, j] + bias[j] over [rows, n] (in that order of summation); b and/or
// bias may be null (terms dropped); y may alias a or b. Sums the hi and lo halves of the split
// GEMM's product and adds biases that cuBLASLt's epilogue did not.
void AddRowsBias(const float* a, const float* b, const float* bias, float* y, int64_t rows,
                 int64_t n, cudaStream_t stream);

// Simple and always correct y[m, n] = x[m, k] . w[n, k]^T (+ bias[n]): one warp per output,
// fp32 accumulation, no alignment needs (any pointers, any sizes, k may be 0). round_x_to_bf16
// rounds each x to bf16 first (the semantics of Precision::kBf16); otherwise x is used in fp32
// (at least as accurate as Precision::kSplit). Gemm's path for shapes cuBLASLt rejects. y must
// not alias x or w.
void LinearSimple(const float* x, const __nv_bfloat16* w, const float* bias, float* y, int64_t m,
                  int64_t n, int64_t k, bool round_x_to_bf16, cudaStream_t stream);

}  // namespace moemesh::cuda
