// CUDA causal prefill (cuda::PrefillAttention) against ref::PagedAttention at awkward shapes:
// mixed and chunked query lengths, GQA groups 1/4/6/8, head dims 64 and 128, windows, shuffled
// block tables, block sizes 1/5/16/128, with NaN/Inf checks. Unused cache slots and blocks hold
// NaN (a read past the visible keys poisons the output) and rows between sequences must keep
// their sentinel. Without a GPU (or a CUDA build) each case is skipped with the reason.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ref/paged_attention.h"
#include "tests/conformance/cuda_test_util.h"

#ifdef MOEMESH_HAVE_CUDA
#include "kernels/cuda/attention.h"
#endif

namespace moemesh {
namespace {

using testing_cuda::Random;
using testing_cuda::RoundBf16;

constexpr float kSentinel = -12345.5f;  // initial value of every output row
constexpr double kAtol = 1e-4;
constexpr double kRtol = 1e-4;

struct PrefillCase {
  std::string tag{};           // what the case is about; the shape is appended to the name
  std::vector<int> q_lens{};
  std::vector<int> kv_lens{};  // empty: kv_len = q_len (whole-prompt prefill)
  int n_heads = 1;
  int kv_heads = 1;
  int head_dim = 128;
  int block_size = 16;
  int window = 0;
  bool shuffle = false;  // shuffled physical blocks and shuffled sequence order in q
  int q_len_slack = 0;   // max_q_len passed as max(q_lens) + slack (a loose host bound)
  float scale = 0.0f;    // 0: 1 / sqrt(head_dim)

  int Batch() const { return static_cast<int>(q_lens.size()); }
  int KvLen(int b) const { return kv_lens.empty() ? q_lens[b] : kv_lens[b]; }
  float Scale() const { return scale != 0.0f ? scale : 1.0f / std::sqrt(float(head_dim)); }
};

std::string Join(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "x" : "") + std::to_string(v[i]);
  return s;
}

// Test name: tag, batch, query and kv lengths (listed up to 4 sequences, else the maxima),
// heads, head dim, block size, window, shuffling.
std::string CaseName(const PrefillCase& c) {
  std::vector<int> kv(c.Batch());
  for (int b = 0; b < c.Batch(); ++b) kv[b] = c.KvLen(b);
  std::string s = c.tag + "_b" + std::to_string(c.Batch());
  if (c.Batch() <= 4) {
    s += "_q" + Join(c.q_lens) + "_kv" + Join(kv);
  } else {
    s += "_qmax" + std::to_string(*std::max_element(c.q_lens.begin(), c.q_lens.end())) +
         "_kvmax" + std::to_string(*std::max_element(kv.begin(), kv.end()));
  }
  s += "_h" + std::to_string(c.n_heads) + "kv" + std::to_string(c.kv_heads) + "_d" +
       std::to_string(c.head_dim) + "_bs" + std::to_string(c.block_size);
  if (c.window > 0) s += "_win" + std::to_string(c.window);
  if (c.shuffle) s += "_shuf";
  return s;
}

// gtest prints a failing parameter with this instead of its bytes.
void PrintTo(const PrefillCase& c, std::ostream* os) { *os << CaseName(c); }

#ifdef MOEMESH_HAVE_CUDA
using testing_cuda::DeviceBuffer;

uint32_t Fnv1a(const std::string& s) {
  uint32_t h = 2166136261u;
  for (unsigned char ch : s) h = (h ^ ch) * 16777619u;
  return h;
}

// One case's inputs, in the reference's layouts and in the GPU's.
struct Problem {
  int rows = 0;                     // packed q rows, including gaps around the sequences
  int max_blocks_per_seq = 0;
  int num_blocks = 0;
  std::vector<int32_t> q_start, q_lens, kv_lens, tables;
  std::vector<int> owner;           // per packed row: its sequence, or -1 for a gap row
  std::vector<float> q;             // [rows, n_heads, head_dim]; gap rows are NaN
  std::vector<float> k_nhd, v_nhd;  // ref pools [blocks, block_size, kv_heads, head_dim]
  std::vector<float> k_hnd, v_hnd;  // same values as [blocks, kv_heads, block_size, head_dim]
};

Problem Build(const PrefillCase& c) {
  const int batch = c.Batch(), bs = c.block_size, kvh = c.kv_heads, d = c.head_dim;
  const uint32_t seed = Fnv1a(CaseName(c));
  std::mt19937 rng(seed);
  Problem pb;
  pb.q_lens.assign(c.q_lens.begin(), c.q_lens.end());
  for (int b = 0; b < batch; ++b) pb.kv_lens.push_back(c.KvLen(b));

  // Physical blocks: each sequence's blocks, plus one poison block (all NaN) that every unused
  // table entry points at.
  std::vector<int> n_blocks(batch);
  for (int b = 0; b < batch; ++b) {
    n_blocks[b] = (pb.kv_lens[b] + bs - 1) / bs;
    pb.num_blocks += n_blocks[b];
    pb.max_blocks_per_seq = std::max(pb.max_blocks_per_seq, n_blocks[b]);
  }
  pb.max_blocks_per_seq += 2;
  pb.num_blocks += 1;
  std::vector<int32_t> ids(pb.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  if (c.shuffle) std::shuffle(ids.begin(), ids.end(), rng);
  const int32_t poison = ids.back();
  pb.tables.assign(static_cast<size_t>(batch) * pb.max_blocks_per_seq, poison);
  for (int b = 0, next = 0; b < batch; ++b) {
    for (int i = 0; i < n_blocks[b]; ++i) pb.tables[b * pb.max_blocks_per_seq + i] = ids[next++];
  }

  // K/V: random, bf16-exact, written through the reference; everything else stays NaN.
  const size_t pool = static_cast<size_t>(pb.num_blocks) * bs * kvh * d;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  pb.k_nhd.assign(pool, nan);
  pb.v_nhd.assign(pool, nan);
  for (int b = 0; b < batch; ++b) {
    const size_t n = static_cast<size_t>(pb.kv_lens[b]) * kvh * d;
    std::vector<float> k = Random(n, seed + 2 * b + 1), v = Random(n, seed + 2 * b + 2);
    for (float& x : k) x = RoundBf16(x);
    for (float& x : v) x = RoundBf16(x);
    ref::WriteKv(pb.k_nhd.data(), pb.v_nhd.data(), &pb.tables[b * pb.max_blocks_per_seq], bs, 0,
                 pb.kv_lens[b], kvh, d, k.data(), v.data());
  }
  pb.k_hnd.resize(pool);
  pb.v_hnd.resize(pool);
  for (int blk = 0; blk < pb.num_blocks; ++blk) {
    for (int row = 0; row < bs; ++row) {
      for (int h = 0; h < kvh; ++h) {
        const size_t nhd = ((static_cast<size_t>(blk) * bs + row) * kvh + h) * d;
        const size_t hnd = ((static_cast<size_t>(blk) * kvh + h) * bs + row) * d;
        std::copy_n(&pb.k_nhd[nhd], d, &pb.k_hnd[hnd]);
        std::copy_n(&pb.v_nhd[nhd], d, &pb.v_hnd[hnd]);
      }
    }
  }

  // Packed q rows: a leading gap row, sequences in (maybe shuffled) order with gaps of 0, 1 or
  // 3 rows between them, a trailing gap row.
  std::vector<int> order(batch);
  std::iota(order.begin(), order.end(), 0);
  if (c.shuffle) std::shuffle(order.begin(), order.end(), rng);
  pb.q_start.assign(batch, 0);
  int cursor = 1;
  for (int i = 0; i < batch; ++i) {
    pb.q_start[order[i]] = cursor;
    cursor += pb.q_lens[order[i]] + (i % 3 == 0 ? 0 : i % 3 == 1 ? 1 : 3);
  }
  pb.rows = cursor + 1;
  pb.owner.assign(pb.rows, -1);
  for (int b = 0; b < batch; ++b) {
    for (int i = 0; i < pb.q_lens[b]; ++i) pb.owner[pb.q_start[b] + i] = b;
  }
  const size_t row_size = static_cast<size_t>(c.n_heads) * d;
  pb.q = Random(pb.rows * row_size, seed + 7919);
  for (int r = 0; r < pb.rows; ++r) {
    if (pb.owner[r] < 0) std::fill_n(&pb.q[r * row_size], row_size, nan);
  }
  return pb;
}

// The reference output; gap rows keep the sentinel.
std::vector<float> Reference(const PrefillCase& c, const Problem& pb) {
  const size_t row_size = static_cast<size_t>(c.n_heads) * c.head_dim;
  std::vector<float> out(pb.rows * row_size, kSentinel);
  for (int b = 0; b < c.Batch(); ++b) {
    ref::PagedAttention(&pb.q[pb.q_start[b] * row_size], pb.k_nhd.data(), pb.v_nhd.data(),
                        &pb.tables[b * pb.max_blocks_per_seq], c.block_size,
                        &out[pb.q_start[b] * row_size], pb.q_lens[b], pb.kv_lens[b], c.n_heads,
                        c.kv_heads, c.head_dim, c.Scale(), c.window);
  }
  return out;
}

// Every sequence row finite and within tolerance, every gap row bit-identical to the sentinel.
// A failure names the sequence, query, position, head and dim of the first bad element.
::testing::AssertionResult Matches(const PrefillCase& c, const Problem& pb,
                                   const std::vector<float>& got, const std::vector<float>& want,
                                   double* max_err) {
  const int d = c.head_dim, row_size = c.n_heads * d;
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size mismatch";
  *max_err = 0;
  for (int r = 0; r < pb.rows; ++r) {
    const int b = pb.owner[r];
    for (int e = 0; e < row_size; ++e) {
      const size_t i = static_cast<size_t>(r) * row_size + e;
      if (b < 0) {
        if (std::memcmp(&got[i], &kSentinel, sizeof(float)) != 0) {
          return ::testing::AssertionFailure()
                 << "gap row " << r << " (no sequence) was written: element " << e << " = "
                 << got[i];
        }
        continue;
      }
      const int qi = r - pb.q_start[b];
      const double err = std::abs(double(got[i]) - want[i]);
      if (!std::isfinite(got[i]) || !std::isfinite(want[i]) ||
          err > kAtol + kRtol * std::abs(want[i])) {
        return ::testing::AssertionFailure()
               << "seq " << b << " query " << qi << " (position "
               << pb.kv_lens[b] - pb.q_lens[b] + qi << " of " << pb.kv_lens[b] << ") head "
               << e / d << " dim " << e % d << ": got " << got[i] << ", want " << want[i]
               << " (|err| " << err << ")";
      }
      *max_err = std::max(*max_err, err);
    }
  }
  return ::testing::AssertionSuccess();
}


std::vector<float> RunGpu(const PrefillCase& c, const Problem& pb) {
  const size_t row_size = static_cast<size_t>(c.n_heads) * c.head_dim;
  DeviceBuffer<float> q(pb.q), out(std::vector<float>(pb.rows * row_size, kSentinel));
  DeviceBuffer<__nv_bfloat16> k(testing_cuda::ToBf16Host(pb.k_hnd));
  DeviceBuffer<__nv_bfloat16> v(testing_cuda::ToBf16Host(pb.v_hnd));
  DeviceBuffer<int32_t> q_start(pb.q_start), q_lens(pb.q_lens), kv_lens(pb.kv_lens);
  DeviceBuffer<int32_t> tables(pb.tables);
  cuda::PagedKv cache;
  cache.k = k.ptr;
  cache.v = v.ptr;
  cache.num_blocks = pb.num_blocks;
  cache.block_size = c.block_size;
  cache.kv_heads = c.kv_heads;
  cache.head_dim = c.head_dim;
  cuda::PrefillParams p;
  p.q = q.ptr;
  p.out = out.ptr;
  p.q_start = q_start.ptr;
  p.q_lens = q_lens.ptr;
  p.kv_lens = kv_lens.ptr;
  p.block_tables = tables.ptr;
  p.batch = c.Batch();
  p.n_heads = c.n_heads;
  p.max_blocks_per_seq = pb.max_blocks_per_seq;
  p.max_q_len = *std::max_element(c.q_lens.begin(), c.q_lens.end()) + c.q_len_slack;
  p.scale = c.Scale();
  p.window = c.window;
  cuda::PrefillAttention(cache, p, nullptr);
  const cudaError_t err = cudaDeviceSynchronize();
  EXPECT_EQ(err, cudaSuccess) << CaseName(c) << ": " << cudaGetErrorString(err);
  return out.ToHost();
}
#endif

class CudaPrefill : public ::testing::TestWithParam<PrefillCase> {};

TEST_P(CudaPrefill, MatchesReference) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const PrefillCase& c = GetParam();
  const Problem pb = Build(c);
  const std::vector<float> want = Reference(c, pb);
  const std::vector<float> got = RunGpu(c, pb);
  double max_err = 0;
  ASSERT_TRUE(Matches(c, pb, got, want, &max_err)) << CaseName(c);
  std::printf("  %s: max |gpu - ref| = %.3g over %d rows\n", CaseName(c).c_str(), max_err,
              pb.rows);
#endif
}

// Batch 17: lengths 1..97 with some chunked (kv_len > q_len) sequences.
std::vector<int> MixedQ17() {
  std::vector<int> q(17);
  for (int b = 0; b < 17; ++b) q[b] = 1 + (b * 37) % 97;
  q[5] = 97;
  q[9] = 1;
  return q;
}
std::vector<int> MixedKv17() {
  std::vector<int> q = MixedQ17(), kv(17);
  for (int b = 0; b < 17; ++b) kv[b] = q[b] + (b % 3 == 0 ? 11 * b + 1 : 0);
  return kv;
}

std::vector<PrefillCase> Cases() {
  std::vector<PrefillCase> v;
  auto add = [&](PrefillCase c) { v.push_back(std::move(c)); };
  // Single sequences: group 1, 6, 8; head dim 64 and 128; block sizes 16, 5, 1.
  add({.tag = "one", .q_lens = {1}, .n_heads = 4, .kv_heads = 4, .head_dim = 64});
  add({.tag = "prompt", .q_lens = {97}, .n_heads = 4, .kv_heads = 4, .head_dim = 64});
  add({.tag = "prompt", .q_lens = {97}, .n_heads = 12, .kv_heads = 2, .head_dim = 128,
       .block_size = 5, .shuffle = true});
  add({.tag = "prompt", .q_lens = {97}, .n_heads = 8, .kv_heads = 1, .head_dim = 64,
       .block_size = 1, .shuffle = true});
  add({.tag = "long", .q_lens = {4099}, .n_heads = 2, .kv_heads = 1, .head_dim = 128,
       .shuffle = true});
  add({.tag = "longwin", .q_lens = {4099}, .n_heads = 6, .kv_heads = 1, .head_dim = 64,
       .block_size = 5, .window = 777, .shuffle = true});
  // Batches of 3 and 17 with mixed lengths, chunked prefill (kv_len > q_len).
  add({.tag = "mixed", .q_lens = {1, 97, 33}, .kv_lens = {1, 97, 300}, .n_heads = 16,
       .kv_heads = 2, .head_dim = 128, .shuffle = true});
  add({.tag = "mixed", .q_lens = {97, 1, 64}, .kv_lens = {97, 1000, 64}, .n_heads = 8,
       .kv_heads = 8, .head_dim = 128, .block_size = 5, .q_len_slack = 100});
  add({.tag = "mixed", .q_lens = MixedQ17(), .kv_lens = MixedKv17(), .n_heads = 8,
       .kv_heads = 1, .head_dim = 64, .shuffle = true});
  add({.tag = "mixed", .q_lens = MixedQ17(), .kv_lens = MixedKv17(), .n_heads = 6,
       .kv_heads = 1, .head_dim = 128, .block_size = 5, .shuffle = true, .q_len_slack = 3});
  add({.tag = "mixed", .q_lens = MixedQ17(), .kv_lens = MixedKv17(), .n_heads = 3,
       .kv_heads = 3, .head_dim = 64, .block_size = 128, .window = 40, .shuffle = true});
  add({.tag = "chunked", .q_lens = {64, 130}, .kv_lens = {1000, 131}, .n_heads = 4,
       .kv_heads = 1, .head_dim = 64, .shuffle = true});
  add({.tag = "chunked", .q_lens = {33, 70}, .kv_lens = {40, 70}, .n_heads = 12, .kv_heads = 2,
       .head_dim = 64, .block_size = 1});
  // Sliding windows: self only, shorter than a tile, longer than every sequence.
  add({.tag = "window", .q_lens = {97, 97, 5}, .kv_lens = {97, 200, 300}, .n_heads = 8,
       .kv_heads = 8, .head_dim = 64, .block_size = 5, .window = 1});
  add({.tag = "window", .q_lens = {97, 97, 5}, .kv_lens = {97, 200, 300}, .n_heads = 12,
       .kv_heads = 2, .head_dim = 128, .window = 7, .shuffle = true});
  add({.tag = "window", .q_lens = {97, 150}, .kv_lens = {300, 150}, .n_heads = 16,
       .kv_heads = 2, .head_dim = 128, .block_size = 5, .window = 100});
  add({.tag = "window", .q_lens = {97}, .kv_lens = {300}, .n_heads = 8, .kv_heads = 1,
       .head_dim = 64, .window = 5000});
  // Sharp softmax (scores of tens): the running max moves between tiles.
  add({.tag = "sharp", .q_lens = {200}, .kv_lens = {260}, .n_heads = 8, .kv_heads = 1,
       .head_dim = 128, .block_size = 5, .scale = 0.6f});
  // Sequences with no queries are skipped (their rows do not exist).
  add({.tag = "empty", .q_lens = {0, 5, 0}, .kv_lens = {10, 5, 0}, .n_heads = 6,
       .kv_heads = 1, .head_dim = 64});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaPrefill, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<PrefillCase>& info) {
                           return CaseName(info.param);
                         });

// batch 0 and max_q_len 0 launch nothing and touch nothing.
TEST(CudaPrefillEmpty, NoWork) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  DeviceBuffer<float> out(std::vector<float>(64, kSentinel));
  cuda::PagedKv cache;
  cache.block_size = 16;
  cache.kv_heads = 1;
  cache.head_dim = 64;
  cuda::PrefillParams p;
  p.out = out.ptr;
  p.n_heads = 1;
  p.max_q_len = 5;
  cuda::PrefillAttention(cache, p, nullptr);  // batch 0
  p.batch = 3;
  p.max_q_len = 0;
  cuda::PrefillAttention(cache, p, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (float x : out.ToHost()) ASSERT_EQ(x, kSentinel);
#endif
}

}  // namespace
}  // namespace moemesh
