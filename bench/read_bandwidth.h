// Benchmark helper: the memory-read bandwidth baseline. All threads of a pool stream-read (sum)
// a buffer larger than the last-level cache with the widest loads the CPU has (AVX-512, AVX2,
// else 64-bit), so kernels can report their weight bytes per second as a fraction of it. Not
// for the runtime. Thread-safety: MeasureReadBandwidth uses the pool; one call at a time.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bench/bench_arena.h"
#include "common/thread_pool.h"

namespace moemesh::bench {

__attribute__((target("avx512f"))) inline uint64_t SumAvx512(const uint8_t* p, size_t bytes) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 256 <= bytes; i += 256) {
    a0 = _mm512_add_epi64(a0, _mm512_load_si512(p + i));
    a1 = _mm512_add_epi64(a1, _mm512_load_si512(p + i + 64));
    a2 = _mm512_add_epi64(a2, _mm512_load_si512(p + i + 128));
    a3 = _mm512_add_epi64(a3, _mm512_load_si512(p + i + 192));
  }
  alignas(64) uint64_t lanes[8];  // not _mm512_reduce_add_epi64: GCC 12 warns inside it
  _mm512_store_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
  uint64_t s = 0;
  for (uint64_t v : lanes) s += v;
  return s;
}

__attribute__((target("avx2"))) inline uint64_t SumAvx2(const uint8_t* p, size_t bytes) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 128 <= bytes; i += 128) {
    a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

inline uint64_t SumScalar(const uint8_t* p, size_t bytes) {
  uint64_t s0 = 0, s1 = 0;
  for (size_t i = 0; i + 16 <= bytes; i += 16) {
    uint64_t v0, v1;
    std::memcpy(&v0, p + i, 8);
    std::memcpy(&v1, p + i + 8, 8);
    s0 += v0;
    s1 += v1;
  }
  return s0 + s1;
}

struct ReadBandwidth {
  const char* loads = "";  // "avx512", "avx2", "scalar"
  uint64_t buffer_bytes = 0;
  int passes = 0;
  double best_gbps = 0;    // 1e9 bytes per second
  double median_gbps = 0;
};

// Reads a `bytes` buffer (rounded down to 4 MiB chunks, handed out to the threads dynamically)
// `passes` times after one untimed pass; passes == 0 in the result when it cannot be mapped.
inline ReadBandwidth MeasureReadBandwidth(ThreadPool& pool, uint64_t bytes, int passes) {
  ReadBandwidth r;
  constexpr uint64_t kChunk = uint64_t{4} << 20;
  bytes = std::max<uint64_t>(kChunk, bytes / kChunk * kChunk);
  Arena arena;
  if (!arena.Reset(bytes)) return r;
  uint8_t* buf = arena.base();
  const int64_t chunks = static_cast<int64_t>(bytes / kChunk);
  pool.ParallelFor(chunks, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      for (uint64_t i = 0; i < kChunk; i += 8) {
        const uint64_t v = (c * kChunk + i) * 0x9E3779B97F4A7C15ull;
        std::memcpy(buf + c * kChunk + i, &v, 8);
      }
    }
  }, 1);
  uint64_t (*sum)(const uint8_t*, size_t) = SumScalar;
  r.loads = "scalar";
  if (__builtin_cpu_supports("avx2")) sum = SumAvx2, r.loads = "avx2";
  if (__builtin_cpu_supports("avx512f")) sum = SumAvx512, r.loads = "avx512";
  std::atomic<uint64_t> sink{0};
  std::vector<double> gbps;
  for (int p = -1; p < passes; ++p) {
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(chunks, [&](int64_t b, int64_t e) {
      uint64_t s = 0;
      for (int64_t c = b; c < e; ++c) s += sum(buf + c * kChunk, kChunk);
      sink.fetch_add(s, std::memory_order_relaxed);
    }, 1);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (p >= 0) gbps.push_back(static_cast<double>(bytes) / sec / 1e9);
  }
  std::sort(gbps.begin(), gbps.end());
  r.buffer_bytes = bytes;
  r.passes = passes;
  r.best_gbps = gbps.back();
  r.median_gbps = gbps[gbps.size() / 2];
  if (sink.load() == 42) r.loads = "avx512?";  // keeps the sums observable
  return r;
}

}  // namespace moemesh::bench
