// Scalar reference operators: obviously correct, fp32 in and out, double accumulation where a
// sum is long. Every optimized backend (kernels/cpu, kernels/cuda) is checked against these.
// Framework-free: raw pointers and sizes only; nothing here knows about models or the network.
// Thread-safe (pure functions).
#pragma once

#include <cstdint>

namespace moemesh::ref {

// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]): a row-major linear layer, weights [out, in].
void Linear(const float* x, const float* w, const float* bias, float* y, int64_t m, int64_t n,
            int64_t k);

// out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i], for `rows` rows of `n` elements.
void RmsNorm(const float* x, const float* weight, float* out, int64_t rows, int64_t n, float eps);

// Inverse frequencies of rotary embeddings, computed in fp32 as Hugging Face does:
// inv_freq[i] = 1 / theta^(2i / dim), i < dim / 2.
void RopeInvFreq(float theta, int dim, float* inv_freq);

// NeoX-style (rotate-half) RoPE in place on `heads` vectors of `head_dim` at one position:
// x[i] and x[i + d/2] form a pair rotated by angle position * inv_freq[i].
void RopeNeox(float* x, int64_t heads, int head_dim, int64_t position, const float* inv_freq);

// Numerically stable softmax in place over n values.
void Softmax(float* x, int64_t n);

// out[i] = silu(gate[i]) * up[i].
void SiluMul(const float* gate, const float* up, float* out, int64_t n);

// Causal grouped-query attention of `q_len` new query tokens over a sequence's cache.
// q: [q_len, n_heads, head_dim]; k, v: [kv_len, n_kv_heads, head_dim] holding every token of the
// sequence so far (the new ones are its last q_len rows); out: [q_len, n_heads, head_dim].
// Query head h reads KV head h / (n_heads / n_kv_heads). Query i sits at position
// kv_len - q_len + i and sees keys at positions <= its own; with window > 0 only keys at
// positions > its own - window.
void Attention(const float* q, const float* k, const float* v, float* out, int64_t q_len,
               int64_t kv_len, int n_heads, int n_kv_heads, int head_dim, float scale,
               int64_t window);

// Router: probabilities = softmax(logits) over n_experts in fp32; picks the top_k largest
// (ties to the lower expert id), optionally renormalised to sum to 1.
void RouteTopK(const float* logits, int n_experts, int top_k, bool renormalize, int32_t* ids,
               float* weights);

}  // namespace moemesh::ref
