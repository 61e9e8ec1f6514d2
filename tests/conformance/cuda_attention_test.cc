// CUDA paged-KV append and GQA decode attention (kernels/cuda/attention.h) against the scalar
// reference ref::AttentionLse (fp32 math in double on the same bf16-rounded K/V), at awkward
// sizes, with NaN-poisoned pool blocks and table entries that a correct kernel never reads.
// Without a GPU (or a CUDA build) the CUDA cases are skipped with the reason; the host-side
// FastDivisor cases run everywhere.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/fast_div.h"
#include "kernels/ref/attention_lse.h"
#include "tests/conformance/cuda_test_util.h"

#ifdef MOEMESH_HAVE_CUDA
#include "kernels/cuda/attention.h"
#include "tests/conformance/delayed_copy.h"
#endif

namespace moemesh {
namespace {

using testing_cuda::RoundBf16;

// ---------------------------------------------------------------------------------------------
// FastDivisor (host twin of the device path the kernels use for position -> block).

TEST(FastDivisor, MatchesIntegerDivision) {
  std::vector<uint32_t> divisors;
  for (uint32_t d = 1; d <= 300; ++d) divisors.push_back(d);
  for (uint32_t d :
       {511u, 1000u, 4096u, 65537u, (1u << 20) + 7, (1u << 30) + 1, (1u << 31) - 1, 1u << 31}) {
    divisors.push_back(d);
  }
  std::mt19937 rng(42);
  std::uniform_int_distribution<uint32_t> big(0, (1u << 31) - 1);
  for (uint32_t d : divisors) {
    const cuda::FastDivisor f(d);
    for (uint32_t n = 0; n < 5000; ++n) ASSERT_EQ(f.Div(n), n / d) << n << " / " << d;
    for (uint32_t n : {(1u << 31) - 1, (1u << 31) - 2, (1u << 30), d - 1, d, d + 1, 2 * d - 1}) {
      if (n < (1u << 31)) {
        ASSERT_EQ(f.Div(n), n / d) << n << " / " << d;
      }
    }
    for (int i = 0; i < 2000; ++i) {
      const uint32_t n = big(rng);
      ASSERT_EQ(f.Div(n), n / d) << n << " / " << d;
    }
  }
}

#ifdef MOEMESH_HAVE_CUDA

using testing_cuda::DeviceBuffer;
using testing_cuda::Random;
using testing_cuda::ToBf16Host;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kAtol = 1e-4;  // fp32-class: a single bf16 rounding of q or P misses this
constexpr double kRtol = 1e-4;

// A paged cache in the kernel's HND layout, built on the host: sequence b's position p is row
// p % block_size of block table[b][p / block_size]. Blocks are handed out in shuffled order;
// unused blocks, unused rows and the poison block behind unused table entries hold NaN.
struct HostCache {
  int kv_heads, head_dim, block_size, num_blocks, max_blocks_per_seq;
  std::vector<float> k_pool, v_pool;  // bf16 values (or NaN) held as float
  std::vector<int32_t> tables;        // [batch, max_blocks_per_seq]

  int64_t Offset(int32_t block, int head, int row) const {
    return ((static_cast<int64_t>(block) * kv_heads + head) * block_size + row) * head_dim;
  }
};

// k[b], v[b]: [len_b, kv_heads, head_dim], already bf16-exact.
HostCache BuildCache(const std::vector<std::vector<float>>& k,
                     const std::vector<std::vector<float>>& v, const std::vector<int>& lens,
                     int max_kv_len, int kv_heads, int head_dim, int block_size, uint32_t seed) {
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
cuda::PagedKv DeviceCache(const HostCache& hc, __nv_bfloat16* k, __nv_bfloat16* v) {
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
cuda::DecodeParams BasicParams(const HostCache& hc, const float* q, float* out, float* lse,
                               const int32_t* tables, const int32_t* lens, int batch, int n_heads,
                               int max_kv_len, float scale) {
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

std::vector<float> RandomBf16(size_t n, uint32_t seed) {
  std::vector<float> x = Random(n, seed);
  for (float& f : x) f = RoundBf16(f);
  return x;
}

struct DecodeCase {
  std::string name;  // says the shape: batch, contexts, KV heads, group, head_dim, block size
  std::vector<int> kv_lens;
  int kv_heads = 1;
  int group = 8;
  int head_dim = 128;
  int block_size = 16;
  int window = 0;
  int max_kv_len = 0;  // host bound; 0 = the largest kv_len
  int max_splits = 0;
  cuda::DecodeParams::SplitMerge split_merge = cuda::DecodeParams::SplitMerge::kAuto;
  float scale = 0.0f;  // 0 = 1 / sqrt(head_dim)
  float q_stddev = 1.0f;
  bool graph = false;  // also capture into a CUDA graph and replay with new q and lengths
  bool overlap = true;       // DecodeParams::overlap
  int prefetch_tokens = 256;  // DecodeParams::overlap_prefetch_tokens
};

std::ostream& operator<<(std::ostream& os, const DecodeCase& c) { return os << c.name; }

struct Reference {
  std::vector<float> out, lse;
};

Reference ReferenceDecode(const std::vector<float>& q, const std::vector<std::vector<float>>& k,
                          const std::vector<std::vector<float>>& v, const std::vector<int>& lens,
                          int n_heads, int kv_heads, int head_dim, float scale, int window) {
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

// Compares one decode result; names the case, the sequence, the head and the dim at fault.
void ExpectDecodeMatches(const std::vector<float>& out, const std::vector<float>& lse,
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
    ASSERT_LE(err, kAtol + kRtol * std::abs(want.out[i]))
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
              kAtol + kRtol * std::abs(want.lse[i]))
        << what << ": lse at seq " << b << " head " << h << " is " << lse[i] << ", want "
        << want.lse[i];
  }
  std::printf("  %s: max |err| / (1 + |want|) = %.2e\n", what.c_str(), worst);
}

class CudaDecodeAttention : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(CudaDecodeAttention, MatchesReference) {
  MM_REQUIRE_CUDA();
  const DecodeCase& c = GetParam();
  const int batch = static_cast<int>(c.kv_lens.size());
  const int n_heads = c.kv_heads * c.group;
  const int d = c.head_dim;
  const int longest = *std::max_element(c.kv_lens.begin(), c.kv_lens.end());
  const int max_kv_len = c.max_kv_len > 0 ? c.max_kv_len : longest;
  const float scale = c.scale > 0 ? c.scale : 1.0f / std::sqrt(static_cast<float>(d));
  const size_t kv_row = static_cast<size_t>(c.kv_heads) * d;

  std::vector<std::vector<float>> k(batch), v(batch);
  for (int b = 0; b < batch; ++b) {
    k[b] = RandomBf16(c.kv_lens[b] * kv_row, 100 + b);
    v[b] = RandomBf16(c.kv_lens[b] * kv_row, 200 + b);
  }
  const HostCache hc =
      BuildCache(k, v, c.kv_lens, max_kv_len, c.kv_heads, d, c.block_size, 7 + batch);
  DeviceBuffer<__nv_bfloat16> k_pool(ToBf16Host(hc.k_pool)), v_pool(ToBf16Host(hc.v_pool));
  DeviceBuffer<int32_t> tables(hc.tables),
      lens(std::vector<int32_t>(c.kv_lens.begin(), c.kv_lens.end()));
  const std::vector<float> q1 = Random(batch * n_heads * d, 300, c.q_stddev);
  const std::vector<float> q2 = Random(batch * n_heads * d, 301, c.q_stddev);
  DeviceBuffer<float> q(q1), out(batch * n_heads * d), lse(batch * n_heads);

  const cuda::PagedKv cache = DeviceCache(hc, k_pool.ptr, v_pool.ptr);
  cuda::DecodeParams p = BasicParams(hc, q.ptr, out.ptr, lse.ptr, tables.ptr, lens.ptr, batch,
                                     n_heads, max_kv_len, scale);
  p.window = c.window;
  p.max_splits = c.max_splits;
  p.split_merge = c.split_merge;
  p.overlap = c.overlap;
  p.overlap_prefetch_tokens = c.prefetch_tokens;

  const size_t ws_bytes = cuda::DecodeWorkspaceBytes(batch, n_heads, d, max_kv_len);
  DeviceBuffer<unsigned char> ws(std::max<size_t>(ws_bytes, 1));  // zero-filled
  std::printf("  %s: %d split(s) per (sequence, KV head) merged %s, workspace %zu bytes\n",
              c.name.c_str(), cuda::DecodeSplits(cache, p),
              cuda::DecodeClusterMerge(cache, p) ? "in a cluster" : "through global memory",
              ws_bytes);

  // Twice on one workspace: the second call proves the merge counters were reset.
  for (int pass = 0; pass < 2; ++pass) {
    const std::vector<float>& qh = pass == 0 ? q1 : q2;
    MM_CUDA_CHECK(cudaMemcpy(q.ptr, qh.data(), qh.size() * 4, cudaMemcpyHostToDevice));
    MM_CUDA_CHECK(cudaMemset(out.ptr, 0xff, out.n * 4));  // NaN: every output must be written
    MM_CUDA_CHECK(cudaMemset(lse.ptr, 0xff, lse.n * 4));
    cuda::DecodeAttention(cache, p, ws_bytes ? ws.ptr : nullptr, ws_bytes, nullptr);
    MM_CUDA_CHECK(cudaDeviceSynchronize());
    const Reference want =
        ReferenceDecode(qh, k, v, c.kv_lens, n_heads, c.kv_heads, d, scale, c.window);
    ExpectDecodeMatches(out.ToHost(), lse.ToHost(), want, n_heads, d,
                        c.name + " call " + std::to_string(pass + 1));
    if (HasFatalFailure()) return;
  }

  if (!c.graph) return;
  // Captured once; replayed with new queries and shorter lengths (read on the device).
  cudaStream_t stream;
  MM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  MM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  cuda::DecodeAttention(cache, p, ws_bytes ? ws.ptr : nullptr, ws_bytes, stream);
  MM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  MM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  std::vector<int> lens2 = c.kv_lens;
  for (int b = 0; b < batch; ++b) lens2[b] = b % 3 == 1 ? 0 : lens2[b] * 2 / 3 + (b % 2);
  for (int replay = 0; replay < 2; ++replay) {
    const std::vector<float>& qh = replay == 0 ? q2 : q1;
    const std::vector<int>& lh = replay == 0 ? lens2 : c.kv_lens;
    MM_CUDA_CHECK(cudaMemcpy(q.ptr, qh.data(), qh.size() * 4, cudaMemcpyHostToDevice));
    const std::vector<int32_t> l32(lh.begin(), lh.end());
    MM_CUDA_CHECK(cudaMemcpy(lens.ptr, l32.data(), l32.size() * 4, cudaMemcpyHostToDevice));
    MM_CUDA_CHECK(cudaMemset(out.ptr, 0xff, out.n * 4));
    MM_CUDA_CHECK(cudaMemset(lse.ptr, 0xff, lse.n * 4));
    MM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    MM_CUDA_CHECK(cudaStreamSynchronize(stream));
    const Reference want = ReferenceDecode(qh, k, v, lh, n_heads, c.kv_heads, d, scale, c.window);
    ExpectDecodeMatches(out.ToHost(), lse.ToHost(), want, n_heads, d,
                        c.name + " graph replay " + std::to_string(replay + 1));
    if (HasFatalFailure()) break;
  }
  MM_CUDA_CHECK(cudaGraphExecDestroy(exec));
  MM_CUDA_CHECK(cudaGraphDestroy(graph));
  MM_CUDA_CHECK(cudaStreamDestroy(stream));
}

std::vector<int> MixedLens(int batch, int max_len, uint32_t seed, int zeros_every) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> len(1, max_len);
  std::vector<int> lens(batch);
  for (int b = 0; b < batch; ++b) lens[b] = zeros_every > 0 && b % zeros_every == 2 ? 0 : len(rng);
  lens[0] = max_len;
  return lens;
}

DecodeCase Case(std::string name, std::vector<int> lens, int kv_heads, int group, int head_dim,
                int block_size) {
  DecodeCase c;
  c.name = std::move(name);
  c.kv_lens = std::move(lens);
  c.kv_heads = kv_heads;
  c.group = group;
  c.head_dim = head_dim;
  c.block_size = block_size;
  return c;
}

std::vector<DecodeCase> DecodeCases() {
  std::vector<DecodeCase> cases;
  cases.push_back(Case("b1_ctx1_kv1_g8_d128_bs16", {1}, 1, 8, 128, 16));
  cases.push_back(Case("b1_ctx97_kv2_g6_d64_bs7", {97}, 2, 6, 64, 7));
  cases.push_back(Case("b1_ctx4099_kv1_g8_d128_bs16", {4099}, 1, 8, 128, 16));
  cases.push_back(Case("b1_ctx4099_kv2_g6_d128_bs5", {4099}, 2, 6, 128, 5));
  cases.push_back(Case("b1_ctx4099_kv8_g1_d64_bs1", {4099}, 8, 1, 64, 1));
  cases.push_back(Case("b3_ctx4099_1_97_kv2_g1_d128_bs16", {4099, 1, 97}, 2, 1, 128, 16));
  cases.push_back(Case("b3_ctx97_0_4099_kv1_g8_d64_bs7_padding", {97, 0, 4099}, 1, 8, 64, 7));
  cases.push_back(
      Case("b17_ctx1to4099_kv2_g8_d128_bs16_padding", MixedLens(17, 4099, 5, 5), 2, 8, 128, 16));
  cases.push_back(Case("b17_ctx97_kv4_g4_d64_bs16", std::vector<int>(17, 97), 4, 4, 64, 16));
  cases.push_back(Case("b17_ctx1_kv2_g6_d128_bs7", std::vector<int>(17, 1), 2, 6, 128, 7));
  {
    DecodeCase c =
        Case("b3_ctx4099_3000_97_kv1_g5_d128_bs16_window1000", {4099, 3000, 97}, 1, 5, 128, 16);
    c.window = 1000;
    cases.push_back(c);
  }
  {
    DecodeCase c = Case("b2_ctx97_4_kv2_g8_d128_bs7_window5", {97, 4}, 2, 8, 128, 7);
    c.window = 5;
    cases.push_back(c);
  }
  cases.push_back(Case("b2_ctx300_257_kv1_g16_d64_bs16", {300, 257}, 1, 16, 64, 16));
  cases.push_back(Case("b4_ctx0_kv1_g8_d128_bs16_all_padding", {0, 0, 0, 0}, 1, 8, 128, 16));
  {
    DecodeCase c = Case("b3_ctx1000_kv1_g8_d128_bs16_one_split", {1000, 999, 17}, 1, 8, 128, 16);
    c.max_splits = 1;
    cases.push_back(c);
  }
  {
    DecodeCase c =
        Case("b5_ctx1to500_bound8192_kv2_g6_d128_bs16", MixedLens(5, 500, 9, 0), 2, 6, 128, 16);
    c.max_kv_len = 8192;
    cases.push_back(c);
  }
  {
    DecodeCase c = Case("b1_ctx33_kv1_g8_d64_bs16_sharp_softmax", {33}, 1, 8, 64, 16);
    c.scale = 1.0f;
    c.q_stddev = 2.0f;
    cases.push_back(c);
  }
  {
    DecodeCase c =
        Case("b8_ctx4096_kv1_g8_d128_bs16_graph", std::vector<int>(8, 4096), 1, 8, 128, 16);
    c.graph = true;
    cases.push_back(c);
  }
  {  // the same two with the merge through global memory (the others merge in clusters where
     // their splits fit in one)
    DecodeCase c = Case("b8_ctx4096_kv1_g8_d128_bs16_graph_global_merge",
                        std::vector<int>(8, 4096), 1, 8, 128, 16);
    c.graph = true;
    c.split_merge = cuda::DecodeParams::SplitMerge::kGlobal;
    cases.push_back(c);
    c = Case("b17_ctx1to4099_kv2_g8_d128_bs16_padding_global_merge", MixedLens(17, 4099, 5, 5), 2,
             8, 128, 16);
    c.split_merge = cuda::DecodeParams::SplitMerge::kGlobal;
    cases.push_back(c);
  }
  {  // 5 splits: a cluster whose size does not divide the head dims evenly
    DecodeCase c =
        Case("b2_ctx300_290_kv1_g3_d64_bs16_five_splits_graph", {300, 290}, 1, 3, 64, 16);
    c.max_splits = 5;
    c.graph = true;
    cases.push_back(c);
  }
  {
    DecodeCase c =
        Case("b3_ctx2000_kv2_g6_d64_bs7_window300_graph", {2000, 1500, 301}, 2, 6, 64, 7);
    c.window = 300;
    c.graph = true;
    cases.push_back(c);
  }
  {  // an ordinary launch, and an overlapped one that prefetches nothing (the others prefetch)
    DecodeCase c = Case("b17_ctx1to4099_kv2_g8_d128_bs16_padding_graph_no_overlap",
                        MixedLens(17, 4099, 6, 5), 2, 8, 128, 16);
    c.graph = true;
    c.overlap = false;
    cases.push_back(c);
    c = Case("b8_ctx4096_kv1_g8_d128_bs16_graph_no_prefetch", std::vector<int>(8, 4096), 1, 8,
             128, 16);
    c.graph = true;
    c.prefetch_tokens = 0;
    cases.push_back(c);
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaDecodeAttention, ::testing::ValuesIn(DecodeCases()),
                         [](const ::testing::TestParamInfo<DecodeCase>& info) {
                           return info.param.name;
                         });

// One workspace, zero-filled once, shared by a sequence of calls of different shapes (one- and
// two-level merges, both head sizes, padding rows, a window, a split cap) in an order that puts
// each kind of call after other kinds: every call must leave the merge counters at zero for
// whichever call comes next, and must find its partial states where no other call keeps
// counters. Each call's output is checked against the reference.
TEST(CudaAttention, WorkspaceSharedAcrossShapesWithoutRezeroing) {
  MM_REQUIRE_CUDA();
  std::vector<DecodeCase> calls;
  calls.push_back(Case("ws_b1_ctx4099_kv1_g8_d128_bs16_two_level", {4099}, 1, 8, 128, 16));
  calls.push_back(Case("ws_b8_ctx4096_kv1_g8_d128_bs16", std::vector<int>(8, 4096), 1, 8, 128, 16));
  calls.push_back(Case("ws_b2_ctx300_257_kv1_g16_d64_bs16", {300, 257}, 1, 16, 64, 16));
  calls.push_back(
      Case("ws_b17_ctx1to4099_kv2_g8_d128_bs16_padding", MixedLens(17, 4099, 6, 5), 2, 8, 128, 16));
  {
    DecodeCase c = Case("ws_b3_ctx2000_kv2_g6_d64_bs7_window300", {2000, 1500, 301}, 2, 6, 64, 7);
    c.window = 300;
    calls.push_back(c);
  }
  {
    DecodeCase c = Case("ws_b1_ctx1000_kv1_g6_d128_bs16_cap12", {1000}, 1, 6, 128, 16);
    c.max_splits = 12;
    calls.push_back(c);
  }
  calls.push_back(Case("ws_b1_ctx4099_kv8_g1_d64_bs1", {4099}, 8, 1, 64, 1));
  calls.push_back(calls[0]);  // two-level again, after single-level calls of other shapes
  calls.push_back(calls[1]);

  // Sized for the largest bounds of every call (batch 17, 16 heads, 4099 tokens), either head size.
  size_t ws_bytes = 0;
  for (int d : {64, 128}) {
    ws_bytes = std::max(ws_bytes, cuda::DecodeWorkspaceBytes(17, 16, d, 4099));
  }
  ASSERT_GT(ws_bytes, 0u);
  DeviceBuffer<unsigned char> ws(ws_bytes);  // zero-filled once, at allocation

  for (size_t n = 0; n < calls.size(); ++n) {
    const DecodeCase& c = calls[n];
    const int batch = static_cast<int>(c.kv_lens.size());
    const int n_heads = c.kv_heads * c.group;
    const int d = c.head_dim;
    const int max_kv_len = *std::max_element(c.kv_lens.begin(), c.kv_lens.end());
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    const size_t kv_row = static_cast<size_t>(c.kv_heads) * d;
    std::vector<std::vector<float>> k(batch), v(batch);
    for (int b = 0; b < batch; ++b) {
      k[b] = RandomBf16(c.kv_lens[b] * kv_row, 500 + 10 * n + b);
      v[b] = RandomBf16(c.kv_lens[b] * kv_row, 700 + 10 * n + b);
    }
    const HostCache hc = BuildCache(k, v, c.kv_lens, max_kv_len, c.kv_heads, d, c.block_size,
                                    static_cast<uint32_t>(31 + n));
    DeviceBuffer<__nv_bfloat16> k_pool(ToBf16Host(hc.k_pool)), v_pool(ToBf16Host(hc.v_pool));
    DeviceBuffer<int32_t> tables(hc.tables),
        lens(std::vector<int32_t>(c.kv_lens.begin(), c.kv_lens.end()));
    const std::vector<float> qh = Random(batch * n_heads * d, static_cast<uint32_t>(900 + n));
    DeviceBuffer<float> q(qh), out(batch * n_heads * d), lse(batch * n_heads);
    MM_CUDA_CHECK(cudaMemset(out.ptr, 0xff, out.n * 4));  // NaN: every output must be written
    MM_CUDA_CHECK(cudaMemset(lse.ptr, 0xff, lse.n * 4));
    const cuda::PagedKv cache = DeviceCache(hc, k_pool.ptr, v_pool.ptr);
    cuda::DecodeParams p = BasicParams(hc, q.ptr, out.ptr, lse.ptr, tables.ptr, lens.ptr, batch,
                                       n_heads, max_kv_len, scale);
    p.window = c.window;
    p.max_splits = c.max_splits;
    const std::string what = "call " + std::to_string(n + 1) + " (" + c.name + ")";
    std::printf("  %s: %d split(s) per (sequence, KV head)\n", what.c_str(),
                cuda::DecodeSplits(cache, p));
    cuda::DecodeAttention(cache, p, ws.ptr, ws_bytes, nullptr);
    MM_CUDA_CHECK(cudaDeviceSynchronize());
    const Reference want =
        ReferenceDecode(qh, k, v, c.kv_lens, n_heads, c.kv_heads, d, scale, c.window);
    ExpectDecodeMatches(out.ToHost(), lse.ToHost(), want, n_heads, d, what);
    if (HasFatalFailure()) return;
  }
}

// ---------------------------------------------------------------------------------------------
// AppendKv: exact bf16 rounding at the slots, slot -1 skipped, other rows untouched.

struct AppendCase {
  std::string name;
  int64_t n;
  int kv_heads, head_dim, block_size, num_blocks;
  bool misaligned;  // inputs offset by one float: the scalar path
};

std::ostream& operator<<(std::ostream& os, const AppendCase& c) { return os << c.name; }

class CudaAppendKv : public ::testing::TestWithParam<AppendCase> {};

uint16_t Bits(__nv_bfloat16 x) {
  uint16_t u;
  std::memcpy(&u, &x, 2);
  return u;
}

TEST_P(CudaAppendKv, WritesRoundedRowsAtSlots) {
  MM_REQUIRE_CUDA();
  const AppendCase& c = GetParam();
  const int64_t row = static_cast<int64_t>(c.kv_heads) * c.head_dim;
  const int64_t capacity = static_cast<int64_t>(c.num_blocks) * c.block_size;
  std::vector<int32_t> slot_pool(capacity);
  std::iota(slot_pool.begin(), slot_pool.end(), 0);
  std::mt19937 rng(11);
  std::shuffle(slot_pool.begin(), slot_pool.end(), rng);
  std::vector<int32_t> slots(slot_pool.begin(), slot_pool.begin() + c.n);
  for (int64_t t = 0; t < c.n; t += 4) slots[t] = -1;  // padding tokens of a captured batch
  const std::vector<float> k = Random(c.n * row, 12, 3.0f), v = Random(c.n * row, 13, 3.0f);

  const int64_t pool_elems = capacity * row;
  std::vector<__nv_bfloat16> sentinel(pool_elems);
  for (int64_t i = 0; i < pool_elems; ++i) sentinel[i] = __float2bfloat16_rn(-1000.0f - i % 7);
  DeviceBuffer<__nv_bfloat16> k_pool(sentinel), v_pool(sentinel);
  const int off = c.misaligned ? 1 : 0;
  std::vector<float> k_in(off, 0.0f), v_in(off, 0.0f);
  k_in.insert(k_in.end(), k.begin(), k.end());
  v_in.insert(v_in.end(), v.begin(), v.end());
  DeviceBuffer<float> k_dev(k_in), v_dev(v_in);
  DeviceBuffer<int32_t> slots_dev(slots);
  cuda::PagedKv cache;
  cache.k = k_pool.ptr;
  cache.v = v_pool.ptr;
  cache.num_blocks = c.num_blocks;
  cache.block_size = c.block_size;
  cache.kv_heads = c.kv_heads;
  cache.head_dim = c.head_dim;
  cuda::AppendKv(cache, k_dev.ptr + off, v_dev.ptr + off, slots_dev.ptr, c.n, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());

  std::vector<__nv_bfloat16> k_want = sentinel, v_want = sentinel;
  for (int64_t t = 0; t < c.n; ++t) {
    if (slots[t] < 0) continue;
    const int64_t block = slots[t] / c.block_size, in_block = slots[t] % c.block_size;
    for (int h = 0; h < c.kv_heads; ++h) {
      const int64_t dst = ((block * c.kv_heads + h) * c.block_size + in_block) * c.head_dim;
      for (int e = 0; e < c.head_dim; ++e) {
        k_want[dst + e] = __float2bfloat16_rn(k[t * row + h * c.head_dim + e]);
        v_want[dst + e] = __float2bfloat16_rn(v[t * row + h * c.head_dim + e]);
      }
    }
  }
  const std::vector<__nv_bfloat16> k_got = k_pool.ToHost(), v_got = v_pool.ToHost();
  for (int64_t i = 0; i < pool_elems; ++i) {
    ASSERT_TRUE(std::isfinite(__bfloat162float(k_got[i])) &&
                std::isfinite(__bfloat162float(v_got[i])))
        << c.name << ": non-finite pool element " << i;
    ASSERT_EQ(Bits(k_got[i]), Bits(k_want[i])) << c.name << ": k pool element " << i;
    ASSERT_EQ(Bits(v_got[i]), Bits(v_want[i])) << c.name << ": v pool element " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaAppendKv,
    ::testing::Values(AppendCase{"n37_kv2_d128_bs16", 37, 2, 128, 16, 5, false},
                      AppendCase{"n20_kv1_d64_bs7_misaligned", 20, 1, 64, 7, 4, true},
                      AppendCase{"n1000_kv8_d128_bs5", 1000, 8, 128, 5, 250, false},
                      AppendCase{"n3_kv3_d64_bs1_misaligned", 3, 3, 64, 1, 9, true}),
    [](const ::testing::TestParamInfo<AppendCase>& info) { return info.param.name; });

// AppendKv feeding DecodeAttention: a prefill chunk and then one token per sequence appended
// through slots, decoded, and compared to the reference on the bf16-rounded K/V.
TEST(CudaAttention, AppendThenDecode_b2_ctx50_kv2_g6_d64_bs5) {
  MM_REQUIRE_CUDA();
  const int batch = 2, kv_heads = 2, group = 6, d = 64, bs = 5, len = 50;
  const int n_heads = kv_heads * group;
  const int64_t row = static_cast<int64_t>(kv_heads) * d;
  const int blocks_per_seq = (len + bs - 1) / bs;
  const int num_blocks = batch * blocks_per_seq + 4;
  std::vector<int32_t> order(num_blocks);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(21);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int32_t> tables(order.begin(), order.begin() + batch * blocks_per_seq);

  std::vector<std::vector<float>> k(batch), v(batch);
  std::vector<float> k_all, v_all;  // [batch * len, kv_heads, d] in append order
  std::vector<int32_t> slots;
  for (int b = 0; b < batch; ++b) {
    k[b] = Random(len * row, 30 + b);
    v[b] = Random(len * row, 40 + b);
    k_all.insert(k_all.end(), k[b].begin(), k[b].end());
    v_all.insert(v_all.end(), v[b].begin(), v[b].end());
    for (int p = 0; p < len; ++p) {
      slots.push_back(tables[b * blocks_per_seq + p / bs] * bs + p % bs);
    }
  }
  slots.push_back(-1);  // a padding token appended last: must be skipped
  k_all.insert(k_all.end(), row, std::nanf(""));
  v_all.insert(v_all.end(), row, std::nanf(""));

  const int64_t pool = static_cast<int64_t>(num_blocks) * bs * row;
  DeviceBuffer<__nv_bfloat16> k_pool(ToBf16Host(std::vector<float>(pool, std::nanf("")))),
      v_pool(ToBf16Host(std::vector<float>(pool, std::nanf(""))));
  DeviceBuffer<float> k_dev(k_all), v_dev(v_all);
  DeviceBuffer<int32_t> slots_dev(slots), tables_dev(tables),
      lens_dev(std::vector<int32_t>(batch, len));
  cuda::PagedKv cache;
  cache.k = k_pool.ptr;
  cache.v = v_pool.ptr;
  cache.num_blocks = num_blocks;
  cache.block_size = bs;
  cache.kv_heads = kv_heads;
  cache.head_dim = d;
  cuda::AppendKv(cache, k_dev.ptr, v_dev.ptr, slots_dev.ptr, static_cast<int64_t>(slots.size()),
                 nullptr);

  const std::vector<float> q = Random(batch * n_heads * d, 50);
  DeviceBuffer<float> q_dev(q), out(batch * n_heads * d), lse(batch * n_heads);
  cuda::DecodeParams p;
  p.q = q_dev.ptr;
  p.out = out.ptr;
  p.lse = lse.ptr;
  p.block_tables = tables_dev.ptr;
  p.kv_lens = lens_dev.ptr;
  p.batch = batch;
  p.n_heads = n_heads;
  p.max_blocks_per_seq = blocks_per_seq;
  p.max_kv_len = len;
  p.scale = 0.125f;
  const size_t ws_bytes = cuda::DecodeWorkspaceBytes(batch, n_heads, d, len);
  DeviceBuffer<unsigned char> ws(std::max<size_t>(ws_bytes, 1));
  cuda::DecodeAttention(cache, p, ws_bytes ? ws.ptr : nullptr, ws_bytes, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());

  for (int b = 0; b < batch; ++b) {
    for (float& x : k[b]) x = RoundBf16(x);
    for (float& x : v[b]) x = RoundBf16(x);
  }
  const Reference want =
      ReferenceDecode(q, k, v, std::vector<int>(batch, len), n_heads, kv_heads, d, 0.125f, 0);
  ExpectDecodeMatches(out.ToHost(), lse.ToHost(), want, n_heads, d, "append_then_decode");
}

// An overlapped launch (DecodeParams::overlap) right after a kernel that, after a delay, writes
// everything the call reads: the queries, the lengths, the block tables and both pools. Before
// that kernel ends, the device holds other queries, shorter lengths, tables that point at a
// NaN block and NaN pools, so a call that used anything it read before waiting for the
// previous kernel fails the comparison. Eager on a stream, then captured with the writer into
// one graph (a programmatic edge) and replayed.
struct OverlapCase {
  std::string name;
  std::vector<int> kv_lens;
  int kv_heads, group, head_dim, block_size;
};

class CudaDecodeOverlap : public ::testing::TestWithParam<OverlapCase> {};

TEST_P(CudaDecodeOverlap, WaitsForThePreviousKernelsWrites) {
  MM_REQUIRE_CUDA();
  const OverlapCase& c = GetParam();
  const int batch = static_cast<int>(c.kv_lens.size());
  const int n_heads = c.kv_heads * c.group;
  const int d = c.head_dim;
  const int max_kv_len = *std::max_element(c.kv_lens.begin(), c.kv_lens.end());
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const size_t kv_row = static_cast<size_t>(c.kv_heads) * d;
  std::vector<std::vector<float>> k(batch), v(batch);
  for (int b = 0; b < batch; ++b) {
    k[b] = RandomBf16(c.kv_lens[b] * kv_row, 500 + b);
    v[b] = RandomBf16(c.kv_lens[b] * kv_row, 600 + b);
  }
  const HostCache hc = BuildCache(k, v, c.kv_lens, max_kv_len, c.kv_heads, d, c.block_size, 11);
  const std::vector<float> q_new = Random(batch * n_heads * d, 700);
  const std::vector<float> q_old = Random(batch * n_heads * d, 701);
  std::vector<int32_t> lens_new(c.kv_lens.begin(), c.kv_lens.end()), lens_old(lens_new);
  for (int32_t& l : lens_old) l /= 2;
  const std::vector<int32_t> tables_old(hc.tables.size(), 0);  // block 0: NaN until written
  const std::vector<float> nan_pool(hc.k_pool.size(), std::nanf(""));

  // What the call reads, and the writer's sources.
  DeviceBuffer<__nv_bfloat16> k_pool(ToBf16Host(nan_pool)), v_pool(ToBf16Host(nan_pool));
  DeviceBuffer<__nv_bfloat16> k_src(ToBf16Host(hc.k_pool)), v_src(ToBf16Host(hc.v_pool));
  DeviceBuffer<float> q(q_old), q_src(q_new), out(batch * n_heads * d), lse(batch * n_heads);
  DeviceBuffer<int32_t> lens(lens_old), lens_src(lens_new), tables(tables_old),
      tables_src(hc.tables);
  const cuda_test::CopyRegion regions[4] = {
      {q.ptr, q_src.ptr, q.n * sizeof(float)},
      {lens.ptr, lens_src.ptr, lens.n * sizeof(int32_t)},
      {tables.ptr, tables_src.ptr, tables.n * sizeof(int32_t)},
      {k_pool.ptr, k_src.ptr, k_pool.n * sizeof(__nv_bfloat16)}};
  const cuda_test::CopyRegion v_region = {v_pool.ptr, v_src.ptr, v_pool.n * sizeof(__nv_bfloat16)};
  auto reset = [&] {  // back to the old contents
    MM_CUDA_CHECK(cudaMemcpy(q.ptr, q_old.data(), q.n * 4, cudaMemcpyHostToDevice));
    MM_CUDA_CHECK(cudaMemcpy(lens.ptr, lens_old.data(), lens.n * 4, cudaMemcpyHostToDevice));
    MM_CUDA_CHECK(cudaMemcpy(tables.ptr, tables_old.data(), tables.n * 4, cudaMemcpyHostToDevice));
    const std::vector<__nv_bfloat16> nan_bf16 = ToBf16Host(nan_pool);
    MM_CUDA_CHECK(cudaMemcpy(k_pool.ptr, nan_bf16.data(), k_pool.n * 2, cudaMemcpyHostToDevice));
    MM_CUDA_CHECK(cudaMemcpy(v_pool.ptr, nan_bf16.data(), v_pool.n * 2, cudaMemcpyHostToDevice));
    MM_CUDA_CHECK(cudaMemset(out.ptr, 0xff, out.n * 4));
    MM_CUDA_CHECK(cudaMemset(lse.ptr, 0xff, lse.n * 4));
  };

  const cuda::PagedKv cache = DeviceCache(hc, k_pool.ptr, v_pool.ptr);
  cuda::DecodeParams p = BasicParams(hc, q.ptr, out.ptr, lse.ptr, tables.ptr, lens.ptr, batch,
                                     n_heads, max_kv_len, scale);
  p.overlap = true;
  const size_t ws_bytes = cuda::DecodeWorkspaceBytes(batch, n_heads, d, max_kv_len);
  DeviceBuffer<unsigned char> ws(std::max<size_t>(ws_bytes, 1));
  const Reference want =
      ReferenceDecode(q_new, k, v, c.kv_lens, n_heads, c.kv_heads, d, scale, 0);

  cudaStream_t stream;
  MM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto enqueue = [&] {
    cuda_test::DelayedCopy(&v_region, 1, 0, stream);
    cuda_test::DelayedCopy(regions, 4, 300, stream);  // the kernel the call overlaps
    cuda::DecodeAttention(cache, p, ws_bytes ? ws.ptr : nullptr, ws_bytes, stream);
  };
  reset();
  enqueue();
  MM_CUDA_CHECK(cudaStreamSynchronize(stream));
  ExpectDecodeMatches(out.ToHost(), lse.ToHost(), want, n_heads, d, c.name + " eager");
  if (HasFatalFailure()) return;

  cudaGraph_t graph;
  cudaGraphExec_t exec;
  MM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  enqueue();
  MM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  MM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 2; ++replay) {
    reset();
    MM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    MM_CUDA_CHECK(cudaStreamSynchronize(stream));
    ExpectDecodeMatches(out.ToHost(), lse.ToHost(), want, n_heads, d,
                        c.name + " graph replay " + std::to_string(replay + 1));
    if (HasFatalFailure()) break;
  }
  MM_CUDA_CHECK(cudaGraphExecDestroy(exec));
  MM_CUDA_CHECK(cudaGraphDestroy(graph));
  MM_CUDA_CHECK(cudaStreamDestroy(stream));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaDecodeOverlap,
    ::testing::Values(OverlapCase{"b8_ctx4096_kv1_g8_d128_bs16", std::vector<int>(8, 4096), 1, 8,
                                  128, 16},
                      OverlapCase{"b17_ctx1to4099_kv2_g8_d128_bs16_padding",
                                  MixedLens(17, 4099, 5, 5), 2, 8, 128, 16},
                      OverlapCase{"b3_ctx97_0_2000_kv1_g6_d64_bs7", {97, 0, 2000}, 1, 6, 64, 7}),
    [](const ::testing::TestParamInfo<OverlapCase>& info) { return info.param.name; });

#else  // !MOEMESH_HAVE_CUDA

TEST(CudaDecodeAttention, MatchesReference) { MM_REQUIRE_CUDA(); }
TEST(CudaAppendKv, WritesRoundedRowsAtSlots) { MM_REQUIRE_CUDA(); }
TEST(CudaDecodeOverlap, WaitsForThePreviousKernelsWrites) { MM_REQUIRE_CUDA(); }

#endif  // MOEMESH_HAVE_CUDA

}  // namespace
}  // namespace moemesh
