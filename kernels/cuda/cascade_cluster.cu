// The cluster form of the fused cascade launch (cascade.h, CascadeParams::cluster): a grid of
// thread-block clusters, one per (level, KV head, row tile), each attending its tile's shared
// range and its members' own positions and merging them in distributed shared memory, so a
// cascade step is one launch with no global scratch, no atomics and no merge phases; what each
// CTA does is cascade_plan.h's ClusterTile. The KV stream is ComputeChunk (cascade_chunk.cuh).
//
// Per tile, CTA k of a cluster of n:
//   1. attends one thing: split k of the shared range for all the tile's rows (k < piece_first),
//      or own piece k - piece_first: one member's rows over a piece of the positions it attends
//      itself; the 16-row result stays at the start of its shared memory (the stage buffers);
//   2. a cluster barrier; then CTA k merges rows [k * rows / n, (k + 1) * rows / n): a thread per
//      (row, 16 bytes) loads the row's LSEs and that chunk of every input from the CTAs holding
//      them (all at once), weighs them and writes the output;
//   3. a cluster barrier, so that no CTA overwrites or frees shared memory another still reads.
// Every decision that skips a tile depends only on the layout and lengths, which all CTAs of a
// cluster read alike, so they pass the same barriers.
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/cascade.h"
#include "kernels/cuda/cascade_chunk.cuh"
#include "kernels/cuda/cascade_kernel_args.h"
#include "kernels/cuda/cascade_merge.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_merge.cuh"
#include "kernels/cuda/launch_util.h"
#include "kernels/cuda/warp_mma.cuh"

namespace moemesh::cuda::cascade {
namespace {

using warp_mma::ClusterArrive;
using warp_mma::ClusterSmemAddr;
using warp_mma::ClusterWait;
using warp_mma::LoadClusterF32;
using warp_mma::LoadClusterF32x4;

template <int D>
struct ClusterCfg {
  static constexpr int kSmemBytes = Cfg<D>::kSmemBytes;  // stage buffers, then the results
};

struct ClusterShared : StreamShared {
  int32_t inputs[kClusterTileRows];  // inputs of each of this CTA's rows (0: a skipped member)
  int32_t seq[kMaxClusterSize];      // the tile's member sequences (-1: skipped)
};

// Sets sh.row_q for `rows` rows, row r being query head `head * group + r % group` of sequence
// seq_of(r / group).
template <class SeqOf>
__device__ __forceinline__ void SetRows(const KernelArgs& a, int head, int rows, SeqOf seq_of,
                                        ClusterShared& sh) {
  const int group = a.dims.group;
  for (int r = threadIdx.x; r < kMaxTileRows; r += kThreads) {
    sh.row_q[r] = r < rows ? seq_of(r / group) * a.dims.n_heads + head * group + r % group : -1;
  }
  __syncthreads();
}

template <int D, int QP>
__device__ void RunTile(const KernelArgs& a, const ClusterTile& t, int rank, unsigned char* smem,
                        ClusterShared& sh) {
  using C = Cfg<D>;
  constexpr int kQuads = D / 4;
  const int n = a.cluster.size, group = a.dims.group, nh = a.dims.n_heads;
  float* res = reinterpret_cast<float*>(smem);
  if (threadIdx.x < t.members) sh.seq[threadIdx.x] = ClusterMemberSeq(t, threadIdx.x, a.layout);
  __syncthreads();
  Stamp(a, 1);

  // 1. This CTA's piece or split.
  const int piece_member = (rank - t.piece_first) / t.own;
  if (rank >= t.piece_first && piece_member < t.members && sh.seq[piece_member] >= 0) {
    const int seq = sh.seq[piece_member];
    int start = 0, len = 0, lo = 0, hi = 0;
    OwnRange(seq, a.dims, a.layout, a.kv_lens, &start, &len);
    if (OwnPiece(t, start, len, (rank - t.piece_first) % t.own, &lo, &hi)) {
      SetRows(a, t.head, group, [&](int) { return seq; }, sh);
      const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.max_blocks_per_seq;
      PrefetchTable<D>(a, table, lo, hi);
      ComputeChunk<D, QP>(a, table, t.head, lo, hi, res, smem, sh);
    }
  } else if (rank < t.n_splits) {
    const int lo = t.begin + rank * t.chunk;
    const int hi = min(lo + t.chunk, t.end);
    SetRows(a, t.head, t.members * group, [&](int i) { return sh.seq[i]; }, sh);
    const int32_t* table =
        a.block_tables + static_cast<int64_t>(t.table_seq) * a.max_blocks_per_seq;
    PrefetchTable<D>(a, table, lo, hi);
    ComputeChunk<D, QP>(a, table, t.head, lo, hi, res, smem, sh);
  }
  warp_mma::LaunchDependents();
  Stamp(a, 5);
  ClusterArrive();  // publishes this CTA's states
  ClusterWait();    // every CTA's are in its shared memory
  Stamp(a, 7);

  // 2. The merge of this CTA's rows. A thread per (row, 16 bytes) issues the loads of all of the
  // row's input LSEs and its chunk of every input from the other CTAs' shared memory at once and
  // weighs them itself, so the merge waits for one round trip (weighing a row once, a thread per
  // row, and then reading the inputs took four dependent ones: 3.7 us on (a)).
  const int rows = t.members * group;
  const int r0 = rank * rows / n, nr = (rank + 1) * rows / n - r0;
  // Input i of row r: split i (i < n_splits, its row r) or own piece i - n_splits of its member
  // (its row r % group).
  auto input_cta = [&](int r, int i) {
    return i < t.n_splits ? i : t.piece_first + (r / group) * t.own + (i - t.n_splits);
  };
  for (int rr = threadIdx.x; rr < nr; rr += kThreads) {  // inputs per row
    const int seq = sh.seq[(r0 + rr) / group];
    int start = 0, len = 0;
    if (seq >= 0) OwnRange(seq, a.dims, a.layout, a.kv_lens, &start, &len);
    sh.inputs[rr] =
        seq < 0 ? 0 : t.n_splits + ActiveSplits(len - start, ChunkTokens(len - start, t.own));
  }
  __syncthreads();
  for (int item = threadIdx.x; item < nr * kQuads; item += kThreads) {
    const int rr = item / kQuads, d4 = item % kQuads;
    const int r = r0 + rr, seq = sh.seq[r / group], j = r % group;
    const int count = sh.inputs[rr];
    if (count == 0) continue;
    // Two groups of up to 8 inputs (the second's loads may go out while the first is summed),
    // folded in with a running maximum.
    constexpr int kGroup = kMaxClusterSize / 2;
    float m = -INFINITY, sum = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int i0 = 0; i0 < kMaxClusterSize; i0 += kGroup) {
      float l[kGroup];
      float4 x[kGroup];
#pragma unroll
      for (int k = 0; k < kGroup; ++k) {
        const int i = i0 + k;
        l[k] = -INFINITY;
        if (i < count) {
          const int in_row = i < t.n_splits ? r : j;
          const int cta = input_cta(r, i);
          l[k] = LoadClusterF32(ClusterSmemAddr(&sh.res_lse[in_row], cta));
          x[k] = LoadClusterF32x4(ClusterSmemAddr(res + in_row * C::kResStride + d4 * 4, cta));
        }
      }
      float m_new = m;
#pragma unroll
      for (int k = 0; k < kGroup; ++k) m_new = fmaxf(m_new, l[k]);
      if (m_new == -INFINITY) continue;  // nothing yet
      const float scale = warp_mma::Exp2Approx(m - m_new);  // 0 while m is -inf
      sum *= scale;
      acc = make_float4(acc.x * scale, acc.y * scale, acc.z * scale, acc.w * scale);
      m = m_new;
#pragma unroll
      for (int k = 0; k < kGroup; ++k) {
        // An empty or absent input (LSE -inf) weighs 0 and its chunk, which may hold anything,
        // is not read.
        if (l[k] != -INFINITY) {
          const float w = warp_mma::Exp2Approx(l[k] - m);
          sum += w;
          decode::AddScaled(acc, w, x[k]);
        }
      }
    }
    const float inv = sum > 0.f ? warp_mma::RcpApprox(sum) : 0.f;
    const int64_t row = static_cast<int64_t>(seq) * nh + t.head * group + j;
    *reinterpret_cast<float4*>(a.out + row * D + d4 * 4) =
        make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
    if (d4 == 0 && a.lse != nullptr) {
      a.lse[row] = sum > 0.f ? (m + warp_mma::Log2Approx(sum)) * kLn2 : -INFINITY;
    }
  }
  Stamp(a, 6);
  // 3. Nobody reuses (next tile) or frees (exit) its shared memory while others read it.
  ClusterArrive();
  ClusterWait();
}

template <int D, int QP>
__global__ void __launch_bounds__(kThreads, 2) CascadeClusterKernel(const KernelArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ ClusterShared sh;
  const int n = a.cluster.size;
  const int cluster = static_cast<int>(blockIdx.x) / n, rank = static_cast<int>(blockIdx.x) % n;
  StartTimeline(a, static_cast<int>(blockIdx.x), warp_mma::GlobalTimerNs());
  warp_mma::WaitForPrerequisites();  // an overlapped launch: nothing is read before
  const ClusterTile t =
      ResolveClusterTile(cluster, false, a.cluster, a.dims, a.layout, a.kv_lens);
  if (t.active) RunTile<D, QP>(a, t, rank, smem, sh);
  for (int u = cluster; u < a.cluster.solo_units; u += a.cluster.level_units) {
    const ClusterTile s = ResolveClusterTile(u, true, a.cluster, a.dims, a.layout, a.kv_lens);
    if (s.active) RunTile<D, QP>(a, s, rank, smem, sh);
  }
  Stamp(a, kCascadeStamps - 1);
}

template <int D, int QP>
const void* KernelOf() {
  return reinterpret_cast<const void*>(CascadeClusterKernel<D, QP>);
}

// attr: room for 2 attributes (the cluster size; overlap: programmatic dependent launch).
cudaLaunchConfig_t ConfigFor(int head_dim, unsigned grid, int size, bool overlap,
                             cudaLaunchAttribute* attr, cudaStream_t stream) {
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = static_cast<unsigned>(size);
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(grid, 1, 1);
  cfg.blockDim = dim3(kThreads, 1, 1);
  cfg.dynamicSmemBytes =
      head_dim == 128 ? ClusterCfg<128>::kSmemBytes : ClusterCfg<64>::kSmemBytes;
  cfg.stream = stream;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = overlap ? 2 : 1;
  return cfg;
}

}  // namespace

int ClusterCapacity(int head_dim, int size) {
  constexpr int kSizes = 4;  // 2, 4, 8, 16
  static std::atomic<int> cache[2][kSizes][ResidentCtas::kMaxDevices] = {};
  static std::atomic<bool> ready[2][ResidentCtas::kMaxDevices] = {};
  int idx = -1;
  for (int s = 2, i = 0; s <= kMaxClusterSize; s *= 2, ++i) idx = s == size ? i : idx;
  if (idx < 0) return 0;
  int device = 0;
  MM_CUDA_CHECK(cudaGetDevice(&device));
  if (device < 0 || device >= ResidentCtas::kMaxDevices) return 0;
  const int which = head_dim == 128 ? 1 : 0;
  if (!ready[which][device].load(std::memory_order_acquire)) {
    int major = 0;
    MM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    const void* kernels[3] = {which ? KernelOf<128, 3>() : KernelOf<64, 3>(),
                              which ? KernelOf<128, 2>() : KernelOf<64, 2>(),
                              which ? KernelOf<128, 1>() : KernelOf<64, 1>()};
    const int smem = which ? ClusterCfg<128>::kSmemBytes : ClusterCfg<64>::kSmemBytes;
    if (major >= 9) {
      for (const void* k : kernels) {
        MM_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        MM_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
      }
    }
    for (int i = 0, s = 2; i < kSizes; ++i, s *= 2) {
      int clusters = 0;
      if (major >= 9) {
        cudaLaunchAttribute attr[2] = {};
        const cudaLaunchConfig_t cfg =
            ConfigFor(head_dim, static_cast<unsigned>(s), s, false, attr, nullptr);
        if (cudaOccupancyMaxActiveClusters(&clusters, kernels[0], &cfg) != cudaSuccess) {
          (void)cudaGetLastError();  // an unsupported size is not an error of later calls
          clusters = 0;
        }
      }
      cache[which][i][device].store(clusters, std::memory_order_relaxed);
    }
    ready[which][device].store(true, std::memory_order_release);
  }
  return cache[which][idx][device].load(std::memory_order_relaxed);
}

void LaunchCascadeCluster(int head_dim, int q_parts, bool overlap, const KernelArgs& a,
                          cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(a.cluster.level_units * a.cluster.size);
  cudaLaunchAttribute attr[2] = {};
  const cudaLaunchConfig_t cfg = ConfigFor(head_dim, grid, a.cluster.size, overlap, attr, stream);
  ForInstance(head_dim, q_parts, [&](auto d, auto qp) {
    MM_CUDA_CHECK(cudaLaunchKernelEx(
        &cfg, CascadeClusterKernel<decltype(d)::value, decltype(qp)::value>, a));
  });
}

}  // namespace moemesh::cuda::cascade
