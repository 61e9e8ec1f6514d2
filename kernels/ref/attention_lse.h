// Scalar reference attention that also returns each query head's log-sum-exp of the scaled
// scores (natural log): the quantity split-KV kernels merge partial results on. Same masking and
// GQA mapping as ref::Attention (ops.h), in double throughout. Not for paged caches (gather the
// sequence first). Pure functions; thread-safe on disjoint outputs.
#pragma once

#include <cstdint>

namespace moemesh::ref {

// Causal grouped-query attention like ref::Attention, plus lse [q_len, n_heads]:
// lse = ln sum_j exp(scale * q . k_j) over the keys the query sees. A query that sees no key
// (kv_len == 0) gets out = 0 and lse = -inf.
void AttentionLse(const float* q, const float* k, const float* v, float* out, float* lse,
                  int64_t q_len, int64_t kv_len, int n_heads, int n_kv_heads, int head_dim,
                  float scale, int64_t window);

}  // namespace moemesh::ref
