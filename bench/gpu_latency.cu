// bench/gpu_latency: the latencies a short kernel phase is made of, on this GPU, each against a
// baseline measured in the same run. The decode and cascade kernels take microseconds for phases
// with almost no work (a 32-position stream, a merge of two inputs); this separates the usual
// suspects.
//
// 1. Instruction fetch: a kernel with one CTA per SM (4 warps) calls a block of straight-line
// FMAs (no memory access, noinline: one copy of the code) twice and records the global timer
// before, between and after. The first call fetches the block's instructions; the second (the
// baseline) runs them again. Cases:
//   - cold L2:    the launch follows a write of 2x L2 (the code comes from HBM);
//   - after self: the launch follows a launch of the same kernel (do the instruction caches
//                 survive a launch boundary?);
//   - in a graph: the last of 20 launches captured in a CUDA graph (as the benchmarks time).
// Prints per block size the median over CTAs of each call, their ratio and the cost per KiB of
// SASS (16 bytes per instruction).
//
// 2. Round trips: one thread chases a chain of dependent loads (each loads the next address), so
// the time per load is its latency; against an L1 hit of the same chase (the baseline).
//   - L1: 16 lines, second pass (ld.ca);  L2: 4096 random lines of 8 MiB, second pass (ld.cg);
//   - HBM: 4096 random lines of 64 MiB (32 pages of 2 MiB) or of 4 GiB (most loads on a page
//     not touched before) after a write of 2x L2;
//   - atomicAdd: a chain of dependent atomics on one word; fence: a store then __threadfence().
//
// 3. Hand-off: the loads (or bulk copies) of data another SM has just written and published (a
// release arrival, seen by polling and an acquire fence), against the same of data written by an
// earlier kernel; and how long the arrival takes to be seen.
//
// 4. Kernel parameters: the first use of each 64-byte line of a 1 KiB parameter block, against
// the same fields used again.
//
//   build/bin/bench_gpu_latency
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "bench/gpu_info.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/warp_mma.cuh"

namespace moemesh::bench {
namespace {

constexpr int kThreads = 128;

// kFmas FMAs in 4 independent chains; every instruction is one FFMA (16 bytes of SASS).
template <int kFmas>
__device__ __noinline__ float Block(float x, float y) {
  float c[4] = {x, x + 1.f, x + 2.f, x + 3.f};
#pragma unroll
  for (int i = 0; i < kFmas / 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("fma.rn.f32 %0, %0, %1, %1;" : "+f"(c[j]) : "f"(y));
  }
  return c[0] + c[1] + c[2] + c[3];
}

template <int kFmas>
__global__ void __launch_bounds__(kThreads) Probe(float y, float* sink, uint64_t* times) {
  const uint64_t t0 = cuda::warp_mma::GlobalTimerNs();
  float x = Block<kFmas>(static_cast<float>(threadIdx.x), y);
  __syncthreads();
  const uint64_t t1 = cuda::warp_mma::GlobalTimerNs();
  x = Block<kFmas>(x, y);
  __syncthreads();
  const uint64_t t2 = cuda::warp_mma::GlobalTimerNs();
  if (x == 12345.f) sink[threadIdx.x] = x;  // keeps the chains live
  if (threadIdx.x == 0) {
    times[3 * blockIdx.x] = t0;
    times[3 * blockIdx.x + 1] = t1;
    times[3 * blockIdx.x + 2] = t2;
  }
}

// Follows `n` links from `start` (each word holds the address of the next), twice; the time of
// the second pass (or of the first when first_only) per link, in ns, to out[0].
template <bool kL1>
__global__ void Chase(const uint64_t* start, int n, bool first_only, uint64_t* out) {
  const uint64_t* p = start;
  uint64_t t0 = 0, t1 = 0;
  for (int pass = 0; pass < 2; ++pass) {
    t0 = cuda::warp_mma::GlobalTimerNs();
    for (int i = 0; i < n; ++i) {
      const uint64_t next = kL1 ? __ldca(p) : __ldcg(p);
      p = reinterpret_cast<const uint64_t*>(next);
    }
    t1 = cuda::warp_mma::GlobalTimerNs();
    if (first_only) break;
  }
  out[0] = (t1 - t0) * 1000 / n;  // ps per link
  out[1] = reinterpret_cast<uint64_t>(p);
}

// n dependent atomicAdds (the returned value feeds the next address), or n store + fence pairs.
__global__ void Atomics(uint32_t* word, int n, bool fence, uint64_t* out) {
  uint32_t v = 0;
  const uint64_t t0 = cuda::warp_mma::GlobalTimerNs();
  for (int i = 0; i < n; ++i) {
    if (fence) {
      word[64 + 32 * (i % 64)] = v + i;
      __threadfence();
    } else {
      v = atomicAdd(word + (v & 0x10000u), 1u);
    }
  }
  const uint64_t t1 = cuda::warp_mma::GlobalTimerNs();
  out[0] = (t1 - t0) * 1000 / n;
  out[1] = v;
}

// Hand-off: CTA 0 writes `bytes` (float4 stores by all threads) to `fresh` and arrives at `flag`
// (red.release.gpu after a CTA barrier, as the cascade splits do); CTA 1 (on another SM: the
// shared memory allows one CTA per SM) polls the flag with relaxed loads, fences (acquire) and
// loads `bytes` back through L2, every load in flight at once (or, with bulk, copies them into
// shared memory in bulk copies of up to 16 KiB on an mbarrier set up before the poll), from
// `fresh` or from `old` (written by an earlier kernel). times: the arrival, the flag seen, the
// data loaded.
__global__ void __launch_bounds__(kThreads) Handoff(float4* fresh, const float4* old,
                                                   uint32_t* flag, int bytes, bool read_old,
                                                   bool bulk, uint64_t* times, float* sink) {
  extern __shared__ __align__(128) float4 pad[];
  __shared__ __align__(8) uint64_t bar;
  const int n = bytes / 16;
  const int consumer = static_cast<int>(blockIdx.x) - 1;
  if (blockIdx.x == 0) {
    const int all = n * (static_cast<int>(gridDim.x) - 1);
    for (int i = threadIdx.x; i < all; i += kThreads) fresh[i] = make_float4(1.f, 2.f, 3.f, i);
    __syncthreads();
    if (threadIdx.x == 0) {
      times[0] = cuda::warp_mma::GlobalTimerNs();
      asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(flag) : "memory");
    }
    return;
  }
  __shared__ uint64_t seen;
  if (threadIdx.x == 0) {
    if (bulk) cuda::warp_mma::MbarrierInitForCluster(&bar);
    for (;;) {
      uint32_t v;
      asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(flag) : "memory");
      if (v != 0) break;
    }
    asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
    seen = cuda::warp_mma::GlobalTimerNs();
  }
  __syncthreads();
  const float4* src = (read_old ? old : fresh) + static_cast<int64_t>(consumer) * n;
  float acc = 0.f;
  if (bulk) {  // bulk copies of up to 16 KiB (a merge's runs of inputs) into shared memory
    if (threadIdx.x == 0) {
      cuda::warp_mma::MbarrierExpectBytes(&bar, static_cast<uint32_t>(bytes));
      for (int at = 0; at < bytes; at += 16 << 10) {
        const int run = min(bytes - at, 16 << 10);
        cuda::warp_mma::BulkCopyToShared(reinterpret_cast<char*>(pad) + at,
                                         reinterpret_cast<const char*>(src) + at,
                                         static_cast<uint32_t>(run), &bar);
      }
    }
    cuda::warp_mma::MbarrierWaitCluster(&bar, 0);
    acc = pad[threadIdx.x % n].w;
  }
  constexpr int kMax = 8;  // loads in flight per thread
  for (int i0 = threadIdx.x; i0 < (bulk ? 0 : n); i0 += kMax * kThreads) {
    float4 x[kMax];
#pragma unroll
    for (int u = 0; u < kMax; ++u) {
      const int i = i0 + u * kThreads;
      x[u] = i < n ? __ldcg(src + i) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int u = 0; u < kMax; ++u) acc += x[u].w;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    times[3 * consumer + 1] = seen;
    times[3 * consumer + 2] = cuda::warp_mma::GlobalTimerNs();
  }
  if (acc == -1.f) sink[threadIdx.x] = acc;
}

// A 1 KiB parameter block read a field per 64-byte line (16 lines), the first time in the launch
// and again (the baseline); with `warm`, the kernel first touches every line with independent
// loads (ld.param at a register offset) so that their misses overlap.
struct Params1K {
  float f[256];
};

__global__ void ParamProbe(const Params1K p, bool warm, uint64_t* out) {
  if (warm) {
    uint64_t base;
    asm volatile("mov.u64 %0, %1;" : "=l"(base) : "l"(&p));
    float sink = 0.f;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      float v;
      asm volatile("ld.param.f32 %0, [%1];" : "=f"(v) : "l"(base + 64 * i));
      sink += v;
    }
    if (sink == 12345.f) out[2] = 1;
  }
  uint64_t t[3];
  float x = 0.f;
  for (int pass = 0; pass < 2; ++pass) {
    t[pass] = cuda::warp_mma::GlobalTimerNs();
#pragma unroll
    for (int i = 0; i < 16; ++i) x = fmaf(x, 0.5f, p.f[16 * i + pass]);
  }
  t[2] = cuda::warp_mma::GlobalTimerNs();
  out[0] = t[1] - t[0];
  out[1] = t[2] - t[1];
  if (x == 12345.f) out[2] = 2;
}

struct Calls {
  double first_us, second_us;
};

Calls Medians(const std::vector<uint64_t>& t, int ctas) {
  std::vector<double> a, b;
  for (int i = 0; i < ctas; ++i) {
    a.push_back((t[3 * i + 1] - t[3 * i]) * 1e-3);
    b.push_back((t[3 * i + 2] - t[3 * i + 1]) * 1e-3);
  }
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  return {a[a.size() / 2], b[b.size() / 2]};
}

template <int kFmas>
void Run(int sms, void* flush, size_t flush_bytes, float* sink, uint64_t* times,
         cudaStream_t stream) {
  const double kib = kFmas * 16.0 / 1024.0;
  std::vector<uint64_t> host(3 * static_cast<size_t>(sms));
  auto fetch = [&] {
    MM_CUDA_CHECK(cudaStreamSynchronize(stream));
    MM_CUDA_CHECK(cudaMemcpy(host.data(), times, host.size() * 8, cudaMemcpyDeviceToHost));
    return Medians(host, sms);
  };
  auto print = [&](const char* what, Calls c) {
    std::printf("%-11s %8.1f %10.3f %10.3f %9.2fx %12.1f\n", what, kib, c.first_us, c.second_us,
                c.first_us / c.second_us, (c.first_us - c.second_us) * 1e3 / kib);
  };
  for (int rep = 0; rep < 2; ++rep) {  // the first repetition loads the module; report the second
    MM_CUDA_CHECK(cudaMemsetAsync(flush, rep, flush_bytes, stream));
    Probe<kFmas><<<sms, kThreads, 0, stream>>>(1.0001f, sink, times);
    MM_CUDA_CHECK(cudaGetLastError());
    const Calls cold = fetch();
    Probe<kFmas><<<sms, kThreads, 0, stream>>>(1.0001f, sink, times);
    const Calls again = fetch();
    if (rep == 0) continue;
    print("cold L2", cold);
    print("after self", again);
  }
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  MM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < 20; ++i) Probe<kFmas><<<sms, kThreads, 0, stream>>>(1.0001f, sink, times);
  MM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  MM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  MM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  print("in a graph", fetch());
  MM_CUDA_CHECK(cudaGraphExecDestroy(exec));
  MM_CUDA_CHECK(cudaGraphDestroy(graph));
}

int Main() {
  const auto gpu = DescribeGpu("bench_gpu_latency");
  if (!gpu) return 0;
  const int sms = gpu->prop.multiProcessorCount;
  const size_t flush_bytes = 2 * gpu->l2;
  void* flush = nullptr;
  float* sink = nullptr;
  uint64_t* times = nullptr;
  MM_CUDA_CHECK(cudaMalloc(&flush, flush_bytes));
  MM_CUDA_CHECK(cudaMalloc(&sink, kThreads * sizeof(float)));
  MM_CUDA_CHECK(cudaMalloc(&times, 3 * sizeof(uint64_t) * sms));
  cudaStream_t stream;
  MM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::printf("instruction fetch: one CTA of %d threads per SM (%d); median over CTAs; us\n",
              kThreads, sms);
  std::printf("%-11s %8s %10s %10s %10s %12s\n", "case", "code KiB", "first call", "second",
              "first/2nd", "ns per KiB");
  Run<256>(sms, flush, flush_bytes, sink, times, stream);
  Run<1024>(sms, flush, flush_bytes, sink, times, stream);
  Run<4096>(sms, flush, flush_bytes, sink, times, stream);

  // Round trips.
  uint64_t* out = nullptr;
  MM_CUDA_CHECK(cudaMalloc(&out, 4 * sizeof(uint64_t)));
  const size_t big = size_t{4} << 30;
  char* chain = nullptr;
  MM_CUDA_CHECK(cudaMalloc(&chain, big));
  std::mt19937_64 rng(7);
  // Links through `lines` random 128-byte lines of the first `span` bytes; the chase's start.
  auto build = [&](int lines, size_t span) {
    std::vector<size_t> offs;
    std::vector<char> used(span / 128, 0);
    while (static_cast<int>(offs.size()) < lines) {
      const size_t line = rng() % (span / 128);
      if (used[line]) continue;
      used[line] = 1;
      offs.push_back(line * 128);
    }
    for (int i = 0; i < lines; ++i) {
      const uint64_t next = reinterpret_cast<uint64_t>(chain + offs[(i + 1) % lines]);
      MM_CUDA_CHECK(cudaMemcpy(chain + offs[i], &next, 8, cudaMemcpyHostToDevice));
    }
    return reinterpret_cast<const uint64_t*>(chain + offs[0]);
  };
  auto result = [&] {
    uint64_t host[2];
    MM_CUDA_CHECK(cudaStreamSynchronize(stream));
    MM_CUDA_CHECK(cudaMemcpy(host, out, sizeof(host), cudaMemcpyDeviceToHost));
    return host[0] / 1000.0;
  };
  std::printf("\nround trips, one thread, ns per dependent operation\n");
  const uint64_t* l1 = build(16, size_t{2} << 10);
  Chase<true><<<1, 1, 0, stream>>>(l1, 4096, false, out);
  const double l1_ns = result();
  auto row = [&](const char* what, double ns) {
    std::printf("%-34s %9.1f %9.1fx L1\n", what, ns, ns / l1_ns);
  };
  row("L1 hit (16 lines)", l1_ns);
  const uint64_t* l2 = build(4096, size_t{8} << 20);
  Chase<false><<<1, 1, 0, stream>>>(l2, 4096, false, out);
  row("L2 hit (4096 lines of 8 MiB)", result());
  const uint64_t* near = build(4096, size_t{64} << 20);
  MM_CUDA_CHECK(cudaMemsetAsync(flush, 1, flush_bytes, stream));
  Chase<false><<<1, 1, 0, stream>>>(near, 4096, true, out);
  row("HBM (4096 lines of 64 MiB)", result());
  const uint64_t* far = build(2048, big);
  MM_CUDA_CHECK(cudaMemsetAsync(flush, 2, flush_bytes, stream));
  Chase<false><<<1, 1, 0, stream>>>(far, 2048, true, out);
  row("HBM (2048 lines of 4 GiB)", result());
  Atomics<<<1, 1, 0, stream>>>(reinterpret_cast<uint32_t*>(flush), 4096, false, out);
  row("atomicAdd chain (one word)", result());
  Atomics<<<1, 1, 0, stream>>>(reinterpret_cast<uint32_t*>(flush), 4096, true, out);
  row("store + __threadfence()", result());
  {
    std::printf("\nhand-off: CTA 0 writes and arrives (red.release.gpu), CTA 1 on another SM sees "
                "the count and loads the bytes back (__ldcg, all in flight, or bulk copies of up "
                "to 16 KiB into shared memory); us, median of 9\n");
    std::printf("%-10s %14s %16s %16s %16s %16s\n", "bytes", "arrival->seen", "load just written",
                "load written before", "bulk just written", "bulk written before");
    float4* fresh = nullptr;
    float4* old = nullptr;
    constexpr int kConsumers = 64;  // the second table: that many consumers at once
    const int max_bytes = kConsumers * (24 << 10);
    MM_CUDA_CHECK(cudaMalloc(&fresh, max_bytes));
    MM_CUDA_CHECK(cudaMalloc(&old, max_bytes));
    MM_CUDA_CHECK(cudaMemset(old, 0, max_bytes));
    uint32_t* flag = reinterpret_cast<uint32_t*>(out) + 2;
    MM_CUDA_CHECK(cudaMemset(flag, 0, 4));
    uint64_t* ht = nullptr;
    MM_CUDA_CHECK(cudaMalloc(&ht, 3 * sizeof(uint64_t) * kConsumers));
    const int smem = 136 << 10;
    MM_CUDA_CHECK(cudaFuncSetAttribute(Handoff, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    // One launch of `consumers`: the median consumer's arrival -> seen and seen -> loaded, us.
    auto handoff = [&](int consumers, int bytes, bool read_old, bool bulk) {
      MM_CUDA_CHECK(cudaMemsetAsync(flag, 0, 4, stream));
      Handoff<<<1 + consumers, kThreads, smem, stream>>>(fresh, old, flag, bytes, read_old, bulk,
                                                          ht, sink);
      MM_CUDA_CHECK(cudaGetLastError());
      std::vector<uint64_t> h(3 * static_cast<size_t>(consumers));
      MM_CUDA_CHECK(cudaStreamSynchronize(stream));
      MM_CUDA_CHECK(cudaMemcpy(h.data(), ht, h.size() * 8, cudaMemcpyDeviceToHost));
      std::vector<double> seen, load;
      for (int c = 0; c < consumers; ++c) {
        seen.push_back((static_cast<double>(h[3 * c + 1]) - static_cast<double>(h[0])) * 1e-3);
        load.push_back((h[3 * c + 2] - h[3 * c + 1]) * 1e-3);
      }
      std::sort(seen.begin(), seen.end());
      std::sort(load.begin(), load.end());
      return std::vector<double>{seen[seen.size() / 2], load[load.size() / 2]};
    };
    for (int bytes : {512, 24 << 10, 128 << 10}) {
      double med[5] = {0, 0, 0, 0, 0};
      for (int mode = 0; mode < 4; ++mode) {
        const int read_old = mode % 2;
        const bool bulk = mode >= 2;
        std::vector<double> seen, load;
        for (int rep = 0; rep < 9; ++rep) {
          const std::vector<double> r = handoff(1, bytes, read_old != 0, bulk);
          seen.push_back(r[0]);
          load.push_back(r[1]);
        }
        std::sort(seen.begin(), seen.end());
        std::sort(load.begin(), load.end());
        if (mode == 0) med[0] = seen[4];
        med[1 + mode] = load[4];
      }
      std::printf("%-10d %14.2f %16.2f %16.2f %16.2f %16.2f\n", bytes, med[0], med[1], med[2],
                  med[3], med[4]);
    }
    std::printf("%d consumers at once (one per SM), 24 KiB each, median consumer of the median "
                "of 9 launches: arrival->seen, then loads / bulk copies of data just written\n",
                kConsumers);
    for (int bulk = 0; bulk < 2; ++bulk) {
      std::vector<double> seen, load;
      for (int rep = 0; rep < 9; ++rep) {
        const std::vector<double> r = handoff(kConsumers, 24 << 10, false, bulk != 0);
        seen.push_back(r[0]);
        load.push_back(r[1]);
      }
      std::sort(seen.begin(), seen.end());
      std::sort(load.begin(), load.end());
      std::printf("%-20s %14.2f %16.2f\n", bulk ? "bulk copies" : "loads", seen[4], load[4]);
    }
    MM_CUDA_CHECK(cudaFree(fresh));
    MM_CUDA_CHECK(cudaFree(old));
    MM_CUDA_CHECK(cudaFree(ht));
  }
  {
    Params1K params;
    for (int i = 0; i < 256; ++i) params.f[i] = 1.f + i;
    std::printf("\nkernel parameters: 16 fields on 16 lines of a 1 KiB block, one thread, ns\n");
    for (int warm = 0; warm < 2; ++warm) {
      double first = 0, second = 0;
      for (int rep = 0; rep < 3; ++rep) {
        ParamProbe<<<1, 1, 0, stream>>>(params, warm != 0, out);
        uint64_t host[2];
        MM_CUDA_CHECK(cudaStreamSynchronize(stream));
        MM_CUDA_CHECK(cudaMemcpy(host, out, sizeof(host), cudaMemcpyDeviceToHost));
        first = static_cast<double>(host[0]);
        second = static_cast<double>(host[1]);
      }
      std::printf("%-34s %9.0f %9.0f (again) %6.1f per line\n",
                  warm ? "lines touched first (ld.param)" : "first use of each line", first,
                  second, (first - second) / 16);
    }
  }
  MM_CUDA_CHECK(cudaFree(out));
  MM_CUDA_CHECK(cudaFree(chain));

  MM_CUDA_CHECK(cudaStreamDestroy(stream));
  MM_CUDA_CHECK(cudaFree(flush));
  MM_CUDA_CHECK(cudaFree(sink));
  MM_CUDA_CHECK(cudaFree(times));
  return 0;
}

}  // namespace
}  // namespace moemesh::bench

int main() { return moemesh::bench::Main(); }
