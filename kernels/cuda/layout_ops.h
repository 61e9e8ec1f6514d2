// Small CUDA kernels that move activations between the layouts of the attention worker's GPU
// forward pass (worker/gpu): splitting a fused QKV projection, gathering rows, whole-projection
// q/k norms split across ranks, and the shared expert's sigmoid gate. Checked against obvious
// host loops in tests/conformance/cuda_layout_ops_test.cc. Asynchronous on the given stream,
// no allocation, CUDA-graph capturable. Thread-safe (stateless launches).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moemesh::cuda {

// qkv is [rows, q_cols + 2 * kv_cols] (a fused projection); writes q [rows, q_cols],
// k [rows, kv_cols], v [rows, kv_cols], clamped to [-clip, clip] when clip > 0.
void SplitQkv(const float* qkv, float* q, float* k, float* v, int64_t rows, int64_t q_cols,
              int64_t kv_cols, float clip, cudaStream_t stream);

// out[i, :] = x[index[i], :] for i < rows; `cols` values per row.
void GatherRows(const float* x, const int32_t* index, float* out, int64_t rows, int64_t cols,
                cudaStream_t stream);

// sums[r * stride] = sum of x[r, :]^2 over `cols` values (fp32 accumulation).
void RowSumSquares(const float* x, float* sums, int64_t rows, int64_t cols, int stride,
                   cudaStream_t stream);

// x[r, i] = x[r, i] / sqrt(sums[r * stride] / full + eps) * weight[i]: an RMSNorm whose
// mean runs over `full` values of which this row holds `cols` (the others on other ranks).
void ScaleRowsByRms(float* x, const float* sums, int stride, const float* weight, int64_t rows,
                    int64_t cols, int64_t full, float eps, cudaStream_t stream);

// out[r, i] += sigmoid(gate[r]) * y[r, i] for rows x cols (Qwen2-MoE's shared expert).
void SigmoidGatedAdd(float* out, const float* gate, const float* y, int64_t rows, int64_t cols,
                     cudaStream_t stream);

}  // namespace moemesh::cuda
