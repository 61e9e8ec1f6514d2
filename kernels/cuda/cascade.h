// CUDA cascade (shared-prefix) decode attention over the paged bf16 KV cache of attention.h: the
// scalar twin is kernels/ref/cascade.h (CascadePrefix, CascadeSuffix, MergeStates), the result
// equals flat DecodeAttention up to rounding. A step's levels (sequences whose block tables hold
// the same physical blocks over [begin, end)) are described by a small int32 "layout" on the
// device (cascade_layout.h builds it), so the launches can be captured in a CUDA graph once per set
// of host bounds and replayed with new lengths and levels.
//   - Prefix pass: for each level and KV head, the rows (member x query head of the group) are
//     folded into MMA tiles of 16 or 64 rows, so each shared KV byte is read once per tile; the
//     shared range is split across CTAs to fill the GPU and the splits are merged exactly (the
//     last CTA of a tile to finish merges). Writes each member's prefix state (output and
//     natural-log LSE, as ref::CascadePrefix).
//   - Suffix pass: each sequence (member or not) over its own positions [suffix begin, kv_len),
//     split when long; the last CTA of (sequence, KV head) merges the splits with the sequence's
//     prefix states and writes the final output. Prefix + suffix = the two-launch form.
//   - Fused: one launch, in one of two shapes. Clusters (where the bounds allow: no nested
//     levels, at most 16 query heads per KV head, and all clusters of 16 CTAs fit on the GPU at
//     once): a thread-block cluster per (level, KV head, 16-row tile) attends the shared range
//     (split across some of its CTAs) and its members' own positions (pieces on the others), and
//     merges everything in distributed shared memory; sequences in no level are taken by the
//     same clusters afterwards.
//     Otherwise a flat grid of suffix units, prefix units, then merge units: the splits only
//     write partial states and count their arrivals; each merge unit waits for the counts of
//     its rows' sequences and merges all their partial states (suffix splits and every level's
//     prefix splits, nested levels too) in one step. The fused form writes no prefix states.
// Accuracy is DecodeAttention's (fp32 q split into three bf16 parts, P into two): ~1e-5 relative
// to fp32 math on the same bf16 K/V (q_parts below trades it for speed). 64-row tiles run on
// Hopper's warpgroup MMA (cascade_wide.cuh), 16-row tiles on mma.sync; with q_parts 1 a fused
// prefix CTA can attend two 64-row tiles against each K/V stage it loads (prefix_unit_tiles).
// Launch shapes depend only on host values; every length, table and level is read on the
// device. Thread-safe (stateless launches).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cascade_plan.h"

namespace moemesh::cuda {

struct CascadeParams {
  const float* q = nullptr;       // [batch, n_heads, head_dim], 8-byte aligned
  float* out = nullptr;           // [batch, n_heads, head_dim], 16-byte aligned
  float* lse = nullptr;           // optional [batch, n_heads]: ln sum_j exp(scale q.k_j)
  const int32_t* block_tables = nullptr;  // [batch, max_blocks_per_seq]
  const int32_t* kv_lens = nullptr;       // [batch] positions attended (incl. the new token);
                                          // 0 with no level = a padding row (out 0, lse -inf)
  const int32_t* layout = nullptr;        // device copy of the words BuildCascadeLayout fills
  // Prefix states, one row per member slot (level l's member i is slot l * max_members + i):
  // v [max_levels * max_members, n_heads, head_dim] (16-byte aligned) and natural-log lse
  // [max_levels * max_members, n_heads]. Written by the prefix pass, read by the suffix pass
  // (the fused launch neither writes nor reads them). Unused with max_levels == 0.
  float* prefix_v = nullptr;
  float* prefix_lse = nullptr;
  CascadeBounds bounds;           // batch and n_heads are the call's; the rest are bounds
  int32_t max_blocks_per_seq = 0;
  float scale = 1.0f;
  int32_t window = 0;  // > 0: sliding window, applied to sequences' own positions only (members
                       // must have kv_len <= window, so that the window sees all their levels)
  // Tuning and testing (0 = automatic): prefix row tile (16 or 64; 16 needs group <= 16), caps on
  // the splits of a prefix tile and of a (sequence, KV head), and the bf16 parts of q (3: fp32
  // class; 2: faster, ~1e-5 typical but ~1e-4 on sharp softmaxes; 1: q and P rounded to bf16
  // once, the accuracy of bf16 flash-attention kernels, ~5e-4 on the conformance cases, and
  // 2.5x fewer tensor-core products than 3 where the prefix pass is compute-bound).
  int32_t prefix_tile_rows = 0;
  int32_t max_prefix_splits = 0;
  int32_t max_suffix_splits = 0;
  int32_t q_parts = 3;
  // 64-row tiles per prefix CTA of the fused flat grid: 0 or 1 one, 2 two (needs q_parts 1;
  // ignored where the plan has 16-row tiles or one tile per level and KV head). Two tiles share
  // each K/V stage the CTA loads (half the L2 reads) but run their MMAs one after the other;
  // measured slower than one tile on an H200 (docs/perf.md), so not the default.
  int32_t prefix_unit_tiles = 0;
  // The fused launch's shape: 0 automatic (16-CTA clusters where they fit), 1 the flat grid,
  // 2, 4, 8 or 16: clusters of that many CTAs (a call they do not fit aborts, naming why).
  int32_t cluster = 0;
  // Programmatic dependent launch, as DecodeParams::overlap: the call's CTAs may start while the
  // previous kernel of the stream (or graph) is still running and wait for it before they read
  // anything, so any earlier kernel may still write every input and the workspace; a call lets
  // its successor start once its CTAs' KV streams are done. false: an ordinary launch.
  bool overlap = true;
  // Diagnostics (benchmarks): when set, CTA i of a launch writes the device clock (%globaltimer,
  // ns) to cta_times[kCascadeTimelineWords * i + k], k = 0 its start, 1 its work resolved
  // (positions, rows; a merge unit: its inputs), 2 the copies of its first pipeline stages issued
  // (block-table entries read), 3 its first stage in shared memory, 4 its main loop done, 5 its
  // KV stream done (results in shared memory), 6 its results stored, 7 the start of the (last)
  // merge it runs (a merge unit: its inputs have all arrived), 8 its end; a merge unit also
  // records 2 its input copies issued, 4 its weights computed, 3 its inputs landed and 6 its
  // outputs stored; 0 where a CTA has no such point; and at k = kCascadeStamps the unit it ran
  // (low 32 bits; CascadePlanInfo: suffix units, then prefix, then merge units) and its SM
  // (%smid, high 32 bits). Size:
  // kCascadeTimelineWords * DescribeCascadePlan().ctas.
  uint64_t* cta_times = nullptr;
};

constexpr int kCascadeStamps = 9;
constexpr int kCascadeTimelineWords = kCascadeStamps + 1;  // the stamps, then the unit
inline constexpr const char* kCascadeStampNames[kCascadeStamps] = {
    "start", "resolved", "issued", "landed", "looped", "streamed", "stored", "merge", "end"};

enum class CascadeForm { kTwoLaunch, kFused };

// Words of the layout for these bounds (int32; copy BuildCascadeLayout's result to the device).
int64_t CascadeLayoutWords(const CascadeBounds& bounds);

// Host: the layout of `levels` (see cascade_layout.h BuildLayout for the checks; kv_lens is an
// optional host copy of the lengths). Returns "" or what is wrong.
std::string BuildCascadeLayout(const CascadeBounds& bounds,
                               const std::vector<CascadeLevelSpec>& levels,
                               const int32_t* kv_lens, std::vector<int32_t>* words);

// Device scratch for calls with these bounds and knobs (all forms; p's pointers may still be
// null): partial states of splits and the arrival counters of the in-kernel merges. Contract as
// DecodeWorkspaceBytes: zero-fill it once after allocation; every call leaves its counters at
// zero; calls sharing it run in order on one stream. A call aborts when the workspace is smaller
// than its own bounds need. The first call on a device also sets the kernel's shared-memory
// limit: make it before any graph capture.
size_t CascadeWorkspaceBytes(const PagedKv& cache, const CascadeParams& p);

// The two-launch form, in this order on one stream (or CascadeAttention(kTwoLaunch)).
void CascadePrefixPass(const PagedKv& cache, const CascadeParams& p, void* workspace,
                       size_t workspace_bytes, cudaStream_t stream);
void CascadeSuffixPass(const PagedKv& cache, const CascadeParams& p, void* workspace,
                       size_t workspace_bytes, cudaStream_t stream);
// The single-launch form.
void CascadeFused(const PagedKv& cache, const CascadeParams& p, void* workspace,
                  size_t workspace_bytes, cudaStream_t stream);
void CascadeAttention(const PagedKv& cache, const CascadeParams& p, CascadeForm form,
                      void* workspace, size_t workspace_bytes, cudaStream_t stream);

// The launch plan these parameters get on the current GPU (for benchmarks and tests).
struct CascadePlanInfo {
  int prefix_tile_rows = 0;
  int prefix_tiles = 0;   // per (level, KV head)
  int prefix_unit_tiles = 1;  // tiles per prefix CTA
  int prefix_splits = 0;  // per tile
  int suffix_splits = 0;  // per (sequence, KV head)
  int ctas = 0;           // of the launch (a pass, or the fused launch)
  int suffix_ctas = 0;    // its first units, the suffix units; then the prefix units, then
  int merge_ctas = 0;     // the merge units (the fused flat grid)
  int cluster = 0;        // fused launch as clusters: CTAs per cluster (0: the flat grid); then
                          // prefix_tiles are the clusters' row tiles and prefix_splits = cluster
};
CascadePlanInfo DescribeCascadePlan(const PagedKv& cache, const CascadeParams& p,
                                    cascade::Form form);

}  // namespace moemesh::cuda
