// Shared pieces of the CUDA conformance tests: the skip rule (no CUDA build, or no device),
// device buffers, seeded random inputs and bf16 rounding on the host.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

#ifdef MOEMESH_HAVE_CUDA
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.h"
#endif

namespace moemesh::testing_cuda {

inline std::vector<float> Random(size_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (float& f : v) f = d(rng);
  return v;
}

// fp32 -> bf16 -> fp32 with round-to-nearest-even (what the device conversion does).
inline float RoundBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

// Why CUDA cases cannot run here, or "" when they can.
inline std::string CudaSkipReason() {
#ifndef MOEMESH_HAVE_CUDA
  return "built without CUDA (no nvcc found at configure time)";
#else
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    return std::string("no CUDA device on this machine (") + cudaGetErrorString(err) + ")";
  }
  return "";
#endif
}

#define MM_REQUIRE_CUDA()                                                    \
  do {                                                                       \
    const std::string mm_why_ = ::moemesh::testing_cuda::CudaSkipReason();   \
    if (!mm_why_.empty()) GTEST_SKIP() << mm_why_;                           \
  } while (0)

// Asserts every value is finite and within atol + rtol * |want|; names the first bad index.
inline void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double atol,
                        double rtol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << ": non-finite at " << i;
    ASSERT_NEAR(got[i], want[i], atol + rtol * std::abs(want[i])) << what << " at " << i;
  }
}

#ifdef MOEMESH_HAVE_CUDA
template <typename T>
struct DeviceBuffer {
  explicit DeviceBuffer(const std::vector<T>& host) : n(host.size()) {
    MM_CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(1, n) * sizeof(T)));
    if (n) MM_CUDA_CHECK(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  explicit DeviceBuffer(size_t count) : n(count) {
    MM_CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(1, n) * sizeof(T)));
    MM_CUDA_CHECK(cudaMemset(ptr, 0, std::max<size_t>(1, n) * sizeof(T)));
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  std::vector<T> ToHost() const {
    std::vector<T> h(n);
    if (n) MM_CUDA_CHECK(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  T* ptr = nullptr;
  size_t n;
};

// What `enqueue` puts on `stream`, captured into a CUDA graph (global capture mode) and
// instantiated; the executable graph lives as long as this object.
struct CapturedGraph {
  CapturedGraph(cudaStream_t stream, const std::function<void()>& enqueue) {
    cudaGraph_t graph;
    MM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    enqueue();
    MM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    MM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    MM_CUDA_CHECK(cudaGraphDestroy(graph));
  }
  ~CapturedGraph() { cudaGraphExecDestroy(exec); }
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;
  void Launch(cudaStream_t stream) const { MM_CUDA_CHECK(cudaGraphLaunch(exec, stream)); }
  cudaGraphExec_t exec = nullptr;
};

inline std::vector<__nv_bfloat16> ToBf16Host(const std::vector<float>& x) {
  std::vector<__nv_bfloat16> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = __float2bfloat16_rn(x[i]);
  return out;
}
#endif

}  // namespace moemesh::testing_cuda
