// Thin wrappers of the Hopper warpgroup MMA (wgmma, sm_90a) that the cascade kernel's 64-row
// tiles use: a warpgroup (4 consecutive warps, 128 threads) multiplies a 64-row A held in
// registers (or, MmaSS64, in shared memory) by a B tile in shared memory described by a matrix
// descriptor, asynchronously.
// Layouts are the PTX ISA's ("Asynchronous Warpgroup Level Matrix Shared Memory Layout"):
//   - Shared-memory B tiles here use 128-byte swizzling: rows of 128 bytes (64 bf16), the 16-byte
//     chunk c of row r stored at chunk c ^ (r % 8), each 8-row group 1024 bytes and every tile
//     1024-byte aligned. A K-major tile (K = the 64 contiguous elements of a row) is described
//     with SBO = 1024 (the next 8 rows) and a k-step of 16 is a +32-byte start address; an
//     N-major tile (N contiguous) with SBO = 1024 (the next 8 K-rows) and LBO = the offset of the
//     next 64 columns.
//   - Accumulator D of m64nN: warp w of the group holds rows 16w + lane / 4 (registers 4j, 4j + 1:
//     columns 8j + 2 (lane % 4) + {0, 1}) and that row + 8 (registers 4j + 2, 4j + 3), as the
//     mma.sync m16n8 C fragment repeated over the N / 8 column groups.
// Ordering (the caller's job): Fence() before the first MMA of a batch whenever its accumulator
// or A registers were written by other instructions; Commit() after the batch; Wait<n>() before
// reading D or reusing A, then KeepAfterWait() on D so the compiler keeps the reads after it.
// Shared memory written by ordinary stores or cp.async must be followed by ProxyFence() in the
// writing threads, then a CTA barrier, before an MMA reads it. Device-only; stateless.
#pragma once

#include <cstdint>

#include "kernels/cuda/warp_mma.cuh"

namespace moemesh::cuda::wgmma {

// The operand list of 32 fp32 accumulators d[o] .. d[o + 31] ("+f": read and written), and the
// text naming operands %0 .. %31 (the first 32 of an MMA's accumulators).
#define MM_WGMMA_ACC32(d, o)                                                                   \
  "+f"(d[(o) + 0]), "+f"(d[(o) + 1]), "+f"(d[(o) + 2]), "+f"(d[(o) + 3]), "+f"(d[(o) + 4]),   \
      "+f"(d[(o) + 5]), "+f"(d[(o) + 6]), "+f"(d[(o) + 7]), "+f"(d[(o) + 8]),                 \
      "+f"(d[(o) + 9]), "+f"(d[(o) + 10]), "+f"(d[(o) + 11]), "+f"(d[(o) + 12]),              \
      "+f"(d[(o) + 13]), "+f"(d[(o) + 14]), "+f"(d[(o) + 15]), "+f"(d[(o) + 16]),             \
      "+f"(d[(o) + 17]), "+f"(d[(o) + 18]), "+f"(d[(o) + 19]), "+f"(d[(o) + 20]),             \
      "+f"(d[(o) + 21]), "+f"(d[(o) + 22]), "+f"(d[(o) + 23]), "+f"(d[(o) + 24]),             \
      "+f"(d[(o) + 25]), "+f"(d[(o) + 26]), "+f"(d[(o) + 27]), "+f"(d[(o) + 28]),             \
      "+f"(d[(o) + 29]), "+f"(d[(o) + 30]), "+f"(d[(o) + 31])
#define MM_WGMMA_ACC32_TEXT                                                                    \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                     \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"

// Descriptor of a 128-byte-swizzled tile at shared address `addr` (16-byte aligned; its 1024-byte
// pattern must start at a 1024-byte boundary) with leading / stride byte offsets lbo, sbo.
__device__ __forceinline__ uint64_t Desc128B(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) |
         (static_cast<uint64_t>((lbo & 0x3FFFFu) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFFu) >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void Fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void Commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// Waits until at most N committed batches of this warpgroup are pending.
template <int N>
__device__ __forceinline__ void Wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// (ProxyFence: warp_mma.cuh.)
using warp_mma::ProxyFence;

// Ties accumulator registers to this point (after Wait), so no read of them moves above it.
template <int N>
__device__ __forceinline__ void KeepAfterWait(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D[64 x 64] (+)= A[64 x 16] * B[16 x 64]: A in registers (bf16, the mma.sync m16n8k16 A
// fragment of each warp's 16 rows), B in shared memory (bf16, descriptor `b`; kTransB = 1: B is
// N-major), D in fp32 registers (Accumulator layout above). accumulate = 0 ignores D.
template <int kTransB>
__device__ __forceinline__ void MmaRS64(float (&d)[32], const uint32_t (&a)[4], uint64_t b,
                                         int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      MM_WGMMA_ACC32_TEXT "}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
      : MM_WGMMA_ACC32(d, 0)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate),
        "n"(kTransB));
}

// D[64 x 64] (+)= A[64 x 16] * B[16 x 64] with A in shared memory too (bf16, K-major, descriptor
// `a`, the layout of a K-major B tile); B and D as MmaRS64.
template <int kTransB>
__device__ __forceinline__ void MmaSS64(float (&d)[32], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      MM_WGMMA_ACC32_TEXT "}, %32, %33, p, 1, 1, 0, %35;\n}\n"
      : MM_WGMMA_ACC32(d, 0)
      : "l"(a), "l"(b), "r"(accumulate), "n"(kTransB));
}

// D[64 x 128] (+)= A[64 x 16] * B[16 x 128]: A in registers (bf16, the mma.sync m16n8k16 A
// fragment of each warp's 16 rows), B in shared memory (bf16, descriptor `b`; kTransB = 1: B is
// N-major), D in fp32 registers (Accumulator layout above). accumulate = 0 ignores D.
template <int kTransB>
__device__ __forceinline__ void MmaRS128(float (&d)[64], const uint32_t (&a)[4], uint64_t b,
                                         int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" MM_WGMMA_ACC32_TEXT ", "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
      : MM_WGMMA_ACC32(d, 0), MM_WGMMA_ACC32(d, 32)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate),
        "n"(kTransB));
}

}  // namespace moemesh::cuda::wgmma

#undef MM_WGMMA_ACC32
#undef MM_WGMMA_ACC32_TEXT
