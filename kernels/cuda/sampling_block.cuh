// Block-wide building blocks of the sampling kernel (sampling.cu): deterministic reductions and
// scans, a shared-memory bitonic sort, warp-aggregated histogram and append helpers, the
// order-preserving integer key of a double and the fixed-point probability mass. No sampling
// semantics here. Device-only; every helper must be reached by all kThreads threads of the block
// (most contain __syncthreads), and results do not depend on thread scheduling.
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <cstring>

namespace moemesh::cuda::sampling_detail {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

using u64 = unsigned long long;
using u128 = unsigned __int128;

__device__ __forceinline__ int Lane() { return static_cast<int>(threadIdx.x & 31); }
__device__ __forceinline__ int WarpId() { return static_cast<int>(threadIdx.x >> 5); }

// ---- Warp shuffles of any trivially copyable type (moved as 32-bit words). ----

template <typename T>
__device__ __forceinline__ T ShflXor(T v, int lane_mask) {
  constexpr int kWords = (sizeof(T) + 3) / 4;
  uint32_t w[kWords] = {};
  memcpy(w, &v, sizeof(T));
#pragma unroll
  for (int k = 0; k < kWords; ++k) w[k] = __shfl_xor_sync(kFullMask, w[k], lane_mask);
  memcpy(&v, w, sizeof(T));
  return v;
}

template <typename T>
__device__ __forceinline__ T ShflUp(T v, int delta) {
  constexpr int kWords = (sizeof(T) + 3) / 4;
  uint32_t w[kWords] = {};
  memcpy(w, &v, sizeof(T));
#pragma unroll
  for (int k = 0; k < kWords; ++k) w[k] = __shfl_up_sync(kFullMask, w[k], delta);
  memcpy(&v, w, sizeof(T));
  return v;
}

// ---- Block reduction and exclusive scan. ----
// Fixed combination order (butterfly inside each warp, then warp partials in warp order), so
// floating-point results are bit-identical from run to run and in every thread. `op` must be
// commutative (a op b == b op a bit for bit), which +, max and min with id tie-breaks are.

template <typename T, typename Op>
__device__ T BlockReduce(T v, Op op) {
  __shared__ T partial[kWarps];
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, ShflXor(v, offset));
  __syncthreads();  // the previous call's readers are done with `partial`
  if (Lane() == 0) partial[WarpId()] = v;
  __syncthreads();
  T r = partial[0];
  for (int w = 1; w < kWarps; ++w) r = op(r, partial[w]);
  return r;
}

// Exclusive prefix of `v` over threads in threadIdx order; *total gets the block total.
template <typename T, typename Op>
__device__ T BlockExclusiveScan(T v, Op op, T identity, T* total) {
  __shared__ T warp_total[kWarps];
  T inclusive = v;
#pragma unroll
  for (int delta = 1; delta < 32; delta <<= 1) {
    const T other = ShflUp(inclusive, delta);
    if (Lane() >= delta) inclusive = op(other, inclusive);
  }
  __syncthreads();
  if (Lane() == 31) warp_total[WarpId()] = inclusive;
  __syncthreads();
  T base = identity;
  T sum = identity;
  for (int w = 0; w < kWarps; ++w) {
    if (w == WarpId()) base = sum;
    sum = op(sum, warp_total[w]);
  }
  T exclusive = ShflUp(inclusive, 1);
  if (Lane() == 0) exclusive = identity;
  *total = sum;
  return Lane() == 0 ? base : op(base, exclusive);
}

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct MinOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return b < a ? b : a; }
};
struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a < b ? b : a; }
};

// ---- Keys and masses. ----

// Unsigned integer with the order of the double `t` (no NaN; -0.0 must be canonicalised to +0.0
// by the caller, since the two compare equal as doubles but not as keys).
__device__ __forceinline__ u64 OrderedKey(double t) {
  const u64 bits = static_cast<u64>(__double_as_longlong(t));
  return (bits >> 63) ? ~bits : (bits | 0x8000000000000000ull);
}

// A probability weight e in [0, 1] as the integer floor(e * 2^80), kept as two parts of 40 bits
// (hi = floor(e * 2^40) <= 2^40, lo < 2^40) so that per-bin sums of up to 2^20 weights fit in
// 64-bit counters and integer addition makes every sum exact and order-independent.
constexpr double kMassScale = 1099511627776.0;  // 2^40
constexpr int kMassShift = 40;

struct MassParts {
  u64 hi;
  u64 lo;
};

__device__ __forceinline__ MassParts ToMass(double e) {
  const double x = e * kMassScale;  // exact (power-of-two scaling)
  const double a = floor(x);
  const double b = floor((x - a) * kMassScale);  // x - a is exact
  return {static_cast<u64>(a), static_cast<u64>(b)};
}

__device__ __forceinline__ u128 MassValue(u64 hi, u64 lo) {
  return (static_cast<u128>(hi) << kMassShift) + lo;
}

__device__ __forceinline__ double MassToDouble(u128 m) {
  // Only used for values fed back into fp64 arithmetic (not for decisions).
  const u64 hi = static_cast<u64>(m >> kMassShift);
  const u64 lo = static_cast<u64>(m & ((static_cast<u128>(1) << kMassShift) - 1));
  return (static_cast<double>(hi) + static_cast<double>(lo) / kMassScale) / kMassScale;
}

// ---- Warp-aggregated shared-memory histogram and list append. ----
// Called by all 32 lanes of a warp (converged); lanes with !active contribute nothing.

// count[bin] += 1 and, with kMass, mass_hi/lo[bin] += ToMass(e). Lanes with the same bin are
// summed first (redux.sync over each group of peers), so each distinct bin takes one atomic.
template <bool kMass>
__device__ __forceinline__ void HistAdd(bool active, uint32_t bin, double e, uint32_t* count,
                                        u64* mass_hi, u64* mass_lo) {
  const unsigned voters = __ballot_sync(kFullMask, active);
  if (!active) return;
  const unsigned peers = __match_any_sync(voters, bin);
  const bool leader = Lane() == __ffs(peers) - 1;
  if constexpr (kMass) {
    const MassParts m = ToMass(e);
    // 20-bit pieces: a sum over <= 32 lanes stays below 2^26.
    const unsigned a0 = __reduce_add_sync(peers, static_cast<unsigned>(m.hi & 0xfffffu));
    const unsigned a1 = __reduce_add_sync(peers, static_cast<unsigned>(m.hi >> 20));
    const unsigned b0 = __reduce_add_sync(peers, static_cast<unsigned>(m.lo & 0xfffffu));
    const unsigned b1 = __reduce_add_sync(peers, static_cast<unsigned>(m.lo >> 20));
    if (leader) {
      atomicAdd(&mass_hi[bin], static_cast<u64>(a0) + (static_cast<u64>(a1) << 20));
      atomicAdd(&mass_lo[bin], static_cast<u64>(b0) + (static_cast<u64>(b1) << 20));
    }
  }
  if (leader) atomicAdd(&count[bin], static_cast<uint32_t>(__popc(peers)));
}

// Appends one entry per active lane at slots taken from *size (order across warps unspecified;
// callers sort afterwards). Entries beyond `capacity` are dropped and still counted.
__device__ __forceinline__ void Append(bool active, u64 key, int32_t id, double e, int* size,
                                       int capacity, u64* keys, int32_t* ids, double* es) {
  const unsigned voters = __ballot_sync(kFullMask, active);
  if (voters == 0) return;
  int base = 0;
  if (Lane() == 0) base = atomicAdd(size, __popc(voters));
  base = __shfl_sync(kFullMask, base, 0);
  if (!active) return;
  const int pos = base + __popc(voters & ((1u << Lane()) - 1u));
  if (pos < capacity) {
    keys[pos] = key;
    ids[pos] = id;
    es[pos] = e;
  }
}

// ---- Bitonic sort of n <= capacity entries (capacity a power of two) in shared memory. ----
// `before(key_a, id_a, key_b, id_b)` is a strict total order on distinct entries. Slots [n, p)
// (p = next power of two) are overwritten with (key 0, id INT_MAX) padding, which must sort last.
template <typename Before>
__device__ void BitonicSort(u64* keys, int32_t* ids, double* es, int n, Before before) {
  int p = 1;
  while (p < n) p <<= 1;
  for (int i = n + static_cast<int>(threadIdx.x); i < p; i += kThreads) {
    keys[i] = 0;
    ids[i] = INT_MAX;
    es[i] = 0.0;
  }
  __syncthreads();
  for (int size = 2; size <= p; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = static_cast<int>(threadIdx.x); i < p; i += kThreads) {
        const int j = i ^ stride;
        if (j <= i) continue;
        const bool ascending = (i & size) == 0;
        const bool j_first = before(keys[j], ids[j], keys[i], ids[i]);
        const bool i_first = before(keys[i], ids[i], keys[j], ids[j]);
        if (ascending ? j_first : i_first) {
          const u64 k = keys[i];
          keys[i] = keys[j];
          keys[j] = k;
          const int32_t d = ids[i];
          ids[i] = ids[j];
          ids[j] = d;
          const double x = es[i];
          es[i] = es[j];
          es[j] = x;
        }
      }
      __syncthreads();
    }
  }
}

// Descending key, then ascending id: the sampler's "most probable first, ties to lower ids".
struct KeyDescIdAsc {
  __device__ bool operator()(u64 ka, int32_t ia, u64 kb, int32_t ib) const {
    return ka != kb ? ka > kb : ia < ib;
  }
};
// Ascending id (token order, for the CDF walk).
struct IdAsc {
  __device__ bool operator()(u64, int32_t ia, u64, int32_t ib) const { return ia < ib; }
};

}  // namespace moemesh::cuda::sampling_detail
