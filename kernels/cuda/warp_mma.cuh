// Thin wrappers of the PTX warp-level instructions the attention kernels use (sm_80+, built
// for sm_90a here): cp.async with zero-fill and an L2 policy, ldmatrix, mma.sync m16n8k16 bf16
// with fp32 accumulators, and the hi/lo bf16 split that gives bf16 tensor-core products
// fp32-class accuracy. Fragment layouts are those of the PTX ISA ("Matrix Fragments for
// mma.m16n8k16"). Device-only header for .cu files; stateless, so thread-safe.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace moemesh::cuda::warp_mma {

// The device clock in ns (%globaltimer), for the kernels' diagnostic timelines.
__device__ __forceinline__ uint64_t GlobalTimerNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// An L2 policy for data read once (the KV stream): it is evicted first, so that the small,
// reused data (tables, lengths, partial states, the rest of the model's step) stays cached.
__device__ __forceinline__ uint64_t EvictFirstPolicy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

// 16-byte global -> shared copy under an L2 policy; zero-fills (reads nothing) when !valid.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid,
                                          uint64_t policy) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(dst),
               "l"(src), "r"(src_bytes), "l"(policy)
               : "memory");
}

// The same copy for a source known to be valid (no source-size operand to compute per copy).
__device__ __forceinline__ void CpAsync16Full(uint32_t dst, const void* src, uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(dst),
               "l"(src), "l"(policy)
               : "memory");
}

// 2^x by the hardware approximation (ex2.approx.ftz: about 2 ulp, results below 2^-126 flushed
// to 0), without exp2f's rescaling of arguments below -126: softmax weights that small are 0
// to fp32 sums anyway. 2^-inf = 0.
__device__ __forceinline__ float Exp2Approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// log2(x) and 1/x by the hardware approximations (lg2.approx.ftz: absolute error about 2^-22;
// rcp.approx.ftz: about 1 ulp), for the merges' few per-row weights and log-sum-exps, where the
// library functions' range handling is most of a short, latency-bound step. log2(0) = -inf.
__device__ __forceinline__ float Log2Approx(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float RcpApprox(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// 16-byte global -> shared copy through L2 only (cp.async.cg, no L1, no cache hint): for data
// other CTAs wrote, which their fences and an arrival atomic order before the copy.
__device__ __forceinline__ void CpAsync16L2(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void PrefetchL1(const void* p) {
  asm volatile("prefetch.global.L1 [%0];\n" ::"l"(p));
}
// Pulls `bytes` (a multiple of 16, from a 16-byte aligned address) into L2 without waiting and
// without touching L1: a hint, so it may target data other kernels are still writing.
__device__ __forceinline__ void PrefetchL2Bulk(const void* p, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
}

// Distributed shared memory (thread-block clusters, sm_90+): the address of `p` (this CTA's
// shared memory) in the shared memory of cluster CTA `rank`.
__device__ __forceinline__ uint32_t ClusterSmemAddr(const void* p, int rank) {
  uint32_t out;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(out) : "r"(SmemAddr(p)), "r"(rank));
  return out;
}
// Loads from another CTA's shared memory (an address from ClusterSmemAddr); order them after the
// writes they read with a cluster barrier (ClusterArrive / ClusterWait).
__device__ __forceinline__ float LoadClusterF32(uint32_t addr) {
  float x;
  asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(x) : "r"(addr) : "memory");
  return x;
}
__device__ __forceinline__ float4 LoadClusterF32x4(uint32_t addr) {
  float4 x;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(x.x), "=f"(x.y), "=f"(x.z), "=f"(x.w)
               : "r"(addr)
               : "memory");
  return x;
}
// Asynchronous stores into another cluster CTA's shared memory (addresses from ClusterSmemAddr)
// that complete on an mbarrier in that CTA (`bar`, also from ClusterSmemAddr): the receiver
// learns that they landed by waiting on its own barrier, with no cluster barrier or fence on
// the sender's side (the completion releases the data at cluster scope).
__device__ __forceinline__ void StAsyncF32(uint32_t addr, float x, uint32_t bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];\n" ::
                   "r"(addr), "r"(__float_as_uint(x)), "r"(bar)
               : "memory");
}
__device__ __forceinline__ void StAsyncF32x4(uint32_t addr, float4 x, uint32_t bar) {
  asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, "
      "[%5];\n" ::"r"(addr),
      "r"(__float_as_uint(x.x)), "r"(__float_as_uint(x.y)), "r"(__float_as_uint(x.z)),
      "r"(__float_as_uint(x.w)), "r"(bar)
      : "memory");
}
// An mbarrier in this CTA's shared memory: initialised for one arrival by one thread, made
// visible to the cluster by the fence before the cluster barrier other CTAs wait on; the
// receiving thread announces the bytes it expects (its own arrival) and every thread waits
// for the phase (parity 0) to complete, acquiring what the stores wrote.
__device__ __forceinline__ void MbarrierInitForCluster(uint64_t* bar) {
  asm volatile(
      "mbarrier.init.shared::cta.b64 [%0], 1;\n"
      "fence.mbarrier_init.release.cluster;\n" ::"r"(SmemAddr(bar))
      : "memory");
}
__device__ __forceinline__ void MbarrierExpectBytes(uint64_t* bar, uint32_t bytes) {
  asm volatile(
      "mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(
          SmemAddr(bar)),
      "r"(bytes)
      : "memory");
}
__device__ __forceinline__ void MbarrierWaitCluster(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(SmemAddr(bar)),
      "r"(parity)
      : "memory");
}
// Orders this thread's earlier generic-proxy accesses to shared memory before later async-proxy
// ones (MMAs reading it, bulk copies writing it): after ordinary stores or cp.async, before a
// CTA barrier and the MMA; after the last ordinary reads of a buffer, before a bulk copy into it.
__device__ __forceinline__ void ProxyFence() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Bulk copies (the copy engine: one instruction per contiguous run of any length) from global
// memory into this CTA's shared memory, completing on an mbarrier of this CTA (initialised with
// MbarrierInitForCluster): each copying thread announces its bytes (MbarrierExpectTx) before its
// copies, one thread arrives (MbarrierArrive) once all have announced, and the waiters
// (MbarrierWaitCluster with the phase's parity) then see the data. Addresses 16-byte aligned,
// bytes a multiple of 16. MbarrierInval before the memory is used for anything else.
__device__ __forceinline__ void MbarrierExpectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(SmemAddr(bar)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void MbarrierArrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(SmemAddr(bar))
               : "memory");
}
__device__ __forceinline__ void MbarrierInval(uint64_t* bar) {
  asm volatile("mbarrier.inval.shared::cta.b64 [%0];\n" ::"r"(SmemAddr(bar)) : "memory");
}
__device__ __forceinline__ void BulkCopyToShared(void* dst, const void* src, uint32_t bytes,
                                                 uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(SmemAddr(dst)),
      "l"(src), "r"(bytes), "r"(SmemAddr(bar))
      : "memory");
}
// Cluster barrier halves, called by every thread of every CTA of the cluster at CTA-uniform
// points. ClusterArriveRelaxed orders nothing (for "every CTA has started" before the first
// remote access); ClusterArrive publishes this thread's earlier writes, including those to other
// CTAs' shared memory, to whoever passes the matching ClusterWait.
__device__ __forceinline__ void ClusterArriveRelaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void ClusterArrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void ClusterWait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
// Programmatic dependent launch (sm_90+). LaunchDependents lets the next kernel of the stream,
// when it was launched with cudaLaunchAttributeProgrammaticStreamSerialization, start its CTAs
// before this grid ends. WaitForPrerequisites blocks until the kernels this grid depends on
// have completed and their writes are visible; it returns at once for a grid launched without
// that attribute. Before it, a kernel may read only what no earlier kernel of the stream writes.
__device__ __forceinline__ void LaunchDependents() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}
__device__ __forceinline__ void WaitForPrerequisites() {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void LdMatrixX4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// Fragments of a 16-token K or V tile in shared memory: rows of `row_bytes` (head_dim bf16),
// 16-byte chunks XOR-swizzled by the row (chunk ^ (row & 7)), as the attention kernels store
// them. KFragments: the B operands of S = Q K^T for tokens j8 * 8 .. + 7 and head dims
// 32 * kk2 .. + 31 (matrix lane / 8 is chunk 4 * kk2 + lane / 8). VFragments: the B operands of
// P V for dims 16 * dn2 .. + 15 over the 16 tokens (matrix lane / 8: tokens ((lane / 8) & 1) * 8
// .., chunk 2 * dn2 + lane / 16).
__device__ __forceinline__ void KFragments(uint32_t tile, int row_bytes, int j8, int kk2, int lane,
                                           uint32_t (&r)[4]) {
  const int tok = j8 * 8 + (lane & 7);
  const int chunk = kk2 * 4 + (lane >> 3);
  LdMatrixX4(tile + tok * row_bytes + ((chunk ^ (tok & 7)) << 4), r);
}
__device__ __forceinline__ void VFragments(uint32_t tile, int row_bytes, int dn2, int lane,
                                           uint32_t (&r)[4]) {
  const int tok = ((lane >> 3) & 1) * 8 + (lane & 7);
  const int chunk = dn2 * 2 + (lane >> 4);
  LdMatrixX4Trans(tile + tok * row_bytes + ((chunk ^ (tok & 7)) << 4), r);
}

// A operands of a 16-token tile for the transposed products S^T = K Q^T and O^T = V^T P^T
// (tokens or head dims in the 16 rows, so 8 query heads fill the n = 8 columns with no padding),
// from the swizzled layout of KFragments. KTokenRows: K, rows tokens 0..15, columns head dims
// 16 * kk .. + 15 (matrices: tokens 0-7 and 8-15 of chunk 2kk, then of chunk 2kk + 1).
// VDimRows: V^T, rows head dims 16 * kk .. + 15, columns tokens 0..15 (transposed loads of
// tokens 0-7 in chunks 2kk and 2kk + 1, then of tokens 8-15). The swizzle of chunk 2kk + c
// depends on kk only through kk % 4, so a lane's address is one of four offsets, computed once
// (RowsOffsets), plus (kk / 4) * 128 bytes.
struct RowsOffsets {
  uint32_t k[4];
  uint32_t v[4];
  __device__ __forceinline__ RowsOffsets(int row_bytes, int lane) {
    const int k_tok = ((lane >> 3) & 1) * 8 + (lane & 7);
    const int v_tok = (lane >> 4) * 8 + (lane & 7);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      k[j] = k_tok * row_bytes + (((2 * j + (lane >> 4)) ^ (lane & 7)) << 4);
      v[j] = v_tok * row_bytes + (((2 * j + ((lane >> 3) & 1)) ^ (lane & 7)) << 4);
    }
  }
};
__device__ __forceinline__ void KTokenRows(uint32_t tile, const RowsOffsets& off, int kk,
                                           uint32_t (&r)[4]) {
  LdMatrixX4(tile + off.k[kk & 3] + (kk >> 2) * 128, r);
}
__device__ __forceinline__ void VDimRows(uint32_t tile, const RowsOffsets& off, int kk,
                                         uint32_t (&r)[4]) {
  LdMatrixX4Trans(tile + off.v[kk & 3] + (kk >> 2) * 128, r);
}

// Transposes an 8x8 matrix of 16-bit values held as mma fragments (lane holds row lane / 4,
// columns 2 * (lane % 4) and + 1, the lower column in the low half): an accumulator tile's
// rows become B-operand columns.
__device__ __forceinline__ uint32_t TransposeB16(uint32_t x) {
  uint32_t y;
  asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// S = Q K^T of a 16-token K tile in shared memory (rows of row_bytes, KFragments' layout) over
// all D head dims, into sacc[j8][parity] (token octet j8; accumulators of the even and odd
// 16-dim k-steps, summed by the caller): zeroes them, then for each 32-dim step kk2 and octet
// loads the K fragments and calls step(even, odd, kk2, kb), which adds its A operands' products.
template <int D, class Step>
__device__ __forceinline__ void ScoreTile(uint32_t k_tile, int row_bytes, int lane,
                                          float (&sacc)[2][2][4], Step step) {
#pragma unroll
  for (int j8 = 0; j8 < 2; ++j8) {
#pragma unroll
    for (int e = 0; e < 4; ++e) sacc[j8][0][e] = sacc[j8][1][e] = 0.f;
  }
#pragma unroll
  for (int kk2 = 0; kk2 < D / 32; ++kk2) {
#pragma unroll
    for (int j8 = 0; j8 < 2; ++j8) {
      uint32_t kb[4];
      KFragments(k_tile, row_bytes, j8, kk2, lane, kb);
      step(sacc[j8][0], sacc[j8][1], kk2, kb);
    }
  }
}

// d = a * b + c: a 16x16 bf16 (row), b 16x8 bf16 (col), c/d 16x8 fp32.
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                    const float (&c)[4]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
}

// Two bf16 in one register, `first` in the low half (the lower column of an mma fragment).
__device__ __forceinline__ uint32_t PackBf16(__nv_bfloat16 first, __nv_bfloat16 second) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(first)) |
         (static_cast<uint32_t>(__bfloat16_as_ushort(second)) << 16);
}

// x ~= hi + lo with a relative residual of at most 2^-16 (bf16 keeps 8 significant bits).
__device__ __forceinline__ void SplitBf16(float x, __nv_bfloat16& hi, __nv_bfloat16& lo) {
  hi = __float2bfloat16_rn(x);
  lo = __float2bfloat16_rn(x - __bfloat162float(hi));
}

// Packs hi parts of (x0, x1) into *hi_pair and lo parts into *lo_pair.
__device__ __forceinline__ void SplitPair(float x0, float x1, uint32_t& hi_pair,
                                          uint32_t& lo_pair) {
  __nv_bfloat16 h0, l0, h1, l1;
  SplitBf16(x0, h0, l0);
  SplitBf16(x1, h1, l1);
  hi_pair = PackBf16(h0, h1);
  lo_pair = PackBf16(l0, l1);
}

// Three-part split of (x0, x1): x ~= hi + lo + lo2 with a relative residual of at most 2^-24,
// fp32's own rounding. Each output packs the pair's parts (x0's in the low half).
__device__ __forceinline__ void SplitPair3(float x0, float x1, uint32_t& hi_pair, uint32_t& lo_pair,
                                           uint32_t& lo2_pair) {
  __nv_bfloat16 h0, l0, h1, l1, m0, m1, unused0, unused1;
  SplitBf16(x0, h0, l0);
  SplitBf16(x1, h1, l1);
  SplitBf16(x0 - __bfloat162float(h0) - __bfloat162float(l0), m0, unused0);
  SplitBf16(x1 - __bfloat162float(h1) - __bfloat162float(l1), m1, unused1);
  hi_pair = PackBf16(h0, h1);
  lo_pair = PackBf16(l0, l1);
  lo2_pair = PackBf16(m0, m1);
}

}  // namespace moemesh::cuda::warp_mma
