// Generic paged attention for any head_dim <= 256 (and KV rows of any width): the simple
// correct path behind AppendKv, DecodeAttention and PrefillAttention (attention.h) for head
// sizes their tiled kernels do not cover (they take 64 and 128). One warp per (query row,
// query head), fp32 math, online softmax; slow but exact to fp32 rounding. Same semantics,
// layouts and graph-capturability as attention.h. Thread-safe (stateless launches).
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/attention.h"

namespace moemesh::cuda {

constexpr int kGenericMaxHeadDim = 256;

void AppendKvGeneric(const PagedKv& cache, const float* k_new, const float* v_new,
                     const int32_t* slots, int64_t n, cudaStream_t stream);
void DecodeAttentionGeneric(const PagedKv& cache, const DecodeParams& p, cudaStream_t stream);
void PrefillAttentionGeneric(const PagedKv& cache, const PrefillParams& p, cudaStream_t stream);

}  // namespace moemesh::cuda
