// CUDA ops (ops.h) and GEMMs (gemm.h) against their scalar references at awkward sizes, with
// NaN/Inf checks. Without a GPU (or a CUDA build) each case is skipped with the reason.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ref/ops.h"
#include "tests/conformance/cuda_test_util.h"

#ifdef MOEMESH_HAVE_CUDA
#include "kernels/cuda/ops.h"
#endif

namespace moemesh {
namespace {

using testing_cuda::Random;
#ifdef MOEMESH_HAVE_CUDA
using testing_cuda::DeviceBuffer;
#endif

struct NormCase {
  int64_t rows;
  int64_t n;
};

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
  auto got = dout.ToHost();
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << i;
    ASSERT_NEAR(got[i], want[i], 1e-5 + 1e-5 * std::abs(want[i])) << i;
  }
#endif
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, CudaRmsNorm,
                         ::testing::Values(NormCase{1, 1}, NormCase{3, 17}, NormCase{17, 97},
                                           NormCase{5, 128}, NormCase{2, 4099}),
                         [](const ::testing::TestParamInfo<NormCase>& info) {
                           return "rows" + std::to_string(info.param.rows) + "_n" +
                                  std::to_string(info.param.n);
                         });

}  // namespace
}  // namespace moemesh
