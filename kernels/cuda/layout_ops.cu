#include "kernels/cuda/layout_ops.h"

#include <algorithm>

#include "kernels/cuda/cuda_check.h"

namespace moemesh::cuda {
namespace {

constexpr int kThreads = 256;

unsigned Blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__global__ void SplitQkvKernel(const float* __restrict__ qkv, float* __restrict__ q,
                               float* __restrict__ k, float* __restrict__ v, int64_t rows,
                               int64_t q_cols, int64_t kv_cols, float clip) {
  const int64_t width = q_cols + 2 * kv_cols;
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, c = i % width;
    float x = qkv[i];
    if (clip > 0.0f) x = fminf(fmaxf(x, -clip), clip);
    if (c < q_cols) {
      q[r * q_cols + c] = x;
    } else if (c < q_cols + kv_cols) {
      k[r * kv_cols + (c - q_cols)] = x;
    } else {
      v[r * kv_cols + (c - q_cols - kv_cols)] = x;
    }
  }
}

__global__ void GatherRowsKernel(const float* __restrict__ x, const int32_t* __restrict__ index,
                                 float* __restrict__ out, int64_t cols) {
  const float* src = x + static_cast<int64_t>(index[blockIdx.x]) * cols;
  float* dst = out + static_cast<int64_t>(blockIdx.x) * cols;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = src[i];
}

__device__ float BlockSum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  float total = 0.0f;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    warp_sums[0] = total;
  }
  __syncthreads();
  total = warp_sums[0];
  __syncthreads();
  return total;
}

__global__ void RowSumSquaresKernel(const float* __restrict__ x, float* __restrict__ sums,
                                    int64_t cols, int stride) {
  const float* row = x + static_cast<int64_t>(blockIdx.x) * cols;
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) s += row[i] * row[i];
  s = BlockSum(s);
  if (threadIdx.x == 0) sums[static_cast<int64_t>(blockIdx.x) * stride] = s;
}

__global__ void ScaleRowsKernel(float* __restrict__ x, const float* __restrict__ sums, int stride,
                                const float* __restrict__ weight, int64_t cols, int64_t full,
                                float eps) {
  float* row = x + static_cast<int64_t>(blockIdx.x) * cols;
  const float inv =
      rsqrtf(sums[static_cast<int64_t>(blockIdx.x) * stride] / static_cast<float>(full) + eps);
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) row[i] = (row[i] * inv) * weight[i];
}

__global__ void SigmoidGatedAddKernel(float* __restrict__ out, const float* __restrict__ gate,
                                      const float* __restrict__ y, int64_t cols) {
  const float g = 1.0f / (1.0f + expf(-gate[blockIdx.x]));
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) out[base + i] += g * y[base + i];
}

}  // namespace

void SplitQkv(const float* qkv, float* q, float* k, float* v, int64_t rows, int64_t q_cols,
              int64_t kv_cols, float clip, cudaStream_t stream) {
  const int64_t total = rows * (q_cols + 2 * kv_cols);
  if (total == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(Blocks(total), 4096));
  SplitQkvKernel<<<blocks, kThreads, 0, stream>>>(qkv, q, k, v, rows, q_cols, kv_cols, clip);
  MM_CUDA_CHECK(cudaGetLastError());
}

void GatherRows(const float* x, const int32_t* index, float* out, int64_t rows, int64_t cols,
                cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  GatherRowsKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, index, out, cols);
  MM_CUDA_CHECK(cudaGetLastError());
}

void RowSumSquares(const float* x, float* sums, int64_t rows, int64_t cols, int stride,
                   cudaStream_t stream) {
  if (rows == 0) return;
  RowSumSquaresKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, sums, cols, stride);
  MM_CUDA_CHECK(cudaGetLastError());
}

void ScaleRowsByRms(float* x, const float* sums, int stride, const float* weight, int64_t rows,
                    int64_t cols, int64_t full, float eps, cudaStream_t stream) {
  if (rows == 0) return;
  ScaleRowsKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, sums, stride, weight,
                                                                      cols, full, eps);
  MM_CUDA_CHECK(cudaGetLastError());
}

void SigmoidGatedAdd(float* out, const float* gate, const float* y, int64_t rows, int64_t cols,
                     cudaStream_t stream) {
  if (rows == 0) return;
  SigmoidGatedAddKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(out, gate, y, cols);
  MM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace moemesh::cuda
