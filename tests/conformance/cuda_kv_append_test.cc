// CUDA paged-KV append (kernels/cuda/attention.h AppendKv) against exact bf16 rounding at the
// slots, and an append followed by a decode against the scalar reference. Without a GPU (or a
// CUDA build) the cases are skipped with the reason.
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
#endif

namespace moemesh {
namespace {

#ifdef MOEMESH_HAVE_CUDA

using testing_cuda::DeviceBuffer;
using testing_cuda::ExpectDecodeMatches;
using testing_cuda::Random;
using testing_cuda::Reference;
using testing_cuda::ReferenceDecode;
using testing_cuda::RoundBf16;
using testing_cuda::ToBf16Host;

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

#else  // !MOEMESH_HAVE_CUDA

TEST(CudaAppendKv, WritesRoundedRowsAtSlots) { MM_REQUIRE_CUDA(); }

#endif  // MOEMESH_HAVE_CUDA

}  // namespace
}  // namespace moemesh
