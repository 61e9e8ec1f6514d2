// Causal flash-attention prefill over the paged bf16 KV cache (PrefillAttention in attention.h).
//
// One CTA per (q-tile, KV head, sequence). A q-tile is kRows "packed" rows: packed row r of a
// sequence is query r / G, head kv_head * G + r % G (the G query heads of a KV head are folded
// into the rows, so every K/V byte staged in shared memory serves all of them). KV tiles of
// kKeys positions are gathered through the block table with cp.async, double-buffered, and
// consumed with an online softmax (running max and sum in log2 units); the score matrix never
// leaves registers except for one kRows x kKeys tile of probabilities in shared memory.
// All math is fp32 on CUDA cores: K/V are widened exactly from bf16, q and P are never rounded,
// so the result tracks an fp32 reference on the same bf16 K/V to ~1e-6.
//
// Thread layout (256 threads): thread t owns rows 4 * (t / 16) .. + 3 of the tile. For scores it
// owns keys t % 16 + {0, 16, 32, 48}; for the output it owns head dims (t % 16) * D / 16 .. + D
// / 16. The 16 threads of a row group are one half-warp, so row reductions are four shuffles and
// the probability tile is exchanged under __syncwarp.
#include <cuda_bf16.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_generic.h"
#include "kernels/cuda/cuda_check.h"

namespace moemesh::cuda {
namespace {

constexpr int kRows = 64;  // packed (query, head) rows per CTA
constexpr int kKeys = 64;  // key positions per KV tile
constexpr int kThreads = 256;
constexpr int kRowsPerThread = 4;
constexpr int kLanesPerRow = 16;  // threads sharing a row group (one half-warp)
constexpr int kKeysPerThread = kKeys / kLanesPerRow;
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kThreads / kLanesPerRow * kRowsPerThread == kRows, "row groups must cover the tile");
static_assert(kKeysPerThread == 4, "score loop is written for 4 keys per thread");

// Shared memory layout for head dim D: q (fp32, pre-scaled), two K and two V buffers (bf16),
// the probability tile (fp32). Row strides are padded by 16 bytes: the 16-byte K reads of eight
// consecutive keys then hit eight distinct 4-bank groups.
template <int D>
struct Layout {
  static constexpr int kQStride = D + 4;      // floats
  static constexpr int kKvStride = D + 8;     // bf16 elements
  static constexpr int kPStride = kKeys + 4;  // floats
  static constexpr size_t kQBytes = sizeof(float) * kRows * kQStride;
  static constexpr size_t kKvBytes = sizeof(__nv_bfloat16) * kKeys * kKvStride;
  static constexpr size_t kPBytes = sizeof(float) * kRows * kPStride;
  static constexpr size_t kKOffset = kQBytes;                  // K buffers 0, 1
  static constexpr size_t kVOffset = kKOffset + 2 * kKvBytes;  // V buffers 0, 1
  static constexpr size_t kPOffset = kVOffset + 2 * kKvBytes;
  static constexpr size_t kBytes = kPOffset + kPBytes;
  static_assert(kQBytes % 16 == 0 && kKvBytes % 16 == 0 && kPBytes % 16 == 0, "16-byte aligned");
};

extern __shared__ __align__(16) unsigned char prefill_smem[];

// bf16 -> fp32 is exact: the bf16 bits are the high half of the float.
__device__ __forceinline__ float Bf16Lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float Bf16Hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// Stages key positions first .. first + kKeys - 1 of one KV head into ks / vs; positions at or
// past `end` are zero-filled (a masked probability is exactly 0, and 0 * 0 stays 0).
template <int D>
__device__ __forceinline__ void LoadKvTile(const PagedKv& cache, const int32_t* table, int kv_head,
                                           int first, int end, __nv_bfloat16* ks,
                                           __nv_bfloat16* vs) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per key row
  for (int c = threadIdx.x; c < kKeys * kChunks; c += kThreads) {
    const int j = c / kChunks;
    const int part = c % kChunks;
    const int pos = first + j;
    __nv_bfloat16* kd = ks + j * Layout<D>::kKvStride + part * 8;
    __nv_bfloat16* vd = vs + j * Layout<D>::kKvStride + part * 8;
    if (pos < end) {
      const int64_t block = table[pos / cache.block_size];
      const int64_t row =
          (block * cache.kv_heads + kv_head) * cache.block_size + pos % cache.block_size;
      const int64_t off = row * D + part * 8;
      __pipeline_memcpy_async(kd, cache.k + off, 16);
      __pipeline_memcpy_async(vd, cache.v + off, 16);
    } else {
      *reinterpret_cast<uint4*>(kd) = make_uint4(0, 0, 0, 0);
      *reinterpret_cast<uint4*>(vd) = make_uint4(0, 0, 0, 0);
    }
  }
}

// Loads DPT (4 or 8) consecutive bf16 values as floats.
template <int DPT>
__device__ __forceinline__ void LoadBf16(const __nv_bfloat16* src, float* dst) {
  if constexpr (DPT == 8) {
    const uint4 raw = *reinterpret_cast<const uint4*>(src);
    dst[0] = Bf16Lo(raw.x), dst[1] = Bf16Hi(raw.x), dst[2] = Bf16Lo(raw.y), dst[3] = Bf16Hi(raw.y);
    dst[4] = Bf16Lo(raw.z), dst[5] = Bf16Hi(raw.z), dst[6] = Bf16Lo(raw.w), dst[7] = Bf16Hi(raw.w);
  } else {
    static_assert(DPT == 4, "4 or 8 values");
    const uint2 raw = *reinterpret_cast<const uint2*>(src);
    dst[0] = Bf16Lo(raw.x), dst[1] = Bf16Hi(raw.x), dst[2] = Bf16Lo(raw.y), dst[3] = Bf16Hi(raw.y);
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads, 1)
    PrefillKernel(PagedKv cache, PrefillParams p, int group) {
  using L = Layout<D>;
  constexpr int kDimsPerThread = D / kLanesPerRow;
  const int b = blockIdx.z;
  const int kv_head = blockIdx.y;
  const int tile = gridDim.x - 1 - blockIdx.x;  // longest (last) tiles are scheduled first
  const int q_len = p.q_lens[b];
  const int rows = q_len * group;
  const int row0 = tile * kRows;
  if (row0 >= rows) return;  // the whole CTA leaves before any barrier

  const int kv_len = p.kv_lens[b];
  const int q_first = p.q_start[b];
  const int past = kv_len - q_len;  // positions before this chunk's first query
  const int row_last = std::min(rows, row0 + kRows) - 1;
  // Key positions any row of the tile may see: [key_begin, key_end).
  const int pos_lo = past + row0 / group;
  const int key_end = past + row_last / group + 1;
  const int key_begin = p.window > 0 ? std::max(0, pos_lo - p.window + 1) : 0;
  const int n_tiles = key_end > key_begin ? (key_end - key_begin + kKeys - 1) / kKeys : 0;
  const int32_t* table = p.block_tables + static_cast<int64_t>(b) * p.max_blocks_per_seq;

  float* qs = reinterpret_cast<float*>(prefill_smem);
  // K/V buffer `buf` (0 or 1); computed, not indexed from an array, to stay in registers.
  auto k_buf = [](int buf) {
    return reinterpret_cast<__nv_bfloat16*>(prefill_smem + L::kKOffset + buf * L::kKvBytes);
  };
  auto v_buf = [](int buf) {
    return reinterpret_cast<__nv_bfloat16*>(prefill_smem + L::kVOffset + buf * L::kKvBytes);
  };
  float* ps = reinterpret_cast<float*>(prefill_smem + L::kPOffset);

  if (n_tiles > 0) LoadKvTile<D>(cache, table, kv_head, key_begin, key_end, k_buf(0), v_buf(0));
  __pipeline_commit();

  // q tile, scaled into log2 units (softmax of s is exp2 of s * log2(e)); missing rows are 0.
  const float q_scale = p.scale * kLog2e;
  constexpr int kQVecs = D / 4;
  for (int c = threadIdx.x; c < kRows * kQVecs; c += kThreads) {
    const int r = c / kQVecs;
    const int part = c % kQVecs;
    const int pr = row0 + r;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (pr < rows) {
      const int64_t token = q_first + pr / group;
      const int head = kv_head * group + pr % group;
      v = *reinterpret_cast<const float4*>(p.q + (token * p.n_heads + head) * D + part * 4);
      v.x *= q_scale, v.y *= q_scale, v.z *= q_scale, v.w *= q_scale;
    }
    *reinterpret_cast<float4*>(qs + r * L::kQStride + part * 4) = v;
  }

  const int lane16 = threadIdx.x % kLanesPerRow;
  const int my_row0 = threadIdx.x / kLanesPerRow * kRowsPerThread;  // first tile row I own
  bool valid[kRowsPerThread];
  int q_pos[kRowsPerThread];
  float m[kRowsPerThread];  // running max (log2 units), equal across the row's 16 lanes
  float l[kRowsPerThread];  // this thread's part of the running sum
  float o[kRowsPerThread][kDimsPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int pr = row0 + my_row0 + i;
    valid[i] = pr < rows;
    q_pos[i] = past + pr / group;
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int d = 0; d < kDimsPerThread; ++d) o[i][d] = 0.0f;
  }

  for (int t = 0; t < n_tiles; ++t) {
    const int key0 = key_begin + t * kKeys;
    if (t + 1 < n_tiles) {
      LoadKvTile<D>(cache, table, kv_head, key0 + kKeys, key_end, k_buf((t + 1) & 1),
                    v_buf((t + 1) & 1));
      __pipeline_commit();
      __pipeline_wait_prior(1);  // tile t has landed; t + 1 may still be in flight
    } else {
      __pipeline_wait_prior(0);
    }
    __syncthreads();  // tile t (and on t == 0 the q tile) visible to every thread
    const __nv_bfloat16* ks = k_buf(t & 1);
    const __nv_bfloat16* vs = v_buf(t & 1);

    // Scores s[i][j] = q_row(my_row0 + i) . k(key0 + lane16 + 16 j), in log2 units.
    float s[kRowsPerThread][kKeysPerThread];
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
#pragma unroll
      for (int j = 0; j < kKeysPerThread; ++j) s[i][j] = 0.0f;
    }
#pragma unroll 2
    for (int d = 0; d < D; d += 8) {
      float kf[kKeysPerThread][8];
#pragma unroll
      for (int j = 0; j < kKeysPerThread; ++j) {
        LoadBf16<8>(ks + (lane16 + kLanesPerRow * j) * L::kKvStride + d, kf[j]);
      }
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i) {
        const float* qr = qs + (my_row0 + i) * L::kQStride + d;
        const float4 qa = *reinterpret_cast<const float4*>(qr);
        const float4 qb = *reinterpret_cast<const float4*>(qr + 4);
#pragma unroll
        for (int j = 0; j < kKeysPerThread; ++j) {
          float acc = s[i][j];
          acc = fmaf(qa.x, kf[j][0], acc);
          acc = fmaf(qa.y, kf[j][1], acc);
          acc = fmaf(qa.z, kf[j][2], acc);
          acc = fmaf(qa.w, kf[j][3], acc);
          acc = fmaf(qb.x, kf[j][4], acc);
          acc = fmaf(qb.y, kf[j][5], acc);
          acc = fmaf(qb.z, kf[j][6], acc);
          acc = fmaf(qb.w, kf[j][7], acc);
          s[i][j] = acc;
        }
      }
    }

    // Mask, online softmax update, probabilities into the shared tile.
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kKeysPerThread; ++j) {
        const int key = key0 + lane16 + kLanesPerRow * j;
        const bool visible =
            valid[i] && key <= q_pos[i] && (p.window <= 0 || key > q_pos[i] - p.window);
        s[i][j] = visible ? s[i][j] : -INFINITY;
        tile_max = fmaxf(tile_max, s[i][j]);
      }
#pragma unroll
      for (int off = kLanesPerRow / 2; off > 0; off /= 2) {  // stays inside the half-warp
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
      }
      const float m_new = fmaxf(m[i], tile_max);
      // No visible key yet: subtract 0 so that exp2(-inf - m) is 0, not NaN.
      const float m_sub = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m[i] - m_sub);
      m[i] = m_new;
      l[i] *= alpha;
#pragma unroll
      for (int d = 0; d < kDimsPerThread; ++d) o[i][d] *= alpha;
#pragma unroll
      for (int j = 0; j < kKeysPerThread; ++j) {
        const float pj = exp2f(s[i][j] - m_sub);
        l[i] += pj;
        ps[(my_row0 + i) * L::kPStride + lane16 + kLanesPerRow * j] = pj;
      }
    }
    __syncwarp();  // a row's probabilities are written and read by the same half-warp

    // o[i][:] += P[row i, :] . V[:, my dims].
#pragma unroll 2
    for (int j = 0; j < kKeys; j += 4) {
      float4 prob[kRowsPerThread];
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i) {
        prob[i] = *reinterpret_cast<const float4*>(ps + (my_row0 + i) * L::kPStride + j);
      }
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        float vf[kDimsPerThread];
        LoadBf16<kDimsPerThread>(vs + (j + jj) * L::kKvStride + lane16 * kDimsPerThread, vf);
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) {
          const float pij = jj == 0   ? prob[i].x
                            : jj == 1 ? prob[i].y
                            : jj == 2 ? prob[i].z
                                      : prob[i].w;
#pragma unroll
          for (int d = 0; d < kDimsPerThread; ++d) o[i][d] = fmaf(pij, vf[d], o[i][d]);
        }
      }
    }
    __syncthreads();  // done with this K/V buffer and the P tile before they are refilled
  }

#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    float sum = l[i];
#pragma unroll
    for (int off = kLanesPerRow / 2; off > 0; off /= 2) {
      sum += __shfl_xor_sync(0xffffffffu, sum, off);
    }
    if (!valid[i]) continue;
    const int pr = row0 + my_row0 + i;
    const int64_t token = q_first + pr / group;
    const int head = kv_head * group + pr % group;
    float* dst = p.out + (token * p.n_heads + head) * D + lane16 * kDimsPerThread;
    // sum > 0 for every valid row (its own position is always visible); 0 guards bad lengths.
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
    for (int d = 0; d < kDimsPerThread; d += 4) {
      *reinterpret_cast<float4*>(dst + d) =
          make_float4(o[i][d] * inv, o[i][d + 1] * inv, o[i][d + 2] * inv, o[i][d + 3] * inv);
    }
  }
}

template <int D>
void Launch(const PagedKv& cache, const PrefillParams& p, int group, cudaStream_t stream) {
  const size_t smem = Layout<D>::kBytes;
  MM_CUDA_CHECK(cudaFuncSetAttribute(PrefillKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(smem)));
  const int64_t packed_rows = static_cast<int64_t>(p.max_q_len) * group;
  const dim3 grid(static_cast<unsigned>((packed_rows + kRows - 1) / kRows),
                  static_cast<unsigned>(cache.kv_heads), static_cast<unsigned>(p.batch));
  PrefillKernel<D><<<grid, kThreads, smem, stream>>>(cache, p, group);
  MM_CUDA_CHECK(cudaGetLastError());
}

[[noreturn]] void Fail(const char* what, int value) {
  std::fprintf(stderr, "PrefillAttention: %s (got %d)\n", what, value);
  std::abort();
}

}  // namespace

void PrefillAttention(const PagedKv& cache, const PrefillParams& p, cudaStream_t stream) {
  if (p.batch <= 0 || p.max_q_len <= 0) return;
  if (cache.kv_heads <= 0 || p.n_heads % cache.kv_heads != 0) {
    Fail("n_heads must be a multiple of kv_heads", p.n_heads);
  }
  if (cache.block_size < 1) Fail("block_size must be >= 1", cache.block_size);
  if (p.batch > 65535) Fail("batch must be <= 65535", p.batch);
  const int group = p.n_heads / cache.kv_heads;
  switch (cache.head_dim) {
    case 64:
      Launch<64>(cache, p, group, stream);
      break;
    case 128:
      Launch<128>(cache, p, group, stream);
      break;
    default:
      PrefillAttentionGeneric(cache, p, stream);  // other head sizes: the simple exact kernel
  }
}

}  // namespace moemesh::cuda
