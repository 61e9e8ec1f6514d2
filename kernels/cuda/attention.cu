// GQA split-KV decode attention of attention.h (AppendKv lives in kv_append.cu, PrefillAttention
// in prefill.cu, the split merges in decode_merge.cuh).
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
using warp_mma::LdMatrixX4;
using warp_mma::LdMatrixX4Trans;
using warp_mma::Mma;
using warp_mma::PrefetchL1;
using warp_mma::PrefetchL2Bulk;
using warp_mma::SmemAddr;
using warp_mma::SplitPair3;
using warp_mma::SplitPair;
using warp_mma::StoreClusterF32;
using warp_mma::StoreClusterF32x4;
using warp_mma::WaitForPrerequisites;

using decode::AddScaled;
using decode::ArriveLast;
using decode::ClusterReduce;
using decode::kLn2;
using decode::kMaxMergeInputs;
using decode::kRowsPerTile;
using decode::kThreads;
using decode::kWarps;
using decode::MergeStates;
using decode::RecvChunk;
using decode::SliceBegin;
using decode::SliceOwner;

constexpr int kTileTokens = 16;                  // tokens per warp tile (one mma k-step of P.V)
constexpr int kMinChunk = kWarps * kTileTokens;  // fewest tokens a split is given
constexpr int kMaxSplits = 256;
constexpr int kSingleLevelMaxSplits = kMaxMergeInputs;  // above: two levels, groups of ~sqrt
constexpr int kShortSplitTokens = 512;                  // see PlanSplits
constexpr int kCounterSlots = kMaxMergeInputs + 1;      // per (sequence, KV head, row tile)
constexpr float kLog2e = 1.4426950408889634f;

template <int D>
struct DecodeConfig {
  static constexpr int kStages = D == 128 ? 3 : 4;
  static constexpr int kTileBytes = kTileTokens * D * 2;  // one of K or V
  static constexpr int kStageBytes = 2 * kTileBytes;
  static constexpr int kWarpBytes = kStages * kStageBytes;
  static constexpr int kMergeStride = D + 4;  // floats per row of the warp-merge buffer
  static constexpr int kStreamBytes = kWarps * kWarpBytes;  // reused by the merges afterwards
  // Cluster merge: the slices other CTAs push here (ClusterReduce); never reused, because they
  // may arrive while this CTA still streams.
  static constexpr int kRecvBytes = kRowsPerTile * (D / 4 + kMaxMergeInputs) * 16;
  static constexpr int kSmemBytes = kStreamBytes + kRecvBytes;
  static_assert(kWarps * kRowsPerTile * kMergeStride * 4 <= kStreamBytes, "merge buffer");
  static_assert(kMaxMergeInputs * kRowsPerTile * D * 4 <= kStreamBytes, "split-merge staging");
};


int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// Decode kernel.

struct DecodeArgs {
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const float* q;
  float* out;
  float* lse;
  const int32_t* block_tables;
  const int32_t* kv_lens;
  float* part_o;           // [batch * n_heads, splits, D]
  float* part_lse;         // [batch * n_heads, splits] (log2 units)
  float* group_o;          // [batch * n_heads, groups, D]
  float* group_lse;        // [batch * n_heads, groups]
  uint32_t* counters_end;  // one past the last counter; pair pr uses the kCounterSlots before
                           // end - pr * kCounterSlots
  FastDivisor block_div;
  int32_t block_size;
  int32_t kv_heads;
  int32_t n_heads;
  int32_t group;      // query heads per KV head
  int32_t row_tiles;  // ceil(group / 8)
  int32_t max_blocks_per_seq;
  int32_t window;
  int32_t splits;
  int32_t chunk;        // tokens per split for the host bound on the attended range
  int32_t merge_group;  // splits per first-level merge
  int32_t cluster;      // > 1: the splits of a pair are one thread-block cluster (of `splits`
                        // CTAs) and merge through distributed shared memory (ClusterMerge)
  float q_scale;        // scale * log2(e)
  int32_t num_blocks;   // cache blocks in the pools (bounds the L2 prefetch's addresses)
  int32_t prefetch_tokens;  // > 0: launched to overlap the previous kernel (PDL); first pull
                            // up to this many tokens of the CTA's share into L2 (PrefetchShare)
  uint64_t* cta_times;      // diagnostics (DecodeParams::cta_times) or null
};

// Tokens per split when the attended range is `range`: spread over all splits in whole tiles,
// at least kMinChunk. The host computes it for its bound on the range; the kernel takes the
// larger of that and the value for the sequence's own range (only larger when a kv_len exceeds
// max_kv_len), so every token is covered whatever the lengths.
__host__ __device__ __forceinline__ int ChunkTokens(int64_t range, int splits) {
  const int64_t even = (range + splits - 1) / splits;
  const int64_t tiles = (even + kTileTokens - 1) / kTileTokens * kTileTokens;
  return static_cast<int>(tiles > kMinChunk ? tiles : kMinChunk);
}

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
        if (valid) {
          const int p = p0 + r;
          const uint32_t blk = a.block_div.Div(static_cast<uint32_t>(p));
          const int in_block = p - static_cast<int>(blk) * a.block_size;
          src =
              ((static_cast<int64_t>(table[blk]) * a.kv_heads + h) * a.block_size + in_block) * D +
              chunk_col * 8;
        }
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
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) sacc[j][0][e] = sacc[j][1][e] = 0.f;
    }
#pragma unroll
    for (int kk2 = 0; kk2 < D / 32; ++kk2) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        // Matrix lane/8 of the x4 load: tokens j*8..+7, 16-byte chunk 4*kk2 + lane/8.
        const int tok = j * 8 + (lane & 7);
        const int chunk = kk2 * 4 + (lane >> 3);
        uint32_t kb[4];
        LdMatrixX4(k_tile + tok * kRowBytes + ((chunk ^ (tok & 7)) << 4), kb);
        Mma(sacc[j][0], qa[2 * kk2], kb[0], kb[1], sacc[j][0]);
        Mma(sacc[j][1], qa[2 * kk2 + 1], kb[2], kb[3], sacc[j][1]);
        const uint32_t lo2_even[4] = {qa2[2 * kk2][0], 0u, qa2[2 * kk2][1], 0u};
        const uint32_t lo2_odd[4] = {qa2[2 * kk2 + 1][0], 0u, qa2[2 * kk2 + 1][1], 0u};
        Mma(sacc[j][0], lo2_even, kb[0], kb[1], sacc[j][0]);
        Mma(sacc[j][1], lo2_odd, kb[2], kb[3], sacc[j][1]);
      }
    }

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
      // Matrix lane/8: tokens ((lane/8) & 1) * 8 .. + 7, chunk 2 * dn2 + lane / 16.
      const int tok = ((lane >> 3) & 1) * 8 + (lane & 7);
      const int chunk = dn2 * 2 + (lane >> 4);
      uint32_t vb[4];
      LdMatrixX4Trans(v_tile + tok * kRowBytes + ((chunk ^ (tok & 7)) << 4), vb);
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

// ---------------------------------------------------------------------------------------------
// Host side: per-device kernel setup, the split plan and the workspace layout.


// CTAs of DecodeKernel<head_dim> that fit on the current GPU at once (launch_util.h).
int ResidentSlots(int head_dim) {
  static ResidentCtas ctas("DecodeAttention", reinterpret_cast<const void*>(DecodeKernel<64>),
                           DecodeConfig<64>::kSmemBytes,
                           reinterpret_cast<const void*>(DecodeKernel<128>),
                           DecodeConfig<128>::kSmemBytes, kThreads);
  return ctas.For(head_dim);
}

// The largest thread-block cluster of DecodeKernel<head_dim> the current GPU can place: 16 where
// non-portable cluster sizes fit, else 8; 1 without cluster support. Cached per device.
int MaxCluster(int head_dim) {
  static std::atomic<int> cache[2][ResidentCtas::kMaxDevices] = {};
  int device = 0;
  MM_CUDA_CHECK(cudaGetDevice(&device));
  if (device < 0 || device >= ResidentCtas::kMaxDevices) return 1;
  const int which = head_dim == 128 ? 1 : 0;
  int v = cache[which][device].load(std::memory_order_acquire);
  if (v != 0) return v;
  (void)ResidentSlots(head_dim);  // sets the kernel's shared-memory limit first
  const void* kernel = which ? reinterpret_cast<const void*>(DecodeKernel<128>)
                             : reinterpret_cast<const void*>(DecodeKernel<64>);
  const size_t smem = which ? DecodeConfig<128>::kSmemBytes : DecodeConfig<64>::kSmemBytes;
  int major = 0;
  MM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  v = 1;
  if (major >= 9) {
    MM_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    for (int c : {16, 8}) {
      cudaLaunchAttribute attr{};
      attr.id = cudaLaunchAttributeClusterDimension;
      attr.val.clusterDim.x = static_cast<unsigned>(c);
      attr.val.clusterDim.y = 1;
      attr.val.clusterDim.z = 1;
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3(static_cast<unsigned>(c), 1, 1);
      cfg.blockDim = dim3(kThreads, 1, 1);
      cfg.dynamicSmemBytes = smem;
      cfg.attrs = &attr;
      cfg.numAttrs = 1;
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) == cudaSuccess && clusters > 0) {
        v = c;
        break;
      }
      (void)cudaGetLastError();  // an unsupported size is not an error of later calls
    }
  }
  cache[which][device].store(v, std::memory_order_release);
  return v;
}

// The largest cluster the merge mode allows on this GPU (1: merges through global memory).
int ClusterLimit(int head_dim, DecodeParams::SplitMerge mode) {
  return mode == DecodeParams::SplitMerge::kGlobal ? 1 : MaxCluster(head_dim);
}

// Whether a launch of `splits` x `pairs` CTAs merges its splits in clusters. Automatic mode
// takes clusters only on grids of at most half the resident CTAs: measured on an H200, clusters
// cut the small grids' merge latency (up to 1.2x faster calls) but slow full-GPU grids (the
// cluster barriers hold each CTA's slot until its whole cluster is done; up to 1.3x slower).
bool UseCluster(int head_dim, int splits, int64_t pairs, int slots,
                DecodeParams::SplitMerge mode) {
  if (splits <= 1 || splits > ClusterLimit(head_dim, mode)) return false;
  return mode == DecodeParams::SplitMerge::kCluster ||
         static_cast<int64_t>(splits) * pairs * 2 <= slots;
}

struct SplitPlan {
  int splits = 1;
  int merge_group = 1;  // splits per first-level merge
  int groups = 1;
};

int MergeGroupSize(int splits) {
  if (splits <= kSingleLevelMaxSplits) return splits;
  int g = 1;
  while (g * g < splits) ++g;  // ceil(sqrt(splits)) <= 16
  return g;
}

// Splits per (sequence, KV head, row tile): enough CTAs to fill the GPU once, no more than the
// attended range can feed (kMinChunk tokens each). A second merge level puts a fence, an atomic
// and an L2 round trip (~1 us) on the critical path, so it is skipped where one level of
// kMaxMergeInputs splits still gives about one CTA per SM (>= 45% of the resident slots, which
// are two per SM) and every split streams at most kShortSplitTokens tokens: such calls are
// latency-bound. Longer streams keep the full wave, whose second CTA per SM hides HBM latency.
// Never more splits than the one-wave count, which DecodeWorkspaceBytes relies on.
// `max_cluster`: the largest cluster a merge may use (1: merges go through global memory).
SplitPlan PlanSplits(int64_t pairs, int64_t range_bound, int slots, int max_splits,
                     int max_cluster) {
  SplitPlan plan;
  int64_t s = pairs >= slots ? 1 : slots / pairs;
  s = std::min<int64_t>(s, std::max<int64_t>(1, CeilDiv(range_bound, kMinChunk)));
  s = std::min<int64_t>(s, kMaxSplits);
  // A short range takes kMaxMergeInputs splits (one merge level) when they still fill most of
  // the GPU, or when a cluster can merge them on a grid of at most half the GPU (UseCluster).
  const bool fills = pairs * kMaxMergeInputs * 20 >= static_cast<int64_t>(slots) * 9;
  const bool clusters =
      max_cluster >= kMaxMergeInputs && pairs * kMaxMergeInputs * 2 <= static_cast<int64_t>(slots);
  if (s > kMaxMergeInputs && (fills || clusters) &&
      CeilDiv(range_bound, kMaxMergeInputs) <= kShortSplitTokens) {
    s = kMaxMergeInputs;
  }
  if (max_splits > 0) s = std::min<int64_t>(s, max_splits);
  plan.splits = static_cast<int>(std::max<int64_t>(s, 1));
  plan.merge_group = MergeGroupSize(plan.splits);
  plan.groups = static_cast<int>(CeilDiv(plan.splits, plan.merge_group));
  return plan;
}

constexpr size_t kAlign = 256;
size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Partial-state bytes for `rows` (sequence, head) rows and `slots_per_row` split slots: outputs,
// LSEs, and the same again for group states.
size_t PartialBytes(int64_t rows, int64_t slots_per_row, int head_dim) {
  const size_t per = static_cast<size_t>(rows) * static_cast<size_t>(slots_per_row);
  return 2 * (AlignUp(per * head_dim * sizeof(float)) + AlignUp(per * sizeof(float)));
}

size_t CounterBytes(int64_t pairs) {
  return static_cast<size_t>(pairs) * kCounterSlots * sizeof(uint32_t);
}

}  // namespace

size_t DecodeWorkspaceBytes(int32_t batch, int32_t n_heads, int32_t head_dim, int32_t max_kv_len) {
  if (batch <= 0 || n_heads <= 0) return 0;
  if (head_dim != 64 && head_dim != 128) return 0;  // the generic kernel needs no workspace
  const int64_t slots = ResidentSlots(head_dim);
  // A call with batch' <= batch has batch' * splits' <= max(slots, batch) and
  // <= batch * min(ceil(max_kv_len / kMinChunk), kMaxSplits); both bounds grow with every
  // argument, so calls with smaller arguments fit in a workspace sized for larger ones and
  // never place partial states where another call keeps its counters.
  const int64_t per_seq = std::min<int64_t>(
      kMaxSplits, std::max<int64_t>(1, CeilDiv(std::max(max_kv_len, 0), kMinChunk)));
  if (per_seq == 1) return 0;  // never more than one split per sequence: nothing is touched
  const int64_t seq_slots = std::min<int64_t>(std::max<int64_t>(slots, batch), batch * per_seq);
  return 2 * kAlign + PartialBytes(seq_slots, n_heads, head_dim) +
         CounterBytes(static_cast<int64_t>(batch) * n_heads);
}

void DecodeAttention(const PagedKv& cache, const DecodeParams& p, void* workspace,
                     size_t workspace_bytes, cudaStream_t stream) {
  if (p.batch < 0) Fail("DecodeAttention", "batch %d", p.batch);
  if (p.batch == 0) return;
  if (cache.head_dim != 64 && cache.head_dim != 128) {
    DecodeAttentionGeneric(cache, p, stream);  // other head sizes: the simple exact kernel
    return;
  }
  if (cache.kv_heads <= 0 || p.n_heads <= 0 || p.n_heads % cache.kv_heads != 0) {
    Fail("DecodeAttention", "n_heads %d is not a multiple of kv_heads %d", p.n_heads,
         cache.kv_heads);
  }
  if (cache.block_size <= 0 || p.max_blocks_per_seq < 0 || p.max_kv_len < 0) {
    Fail("DecodeAttention", "block_size %d, max_blocks_per_seq %d, max_kv_len %d", cache.block_size,
         p.max_blocks_per_seq, p.max_kv_len);
  }
  if (static_cast<int64_t>(p.max_blocks_per_seq) * cache.block_size >= (int64_t{1} << 31)) {
    Fail("DecodeAttention", "max_blocks_per_seq * block_size must be < 2^31");
  }
  if (cache.k == nullptr || cache.v == nullptr || p.q == nullptr || p.out == nullptr ||
      p.kv_lens == nullptr || (p.block_tables == nullptr && p.max_blocks_per_seq > 0)) {
    Fail("DecodeAttention", "null pointer");
  }
  if (!Aligned(cache.k, 16) || !Aligned(cache.v, 16)) {
    Fail("DecodeAttention", "cache pools must be 16-byte aligned");
  }
  if (!Aligned(p.q, 8)) Fail("DecodeAttention", "q must be 8-byte aligned");
  const int group = p.n_heads / cache.kv_heads;
  const int row_tiles = static_cast<int>(CeilDiv(group, kRowsPerTile));
  const int64_t grid_y = static_cast<int64_t>(cache.kv_heads) * row_tiles;
  if (grid_y > 65535 || p.batch > 65535) {
    Fail("DecodeAttention", "kv_heads * row tiles %lld or batch %d over 65535",
         static_cast<long long>(grid_y), p.batch);
  }
  const int64_t pairs = grid_y * p.batch;
  const int64_t range_bound =
      p.window > 0 ? std::min<int64_t>(p.max_kv_len, p.window) : p.max_kv_len;
  const int slots = ResidentSlots(cache.head_dim);
  const SplitPlan plan = PlanSplits(pairs, range_bound, slots, p.max_splits,
                                    ClusterLimit(cache.head_dim, p.split_merge));

  DecodeArgs a{};
  a.k = cache.k;
  a.v = cache.v;
  a.q = p.q;
  a.out = p.out;
  a.lse = p.lse;
  a.block_tables = p.block_tables;
  a.kv_lens = p.kv_lens;
  a.block_div = FastDivisor(static_cast<uint32_t>(cache.block_size));
  a.block_size = cache.block_size;
  a.kv_heads = cache.kv_heads;
  a.n_heads = p.n_heads;
  a.group = group;
  a.row_tiles = row_tiles;
  a.max_blocks_per_seq = p.max_blocks_per_seq;
  a.window = p.window;
  a.splits = plan.splits;
  a.chunk = ChunkTokens(std::max<int64_t>(range_bound, 1), plan.splits);
  a.merge_group = plan.merge_group;
  a.cluster = UseCluster(cache.head_dim, plan.splits, pairs, slots, p.split_merge) ? plan.splits
                                                                                   : 1;
  a.q_scale = p.scale * kLog2e;
  a.num_blocks = cache.num_blocks;
  a.cta_times = p.cta_times;
  if (plan.splits > 1 && a.cluster == 1) {
    const int64_t rows = static_cast<int64_t>(p.batch) * p.n_heads;
    const size_t partial = PartialBytes(rows, plan.splits, cache.head_dim);
    const size_t counters = CounterBytes(pairs);
    // Partial states from the (aligned) start, counters at the (4-aligned) end.
    if (workspace == nullptr || workspace_bytes < 2 * kAlign + partial + counters) {
      Fail("DecodeAttention",
           "workspace of %zu bytes is too small: this call needs %zu (size it with "
           "DecodeWorkspaceBytes for the largest batch, heads and max_kv_len)",
           workspace_bytes, 2 * kAlign + partial + counters);
    }
    const uintptr_t begin = reinterpret_cast<uintptr_t>(workspace);
    uintptr_t at = (begin + kAlign - 1) / kAlign * kAlign;
    const size_t per = static_cast<size_t>(rows) * plan.splits;
    a.part_o = reinterpret_cast<float*>(at);
    at += AlignUp(per * cache.head_dim * sizeof(float));
    a.part_lse = reinterpret_cast<float*>(at);
    at += AlignUp(per * sizeof(float));
    a.group_o = reinterpret_cast<float*>(at);
    at += AlignUp(per * cache.head_dim * sizeof(float));
    a.group_lse = reinterpret_cast<float*>(at);
    a.counters_end = reinterpret_cast<uint32_t*>((begin + workspace_bytes) / 4 * 4);
  }
  const dim3 grid(static_cast<unsigned>(plan.splits), static_cast<unsigned>(grid_y),
                  static_cast<unsigned>(p.batch));
  cudaLaunchAttribute attrs[2] = {};
  int n_attrs = 0;
  if (a.cluster > 1) {
    attrs[n_attrs].id = cudaLaunchAttributeClusterDimension;
    attrs[n_attrs].val.clusterDim.x = static_cast<unsigned>(a.cluster);
    attrs[n_attrs].val.clusterDim.y = 1;
    attrs[n_attrs].val.clusterDim.z = 1;
    ++n_attrs;
  }
  if (p.overlap) {
    attrs[n_attrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n_attrs].val.programmaticStreamSerializationAllowed = 1;
    ++n_attrs;
    a.prefetch_tokens = std::max(p.overlap_prefetch_tokens, 0);
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kThreads, 1, 1);
  cfg.stream = stream;
  cfg.attrs = attrs;
  cfg.numAttrs = n_attrs;
  if (cache.head_dim == 128) {
    cfg.dynamicSmemBytes = DecodeConfig<128>::kSmemBytes;
    MM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, DecodeKernel<128>, a));
  } else {
    cfg.dynamicSmemBytes = DecodeConfig<64>::kSmemBytes;
    MM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, DecodeKernel<64>, a));
  }
}

int32_t DecodeSplits(const PagedKv& cache, const DecodeParams& p) {
  if (p.batch <= 0 || cache.kv_heads <= 0 || p.n_heads <= 0 || p.n_heads % cache.kv_heads != 0) {
    return 1;
  }
  const int group = p.n_heads / cache.kv_heads;
  const int64_t pairs =
      static_cast<int64_t>(cache.kv_heads) * CeilDiv(group, kRowsPerTile) * p.batch;
  const int64_t range_bound =
      p.window > 0 ? std::min<int64_t>(p.max_kv_len, p.window) : p.max_kv_len;
  return PlanSplits(pairs, range_bound, ResidentSlots(cache.head_dim), p.max_splits,
                    ClusterLimit(cache.head_dim, p.split_merge))
      .splits;
}

bool DecodeClusterMerge(const PagedKv& cache, const DecodeParams& p) {
  if (cache.head_dim != 64 && cache.head_dim != 128) return false;
  if (p.batch <= 0 || cache.kv_heads <= 0 || p.n_heads <= 0 || p.n_heads % cache.kv_heads != 0) {
    return false;
  }
  const int64_t pairs = static_cast<int64_t>(cache.kv_heads) *
                        CeilDiv(p.n_heads / cache.kv_heads, kRowsPerTile) * p.batch;
  return UseCluster(cache.head_dim, DecodeSplits(cache, p), pairs, ResidentSlots(cache.head_dim),
                    p.split_merge);
}

}  // namespace moemesh::cuda
