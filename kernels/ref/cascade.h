// Scalar reference of cascade (shared-prefix) attention over a paged KV cache: a prefix pass of
// all query rows of a cascade level against the blocks they share, a suffix pass per sequence over
// its own positions, and the exact merge of the two partial results through their log-sum-exps.
// The result equals ref::PagedAttention (paged_attention.h) up to rounding. Framework-free (raw
// pointers and sizes); pure functions, thread-safe on disjoint outputs.
#pragma once

#include <cstdint>

namespace moemesh::ref {

// An attention state of one query row (one token, one query head) over a set of KV positions J:
// v = sum_j softmax_j(scale q.k_j) v_j ([head_dim], normalised over J only) and
// lse = ln sum_{j in J} exp(scale q.k_j) (natural log, fp32). An empty J gives v = 0, lse = -inf.
// Outputs below are [rows, n_heads, head_dim] for v and [rows, n_heads] for lse.
//
// Pools, block tables and positions are as in paged_attention.h; query head h reads KV head
// h / (n_heads / n_kv_heads).

// Prefix pass of one cascade level: `rows` query tokens q ([rows, n_heads, head_dim], one token
// per member sequence) against positions [begin, end) of one block table (the blocks the members
// share), without a mask: every member's query sits at a position >= end. For each KV head the
// rows (member, query head of its group) are taken together, the way a GPU kernel folds them into
// one tile. begin == end gives empty states.
void CascadePrefix(const float* q, int64_t rows, const float* k_pool, const float* v_pool,
                   const int32_t* block_table, int block_size, int64_t begin, int64_t end,
                   int n_heads, int n_kv_heads, int head_dim, float scale, float* v_out,
                   float* lse_out);

// Suffix pass of one sequence: q ([q_len, n_heads, head_dim]) are the last q_len of kv_len
// positions; the query at position p attends positions [max(begin, p - window + 1), p] (causal;
// window 0: no window). A query with nothing to attend gets an empty state.
void CascadeSuffix(const float* q, const float* k_pool, const float* v_pool,
                   const int32_t* block_table, int block_size, int64_t begin, int64_t q_len,
                   int64_t kv_len, int n_heads, int n_kv_heads, int head_dim, float scale,
                   int64_t window, float* v_out, float* lse_out);

// Merges `rows` states b into states a, in place: v = (v_a e^{s_a} + v_b e^{s_b}) /
// (e^{s_a} + e^{s_b}), s = ln(e^{s_a} + e^{s_b}), computed relative to max(s_a, s_b) so nothing
// overflows. Merging with an empty state (s = -inf) leaves the other unchanged; two empty
// states stay empty (v = 0).
void MergeStates(float* v_a, float* lse_a, const float* v_b, const float* lse_b, int64_t rows,
                 int head_dim);

}  // namespace moemesh::ref
