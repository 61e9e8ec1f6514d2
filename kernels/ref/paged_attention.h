// Scalar reference attention over a PAGED KV cache: a sequence's keys and values live in
// fixed-size blocks of a shared pool, found through the sequence's block table. Same math as
// ref::Attention (ops.h); this file only adds the indirection and the cache writes.
// Framework-free (raw pointers and sizes); pure functions, thread-safe on disjoint outputs.
#pragma once

#include <cstdint>

namespace moemesh::ref {

// Pools are [num_blocks, block_size, n_kv_heads, head_dim]. Token position p of a sequence is
// row p % block_size of block block_table[p / block_size].

// Writes n_tokens rows of k_new / v_new ([n_tokens, n_kv_heads, head_dim]) at positions
// start_pos .. start_pos + n_tokens - 1. The block table must cover those positions.
void WriteKv(float* k_pool, float* v_pool, const int32_t* block_table, int block_size,
             int64_t start_pos, int64_t n_tokens, int n_kv_heads, int head_dim,
             const float* k_new, const float* v_new);

// ref::Attention with k and v read from the pools through block_table: q [q_len, n_heads,
// head_dim] are the last q_len of kv_len tokens; causal, optionally windowed; out like q.
void PagedAttention(const float* q, const float* k_pool, const float* v_pool,
                    const int32_t* block_table, int block_size, float* out, int64_t q_len,
                    int64_t kv_len, int n_heads, int n_kv_heads, int head_dim, float scale,
                    int64_t window);

}  // namespace moemesh::ref
