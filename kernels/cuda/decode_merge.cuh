// Device-side merging of split-KV attention states for the decode kernel (attention.cu): the
// merge through global memory by the last CTA to arrive (ArriveLast, MergeStates) and the merge
// inside a thread-block cluster (SliceBegin, SliceOwner, RecvChunk, ClusterPush, ClusterReduce).
// States are normalised outputs with log2-sum-exps. Included by attention.cu (and by
// cascade_merge.cuh, for ArriveLast and the per-row steps RowWeights and WeightedSum); stateless.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/decode_kernel_args.h"  // kWarps, kThreads, kRowsPerTile, ...
#include "kernels/cuda/warp_mma.cuh"

namespace moemesh::cuda::decode {

// acc += w * x, elementwise (the weighted sum of attention states in every merge).
__device__ __forceinline__ void AddScaled(float4& acc, float w, float4 x) {
  acc.x = fmaf(w, x.x, acc.x);
  acc.y = fmaf(w, x.y, acc.y);
  acc.z = fmaf(w, x.z, acc.z);
  acc.w = fmaf(w, x.w, acc.w);
}

// One row of a merge, by one thread: the LSEs lse_of(i) of its `count` inputs (8 loads in flight
// at a time), then weight(i) = exp2(lse_i - max) / sum for i < count and 0 for count <= i <
// slots. Returns the merged log2-sum-exp (-inf, every weight 0, when every input is empty). Once
// per row, by a thread per row: per output dimension, or by a warp per row with shuffles, these
// latency-bound steps cost several times more.
template <class LseOf, class Weight>
__device__ __forceinline__ float RowWeights(int count, int slots, LseOf lse_of, Weight weight) {
  float m = -INFINITY;
  for (int i0 = 0; i0 < count; i0 += 8) {
    float l[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) l[j] = i0 + j < count ? lse_of(i0 + j) : -INFINITY;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (i0 + j < count) weight(i0 + j) = l[j];
      m = fmaxf(m, l[j]);
    }
  }
  float sum = 0.f;
  for (int i = 0; i < count; ++i) {
    const float l = weight(i);
    const float e = l == -INFINITY ? 0.f : warp_mma::Exp2Approx(l - m);  // m finite if any l is
    weight(i) = e;
    sum += e;
  }
  const float inv = sum > 0.f ? warp_mma::RcpApprox(sum) : 0.f;
  for (int i = 0; i < count; ++i) weight(i) *= inv;
  for (int i = count; i < slots; ++i) weight(i) = 0.f;
  return sum > 0.f ? m + warp_mma::Log2Approx(sum) : -INFINITY;
}

// sum_i w(i) * x(i) over i < count (x(i): a float4 in shared memory), in four independent
// accumulators; an input of weight 0 is skipped (its staging may hold anything).
template <class W, class X>
__device__ __forceinline__ float4 WeightedSum(int count, W w, X x) {
  float4 acc[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int i0 = 0; i0 < count; i0 += 4) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int i = i0 + j;
      const float wi = i < count ? w(i) : 0.f;
      if (wi != 0.f) AddScaled(acc[j], wi, x(i));
    }
  }
  return make_float4(acc[0].x + acc[1].x + acc[2].x + acc[3].x,
                     acc[0].y + acc[1].y + acc[2].y + acc[3].y,
                     acc[0].z + acc[1].z + acc[2].z + acc[3].z,
                     acc[0].w + acc[1].w + acc[2].w + acc[3].w);
}

// Block-wide: this CTA's global writes are published, then it takes a ticket; true in the CTA
// that arrives last of `count` (which resets the counter for the next launch), which may then
// read what every arrival wrote before arriving. count <= 1: the only arrival, no atomics.
// The CTA barrier orders all threads' writes before thread 0's ticket, whose acquire-release
// atomic at GPU scope publishes them (release is cumulative) and, in the last CTA, orders the
// others' writes before the reads after the second barrier: no thread runs a full fence.
// Shared with the cascade kernel (cascade.cu).
__device__ __forceinline__ bool ArriveLast(uint32_t* counter, int count, int* s_flag) {
  if (count <= 1) {  // (CTA-uniform) the CTA reads back its own writes, through L2
    __threadfence();
    __syncthreads();
    return true;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t prev;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;\n"
                 : "=r"(prev)
                 : "l"(counter)
                 : "memory");
    const bool last = prev + 1 == static_cast<uint32_t>(count);
    if (last) atomicExch(counter, 0u);
    *s_flag = last ? 1 : 0;
  }
  __syncthreads();
  return *s_flag != 0;
}

// Merges `count` (1..kMaxMergeInputs) attention states of `rows` query heads. Input i of row r:
// output at in_o[r * in_row_o + i * D], log2-sum-exp at in_lse[r * in_row_lse + i]. Writes the
// merged output to out_o[r * out_row_o + d] and, if out_lse, lse * lse_scale to
// out_lse[r * out_row_lse]. Called by the whole CTA after a __syncthreads that ends every other
// use of s_in (kMaxMergeInputs * 8 * D floats, 16-byte aligned), s_lse (kMaxMergeInputs * 8
// floats) and `bar` (an mbarrier's 8 bytes). A row's inputs are contiguous, so each row is one
// bulk copy into shared memory (the copy engine, on `bar`), all in flight at once: the merge
// costs one L2 round trip whatever `count` is. (16-byte cp.async copies, a lane each, kept too
// few bytes in flight per SM: one CTA staged its inputs at 8-12 GB/s.) The LSEs are read a
// thread per (row, input) meanwhile, all at once. (Loading the inputs of a merge of up to 8
// straight into registers, a thread per row chunk, was no faster on an H200: from the start of a
// merge its inputs take ~1.3 us to arrive either way, an L2 round trip at the end of a
// full-GPU stream.) on_landed() runs once the inputs are in (diagnostics).
template <int D, class OnLanded>
__device__ void MergeStates(const float* in_o, const float* in_lse, int64_t in_row_o,
                            int64_t in_row_lse, int count, int rows, float* out_o, float* out_lse,
                            int64_t out_row_o, int64_t out_row_lse, float lse_scale, float* s_in,
                            float* s_lse, uint64_t* bar, OnLanded on_landed) {
  constexpr int kQuads = D / 4;
  static_assert(kMaxMergeInputs * kRowsPerTile <= kThreads, "a thread per (row, input)");
  const uint32_t row_bytes = static_cast<uint32_t>(count) * D * 4;
  if (threadIdx.x == 0) {
    warp_mma::MbarrierInitForCluster(bar);
    warp_mma::ProxyFence();  // after generic uses
    warp_mma::MbarrierExpectBytes(bar, row_bytes * rows);
    for (int r = 0; r < rows; ++r) {
      warp_mma::BulkCopyToShared(s_in + r * count * D, in_o + r * in_row_o, row_bytes, bar);
    }
  }
  if (threadIdx.x < rows * count) {
    const int r = threadIdx.x / count, i = threadIdx.x - r * count;
    s_lse[i * kRowsPerTile + r] = __ldcg(in_lse + r * in_row_lse + i);
  }
  __syncthreads();
  // A thread per row: its weights, normalised, in place.
  if (threadIdx.x < rows) {
    const int r = threadIdx.x;
    const float lse = RowWeights(
        count, count, [&](int i) { return s_lse[i * kRowsPerTile + r]; },
        [&](int i) -> float& { return s_lse[i * kRowsPerTile + r]; });
    if (out_lse != nullptr) {
      out_lse[r * out_row_lse] = lse == -INFINITY ? -INFINITY : lse * lse_scale;
    }
  }
  warp_mma::MbarrierWaitCluster(bar, 0);
  on_landed();
  __syncthreads();
  if (threadIdx.x == 0) warp_mma::MbarrierInval(bar);  // every thread has passed the wait
  for (int item = threadIdx.x; item < kRowsPerTile * kQuads; item += kThreads) {
    const int r = item / kQuads, d4 = item % kQuads;
    if (r >= rows) continue;
    const float* x = s_in + r * count * D + d4 * 4;
    const float4 o = WeightedSum(
        count, [&](int i) { return s_lse[i * kRowsPerTile + r]; },
        [&](int i) { return *reinterpret_cast<const float4*>(x + i * D); });
    float* out = out_o + r * out_row_o + d4 * 4;
    out[0] = o.x;
    out[1] = o.y;
    out[2] = o.z;
    out[3] = o.w;
  }
}

// Cross-split merge inside a thread-block cluster (the `n` = splits CTAs of one pair), by push:
// the head dimensions are split among the n CTAs (CTA k merges 16-byte chunks [SliceBegin(k),
// SliceBegin(k + 1))). Every CTA stores its normalised partial output of each chunk straight
// into the receive buffer of the chunk's owner and its log2-sum-exps into every CTA's
// (asynchronous distributed shared memory stores, no round trip); a CTA without positions sends
// -inf LSEs only. The stores complete on the receiver's mbarrier, which expects all of those
// bytes; once it has, each CTA reduces its slice from its own shared memory (ClusterReduce).
// Receive layout at CTA k: chunk (r, d4) from source s at float4 RecvChunk(s, r, d4 - begin(k),
// nq(k)); LSE (s, r) at recv_lse[s * kRowsPerTile + r].
__device__ __forceinline__ int SliceBegin(int k, int n, int quads) { return k * quads / n; }
__device__ __forceinline__ int SliceOwner(int d4, int n, int quads) {
  return ((d4 + 1) * n + quads - 1) / quads - 1;  // the largest k with SliceBegin(k) <= d4
}
__device__ __forceinline__ int RecvChunk(int src, int r, int c, int nq) {
  return (src * kRowsPerTile + r) * nq + c;
}

// The pushes of one thread of CTA `src` of a cluster of n: its 16-byte chunk d4 of each of its
// rows goes to the chunk's owner (st.async onto the owner's receive barrier `bar`, the same
// shared variable in every CTA), and the row's LSE to CTA d4 when d4 < n: the threads of a row
// hold the same LSE, so the n CTAs get it from n threads at once (n <= quads). The addresses
// are worked out once per thread.
class ClusterPush {
 public:
  ClusterPush() = default;
  __device__ ClusterPush(int n, int src, int d4, int quads, const float4* recv,
                         const float* recv_lse, uint64_t* bar) {
    const int k = SliceOwner(d4, n, quads);
    const int q0 = SliceBegin(k, n, quads);
    const int nq = SliceBegin(k + 1, n, quads) - q0;
    o_ = warp_mma::ClusterSmemAddr(recv + RecvChunk(src, 0, d4 - q0, nq), k);
    o_bar_ = warp_mma::ClusterSmemAddr(bar, k);
    o_row_bytes_ = nq * 16;
    lse_here_ = d4 < n;
    if (lse_here_) {
      lse_ = warp_mma::ClusterSmemAddr(recv_lse + src * kRowsPerTile, d4);
      lse_bar_ = warp_mma::ClusterSmemAddr(bar, d4);
    }
  }
  // Row r of an active CTA: its chunk and its LSE.
  __device__ void Row(int r, float4 o, float lse2) const {
    warp_mma::StAsyncF32x4(o_ + r * o_row_bytes_, o, o_bar_);
    Lse(r, lse2);
  }
  // The LSE alone: what a CTA without positions sends (-inf) for each of its rows.
  __device__ void Lse(int r, float lse2) const {
    if (lse_here_) warp_mma::StAsyncF32(lse_ + r * 4, lse2, lse_bar_);
  }
  // What CTA `rank`'s receive barrier expects: its slice of `rows` rows from each of the
  // `active` CTAs with positions, and the rows' LSEs from all n.
  __device__ static uint32_t RecvBytes(int rank, int n, int active, int rows, int quads) {
    const int nq = SliceBegin(rank + 1, n, quads) - SliceBegin(rank, n, quads);
    return static_cast<uint32_t>((active * nq * 16 + n * 4) * rows);
  }

 private:
  uint32_t o_ = 0, o_bar_ = 0, lse_ = 0, lse_bar_ = 0;
  int o_row_bytes_ = 0;
  bool lse_here_ = false;
};

// Once everything addressed to it has landed: CTA `rank` of `n` merges its slice for `rows` rows
// from `recv` / `recv_lse` and writes that slice of out ([row][D], rows from row0, 16-byte
// aligned) and, if out_lse, the merged LSE in natural-log units. A thread per (row, chunk) reads
// all of its sources at once and combines them in registers: with one or two warps per scheduler
// this step is bound by its dependent latencies, which shuffle rounds across sources lengthen.
// (kSources >= n: the sources' loops are unrolled for that many, see ClusterReduce.)
template <int D, int kSources>
__device__ void ClusterReduceN(float* out, float* out_lse, int64_t row0, int rows, int rank,
                               int n, const float4* recv, const float* recv_lse) {
  constexpr int kQuads = D / 4;
  const int q0 = SliceBegin(rank, n, kQuads);
  const int nq = SliceBegin(rank + 1, n, kQuads) - q0;
  // item / nq as a multiply-high: exact for item * nq < 2^16 (items <= 8 rows x 32 chunks).
  const uint32_t nq_magic = (65536u + static_cast<uint32_t>(nq) - 1) / static_cast<uint32_t>(nq);
  for (int item = threadIdx.x; item < rows * nq; item += kThreads) {
    const int r = static_cast<int>((static_cast<uint32_t>(item) * nq_magic) >> 16);
    const int c = item - r * nq;
    float l[kSources];
    float4 x[kSources];
    float m = -INFINITY;
#pragma unroll
    for (int s = 0; s < kSources; ++s) {  // every load in flight before the first use
      l[s] = -INFINITY;
      if (s < n) {
        l[s] = recv_lse[s * kRowsPerTile + r];
        x[s] = recv[RecvChunk(s, r, c, nq)];
      }
      m = fmaxf(m, l[s]);
    }
    float sum = 0.f;
    float4 acc[2] = {make_float4(0.f, 0.f, 0.f, 0.f), make_float4(0.f, 0.f, 0.f, 0.f)};
#pragma unroll
    for (int s = 0; s < kSources; ++s) {
      if (l[s] == -INFINITY) continue;  // an absent source (or s >= n): it sent no x
      const float w = warp_mma::Exp2Approx(l[s] - m);  // m is finite: this source has an LSE
      sum += w;
      AddScaled(acc[s & 1], w, x[s]);
    }
    const float inv = sum > 0.f ? warp_mma::RcpApprox(sum) : 0.f;
    *reinterpret_cast<float4*>(out + (row0 + r) * D + (q0 + c) * 4) =
        make_float4((acc[0].x + acc[1].x) * inv, (acc[0].y + acc[1].y) * inv,
                    (acc[0].z + acc[1].z) * inv, (acc[0].w + acc[1].w) * inv);
    if (q0 + c == 0 && out_lse != nullptr) {
      out_lse[row0 + r] = sum > 0.f ? (m + warp_mma::Log2Approx(sum)) * kLn2 : -INFINITY;
    }
  }
}

template <int D>
__device__ void ClusterReduce(float* out, float* out_lse, int64_t row0, int rows, int rank,
                              int n, const float4* recv, const float* recv_lse) {
  static_assert(kMaxMergeInputs == 16, "ClusterReduce unrolls for up to 16 sources");
  if (n <= 2) {
    ClusterReduceN<D, 2>(out, out_lse, row0, rows, rank, n, recv, recv_lse);
  } else if (n <= 4) {
    ClusterReduceN<D, 4>(out, out_lse, row0, rows, rank, n, recv, recv_lse);
  } else if (n <= 8) {
    ClusterReduceN<D, 8>(out, out_lse, row0, rows, rank, n, recv, recv_lse);
  } else {
    ClusterReduceN<D, 16>(out, out_lse, row0, rows, rank, n, recv, recv_lse);
  }
}

}  // namespace moemesh::cuda::decode
