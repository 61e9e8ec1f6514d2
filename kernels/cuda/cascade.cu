// CUDA cascade attention of cascade.h. One kernel serves the prefix pass, the suffix pass and the
// fused launch; a flat grid of suffix units, then prefix units, then (fused) merge units
// (cascade_plan.h says what each unit does).
//
// Every compute unit (4 warps) attends a tile of query rows against a range of positions of one
// KV head (the KV stream: ComputeChunk in cascade_chunk.cuh for 16-row tiles, ComputeChunkWide in
// cascade_wide.cuh, on the warpgroup MMA, for 64-row tiles).
// Two-launch form: a prefix tile whose range is one split writes its members' prefix states;
// otherwise each split writes a partial state and the last split of the tile to finish (atomic
// counter) merges them (two levels of merges above 16 splits). A suffix split writes a partial
// state; the last of a (sequence, KV head) merges the partials with the prefix states and writes
// the output. No CTA waits for another, so any grid is deadlock-free.
// Fused form: prefix and suffix splits only write partial states and arrive at their tile's or
// (sequence, KV head)'s counter; a merge unit per few (sequence, KV head) waits for the counts and
// merges every partial state of a row in one step, so the merges run on many CTAs at once, not
// behind the last split of each tile. Units are taken from queues in start order (TakeUnit), so
// a merge unit never holds a slot that a unit it waits for needs: deadlock-free on any grid too.
// (The merges are in cascade_merge.cuh.)
#include "kernels/cuda/cascade.h"
#include "kernels/cuda/cascade_chunk.cuh"
#include "kernels/cuda/cascade_kernel_args.h"
#include "kernels/cuda/cascade_merge.cuh"

#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_merge.cuh"
#include "kernels/cuda/fast_div.h"
#include "kernels/cuda/launch_util.h"
#include "kernels/cuda/warp_mma.cuh"

namespace moemesh::cuda {
namespace {

namespace cs = cascade;
using cs::Cfg;
using cs::ComputeChunk;
using cs::FinalMerges;
using cs::KernelArgs;
using cs::kLn2;
using cs::kThreads;
using cs::kWarps;
using cs::MergePrefixSplits;
using cs::NoteFinal;
using cs::Shared;
using cs::PrefetchTable;
using cs::Stamp;
using cs::StoreResults;
using decode::ArriveLast;

// The KV stream of a tile of `tile_rows` (16 or 64) rows, or of kTiles (2) 64-row tiles; results
// at the start of smem.
template <int D, int QP, int kTiles>
__device__ void Stream(const KernelArgs& a, const int32_t* table, int h, int lo, int hi,
                       int tile_rows, unsigned char* smem, Shared& sh) {
  float* res = reinterpret_cast<float*>(smem);
  if constexpr (kTiles == 2) {
    cs::ComputeChunkWide<D, QP, 2>(a, table, h, lo, hi, res, smem, sh);
  } else if (tile_rows == 64) {
    cs::ComputeChunkWide<D, QP>(a, table, h, lo, hi, res, smem, sh);
  } else {
    ComputeChunk<D, QP>(a, table, h, lo, hi, res, smem, sh);
  }
}

template <int D, int QP, int kTiles>
__device__ void RunPrefix(const KernelArgs& a, int cta, unsigned char* smem, Shared& sh) {
  const cs::PrefixWork w = cs::ResolvePrefix(cta, a.plan, a.dims, a.layout);
  if (!w.active) return;
  const int32_t* table = a.block_tables + static_cast<int64_t>(w.table_seq) * a.max_blocks_per_seq;
  PrefetchTable<D>(a, table, w.lo, w.hi);
  const int group = a.dims.group, nh = a.dims.n_heads;
  for (int r = threadIdx.x; r < cs::kMaxUnitRows; r += kThreads) {
    int32_t q_row = -1, state_row = -1;
    if (r < w.rows) {
      const int slot = w.first_slot + r / group;
      const int head = w.head * group + r % group;
      q_row = a.layout.member_seq[slot] * nh + head;
      state_row = slot * nh + head;
    }
    sh.row_q[r] = q_row;
    sh.row_state[r] = state_row;
  }
  __syncthreads();
  Stamp(a, 1);
  Stream<D, QP, kTiles>(a, table, w.head, w.lo, w.hi, a.plan.pre_tile_rows, smem, sh);
  warp_mma::LaunchDependents();
  Stamp(a, 5);
  if (w.n_active == 1 && !a.plan.fused) {  // the only split: its result is the prefix state
    StoreResults<D>(
        w.rows, [&](int r) { return a.prefix_v + static_cast<int64_t>(sh.row_state[r]) * D; },
        [&](int r) { return a.prefix_lse + sh.row_state[r]; }, kLn2, smem, sh);
    return;
  }
  const int64_t splits = a.plan.pre_splits;
  StoreResults<D>(
      w.rows, [&](int r) { return a.pre_part_o + (sh.row_state[r] * splits + w.split) * D; },
      [&](int r) { return a.pre_part_lse + sh.row_state[r] * splits + w.split; }, 1.f, smem, sh);
  Stamp(a, 6);
  if (a.plan.fused) {  // the members' merge units merge the splits (one arrival per tile)
    for (int j = 0; j < w.tiles; ++j) {
      cs::Arrive(a.pre_counters +
                 cs::TileIndex(w.level, w.head, w.tile + j, a.plan, a.dims) * cs::kCounterSlots);
    }
  } else {
    MergePrefixSplits<D>(a, w, smem, sh);
  }
}

template <int D, int QP>
__device__ void RunSuffix(const KernelArgs& a, int id, unsigned char* smem, Shared& sh) {
  const cs::SuffixWork w = cs::ResolveSuffix(id, a.plan, a.dims, a.layout, a.kv_lens);
  if (!w.active) return;
  const int32_t* table = a.block_tables + static_cast<int64_t>(w.seq) * a.max_blocks_per_seq;
  PrefetchTable<D>(a, table, w.lo, w.hi);
  const int group = a.dims.group;
  const int32_t row0 = w.seq * a.dims.n_heads + w.head * group;
  for (int r = threadIdx.x; r < cs::kMaxUnitRows; r += kThreads) {
    sh.row_q[r] = r < group ? row0 + r : -1;
  }
  __syncthreads();
  Stamp(a, 1);
  Stream<D, QP, 1>(a, table, w.head, w.lo, w.hi, a.plan.suf_tile_rows, smem, sh);
  warp_mma::LaunchDependents();
  Stamp(a, 5);
  const int64_t splits = a.plan.suf_splits;
  StoreResults<D>(
      group, [&](int r) { return a.suf_part_o + ((row0 + r) * splits + w.split) * D; },
      [&](int r) { return a.suf_part_lse + (row0 + r) * splits + w.split; }, 1.f, smem, sh);
  Stamp(a, 6);
  uint32_t* counter = a.seq_counters + cs::kSeqCounterWords * (static_cast<int64_t>(w.seq) *
                                                                     a.dims.kv_heads + w.head);
  if (a.plan.fused) {  // the sequence's merge unit merges
    cs::Arrive(counter);
    return;
  }
  if (ArriveLast(counter, w.n_active, &sh.flag)) {
    Stamp(a, 7);
    if (threadIdx.x == 0) {
      sh.n_final = 1;
      NoteFinal(a, 0, w.seq, w.n_active, sh);
    }
    __syncthreads();
    FinalMerges<D>(a, w.head, smem, sh, 0, group);
  }
}

// A merge unit (fused form, cascade_plan.h MergeWork): a thread per sequence notes its inputs and
// waits for them (the last of a counter's readers resets it), then one FinalMerges for the
// unit's rows.
template <int D>
__device__ void RunMerge(const KernelArgs& a, int id, unsigned char* smem, Shared& sh) {
  warp_mma::LaunchDependents();  // a merge unit streams no K/V
  const cs::MergeWork w = cs::ResolveMerge(id, a.plan, a.dims);
  if (!w.active) return;
  const int n = w.seq_end - w.seq_begin;
  const uint32_t readers = static_cast<uint32_t>(cs::MergeReaders(a.plan, a.dims));
  if (threadIdx.x == 0) sh.n_final = n;
  for (int j = threadIdx.x; j < n; j += kThreads) {
    const int seq = w.seq_begin + j;
    const int n_suffix = cs::SuffixArrivals(seq, a.plan, a.dims, a.layout, a.kv_lens);
    NoteFinal(a, j, seq, n_suffix, sh);
  }
  Stamp(a, 1);
  // Waits for `count` arrivals at counter[0]; counter[1] counts the readers, `expected` of them.
  auto take = [](uint32_t* counter, int count, uint32_t expected) {
    cs::WaitCount(counter, count);
    if (expected <= 1 || atomicAdd(counter + 1, 1u) + 1 == expected) {
      atomicExch(counter, 0u);
      if (expected > 1) atomicExch(counter + 1, 0u);
    }
  };
  for (int j = threadIdx.x; j < n; j += kThreads) {
    const int seq = w.seq_begin + j;
    take(a.seq_counters +
             cs::kSeqCounterWords * (static_cast<int64_t>(seq) * a.dims.kv_heads + w.head),
         sh.fm_suffix[j], readers);
    // The levels NoteFinal recorded (each has at least one input): their splits' arrivals.
    for (int d = 0, first = sh.fm_suffix[j]; first < sh.fm_count[j]; first = sh.fm_end[j][d++]) {
      const cs::SlotTile t = cs::TileOfSlot(sh.fm_slots[j][d], a.plan, a.dims, a.layout);
      take(a.pre_counters +
               cs::TileIndex(t.level, w.head, t.tile, a.plan, a.dims) * cs::kCounterSlots,
           sh.fm_end[j][d] - first, static_cast<uint32_t>(t.members) * readers);
    }
  }
  __syncthreads();
  Stamp(a, 7);
  FinalMerges<D>(a, w.head, smem, sh, w.row_begin - w.seq_begin * a.dims.group,
                 w.row_end - w.row_begin, /*stamps=*/true);
}

// Thread 0 of a CTA of the fused flat grid (which has merge units): the unit it runs, taken from
// queues in start order (a.tickets: kQueueWords words, then the SM claims; cascade_plan.h) so
// that a merge unit, which waits, never holds a slot that a unit it waits for needs:
//   - without spread_prefix, a ticket (one atomic; the grid's order: suffix units, prefix units,
//     merge units): a merge unit is taken after every other unit, so it only waits for units
//     already running (the CTA taking the last ticket resets the counter);
//   - with spread_prefix, a CTA first claims its SM (a word per %smid) and, if it is the SM's
//     only claimant, takes the next prefix unit (releasing the claim when the unit ends, or at
//     once when none is left); otherwise the next suffix unit, else the next prefix unit; a merge
//     unit only when no other is left, so again only after every other unit has started.
// The CTA that finishes taking last resets the queues for the next launch (the claims are
// released by their prefix units). Sets *claim to the claimed SM's word, or null.
__device__ int TakeUnit(const KernelArgs& a, uint32_t** claim) {
  uint32_t* q = a.tickets;
  const cs::Plan& p = a.plan;
  const uint32_t pre = static_cast<uint32_t>(p.pre_ctas), suf = static_cast<uint32_t>(p.suf_ctas);
  const uint32_t merge = static_cast<uint32_t>(p.merge_units);
  *claim = nullptr;
  if (!p.spread_prefix) {
    const uint32_t ticket = atomicAdd(q, 1u);
    if (ticket + 1 == gridDim.x) atomicExch(q, 0u);
    return static_cast<int>(ticket);
  }
  int unit = -1;
  auto take = [&](int queue, uint32_t count, uint32_t first) {
    if (unit >= 0) return;
    const uint32_t t = atomicAdd(q + queue, 1u);
    if (t < count) unit = static_cast<int>(first + t);
  };
  uint32_t sm;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  if (sm >= static_cast<uint32_t>(cs::kSmClaims)) {
    take(1, pre, suf);  // no claim word: prefix units first
  } else if (atomicCAS(q + cs::kQueueWords + sm, 0u, 1u) == 0u) {
    take(1, pre, suf);
    if (unit >= 0) {
      *claim = q + cs::kQueueWords + sm;
    } else {
      atomicExch(q + cs::kQueueWords + sm, 0u);
    }
  }
  take(2, suf, 0);
  take(1, pre, suf);
  take(3, merge, suf + pre);
  __threadfence();  // this CTA's queue updates before its count below
  if (atomicAdd(q, 1u) + 1 == gridDim.x) {
    for (int i = 0; i < cs::kQueueWords; ++i) atomicExch(q + i, 0u);
  }
  return unit;
}

// kTiles 2: the instance for plans with two-tile prefix units (QP 1); kept apart so that its
// register needs do not weigh on the other units' code.
template <int D, int QP, int kTiles>
__global__ void __launch_bounds__(kThreads, cs::kCtasPerSm) CascadeKernel(const KernelArgs a) {
  extern __shared__ __align__(1024) unsigned char smem[];  // cascade_wide.cuh's layout
  __shared__ Shared sh;
  __shared__ uint32_t* claim;
  const uint64_t t0 = a.cta_times != nullptr ? warp_mma::GlobalTimerNs() : 0;
  // An overlapped launch (CascadeParams::overlap): nothing is read before the previous kernel
  // is done, since it may write every input and this call's workspace (the tickets included).
  warp_mma::WaitForPrerequisites();
  int unit = static_cast<int>(blockIdx.x);
  if (a.plan.merge_units > 0) {
    if (threadIdx.x == 0) sh.flag = TakeUnit(a, &claim);
    __syncthreads();
    unit = sh.flag;
  }
  cs::StartTimeline(a, unit, t0);
  if (unit < a.plan.suf_ctas) {
    RunSuffix<D, QP>(a, unit, smem, sh);
  } else if (unit < a.plan.suf_ctas + a.plan.pre_ctas) {
    RunPrefix<D, QP, kTiles>(a, unit - a.plan.suf_ctas, smem, sh);
    if (a.plan.merge_units > 0 && threadIdx.x == 0 && claim != nullptr) atomicExch(claim, 0u);
  } else {
    RunMerge<D>(a, unit - a.plan.suf_ctas - a.plan.pre_ctas, smem, sh);
  }
  Stamp(a, kCascadeStamps - 1);
}

// ---------------------------------------------------------------------------------------------
// Launching (the host side of a call is in cascade_launch.cc).

// CTAs of CascadeKernel<head_dim> that fit on the current GPU at once (launch_util.h).
int ResidentSlots(int head_dim) {
  // The 2- and 1-part variants and the two-tile ones have the same shared memory and launch
  // bounds as the 3-part ones.
  auto k = [](auto kernel) { return reinterpret_cast<const void*>(kernel); };
  static ResidentCtas ctas(
      "CascadeAttention", k(CascadeKernel<64, 3, 1>), Cfg<64>::kSmemBytes,
      k(CascadeKernel<128, 3, 1>), Cfg<128>::kSmemBytes, kThreads,
      {k(CascadeKernel<64, 2, 1>), k(CascadeKernel<64, 1, 1>), k(CascadeKernel<64, 1, 2>)},
      {k(CascadeKernel<128, 2, 1>), k(CascadeKernel<128, 1, 1>), k(CascadeKernel<128, 1, 2>)});
  return ctas.For(head_dim);
}

}  // namespace

namespace cascade {

int CascadeResidentSlots(int head_dim) { return ResidentSlots(head_dim); }

void LaunchCascadeKernel(int head_dim, int q_parts, unsigned grid, bool overlap,
                         const KernelArgs& a, cudaStream_t stream) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(grid, 1, 1);
  cfg.blockDim = dim3(kThreads, 1, 1);
  cfg.dynamicSmemBytes = head_dim == 128 ? Cfg<128>::kSmemBytes : Cfg<64>::kSmemBytes;
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = overlap ? 1 : 0;
  ForInstance(head_dim, q_parts, [&](auto d, auto qp) {
    constexpr int kD = decltype(d)::value, kQP = decltype(qp)::value;
    if constexpr (kQP == 1) {
      if (a.plan.pre_unit_tiles == 2) {
        MM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, CascadeKernel<kD, 1, 2>, a));
        return;
      }
    }
    MM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, CascadeKernel<kD, kQP, 1>, a));
  });
}

}  // namespace cascade
}  // namespace moemesh::cuda
