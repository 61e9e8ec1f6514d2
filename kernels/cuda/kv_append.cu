// AppendKv of attention.h: writes new K/V rows (fp32) into the paged bf16 cache at their slots,
// one thread per 8 elements of one (token, KV head) row; head sizes that are not a multiple of 8
// go to the generic kernel (attention_generic.h).
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_generic.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch_util.h"
#include "kernels/cuda/warp_mma.cuh"

namespace moemesh::cuda {
namespace {

using warp_mma::PackBf16;

template <bool kVector>
__global__ void AppendKvKernel(__nv_bfloat16* k_pool, __nv_bfloat16* v_pool, const float* k_new,
                               const float* v_new, const int32_t* slots, int64_t n_chunks,
                               int kv_heads, int head_dim, int block_size, int64_t capacity) {
  const int chunks_per_row = head_dim / 8;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n_chunks;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / chunks_per_row;  // token * kv_heads + head
    const int c = static_cast<int>(i % chunks_per_row);
    const int64_t token = row / kv_heads;
    const int head = static_cast<int>(row % kv_heads);
    const int64_t slot = slots[token];
    if (slot < 0 || slot >= capacity) continue;
    const int64_t blk = slot / block_size;
    const int64_t in_block = slot % block_size;
    const int64_t dst = ((blk * kv_heads + head) * block_size + in_block) * head_dim + c * 8;
    const int64_t src = row * head_dim + c * 8;
    float kx[8], vx[8];
    if constexpr (kVector) {
      const float4* k4 = reinterpret_cast<const float4*>(k_new + src);
      const float4* v4 = reinterpret_cast<const float4*>(v_new + src);
      const float4 ka = k4[0], kb = k4[1], va = v4[0], vb = v4[1];
      const float kt[8] = {ka.x, ka.y, ka.z, ka.w, kb.x, kb.y, kb.z, kb.w};
      const float vt[8] = {va.x, va.y, va.z, va.w, vb.x, vb.y, vb.z, vb.w};
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        kx[e] = kt[e];
        vx[e] = vt[e];
      }
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        kx[e] = k_new[src + e];
        vx[e] = v_new[src + e];
      }
    }
    uint4 kp, vp;
    kp.x = PackBf16(__float2bfloat16_rn(kx[0]), __float2bfloat16_rn(kx[1]));
    kp.y = PackBf16(__float2bfloat16_rn(kx[2]), __float2bfloat16_rn(kx[3]));
    kp.z = PackBf16(__float2bfloat16_rn(kx[4]), __float2bfloat16_rn(kx[5]));
    kp.w = PackBf16(__float2bfloat16_rn(kx[6]), __float2bfloat16_rn(kx[7]));
    vp.x = PackBf16(__float2bfloat16_rn(vx[0]), __float2bfloat16_rn(vx[1]));
    vp.y = PackBf16(__float2bfloat16_rn(vx[2]), __float2bfloat16_rn(vx[3]));
    vp.z = PackBf16(__float2bfloat16_rn(vx[4]), __float2bfloat16_rn(vx[5]));
    vp.w = PackBf16(__float2bfloat16_rn(vx[6]), __float2bfloat16_rn(vx[7]));
    *reinterpret_cast<uint4*>(k_pool + dst) = kp;
    *reinterpret_cast<uint4*>(v_pool + dst) = vp;
  }
}

}  // namespace

void AppendKv(const PagedKv& cache, const float* k_new, const float* v_new, const int32_t* slots,
              int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  if (cache.head_dim % 8 != 0 && cache.head_dim > 0 && cache.head_dim <= kGenericMaxHeadDim) {
    AppendKvGeneric(cache, k_new, v_new, slots, n, stream);  // rows not in 16-byte chunks
    return;
  }
  if (cache.head_dim % 8 != 0 || cache.head_dim <= 0 || cache.kv_heads <= 0 ||
      cache.block_size <= 0 || cache.num_blocks < 0) {
    Fail("AppendKv", "bad cache shape: head_dim %d, kv_heads %d, block_size %d, num_blocks %d",
         cache.head_dim, cache.kv_heads, cache.block_size, cache.num_blocks);
  }
  if (cache.k == nullptr || cache.v == nullptr || k_new == nullptr || v_new == nullptr ||
      slots == nullptr) {
    Fail("AppendKv", "null pointer");
  }
  if (!Aligned(cache.k, 16) || !Aligned(cache.v, 16)) {
    Fail("AppendKv", "cache pools must be 16-byte aligned");
  }
  const int64_t n_chunks = n * cache.kv_heads * (cache.head_dim / 8);
  const int64_t capacity = static_cast<int64_t>(cache.num_blocks) * cache.block_size;
  constexpr int kAppendThreads = 256;
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((n_chunks + kAppendThreads - 1) / kAppendThreads, 8192));
  if (Aligned(k_new, 16) && Aligned(v_new, 16)) {
    AppendKvKernel<true><<<blocks, kAppendThreads, 0, stream>>>(
        cache.k, cache.v, k_new, v_new, slots, n_chunks, cache.kv_heads, cache.head_dim,
        cache.block_size, capacity);
  } else {
    AppendKvKernel<false><<<blocks, kAppendThreads, 0, stream>>>(
        cache.k, cache.v, k_new, v_new, slots, n_chunks, cache.kv_heads, cache.head_dim,
        cache.block_size, capacity);
  }
  MM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace moemesh::cuda
