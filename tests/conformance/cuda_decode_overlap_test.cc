// DecodeAttention launched to overlap the previous kernel of its stream (DecodeParams::overlap,
// programmatic dependent launch) must still see everything that kernel writes. Without a GPU
// (or a CUDA build) the cases are skipped with the reason.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/conformance/cuda_test_util.h"

#ifdef MOEMESH_HAVE_CUDA
#include "kernels/cuda/attention.h"
#include "tests/conformance/decode_test_util.h"
#include "tests/conformance/delayed_copy.h"
#endif

namespace moemesh {
namespace {

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

  const testing_cuda::CapturedGraph graph(stream, enqueue);
  for (int replay = 0; replay < 2; ++replay) {
    reset();
    graph.Launch(stream);
    MM_CUDA_CHECK(cudaStreamSynchronize(stream));
    ExpectDecodeMatches(out.ToHost(), lse.ToHost(), want, n_heads, d,
                        c.name + " graph replay " + std::to_string(replay + 1));
    if (HasFatalFailure()) break;
  }
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

TEST(CudaDecodeOverlap, WaitsForThePreviousKernelsWrites) { MM_REQUIRE_CUDA(); }

#endif  // MOEMESH_HAVE_CUDA

}  // namespace
}  // namespace moemesh
