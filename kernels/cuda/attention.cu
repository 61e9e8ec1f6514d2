// GQA split-KV decode attention of attention.h: the kernel (AppendKv lives in kv_append.cu,
// PrefillAttention in prefill.cu, the split merges in decode_merge.cuh, the host side of a call
// in attention_launch.cc, the kernel's arguments in decode_kernel_args.h).
//
// Decode, one CTA per (split, KV head x row tile, sequence), 4 warps:
//   - Up to 8 query heads of one KV head share a CTA (a "row tile"), so each K/V byte is read
//     once per sequence. Their fp32 queries are split into three bf16 parts: hi and lo fill the
//     16 rows of one mma.sync m16n8k16 A tile (hi in rows 0-7, lo in rows 8-15) and lo2 rows 0-7
//     of a second one. Products with bf16 K are exact and hi + lo + lo2 leaves a 2^-24 relative
//     residual, so the scores are fp32-class even when they are large (a two-part split leaves
//     2^-16, ~1e-4 on sharp softmaxes). The probabilities, in [0, 1], are split in two (hi, lo)
//     for P.V. A lane holds row g and row g + 8 of every accumulator, so the parts are summed in
//     registers.
//   - Each warp streams its own 16-token tiles of K and V (cp.async, kStages deep, XOR-swizzled
//     so that ldmatrix is free of bank conflicts, L2 evict-first so the stream does not push
//     out reused data) and keeps an online softmax in base 2 (the query carries
//     scale * log2(e)). Per-tile P.V products start from zero accumulators and are added in
//     fp32 registers, so long sequences do not build up tensor-core rounding.
//   - Warps of a CTA are merged in shared memory. A sequence whose attended range spans several
//     CTAs ("splits") writes partial states (normalised output, log2-sum-exp) to the workspace;
//     the last CTA of a group of splits to finish (atomic counter) merges the group, and with
//     many splits the last group merges the groups, so no second launch is needed. The last
//     CTA also resets the counter, so no call needs a memset. A merge first copies all of its
//     inputs to shared memory (every copy in flight at once), so it costs one L2 round trip
//     however many splits it combines; up to 16 splits take one merge level. On a small grid
//     (at most half the GPU) whose splits fit in one thread-block cluster (up to 16 on Hopper),
//     the splits of a sequence are one cluster instead: after a cluster barrier each CTA merges
//     a slice of the head dimensions from every CTA's shared memory (ClusterMerge), with no
//     global round trip, fence or atomic.
//   - The table entries a warp's next tile needs are prefetched into L1 one tile ahead, so that
//     the copies of a tile do not wait for an L2 round trip on the table.
// The launch shape depends only on host values (batch, heads, the host bound max_kv_len, the
// window and the GPU's size); every length and table is read on the device, so the launch can be
// captured in a CUDA graph and replayed with new lengths.
#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_generic.h"


#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_kernel_args.h"
#include "kernels/cuda/decode_merge.cuh"
#include "kernels/cuda/fast_div.h"
#include "kernels/cuda/launch_util.h"
#include "kernels/cuda/warp_mma.cuh"

namespace moemesh::cuda {
namespace {

using warp_mma::ClusterArrive;
using warp_mma::ClusterArriveRelaxed;
using warp_mma::ClusterSmemAddr;
using warp_mma::ClusterWait;
using warp_mma::CpAsync16;
using warp_mma::CpAsyncCommit;
using warp_mma::CpAsyncWait;
using warp_mma::EvictFirstPolicy;
using warp_mma::GlobalTimerNs;
using warp_mma::LaunchDependents;
using warp_mma::ScoreTile;
using warp_mma::Mma;
using warp_mma::PrefetchL1;
using warp_mma::PrefetchL2Bulk;
using warp_mma::SmemAddr;
using warp_mma::SplitPair3;
using warp_mma::SplitPair;
using warp_mma::StoreClusterF32;
using warp_mma::StoreClusterF32x4;
using warp_mma::VFragments;
using warp_mma::WaitForPrerequisites;

using decode::AddScaled;
using decode::ArriveLast;
using decode::ChunkTokens;
using decode::ClusterReduce;
using decode::DecodeArgs;
using decode::DecodeConfig;
using decode::kCounterSlots;
using decode::kLn2;
using decode::kMaxMergeInputs;
using decode::kRowsPerTile;
using decode::kThreads;
using decode::kTileTokens;
using decode::kWarps;
using decode::MergeStates;
using decode::RecvChunk;
using decode::SliceBegin;
using decode::SliceOwner;


// ---------------------------------------------------------------------------------------------
// Decode kernel.

// Before waiting for the previous kernel of the stream (programmatic dependent launch): pulls the
// first a.prefetch_tokens tokens of this CTA's share of K and V into L2, whole cache blocks, one
// bulk prefetch per (block, K or V). Lengths and table entries are read through L2 only
// (__ldcg, nothing left in L1) and every address is clamped to the pools, so stale or
// half-written values cost a useless prefetch and nothing else: the reads that count come after
// the wait. Called by the whole CTA.
template <int D>
__device__ void PrefetchShare(const DecodeArgs& a, int split, int h, int b) {
  const int capacity = a.max_blocks_per_seq * a.block_size;
  const int len = min(max(__ldcg(a.kv_lens + b), 0), capacity);
  const int start = a.window > 0 ? max(0, len - a.window) : 0;
  const int range = len - start;
  if (range == 0) return;
  const int chunk = max(a.chunk, ChunkTokens(range, a.splits));
  const int lo = start + split * chunk;
  if (lo >= len) return;
  const int hi = min(min(lo + chunk, len), lo + a.prefetch_tokens);
  const int32_t* table = a.block_tables + static_cast<int64_t>(b) * a.max_blocks_per_seq;
  const int blk_last = static_cast<int>(a.block_div.Div(static_cast<uint32_t>(hi - 1)));
  const uint32_t bytes = static_cast<uint32_t>(a.block_size) * D * 2;
  for (int blk = static_cast<int>(a.block_div.Div(static_cast<uint32_t>(lo))) + threadIdx.x;
       blk <= blk_last; blk += kThreads) {
    const int32_t id = __ldcg(table + blk);
    if (id < 0 || id >= a.num_blocks) continue;
    const int64_t at = (static_cast<int64_t>(id) * a.kv_heads + h) * a.block_size * D;
    PrefetchL2Bulk(a.k + at, bytes);
    PrefetchL2Bulk(a.v + at, bytes);
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads, 2) DecodeKernel(const DecodeArgs a) {
  using Cfg = DecodeConfig<D>;
  constexpr int kChunksPerRow = D / 8;              // 16-byte chunks per token row
  constexpr int kRowsPerPass = 32 / kChunksPerRow;  // rows one warp-wide copy covers
  constexpr int kPasses = kTileTokens / kRowsPerPass;
  constexpr int kRowBytes = D * 2;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ float s_m[kWarps][kRowsPerTile];
  __shared__ float s_l[kWarps][kRowsPerTile];
  __shared__ float s_lse[kMaxMergeInputs * kRowsPerTile];
  __shared__ int s_flag;
  const int64_t cta_id =
      blockIdx.x + static_cast<int64_t>(gridDim.x) * (blockIdx.y + int64_t{gridDim.y} * blockIdx.z);
  if (a.cta_times != nullptr && threadIdx.x == 0) {
    a.cta_times[2 * cta_id] = GlobalTimerNs();
    a.cta_times[2 * cta_id + 1] = 0;
  }

  const int split = blockIdx.x;
  const int h = blockIdx.y / a.row_tiles;
  const int rt = blockIdx.y % a.row_tiles;
  const int b = blockIdx.z;
  const int head0 = h * a.group + rt * kRowsPerTile;
  const int rows = min(kRowsPerTile, a.group - rt * kRowsPerTile);
  const int64_t row0 = static_cast<int64_t>(b) * a.n_heads + head0;  // (sequence, head) row

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2;  // fragment row (query head within the tile)
  const int t = lane & 3;   // fragment column pair
  // Launched to overlap the previous kernel: warm L2 while it finishes, then wait for its writes
  // (q, the appended K/V, the workspace). The next kernel may start once this one's KV stream is
  // done (LaunchDependents below), so that its start overlaps this one's merges only.
  if (a.prefetch_tokens > 0) PrefetchShare<D>(a, split, h, b);
  WaitForPrerequisites();

  // This lane's query values, loaded first: issued after the first KV copies they would wait
  // behind them in the memory system (measured: up to 5 us on a full-GPU grid).
  float2 qv[D / 16][2];
  {
    const float* qrow = a.q + (row0 + (g < rows ? g : 0)) * D;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        qv[kk][half] = *reinterpret_cast<const float2*>(qrow + kk * 16 + half * 8 + 2 * t);
      }
    }
  }

  const int32_t* table = a.block_tables + static_cast<int64_t>(b) * a.max_blocks_per_seq;
  // Clamped to what the block table can address (host check: capacity < 2^31).
  const int capacity = a.max_blocks_per_seq * a.block_size;

  // Without a window this CTA's first positions do not depend on the sequence's length (when it
  // is within the host bound): fetch the table entries of each warp's first two tiles while
  // kv_lens is read, so the KV copies wait for one round trip instead of two.
  if (a.window <= 0) {
    const int64_t p = static_cast<int64_t>(split) * a.chunk +
                      (warp + (lane >> 4) * kWarps) * kTileTokens + (lane & 15);
    if (p < capacity) PrefetchL1(table + a.block_div.Div(static_cast<uint32_t>(p)));
  }

  // The attended range [start, len) of this sequence and this CTA's share [lo, hi) of it.
  const int len = min(max(a.kv_lens[b], 0), capacity);
  const int start = a.window > 0 ? max(0, len - a.window) : 0;
  const int range = len - start;
  if (range == 0) {  // padding row (or empty window): out 0, lse -inf
    if (split == 0) {
      for (int i = threadIdx.x; i < rows * D; i += kThreads) a.out[row0 * D + i] = 0.f;
      if (a.lse != nullptr && threadIdx.x < rows) a.lse[row0 + threadIdx.x] = -INFINITY;
    }
    return;
  }
  const int chunk = max(a.chunk, ChunkTokens(range, a.splits));
  const int n_active = (range + chunk - 1) / chunk;
  // In a cluster with more than one active split, every CTA takes part in the merge.
  const bool cluster_merge = a.cluster > 1 && n_active > 1;
  // Cluster merge: what the other CTAs push (after the stream buffers; LSEs in s_lse).
  float4* s_recv = reinterpret_cast<float4*>(smem + Cfg::kStreamBytes);
  if (cluster_merge) ClusterArriveRelaxed();  // waited for before the first push
  if (split >= n_active) {
    if (!cluster_merge) return;
    LaunchDependents();
    ClusterWait();  // every CTA of the cluster has started: its shared memory exists
    if (threadIdx.x < rows) {
      for (int k = 0; k < a.cluster; ++k) {
        StoreClusterF32(ClusterSmemAddr(s_lse + split * kRowsPerTile + threadIdx.x, k),
                        -INFINITY);
      }
    }
    ClusterArrive();
    ClusterWait();
    ClusterReduce<D>(a.out, a.lse, row0, rows, split, a.cluster, s_recv, s_lse);
    return;
  }
  const int lo = start + split * chunk;
  const int hi = min(lo + chunk, len);

  unsigned char* wbuf = smem + warp * Cfg::kWarpBytes;
  const int n_tiles = (hi - lo + kTileTokens - 1) / kTileTokens;
  const int my_tiles = warp < n_tiles ? (n_tiles - warp + kWarps - 1) / kWarps : 0;
  const int chunk_col = lane % kChunksPerRow;
  const int row_first = lane / kChunksPerRow;
  const uint64_t policy = EvictFirstPolicy();

  // Starts the copies of this warp's it-th tile into stage it % kStages.
  auto issue = [&](int it) {
    const int p0 = lo + (warp + it * kWarps) * kTileTokens;
    const int n_valid = min(kTileTokens, hi - p0);
    const uint32_t k_dst = SmemAddr(wbuf + (it % Cfg::kStages) * Cfg::kStageBytes);
    const uint32_t v_dst = k_dst + Cfg::kTileBytes;
    const uint32_t blk_first = a.block_div.Div(static_cast<uint32_t>(p0));
    const uint32_t blk_last = a.block_div.Div(static_cast<uint32_t>(p0 + n_valid - 1));
    if (blk_first == blk_last) {  // the whole tile sits in one cache block
      const int in_block = p0 - static_cast<int>(blk_first) * a.block_size;
      const int64_t base =
          ((static_cast<int64_t>(table[blk_first]) * a.kv_heads + h) * a.block_size + in_block) *
              D +
          chunk_col * 8;
#pragma unroll
      for (int j = 0; j < kPasses; ++j) {
        const int r = row_first + j * kRowsPerPass;
        const bool valid = r < n_valid;
        const int64_t src = valid ? base + static_cast<int64_t>(r) * D : 0;
        const uint32_t dst = r * kRowBytes + ((chunk_col ^ (r & 7)) << 4);
        CpAsync16(k_dst + dst, a.k + src, valid, policy);
        CpAsync16(v_dst + dst, a.v + src, valid, policy);
      }
    } else {
#pragma unroll
      for (int j = 0; j < kPasses; ++j) {
        const int r = row_first + j * kRowsPerPass;
        const bool valid = r < n_valid;
        int64_t src = 0;
        if (valid) src = KvRowOffset(a, table, a.kv_heads, h, p0 + r, D) + chunk_col * 8;
        const uint32_t dst = r * kRowBytes + ((chunk_col ^ (r & 7)) << 4);
        CpAsync16(k_dst + dst, a.k + src, valid, policy);
        CpAsync16(v_dst + dst, a.v + src, valid, policy);
      }
    }
  };
  // Pulls the table entries of this warp's it-th tile into L1 ahead of issue(it), whose table
  // reads would otherwise stall the warp for an L2 round trip before each tile's math.
  auto prefetch_table = [&](int it) {
    if (it >= my_tiles) return;
    const int p0 = lo + (warp + it * kWarps) * kTileTokens;  // < hi: the tile exists
    const int p = min(p0 + (lane & (kTileTokens - 1)), hi - 1);
    PrefetchL1(table + a.block_div.Div(static_cast<uint32_t>(p)));
  };

#pragma unroll 1
  for (int s = 0; s < Cfg::kStages - 1; ++s) {
    if (s < my_tiles) issue(s);
    CpAsyncCommit();
  }
  prefetch_table(Cfg::kStages - 1);

  // Query fragments (A operands of S = Q K^T): qa rows g = hi(q), g + 8 = lo(q); qa2 holds the
  // row-g registers (cols 2t.., 2t+8..) of a tile whose rows are lo2(q) and, below, zero.
  uint32_t qa[D / 16][4];
  uint32_t qa2[D / 16][2];
  {
    const bool row_ok = g < rows;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float x0 = row_ok ? qv[kk][half].x * a.q_scale : 0.f;
        const float x1 = row_ok ? qv[kk][half].y * a.q_scale : 0.f;
        SplitPair3(x0, x1, qa[kk][half * 2], qa[kk][half * 2 + 1], qa2[kk][half]);
      }
    }
  }

  float m_run = -INFINITY;  // running max of row g (log2 units), same in the 4 lanes of a row
  float l_run = 0.f;        // this lane's share of the row's running sum
  float o[D / 8][2];        // row g, dims n * 8 + 2t + e
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = 0.f;
  const float zero[4] = {0.f, 0.f, 0.f, 0.f};

  for (int it = 0; it < my_tiles; ++it) {
    if (it + Cfg::kStages - 1 < my_tiles) issue(it + Cfg::kStages - 1);
    prefetch_table(it + Cfg::kStages);
    CpAsyncCommit();
    CpAsyncWait<Cfg::kStages - 1>();
    __syncwarp();
    const uint32_t k_tile = SmemAddr(wbuf + (it % Cfg::kStages) * Cfg::kStageBytes);
    const uint32_t v_tile = k_tile + Cfg::kTileBytes;
    const int n_valid = min(kTileTokens, hi - (lo + (warp + it * kWarps) * kTileTokens));

    // S = Q K^T for tokens j * 8 + (0..7), two accumulators per token octet (even, odd k-step);
    // the lo2 tile adds into rows 0-7 (its rows 8-15 are zero).
    float sacc[2][2][4];
    ScoreTile<D>(k_tile, kRowBytes, lane, sacc,
                 [&](float (&even)[4], float (&odd)[4], int kk2, const uint32_t (&kb)[4]) {
                   Mma(even, qa[2 * kk2], kb[0], kb[1], even);
                   Mma(odd, qa[2 * kk2 + 1], kb[2], kb[3], odd);
                   const uint32_t lo2_even[4] = {qa2[2 * kk2][0], 0u, qa2[2 * kk2][1], 0u};
                   const uint32_t lo2_odd[4] = {qa2[2 * kk2 + 1][0], 0u, qa2[2 * kk2 + 1][1], 0u};
                   Mma(even, lo2_even, kb[0], kb[1], even);
                   Mma(odd, lo2_odd, kb[2], kb[3], odd);
                 });

    // Online softmax of row g over the tile: lane holds tokens j * 8 + 2t + e.
    float sv[2][2];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float x = (sacc[j][0][e] + sacc[j][0][2 + e]) + (sacc[j][1][e] + sacc[j][1][2 + e]);
        sv[j][e] = j * 8 + 2 * t + e < n_valid ? x : -INFINITY;
        tile_max = fmaxf(tile_max, sv[j][e]);
      }
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float m_new = fmaxf(m_run, tile_max);  // finite: token 0 of a tile is always valid
    const float alpha = exp2f(m_run - m_new);    // 0 on the first tile
    m_run = m_new;
    uint32_t pa[4];  // A operand of P.V: row g = hi(p), row g + 8 = lo(p)
    float psum = 0.f;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float p0 = exp2f(sv[j][0] - m_new);
      const float p1 = exp2f(sv[j][1] - m_new);
      psum += p0 + p1;
      SplitPair(p0, p1, pa[2 * j], pa[2 * j + 1]);
    }
    l_run = fmaf(l_run, alpha, psum);

    // O = O * alpha + P V, for dims n * 8 .. + 7.
#pragma unroll
    for (int dn2 = 0; dn2 < D / 16; ++dn2) {
      uint32_t vb[4];
      VFragments(v_tile, kRowBytes, dn2, lane, vb);
      float c0[4], c1[4];
      Mma(c0, pa, vb[0], vb[1], zero);
      Mma(c1, pa, vb[2], vb[3], zero);
      o[2 * dn2][0] = fmaf(o[2 * dn2][0], alpha, c0[0] + c0[2]);
      o[2 * dn2][1] = fmaf(o[2 * dn2][1], alpha, c0[1] + c0[3]);
      o[2 * dn2 + 1][0] = fmaf(o[2 * dn2 + 1][0], alpha, c1[0] + c1[2]);
      o[2 * dn2 + 1][1] = fmaf(o[2 * dn2 + 1][1], alpha, c1[1] + c1[3]);
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
  }
  CpAsyncWait<0>();
  LaunchDependents();  // (CTAs that return earlier count as having triggered)
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);

  // Merge the warps (the stage buffers become [warp][row][kMergeStride] floats).
  __syncthreads();
  if (a.cta_times != nullptr && threadIdx.x == 0) a.cta_times[2 * cta_id + 1] = GlobalTimerNs();
  float* s_o = reinterpret_cast<float*>(smem);
  if (t == 0) {
    s_m[warp][g] = m_run;
    s_l[warp][g] = l_run;
  }
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    *reinterpret_cast<float2*>(s_o + (warp * kRowsPerTile + g) * Cfg::kMergeStride + n * 8 +
                               2 * t) = make_float2(o[n][0], o[n][1]);
  }
  __syncthreads();

  const bool direct = n_active == 1;  // the only split: write the final output
  constexpr int kQuads = D / 4;
  if (cluster_merge) ClusterWait();  // every CTA of the cluster has started
  for (int item = threadIdx.x; item < kRowsPerTile * kQuads; item += kThreads) {
    const int r = item / kQuads, d4 = item % kQuads;
    if (r >= rows) continue;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, s_m[w][r]);  // finite: warp 0 has a tile
    float sum = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float wt = exp2f(s_m[w][r] - m);  // 0 for a warp without tiles
      const float4 x = *reinterpret_cast<const float4*>(
          s_o + (w * kRowsPerTile + r) * Cfg::kMergeStride + d4 * 4);
      sum = fmaf(wt, s_l[w][r], sum);
      AddScaled(acc, wt, x);
    }
    const float inv = 1.f / sum;
    const float lse2 = m + log2f(sum);
    if (direct) {
      float* dst = a.out + (row0 + r) * D + d4 * 4;
      dst[0] = acc.x * inv;
      dst[1] = acc.y * inv;
      dst[2] = acc.z * inv;
      dst[3] = acc.w * inv;
      if (d4 == 0 && a.lse != nullptr) a.lse[row0 + r] = lse2 * kLn2;
    } else if (cluster_merge) {
      const int n = a.cluster;
      const int k = SliceOwner(d4, n, kQuads);
      const int q0 = SliceBegin(k, n, kQuads);
      const int nq = SliceBegin(k + 1, n, kQuads) - q0;
      StoreClusterF32x4(ClusterSmemAddr(s_recv + RecvChunk(split, r, d4 - q0, nq), k),
                        make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv));
      if (d4 == 0) {
        for (int j = 0; j < n; ++j) {
          StoreClusterF32(ClusterSmemAddr(s_lse + split * kRowsPerTile + r, j), lse2);
        }
      }
    } else {
      const int64_t slot = (row0 + r) * a.splits + split;
      *reinterpret_cast<float4*>(a.part_o + slot * D + d4 * 4) =
          make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
      if (d4 == 0) a.part_lse[slot] = lse2;
    }
  }
  if (direct) return;
  if (cluster_merge) {
    ClusterArrive();  // publishes the pushes above
    ClusterWait();
    ClusterReduce<D>(a.out, a.lse, row0, rows, split, a.cluster, s_recv, s_lse);
    return;
  }

  // Cross-split merge by the last CTA to finish (per group of splits, then per sequence).
  const int64_t pair = static_cast<int64_t>(b) * gridDim.y + blockIdx.y;
  uint32_t* counters = a.counters_end - (pair + 1) * kCounterSlots;
  const int grp = split / a.merge_group;
  const int grp_first = grp * a.merge_group;
  const int grp_count = min(a.merge_group, n_active - grp_first);
  const int n_groups = (n_active + a.merge_group - 1) / a.merge_group;
  if (!ArriveLast(&counters[grp], grp_count, &s_flag)) return;
  float* s_in = reinterpret_cast<float*>(smem);  // free: the warp merge above is done
  const int64_t ps = a.splits;
  if (n_groups == 1) {
    MergeStates<D>(a.part_o + (row0 * ps + grp_first) * D, a.part_lse + row0 * ps + grp_first,
                   ps * D, ps, grp_count, rows, a.out + row0 * D,
                   a.lse != nullptr ? a.lse + row0 : nullptr, D, 1, kLn2, s_in, s_lse);
    return;
  }
  const int64_t pg = a.splits;  // group slots are sized like split slots (groups <= splits)
  MergeStates<D>(a.part_o + (row0 * ps + grp_first) * D, a.part_lse + row0 * ps + grp_first, ps * D,
                 ps, grp_count, rows, a.group_o + (row0 * pg + grp) * D,
                 a.group_lse + row0 * pg + grp, pg * D, pg, 1.f, s_in, s_lse);
  if (!ArriveLast(&counters[kMaxMergeInputs], n_groups, &s_flag)) return;
  MergeStates<D>(a.group_o + row0 * pg * D, a.group_lse + row0 * pg, pg * D, pg, n_groups, rows,
                 a.out + row0 * D, a.lse != nullptr ? a.lse + row0 : nullptr, D, 1, kLn2, s_in,
                 s_lse);
}

}  // namespace

namespace decode {

int ResidentSlots(int head_dim) {
  static ResidentCtas ctas("DecodeAttention", reinterpret_cast<const void*>(DecodeKernel<64>),
                           DecodeConfig<64>::kSmemBytes,
                           reinterpret_cast<const void*>(DecodeKernel<128>),
                           DecodeConfig<128>::kSmemBytes, kThreads);
  return ctas.For(head_dim);
}

const void* KernelFor(int head_dim) {
  return head_dim == 128 ? reinterpret_cast<const void*>(DecodeKernel<128>)
                         : reinterpret_cast<const void*>(DecodeKernel<64>);
}

void Launch(cudaLaunchConfig_t cfg, int head_dim, const DecodeArgs& a) {
  if (head_dim == 128) {
    cfg.dynamicSmemBytes = DecodeConfig<128>::kSmemBytes;
    MM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, DecodeKernel<128>, a));
  } else {
    cfg.dynamicSmemBytes = DecodeConfig<64>::kSmemBytes;
    MM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, DecodeKernel<64>, a));
  }
}

}  // namespace decode
}  // namespace moemesh::cuda
