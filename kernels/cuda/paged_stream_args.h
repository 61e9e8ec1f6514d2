// The arguments every tiled paged-attention kernel streams with (decode, attention.cu; cascade,
// cascade.cu and cascade_cluster.cu): the bf16 KV pools, the fp32 queries and outputs, the block
// tables and lengths, the block-size divisor and the query scale. Each kernel's argument struct
// derives from it; the host side fills it with MakePagedStreamArgs. Internal to kernels/cuda.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/fast_div.h"

#if defined(__CUDACC__)
#define MM_PAGED_HD __host__ __device__ __forceinline__
#else
#define MM_PAGED_HD inline
#endif

namespace moemesh::cuda {

struct PagedStreamArgs {
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const float* q;
  float* out;
  float* lse;  // optional
  const int32_t* block_tables;
  const int32_t* kv_lens;
  FastDivisor block_div;
  int32_t block_size;
  int32_t max_blocks_per_seq;
  float q_scale;        // scale * log2(e)
  uint64_t* cta_times;  // diagnostics or null
};

inline PagedStreamArgs MakePagedStreamArgs(const PagedKv& cache, const float* q, float* out,
                                           float* lse, const int32_t* block_tables,
                                           const int32_t* kv_lens, int32_t max_blocks_per_seq,
                                           float scale, uint64_t* cta_times) {
  constexpr float kLog2e = 1.4426950408889634f;
  PagedStreamArgs a{};
  a.k = cache.k;
  a.v = cache.v;
  a.q = q;
  a.out = out;
  a.lse = lse;
  a.block_tables = block_tables;
  a.kv_lens = kv_lens;
  a.block_div = FastDivisor(static_cast<uint32_t>(cache.block_size));
  a.block_size = cache.block_size;
  a.max_blocks_per_seq = max_blocks_per_seq;
  a.q_scale = scale * kLog2e;
  a.cta_times = cta_times;
  return a;
}

// Element offset in the pools ([blocks, kv_heads, block_size, head_dim]) of position p of KV
// head h of the sequence whose block table is `table`.
MM_PAGED_HD int64_t KvRowOffset(const PagedStreamArgs& a, const int32_t* table, int kv_heads,
                                int h, int p, int head_dim) {
  const uint32_t blk = a.block_div.Div(static_cast<uint32_t>(p));
  const int in_block = p - static_cast<int>(blk) * a.block_size;
  return ((static_cast<int64_t>(table[blk]) * kv_heads + h) * a.block_size + in_block) * head_dim;
}

}  // namespace moemesh::cuda
