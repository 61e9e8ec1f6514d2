// CUDA RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight for `rows` rows of `n` floats, one
// thread block per row. Raw device pointers and a stream; checked against kernels/ref.
// Thread-safe (stateless launches).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moemesh::cuda {

void RmsNorm(const float* x, const float* weight, float* out, int64_t rows, int64_t n, float eps,
             cudaStream_t stream);

}  // namespace moemesh::cuda
