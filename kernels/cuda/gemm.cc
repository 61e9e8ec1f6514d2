// Gemm (gemm.h) on cuBLASLt. Row-major y[m, n] = x[m, k] . w[n, k]^T is, in cuBLASLt's
// column-major terms, D[n, M] = op(A)[n, k] . B[k, M] with A = w stored k x n (ld k, op = T),
// B = the bf16 activations stored k x M (ld k, op = N) and D stored n x M (ld n), M = m rows
// (kBf16) or 2m (kSplit: hi rows, then lo rows). Plans (descriptors and the heuristic's algorithm)
// are cached per shape, precision, bias and pointer alignment, so a call with a known key does no
// host-side querying and can be captured in a CUDA graph.
#include "kernels/cuda/gemm.h"

#include <cublasLt.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <tuple>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops.h"

namespace moemesh::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

const char* PrecisionName(Precision p) { return p == Precision::kSplit ? "kSplit" : "kBf16"; }

// Largest power of two, at most 256, dividing the address and the row pitch: the alignment of
// every row, which is what cuBLASLt's MIN_ALIGNMENT preferences ask for.
uint32_t RowAlignment(const void* p, int64_t pitch_bytes) {
  const uint64_t v = reinterpret_cast<uintptr_t>(p) | static_cast<uint64_t>(pitch_bytes) | 256u;
  return static_cast<uint32_t>(v & (~v + 1));
}

struct PlanKey {
  int64_t m, n, k;
  Precision precision;
  bool bias;
  uint32_t align_w, align_y, align_bias;
  auto Tie() const { return std::tie(m, n, k, precision, bias, align_w, align_y, align_bias); }
  bool operator<(const PlanKey& o) const { return Tie() < o.Tie(); }
};

[[noreturn]] void LtFail(cublasStatus_t status, const char* what, const PlanKey& key,
                         const char* file, int line) {
  std::fprintf(
      stderr, "%s:%d: cuBLASLt error %s: %s (%s) in Gemm::Linear m=%lld n=%lld k=%lld %s%s\n", file,
      line, cublasLtGetStatusName(status), cublasLtGetStatusString(status), what,
      static_cast<long long>(key.m), static_cast<long long>(key.n), static_cast<long long>(key.k),
      PrecisionName(key.precision), key.bias ? " +bias" : "");
  std::abort();
}

#define MM_LT_CHECK(expr, key)                                 \
  do {                                                         \
    const cublasStatus_t mm_lt_status_ = (expr);               \
    if (mm_lt_status_ != CUBLAS_STATUS_SUCCESS) {              \
      LtFail(mm_lt_status_, #expr, (key), __FILE__, __LINE__); \
    }                                                          \
  } while (0)

struct Plan {
  GemmPath path = GemmPath::kSimpleKernel;
  bool bias_epilogue = false;  // kCublasLt with a bias: the epilogue adds it (kBf16 only)
  bool ran = false;            // a matmul with this plan has succeeded
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};

  void Destroy() {
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
    desc = nullptr;
    a = b = d = nullptr;
  }
};

}  // namespace

const char* GemmPathName(GemmPath path) {
  switch (path) {
    case GemmPath::kNone:
      return "none";
    case GemmPath::kCublasLt:
      return "cublaslt";
    case GemmPath::kCublasLtBiasKernel:
      return "cublaslt+bias-kernel";
    case GemmPath::kSimpleKernel:
      return "simple-kernel";
  }
  return "?";
}

struct Gemm::Impl {
  int64_t max_m = 0, max_n = 0, max_k = 0;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  __nv_bfloat16* act = nullptr;  // [2 * max_m, max_k]: bf16 activations (hi rows, then lo rows)
  float* prod = nullptr;         // [2 * max_m, max_n]: kSplit's fp32 product before combining
  std::map<PlanKey, Plan> plans;
  GemmPath last_path = GemmPath::kNone;
  bool force_simple = false;

  ~Impl() {
    for (auto& [key, plan] : plans) plan.Destroy();
    if (handle != nullptr) cublasLtDestroy(handle);
    cudaFree(workspace);
    cudaFree(act);
    cudaFree(prod);
  }

  // Fills `plan` with descriptors and the heuristic's best algorithm; false (plan left empty)
  // when cuBLASLt has none for this shape and alignment.
  bool TryLt(const PlanKey& key, bool epilogue, const float* bias, Plan* plan) {
    const int64_t rows = key.precision == Precision::kSplit ? 2 * key.m : key.m;
    MM_LT_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), key);
    const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    MM_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a,
                                               sizeof(trans_a)),
                key);
    MM_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b,
                                               sizeof(trans_b)),
                key);
    if (epilogue) {
      const cublasLtEpilogue_t bias_epilogue = CUBLASLT_EPILOGUE_BIAS;
      MM_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                 &bias_epilogue, sizeof(bias_epilogue)),
                  key);
      // The heuristic reads the pointer's alignment; each call sets its own bias pointer.
      MM_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                 &bias, sizeof(bias)),
                  key);
    }
    MM_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_16BF, key.k, key.n, key.k), key);
    MM_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_16BF, key.k, rows, key.k), key);
    MM_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->d, CUDA_R_32F, key.n, rows, key.n), key);

    cublasLtMatmulPreference_t pref = nullptr;
    MM_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref), key);
    const uint64_t workspace_bytes = kWorkspaceBytes;
    const uint32_t align_a = key.align_w;
    const uint32_t align_b = RowAlignment(act, key.k * 2);
    const uint32_t align_d =
        key.precision == Precision::kSplit ? RowAlignment(prod, key.n * 4) : key.align_y;
    MM_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                     &workspace_bytes, sizeof(workspace_bytes)),
                key);
    MM_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
                    pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)),
                key);
    MM_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
                    pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)),
                key);
    MM_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
                    pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof(align_d)),
                key);
    MM_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
                    pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof(align_d)),
                key);
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        handle, plan->desc, plan->a, plan->b, plan->d, plan->d, pref, 1, &result, &returned);
    cublasLtMatmulPreferenceDestroy(pref);
    if (status != CUBLAS_STATUS_NOT_SUPPORTED) {
      MM_LT_CHECK(status, key);
    }
    if (status != CUBLAS_STATUS_SUCCESS || returned == 0 || result.state != CUBLAS_STATUS_SUCCESS) {
      plan->Destroy();
      return false;
    }
    plan->algo = result.algo;
    plan->bias_epilogue = epilogue;
    return true;
  }

  Plan MakePlan(const PlanKey& key, const float* bias) {
    Plan plan;
    // kBf16 writes y directly, so a bias goes in the epilogue when cuBLASLt takes it; kSplit
    // adds it while combining the halves.
    if (key.bias && key.precision == Precision::kBf16 && TryLt(key, true, bias, &plan)) {
      plan.path = GemmPath::kCublasLt;
    } else if (TryLt(key, false, nullptr, &plan)) {
      plan.path = key.bias && key.precision == Precision::kBf16 ? GemmPath::kCublasLtBiasKernel
                                                                : GemmPath::kCublasLt;
    } else {
      plan.path = GemmPath::kSimpleKernel;
    }
    return plan;
  }
};

Gemm::Gemm(int64_t max_m, int64_t max_n, int64_t max_k) : impl_(std::make_unique<Impl>()) {
  if (max_m < 0 || max_n < 0 || max_k < 0) {
    std::fprintf(stderr, "moemesh::cuda::Gemm: negative limits max_m=%lld max_n=%lld max_k=%lld\n",
                 static_cast<long long>(max_m), static_cast<long long>(max_n),
                 static_cast<long long>(max_k));
    std::abort();
  }
  Impl& s = *impl_;
  s.max_m = max_m;
  s.max_n = max_n;
  s.max_k = max_k;
  const cublasStatus_t status = cublasLtCreate(&s.handle);
  if (status != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "%s:%d: cublasLtCreate failed: %s (%s)\n", __FILE__, __LINE__,
                 cublasLtGetStatusName(status), cublasLtGetStatusString(status));
    std::abort();
  }
  MM_CUDA_CHECK(cudaMalloc(&s.workspace, kWorkspaceBytes));
  const size_t act_elems = static_cast<size_t>(2 * max_m * max_k);
  const size_t prod_elems = static_cast<size_t>(2 * max_m * max_n);
  MM_CUDA_CHECK(cudaMalloc(&s.act, std::max<size_t>(1, act_elems) * sizeof(__nv_bfloat16)));
  MM_CUDA_CHECK(cudaMalloc(&s.prod, std::max<size_t>(1, prod_elems) * sizeof(float)));
}

Gemm::~Gemm() = default;

GemmPath Gemm::last_path() const { return impl_->last_path; }

void Gemm::set_force_simple_kernel(bool force) { impl_->force_simple = force; }

void Gemm::Linear(const float* x, const __nv_bfloat16* w, const float* bias, float* y, int64_t m,
                  int64_t n, int64_t k, Precision precision, cudaStream_t stream) {
  Impl& s = *impl_;
  if (m < 0 || n < 0 || k < 0 || m > s.max_m || n > s.max_n || k > s.max_k) {
    std::fprintf(stderr,
                 "moemesh::cuda::Gemm::Linear: m=%lld n=%lld k=%lld outside the limits "
                 "max_m=%lld max_n=%lld max_k=%lld given at construction\n",
                 static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k),
                 static_cast<long long>(s.max_m), static_cast<long long>(s.max_n),
                 static_cast<long long>(s.max_k));
    std::abort();
  }
  if (m == 0 || n == 0) {
    s.last_path = GemmPath::kNone;
    return;
  }
  const bool round_x = precision == Precision::kBf16;
  if (s.force_simple || k == 0) {
    LinearSimple(x, w, bias, y, m, n, k, round_x, stream);
    s.last_path = GemmPath::kSimpleKernel;
    return;
  }
  const PlanKey key{m,
                    n,
                    k,
                    precision,
                    bias != nullptr,
                    RowAlignment(w, k * 2),
                    RowAlignment(y, n * 4),
                    bias != nullptr ? RowAlignment(bias, 0) : 0u};
  auto it = s.plans.find(key);
  if (it == s.plans.end()) it = s.plans.emplace(key, s.MakePlan(key, bias)).first;
  Plan& plan = it->second;
  if (plan.path == GemmPath::kSimpleKernel) {
    LinearSimple(x, w, bias, y, m, n, k, round_x, stream);
    s.last_path = GemmPath::kSimpleKernel;
    return;
  }

  float* d = precision == Precision::kSplit ? s.prod : y;
  if (precision == Precision::kSplit) {
    SplitBf16(x, s.act, s.act + m * k, m * k, stream);
  } else {
    ToBf16(x, s.act, m * k, stream);
  }
  if (plan.bias_epilogue) {
    MM_LT_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                               sizeof(bias)),
                key);
  }
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t status =
      cublasLtMatmul(s.handle, plan.desc, &alpha, w, plan.a, s.act, plan.b, &beta, d, plan.d, d,
                     plan.d, &plan.algo, s.workspace, kWorkspaceBytes, stream);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED && !plan.ran) {
    // The heuristic offered an algorithm the matmul then refused: use the simple kernel for this
    // key from now on (nothing was enqueued by the refused call).
    std::fprintf(stderr,
                 "moemesh::cuda::Gemm: cuBLASLt refused m=%lld n=%lld k=%lld %s; using the simple "
                 "kernel for this shape\n",
                 static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k),
                 PrecisionName(precision));
    plan.Destroy();
    plan.path = GemmPath::kSimpleKernel;
    LinearSimple(x, w, bias, y, m, n, k, round_x, stream);
    s.last_path = GemmPath::kSimpleKernel;
    return;
  }
  MM_LT_CHECK(status, key);
  plan.ran = true;
  if (precision == Precision::kSplit) {
    AddRowsBias(s.prod, s.prod + m * n, bias, y, m, n, stream);
  } else if (bias != nullptr && !plan.bias_epilogue) {
    AddRowsBias(y, nullptr, bias, y, m, n, stream);
  }
  s.last_path = plan.path;
}

}  // namespace moemesh::cuda
