// bf16 GEMMs through cuBLASLt for the attention worker's projections:
//   y[m, n] = x[m, k] . w[n, k]^T (+ bias[n])
// with w bf16 on the device (the checkpoint's row-major [out, in] layout), x and y fp32.
// Precision::kSplit keeps activations at about fp32 accuracy by running x as two bf16 parts
// (hi + lo, ops.h SplitBf16) stacked as 2m rows of one GEMM and summing the halves: the weights
// are read once, so decode (weight-bandwidth bound) costs the same; prefill does twice the
// tensor-core work. Precision::kBf16 rounds x to bf16 once (the usual serving trade).
// A Gemm owns a cuBLASLt handle and device scratch sized at construction for the largest
// shapes it will run, so calls never allocate and may be captured in a CUDA graph (after one
// uncaptured call per shape, which picks and caches the algorithm). Not thread-safe: one per
// stream.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

namespace moemesh::cuda {

enum class Precision { kSplit, kBf16 };

class Gemm {
 public:
  // Scratch for m <= max_m rows, k <= max_k inputs and n <= max_n outputs. Aborts (MM_CUDA_CHECK
  // style, naming the call) if cuBLASLt cannot be initialised.
  Gemm(int64_t max_m, int64_t max_n, int64_t max_k);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Shapes beyond the construction limits abort with the sizes named (caller bug).
  void Linear(const float* x, const __nv_bfloat16* w, const float* bias, float* y, int64_t m,
              int64_t n, int64_t k, Precision precision, cudaStream_t stream);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moemesh::cuda
