// Shared pieces of the decode attention conformance suites
// (cuda_attention_test, cuda_kv_append_test, cuda_decode_overlap_test): a paged
// cache built on the host in the kernel's layout, the scalar reference
// (ref::AttentionLse) and the comparison that names the first bad element. CUDA
// builds only.
#pragma once

#ifdef MOEMESH_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/attention.h"
#include "kernels/ref/attention_lse.h"
#include "tests/conformance/cuda_test_util.h"

namespace moemesh::testing_cuda {

constexpr double kDecodeAtol = 1e-4;  // fp32-class: a single bf16 rounding of q or P misses this
constexpr double kDecodeRtol = 1e-4;

// A paged cache in the kernel's HND layout, built on the host: sequence b's
// position p is row p % block_size of block table[b][p / block_size]. Blocks
// are handed out in shuffled order; unused blocks, unused rows and the poison
// block behind unused table entries hold NaN.
struct HostCache {
  int kv_heads, head_dim, block_size, num_blocks, max_blocks_per_seq;
  std::vector<float> k_pool, v_pool;  // bf16 values (or NaN) held as float
  std::vector<int32_t> tables;        // [batch, max_blocks_per_seq]

  int64_t Offset(int32_t block, int head, int row) const {
    return ((static_cast<int64_t>(block) * kv_heads + head) * block_size + row) * head_dim;
  }
};

// k[b], v[b]: [len_b, kv_heads, head_dim], already bf16-exact.
inline HostCache BuildCache(const std::vector<std::vector<float>>& k,
                            const std::vector<std::vector<float>>& v, const std::vector<int>& lens,
                            int max_kv_len, int kv_heads, int head_dim, int block_size,
                            uint32_t seed) {
  HostCache c{kv_heads, head_dim, block_size, 0, 0, {}, {}, {}};
  const int batch = static_cast<int>(lens.size());
  c.max_blocks_per_seq = std::max(1, (max_kv_len + block_size - 1) / block_size);
  int used = 0;
  for (int len : lens) used += (len + block_size - 1) / block_size;
  c.num_blocks = 2 * used + 3;
  std::vector<int32_t> order(c.num_blocks);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  const int32_t poison_block = order.back();  // never holds data
  const size_t pool = static_cast<size_t>(c.num_blocks) * kv_heads * block_size * head_dim;
  c.k_pool.assign(pool, std::nanf(""));
  c.v_pool.assign(pool, std::nanf(""));
  c.tables.assign(static_cast<size_t>(batch) * c.max_blocks_per_seq, poison_block);
  int next = 0;
  for (int b = 0; b < batch; ++b) {
    const int blocks = (lens[b] + block_size - 1) / block_size;
    for (int i = 0; i < blocks; ++i) c.tables[b * c.max_blocks_per_seq + i] = order[next++];
    for (int p = 0; p < lens[b]; ++p) {
      const int32_t block = c.tables[b * c.max_blocks_per_seq + p / block_size];
      for (int h = 0; h < kv_heads; ++h) {
        const int64_t dst = c.Offset(block, h, p % block_size);
        const int64_t src = (static_cast<int64_t>(p) * kv_heads + h) * head_dim;
        std::copy_n(k[b].begin() + src, head_dim, c.k_pool.begin() + dst);
        std::copy_n(v[b].begin() + src, head_dim, c.v_pool.begin() + dst);
      }
    }
  }
  return c;
}

// The device view of a HostCache uploaded to `k` and `v`.
inline cuda::PagedKv DeviceCache(const HostCache& hc, __nv_bfloat16* k, __nv_bfloat16* v) {
  cuda::PagedKv cache;
  cache.k = k;
  cache.v = v;
  cache.num_blocks = hc.num_blocks;
  cache.block_size = hc.block_size;
  cache.kv_heads = hc.kv_heads;
  cache.head_dim = hc.head_dim;
  return cache;
}

// Decode parameters over a HostCache's tables (other fields at their defaults).
inline cuda::DecodeParams BasicParams(const HostCache& hc, const float* q, float* out, float* lse,
                                      const int32_t* tables, const int32_t* lens, int batch,
                                      int n_heads, int max_kv_len, float scale) {
  cuda::DecodeParams p;
  p.q = q;
  p.out = out;
  p.lse = lse;
  p.block_tables = tables;
  p.kv_lens = lens;
  p.batch = batch;
  p.n_heads = n_heads;
  p.max_blocks_per_seq = hc.max_blocks_per_seq;
  p.max_kv_len = max_kv_len;
  p.scale = scale;
  return p;
}

inline std::vector<float> RandomBf16(size_t n, uint32_t seed) {
  std::vector<float> x = Random(n, seed);
  for (float& f : x) f = RoundBf16(f);
  return x;
}

struct Reference {
  std::vector<float> out, lse;
};

inline Reference ReferenceDecode(const std::vector<float>& q,
                                 const std::vector<std::vector<float>>& k,
                                 const std::vector<std::vector<float>>& v,
                                 const std::vector<int>& lens, int n_heads, int kv_heads,
                                 int head_dim, float scale, int window) {
  Reference r;
  const size_t row = static_cast<size_t>(n_heads) * head_dim;
  r.out.resize(lens.size() * row);
  r.lse.resize(lens.size() * n_heads);
  for (size_t b = 0; b < lens.size(); ++b) {
    ref::AttentionLse(q.data() + b * row, k[b].data(), v[b].data(), r.out.data() + b * row,
                      r.lse.data() + b * n_heads, 1, lens[b], n_heads, kv_heads, head_dim, scale,
                      window);
  }
  return r;
}

// Compares one decode result; names the case, the sequence, the head and the
// dim at fault.
inline void ExpectDecodeMatches(const std::vector<float>& out, const std::vector<float>& lse,
                                const Reference& want, int n_heads, int head_dim,
                                const std::string& what) {
  ASSERT_EQ(out.size(), want.out.size());
  double worst = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const size_t b = i / (static_cast<size_t>(n_heads) * head_dim);
    const size_t h = i / head_dim % n_heads, d = i % head_dim;
    ASSERT_TRUE(std::isfinite(out[i]))
        << what << ": non-finite out at seq " << b << " head " << h << " dim " << d;
    const double err = std::abs(static_cast<double>(out[i]) - want.out[i]);
    ASSERT_LE(err, kDecodeAtol + kDecodeRtol * std::abs(want.out[i]))
        << what << ": out at seq " << b << " head " << h << " dim " << d << " is " << out[i]
        << ", want " << want.out[i];
    worst = std::max(worst, err / (1.0 + std::abs(want.out[i])));
  }
  for (size_t i = 0; i < lse.size(); ++i) {
    const size_t b = i / n_heads, h = i % n_heads;
    if (std::isinf(want.lse[i])) {
      ASSERT_TRUE(std::isinf(lse[i]) && lse[i] < 0)
          << what << ": lse of padding seq " << b << " head " << h << " is " << lse[i];
      continue;
    }
    ASSERT_TRUE(std::isfinite(lse[i])) << what << ": non-finite lse at seq " << b << " head " << h;
    ASSERT_LE(std::abs(static_cast<double>(lse[i]) - want.lse[i]),
              kDecodeAtol + kDecodeRtol * std::abs(want.lse[i]))
        << what << ": lse at seq " << b << " head " << h << " is " << lse[i] << ", want "
        << want.lse[i];
  }
  std::printf("  %s: max |err| / (1 + |want|) = %.2e\n", what.c_str(), worst);
}

inline std::vector<int> MixedLens(int batch, int max_len, uint32_t seed, int zeros_every) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> len(1, max_len);
  std::vector<int> lens(batch);
  for (int b = 0; b < batch; ++b) lens[b] = zeros_every > 0 && b % zeros_every == 2 ? 0 : len(rng);
  lens[0] = max_len;
  return lens;
}

}  // namespace moemesh::testing_cuda

#endif  // MOEMESH_HAVE_CUDA
