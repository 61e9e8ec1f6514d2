// CUDA cascade attention of cascade.h. One kernel serves the prefix pass, the suffix pass and the
// fused launch; a flat grid whose first plan.suf_ctas CTAs are suffix units and the rest prefix
// units (cascade_plan.h says what each CTA does).
//
// Every CTA (4 warps) attends a tile of query rows against a range of positions of one KV head
// (the KV stream: ComputeChunk in cascade_chunk.cuh for 16-row tiles, ComputeChunkWide in
// cascade_wide.cuh, on the warpgroup MMA, for 64-row tiles).
// Results: a prefix tile whose range is one split writes its members' prefix states; otherwise
// each split writes a partial state and the last split of the tile to finish (atomic counter)
// merges them (two levels of merges above 16 splits). A suffix split writes a partial state and
// arrives at its (sequence, KV head) counter; the last arrival (suffix splits, and in the fused
// launch also each level's prefix tile once merged) merges the partials with the prefix states
// and writes the output (the merges are in cascade_merge.cuh). No CTA ever waits for another, so
// any grid is deadlock-free.
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
using cs::kMaxTileRows;
using cs::kThreads;
using cs::kWarps;
using cs::MergePrefixSplits;
using cs::NoteFinal;
using cs::Shared;
using cs::PrefetchTable;
using cs::Stamp;
using cs::StoreResults;
using decode::ArriveLast;

// The KV stream of a tile of `tile_rows` (16 or 64) rows; results at the start of smem.
template <int D, int QP>
__device__ void Stream(const KernelArgs& a, const int32_t* table, int h, int lo, int hi,
                       int tile_rows, unsigned char* smem, Shared& sh) {
  float* res = reinterpret_cast<float*>(smem);
  if (tile_rows == 64) {
    cs::ComputeChunkWide<D, QP>(a, table, h, lo, hi, res, smem, sh);
  } else {
    ComputeChunk<D, QP>(a, table, h, lo, hi, res, smem, sh);
  }
}

template <int D, int QP>
__device__ void RunPrefix(const KernelArgs& a, int cta, unsigned char* smem, Shared& sh) {
  const cs::PrefixWork w = cs::ResolvePrefix(cta, a.plan, a.dims, a.layout);
  if (!w.active) return;
  const int32_t* table = a.block_tables + static_cast<int64_t>(w.table_seq) * a.max_blocks_per_seq;
  PrefetchTable<D>(a, table, w.lo, w.hi);
  const int group = a.dims.group, nh = a.dims.n_heads;
  for (int r = threadIdx.x; r < kMaxTileRows; r += kThreads) {
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
  Stream<D, QP>(a, table, w.head, w.lo, w.hi, a.plan.pre_tile_rows, smem, sh);
  Stamp(a, 5);
  if (w.n_active == 1) {  // the only split: its result is the members' prefix state
    StoreResults<D>(
        w.rows, [&](int r) { return a.prefix_v + static_cast<int64_t>(sh.row_state[r]) * D; },
        [&](int r) { return a.prefix_lse + sh.row_state[r]; }, kLn2, smem, sh);
  } else {
    const int64_t splits = a.plan.pre_splits;
    StoreResults<D>(
        w.rows, [&](int r) { return a.pre_part_o + (sh.row_state[r] * splits + w.split) * D; },
        [&](int r) { return a.pre_part_lse + sh.row_state[r] * splits + w.split; }, 1.f, smem,
        sh);
    Stamp(a, 6);
    if (!MergePrefixSplits<D>(a, w, smem, sh)) return;
  }
  if (!a.plan.fused) return;
  // The tile's prefix states are complete: one arrival at each member's (sequence, KV head)
  // counter, all members at once (a thread each); this CTA then merges, in one MergeRows, the
  // sequences whose last arrival it was.
  __threadfence();
  if (threadIdx.x == 0) sh.n_final = 0;
  __syncthreads();
  for (int m = threadIdx.x; m < w.members; m += kThreads) {
    const int seq = a.layout.member_seq[w.first_slot + m];
    int n_act = 1;
    const int expected = cs::SequenceArrivals(seq, a.plan, a.dims, a.layout, a.kv_lens, &n_act);
    uint32_t* counter = a.seq_counters + static_cast<int64_t>(seq) * a.dims.kv_heads + w.head;
    const uint32_t prev = atomicAdd(counter, 1u);
    if (prev + 1 == static_cast<uint32_t>(expected)) {
      atomicExch(counter, 0u);
      NoteFinal(a, atomicAdd(&sh.n_final, 1), seq, n_act, sh);
    }
  }
  __syncthreads();
  if (sh.n_final == 0) return;
  __threadfence();
  Stamp(a, 7);
  FinalMerges<D>(a, w.head, smem, sh);
}

template <int D, int QP>
__device__ void RunSuffix(const KernelArgs& a, int id, unsigned char* smem, Shared& sh) {
  const cs::SuffixWork w = cs::ResolveSuffix(id, a.plan, a.dims, a.layout, a.kv_lens);
  if (!w.active) return;
  const int32_t* table = a.block_tables + static_cast<int64_t>(w.seq) * a.max_blocks_per_seq;
  PrefetchTable<D>(a, table, w.lo, w.hi);
  const int group = a.dims.group;
  const int32_t row0 = w.seq * a.dims.n_heads + w.head * group;
  for (int r = threadIdx.x; r < kMaxTileRows; r += kThreads) {
    sh.row_q[r] = r < group ? row0 + r : -1;
  }
  __syncthreads();
  Stamp(a, 1);
  Stream<D, QP>(a, table, w.head, w.lo, w.hi, a.plan.suf_tile_rows, smem, sh);
  Stamp(a, 5);
  const int64_t splits = a.plan.suf_splits;
  StoreResults<D>(
      group, [&](int r) { return a.suf_part_o + ((row0 + r) * splits + w.split) * D; },
      [&](int r) { return a.suf_part_lse + (row0 + r) * splits + w.split; }, 1.f, smem, sh);
  Stamp(a, 6);
  const int expected = cs::SequenceArrivals(w.seq, a.plan, a.dims, a.layout, a.kv_lens);
  if (ArriveLast(a.seq_counters + static_cast<int64_t>(w.seq) * a.dims.kv_heads + w.head, expected,
                 &sh.flag)) {
    Stamp(a, 7);
    if (threadIdx.x == 0) {
      sh.n_final = 1;
      NoteFinal(a, 0, w.seq, w.n_active, sh);
    }
    __syncthreads();
    FinalMerges<D>(a, w.head, smem, sh);
  }
}

template <int D, int QP>
__global__ void __launch_bounds__(kThreads, 2) CascadeKernel(const KernelArgs a) {
  extern __shared__ __align__(1024) unsigned char smem[];  // cascade_wide.cuh's layout
  __shared__ Shared sh;
  const int cta = static_cast<int>(blockIdx.x);
  if (a.cta_times != nullptr && threadIdx.x == 0) {
    for (int k = 1; k < kCascadeStamps - 1; ++k) {
      a.cta_times[kCascadeStamps * static_cast<int64_t>(cta) + k] = 0;
    }
  }
  Stamp(a, 0);
  if (cta < a.plan.suf_ctas) {
    RunSuffix<D, QP>(a, cta, smem, sh);
  } else {
    RunPrefix<D, QP>(a, cta - a.plan.suf_ctas, smem, sh);
  }
  Stamp(a, kCascadeStamps - 1);
}

// ---------------------------------------------------------------------------------------------
// Launching (the host side of a call is in cascade_launch.cc).

// CTAs of CascadeKernel<head_dim> that fit on the current GPU at once (launch_util.h).
int ResidentSlots(int head_dim) {
  // The 2- and 1-part variants have the same shared memory and launch bounds as the 3-part ones.
  static ResidentCtas ctas(
      "CascadeAttention", reinterpret_cast<const void*>(CascadeKernel<64, 3>), Cfg<64>::kSmemBytes,
      reinterpret_cast<const void*>(CascadeKernel<128, 3>), Cfg<128>::kSmemBytes, kThreads,
      reinterpret_cast<const void*>(CascadeKernel<64, 2>),
      reinterpret_cast<const void*>(CascadeKernel<128, 2>),
      reinterpret_cast<const void*>(CascadeKernel<64, 1>),
      reinterpret_cast<const void*>(CascadeKernel<128, 1>));
  return ctas.For(head_dim);
}

}  // namespace

namespace cascade {

int CascadeResidentSlots(int head_dim) { return ResidentSlots(head_dim); }

void LaunchCascadeKernel(int head_dim, int q_parts, unsigned grid, const KernelArgs& a,
                         cudaStream_t stream) {
  ForInstance(head_dim, q_parts, [&](auto d, auto qp) {
    constexpr int kD = decltype(d)::value;
    CascadeKernel<kD, decltype(qp)::value><<<grid, kThreads, Cfg<kD>::kSmemBytes, stream>>>(a);
  });
  MM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cascade
}  // namespace moemesh::cuda
