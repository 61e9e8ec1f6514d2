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
#include "tests/conformance/decode_test_util.h"
#endif

namespace moemesh {
namespace {


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

using testing_cuda::BasicParams;
using testing_cuda::BuildCache;
using testing_cuda::DeviceBuffer;
using testing_cuda::DeviceCache;
using testing_cuda::ExpectDecodeMatches;
using testing_cuda::HostCache;
using testing_cuda::MixedLens;
using testing_cuda::Random;
using testing_cuda::RandomBf16;
using testing_cuda::Reference;
using testing_cuda::ReferenceDecode;
using testing_cuda::ToBf16Host;


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
  int prefetch_tokens = -1;  // DecodeParams::overlap_prefetch_tokens (-1: automatic)
};

std::ostream& operator<<(std::ostream& os, const DecodeCase& c) { return os << c.name; }

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
  // Cache blocks of 32 and 48: whole 16-token tiles at offsets 16 and 32 inside a block (the
  // kernel's single-address copy path), and the partial last tiles.
  cases.push_back(Case("b3_ctx4099_1000_33_kv2_g8_d128_bs32", {4099, 1000, 33}, 2, 8, 128, 32));
  cases.push_back(Case("b2_ctx999_80_kv1_g6_d64_bs48", {999, 80}, 1, 6, 64, 48));
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
  {  // an ordinary launch, overlapped ones that prefetch nothing or whole shares (the others
     // prefetch the automatic amount)
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
    c.name = "b8_ctx4096_kv1_g8_d128_bs16_graph_prefetch_whole_share";
    c.prefetch_tokens = 1 << 20;
    cases.push_back(c);
  }
  {  // Long shares merged through global memory, the split counts of a 132-SM GPU: 33 splits in
     // one level of two row passes (lengths from 0 to 32K with partial last tiles, replayed with
     // shorter lengths: fewer active splits, some sequences a single split); 24 splits at
     // head_dim 64 with blocks of 7; a window; 44 splits of 5-row tiles (passes of 3 and 2 rows);
     // 256 and 198 splits in two levels.
    const std::vector<int> lens = {32768, 30001, 4099, 1, 0, 20000, 32767, 15003};
    DecodeCase c = Case("b8_ctx0to32768_kv1_g8_d128_bs16_graph", lens, 1, 8, 128, 16);
    c.graph = true;
    cases.push_back(c);
    c = Case("b16_ctx0to32768_kv1_g6_d64_bs7", MixedLens(16, 32768, 11, 5), 1, 6, 64, 7);
    cases.push_back(c);
    c = Case("b4_ctx20000to32000_kv2_g8_d128_bs16_window28000_graph", {30000, 20000, 28500, 32000},
             2, 8, 128, 16);
    c.window = 28000;
    c.graph = true;
    cases.push_back(c);
    c = Case("b6_ctx0to12288_kv1_g5_d128_bs16_graph", {12288, 0, 9000, 12000, 1, 7777}, 1, 5, 128,
             16);
    c.graph = true;
    cases.push_back(c);
    cases.push_back(Case("b1_ctx32768_kv1_g8_d128_bs16", {32768}, 1, 8, 128, 16));
    cases.push_back(Case("b2_ctx20000_17_kv1_g8_d64_bs16", {20000, 17}, 1, 8, 64, 16));
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

// The split plan of short, small-batch calls on a 132-SM GPU (H100 SXM, H200; 2 resident CTAs
// per SM): up to 4 (sequence, KV head) pairs take 16 splits each, merged in 16-CTA clusters;
// with 8 pairs, 16-CTA clusters would need almost every SM and 8-CTA clusters are faster
// (measured; see PlanSplits) while each split streams at most 512 tokens. No call is run.
TEST(CudaAttention, SmallGridClusterPlans) {
  MM_REQUIRE_CUDA();
  int device = 0, sms = 0;
  MM_CUDA_CHECK(cudaGetDevice(&device));
  MM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (sms != 132) GTEST_SKIP() << "the expected plans are for 132-SM GPUs; this one has " << sms;
  cuda::PagedKv cache;
  cache.block_size = 16;
  cache.head_dim = 128;
  struct Want {
    int batch, kv_heads, ctx, splits;
  };
  for (const Want& w : std::vector<Want>{{1, 1, 1024, 16},
                                         {1, 1, 4096, 16},
                                         {4, 1, 4096, 16},
                                         {2, 2, 1024, 16},
                                         {8, 1, 1024, 8},
                                         {8, 1, 4096, 8},
                                         {1, 8, 4096, 8},
                                         {2, 4, 1024, 8},
                                         {8, 1, 8192, 16}}) {
    cache.kv_heads = w.kv_heads;
    cuda::DecodeParams p;
    p.batch = w.batch;
    p.n_heads = w.kv_heads * 8;
    p.max_kv_len = w.ctx;
    p.max_blocks_per_seq = w.ctx / 16;
    const std::string what = std::to_string(w.batch) + " x " + std::to_string(w.ctx) + " x " +
                             std::to_string(w.kv_heads) + " KV heads";
    EXPECT_EQ(cuda::DecodeSplits(cache, p), w.splits) << what;
    EXPECT_TRUE(cuda::DecodeClusterMerge(cache, p)) << what;
  }
}

#else  // !MOEMESH_HAVE_CUDA

TEST(CudaDecodeAttention, MatchesReference) { MM_REQUIRE_CUDA(); }

#endif  // MOEMESH_HAVE_CUDA

}  // namespace
}  // namespace moemesh
