// CUDA operators of ops.h. Each launch picks a 16-byte vectorised kernel when the sizes and
// pointers allow (rows a multiple of 4 floats / 8 bf16, bases 16-byte aligned) and a scalar one
// otherwise; both are exact twins. Launch shapes depend only on the sizes passed.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops.h"

namespace moemesh::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;   // grid-stride kernels: enough blocks to fill any GPU
constexpr int64_t kWarpRowMaxN = 512;  // norms of rows up to this size run one warp per row
constexpr int kRouteWarps = 4;         // RouteTopK: rows (warps) per block

// Aborts with the op named: a violated size contract is a caller bug.
[[noreturn]] __attribute__((format(printf, 2, 3))) void Fail(const char* op, const char* fmt, ...) {
  std::fprintf(stderr, "moemesh::cuda::%s: ", op);
  va_list args;
  va_start(args, fmt);
  std::vfprintf(stderr, fmt, args);
  va_end(args);
  std::fprintf(stderr, "\n");
  std::abort();
}

bool Aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Blocks of kThreads for `work` items (one per thread), capped for grid-stride loops.
unsigned GridFor(int64_t work) {
  return static_cast<unsigned>(
      std::clamp<int64_t>((work + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

__device__ __forceinline__ int64_t GlobalThread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t GridThreads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Four / eight bf16 values, for 8- and 16-byte accesses.
struct alignas(8) Bf16x4 {
  __nv_bfloat162 a, b;
};
struct alignas(16) Bf16x8 {
  __nv_bfloat162 v[4];
};

// ---- Elementwise ops ----------------------------------------------------------------------------

// Runs op.Four(i) on the groups of four elements i < n / 4 (kVec), then op.One(e) on the rest.
template <bool kVec, typename Op>
__global__ void ElementwiseKernel(Op op, int64_t n) {
  const int64_t start = GlobalThread(), stride = GridThreads();
  int64_t tail = 0;
  if constexpr (kVec) {
    const int64_t n4 = n / 4;
    for (int64_t i = start; i < n4; i += stride) op.Four(i);
    tail = n4 * 4;
  }
  for (int64_t e = tail + start; e < n; e += stride) op.One(e);
}

template <typename Op>
void LaunchElementwise(const Op& op, int64_t n, bool vec, cudaStream_t stream) {
  if (n <= 0) return;
  if (vec) {
    ElementwiseKernel<true><<<GridFor(n / 4 + n % 4), kThreads, 0, stream>>>(op, n);
  } else {
    ElementwiseKernel<false><<<GridFor(n), kThreads, 0, stream>>>(op, n);
  }
  MM_CUDA_CHECK(cudaGetLastError());
}

struct AddOp {
  float* x;
  const float* y;
  __device__ void Four(int64_t i) const {
    float4 a = reinterpret_cast<const float4*>(x)[i];
    const float4 b = reinterpret_cast<const float4*>(y)[i];
    a.x += b.x;
    a.y += b.y;
    a.z += b.z;
    a.w += b.w;
    reinterpret_cast<float4*>(x)[i] = a;
  }
  __device__ void One(int64_t e) const { x[e] += y[e]; }
};

struct ClampOp {
  float* x;
  float limit;
  // Comparisons, not fminf/fmaxf, so that NaN passes through.
  __device__ float C(float v) const { return v < -limit ? -limit : (v > limit ? limit : v); }
  __device__ void Four(int64_t i) const {
    float4 a = reinterpret_cast<const float4*>(x)[i];
    a = make_float4(C(a.x), C(a.y), C(a.z), C(a.w));
    reinterpret_cast<float4*>(x)[i] = a;
  }
  __device__ void One(int64_t e) const { x[e] = C(x[e]); }
};

struct SplitBf16Op {
  const float* x;
  __nv_bfloat16* hi;
  __nv_bfloat16* lo;
  // x - float(hi) is exact in fp32 (hi is x rounded to 8 significant bits).
  __device__ static float Rest(float v, __nv_bfloat16 h) { return v - __bfloat162float(h); }
  __device__ void Four(int64_t i) const {
    const float4 v = reinterpret_cast<const float4*>(x)[i];
    const __nv_bfloat162 h01 = __floats2bfloat162_rn(v.x, v.y);
    const __nv_bfloat162 h23 = __floats2bfloat162_rn(v.z, v.w);
    const __nv_bfloat162 l01 = __floats2bfloat162_rn(Rest(v.x, h01.x), Rest(v.y, h01.y));
    const __nv_bfloat162 l23 = __floats2bfloat162_rn(Rest(v.z, h23.x), Rest(v.w, h23.y));
    reinterpret_cast<Bf16x4*>(hi)[i] = Bf16x4{h01, h23};
    reinterpret_cast<Bf16x4*>(lo)[i] = Bf16x4{l01, l23};
  }
  __device__ void One(int64_t e) const {
    const float v = x[e];
    const __nv_bfloat16 h = __float2bfloat16_rn(v);
    hi[e] = h;
    lo[e] = __float2bfloat16_rn(Rest(v, h));
  }
};

struct ToBf16Op {
  const float* x;
  __nv_bfloat16* out;
  __device__ void Four(int64_t i) const {
    const float4 v = reinterpret_cast<const float4*>(x)[i];
    reinterpret_cast<Bf16x4*>(out)[i] =
        Bf16x4{__floats2bfloat162_rn(v.x, v.y), __floats2bfloat162_rn(v.z, v.w)};
  }
  __device__ void One(int64_t e) const { out[e] = __float2bfloat16_rn(x[e]); }
};

struct ToFloatOp {
  const __nv_bfloat16* x;
  float* out;
  __device__ void Four(int64_t i) const {
    const Bf16x4 v = reinterpret_cast<const Bf16x4*>(x)[i];
    const float2 a = __bfloat1622float2(v.a), b = __bfloat1622float2(v.b);
    reinterpret_cast<float4*>(out)[i] = make_float4(a.x, a.y, b.x, b.y);
  }
  __device__ void One(int64_t e) const { out[e] = __bfloat162float(x[e]); }
};

// y = a (+ b) (+ bias[column]) over rows of n; the vector path needs n % 4 == 0.
struct AddRowsBiasOp {
  const float* a;
  const float* b;
  const float* bias;
  float* y;
  int64_t n;
  __device__ void Four(int64_t i) const {
    float4 v = reinterpret_cast<const float4*>(a)[i];
    if (b != nullptr) {
      const float4 w = reinterpret_cast<const float4*>(b)[i];
      v.x += w.x;
      v.y += w.y;
      v.z += w.z;
      v.w += w.w;
    }
    if (bias != nullptr) {
      const float4 w = reinterpret_cast<const float4*>(bias)[i % (n / 4)];
      v.x += w.x;
      v.y += w.y;
      v.z += w.z;
      v.w += w.w;
    }
    reinterpret_cast<float4*>(y)[i] = v;
  }
  __device__ void One(int64_t e) const {
    float v = a[e];
    if (b != nullptr) v += b[e];
    if (bias != nullptr) v += bias[e % n];
    y[e] = v;
  }
};

// ---- Row norms ----------------------------------------------------------------------------------

// Sum of v over the kGroup threads that share a row: one warp, or the whole block. Every thread
// of the group gets the total. Call once per kernel (the block variant uses static shared memory).
template <int kGroup>
__device__ float RowSum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if constexpr (kGroup == 32) {
    return v;
  } else {
    static_assert(kGroup == kThreads, "a row is one warp or one block");
    __shared__ float warp_sums[kThreads / 32];
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    return total;
  }
}

// out = RmsNorm(x (+= branch when kAdd)) for rows of n; kGroup threads per row. Each thread
// touches the same indices in both passes, so out may alias x or branch. kVec: n % 4 == 0 and
// every pointer 16-byte aligned.
template <int kGroup, bool kVec, bool kAdd>
__global__ void RowNormKernel(float* x, const float* branch, const float* weight, float* out,
                              int64_t rows, int64_t n, float eps) {
  constexpr int kRowsPerBlock = kThreads / kGroup;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kGroup;
  const int lane = static_cast<int>(threadIdx.x % kGroup);
  if (row >= rows) return;  // uniform over the row's group (the block when kGroup == kThreads)
  float* xr = x + row * n;
  float* outr = out + row * n;
  const float* br = kAdd ? branch + row * n : nullptr;
  float sum = 0.0f;
  if constexpr (kVec) {
    for (int64_t i = lane; i < n / 4; i += kGroup) {
      float4 v = reinterpret_cast<const float4*>(xr)[i];
      if constexpr (kAdd) {
        const float4 b = reinterpret_cast<const float4*>(br)[i];
        v.x += b.x;
        v.y += b.y;
        v.z += b.z;
        v.w += b.w;
        reinterpret_cast<float4*>(xr)[i] = v;
      }
      sum += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
  } else {
    for (int64_t i = lane; i < n; i += kGroup) {
      float v = xr[i];
      if constexpr (kAdd) {
        v += br[i];
        xr[i] = v;
      }
      sum += v * v;
    }
  }
  const float inv = rsqrtf(RowSum<kGroup>(sum) / static_cast<float>(n) + eps);
  if constexpr (kVec) {
    for (int64_t i = lane; i < n / 4; i += kGroup) {
      const float4 v = reinterpret_cast<const float4*>(xr)[i];
      const float4 w = reinterpret_cast<const float4*>(weight)[i];
      reinterpret_cast<float4*>(outr)[i] =
          make_float4((v.x * inv) * w.x, (v.y * inv) * w.y, (v.z * inv) * w.z, (v.w * inv) * w.w);
    }
  } else {
    for (int64_t i = lane; i < n; i += kGroup) outr[i] = (xr[i] * inv) * weight[i];
  }
}

template <bool kAdd>
void LaunchRowNorm(float* x, const float* branch, const float* weight, float* out, int64_t rows,
                   int64_t n, float eps, cudaStream_t stream) {
  if (rows <= 0 || n <= 0) return;
  const bool vec = n % 4 == 0 && Aligned(x, 16) && Aligned(weight, 16) && Aligned(out, 16) &&
                   (!kAdd || Aligned(branch, 16));
  if (n <= kWarpRowMaxN) {
    constexpr int kRowsPerBlock = kThreads / 32;
    const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    if (blocks > INT_MAX) Fail("RmsNorm", "rows=%lld too many", static_cast<long long>(rows));
    auto kernel = vec ? RowNormKernel<32, true, kAdd> : RowNormKernel<32, false, kAdd>;
    kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, branch, weight, out, rows, n,
                                                                   eps);
  } else {
    if (rows > INT_MAX) Fail("RmsNorm", "rows=%lld too many", static_cast<long long>(rows));
    auto kernel = vec ? RowNormKernel<kThreads, true, kAdd> : RowNormKernel<kThreads, false, kAdd>;
    kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, branch, weight, out, rows, n,
                                                                 eps);
  }
  MM_CUDA_CHECK(cudaGetLastError());
}

// ---- RoPE, SiLU, embedding ----------------------------------------------------------------------

// Rotates the pair (a, b) by `angle` with precise cosf / sinf, as ref::RopeNeox does.
__device__ __forceinline__ void Rotate(float& a, float& b, float angle) {
  const float c = cosf(angle), s = sinf(angle);
  const float a0 = a, b0 = b;
  a = a0 * c - b0 * s;
  b = b0 * c + a0 * s;
}

// One thread per pair (x[i], x[i + half]) of one head, or per four pairs (kVec: half % 4 == 0,
// x and inv_freq 16-byte aligned).
template <bool kVec>
__global__ void RopeNeoxKernel(float* x, const int32_t* positions, const float* inv_freq,
                               int64_t tokens, int heads, int head_dim) {
  const int half = head_dim / 2;
  const int groups = kVec ? half / 4 : half;
  const int64_t total = tokens * heads * groups;
  for (int64_t idx = GlobalThread(); idx < total; idx += GridThreads()) {
    const int g = static_cast<int>(idx % groups);
    const int64_t head_row = idx / groups;  // token * heads + head
    // __fmul_rn: the angle is one rounded fp32 product, never fused into the cosf reduction.
    const float pos = static_cast<float>(positions[head_row / heads]);
    float* xh = x + head_row * head_dim;
    if constexpr (kVec) {
      const int i = g * 4;
      float4 a = *reinterpret_cast<const float4*>(xh + i);
      float4 b = *reinterpret_cast<const float4*>(xh + half + i);
      const float4 f = *reinterpret_cast<const float4*>(inv_freq + i);
      Rotate(a.x, b.x, __fmul_rn(pos, f.x));
      Rotate(a.y, b.y, __fmul_rn(pos, f.y));
      Rotate(a.z, b.z, __fmul_rn(pos, f.z));
      Rotate(a.w, b.w, __fmul_rn(pos, f.w));
      *reinterpret_cast<float4*>(xh + i) = a;
      *reinterpret_cast<float4*>(xh + half + i) = b;
    } else {
      Rotate(xh[g], xh[g + half], __fmul_rn(pos, inv_freq[g]));
    }
  }
}

__device__ __forceinline__ float SiluTimes(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// out[r, c] = silu(gate_up[r, c]) * gate_up[r, inter + c]; kVec: inter % 4 == 0, 16-byte bases.
template <bool kVec>
__global__ void SiluMulKernel(const float* gate_up, float* out, int64_t rows, int64_t inter) {
  const int64_t cols = kVec ? inter / 4 : inter;
  const int64_t total = rows * cols;
  for (int64_t idx = GlobalThread(); idx < total; idx += GridThreads()) {
    const int64_t r = idx / cols, c = idx - r * cols;
    const float* gate = gate_up + r * 2 * inter;
    const float* up = gate + inter;
    float* o = out + r * inter;
    if constexpr (kVec) {
      const float4 g = reinterpret_cast<const float4*>(gate)[c];
      const float4 u = reinterpret_cast<const float4*>(up)[c];
      reinterpret_cast<float4*>(o)[c] = make_float4(SiluTimes(g.x, u.x), SiluTimes(g.y, u.y),
                                                    SiluTimes(g.z, u.z), SiluTimes(g.w, u.w));
    } else {
      o[c] = SiluTimes(gate[c], up[c]);
    }
  }
}

// One block per token; kVec: hidden % 8 == 0, table and out 16-byte aligned.
template <bool kVec>
__global__ void EmbeddingKernel(const int32_t* ids, const __nv_bfloat16* table, int64_t vocab_begin,
                                int64_t vocab_rows, float* out, int64_t hidden) {
  const int64_t t = blockIdx.x;
  const int64_t row = static_cast<int64_t>(ids[t]) - vocab_begin;
  const bool valid = row >= 0 && row < vocab_rows;
  const __nv_bfloat16* src = table + (valid ? row : 0) * hidden;
  float* o = out + t * hidden;
  if constexpr (kVec) {
    for (int64_t c = threadIdx.x; c < hidden / 8; c += blockDim.x) {
      float4 lo = make_float4(0.0f, 0.0f, 0.0f, 0.0f), hi = lo;
      if (valid) {
        const Bf16x8 v = reinterpret_cast<const Bf16x8*>(src)[c];
        const float2 f0 = __bfloat1622float2(v.v[0]), f1 = __bfloat1622float2(v.v[1]);
        const float2 f2 = __bfloat1622float2(v.v[2]), f3 = __bfloat1622float2(v.v[3]);
        lo = make_float4(f0.x, f0.y, f1.x, f1.y);
        hi = make_float4(f2.x, f2.y, f3.x, f3.y);
      }
      reinterpret_cast<float4*>(o)[2 * c] = lo;
      reinterpret_cast<float4*>(o)[2 * c + 1] = hi;
    }
  } else {
    for (int64_t c = threadIdx.x; c < hidden; c += blockDim.x) {
      o[c] = valid ? __bfloat162float(src[c]) : 0.0f;
    }
  }
}

// ---- Router -------------------------------------------------------------------------------------

// One warp per row, kRouteWarps rows per block; dynamic shared memory holds each warp's
// probabilities (kRouteWarps * n floats). Lane l owns experts l, l + 32, ...: it alone reads and
// writes their shared slots, so no warp barrier is needed around them. Selected experts are
// marked -1 (below every probability). Lane j < top_k keeps the j-th pick.
__global__ void RouteTopKKernel(const float* logits, int64_t rows, int n, int top_k,
                                bool renormalize, int32_t* ids, float* weights) {
  extern __shared__ float route_probs[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRouteWarps + warp;
  if (row >= rows) return;  // uniform over the warp
  float* probs = route_probs + warp * n;
  const float* lr = logits + row * n;

  float max_v = -INFINITY;
  for (int e = lane; e < n; e += 32) {
    probs[e] = lr[e];
    max_v = fmaxf(max_v, probs[e]);
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    max_v = fmaxf(max_v, __shfl_xor_sync(0xffffffffu, max_v, offset));
  }
  // As ref::Softmax: fp32 exponentials, their sum in double, each divided in double.
  double sum = 0.0;
  for (int e = lane; e < n; e += 32) {
    probs[e] = expf(probs[e] - max_v);
    sum += probs[e];
  }
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  for (int e = lane; e < n; e += 32) probs[e] = static_cast<float>(probs[e] / sum);

  int32_t my_id = 0;
  float my_weight = 0.0f;
  for (int j = 0; j < top_k; ++j) {
    // The lane's best: strict > over increasing ids keeps the lower id on ties.
    float best_v = -INFINITY;
    int best_e = INT_MAX;
    for (int e = lane; e < n; e += 32) {
      const float p = probs[e];
      if (p > best_v) {
        best_v = p;
        best_e = e;
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other_v = __shfl_xor_sync(0xffffffffu, best_v, offset);
      const int other_e = __shfl_xor_sync(0xffffffffu, best_e, offset);
      if (other_v > best_v || (other_v == best_v && other_e < best_e)) {
        best_v = other_v;
        best_e = other_e;
      }
    }
    if (best_e >= n) best_e = j;  // only with NaN probabilities: keep the id in range
    if (lane == best_e % 32) probs[best_e] = -1.0f;
    if (lane == j) {
      my_id = best_e;
      my_weight = best_v;
    }
  }
  if (renormalize) {
    double total = lane < top_k ? static_cast<double>(my_weight) : 0.0;
    for (int offset = 16; offset > 0; offset /= 2) {
      total += __shfl_xor_sync(0xffffffffu, total, offset);
    }
    my_weight = static_cast<float>(my_weight / total);
  }
  if (lane < top_k) {
    ids[row * top_k + lane] = my_id;
    weights[row * top_k + lane] = my_weight;
  }
}

// ---- Simple GEMM --------------------------------------------------------------------------------

// One warp per output y[r, j]; lanes stride over k.
template <bool kRoundX>
__global__ void LinearSimpleKernel(const float* x, const __nv_bfloat16* w, const float* bias,
                                   float* y, int64_t m, int64_t n, int64_t k) {
  const int64_t out = GlobalThread() / 32;
  const int lane = threadIdx.x % 32;
  if (out >= m * n) return;  // uniform over the warp
  const int64_t r = out / n, j = out - r * n;
  const float* xr = x + r * k;
  const __nv_bfloat16* wj = w + j * k;
  float acc = 0.0f;
  for (int64_t t = lane; t < k; t += 32) {
    float xv = xr[t];
    if constexpr (kRoundX) xv = __bfloat162float(__float2bfloat16_rn(xv));
    acc += xv * __bfloat162float(wj[t]);
  }
  for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  if (lane == 0) y[out] = bias != nullptr ? acc + bias[j] : acc;
}

}  // namespace

void RmsNorm(const float* x, const float* weight, float* out, int64_t rows, int64_t n, float eps,
             cudaStream_t stream) {
  // x is only read (kAdd is false).
  LaunchRowNorm<false>(const_cast<float*>(x), nullptr, weight, out, rows, n, eps, stream);
}

void AddRmsNorm(float* x, const float* branch, const float* weight, float* out, int64_t rows,
                int64_t n, float eps, cudaStream_t stream) {
  LaunchRowNorm<true>(x, branch, weight, out, rows, n, eps, stream);
}

void Add(float* x, const float* y, int64_t n, cudaStream_t stream) {
  LaunchElementwise(AddOp{x, y}, n, Aligned(x, 16) && Aligned(y, 16), stream);
}

void Clamp(float* x, int64_t n, float limit, cudaStream_t stream) {
  LaunchElementwise(ClampOp{x, limit}, n, Aligned(x, 16), stream);
}

void RopeNeox(float* x, const int32_t* positions, const float* inv_freq, int64_t tokens, int heads,
              int head_dim, cudaStream_t stream) {
  const int half = head_dim / 2;
  if (tokens <= 0 || heads <= 0 || half <= 0) return;
  const bool vec = half % 4 == 0 && Aligned(x, 16) && Aligned(inv_freq, 16);
  const int64_t work = tokens * heads * (vec ? half / 4 : half);
  if (vec) {
    RopeNeoxKernel<true>
        <<<GridFor(work), kThreads, 0, stream>>>(x, positions, inv_freq, tokens, heads, head_dim);
  } else {
    RopeNeoxKernel<false>
        <<<GridFor(work), kThreads, 0, stream>>>(x, positions, inv_freq, tokens, heads, head_dim);
  }
  MM_CUDA_CHECK(cudaGetLastError());
}

void SiluMul(const float* gate_up, float* out, int64_t rows, int64_t inter, cudaStream_t stream) {
  if (rows <= 0 || inter <= 0) return;
  const bool vec = inter % 4 == 0 && Aligned(gate_up, 16) && Aligned(out, 16);
  const int64_t work = rows * (vec ? inter / 4 : inter);
  if (vec) {
    SiluMulKernel<true><<<GridFor(work), kThreads, 0, stream>>>(gate_up, out, rows, inter);
  } else {
    SiluMulKernel<false><<<GridFor(work), kThreads, 0, stream>>>(gate_up, out, rows, inter);
  }
  MM_CUDA_CHECK(cudaGetLastError());
}

void Embedding(const int32_t* ids, const __nv_bfloat16* table, int64_t vocab_begin,
               int64_t vocab_rows, float* out, int64_t tokens, int64_t hidden,
               cudaStream_t stream) {
  if (tokens <= 0 || hidden <= 0) return;
  if (tokens > INT_MAX) Fail("Embedding", "tokens=%lld too many", static_cast<long long>(tokens));
  const bool vec = hidden % 8 == 0 && Aligned(table, 16) && Aligned(out, 16);
  if (vec) {
    EmbeddingKernel<true><<<static_cast<unsigned>(tokens), kThreads, 0, stream>>>(
        ids, table, vocab_begin, vocab_rows, out, hidden);
  } else {
    EmbeddingKernel<false><<<static_cast<unsigned>(tokens), kThreads, 0, stream>>>(
        ids, table, vocab_begin, vocab_rows, out, hidden);
  }
  MM_CUDA_CHECK(cudaGetLastError());
}

void RouteTopK(const float* logits, int64_t rows, int n_experts, int top_k, bool renormalize,
               int32_t* ids, float* weights, cudaStream_t stream) {
  if (n_experts < 1 || n_experts > 1024 || top_k < 1 || top_k > 32 || top_k > n_experts) {
    Fail("RouteTopK",
         "n_experts=%d top_k=%d: need 1 <= top_k <= min(32, n_experts) and "
         "n_experts <= 1024",
         n_experts, top_k);
  }
  if (rows <= 0) return;
  const int64_t blocks = (rows + kRouteWarps - 1) / kRouteWarps;
  if (blocks > INT_MAX) Fail("RouteTopK", "rows=%lld too many", static_cast<long long>(rows));
  const size_t shared = sizeof(float) * kRouteWarps * n_experts;  // <= 16 KiB
  RouteTopKKernel<<<static_cast<unsigned>(blocks), kRouteWarps * 32, shared, stream>>>(
      logits, rows, n_experts, top_k, renormalize, ids, weights);
  MM_CUDA_CHECK(cudaGetLastError());
}

void SplitBf16(const float* x, __nv_bfloat16* hi, __nv_bfloat16* lo, int64_t n,
               cudaStream_t stream) {
  LaunchElementwise(SplitBf16Op{x, hi, lo}, n, Aligned(x, 16) && Aligned(hi, 8) && Aligned(lo, 8),
                    stream);
}

void ToBf16(const float* x, __nv_bfloat16* out, int64_t n, cudaStream_t stream) {
  LaunchElementwise(ToBf16Op{x, out}, n, Aligned(x, 16) && Aligned(out, 8), stream);
}

void ToFloat(const __nv_bfloat16* x, float* out, int64_t n, cudaStream_t stream) {
  LaunchElementwise(ToFloatOp{x, out}, n, Aligned(x, 8) && Aligned(out, 16), stream);
}

void AddRowsBias(const float* a, const float* b, const float* bias, float* y, int64_t rows,
                 int64_t n, cudaStream_t stream) {
  if (rows <= 0 || n <= 0) return;
  const bool vec =
      n % 4 == 0 && Aligned(a, 16) && Aligned(b, 16) && Aligned(bias, 16) && Aligned(y, 16);
  LaunchElementwise(AddRowsBiasOp{a, b, bias, y, n}, rows * n, vec, stream);
}

void LinearSimple(const float* x, const __nv_bfloat16* w, const float* bias, float* y, int64_t m,
                  int64_t n, int64_t k, bool round_x_to_bf16, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return;
  const int64_t blocks = (m * n * 32 + kThreads - 1) / kThreads;
  if (blocks > INT_MAX) {
    Fail("LinearSimple", "m=%lld n=%lld: too many outputs", static_cast<long long>(m),
         static_cast<long long>(n));
  }
  if (round_x_to_bf16) {
    LinearSimpleKernel<true>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, w, bias, y, m, n, k);
  } else {
    LinearSimpleKernel<false>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, w, bias, y, m, n, k);
  }
  MM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace moemesh::cuda
