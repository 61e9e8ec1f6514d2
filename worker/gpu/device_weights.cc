#include "worker/gpu/device_weights.h"

#include <cuda_runtime.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status.h"

namespace moemesh {
namespace {

class Uploader {
 public:
  explicit Uploader(std::vector<void*>* allocations, uint64_t* bytes)
      : allocations_(allocations), bytes_(bytes) {}

  absl::StatusOr<void*> Alloc(size_t bytes) {
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
    if (e != cudaSuccess) {
      size_t free_bytes = 0, total = 0;
      cudaGetLastError();
      cudaMemGetInfo(&free_bytes, &total);
      return absl::ResourceExhaustedError(
          absl::StrCat("GPU weights: cudaMalloc of ", bytes, " bytes failed (",
                       cudaGetErrorString(e), ") after ", *bytes_, " bytes of weights; ",
                       free_bytes, " of ", total, " bytes free"));
    }
    allocations_->push_back(p);
    *bytes_ += bytes;
    return p;
  }

  absl::StatusOr<const float*> Floats(const std::vector<float>& v) {
    if (v.empty()) return static_cast<const float*>(nullptr);
    MM_ASSIGN_OR_RETURN(void* p, Alloc(v.size() * sizeof(float)));
    MM_RETURN_IF_ERROR(Copy(p, v.data(), v.size() * sizeof(float)));
    return static_cast<const float*>(p);
  }

  // Stacks the given fp32 matrices (same column count) as one bf16 matrix.
  absl::StatusOr<DeviceMatrix> Bf16(std::initializer_list<const Matrix*> parts) {
    DeviceMatrix m;
    for (const Matrix* p : parts) {
      if (p->empty()) continue;
      m.cols = p->cols;
      m.rows += p->rows;
    }
    if (m.rows == 0) return m;
    std::vector<uint16_t> host(static_cast<size_t>(m.rows * m.cols));
    size_t at = 0;
    for (const Matrix* p : parts) {
      for (float f : p->data) host[at++] = F32ToBf16(f);
    }
    MM_ASSIGN_OR_RETURN(void* dev, Alloc(host.size() * 2));
    MM_RETURN_IF_ERROR(Copy(dev, host.data(), host.size() * 2));
    m.data = static_cast<const __nv_bfloat16*>(dev);
    return m;
  }

  absl::StatusOr<DeviceFfn> Ffn(const FfnWeights& f) {
    DeviceFfn d;
    MM_ASSIGN_OR_RETURN(d.gate_up, Bf16({&f.gate, &f.up}));
    MM_ASSIGN_OR_RETURN(d.down, Bf16({&f.down}));
    return d;
  }

 private:
  absl::Status Copy(void* dst, const void* src, size_t bytes) {
    cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
      return absl::InternalError(absl::StrCat("GPU weights: upload: ", cudaGetErrorString(e)));
    }
    return absl::OkStatus();
  }

  std::vector<void*>* allocations_;
  uint64_t* bytes_;
};

std::vector<float> Concat(std::initializer_list<const std::vector<float>*> parts) {
  std::vector<float> out;
  for (const auto* p : parts) out.insert(out.end(), p->begin(), p->end());
  return out;
}

}  // namespace

absl::StatusOr<DeviceWeights> DeviceWeights::Upload(const ModelConfig& config,
                                                     const ModelWeights& w) {
  DeviceWeights d;
  Uploader up(&d.allocations_, &d.bytes);
  MM_ASSIGN_OR_RETURN(d.embed, up.Bf16({&w.embed}));
  MM_ASSIGN_OR_RETURN(d.lm_head, up.Bf16({&w.lm_head}));
  MM_ASSIGN_OR_RETURN(d.final_norm, up.Floats(w.final_norm));
  for (const LayerWeights& lw : w.layers) {
    DeviceLayer l;
    MM_ASSIGN_OR_RETURN(l.wqkv, up.Bf16({&lw.wq, &lw.wk, &lw.wv}));
    if (!lw.bq.empty()) {
      MM_ASSIGN_OR_RETURN(l.bqkv, up.Floats(Concat({&lw.bq, &lw.bk, &lw.bv})));
    }
    MM_ASSIGN_OR_RETURN(l.wo, up.Bf16({&lw.wo}));
    MM_ASSIGN_OR_RETURN(l.bo, up.Floats(lw.bo));
    MM_ASSIGN_OR_RETURN(l.attn_norm, up.Floats(lw.attn_norm));
    MM_ASSIGN_OR_RETURN(l.mlp_norm, up.Floats(lw.mlp_norm));
    MM_ASSIGN_OR_RETURN(l.q_norm, up.Floats(lw.q_norm));
    MM_ASSIGN_OR_RETURN(l.k_norm, up.Floats(lw.k_norm));
    l.is_moe = lw.is_moe;
    if (lw.is_moe) {
      MM_ASSIGN_OR_RETURN(l.router, up.Bf16({&lw.router}));
      MM_ASSIGN_OR_RETURN(l.shared, up.Ffn(lw.shared));
      if (!lw.shared_expert_gate.empty()) {
        Matrix gate;
        gate.data = lw.shared_expert_gate;
        gate.rows = 1;
        gate.cols = static_cast<int64_t>(gate.data.size());
        MM_ASSIGN_OR_RETURN(l.shared_gate, up.Bf16({&gate}));
      }
    } else {
      MM_ASSIGN_OR_RETURN(l.dense, up.Ffn(lw.dense));
    }
    d.layers.push_back(l);
  }
  (void)config;
  return d;
}

DeviceWeights::~DeviceWeights() {
  for (void* p : allocations_) cudaFree(p);
}

DeviceWeights::DeviceWeights(DeviceWeights&& o) noexcept { *this = std::move(o); }

DeviceWeights& DeviceWeights::operator=(DeviceWeights&& o) noexcept {
  if (this == &o) return *this;
  for (void* p : allocations_) cudaFree(p);
  embed = o.embed;
  lm_head = o.lm_head;
  final_norm = o.final_norm;
  layers = std::move(o.layers);
  bytes = o.bytes;
  allocations_ = std::move(o.allocations_);
  o.allocations_.clear();
  o.bytes = 0;
  return *this;
}

}  // namespace moemesh
