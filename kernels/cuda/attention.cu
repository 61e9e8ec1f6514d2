// GQA split-KV decode attention of attention.h: the kernel (AppendKv lives in kv_append.cu,
// PrefillAttention in prefill.cu, the split merges in decode_merge.cuh, the host side of a call
// in attention_launch.cc, the kernel's arguments in decode_kernel_args.h).
//
// Decode, one CTA per (split, KV head x row tile, sequence), 4 warps:
//   - Up to 8 query heads of one KV head share a CTA (a "row tile"), so each K/V byte is read
//     once per sequence. The products are transposed so that the heads are the n = 8 columns of
//     mma.sync m16n8k16 and the 16 tokens (or head dims) its rows, with no padding rows:
//     S^T = K Q^T (K tile as the A operand, the queries as B) and O^T = V^T P^T. The fp32
//     queries are split into three bf16 parts (hi, lo, lo2), two accumulator chains each:
//     products with bf16 K are exact and hi + lo + lo2 leaves a 2^-24 relative residual, so the
//     scores are fp32-class even when they are large (two parts leave 2^-16, ~1e-4 on sharp
//     softmaxes). The probabilities, in [0, 1], are split in two (hi, lo); their S^T fragments
//     become P^T B operands by an in-register transpose (movmatrix), and both parts accumulate
//     into one tile product.
//   - Each warp streams its own 16-token tiles of K and V (cp.async, kStages deep, XOR-swizzled
//     so that ldmatrix is free of bank conflicts, L2 evict-first so the stream does not push
//     out reused data; a tile inside one cache block is 16 copies per lane at fixed offsets
//     from one address) and keeps an online softmax in base 2 (the query carries
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
//     the splits of a sequence are one cluster instead: each CTA pushes its state's slices to
//     the CTAs that merge them (asynchronous distributed-shared-memory stores that complete on
//     the receiver's mbarrier) and merges its own slice once everything addressed to it has
//     landed (ClusterReduce), with no global round trip, fence, atomic or second cluster
//     barrier.
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

using warp_mma::ClusterArriveRelaxed;
using warp_mma::ClusterSmemAddr;
using warp_mma::ClusterWait;
using warp_mma::CpAsync16;
using warp_mma::CpAsync16Full;
using warp_mma::CpAsyncCommit;
using warp_mma::CpAsyncWait;
using warp_mma::EvictFirstPolicy;
using warp_mma::Exp2Approx;
using warp_mma::GlobalTimerNs;
using warp_mma::KTokenRows;
using warp_mma::LaunchDependents;
using warp_mma::Log2Approx;
using warp_mma::MbarrierExpectBytes;
using warp_mma::MbarrierInitForCluster;
using warp_mma::MbarrierWaitCluster;
using warp_mma::Mma;
using warp_mma::PrefetchL1;
using warp_mma::PrefetchL2Bulk;
using warp_mma::RcpApprox;
using warp_mma::RowsOffsets;
using warp_mma::SmemAddr;
using warp_mma::SplitPair3;
using warp_mma::SplitPair;
using warp_mma::TransposeB16;
using warp_mma::VDimRows;
using warp_mma::WaitForPrerequisites;

using decode::AddScaled;
using decode::ArriveLast;
using decode::ChunkTokens;
using decode::ClusterPush;
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
  __shared__ uint64_t s_recv_bar;  // cluster merge: completes when every push has landed
  __shared__ uint64_t s_merge_bar;  // global merge: its staging copies
  const int64_t cta_id =
      blockIdx.x + static_cast<int64_t>(gridDim.x) * (blockIdx.y + int64_t{gridDim.y} * blockIdx.z);
  // Diagnostics: clock k of this CTA (DecodeParams::cta_times), by thread 0.
  auto stamp = [&](int k) {
    if (a.cta_times != nullptr && threadIdx.x == 0) {
      a.cta_times[kDecodeStamps * cta_id + k] = GlobalTimerNs();
    }
  };
  if (a.cta_times != nullptr && threadIdx.x == 0) {
    for (int k = 1; k < kDecodeStamps; ++k) a.cta_times[kDecodeStamps * cta_id + k] = 0;
  }
  stamp(0);

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
  if (cluster_merge) {
    // The receive barrier expects this CTA's slice of every active CTA's output and a row of
    // LSEs from every CTA; its initialisation is published by the cluster barrier that every
    // CTA waits for before its first push.
    if (threadIdx.x == 0) {
      MbarrierInitForCluster(&s_recv_bar);
      MbarrierExpectBytes(&s_recv_bar,
                          ClusterPush::RecvBytes(split, a.cluster, n_active, rows, D / 4));
    }
    ClusterArriveRelaxed();  // waited for before the first push
  }
  if (split >= n_active) {
    if (!cluster_merge) return;
    LaunchDependents();
    const ClusterPush push(a.cluster, split, threadIdx.x % (D / 4), D / 4, s_recv, s_lse,
                           &s_recv_bar);
    ClusterWait();  // every CTA of the cluster has started: its shared memory exists
    for (int r = threadIdx.x / (D / 4); r < rows; r += kThreads / (D / 4)) push.Lse(r, -INFINITY);
    MbarrierWaitCluster(&s_recv_bar, 0);
    ClusterReduce<D>(a.out, a.lse, row0, rows, split, a.cluster, s_recv, s_lse);
    stamp(3);
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

  // This lane's 16-byte copies of a tile: rows row_first + j * kRowsPerPass. The XOR swizzle
  // of a row repeats every 8 rows, so the destination offsets of the kPasses copies are
  // swz[j % kSwz] + (j / kSwz) * 8 rows, computed once here.
  constexpr int kSwz = 8 / kRowsPerPass;
  uint32_t swz[kSwz];
#pragma unroll
  for (int j = 0; j < kSwz; ++j) {
    const int r = row_first + j * kRowsPerPass;
    swz[j] = r * kRowBytes + ((chunk_col ^ (r & 7)) << 4);
  }
  const int64_t lane_src = static_cast<int64_t>(row_first) * D + chunk_col * 8;

  // Starts the copies of this warp's it-th tile into stage it % kStages.
  auto issue = [&](int it) {
    const int p0 = lo + (warp + it * kWarps) * kTileTokens;
    const int n_valid = min(kTileTokens, hi - p0);
    const uint32_t k_dst = SmemAddr(wbuf + (it % Cfg::kStages) * Cfg::kStageBytes);
    const uint32_t v_dst = k_dst + Cfg::kTileBytes;
    const uint32_t blk_first = a.block_div.Div(static_cast<uint32_t>(p0));
    const int in_block = p0 - static_cast<int>(blk_first) * a.block_size;
    if (n_valid == kTileTokens && in_block + kTileTokens <= a.block_size) {
      // The common case: 16 valid rows in one cache block, contiguous in the pools, so every
      // copy is a fixed offset from one pointer (no per-row table read or validity operand).
      const int64_t base =
          ((static_cast<int64_t>(table[blk_first]) * a.kv_heads + h) * a.block_size + in_block) *
              D +
          lane_src;
      const __nv_bfloat16* ks = a.k + base;
      const __nv_bfloat16* vs = a.v + base;
#pragma unroll
      for (int j = 0; j < kPasses; ++j) {
        const uint32_t dst = swz[j % kSwz] + (j / kSwz) * 8 * kRowBytes;
        CpAsync16Full(k_dst + dst, ks + j * kRowsPerPass * D, policy);
        CpAsync16Full(v_dst + dst, vs + j * kRowsPerPass * D, policy);
      }
      return;
    }
    // A partial tile (the range's end) or one across cache blocks: each row on its own.
#pragma unroll
    for (int j = 0; j < kPasses; ++j) {
      const int r = row_first + j * kRowsPerPass;
      const bool valid = r < n_valid;
      int64_t src = 0;
      if (valid) src = KvRowOffset(a, table, a.kv_heads, h, p0 + r, D) + chunk_col * 8;
      const uint32_t dst = swz[j % kSwz] + (j / kSwz) * 8 * kRowBytes;
      CpAsync16(k_dst + dst, a.k + src, valid, policy);
      CpAsync16(v_dst + dst, a.v + src, valid, policy);
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

  // Query fragments, B operands of S^T = K Q^T (16 head dims x 8 query heads): head g, dims
  // kk * 16 + 2t, 2t + 1 and those + 8, as three bf16 parts (hi, lo, lo2).
  uint32_t qb[3][D / 16][2];
  {
    const bool row_ok = g < rows;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float x0 = row_ok ? qv[kk][half].x * a.q_scale : 0.f;
        const float x1 = row_ok ? qv[kk][half].y * a.q_scale : 0.f;
        SplitPair3(x0, x1, qb[0][kk][half], qb[1][kk][half], qb[2][kk][half]);
      }
    }
  }

  // Heads 2t and 2t + 1 (index e): running max (log2 units, the same in the 8 lanes of a
  // column) and this lane's share of the running sum (its tokens g and g + 8).
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.f, 0.f};
  float o[D / 16][4];  // O^T: dims dm * 16 + g (+ 8 for i >= 2), head 2t + (i & 1)
#pragma unroll
  for (int dm = 0; dm < D / 16; ++dm) o[dm][0] = o[dm][1] = o[dm][2] = o[dm][3] = 0.f;
  const float zero[4] = {0.f, 0.f, 0.f, 0.f};
  const RowsOffsets rows_off(kRowBytes, lane);

  for (int it = 0; it < my_tiles; ++it) {
    if (it + Cfg::kStages - 1 < my_tiles) issue(it + Cfg::kStages - 1);
    prefetch_table(it + Cfg::kStages);
    CpAsyncCommit();
    CpAsyncWait<Cfg::kStages - 1>();
    __syncwarp();
    if (it == 0) stamp(1);
    const uint32_t k_tile = SmemAddr(wbuf + (it % Cfg::kStages) * Cfg::kStageBytes);
    const uint32_t v_tile = k_tile + Cfg::kTileBytes;
    const int n_valid = min(kTileTokens, hi - (lo + (warp + it * kWarps) * kTileTokens));

    // S^T = K Q^T, two accumulator chains (even and odd 16-dim steps) per part of q: tokens g
    // (i < 2) and g + 8, heads 2t + (i & 1).
    float st[3][2][4];
#pragma unroll
    for (int part = 0; part < 3; ++part) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        st[part][c][0] = st[part][c][1] = st[part][c][2] = st[part][c][3] = 0.f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ka[4];
      KTokenRows(k_tile, rows_off, kk, ka);
#pragma unroll
      for (int part = 0; part < 3; ++part) {
        Mma(st[part][kk & 1], ka, qb[part][kk][0], qb[part][kk][1], st[part][kk & 1]);
      }
    }

    // Online softmax of each head over the tile's tokens (a column of S^T: the lanes of one t).
    float sv[4];
    float mx[2];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float x = ((st[2][0][i] + st[2][1][i]) + (st[1][0][i] + st[1][1][i])) +
                      (st[0][0][i] + st[0][1][i]);
      sv[i] = g + (i >> 1) * 8 < n_valid ? x : -INFINITY;
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      mx[e] = fmaxf(sv[e], sv[2 + e]);
#pragma unroll
      for (int x = 4; x < 32; x *= 2) mx[e] = fmaxf(mx[e], __shfl_xor_sync(0xffffffffu, mx[e], x));
    }
    float alpha[2], m_new[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      m_new[e] = fmaxf(m_run[e], mx[e]);  // finite: token 0 of a tile is always valid
      alpha[e] = Exp2Approx(m_run[e] - m_new[e]);  // 0 on the first tile
      m_run[e] = m_new[e];
    }
    float p[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) p[i] = Exp2Approx(sv[i] - m_new[i & 1]);
#pragma unroll
    for (int e = 0; e < 2; ++e) l_run[e] = fmaf(l_run[e], alpha[e], p[e] + p[2 + e]);
    // P^T as B operands of O^T = V^T P^T (16 tokens x 8 heads: head g, tokens 2t, 2t + 1 and
    // those + 8), hi and lo parts: the S^T fragments transposed in registers.
    uint32_t hi01, lo01, hi23, lo23;
    SplitPair(p[0], p[1], hi01, lo01);
    SplitPair(p[2], p[3], hi23, lo23);
    const uint32_t pb_hi0 = TransposeB16(hi01), pb_hi1 = TransposeB16(hi23);
    const uint32_t pb_lo0 = TransposeB16(lo01), pb_lo1 = TransposeB16(lo23);

    // O^T = O^T * alpha + V^T P^T, 16 dims at a time; the tile's products start from zero.
#pragma unroll
    for (int dm = 0; dm < D / 16; ++dm) {
      uint32_t va[4];
      VDimRows(v_tile, rows_off, dm, va);
      float c[4];
      Mma(c, va, pb_hi0, pb_hi1, zero);
      Mma(c, va, pb_lo0, pb_lo1, c);
#pragma unroll
      for (int i = 0; i < 4; ++i) o[dm][i] = fmaf(o[dm][i], alpha[i & 1], c[i]);
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
  }
  CpAsyncWait<0>();
  LaunchDependents();  // (CTAs that return earlier count as having triggered)
#pragma unroll
  for (int e = 0; e < 2; ++e) {
#pragma unroll
    for (int x = 4; x < 32; x *= 2) l_run[e] += __shfl_xor_sync(0xffffffffu, l_run[e], x);
  }

  // After the warp merge below, a thread per (row, 16-byte chunk) writes or pushes the CTA's
  // state. The chunk d4 is the same in all of a thread's rows (kThreads is a multiple of kQuads),
  // so where it goes is worked out once, here, while the CTA's other warps finish their tiles.
  const bool direct = n_active == 1;  // the only split: write the final output
  constexpr int kQuads = D / 4;
  constexpr int kRowStep = kThreads / kQuads;
  static_assert(kThreads % kQuads == 0 && kMaxMergeInputs <= kQuads, "thread-to-chunk layout");
  const int d4 = threadIdx.x % kQuads;
  ClusterPush push;
  if (cluster_merge) {
    push = ClusterPush(a.cluster, split, d4, kQuads, s_recv, s_lse, &s_recv_bar);
    ClusterWait();  // every CTA of the cluster has started
  }

  // Merge the warps: each leaves its state in its own stage buffers, which it is done with
  // ([row][kMergeStride] floats at the start of them), so only one CTA barrier is needed.
  const auto s_o = [&](int w) { return reinterpret_cast<float*>(smem + w * Cfg::kWarpBytes); };
  if (g == 0) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      s_m[warp][2 * t + e] = m_run[e];
      s_l[warp][2 * t + e] = l_run[e];
    }
  }
#pragma unroll
  for (int dm = 0; dm < D / 16; ++dm) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      s_o(warp)[(2 * t + (i & 1)) * Cfg::kMergeStride + dm * 16 + g + (i >> 1) * 8] = o[dm][i];
    }
  }
  __syncthreads();
  stamp(2);

  for (int r = threadIdx.x / kQuads; r < rows; r += kRowStep) {
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, s_m[w][r]);  // finite: warp 0 has a tile
    float sum = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float wt = Exp2Approx(s_m[w][r] - m);  // 0 for a warp without tiles
      const float4 x =
          *reinterpret_cast<const float4*>(s_o(w) + r * Cfg::kMergeStride + d4 * 4);
      sum = fmaf(wt, s_l[w][r], sum);
      AddScaled(acc, wt, x);
    }
    const float inv = RcpApprox(sum);  // sum >= 1: the row's maximum has weight 1
    const float lse2 = m + Log2Approx(sum);
    const float4 o4 = make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
    if (direct) {  // out may be only 4-byte aligned here
      float* dst = a.out + (row0 + r) * D + d4 * 4;
      dst[0] = o4.x;
      dst[1] = o4.y;
      dst[2] = o4.z;
      dst[3] = o4.w;
      if (d4 == 0 && a.lse != nullptr) a.lse[row0 + r] = lse2 * kLn2;
    } else if (cluster_merge) {
      push.Row(r, o4, lse2);
    } else {
      const int64_t slot = (row0 + r) * a.splits + split;
      *reinterpret_cast<float4*>(a.part_o + slot * D + d4 * 4) = o4;
      if (d4 == 0) a.part_lse[slot] = lse2;
    }
  }
  if (direct) {
    stamp(3);
    return;
  }
  if (cluster_merge) {
    MbarrierWaitCluster(&s_recv_bar, 0);  // every CTA's pushes to this one have landed
    ClusterReduce<D>(a.out, a.lse, row0, rows, split, a.cluster, s_recv, s_lse);
    stamp(3);
    return;
  }

  // Cross-split merge by the last CTA to finish (per group of splits, then per sequence).
  const int64_t pair = static_cast<int64_t>(b) * gridDim.y + blockIdx.y;
  uint32_t* counters = a.counters_end - (pair + 1) * kCounterSlots;
  const int grp = split / a.merge_group;
  const int grp_first = grp * a.merge_group;
  const int grp_count = min(a.merge_group, n_active - grp_first);
  const int n_groups = (n_active + a.merge_group - 1) / a.merge_group;
  if (!ArriveLast(&counters[grp], grp_count, &s_flag)) {
    stamp(3);
    return;
  }
  float* s_in = reinterpret_cast<float*>(smem);  // free: the warp merge above is done
  const int64_t ps = a.splits;
  const auto landed = [&] { stamp(5); };
  if (n_groups == 1) {
    stamp(4);
    MergeStates<D>(a.part_o + (row0 * ps + grp_first) * D, a.part_lse + row0 * ps + grp_first,
                   ps * D, ps, grp_count, rows, a.out + row0 * D,
                   a.lse != nullptr ? a.lse + row0 : nullptr, D, 1, kLn2, s_in, s_lse,
                   &s_merge_bar, landed);
    stamp(3);
    return;
  }
  const int64_t pg = a.splits;  // group slots are sized like split slots (groups <= splits)
  MergeStates<D>(a.part_o + (row0 * ps + grp_first) * D, a.part_lse + row0 * ps + grp_first, ps * D,
                 ps, grp_count, rows, a.group_o + (row0 * pg + grp) * D,
                 a.group_lse + row0 * pg + grp, pg * D, pg, 1.f, s_in, s_lse, &s_merge_bar,
                 [] {});
  if (!ArriveLast(&counters[kMaxMergeInputs], n_groups, &s_flag)) {
    stamp(3);
    return;
  }
  stamp(4);
  MergeStates<D>(a.group_o + row0 * pg * D, a.group_lse + row0 * pg, pg * D, pg, n_groups, rows,
                 a.out + row0 * D, a.lse != nullptr ? a.lse + row0 : nullptr, D, 1, kLn2, s_in,
                 s_lse, &s_merge_bar, landed);
  stamp(3);
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
