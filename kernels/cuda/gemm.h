// bf16 GEMMs through cuBLASLt for the attention worker's projections:
//   y[m, n] = x[m, k] . w[n, k]^T (+ bias[n])
// with w bf16 on the device (the checkpoint's row-major [out, in] layout), x and y fp32.
// Precision::kSplit keeps activations at about fp32 accuracy by running x as two bf16 parts
// (hi + lo, ops.h SplitBf16) stacked as 2m rows of one GEMM and summing the halves: the weights
// are read once, so decode (weight-bandwidth bound) costs the same; prefill does twice the
// tensor-core work. Precision::kBf16 rounds x to bf16 once (the usual serving trade).
// A Gemm owns a cuBLASLt handle and device scratch sized at construction for the largest
// shapes it will run, so calls never allocate and may be captured in a CUDA graph (after one
// uncaptured call per shape, which picks and caches the algorithm). Shapes (or pointer
// alignments) for which cuBLASLt offers no algorithm run a simple CUDA kernel instead
// (ops.h LinearSimple); last_path() says which ran. Not thread-safe: one per stream.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

namespace moemesh::cuda {

enum class Precision { kSplit, kBf16 };

// How the last Linear call ran.
enum class GemmPath {
  kNone,                // no call yet, or an empty shape (m or n is 0)
  kCublasLt,            // one cuBLASLt matmul (bias by its epilogue or the combining kernel)
  kCublasLtBiasKernel,  // kBf16 with a bias the epilogue could not take: matmul, then a bias add
  kSimpleKernel,        // LinearSimple: cuBLASLt rejected the shape / alignment, k == 0, or forced
};
const char* GemmPathName(GemmPath path);

class Gemm {
 public:
  // Scratch for m <= max_m rows, k <= max_k inputs and n <= max_n outputs. Aborts (MM_CUDA_CHECK
  // style, naming the call) if cuBLASLt cannot be initialised.
  Gemm(int64_t max_m, int64_t max_n, int64_t max_k);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Shapes beyond the construction limits abort with the sizes named (caller bug). bias may be
  // null; y must not alias x or w. Pointers need no particular alignment (less aligned ones may
  // get slower kernels).
  void Linear(const float* x, const __nv_bfloat16* w, const float* bias, float* y, int64_t m,
              int64_t n, int64_t k, Precision precision, cudaStream_t stream);

  GemmPath last_path() const;
  // Tests: run every later call through LinearSimple.
  void set_force_simple_kernel(bool force);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moemesh::cuda
