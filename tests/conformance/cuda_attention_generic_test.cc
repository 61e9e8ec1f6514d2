// The generic attention path (kernels/cuda/attention_generic.h: head sizes other than 64 and
// 128) through the public AppendKv / DecodeAttention / PrefillAttention, against
// ref::PagedAttention at head_dim 8, 12, 24 and 80. Skipped, saying why, without a GPU.
#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ref/paged_attention.h"
#include "tests/conformance/cuda_test_util.h"

#ifdef MOEMESH_HAVE_CUDA
#include "kernels/cuda/attention.h"
#endif

namespace moemesh {
namespace {

using testing_cuda::ExpectClose;
using testing_cuda::Random;
using testing_cuda::RoundBf16;
#ifdef MOEMESH_HAVE_CUDA
using testing_cuda::DeviceBuffer;
#endif

struct GenericCase {
  int head_dim, heads, kv_heads, block_size, window;
};

class CudaAttentionGeneric : public ::testing::TestWithParam<GenericCase> {};

TEST_P(CudaAttentionGeneric, AppendDecodeAndPrefillMatchTheReference) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const GenericCase c = GetParam();
  const int D = c.head_dim, bs = c.block_size;
  const std::vector<int> kv_lens = {1, 37, 97};   // per sequence: tokens in the cache
  const std::vector<int> q_lens = {1, 5, 97};     // prefill: the last q_len of them
  const int seqs = static_cast<int>(kv_lens.size());
  const int max_blocks = (97 + bs - 1) / bs;
  const int num_blocks = seqs * max_blocks + 3;
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(7));
  std::vector<int32_t> tables(seqs * max_blocks);
  for (int i = 0; i < seqs * max_blocks; ++i) tables[i] = perm[i];
  // Reference pools (NHD fp32, bf16-rounded values) and the device pools filled by AppendKv.
  const int64_t row = static_cast<int64_t>(c.kv_heads) * D;
  std::vector<float> k_ref(static_cast<size_t>(num_blocks) * bs * row, 0.0f), v_ref = k_ref;
  DeviceBuffer<__nv_bfloat16> dk(k_ref.size()), dv(k_ref.size());
  cuda::PagedKv cache{dk.ptr, dv.ptr, num_blocks, bs, c.kv_heads, D};
  for (int s = 0; s < seqs; ++s) {
    auto kn = Random(kv_lens[s] * row, 10 + s), vn = Random(kv_lens[s] * row, 20 + s);
    std::vector<int32_t> slots;
    for (int p = 0; p < kv_lens[s]; ++p) slots.push_back(tables[s * max_blocks + p / bs] * bs + p % bs);
    slots.push_back(-1);  // skipped
    kn.resize(kn.size() + row, 1e30f);
    vn.resize(vn.size() + row, 1e30f);
    DeviceBuffer<float> dkn(kn), dvn(vn);
    DeviceBuffer<int32_t> dslots(slots);
    cuda::AppendKv(cache, dkn.ptr, dvn.ptr, dslots.ptr, kv_lens[s] + 1, nullptr);
    for (auto& x : kn) x = RoundBf16(x);
    for (auto& x : vn) x = RoundBf16(x);
    ref::WriteKv(k_ref.data(), v_ref.data(), tables.data() + s * max_blocks, bs, 0, kv_lens[s],
                 c.kv_heads, D, kn.data(), vn.data());
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  // Decode: one query per sequence.
  {
    const auto q = Random(seqs * c.heads * D, 3);
    std::vector<float> want(q.size());
    for (int s = 0; s < seqs; ++s) {
      ref::PagedAttention(q.data() + s * c.heads * D, k_ref.data(), v_ref.data(),
                          tables.data() + s * max_blocks, bs, want.data() + s * c.heads * D, 1,
                          kv_lens[s], c.heads, c.kv_heads, D, scale, c.window);
    }
    DeviceBuffer<float> dq(q), dout(q.size());
    DeviceBuffer<int32_t> dt(tables), dl(std::vector<int32_t>(kv_lens.begin(), kv_lens.end()));
    cuda::DecodeParams p;
    p.q = dq.ptr;
    p.out = dout.ptr;
    p.block_tables = dt.ptr;
    p.kv_lens = dl.ptr;
    p.batch = seqs;
    p.n_heads = c.heads;
    p.max_blocks_per_seq = max_blocks;
    p.max_kv_len = 97;
    p.scale = scale;
    p.window = c.window;
    const size_t ws_bytes = cuda::DecodeWorkspaceBytes(seqs, c.heads, D, 97);
    DeviceBuffer<char> ws(std::max<size_t>(ws_bytes, 1));
    cuda::DecodeAttention(cache, p, ws.ptr, ws_bytes, nullptr);
    ExpectClose(dout.ToHost(), want, 1e-5, 1e-5, "decode");
  }
  // Prefill: packed rows with a gap row between sequences that must stay untouched.
  {
    std::vector<int32_t> q_start;
    int rows = 0;
    for (int s = 0; s < seqs; ++s) {
      q_start.push_back(rows);
      rows += q_lens[s] + 1;
    }
    const auto q = Random(rows * c.heads * D, 4);
    std::vector<float> want(q.size(), -7.0f);
    for (int s = 0; s < seqs; ++s) {
      ref::PagedAttention(q.data() + q_start[s] * c.heads * D, k_ref.data(), v_ref.data(),
                          tables.data() + s * max_blocks, bs, want.data() + q_start[s] * c.heads * D,
                          q_lens[s], kv_lens[s], c.heads, c.kv_heads, D, scale, c.window);
    }
    DeviceBuffer<float> dq(q), dout(want.size());
    std::vector<float> sentinel(want.size(), -7.0f);
    MM_CUDA_CHECK(cudaMemcpy(dout.ptr, sentinel.data(), sentinel.size() * 4, cudaMemcpyHostToDevice));
    DeviceBuffer<int32_t> dt(tables), dstart(q_start), dql(std::vector<int32_t>(q_lens.begin(), q_lens.end())),
        dkl(std::vector<int32_t>(kv_lens.begin(), kv_lens.end()));
    cuda::PrefillParams p;
    p.q = dq.ptr;
    p.out = dout.ptr;
    p.q_start = dstart.ptr;
    p.q_lens = dql.ptr;
    p.kv_lens = dkl.ptr;
    p.block_tables = dt.ptr;
    p.batch = seqs;
    p.n_heads = c.heads;
    p.max_blocks_per_seq = max_blocks;
    p.max_q_len = 97;
    p.scale = scale;
    p.window = c.window;
    cuda::PrefillAttention(cache, p, nullptr);
    ExpectClose(dout.ToHost(), want, 1e-5, 1e-5, "prefill");
  }
#endif
}

INSTANTIATE_TEST_SUITE_P(HeadSizes, CudaAttentionGeneric,
                         ::testing::Values(GenericCase{8, 6, 2, 4, 0}, GenericCase{12, 5, 1, 16, 0},
                                           GenericCase{24, 3, 1, 5, 0}, GenericCase{16, 8, 8, 16, 7},
                                           GenericCase{80, 4, 2, 16, 0}),
                         [](const auto& info) {
                           const GenericCase& c = info.param;
                           return "d" + std::to_string(c.head_dim) + "_h" + std::to_string(c.heads) +
                                  "_kv" + std::to_string(c.kv_heads) + "_bs" + std::to_string(c.block_size) +
                                  "_w" + std::to_string(c.window);
                         });

}  // namespace
}  // namespace moemesh
