// bench/smem_stream: how fast one CTA streams global memory into its shared memory, by the two
// ways a kernel can copy: 16-byte cp.async copies issued by every thread (what the decode and
// cascade kernels' K/V streams do today; the baseline) against bulk copies (cp.async.bulk, one
// instruction per contiguous 4 KiB run, the size of one paged KV block of one head at head_dim
// 128 and block 16, completing on an mbarrier). Short decode-attention launches keep only a few
// CTAs busy per SM, so what a CTA alone can pull decides their KV stream.
//
// Each CTA (128 threads) streams its own contiguous share through `stages` buffers of 32 KiB
// (the cascade kernels' stage size), stages - 1 in flight, touching every stage in shared memory
// before its buffer is reused. Cold: the shares come from HBM (the launches rotate over a buffer
// of 8x L2); warm: the same launch again, the shares in L2. Per CTA count, share and depth:
// the median CTA's time and bytes/s, the aggregate bytes/s of the launch (first start to last
// end), and bulk / cp.async.
//
//   build/bin/bench_smem_stream
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "bench/gpu_info.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/warp_mma.cuh"

namespace moemesh::bench {
namespace {

namespace wm = cuda::warp_mma;

constexpr int kThreads = 128;
constexpr int kStageBytes = 32 << 10;
constexpr int kRunBytes = 4 << 10;  // one bulk copy
constexpr int kMaxStages = 6;

// kBulk: thread 0 issues a stage as kStageBytes / kRunBytes bulk copies completing on the
// stage's mbarrier; otherwise every thread issues 16-byte cp.async copies (2 KiB per CTA-wide
// instruction, coalesced) and waits for its own groups, then a CTA barrier.
template <bool kBulk, int kStages>
__global__ void __launch_bounds__(kThreads) Stream(const char* src, int64_t share, int64_t rotate,
                                                   int64_t span, uint64_t* times, float* sink) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) uint64_t bars[kMaxStages];
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * share + rotate) % span;
  const char* base = src + first;
  const int n_stages = static_cast<int>(share / kStageBytes);
  if (kBulk && threadIdx.x < kStages) wm::MbarrierInitForCluster(&bars[threadIdx.x]);
  __syncthreads();
  const uint64_t t0 = wm::GlobalTimerNs();
  auto issue = [&](int s) {
    unsigned char* dst = smem + (s % kStages) * kStageBytes;
    const char* from = base + static_cast<int64_t>(s) * kStageBytes;
    if constexpr (kBulk) {
      if (threadIdx.x == 0) {
        wm::MbarrierExpectBytes(&bars[s % kStages], kStageBytes);
        for (int r = 0; r < kStageBytes / kRunBytes; ++r) {
          wm::BulkCopyToShared(dst + r * kRunBytes, from + r * kRunBytes, kRunBytes,
                               &bars[s % kStages]);
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < kStageBytes / (16 * kThreads); ++j) {
        const int off = (j * kThreads + static_cast<int>(threadIdx.x)) * 16;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(wm::SmemAddr(dst + off)),
                     "l"(from + off)
                     : "memory");
      }
    }
  };
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_stages) issue(s);
    if (!kBulk) wm::CpAsyncCommit();
  }
  float acc = 0.f;
  for (int it = 0; it < n_stages; ++it) {
    if constexpr (kBulk) {
      wm::MbarrierWaitCluster(&bars[it % kStages], static_cast<uint32_t>((it / kStages) & 1));
    } else {
      wm::CpAsyncWait<kStages - 2>();
    }
    __syncthreads();  // the stage is in; everyone is done with the buffer issued below
    if (kBulk) wm::ProxyFence();
    if (it + kStages - 1 < n_stages) issue(it + kStages - 1);
    if (!kBulk) wm::CpAsyncCommit();
    const float* st = reinterpret_cast<const float*>(smem + (it % kStages) * kStageBytes);
    acc += st[threadIdx.x * 61 % (kStageBytes / 4)];
  }
  __syncthreads();
  const uint64_t t1 = wm::GlobalTimerNs();
  if (acc == 1234.5f) sink[threadIdx.x] = acc;
  if (threadIdx.x == 0) {
    times[2 * blockIdx.x] = t0;
    times[2 * blockIdx.x + 1] = t1;
  }
}

struct Result {
  double cta_us = 0;    // median CTA
  double agg_gbs = 0;   // launch: bytes / (last end - first start)
};

template <bool kBulk, int kStages>
Result Launch(int ctas, int64_t share, int64_t rotate, int64_t span, const char* src,
              uint64_t* times, float* sink, cudaStream_t stream) {
  const int smem = kStages * kStageBytes;
  static bool set = false;
  if (!set) {
    MM_CUDA_CHECK(cudaFuncSetAttribute(Stream<kBulk, kStages>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    set = true;
  }
  Stream<kBulk, kStages><<<ctas, kThreads, smem, stream>>>(src, share, rotate, span, times, sink);
  MM_CUDA_CHECK(cudaGetLastError());
  MM_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<uint64_t> t(2 * static_cast<size_t>(ctas));
  MM_CUDA_CHECK(cudaMemcpy(t.data(), times, t.size() * 8, cudaMemcpyDeviceToHost));
  std::vector<double> d;
  uint64_t lo = UINT64_MAX, hi = 0;
  for (int i = 0; i < ctas; ++i) {
    d.push_back((t[2 * i + 1] - t[2 * i]) * 1e-3);
    lo = std::min(lo, t[2 * i]);
    hi = std::max(hi, t[2 * i + 1]);
  }
  std::sort(d.begin(), d.end());
  Result r;
  r.cta_us = d[d.size() / 2];
  r.agg_gbs = static_cast<double>(share) * ctas / static_cast<double>(hi - lo);
  return r;
}

// Median of 5 launches (cold: each on shares not read in the previous 7 launches; warm: each
// right after a launch on the same shares).
template <bool kBulk, int kStages>
Result Measure(bool warm, int ctas, int64_t share, int64_t span, const char* src,
               uint64_t* times, float* sink, int64_t* rotate, cudaStream_t stream) {
  std::vector<Result> rs;
  for (int rep = 0; rep < 5; ++rep) {
    *rotate = (*rotate + span / 8) % span;
    if (warm) Launch<kBulk, kStages>(ctas, share, *rotate, span, src, times, sink, stream);
    rs.push_back(Launch<kBulk, kStages>(ctas, share, *rotate, span, src, times, sink, stream));
  }
  std::sort(rs.begin(), rs.end(),
            [](const Result& x, const Result& y) { return x.cta_us < y.cta_us; });
  return rs[rs.size() / 2];
}

template <int kStages>
void Row(bool warm, int ctas, int64_t share, int64_t span, const char* src, uint64_t* times,
         float* sink, int64_t* rotate, cudaStream_t stream) {
  const Result c =
      Measure<false, kStages>(warm, ctas, share, span, src, times, sink, rotate, stream);
  const Result b =
      Measure<true, kStages>(warm, ctas, share, span, src, times, sink, rotate, stream);
  auto gbs = [&](double us) { return static_cast<double>(share) / (us * 1e3); };
  std::printf("%-5s %5d %8lld %6d | %8.2f %8.1f %8.0f | %8.2f %8.1f %8.0f | %8.2fx\n",
              warm ? "L2" : "HBM", ctas, static_cast<long long>(share >> 10), kStages, c.cta_us,
              gbs(c.cta_us), c.agg_gbs, b.cta_us, gbs(b.cta_us), b.agg_gbs, c.cta_us / b.cta_us);
}

int Main() {
  const auto gpu = DescribeGpu("bench_smem_stream");
  if (!gpu) return 0;
  const int sms = gpu->prop.multiProcessorCount;
  const int64_t span = static_cast<int64_t>(8 * gpu->l2) / kStageBytes * kStageBytes;
  char* src = nullptr;
  uint64_t* times = nullptr;
  float* sink = nullptr;
  MM_CUDA_CHECK(cudaMalloc(&src, static_cast<size_t>(span) + (size_t{64} << 20)));
  MM_CUDA_CHECK(cudaMemset(src, 0, static_cast<size_t>(span) + (size_t{64} << 20)));
  MM_CUDA_CHECK(cudaMalloc(&times, 2 * sizeof(uint64_t) * 4 * sms));
  MM_CUDA_CHECK(cudaMalloc(&sink, kThreads * sizeof(float)));
  cudaStream_t stream;
  MM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::printf("streams into shared memory, 128 threads per CTA, %d KiB stages (depth - 1 in "
              "flight); cp.async: 16-byte copies by every thread; bulk: %d KiB cp.async.bulk "
              "copies; median of 5 launches\n",
              kStageBytes >> 10, kRunBytes >> 10);
  std::printf("%-5s %5s %8s %6s | %8s %8s %8s | %8s %8s %8s | %9s\n", "from", "CTAs", "KiB/CTA",
              "depth", "cp us", "GB/s/CTA", "GB/s all", "bulk us", "GB/s/CTA", "GB/s all",
              "cp / bulk");
  int64_t rotate = 0;
  const int counts[] = {16, 64, sms, 2 * sms};
  const int64_t shares[] = {int64_t{128} << 10, int64_t{1} << 20};
  for (int warm = 0; warm < 2; ++warm) {
    for (int ctas : counts) {
      for (int64_t share : shares) {
        if (static_cast<int64_t>(ctas) * share > span / 8) continue;
        Row<3>(warm != 0, ctas, share, span, src, times, sink, &rotate, stream);
        if (ctas <= sms) Row<6>(warm != 0, ctas, share, span, src, times, sink, &rotate, stream);
      }
    }
  }
  MM_CUDA_CHECK(cudaStreamDestroy(stream));
  MM_CUDA_CHECK(cudaFree(src));
  MM_CUDA_CHECK(cudaFree(times));
  MM_CUDA_CHECK(cudaFree(sink));
  return 0;
}

}  // namespace
}  // namespace moemesh::bench

int main() { return moemesh::bench::Main(); }
