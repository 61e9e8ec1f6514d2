// The decode attention kernel's configuration and arguments (attention.cu), shared by the kernel
// and the host side of a call (attention_launch.cc: checks, split plan, workspace, launch), and
// the constants of the split merges (decode_merge.cuh). Internal to kernels/cuda; the public
// interface is attention.h.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/paged_stream_args.h"

#if defined(__CUDACC__)
#define MM_DECODE_HD __host__ __device__ __forceinline__
#else
#define MM_DECODE_HD inline
#endif

namespace moemesh::cuda::decode {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerTile = 8;        // query heads per CTA
constexpr int kMaxMergeInputs = 16;    // states one merge combines, at most
constexpr float kLn2 = 0.6931471805599453f;
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
  static_assert(kRowsPerTile * kMergeStride * 4 <= kWarpBytes, "a warp's merge buffer");
  static_assert(kMaxMergeInputs * kRowsPerTile * D * 4 <= kStreamBytes, "split-merge staging");
};

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct DecodeArgs : PagedStreamArgs {
  float* part_o;           // [batch * n_heads, splits, D]
  float* part_lse;         // [batch * n_heads, splits] (log2 units)
  float* group_o;          // [batch * n_heads, groups, D]
  float* group_lse;        // [batch * n_heads, groups]
  uint32_t* counters_end;  // one past the last counter; pair pr uses the kCounterSlots before
                           // end - pr * kCounterSlots
  int32_t kv_heads;
  int32_t n_heads;
  int32_t group;      // query heads per KV head
  int32_t row_tiles;  // ceil(group / 8)
  int32_t window;
  int32_t splits;
  int32_t chunk;        // tokens per split for the host bound on the attended range
  int32_t merge_group;  // splits per first-level merge
  int32_t cluster;      // > 1: the splits of a pair are one thread-block cluster (of `splits`
                        // CTAs) and merge through distributed shared memory (ClusterMerge)
  int32_t num_blocks;   // cache blocks in the pools (bounds the L2 prefetch's addresses)
  int32_t prefetch_tokens;  // > 0: launched to overlap the previous kernel (PDL); first pull
                            // up to this many tokens of the CTA's share into L2 (PrefetchShare)
};

// Tokens per split when the attended range is `range`: spread over all splits in whole tiles,
// at least kMinChunk. The host computes it for its bound on the range; the kernel takes the
// larger of that and the value for the sequence's own range (only larger when a kv_len exceeds
// max_kv_len), so every token is covered whatever the lengths.
MM_DECODE_HD int ChunkTokens(int64_t range, int splits) {
  const int64_t even = (range + splits - 1) / splits;
  const int64_t tiles = (even + kTileTokens - 1) / kTileTokens * kTileTokens;
  return static_cast<int>(tiles > kMinChunk ? tiles : kMinChunk);
}

// CTAs of DecodeKernel<head_dim> resident on the current GPU at once (launch_util.h; the first
// call on a device also sets the kernel's shared-memory limit).
int ResidentSlots(int head_dim);
// The kernel instance for head_dim (64 or 128), for occupancy queries.
const void* KernelFor(int head_dim);
// Launches it with `cfg` (grid, block, stream and attributes; the shared memory is set here).
void Launch(cudaLaunchConfig_t cfg, int head_dim, const DecodeArgs& a);

}  // namespace moemesh::cuda::decode
