// The KV stream of a 64-row tile of the CUDA cascade kernel (cascade.cu) on Hopper's warpgroup
// MMA (wgmma.cuh): the CTA's 4 warps are one warpgroup and attend the tile's 64 rows together
// against positions [lo, hi) of one KV head, leaving what ComputeChunk (cascade_chunk.cuh) leaves:
// each row's normalised output in res and its log2-sum-exp in sh.res_lse.
//   - Per 64-position stage: S[64 x 64] = Q K^T (A = the queries' bf16 parts in registers, B = the
//     stage's K in shared memory), online softmax in base 2 on the accumulators, then
//     O[64 x D] += P V (A = P's bf16 parts in registers, B = the stage's V, N-major). The tensor
//     cores read each K/V byte from shared memory once per 64 rows (mma.sync reads it once per
//     16-row warp through ldmatrix).
//   - K/V stream through shared memory as in ComputeChunk (cp.async, Cfg<D>::kStages stages of 64
//     positions, zero-filled past hi) but in the 128-byte-swizzled layout the MMAs read: a
//     position's D dims are D / 64 column blocks of 128 bytes, each block a separate 8 KiB tile.
//     A stage's block-table entries are read an iteration before its copies are issued.
//   - Two tiles (128 rows, QP 1, the fused form's prefix units where the plan has two or more
//     tiles: cascade_plan.h pre_unit_tiles): both tiles attend each stage the CTA loads, so a
//     split's K/V crosses L2 once per 128 rows instead of once per 64. The queries are then
//     staged once in shared memory as bf16 (StageQueries, the last stage buffer, leaving
//     kStages - 1 stages to stream) and S = Q K^T takes both operands from shared memory; each
//     stage runs tile 0's S, softmax and P.V, then tile 1's.
//   - Accuracy by QP, the bf16 parts of the fp32 queries (pre-scaled by scale * log2(e)): 3 or 2
//     parts with P in two parts as ComputeChunk; 1 part with P in one part (the accuracy of
//     flash-attention kernels with bf16 operands, ~2^-9 relative per score, and 2.5x fewer MMAs
//     than 3 parts). The accumulators stay in fp32 across all positions.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/cascade_kernel_args.h"
#include "kernels/cuda/cascade_merge.cuh"
#include "kernels/cuda/warp_mma.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace moemesh::cuda::cascade {

// 16-byte global -> shared copy that zero-fills (reads nothing) when !valid; no L2 cache hint.
// warp_mma::CpAsync16 (with an L2::cache_hint policy) must not be used here: ptxas (CUDA 13.0,
// sm_90a) folds this kernel's CTA-uniform stage base into such a copy's address as
// LDGSTS [R + UR0], desc[UR1][R.64] while it stages the base and the policy in UR4 / UR5, so the
// copy reads its memory descriptor from a uniform register nothing writes and the first one
// faults with cudaErrorIllegalInstruction. (DecodeAttention escapes it because its stage base is
// per warp; a 64-bit shared address fixes only some of the copies.) Without a policy every copy
// is LDGSTS [R(+imm)], desc[UR12][R.64], the form of the ordinary global loads.
__device__ __forceinline__ void CpAsync16NoHint(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes)
               : "memory");
}

// The bf16 parts of a pair of fp32 values (x0 in the low halves); parts[1], parts[2] are only
// written when QP > 1, QP > 2.
template <int QP>
__device__ __forceinline__ void SplitParts(float x0, float x1, uint32_t* parts) {
  if constexpr (QP >= 3) {
    warp_mma::SplitPair3(x0, x1, parts[0], parts[1], parts[2]);
  } else if constexpr (QP == 2) {
    warp_mma::SplitPair(x0, x1, parts[0], parts[1]);
  } else {
    parts[0] = warp_mma::PackBf16(__float2bfloat16_rn(x0), __float2bfloat16_rn(x1));
  }
}

// The A fragments (mma.sync m16n8k16 layout, which the warpgroup MMA shares per warp) of S = Q K^T
// for tile rows r0 (registers 0, 2) and r0 + 8 (1, 3) at k-step kk, in QP bf16 parts of the
// scaled fp32 queries (sh.row_q; -1: a padding row, zeros); t = lane % 4.
template <int D, int QP>
__device__ __forceinline__ void QueryFragments(const KernelArgs& a, const StreamShared& sh, int r0,
                                               int t, uint32_t (&qf)[QP][D / 16][4]) {
  const int32_t i0 = sh.row_q[r0], i1 = sh.row_q[r0 + 8];
  const float* q0 = i0 >= 0 ? a.q + static_cast<int64_t>(i0) * D : nullptr;
  const float* q1 = i1 >= 0 ? a.q + static_cast<int64_t>(i1) * D : nullptr;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int d = kk * 16 + half * 8 + 2 * t;
      const float2 x0 =
          q0 != nullptr ? __ldg(reinterpret_cast<const float2*>(q0 + d)) : make_float2(0.f, 0.f);
      const float2 x1 =
          q1 != nullptr ? __ldg(reinterpret_cast<const float2*>(q1 + d)) : make_float2(0.f, 0.f);
      uint32_t p0[3], p1[3];
      SplitParts<QP>(x0.x * a.q_scale, x0.y * a.q_scale, p0);
      SplitParts<QP>(x1.x * a.q_scale, x1.y * a.q_scale, p1);
#pragma unroll
      for (int part = 0; part < QP; ++part) {
        qf[part][kk][half * 2] = p0[part];
        qf[part][kk][half * 2 + 1] = p1[part];
      }
    }
  }
}

// Two-tile units: the unit's 128 query rows (sh.row_q, -1: padding, zeros), scaled and rounded to
// bf16 (one part), into q_smem as two K-major A tiles for MmaSS64: tile t (rows 64 t ..) at
// t * kTileBytes, its 64-dim column block b at + b * 8 KiB, 128-byte swizzled as the K stages.
template <int D>
__device__ void StageQueries(const KernelArgs& a, const StreamShared& sh, unsigned char* q_smem) {
  constexpr int kChunks = D / 8;                   // 16-byte bf16 chunks per row
  constexpr int kBlockBytes = kStageTokens * 128;  // one 64-row column block
  constexpr int kTileBytes = (D / 64) * kBlockBytes;
  constexpr int kItems = kMaxUnitRows * kChunks / kThreads;  // chunks per thread
  constexpr int kBatch = 8;  // chunks whose loads are in flight together (one load each took
                             // an L2 round trip: 5 us for the 16 of head_dim 128)
  static_assert(kItems % kBatch == 0, "whole batches");
#pragma unroll 1
  for (int b0 = 0; b0 < kItems; b0 += kBatch) {
    float2 x[kBatch][4];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int item = (b0 + j) * kThreads + static_cast<int>(threadIdx.x);
      const int32_t qi = sh.row_q[item / kChunks];
      const float2* src = reinterpret_cast<const float2*>(
          a.q + static_cast<int64_t>(qi >= 0 ? qi : 0) * D + item % kChunks * 8);
#pragma unroll
      for (int e = 0; e < 4; ++e) x[j][e] = qi >= 0 ? __ldg(src + e) : make_float2(0.f, 0.f);
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int item = (b0 + j) * kThreads + static_cast<int>(threadIdx.x);
      const int r = item / kChunks, c = item % kChunks, rr = r % kStageTokens;
      uint32_t w[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        SplitParts<1>(x[j][e].x * a.q_scale, x[j][e].y * a.q_scale, &w[e]);
      }
      unsigned char* dst = q_smem + (r / kStageTokens) * kTileBytes + (c / 8) * kBlockBytes +
                           rr * 128 + (((c & 7) ^ (rr & 7)) << 4);
      *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
}

// The online softmax of one stage's 64 x 64 scores s (this lane: positions 8j + 2t + (e & 1) of
// rows g (e < 2) and g + 8, log2 units) in place: positions >= n_valid masked, the rows' running
// maxima and this lane's share of their sums updated, s left holding P, alpha the rescale of the
// rows' previous state.
__device__ __forceinline__ void StageSoftmax(float (&s)[32], int n_valid, int t, float (&m_run)[2],
                                             float (&l_run)[2], float (&alpha)[2]) {
  float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int j = 0; j < 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (8 * j + 2 * t + (e & 1) >= n_valid) s[4 * j + e] = -INFINITY;
      tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[4 * j + e]);
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 1));
    tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 2));
    const float m_new = fmaxf(m_run[i], tile_max[i]);  // finite: the stage's first is valid
    alpha[i] = warp_mma::Exp2Approx(m_run[i] - m_new);  // 0 on the first stage
    m_run[i] = m_new;
  }
  float psum[2] = {0.f, 0.f};
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    s[i] = warp_mma::Exp2Approx(s[i] - m_run[(i >> 1) & 1]);
    psum[(i >> 1) & 1] += s[i];
  }
  l_run[0] = fmaf(l_run[0], alpha[0], psum[0]);
  l_run[1] = fmaf(l_run[1], alpha[1], psum[1]);
}

// kTiles 64-row tiles (1; or 2 with QP 1) against positions [lo, hi) of KV head h; see the top of
// the file. Two tiles share every K/V stage: their queries sit in shared memory (StageQueries,
// in the last stage buffer, so kStages - 1 stages stream) and each stage runs tile 0's
// S, softmax and P.V, then tile 1's, from the same K and V.
template <int D, int QP, int kTiles = 1>
__device__ void ComputeChunkWide(const KernelArgs& a, const int32_t* table, int h, int lo, int hi,
                                 float* res, unsigned char* smem, StreamShared& sh) {
  static_assert(kTiles == 1 || (kTiles == 2 && QP == 1), "two tiles keep q in one bf16 part");
  using C = Cfg<D>;
  constexpr int kStages = kTiles == 2 ? C::kStages - 1 : C::kStages;
  constexpr int kBlocks = D / 64;                    // 128-byte column blocks per position
  constexpr int kBlockBytes = kStageTokens * 128;    // one block of a stage (8 KiB)
  static_assert(kBlocks * kBlockBytes == C::kKvBytes, "stage layout");
  static_assert(C::kStageBytes % 1024 == 0, "stages keep the 1024-byte swizzle alignment");
  static_assert(kStages >= 2, "double buffering at least");
  constexpr int kChunksPerRow = D / 8;
  constexpr int kRowsPerPass = kThreads / kChunksPerRow;
  constexpr int kPasses = kStageTokens / kRowsPerPass;
  constexpr int kPParts = QP >= 2 ? 2 : 1;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;
  const int chunk_col = tid % kChunksPerRow;
  const int row_first = tid / kChunksPerRow;
  const uint32_t col_off = (chunk_col / 8) * kBlockBytes;
  const int n_stages = (hi - lo + kStageTokens - 1) / kStageTokens;
  if (tid == 0 && (warp_mma::SmemAddr(smem) & 1023u) != 0) __trap();  // the layout needs it

  // The copies of stage s (positions lo + 64 s ..) into buffer s % kStages, from the block-table
  // entries of its positions (TableEntries, loaded an iteration before, so that no copy waits
  // for a table read).
  auto table_entries = [&](int s, int32_t (&ent)[kPasses]) {
    const int p0 = lo + s * kStageTokens;
#pragma unroll
    for (int j = 0; j < kPasses; ++j) {
      const int p = p0 + row_first + j * kRowsPerPass;
      ent[j] = p < hi ? __ldg(table + a.block_div.Div(static_cast<uint32_t>(p))) : 0;
    }
  };
  auto issue = [&](int s, const int32_t (&ent)[kPasses]) {
    const int p0 = lo + s * kStageTokens;
    const uint32_t k_dst = warp_mma::SmemAddr(smem + (s % kStages) * C::kStageBytes);
    const uint32_t v_dst = k_dst + C::kKvBytes;
#pragma unroll
    for (int j = 0; j < kPasses; ++j) {
      const int r = row_first + j * kRowsPerPass;
      const int p = p0 + r;
      const bool valid = p < hi;
      const int in_block = p - static_cast<int>(a.block_div.Div(static_cast<uint32_t>(p))) *
                                   a.block_size;
      const int64_t src =
          valid ? ((static_cast<int64_t>(ent[j]) * a.dims.kv_heads + h) * a.block_size +
                   in_block) * D + chunk_col * 8
                : 0;
      const uint32_t dst = col_off + r * 128 + (((chunk_col & 7) ^ (r & 7)) << 4);
      CpAsync16NoHint(k_dst + dst, a.k + src, valid);
      CpAsync16NoHint(v_dst + dst, a.v + src, valid);
    }
  };
  int32_t ent[kPasses];
#pragma unroll 1
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_stages) {
      table_entries(s, ent);
      issue(s, ent);
    }
    warp_mma::CpAsyncCommit();
  }
  if (kStages - 1 < n_stages) table_entries(kStages - 1, ent);
  Stamp(a, 2);

  // The queries: one tile's QP parts in registers, or two tiles' single part in shared memory.
  constexpr int kQf = kTiles == 1 ? QP : 1;
  [[maybe_unused]] uint32_t qf[kQf][kTiles == 1 ? D / 16 : 1][4];
  [[maybe_unused]] const uint32_t q_smem = warp_mma::SmemAddr(smem + kStages * C::kStageBytes);
  if constexpr (kTiles == 1) {
    QueryFragments<D, QP>(a, sh, 16 * warp + g, t, qf);
  } else {
    StageQueries<D>(a, sh, smem + kStages * C::kStageBytes);  // fenced by the loop's first barrier
  }

  float m_run[kTiles][2], l_run[kTiles][2];  // rows g, g + 8 (log2 units); this lane's sums
  float o[kTiles][D / 2];
#pragma unroll
  for (int u = 0; u < kTiles; ++u) {
    m_run[u][0] = m_run[u][1] = -INFINITY;
    l_run[u][0] = l_run[u][1] = 0.f;
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[u][i] = 0.f;
  }

  for (int it = 0; it < n_stages; ++it) {
    warp_mma::CpAsyncWait<kStages - 2>();  // this thread's copies of stage it have landed
    wgmma::ProxyFence();
    __syncthreads();  // everyone's have; every MMA of stage it - 1 is complete
    if (it == 0) Stamp(a, 3);
    if (it + kStages - 1 < n_stages) issue(it + kStages - 1, ent);
    warp_mma::CpAsyncCommit();
    if (it + kStages < n_stages) table_entries(it + kStages, ent);
    const uint32_t k_stage = warp_mma::SmemAddr(smem + (it % kStages) * C::kStageBytes);
    const uint32_t v_stage = k_stage + C::kKvBytes;
    const int n_valid = min(kStageTokens, hi - (lo + it * kStageTokens));

#pragma unroll
    for (int u = 0; u < kTiles; ++u) {
      float s[32];
      wgmma::Fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t k_off = (kk / 4) * kBlockBytes + (kk % 4) * 32;
        const uint64_t kb = wgmma::Desc128B(k_stage + k_off, 16, 1024);
        if constexpr (kTiles == 1) {
#pragma unroll
          for (int part = 0; part < QP; ++part) {
            wgmma::MmaRS64<0>(s, qf[part][kk], kb, kk > 0 || part > 0);
          }
        } else {
          const uint64_t qb = wgmma::Desc128B(q_smem + u * C::kKvBytes + k_off, 16, 1024);
          wgmma::MmaSS64<0>(s, qb, kb, kk > 0);
        }
      }
      wgmma::Commit();
      wgmma::Wait<0>();
      wgmma::KeepAfterWait(s);

      float alpha[2];
      StageSoftmax(s, n_valid, t, m_run[u], l_run[u], alpha);
#pragma unroll
      for (int i = 0; i < D / 2; ++i) o[u][i] *= alpha[(i >> 1) & 1];
      // A operand of P.V for positions 16 kk ..: registers (row g, 2t..), (g + 8, 2t..),
      // (g, 2t + 8..), (g + 8, 2t + 8..).
      uint32_t pf[kPParts][4][4];
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int i = 4 * (2 * kk + (r >> 1)) + 2 * (r & 1);
          uint32_t parts[3];
          SplitParts<kPParts>(s[i], s[i + 1], parts);
#pragma unroll
          for (int part = 0; part < kPParts; ++part) pf[part][kk][r] = parts[part];
        }
      }
      wgmma::Fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const uint64_t vb = wgmma::Desc128B(v_stage + kk * 16 * 128, kBlockBytes, 1024);
#pragma unroll
        for (int part = 0; part < kPParts; ++part) {
          if constexpr (D == 128) {
            wgmma::MmaRS128<1>(o[u], pf[part][kk], vb, 1);
          } else {
            wgmma::MmaRS64<1>(o[u], pf[part][kk], vb, 1);
          }
        }
      }
      wgmma::Commit();
      wgmma::Wait<0>();
      wgmma::KeepAfterWait(o[u]);
    }
  }
  Stamp(a, 4);
  warp_mma::CpAsyncWait<0>();
  __syncthreads();  // every warp is done with the stage buffers: they hold the results below
#pragma unroll
  for (int u = 0; u < kTiles; ++u) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float l = l_run[u][i];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int r = kStageTokens * u + 16 * warp + g + 8 * i;
      const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<float2*>(res + r * C::kResStride + j * 8 + 2 * t) =
            make_float2(o[u][4 * j + 2 * i] * inv, o[u][4 * j + 2 * i + 1] * inv);
      }
      if (t == 0) sh.res_lse[r] = l > 0.f ? m_run[u][i] + log2f(l) : -INFINITY;
    }
  }
  __syncthreads();
}

}  // namespace moemesh::cuda::cascade
