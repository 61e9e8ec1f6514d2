// The KV stream of the CUDA cascade kernels' 16-row tiles (cascade.cu, cascade_cluster.cu): a CTA
// of 4 warps attends up to 16 query rows against a range of positions of one KV head and leaves
// the normalised result and log2-sum-exp of each row in shared memory (ComputeChunk);
// StoreResults copies them out (also for the 64-row tiles of cascade_wide.cuh). Included by those
// two files only; stateless.
//   - The rows are one mma.sync m16n8k16 tile; the 4 warps attend a quarter of the positions each
//     (merged in shared memory at the end).
//   - fp32 queries (pre-scaled by scale * log2(e)) are split into three bf16 parts (hi, lo, lo2):
//     bf16 K products are exact and the parts leave a 2^-24 relative residual, so scores are
//     fp32-class; probabilities (in [0, 1]) are split in two for P.V (q_parts 2: two parts of q;
//     1: one part of q and of P). Each 16-position step's P.V starts from zero accumulators and is
//     added in fp32 registers, so long ranges do not build up tensor-core rounding. Online
//     softmax in base 2.
//   - K/V stream through shared memory in 64-position stages (cp.async, several stages deep,
//     XOR-swizzled so that ldmatrix is free of bank conflicts) loaded by the whole CTA, at the
//     default L2 priority (no cache-hint policy: see CpAsync16NoHint).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/cascade_kernel_args.h"
#include "kernels/cuda/cascade_merge.cuh"
#include "kernels/cuda/cascade_wide.cuh"
#include "kernels/cuda/decode_merge.cuh"
#include "kernels/cuda/warp_mma.cuh"

namespace moemesh::cuda::cascade {

using decode::AddScaled;
using warp_mma::CpAsyncCommit;
using warp_mma::CpAsyncWait;
using warp_mma::ScoreTile;
using warp_mma::Mma;
using warp_mma::PrefetchL1;
using warp_mma::SmemAddr;
using warp_mma::SplitPair;
using warp_mma::VFragments;

// Starts fetching the block-table entries of the first pipeline stages of [lo, hi) into L1, so
// that the first K/V copies wait for one round trip less.
template <int D>
__device__ __forceinline__ void PrefetchTable(const KernelArgs& a, const int32_t* table, int lo,
                                              int hi) {
  const int p = lo + static_cast<int>(threadIdx.x) * (Cfg<D>::kStages - 1) * kStageTokens /
                         kThreads;
  if (p < hi) PrefetchL1(table + a.block_div.Div(static_cast<uint32_t>(p)));
}

// A 16-row tile's rows (sh.row_q, -1 for padding) against positions [lo, hi) of `table`, KV head
// h: each warp attends a quarter of the positions for all 16 rows, and the warps' states are
// merged in shared memory. Leaves row r's normalised output in res[r * kResStride, + D) (shared
// memory: `smem`, the stage buffers, or a region after them; all 16 rows are written) and its
// log2-sum-exp in sh.res_lse[r] (-inf, output 0, for an empty range). 64-row tiles take
// ComputeChunkWide (cascade_wide.cuh).
template <int D, int QP>
__device__ void ComputeChunk(const KernelArgs& a, const int32_t* table, int h, int lo, int hi,
                             float* res, unsigned char* smem, StreamShared& sh) {
  using C = Cfg<D>;
  constexpr int kChunksPerRow = D / 8;                  // 16-byte chunks per position
  constexpr int kRowsPerPass = kThreads / kChunksPerRow;  // positions one CTA-wide copy covers
  constexpr int kPasses = kStageTokens / kRowsPerPass;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2;  // fragment row
  const int t = lane & 3;   // fragment column pair
  const int chunk_col = tid % kChunksPerRow;
  const int row_first = tid / kChunksPerRow;
  const int n_stages = (hi - lo + kStageTokens - 1) / kStageTokens;

  // Starts the copies of stage s (positions lo + 64 s ..) into buffer s % kStages.
  auto issue = [&](int s) {
    const int p0 = lo + s * kStageTokens;
    const int n_valid = min(kStageTokens, hi - p0);
    const uint32_t k_dst = SmemAddr(smem + (s % C::kStages) * C::kStageBytes);
    const uint32_t v_dst = k_dst + C::kKvBytes;
#pragma unroll
    for (int j = 0; j < kPasses; ++j) {
      const int r = row_first + j * kRowsPerPass;
      const bool valid = r < n_valid;
      int64_t src = 0;
      if (valid) src = KvRowOffset(a, table, a.dims.kv_heads, h, p0 + r, D) + chunk_col * 8;
      const uint32_t dst = r * C::kRowBytes + ((chunk_col ^ (r & 7)) << 4);
      CpAsync16NoHint(k_dst + dst, a.k + src, valid);
      CpAsync16NoHint(v_dst + dst, a.v + src, valid);
    }
  };

#pragma unroll 1
  for (int s = 0; s < C::kStages - 1; ++s) {
    if (s < n_stages) issue(s);
    CpAsyncCommit();
  }
  Stamp(a, 2);

  uint32_t qf[QP][D / 16][4];  // rows g and g + 8 (QueryFragments)
  QueryFragments<D, QP>(a, sh, g, t, qf);

  float m_run[2] = {-INFINITY, -INFINITY};  // rows g, g + 8 (log2 units), same in a row's 4 lanes
  float l_run[2] = {0.f, 0.f};              // this lane's share of the rows' sums
  float o[D / 8][4];  // dims n * 8 + 2t + (e & 1) of row g (e < 2) and row g + 8 (e >= 2)
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  const float zero[4] = {0.f, 0.f, 0.f, 0.f};

  for (int it = 0; it < n_stages; ++it) {
    CpAsyncWait<C::kStages - 2>();  // this thread's copies of stage it have landed
    __syncthreads();                // everyone's have; everyone is done with stage it - 1
    if (it == 0) Stamp(a, 3);
    if (it + C::kStages - 1 < n_stages) issue(it + C::kStages - 1);
    CpAsyncCommit();
    const uint32_t k_stage = SmemAddr(smem + (it % C::kStages) * C::kStageBytes);
    const uint32_t v_stage = k_stage + C::kKvBytes;
    const int p_stage = lo + it * kStageTokens;
    for (int j = warp; j < kStageTokens / kTileTokens; j += kWarps) {
      const int n_valid = min(kTileTokens, hi - (p_stage + j * kTileTokens));
      if (n_valid <= 0) break;
      const uint32_t k_tile = k_stage + j * kTileTokens * C::kRowBytes;
      const uint32_t v_tile = v_stage + j * kTileTokens * C::kRowBytes;

      // S = Q K^T for positions j8 * 8 + (0..7): two accumulators per octet (even, odd k-step).
      float sacc[2][2][4];
      ScoreTile<D>(k_tile, C::kRowBytes, lane, sacc,
                   [&](float (&even)[4], float (&odd)[4], int kk2, const uint32_t (&kb)[4]) {
#pragma unroll
                     for (int part = 0; part < QP; ++part) {
                       Mma(even, qf[part][2 * kk2], kb[0], kb[1], even);
                       Mma(odd, qf[part][2 * kk2 + 1], kb[2], kb[3], odd);
                     }
                   });

      // Online softmax: lane holds positions j8 * 8 + 2t + (e & 1) of row g (e < 2) and g + 8.
      float sv[2][4];
      float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j8 = 0; j8 < 2; ++j8) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float x = sacc[j8][0][e] + sacc[j8][1][e];
          sv[j8][e] = j8 * 8 + 2 * t + (e & 1) < n_valid ? x : -INFINITY;
          tile_max[e >> 1] = fmaxf(tile_max[e >> 1], sv[j8][e]);
        }
      }
      float alpha[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 1));
        tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 2));
        const float m_new = fmaxf(m_run[i], tile_max[i]);  // finite: position 0 is valid
        alpha[i] = exp2f(m_run[i] - m_new);                // 0 on the first step
        m_run[i] = m_new;
      }
      float pv[2][4];
      float psum[2] = {0.f, 0.f};
#pragma unroll
      for (int j8 = 0; j8 < 2; ++j8) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          pv[j8][e] = exp2f(sv[j8][e] - m_run[e >> 1]);
          psum[e >> 1] += pv[j8][e];
        }
      }
      l_run[0] = fmaf(l_run[0], alpha[0], psum[0]);
      l_run[1] = fmaf(l_run[1], alpha[1], psum[1]);
      // A operand of P.V (rows g / g + 8, positions 2t.. / 2t + 8..), hi and lo parts.
      uint32_t pa_hi[4], pa_lo[4];
      SplitPair(pv[0][0], pv[0][1], pa_hi[0], pa_lo[0]);
      SplitPair(pv[0][2], pv[0][3], pa_hi[1], pa_lo[1]);
      SplitPair(pv[1][0], pv[1][1], pa_hi[2], pa_lo[2]);
      SplitPair(pv[1][2], pv[1][3], pa_hi[3], pa_lo[3]);

      // O = O * alpha + P V for dims dn2 * 16 .. + 15.
#pragma unroll
      for (int dn2 = 0; dn2 < D / 16; ++dn2) {
        uint32_t vb[4];
        VFragments(v_tile, C::kRowBytes, dn2, lane, vb);
        float c0[4], c1[4];
        Mma(c0, pa_hi, vb[0], vb[1], zero);
        Mma(c1, pa_hi, vb[2], vb[3], zero);
        if (QP >= 2) {  // one part: P in bf16 (see ComputeChunkWide)
          Mma(c0, pa_lo, vb[0], vb[1], c0);
          Mma(c1, pa_lo, vb[2], vb[3], c1);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          o[2 * dn2][e] = fmaf(o[2 * dn2][e], alpha[e >> 1], c0[e]);
          o[2 * dn2 + 1][e] = fmaf(o[2 * dn2 + 1][e], alpha[e >> 1], c1[e]);
        }
      }
    }
  }
  Stamp(a, 4);
  CpAsyncWait<0>();
  __syncthreads();  // every warp is done with the stage buffers: they hold the results below
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 1);
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 2);
  }

  {  // the warps' states of the same rows over different positions
    float* wbuf = reinterpret_cast<float*>(smem) + C::kWarpBufFloats;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = g + 8 * i;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        *reinterpret_cast<float2*>(wbuf + (warp * 16 + r) * C::kResStride + n * 8 + 2 * t) =
            make_float2(o[n][2 * i], o[n][2 * i + 1]);
      }
      if (t == 0) {
        sh.m[warp][r] = m_run[i];
        sh.l[warp][r] = l_run[i];
      }
    }
    __syncthreads();
    // A thread per row: the warps' weights exp2(m_w - m) / sum (into sh.m) and the row's LSE, so
    // that the per-dimension loop below is only loads and FMAs.
    if (tid < 16) {
      const int r = tid;
      float m = -INFINITY;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) m = fmaxf(m, sh.m[w][r]);
      float wt[kWarps];
      float sum = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        wt[w] = m == -INFINITY ? 0.f : exp2f(sh.m[w][r] - m);  // 0 for a warp without positions
        sum = fmaf(wt[w], sh.l[w][r], sum);
      }
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sh.m[w][r] = wt[w] * inv;
      sh.res_lse[r] = sum > 0.f ? m + log2f(sum) : -INFINITY;
    }
    __syncthreads();
    constexpr int kQuads = D / 4;
    for (int item = tid; item < 16 * kQuads; item += kThreads) {
      const int r = item / kQuads, d4 = item % kQuads;
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float wt = sh.m[w][r];
        const float4 x =
            *reinterpret_cast<const float4*>(wbuf + (w * 16 + r) * C::kResStride + d4 * 4);
        if (wt != 0.f) AddScaled(acc, wt, x);  // a warp without positions may hold anything
      }
      *reinterpret_cast<float4*>(res + r * C::kResStride + d4 * 4) = acc;
    }
  }
  __syncthreads();
}

// Copies the tile's first `rows` results to out_o(r) ([D], 16-byte aligned) and, scaled by
// lse_scale, to *out_lse(r).
template <int D, class OutO, class OutLse>
__device__ void StoreResults(int rows, OutO out_o, OutLse out_lse, float lse_scale,
                             const unsigned char* smem, const StreamShared& sh) {
  using C = Cfg<D>;
  constexpr int kQuads = D / 4;
  const float* res = reinterpret_cast<const float*>(smem);
  for (int item = threadIdx.x; item < rows * kQuads; item += kThreads) {
    const int r = item / kQuads, d4 = item % kQuads;
    *reinterpret_cast<float4*>(out_o(r) + d4 * 4) =
        *reinterpret_cast<const float4*>(res + r * C::kResStride + d4 * 4);
  }
  for (int r = threadIdx.x; r < rows; r += kThreads) *out_lse(r) = sh.res_lse[r] * lse_scale;
}

}  // namespace moemesh::cuda::cascade
