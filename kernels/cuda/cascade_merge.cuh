// Device pieces of the CUDA cascade kernel (cascade.cu) that are not the KV stream: the CTA's
// tile configuration and shared state, the diagnostic timeline, and the merges through global
// memory (MergeRows; a split tile's merge into the prefix states, MergePrefixSplits; each
// sequence's final merge of its suffix splits and prefix states, FinalMerges). Included by
// cascade.cu only; stateless.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/cascade.h"
#include "kernels/cuda/cascade_kernel_args.h"
#include "kernels/cuda/decode_merge.cuh"
#include "kernels/cuda/warp_mma.cuh"

namespace moemesh::cuda::cascade {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxTileRows = 64;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int D>
struct Cfg {
  static constexpr int kStages = D == 128 ? 3 : 4;
  static constexpr int kRowBytes = D * 2;
  static constexpr int kKvBytes = kStageTokens * kRowBytes;  // K (or V) of one stage
  static constexpr int kStageBytes = 2 * kKvBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes;
  // After the main loop the stage buffers hold the tile's results ([64 rows][kResStride]
  // floats), then the per-warp states of a 16-row tile ([4 warps][16 rows][kResStride]).
  static constexpr int kResStride = D + 8;  // float2 stores of a half-warp hit 32 banks
  static constexpr int kWarpBufFloats = kMaxTileRows * kResStride;
  static_assert((kMaxTileRows + kWarps * 16) * kResStride * 4 <= kSmemBytes, "result buffers");
  // MergeRows: the weights and LSEs of up to kMaxTileRows rows and the staged outputs of at least
  // one row.
  static_assert((kMaxTileRows * (kMaxFinalInputs + 1) + D * kMaxFinalInputs) * 4 <=
                    kSmemBytes,
                "merge staging");
};

// What the KV stream (cascade_chunk.cuh ComputeChunk) keeps in static shared memory.
struct StreamShared {
  float m[kWarps][16];               // per-warp row maxima of a 16-row tile
  float l[kWarps][16];               // and sums
  float res_lse[kMaxTileRows];       // the tile's log2-sum-exps (-inf: nothing attended)
  int32_t row_q[kMaxTileRows];       // q / output row (sequence * n_heads + head), -1: padding
};

struct Shared : StreamShared {
  int32_t row_state[kMaxTileRows];   // prefix tiles: prefix-state row (slot * n_heads + head)
  // The (sequence, KV head) merges this CTA completes (FinalMerges): per sequence, its suffix
  // splits, its inputs (suffix splits + levels) and the member slots of its levels.
  int32_t fm_seq[kMaxTileRows];
  int32_t fm_suffix[kMaxTileRows];
  int32_t fm_count[kMaxTileRows];
  int32_t fm_slots[kMaxTileRows][kCascadeMaxDepth];
  int n_final;
  int flag;
};

// Diagnostic timeline point k of this CTA (CascadeParams::cta_times).
__device__ __forceinline__ void Stamp(const KernelArgs& a, int k) {
  if (a.cta_times != nullptr && threadIdx.x == 0) {
    a.cta_times[kCascadeStamps * static_cast<int64_t>(blockIdx.x) + k] = warp_mma::GlobalTimerNs();
  }
}

// Merges attention states row by row: row r has count_of(r) <= cmax inputs, input i with
// log2-sum-exp lse_of(r, i) and normalised output o_of(r, i) (D floats, 16-byte aligned, read
// through L2); store(r, d4, value, lse2) writes dims 4 * d4 .. + 3 of the result (lse2 = -inf
// and value 0 when every input is empty). Whole CTA; uses all of the dynamic shared memory. The
// outputs are staged in shared memory a chunk of rows at a time with every copy of the chunk in
// flight at once (the LSEs are read in the first chunk's round trip), so a merge costs one L2
// round trip per chunk whatever the number of inputs (loads consumed one input at a time would
// each wait for the previous one). Two alternating staging buffers (the next chunk's copies in
// flight while one is combined) measured slower: a split tile's merge of 16 rows x 16 inputs
// took 11.4 us instead of 7.8 on an H200, with twice the chunks. With a few rows on 4 warps
// every step is latency-bound, so each step is short and parallel: the copies go a warp per row
// and a lane per 16 bytes, inputs in the inner loop (a copy costs a few instructions); the
// weights are computed once per row, a thread per row with its LSE loads in flight together (a
// warp per row with shuffles, or per output dimension, cost several times more); the
// per-dimension loop is only loads and FMAs.
template <int D, class CountOf, class LseOf, class OOf, class Store>
__device__ void MergeRows(int rows, int cmax, CountOf count_of, LseOf lse_of, OOf o_of,
                          Store store, unsigned char* smem) {
  constexpr int kQuads = D / 4;
  constexpr int kLanesPerInput = kQuads < 32 ? kQuads : 32;  // lanes copying one input row
  constexpr int kInputsPerPass = 32 / kLanesPerInput;        // inputs a warp copies at once
  static_assert(kQuads % kLanesPerInput == 0, "lanes per input");
  float* s_w = reinterpret_cast<float*>(smem);  // [rows][cmax]: weights
  float* s_row_lse = s_w + rows * cmax;         // [rows]
  const int lse_floats = (rows * (cmax + 1) + 3) & ~3;
  float* s_o = s_w + lse_floats;
  const int chunk_rows =
      max(1, (Cfg<D>::kSmemBytes / 4 - lse_floats) / max(1, cmax * D));  // static_assert: >= 1
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int sub = lane / kLanesPerInput, q = lane % kLanesPerInput;
  auto issue = [&](int r0) {
    const int nr = min(chunk_rows, rows - r0);
    for (int rr = warp; rr < nr; rr += kWarps) {
      const int r = r0 + rr;
      const int count = min(count_of(r), cmax);
      float* dst = s_o + rr * cmax * D;
      for (int i = sub; i < count; i += kInputsPerPass) {
        const float* src = o_of(r, i);
#pragma unroll
        for (int k = 0; k < kQuads / kLanesPerInput; ++k) {
          const int d4 = q + k * kLanesPerInput;
          warp_mma::CpAsync16L2(warp_mma::SmemAddr(dst + i * D + d4 * 4), src + d4 * 4);
        }
      }
    }
    warp_mma::CpAsyncCommit();
  };
  __syncthreads();  // the caller's last use of shared memory is over
  issue(0);
  // While the copies fly, a thread per row: its weights (normalised) and merged log2-sum-exp.
  for (int r = threadIdx.x; r < rows; r += kThreads) {
    s_row_lse[r] = decode::RowWeights(
        min(count_of(r), cmax), cmax, [&](int i) { return lse_of(r, i); },
        [&](int i) -> float& { return s_w[r * cmax + i]; });
  }
  for (int r0 = 0; r0 < rows; r0 += chunk_rows) {
    warp_mma::CpAsyncWait<0>();
    __syncthreads();
    const int nr = min(chunk_rows, rows - r0);
    for (int item = threadIdx.x; item < nr * kQuads; item += kThreads) {
      const int rr = item / kQuads, d4 = item % kQuads;
      const float* w = s_w + (r0 + rr) * cmax;
      const float* x = s_o + rr * cmax * D + d4 * 4;
      const float4 o = decode::WeightedSum(
          cmax, [&](int i) { return w[i]; },
          [&](int i) { return *reinterpret_cast<const float4*>(x + i * D); });
      store(r0 + rr, d4, o, s_row_lse[r0 + rr]);
    }
    __syncthreads();  // the chunk's staging is free again
    if (r0 + chunk_rows < rows) issue(r0 + chunk_rows);
  }
}

// Records entry j of the final merges this CTA runs: sequence `seq` with `n_suffix` active
// suffix splits (one thread per entry).
__device__ __forceinline__ void NoteFinal(const KernelArgs& a, int j, int seq, int n_suffix,
                                          Shared& sh) {
  int n = 0;
  for (int d = 0; d < a.layout.max_depth; ++d) {
    const int32_t slot = a.layout.seq_slots[seq * a.layout.max_depth + d];
    if (slot >= 0) sh.fm_slots[j][n++] = slot;
  }
  sh.fm_seq[j] = seq;
  sh.fm_suffix[j] = n_suffix;
  sh.fm_count[j] = n_suffix + n;
}

// Final merges of (sh.fm_seq[j], KV head h) for j < sh.n_final, all in one MergeRows: each
// sequence's suffix splits' partial states and its prefix states, written to out / lse. Whole
// CTA, after a __syncthreads that follows the NoteFinal calls.
template <int D>
__device__ void FinalMerges(const KernelArgs& a, int h, unsigned char* smem, const Shared& sh) {
  const int group = a.dims.group, nh = a.dims.n_heads;
  const int n = sh.n_final;
  int cmax = 1;
  for (int j = 0; j < n; ++j) cmax = max(cmax, sh.fm_count[j]);
  const int64_t splits = a.plan.suf_splits;
  // Row r is head r % group of entry r / group (a multiply-high, not an integer divide: these
  // run on the merge's latency-bound path).
  auto entry = [&](int r) { return static_cast<int>(a.group_div.Div(static_cast<uint32_t>(r))); };
  auto out_row = [&](int r) -> int64_t {
    const int j = entry(r);
    return static_cast<int64_t>(sh.fm_seq[j]) * nh + h * group + (r - j * group);
  };
  auto state_row = [&](int r, int i) -> int64_t {
    const int j = entry(r);
    return static_cast<int64_t>(sh.fm_slots[j][i - sh.fm_suffix[j]]) * nh + h * group +
           (r - j * group);
  };
  auto count_of = [&](int r) { return sh.fm_count[entry(r)]; };
  auto lse_of = [&](int r, int i) -> float {
    if (i < sh.fm_suffix[entry(r)]) return __ldcg(a.suf_part_lse + out_row(r) * splits + i);
    return __ldcg(a.prefix_lse + state_row(r, i)) * kLog2e;
  };
  auto o_of = [&](int r, int i) -> const float* {
    if (i < sh.fm_suffix[entry(r)]) return a.suf_part_o + (out_row(r) * splits + i) * D;
    return a.prefix_v + state_row(r, i) * D;
  };
  auto store = [&](int r, int d4, float4 x, float lse2) {
    const int64_t row = out_row(r);
    *reinterpret_cast<float4*>(a.out + row * D + d4 * 4) = x;
    if (d4 == 0 && a.lse != nullptr) a.lse[row] = lse2 * kLn2;
  };
  MergeRows<D>(n * group, cmax, count_of, lse_of, o_of, store, smem);
}

// The splits of a prefix tile: true in the CTA that merged them into the prefix states.
template <int D>
__device__ bool MergePrefixSplits(const KernelArgs& a, const PrefixWork& w,
                                  unsigned char* smem, Shared& sh) {
  uint32_t* counters =
      a.pre_counters +
      ((static_cast<int64_t>(w.level) * a.dims.kv_heads + w.head) * a.plan.pre_tiles + w.tile) *
          kCounterSlots;
  const int64_t splits = a.plan.pre_splits;
  const int mg = a.plan.pre_merge_group;
  const int grp = w.split / mg;
  const int grp_first = grp * mg;
  const int grp_count = min(mg, w.n_active - grp_first);
  const int n_groups = (w.n_active + mg - 1) / mg;
  if (!decode::ArriveLast(&counters[grp], grp_count, &sh.flag)) return false;
  Stamp(a, 7);
  auto all_of = [](int) { return 0x7fffffff; };  // every row has all inputs (count <= cmax)
  auto part_lse = [&](int r, int i) -> float {
    return __ldcg(a.pre_part_lse + sh.row_state[r] * splits + grp_first + i);
  };
  auto part_o = [&](int r, int i) -> const float* {
    return a.pre_part_o + (sh.row_state[r] * splits + grp_first + i) * D;
  };
  auto store_final = [&](int r, int d4, float4 x, float lse2) {
    *reinterpret_cast<float4*>(a.prefix_v + static_cast<int64_t>(sh.row_state[r]) * D + d4 * 4) =
        x;
    if (d4 == 0) a.prefix_lse[sh.row_state[r]] = lse2 * kLn2;
  };
  if (n_groups == 1) {
    MergeRows<D>(w.rows, grp_count, all_of, part_lse, part_o, store_final, smem);
    return true;
  }
  auto store_group = [&](int r, int d4, float4 x, float lse2) {
    const int64_t slot = sh.row_state[r] * splits + grp;
    *reinterpret_cast<float4*>(a.pre_group_o + slot * D + d4 * 4) = x;
    if (d4 == 0) a.pre_group_lse[slot] = lse2;
  };
  MergeRows<D>(w.rows, grp_count, all_of, part_lse, part_o, store_group, smem);
  if (!decode::ArriveLast(&counters[kMaxMergeInputs], n_groups, &sh.flag)) return false;
  auto group_lse = [&](int r, int i) -> float {
    return __ldcg(a.pre_group_lse + sh.row_state[r] * splits + i);
  };
  auto group_o = [&](int r, int i) -> const float* {
    return a.pre_group_o + (sh.row_state[r] * splits + i) * D;
  };
  MergeRows<D>(w.rows, n_groups, all_of, group_lse, group_o, store_final, smem);
  return true;
}

}  // namespace moemesh::cuda::cascade
