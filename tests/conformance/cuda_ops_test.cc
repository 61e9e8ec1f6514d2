// CUDA ops (ops.h) and GEMMs (gemm.h) against their scalar references at awkward sizes, with
// NaN/Inf checks. Without a GPU (or a CUDA build) each case is skipped with the reason.
// Cases named "..._off1" shift every pointer by one element, which forces the scalar
// (unvectorised) kernels and unaligned cuBLASLt operands.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ref/ops.h"
#include "tests/conformance/cuda_test_util.h"

#ifdef MOEMESH_HAVE_CUDA
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/ops.h"
#endif

namespace moemesh {
namespace {

using testing_cuda::ExpectClose;
using testing_cuda::Random;
using testing_cuda::RoundBf16;
#ifdef MOEMESH_HAVE_CUDA
using testing_cuda::DeviceBuffer;
using testing_cuda::ToBf16Host;

// Host copy of a bf16 device buffer, widened.
std::vector<float> Widen(const std::vector<__nv_bfloat16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}
#endif

// Exact equality (NaN equals NaN), naming the first differing index.
[[maybe_unused]] void ExpectIdentical(const std::vector<float>& got, const std::vector<float>& want,
                                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      ASSERT_TRUE(std::isnan(got[i])) << what << ": want NaN at " << i << ", got " << got[i];
    } else {
      ASSERT_EQ(got[i], want[i]) << what << " at " << i;
    }
  }
}

// ---- RmsNorm, AddRmsNorm ------------------------------------------------------------------------

struct NormCase {
  int64_t rows;
  int64_t n;
};

std::string NormName(const ::testing::TestParamInfo<NormCase>& info) {
  return "rows" + std::to_string(info.param.rows) + "_n" + std::to_string(info.param.n);
}

// Rows 1, 3, 17 of every awkward width, and per-head norms (many rows of head_dim 64 / 128).
std::vector<NormCase> NormCases() {
  std::vector<NormCase> cases;
  for (int64_t rows : {1, 3, 17}) {
    for (int64_t n : {1, 17, 97, 128, 2048, 4099}) cases.push_back({rows, n});
  }
  cases.push_back({17 * 8, 64});
  cases.push_back({3 * 32, 128});
  cases.push_back({5, 128});
  cases.push_back({2, 4099});
  return cases;
}

class CudaRmsNorm : public ::testing::TestWithParam<NormCase> {};

TEST_P(CudaRmsNorm, MatchesReference) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const NormCase c = GetParam();
  auto x = Random(c.rows * c.n, 1);
  auto w = Random(c.n, 2);
  std::vector<float> want(x.size());
  ref::RmsNorm(x.data(), w.data(), want.data(), c.rows, c.n, 1e-6f);
  DeviceBuffer<float> dx(x), dw(w), dout(x.size());
  cuda::RmsNorm(dx.ptr, dw.ptr, dout.ptr, c.rows, c.n, 1e-6f, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(dout.ToHost(), want, 1e-5, 1e-5, "RmsNorm out");
  // In place (out aliases x).
  cuda::RmsNorm(dx.ptr, dw.ptr, dx.ptr, c.rows, c.n, 1e-6f, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(dx.ToHost(), want, 1e-5, 1e-5, "RmsNorm in place");
#endif
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, CudaRmsNorm, ::testing::ValuesIn(NormCases()), NormName);

class CudaAddRmsNorm : public ::testing::TestWithParam<NormCase> {};

TEST_P(CudaAddRmsNorm, MatchesReference) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const NormCase c = GetParam();
  auto x = Random(c.rows * c.n, 3);
  auto branch = Random(c.rows * c.n, 4);
  auto w = Random(c.n, 5);
  std::vector<float> sum(x.size()), want(x.size());
  for (size_t i = 0; i < x.size(); ++i) sum[i] = x[i] + branch[i];
  ref::RmsNorm(sum.data(), w.data(), want.data(), c.rows, c.n, 1e-6f);
  DeviceBuffer<float> dx(x), db(branch), dw(w), dout(x.size());
  cuda::AddRmsNorm(dx.ptr, db.ptr, dw.ptr, dout.ptr, c.rows, c.n, 1e-6f, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectIdentical(dx.ToHost(), sum, "AddRmsNorm residual x + branch");
  ExpectClose(dout.ToHost(), want, 1e-5, 1e-5, "AddRmsNorm out");
  // out aliasing branch (the branch buffer reused for the normed output).
  DeviceBuffer<float> dx2(x), db2(branch);
  cuda::AddRmsNorm(dx2.ptr, db2.ptr, dw.ptr, db2.ptr, c.rows, c.n, 1e-6f, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectIdentical(dx2.ToHost(), sum, "AddRmsNorm (out = branch) residual");
  ExpectClose(db2.ToHost(), want, 1e-5, 1e-5, "AddRmsNorm (out = branch) out");
#endif
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, CudaAddRmsNorm, ::testing::ValuesIn(NormCases()), NormName);

// ---- Elementwise: Add, Clamp, SplitBf16, ToBf16, ToFloat ----------------------------------------

struct ElemCase {
  int64_t n;
  int offset;  // elements every pointer is shifted by (1: unaligned, scalar kernels)
};

class CudaElementwise : public ::testing::TestWithParam<ElemCase> {};

std::string ElemName(const ::testing::TestParamInfo<ElemCase>& info) {
  return "n" + std::to_string(info.param.n) + "_off" + std::to_string(info.param.offset);
}

#ifdef MOEMESH_HAVE_CUDA
// `offset` elements of padding, then v.
template <typename T>
std::vector<T> Pad(const std::vector<T>& v, int offset) {
  std::vector<T> out(offset, T{});
  out.insert(out.end(), v.begin(), v.end());
  return out;
}
template <typename T>
std::vector<T> Unpad(const std::vector<T>& v, int offset) {
  return std::vector<T>(v.begin() + offset, v.end());
}
#endif

TEST_P(CudaElementwise, Add) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const ElemCase c = GetParam();
  auto x = Random(c.n, 10), y = Random(c.n, 11);
  std::vector<float> want(c.n);
  for (int64_t i = 0; i < c.n; ++i) want[i] = x[i] + y[i];
  DeviceBuffer<float> dx(Pad(x, c.offset)), dy(Pad(y, c.offset));
  cuda::Add(dx.ptr + c.offset, dy.ptr + c.offset, c.n, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectIdentical(Unpad(dx.ToHost(), c.offset), want, "Add");
  ExpectIdentical(Unpad(dy.ToHost(), c.offset), y, "Add leaves y");
#endif
}

TEST_P(CudaElementwise, Clamp) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const ElemCase c = GetParam();
  auto x = Random(c.n, 12, 3.0f);
  // Infinities clamp; NaN stays NaN (std::clamp semantics).
  if (c.n > 2) {
    x[1] = INFINITY;
    x[2] = -INFINITY;
  }
  if (c.n > 5) x[c.n - 2] = NAN;
  const float limit = 2.5f;
  std::vector<float> want(c.n);
  for (int64_t i = 0; i < c.n; ++i) {
    want[i] = x[i] < -limit ? -limit : (x[i] > limit ? limit : x[i]);
  }
  DeviceBuffer<float> dx(Pad(x, c.offset));
  cuda::Clamp(dx.ptr + c.offset, c.n, limit, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectIdentical(Unpad(dx.ToHost(), c.offset), want, "Clamp");
#endif
}

TEST_P(CudaElementwise, SplitBf16) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const ElemCase c = GetParam();
  auto x = Random(c.n, 13, 10.0f);
  std::vector<float> want_hi(c.n), want_lo(c.n);
  for (int64_t i = 0; i < c.n; ++i) {
    want_hi[i] = RoundBf16(x[i]);
    want_lo[i] = RoundBf16(x[i] - want_hi[i]);
  }
  DeviceBuffer<float> dx(Pad(x, c.offset));
  DeviceBuffer<__nv_bfloat16> dhi(c.n + c.offset), dlo(c.n + c.offset);
  cuda::SplitBf16(dx.ptr + c.offset, dhi.ptr + c.offset, dlo.ptr + c.offset, c.n, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  const auto hi = Unpad(Widen(dhi.ToHost()), c.offset), lo = Unpad(Widen(dlo.ToHost()), c.offset);
  ExpectIdentical(hi, want_hi, "SplitBf16 hi");
  ExpectIdentical(lo, want_lo, "SplitBf16 lo");
  // hi + lo carries ~16 significant bits: |x - hi - lo| <= 2^-16 |x|.
  for (int64_t i = 0; i < c.n; ++i) {
    ASSERT_LE(std::abs(static_cast<double>(x[i]) - hi[i] - lo[i]), std::ldexp(std::abs(x[i]), -16))
        << "SplitBf16 hi + lo at " << i;
  }
#endif
}

TEST_P(CudaElementwise, ToBf16AndBack) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const ElemCase c = GetParam();
  auto x = Random(c.n, 14, 100.0f);
  std::vector<float> want(c.n);
  for (int64_t i = 0; i < c.n; ++i) want[i] = RoundBf16(x[i]);
  DeviceBuffer<float> dx(Pad(x, c.offset)), dback(c.n + c.offset);
  DeviceBuffer<__nv_bfloat16> db(c.n + c.offset);
  cuda::ToBf16(dx.ptr + c.offset, db.ptr + c.offset, c.n, nullptr);
  cuda::ToFloat(db.ptr + c.offset, dback.ptr + c.offset, c.n, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectIdentical(Unpad(Widen(db.ToHost()), c.offset), want, "ToBf16");
  ExpectIdentical(Unpad(dback.ToHost(), c.offset), want, "ToFloat");
#endif
}

TEST_P(CudaElementwise, AddRowsBias) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const ElemCase c = GetParam();
  const int64_t rows = 3;
  auto a = Random(rows * c.n, 15), b = Random(rows * c.n, 16), bias = Random(c.n, 17);
  std::vector<float> want_all(a.size()), want_bias(a.size());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < c.n; ++j) {
      const int64_t e = r * c.n + j;
      want_all[e] = (a[e] + b[e]) + bias[j];
      want_bias[e] = a[e] + bias[j];
    }
  }
  DeviceBuffer<float> da(Pad(a, c.offset)), db(Pad(b, c.offset)), dbias(Pad(bias, c.offset));
  DeviceBuffer<float> dy(rows * c.n + c.offset);
  cuda::AddRowsBias(da.ptr + c.offset, db.ptr + c.offset, dbias.ptr + c.offset, dy.ptr + c.offset,
                    rows, c.n, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectIdentical(Unpad(dy.ToHost(), c.offset), want_all, "AddRowsBias a + b + bias");
  // In place on a, no b.
  cuda::AddRowsBias(da.ptr + c.offset, nullptr, dbias.ptr + c.offset, da.ptr + c.offset, rows, c.n,
                    nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectIdentical(Unpad(da.ToHost(), c.offset), want_bias, "AddRowsBias a += bias");
#endif
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, CudaElementwise,
                         ::testing::Values(ElemCase{1, 0}, ElemCase{97, 0}, ElemCase{2048, 0},
                                           ElemCase{4099, 0}, ElemCase{97, 1}, ElemCase{2048, 1},
                                           ElemCase{4099, 1},
                                           ElemCase{9000001, 0}),  // grid-stride loops
                         ElemName);

// ---- SiluMul ------------------------------------------------------------------------------------

struct RowsCase {
  int64_t rows;
  int64_t n;
  int offset;
};

std::string RowsName(const ::testing::TestParamInfo<RowsCase>& info) {
  return "rows" + std::to_string(info.param.rows) + "_n" + std::to_string(info.param.n) + "_off" +
         std::to_string(info.param.offset);
}

std::vector<RowsCase> RowsCases() {
  std::vector<RowsCase> cases;
  for (int64_t rows : {1, 3, 17}) {
    for (int64_t n : {1, 97, 2048, 4099}) cases.push_back({rows, n, 0});
  }
  cases.push_back({3, 2048, 1});
  cases.push_back({17, 96, 1});
  return cases;
}

class CudaSiluMul : public ::testing::TestWithParam<RowsCase> {};

TEST_P(CudaSiluMul, MatchesReference) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const RowsCase c = GetParam();
  auto gate_up = Random(c.rows * 2 * c.n, 20, 4.0f);
  if (c.n > 2) gate_up[0] = -120.0f;  // exp(120) overflows: silu must give -0, not NaN
  std::vector<float> want(c.rows * c.n);
  for (int64_t r = 0; r < c.rows; ++r) {
    const float* g = gate_up.data() + r * 2 * c.n;
    ref::SiluMul(g, g + c.n, want.data() + r * c.n, c.n);
  }
  DeviceBuffer<float> dgu(Pad(gate_up, c.offset)), dout(c.rows * c.n + c.offset);
  cuda::SiluMul(dgu.ptr + c.offset, dout.ptr + c.offset, c.rows, c.n, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(Unpad(dout.ToHost(), c.offset), want, 1e-6, 2e-6, "SiluMul");
#endif
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, CudaSiluMul, ::testing::ValuesIn(RowsCases()), RowsName);

// ---- Embedding ----------------------------------------------------------------------------------

class CudaEmbedding : public ::testing::TestWithParam<RowsCase> {};

TEST_P(CudaEmbedding, MatchesReference) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const RowsCase c = GetParam();
  const int64_t tokens = c.rows, hidden = c.n, vocab_begin = 100, vocab_rows = 50;
  const auto table = ToBf16Host(Random(vocab_rows * hidden, 21));
  // Ids below, inside and above this shard's slice, both edges, and negative.
  std::vector<int32_t> ids(tokens);
  std::mt19937 rng(22);
  std::uniform_int_distribution<int32_t> pick(80, 170);
  for (auto& id : ids) id = pick(rng);
  const int32_t edges[] = {100, 149, 150, 99, -1, 0x7fffffff};
  for (int64_t t = 0; t < tokens && t < 6; ++t) ids[t] = edges[t];
  std::vector<float> want(tokens * hidden, 0.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t row = static_cast<int64_t>(ids[t]) - vocab_begin;
    if (row < 0 || row >= vocab_rows) continue;
    for (int64_t i = 0; i < hidden; ++i) {
      want[t * hidden + i] = __bfloat162float(table[row * hidden + i]);
    }
  }
  DeviceBuffer<int32_t> dids(ids);
  DeviceBuffer<__nv_bfloat16> dtable(Pad(table, c.offset));
  // Poison the output so that zeros for foreign ids are really written.
  DeviceBuffer<float> dout(std::vector<float>(tokens * hidden + c.offset, NAN));
  cuda::Embedding(dids.ptr, dtable.ptr + c.offset, vocab_begin, vocab_rows, dout.ptr + c.offset,
                  tokens, hidden, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectIdentical(Unpad(dout.ToHost(), c.offset), want, "Embedding");
#endif
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, CudaEmbedding, ::testing::ValuesIn(RowsCases()), RowsName);

// ---- RopeNeox -----------------------------------------------------------------------------------

struct RopeCase {
  int64_t tokens;
  int heads;
  int head_dim;
  float theta;
};

class CudaRopeNeox : public ::testing::TestWithParam<RopeCase> {};

TEST_P(CudaRopeNeox, MatchesReference) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const RopeCase c = GetParam();
  const int64_t per_token = static_cast<int64_t>(c.heads) * c.head_dim;
  auto x = Random(c.tokens * per_token, 30);
  std::vector<float> inv_freq(c.head_dim / 2);
  ref::RopeInvFreq(c.theta, c.head_dim, inv_freq.data());
  // Long positions first (precise sin/cos over large angles), then random ones.
  std::vector<int32_t> positions(c.tokens);
  std::mt19937 rng(31);
  std::uniform_int_distribution<int32_t> pick(0, 131072);
  for (auto& p : positions) p = pick(rng);
  const int32_t fixed[] = {4099, 100000, 0, 1, 32767, 131071};
  for (int64_t t = 0; t < c.tokens && t < 6; ++t) positions[t] = fixed[t];
  std::vector<float> want = x;
  for (int64_t t = 0; t < c.tokens; ++t) {
    ref::RopeNeox(want.data() + t * per_token, c.heads, c.head_dim, positions[t], inv_freq.data());
  }
  DeviceBuffer<float> dx(x), dfreq(inv_freq);
  DeviceBuffer<int32_t> dpos(positions);
  cuda::RopeNeox(dx.ptr, dpos.ptr, dfreq.ptr, c.tokens, c.heads, c.head_dim, nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(dx.ToHost(), want, 1e-5, 1e-5, "RopeNeox");
#endif
}

std::vector<RopeCase> RopeCases() {
  std::vector<RopeCase> cases;
  for (int64_t tokens : {1, 3, 17}) {
    for (int head_dim : {64, 128}) {
      cases.push_back({tokens, 4, head_dim, 10000.0f});
      cases.push_back({tokens, 1, head_dim, 1000000.0f});
    }
  }
  cases.push_back({3, 2, 6, 10000.0f});   // half = 3: scalar kernel
  cases.push_back({17, 3, 2, 10000.0f});  // one pair per head
  cases.push_back({5, 2, 7, 10000.0f});   // odd head_dim: the last element is untouched
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, CudaRopeNeox, ::testing::ValuesIn(RopeCases()),
                         [](const ::testing::TestParamInfo<RopeCase>& info) {
                           return "tokens" + std::to_string(info.param.tokens) + "_heads" +
                                  std::to_string(info.param.heads) + "_hd" +
                                  std::to_string(info.param.head_dim) + "_theta" +
                                  std::to_string(static_cast<int64_t>(info.param.theta));
                         });

// ---- RouteTopK ----------------------------------------------------------------------------------

struct RouteCase {
  int64_t rows;
  int experts;
  int top_k;
  bool renormalize;
};

class CudaRouteTopK : public ::testing::TestWithParam<RouteCase> {};

TEST_P(CudaRouteTopK, MatchesReference) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const RouteCase c = GetParam();
  auto logits = Random(c.rows * c.experts, 40 + c.experts, 2.0f);  // random: no ties
  std::vector<int32_t> want_ids(c.rows * c.top_k);
  std::vector<float> want_w(c.rows * c.top_k);
  for (int64_t r = 0; r < c.rows; ++r) {
    ref::RouteTopK(logits.data() + r * c.experts, c.experts, c.top_k, c.renormalize,
                   want_ids.data() + r * c.top_k, want_w.data() + r * c.top_k);
  }
  DeviceBuffer<float> dlogits(logits), dw(c.rows * c.top_k);
  DeviceBuffer<int32_t> dids(c.rows * c.top_k);
  cuda::RouteTopK(dlogits.ptr, c.rows, c.experts, c.top_k, c.renormalize, dids.ptr, dw.ptr,
                  nullptr);
  MM_CUDA_CHECK(cudaDeviceSynchronize());
  const auto ids = dids.ToHost();
  for (size_t i = 0; i < ids.size(); ++i) {
    ASSERT_EQ(ids[i], want_ids[i])
        << "RouteTopK ids: row " << i / c.top_k << " pick " << i % c.top_k;
  }
  ExpectClose(dw.ToHost(), want_w, 1e-6, 0.0, "RouteTopK weights");
#endif
}

std::vector<RouteCase> RouteCases() {
  std::vector<RouteCase> cases;
  for (int64_t rows : {1, 3, 17}) {
    for (int experts : {8, 60, 64, 128, 1024}) {
      for (int top_k : {1, 2, 4, 8}) {
        for (bool renormalize : {false, true}) cases.push_back({rows, experts, top_k, renormalize});
      }
    }
  }
  cases.push_back({5, 256, 32, true});  // the largest top_k
  cases.push_back({2, 32, 32, false});  // top_k = n_experts (all, sorted)
  cases.push_back({1, 1, 1, true});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, CudaRouteTopK, ::testing::ValuesIn(RouteCases()),
                         [](const ::testing::TestParamInfo<RouteCase>& info) {
                           return "rows" + std::to_string(info.param.rows) + "_experts" +
                                  std::to_string(info.param.experts) + "_top" +
                                  std::to_string(info.param.top_k) +
                                  (info.param.renormalize ? "_renorm" : "_raw");
                         });

// ---- Gemm ---------------------------------------------------------------------------------------

// Tolerances, from S2 = sqrt(sum_t (x_t w_t)^2) per output. w is already bf16, so products of
// bf16 parts are exact; the errors are x's representation and fp32 accumulation:
//   accumulation (both precisions): 2^-20 * sqrt(k) * S2 + 2^-22 * |want|. A random walk of fp32
//     roundings gives ~2^-24 * sqrt(k) * S2; a pessimistic tensor-core model (addends aligned and
//     truncated to 24 bits, k-chunks of 16) stays below a fifth of this bound in simulation.
//   kSplit vs ref::Linear(x): + 2^-14 * S2. hi + lo represents x to 2^-16 |x| (bf16 rounds to
//     2^-8 twice); summed with random signs that is ~0.16 * 2^-16 * S2 RMS, up to ~0.8 * 2^-16
//     * S2 over 4.6e5 outputs (simulated), so 2^-14 leaves a 5x margin.
//   kBf16 vs ref::Linear(bf16(x)): accumulation only.
// With x ~ N(0, 1) and w ~ N(0, 1/k), S2 ~ 1: kSplit is held to ~6e-5 + 1e-6 * sqrt(k) absolute
// (6e-5 * sqrt(k) + 1e-6 * k for unit-variance w), while dropping lo (kBf16's rounding of x)
// errs ~10x that on a typical output. In addition the RMS error of kSplit must be
// below 1/20 of the RMS effect of rounding x to bf16 (simulated: ~1/600).
struct GemmCase {
  int64_t m, n, k;
  bool bias;
  int offset;
};

class CudaGemm : public ::testing::TestWithParam<GemmCase> {};

TEST_P(CudaGemm, MatchesReference) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const GemmCase c = GetParam();
  const int off = c.offset;
  auto x = Random(c.m * c.k, 50);
  auto w = Random(c.n * c.k, 51, c.k > 0 ? 1.0f / std::sqrt(static_cast<float>(c.k)) : 1.0f);
  for (float& v : w) v = RoundBf16(v);
  std::vector<float> bias = c.bias ? Random(c.n, 52) : std::vector<float>();
  std::vector<float> x_bf16(x.size());
  for (size_t i = 0; i < x.size(); ++i) x_bf16[i] = RoundBf16(x[i]);

  const float* bias_ptr = c.bias ? bias.data() : nullptr;
  std::vector<float> want(c.m * c.n), want_bf16(c.m * c.n), s2(c.m * c.n);
  ref::Linear(x.data(), w.data(), bias_ptr, want.data(), c.m, c.n, c.k);
  ref::Linear(x_bf16.data(), w.data(), bias_ptr, want_bf16.data(), c.m, c.n, c.k);
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < c.n; ++j) {
      double acc = 0;
      for (int64_t t = 0; t < c.k; ++t) {
        const double p = static_cast<double>(x[i * c.k + t]) * w[j * c.k + t];
        acc += p * p;
      }
      s2[i * c.n + j] = static_cast<float>(std::sqrt(acc));
    }
  }
  const double acc_scale = std::ldexp(std::sqrt(static_cast<double>(c.k)), -20);

  DeviceBuffer<float> dx(Pad(x, off)), dbias(Pad(c.bias ? bias : std::vector<float>(1), off));
  DeviceBuffer<__nv_bfloat16> dw(Pad(ToBf16Host(w), off));
  cuda::Gemm gemm(c.m, c.n, c.k);
  for (bool simple : {false, true}) {
    gemm.set_force_simple_kernel(simple);
    for (cuda::Precision precision : {cuda::Precision::kSplit, cuda::Precision::kBf16}) {
      const bool split = precision == cuda::Precision::kSplit;
      // Poisoned output: every element must be written.
      DeviceBuffer<float> dy(std::vector<float>(c.m * c.n + off, NAN));
      for (int call = 0; call < 2; ++call) {  // the second call runs the cached plan
        gemm.Linear(dx.ptr + off, dw.ptr + off, c.bias ? dbias.ptr + off : nullptr, dy.ptr + off,
                    c.m, c.n, c.k, precision, nullptr);
      }
      MM_CUDA_CHECK(cudaDeviceSynchronize());
      const std::string what =
          std::string(split ? "kSplit" : "kBf16") + " via " + cuda::GemmPathName(gemm.last_path());
      std::printf("[ gemm     ] m=%lld n=%lld k=%lld%s off=%d: %s\n", static_cast<long long>(c.m),
                  static_cast<long long>(c.n), static_cast<long long>(c.k), c.bias ? " +bias" : "",
                  off, what.c_str());
      if (simple) {
        ASSERT_EQ(gemm.last_path(), cuda::GemmPath::kSimpleKernel) << what;
      } else {
        ASSERT_NE(gemm.last_path(), cuda::GemmPath::kNone) << what;
      }
      const auto got = Unpad(dy.ToHost(), off);
      const auto& ref_y = split ? want : want_bf16;
      double err_sq = 0, bf16_effect_sq = 0;
      for (size_t e = 0; e < got.size(); ++e) {
        const double tol = acc_scale * s2[e] + std::ldexp(std::abs(ref_y[e]), -22) +
                           (split ? std::ldexp(s2[e], -14) : 0.0);
        ASSERT_TRUE(std::isfinite(got[e]))
            << what << ": non-finite at row " << e / c.n << " col " << e % c.n;
        ASSERT_NEAR(got[e], ref_y[e], tol) << what << " at row " << e / c.n << " col " << e % c.n;
        err_sq += (got[e] - ref_y[e]) * static_cast<double>(got[e] - ref_y[e]);
        bf16_effect_sq += (want_bf16[e] - want[e]) * static_cast<double>(want_bf16[e] - want[e]);
      }
      if (split && got.size() >= 64) {
        EXPECT_LT(std::sqrt(err_sq), std::sqrt(bf16_effect_sq) / 20)
            << what << ": kSplit RMS error is not well below the effect of rounding x to bf16";
      }
    }
  }
#endif
}

INSTANTIATE_TEST_SUITE_P(
    AwkwardSizes, CudaGemm,
    ::testing::Values(GemmCase{1, 97, 96, false, 0}, GemmCase{1, 97, 96, true, 0},
                      GemmCase{3, 4099, 128, false, 0}, GemmCase{3, 4099, 128, true, 0},
                      GemmCase{17, 2048, 768, false, 0}, GemmCase{17, 2048, 768, true, 0},
                      GemmCase{300, 1536, 2048, false, 0}, GemmCase{300, 1536, 2048, true, 0},
                      GemmCase{4, 96, 97, true, 0},   // odd k: 194-byte weight rows
                      GemmCase{1, 1, 1, true, 0},     // smallest
                      GemmCase{2, 5, 0, true, 0},     // k = 0: y = bias
                      GemmCase{3, 64, 128, true, 1},  // every pointer one element off
                      GemmCase{17, 2048, 768, true, 1}),
    [](const ::testing::TestParamInfo<GemmCase>& info) {
      return "m" + std::to_string(info.param.m) + "_n" + std::to_string(info.param.n) + "_k" +
             std::to_string(info.param.k) + (info.param.bias ? "_bias" : "_nobias") + "_off" +
             std::to_string(info.param.offset);
    });

// ---- CUDA graph capture -------------------------------------------------------------------------

// A decode-like chain captured in a CUDA graph (after one eager run that caches the GEMM plans)
// reproduces the eager results bit for bit.
TEST(CudaGraphCapture, OpsAndGemmReplayEagerResults) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const int64_t tokens = 3, hidden = 256, heads = 4, head_dim = 64, experts = 64, top_k = 4;
  const int64_t qn = heads * head_dim;
  DeviceBuffer<float> dresidual(Random(tokens * hidden, 60)), dbranch(Random(tokens * hidden, 61));
  DeviceBuffer<float> dnorm_w(Random(hidden, 62)), dbias(Random(qn, 63));
  DeviceBuffer<__nv_bfloat16> dwq(ToBf16Host(Random(qn * hidden, 64, 0.06f)));
  DeviceBuffer<__nv_bfloat16> dwr(ToBf16Host(Random(experts * hidden, 65, 0.06f)));
  std::vector<float> inv_freq(head_dim / 2);
  ref::RopeInvFreq(10000.0f, head_dim, inv_freq.data());
  DeviceBuffer<float> dfreq(inv_freq);
  DeviceBuffer<int32_t> dpos(std::vector<int32_t>{7, 4099, 100000});
  DeviceBuffer<float> dh(tokens * hidden), dq(tokens * qn), dlogits(tokens * experts);
  DeviceBuffer<int32_t> dids(tokens * top_k);
  DeviceBuffer<float> dweights(tokens * top_k);
  cudaStream_t stream;
  MM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cuda::Gemm gemm(tokens, qn, hidden);
  DeviceBuffer<float> dresidual0(dresidual.ToHost());

  auto chain = [&] {
    // Reset the residual so that every run starts from the same state.
    MM_CUDA_CHECK(cudaMemcpyAsync(dresidual.ptr, dresidual0.ptr, dresidual.n * 4,
                                  cudaMemcpyDeviceToDevice, stream));
    cuda::AddRmsNorm(dresidual.ptr, dbranch.ptr, dnorm_w.ptr, dh.ptr, tokens, hidden, 1e-6f,
                     stream);
    gemm.Linear(dh.ptr, dwq.ptr, dbias.ptr, dq.ptr, tokens, qn, hidden, cuda::Precision::kSplit,
                stream);
    cuda::RopeNeox(dq.ptr, dpos.ptr, dfreq.ptr, tokens, heads, head_dim, stream);
    gemm.Linear(dh.ptr, dwr.ptr, nullptr, dlogits.ptr, tokens, experts, hidden,
                cuda::Precision::kBf16, stream);
    cuda::RouteTopK(dlogits.ptr, tokens, experts, top_k, true, dids.ptr, dweights.ptr, stream);
  };
  chain();
  MM_CUDA_CHECK(cudaStreamSynchronize(stream));
  const auto eager_q = dq.ToHost(), eager_logits = dlogits.ToHost(), eager_w = dweights.ToHost();
  const auto eager_ids = dids.ToHost();
  MM_CUDA_CHECK(cudaMemset(dq.ptr, 0, dq.n * 4));
  MM_CUDA_CHECK(cudaMemset(dlogits.ptr, 0, dlogits.n * 4));
  MM_CUDA_CHECK(cudaMemset(dweights.ptr, 0, dweights.n * 4));
  MM_CUDA_CHECK(cudaMemset(dids.ptr, 0xff, dids.n * 4));

  cudaGraph_t graph;
  cudaGraphExec_t exec;
  MM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  chain();
  MM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  MM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  MM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  MM_CUDA_CHECK(cudaStreamSynchronize(stream));
  ExpectIdentical(dq.ToHost(), eager_q, "graph q (AddRmsNorm, kSplit GEMM + bias, RoPE)");
  ExpectIdentical(dlogits.ToHost(), eager_logits, "graph router logits (kBf16 GEMM)");
  ExpectIdentical(dweights.ToHost(), eager_w, "graph router weights");
  ASSERT_EQ(dids.ToHost(), eager_ids) << "graph router ids";
  MM_CUDA_CHECK(cudaGraphExecDestroy(exec));
  MM_CUDA_CHECK(cudaGraphDestroy(graph));
  MM_CUDA_CHECK(cudaStreamDestroy(stream));
#endif
}

}  // namespace
}  // namespace moemesh
