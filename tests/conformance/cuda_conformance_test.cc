// Every CUDA kernel against its scalar reference at awkward sizes, with NaN/Inf checks. On a
// machine without a GPU (or a build without CUDA) each case is skipped with the reason.
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ref/ops.h"

#ifdef MOEMESH_HAVE_CUDA
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/rms_norm.h"
#endif

namespace moemesh {
namespace {

[[maybe_unused]] std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& f : v) f = d(rng);
  return v;
}

#ifdef MOEMESH_HAVE_CUDA
bool HaveDevice(std::string* why) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    *why = std::string("no CUDA device on this machine (") + cudaGetErrorString(err) + ")";
    return false;
  }
  return true;
}

template <typename T>
struct DeviceBuffer {
  explicit DeviceBuffer(const std::vector<T>& host) : n(host.size()) {
    MM_CUDA_CHECK(cudaMalloc(&ptr, n * sizeof(T)));
    MM_CUDA_CHECK(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  explicit DeviceBuffer(size_t count) : n(count) { MM_CUDA_CHECK(cudaMalloc(&ptr, n * sizeof(T))); }
  ~DeviceBuffer() { cudaFree(ptr); }
  std::vector<T> ToHost() const {
    std::vector<T> h(n);
    MM_CUDA_CHECK(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  T* ptr = nullptr;
  size_t n;
};
#endif

struct NormCase {
  int64_t rows;
  int64_t n;
};

class CudaRmsNorm : public ::testing::TestWithParam<NormCase> {};

TEST_P(CudaRmsNorm, MatchesReference) {
#ifndef MOEMESH_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA (no nvcc found at configure time)";
#else
  std::string why;
  if (!HaveDevice(&why)) GTEST_SKIP() << why;
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
