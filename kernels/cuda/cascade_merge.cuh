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
static_assert(kMaxUnitRows == 2 * kMaxTileRows, "a prefix unit is at most two 64-row tiles");
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int D>
struct Cfg {
  static constexpr int kStages = D == 128 ? 3 : 4;
  static constexpr int kRowBytes = D * 2;
  static constexpr int kKvBytes = kStageTokens * kRowBytes;  // K (or V) of one stage
  static constexpr int kStageBytes = 2 * kKvBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes;
  // After the main loop the stage buffers hold the unit's results ([up to 128 rows][kResStride]
  // floats); a 16-row tile's per-warp states ([4 warps][16 rows][kResStride]) follow its 64.
  static constexpr int kResStride = D + 8;  // float2 stores of a half-warp hit 32 banks
  static constexpr int kWarpBufFloats = kMaxTileRows * kResStride;
  static_assert((kMaxTileRows + kWarps * 16) * kResStride * 4 <= kSmemBytes, "result buffers");
  static_assert(kMaxUnitRows * kResStride * 4 <= kSmemBytes, "a two-tile unit's results");
  // A two-tile unit (ComputeChunkWide<D, 1, 2>) keeps its queries in the last stage buffer.
  static_assert(kMaxUnitRows * D * 2 == kStageBytes, "two tiles' bf16 queries fill one stage");
  // MergeRows: the weights and LSEs of up to kMaxTileRows rows and the staged outputs of at least
  // one row.
  static_assert(16 + (kMaxTileRows * (kMaxFinalInputs + 1) + D * kMaxFinalInputs) * 4 <=
                    kSmemBytes,
                "merge staging");
};

// What the KV stream (cascade_chunk.cuh ComputeChunk) keeps in static shared memory.
struct StreamShared {
  float m[kWarps][16];               // per-warp row maxima of a 16-row tile
  float l[kWarps][16];               // and sums
  float res_lse[kMaxUnitRows];       // the unit's log2-sum-exps (-inf: nothing attended)
  int32_t row_q[kMaxUnitRows];       // q / output row (sequence * n_heads + head), -1: padding
};

struct Shared : StreamShared {
  int32_t row_state[kMaxUnitRows];   // prefix units: prefix-state row (slot * n_heads + head)
  // The (sequence, KV head) merges this CTA completes (FinalMerges): per sequence, its suffix
  // splits, its inputs (suffix splits, then each level's), the member slots of its levels and
  // the input index where each level's inputs end.
  int32_t fm_seq[kMaxTileRows];
  int32_t fm_suffix[kMaxTileRows];
  int32_t fm_count[kMaxTileRows];
  int32_t fm_slots[kMaxTileRows][kCascadeMaxDepth];
  uint8_t fm_end[kMaxTileRows][kCascadeMaxDepth];
  int n_final;
  int flag;
};

// Diagnostic timeline point k of this CTA (CascadeParams::cta_times).
__device__ __forceinline__ void Stamp(const KernelArgs& a, int k) {
  if (a.cta_times != nullptr && threadIdx.x == 0) {
    a.cta_times[kCascadeTimelineWords * static_cast<int64_t>(blockIdx.x) + k] =
        warp_mma::GlobalTimerNs();
  }
}

// Thread 0: starts this CTA's row of the timeline at t0, naming the unit it runs and the SM it
// runs on (its other points are cleared, as a unit may skip some).
__device__ __forceinline__ void StartTimeline(const KernelArgs& a, int unit, uint64_t t0) {
  if (threadIdx.x != 0 || a.cta_times == nullptr) return;
  uint64_t* row = a.cta_times + kCascadeTimelineWords * static_cast<int64_t>(blockIdx.x);
  row[0] = t0;
  for (int k = 1; k < kCascadeStamps; ++k) row[k] = 0;
  uint32_t sm;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  row[kCascadeStamps] = static_cast<uint64_t>(static_cast<uint32_t>(unit)) |
                        static_cast<uint64_t>(sm) << 32;
}

// Block-wide: this CTA's global writes are published, then one arrival at `counter` (whose
// reader waits for a count, WaitCount). The CTA barrier orders every thread's writes before
// thread 0's release at GPU scope (release is cumulative), as in decode::ArriveLast.
__device__ __forceinline__ void Arrive(uint32_t* counter) {
  __syncthreads();
  if (threadIdx.x == 0) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(counter) : "memory");
  }
}

// One thread: waits until `counter` reaches `count`; what the arrivals wrote before arriving is
// then visible to this thread, and to the rest of its CTA after a CTA barrier. Polls with relaxed
// loads and acquires once, with a fence, when the count is reached: an acquire load compiles to
// a load and an invalidation of the SM's whole L1 (LDG.STRONG.GPU + CCTL.IVALL), which after
// every poll would also drop the L1 lines of the CTA sharing the SM.
__device__ __forceinline__ void WaitCount(const uint32_t* counter, int count) {
  for (;;) {
    uint32_t v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(counter) : "memory");
    if (v >= static_cast<uint32_t>(count)) break;
    __nanosleep(128);
  }
  asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
}

// The weights of a merge of `rows` rows, by the whole CTA (every thread calls it; a CTA barrier
// separates the loads from the weights, and the caller's next barrier publishes the weights): row r
// has count_of(r) <= slots inputs, input i with log2-sum-exp lse_of(r, i); w[r * slots + i] (shared
// memory) becomes exp2(lse_i - max) / sum for i < count and 0 for count <= i < slots, and
// row_lse(r, lse) receives the merged log2-sum-exp (-inf, every weight 0, when every input is
// empty). First every LSE is loaded, a thread per (row, input) with 4 loads in flight per thread,
// so the loads cost one round trip however many rows and inputs there are; then a group of lanes
// per row (the power of two >= slots, at most a warp), lane j taking inputs j, j + lanes, ...,
// reduces the maximum and the sum by shuffles. (A thread per row walking its inputs one after the
// other, decode::RowWeights, took 2.5 us from a merge unit's copies issued to its weights for 48
// inputs on an H200, this 1.5; groups that also loaded their own LSEs made merges of many rows wait
// a round trip per pass of rows. DecodeAttention's merges, of at most 16 inputs, keep RowWeights:
// groups made them ~1% slower.)
template <class CountOf, class LseOf, class RowLse>
__device__ __forceinline__ void GroupRowWeights(int rows, int slots, CountOf count_of,
                                                LseOf lse_of, float* w, RowLse row_lse) {
  constexpr int kLoads = 4;
  const int pairs = rows * slots;
  const int threads = static_cast<int>(blockDim.x);
  for (int p0 = static_cast<int>(threadIdx.x); p0 < pairs; p0 += kLoads * threads) {
    float l[kLoads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const int p = p0 + u * threads;
      const int r = p / slots, i = p - r * slots;
      l[u] = p < pairs && i < min(count_of(r), slots) ? lse_of(r, i) : -INFINITY;
    }
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      if (p0 + u * threads < pairs) w[p0 + u * threads] = l[u];
    }
  }
  __syncthreads();
  int lanes = 1;
  while (lanes < slots && lanes < 32) lanes *= 2;
  const int per_pass = threads / lanes;
  const int sub = static_cast<int>(threadIdx.x) % lanes;
  for (int r0 = 0; r0 < rows; r0 += per_pass) {  // the same trip count in every thread
    const int r = r0 + static_cast<int>(threadIdx.x) / lanes;
    float* wr = w + r * slots;
    const int n = r < rows ? slots : 0;  // absent inputs hold -inf
    float m = -INFINITY;
    for (int i = sub; i < n; i += lanes) m = fmaxf(m, wr[i]);
    for (int off = lanes / 2; off > 0; off /= 2) {
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    }
    float sum = 0.f;
    for (int i = sub; i < n; i += lanes) {
      const float l = wr[i];
      const float e = l == -INFINITY ? 0.f : warp_mma::Exp2Approx(l - m);  // m finite if any l is
      wr[i] = e;
      sum += e;
    }
    for (int off = lanes / 2; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (r >= rows) continue;
    const float inv = sum > 0.f ? warp_mma::RcpApprox(sum) : 0.f;
    for (int i = sub; i < n; i += lanes) wr[i] *= inv;
    if (sub == 0) row_lse(r, sum > 0.f ? m + warp_mma::Log2Approx(sum) : -INFINITY);
  }
}

// Merges attention states row by row: row r has count_of(r) <= cmax inputs, input i with
// log2-sum-exp lse_of(r, i) and normalised output o_of(r, i) (D floats, 16-byte aligned, read
// through L2); store(r, d4, value, lse2) writes dims 4 * d4 .. + 3 of the result (lse2 = -inf
// and value 0 when every input is empty). Whole CTA; uses all of the dynamic shared memory. The
// outputs are staged in shared memory a chunk of rows at a time, every input row of the chunk
// in flight at once, so a merge costs about one L2 round trip per chunk whatever the number of
// inputs. The staging copies are bulk copies, one per run of inputs contiguous in global memory
// (a row's splits are): 16-byte cp.async copies, a lane per 16 bytes, kept too few bytes in
// flight per SM, so one CTA pulled 8-12 GB/s (10 us to stage 5 rows x 33 inputs of 512 bytes
// on an H200). Two alternating staging buffers (the next chunk's copies in flight while one is
// combined) measured slower with cp.async: a split tile's merge of 16 rows x 16 inputs took
// 11.4 us instead of 7.8, with twice the chunks. Meanwhile GroupRowWeights loads the LSEs (a
// thread per row loading its own, 8 at a time, took ~4 us longer for 8 rows x 33 inputs) and
// computes the weights, a group of lanes per row sized to its inputs (a whole warp per row of 2
// inputs, or a thread per output dimension, cost several times more), so the per-dimension loop
// is only loads and FMAs. With `timeline`, the merge records its copies issued (point 2), its
// weights (4), its inputs landed (3) and its outputs stored (6) (CascadeParams::cta_times).
template <int D, class CountOf, class LseOf, class OOf, class Store>
__device__ void MergeRows(int rows, int cmax, CountOf count_of, LseOf lse_of, OOf o_of,
                          Store store, unsigned char* smem, const KernelArgs* timeline = nullptr) {
  auto stamp = [&](int k) {
    if (timeline != nullptr) Stamp(*timeline, k);
  };
  constexpr int kQuads = D / 4;
  constexpr int kRowBytes = D * 4;
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem);   // the staging copies' mbarrier
  float* s_w = reinterpret_cast<float*>(smem + 16);    // [rows][cmax]: weights
  float* s_row_lse = s_w + rows * cmax;                // [rows]
  const int lse_floats = (rows * (cmax + 1) + 3) & ~3;
  float* s_o = s_w + lse_floats;                       // 16-byte aligned
  const int chunk_rows = max(1, (Cfg<D>::kSmemBytes / 4 - 4 - lse_floats) /
                                    max(1, cmax * D));  // static_assert: >= 1
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // A warp per row, a lane per input: each maximal run of inputs contiguous in global memory is
  // one bulk copy (a row's splits are contiguous). Whole CTA; ends with the phase's arrival.
  auto issue = [&](int r0) {
    const int nr = min(chunk_rows, rows - r0);
    for (int rr = warp; rr < nr; rr += kWarps) {
      const int r = r0 + rr;
      const int count = min(count_of(r), cmax);
      float* dst = s_o + rr * cmax * D;
      for (int i0 = 0; i0 < count; i0 += 32) {
        const int i = i0 + lane;
        const float* src = i < count ? o_of(r, i) : nullptr;
        const float* prev = reinterpret_cast<const float*>(
            __shfl_up_sync(0xffffffffu, reinterpret_cast<uintptr_t>(src), 1));
        const bool starts = i < count && (lane == 0 || src != prev + D);
        const uint32_t heads = __ballot_sync(0xffffffffu, starts);
        if (starts) {
          const uint32_t later = lane == 31 ? 0u : heads >> (lane + 1);
          const int next = later != 0 ? lane + __ffs(later) : min(32, count - i0);
          const uint32_t bytes = static_cast<uint32_t>(next - lane) * kRowBytes;
          warp_mma::MbarrierExpectTx(bar, bytes);
          warp_mma::BulkCopyToShared(dst + i * D, src, bytes, bar);
        }
      }
    }
    __syncthreads();  // every copy announced
    if (threadIdx.x == 0) warp_mma::MbarrierArrive(bar);
  };
  __syncthreads();  // the caller's last use of shared memory is over
  if (threadIdx.x == 0) warp_mma::MbarrierInitForCluster(bar);
  // (Generic-proxy uses of the staging before the copy engine writes it.)
  warp_mma::ProxyFence();
  __syncthreads();
  issue(0);
  stamp(2);
  // While the copies fly: the weights (normalised) and each row's merged log2-sum-exp.
  GroupRowWeights(rows, cmax, count_of, lse_of, s_w,
                  [&](int r, float lse) { s_row_lse[r] = lse; });
  stamp(4);
  uint32_t phase = 0;
  for (int r0 = 0; r0 < rows; r0 += chunk_rows) {
    warp_mma::MbarrierWaitCluster(bar, phase);
    if (r0 == 0) stamp(3);
    phase ^= 1u;
    __syncthreads();  // (the weights)
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
    if (r0 + chunk_rows < rows) {
      warp_mma::ProxyFence();
      issue(r0 + chunk_rows);
    }
  }
  stamp(6);
  if (threadIdx.x == 0) warp_mma::MbarrierInval(bar);
}

// Records entry j of the final merges this CTA runs: sequence `seq` with `n_suffix` active
// suffix splits (one thread per entry). Each level is one input, its prefix state, or in the
// fused form its prefix tile's active splits.
__device__ __forceinline__ void NoteFinal(const KernelArgs& a, int j, int seq, int n_suffix,
                                          Shared& sh) {
  int n = 0, end = n_suffix;
  for (int d = 0; d < a.layout.max_depth; ++d) {
    const int32_t slot = a.layout.seq_slots[seq * a.layout.max_depth + d];
    if (slot < 0) continue;
    end += a.plan.fused ? LevelActiveSplits(slot / a.layout.max_members, a.plan, a.dims, a.layout)
                        : 1;
    sh.fm_slots[j][n] = slot;
    sh.fm_end[j][n++] = static_cast<uint8_t>(end);
  }
  sh.fm_seq[j] = seq;
  sh.fm_suffix[j] = n_suffix;
  sh.fm_count[j] = end;
}

// Final merges of (sh.fm_seq[j], KV head h) for j < sh.n_final, rows [row0, row0 + rows) of
// their n_final x group rows (row g: query head g % group of entry g / group), all in one
// MergeRows: each sequence's suffix splits' partial states and its levels' inputs (prefix
// states, or in the fused form the prefix splits' partial states), written to out / lse. Whole
// CTA, after a __syncthreads that follows the NoteFinal calls.
template <int D>
__device__ void FinalMerges(const KernelArgs& a, int h, unsigned char* smem, const Shared& sh,
                            int row0, int rows, bool stamps = false) {
  const int group = a.dims.group, nh = a.dims.n_heads;
  const int n = sh.n_final;
  int cmax = 1;
  for (int j = 0; j < n; ++j) cmax = max(cmax, sh.fm_count[j]);
  const int64_t splits = a.plan.suf_splits, pre_splits = a.plan.pre_splits;
  const bool fused = a.plan.fused;
  // Merge row r is row row0 + r of the entries (a multiply-high, not an integer divide: these
  // run on the merge's latency-bound path).
  auto entry = [&](int r) {
    return static_cast<int>(a.group_div.Div(static_cast<uint32_t>(row0 + r)));
  };
  auto out_row = [&](int r) -> int64_t {
    const int j = entry(r);
    return static_cast<int64_t>(sh.fm_seq[j]) * nh + h * group + (row0 + r - j * group);
  };
  // Input i >= fm_suffix of row r: its level's state row and the split within that level.
  auto level_input = [&](int r, int i, int* split) -> int64_t {
    const int j = entry(r);
    int d = 0;
    while (i >= sh.fm_end[j][d]) ++d;
    *split = i - (d == 0 ? sh.fm_suffix[j] : sh.fm_end[j][d - 1]);
    return static_cast<int64_t>(sh.fm_slots[j][d]) * nh + h * group + (row0 + r - j * group);
  };
  auto count_of = [&](int r) { return sh.fm_count[entry(r)]; };
  auto lse_of = [&](int r, int i) -> float {
    if (i < sh.fm_suffix[entry(r)]) return __ldcg(a.suf_part_lse + out_row(r) * splits + i);
    int k = 0;
    const int64_t row = level_input(r, i, &k);
    if (fused) return __ldcg(a.pre_part_lse + row * pre_splits + k);
    return __ldcg(a.prefix_lse + row) * kLog2e;
  };
  auto o_of = [&](int r, int i) -> const float* {
    if (i < sh.fm_suffix[entry(r)]) return a.suf_part_o + (out_row(r) * splits + i) * D;
    int k = 0;
    const int64_t row = level_input(r, i, &k);
    if (fused) return a.pre_part_o + (row * pre_splits + k) * D;
    return a.prefix_v + row * D;
  };
  auto store = [&](int r, int d4, float4 x, float lse2) {
    const int64_t row = out_row(r);
    *reinterpret_cast<float4*>(a.out + row * D + d4 * 4) = x;
    if (d4 == 0 && a.lse != nullptr) a.lse[row] = lse2 * kLn2;
  };
  MergeRows<D>(rows, cmax, count_of, lse_of, o_of, store, smem, stamps ? &a : nullptr);
}

// The splits of a prefix tile: true in the CTA that merged them into the prefix states.
template <int D>
__device__ bool MergePrefixSplits(const KernelArgs& a, const PrefixWork& w,
                                  unsigned char* smem, Shared& sh) {
  uint32_t* counters =
      a.pre_counters + TileIndex(w.level, w.head, w.tile, a.plan, a.dims) * kCounterSlots;
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
