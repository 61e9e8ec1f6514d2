#include "kernels/cuda/attention_generic.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/cuda_check.h"

namespace moemesh::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kPerLane = kGenericMaxHeadDim / 32;

__global__ void AppendGenericKernel(__nv_bfloat16* __restrict__ k_pool,
                                    __nv_bfloat16* __restrict__ v_pool,
                                    const float* __restrict__ k_new,
                                    const float* __restrict__ v_new,
                                    const int32_t* __restrict__ slots, int64_t n, int kv_heads,
                                    int head_dim, int block_size, int64_t capacity) {
  const int64_t row_width = static_cast<int64_t>(kv_heads) * head_dim;
  const int64_t total = n * row_width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / row_width, rem = i % row_width;
    const int64_t slot = slots[t];
    if (slot < 0 || slot >= capacity) continue;
    const int64_t head = rem / head_dim, d = rem % head_dim;
    const int64_t blk = slot / block_size, in_block = slot % block_size;
    const int64_t dst = ((blk * kv_heads + head) * block_size + in_block) * head_dim + d;
    k_pool[dst] = __float2bfloat16_rn(k_new[i]);
    v_pool[dst] = __float2bfloat16_rn(v_new[i]);
  }
}

// One warp: query row `q_row` of head `h` at position `pos` over positions [lo, pos] of the
// sequence whose block table is `table`. Writes out (and lse when non-null).
__device__ void AttendRow(const PagedKv& cache, const float* __restrict__ q, float* __restrict__ out,
                          float* __restrict__ lse, const int32_t* __restrict__ table, int64_t pos,
                          int64_t lo, int n_heads, int h, float scale) {
  const int lane = threadIdx.x % 32;
  const int D = cache.head_dim;
  const int group = n_heads / cache.kv_heads;
  const int kvh = h / group;
  float qr[kPerLane], acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    qr[i] = d < D ? q[d] : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = lo; j <= pos; ++j) {
    const int64_t blk = table[j / cache.block_size];
    const int64_t base = ((blk * cache.kv_heads + kvh) * cache.block_size + j % cache.block_size) * D;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < D) dot += qr[i] * __bfloat162float(cache.k[base + d]);
    }
    for (int o = 16; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float s = dot * scale;
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);
    const float p = expf(s - m_new);
    l = l * correction + p;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      const float v = d < D ? __bfloat162float(cache.v[base + d]) : 0.0f;
      acc[i] = acc[i] * correction + p * v;
    }
    m = m_new;
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < D) out[d] = acc[i] * inv;
  }
  if (lse != nullptr && lane == 0) *lse = l > 0.0f ? m + logf(l) : -INFINITY;
}

__global__ void DecodeGenericKernel(PagedKv cache, DecodeParams p) {
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (unit >= static_cast<int64_t>(p.batch) * p.n_heads) return;
  const int b = static_cast<int>(unit / p.n_heads), h = static_cast<int>(unit % p.n_heads);
  const int64_t off = (static_cast<int64_t>(b) * p.n_heads + h) * cache.head_dim;
  const int64_t kv_len = p.kv_lens[b];
  float* lse = p.lse != nullptr ? p.lse + static_cast<int64_t>(b) * p.n_heads + h : nullptr;
  if (kv_len <= 0) {  // padding row
    for (int d = threadIdx.x % 32; d < cache.head_dim; d += 32) p.out[off + d] = 0.0f;
    if (lse != nullptr && threadIdx.x % 32 == 0) *lse = -INFINITY;
    return;
  }
  const int64_t pos = kv_len - 1;
  const int64_t lo = p.window > 0 ? max(static_cast<int64_t>(0), pos - p.window + 1) : 0;
  AttendRow(cache, p.q + off, p.out + off, lse,
            p.block_tables + static_cast<int64_t>(b) * p.max_blocks_per_seq, pos, lo, p.n_heads,
            h, p.scale);
}

// Units are (sequence, query index < max_q_len, head); indices past q_lens[b] exit.
__global__ void PrefillGenericKernel(PagedKv cache, PrefillParams p) {
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t per_seq = static_cast<int64_t>(p.max_q_len) * p.n_heads;
  if (unit >= per_seq * p.batch) return;
  const int b = static_cast<int>(unit / per_seq);
  const int64_t i = (unit % per_seq) / p.n_heads;
  const int h = static_cast<int>(unit % p.n_heads);
  const int64_t len = p.q_lens[b];
  if (i >= len) return;
  const int64_t r = p.q_start[b] + i;
  const int64_t pos = p.kv_lens[b] - len + i;
  const int64_t lo = p.window > 0 ? max(static_cast<int64_t>(0), pos - p.window + 1) : 0;
  const int64_t off = (r * p.n_heads + h) * cache.head_dim;
  AttendRow(cache, p.q + off, p.out + off, nullptr,
            p.block_tables + static_cast<int64_t>(b) * p.max_blocks_per_seq, pos, lo, p.n_heads,
            h, p.scale);
}

void Check(const PagedKv& cache, int n_heads, const char* what) {
  if (cache.head_dim < 1 || cache.head_dim > kGenericMaxHeadDim || cache.kv_heads < 1 ||
      cache.block_size < 1 || (n_heads > 0 && n_heads % cache.kv_heads != 0)) {
    std::fprintf(stderr, "%s: unsupported shape: head_dim %d (1..%d), kv_heads %d, n_heads %d, "
                 "block_size %d\n", what, cache.head_dim, kGenericMaxHeadDim, cache.kv_heads,
                 n_heads, cache.block_size);
    std::abort();
  }
}

unsigned Blocks(int64_t warps) { return static_cast<unsigned>((warps + kWarps - 1) / kWarps); }

}  // namespace

void AppendKvGeneric(const PagedKv& cache, const float* k_new, const float* v_new,
                     const int32_t* slots, int64_t n, cudaStream_t stream) {
  Check(cache, 0, "AppendKv");
  const int64_t total = n * cache.kv_heads * cache.head_dim;
  if (total == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 4096));
  AppendGenericKernel<<<blocks, 256, 0, stream>>>(
      cache.k, cache.v, k_new, v_new, slots, n, cache.kv_heads, cache.head_dim, cache.block_size,
      static_cast<int64_t>(cache.num_blocks) * cache.block_size);
  MM_CUDA_CHECK(cudaGetLastError());
}

void DecodeAttentionGeneric(const PagedKv& cache, const DecodeParams& p, cudaStream_t stream) {
  Check(cache, p.n_heads, "DecodeAttention");
  const int64_t warps = static_cast<int64_t>(p.batch) * p.n_heads;
  if (warps == 0) return;
  DecodeGenericKernel<<<Blocks(warps), kWarps * 32, 0, stream>>>(cache, p);
  MM_CUDA_CHECK(cudaGetLastError());
}

void PrefillAttentionGeneric(const PagedKv& cache, const PrefillParams& p, cudaStream_t stream) {
  Check(cache, p.n_heads, "PrefillAttention");
  const int64_t warps = static_cast<int64_t>(p.batch) * p.max_q_len * p.n_heads;
  if (warps <= 0) return;
  PrefillGenericKernel<<<Blocks(warps), kWarps * 32, 0, stream>>>(cache, p);
  MM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace moemesh::cuda
