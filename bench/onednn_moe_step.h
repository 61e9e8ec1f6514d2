// Benchmark helper: the peer baseline of bench/expert_ffn, the same MoE layer step done with
// oneDNN's matmul. Per routed expert: fused gate+up matmul [M, H] x [H, 2I] -> f32, SiLU * up,
// down matmul [M, I] x [I, H] -> f32, weighted sum into the tokens' outputs.
//   bf16: bf16 activations and weights.  int8: u8 activations with zero point 128 (one dynamic
//   scale per matmul call: oneDNN 2.6 has no per-row source scales) and s8 weights with
//   per-output-channel scales as the primitive's output scales (static: runtime scales make
//   oneDNN 2.6 fall back from brgemm to gemm:jit); the activation scale is applied by the
//   elementwise passes that follow each matmul.
// Weights are reordered once, out of the timing, into the layout the primitive asks for
// (format_tag::any) and copied into a ring of slots like PackedExpertRing. oneDNN threads with
// OpenMP over each matmul. Not for the runtime. Thread-safety: one Run at a time per object.
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_arena.h"
#include "bench/moe_routing.h"
#include "common/dtype.h"

namespace moemesh::bench {

class OnednnMoeStep {
 public:
  enum class Type { kBf16, kInt8 };
  static const char* TypeName(Type t) { return t == Type::kBf16 ? "onednn-bf16" : "onednn-int8"; }

  // gate, up [I, H] and down [H, I], fp32 row-major: the weights every slot holds.
  OnednnMoeStep(Type type, int64_t hidden, int64_t intermediate, const float* gate,
                const float* up, const float* down)
      : type_(type), hidden_(hidden), inter_(intermediate), gate_(gate), up_(up), down_(down),
        engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
    if (type_ == Type::kInt8) {
      w1_scales_ = RowScales(gate, inter_, hidden_);
      const std::vector<float> up_scales = RowScales(up, inter_, hidden_);
      w1_scales_.insert(w1_scales_.end(), up_scales.begin(), up_scales.end());
      w2_scales_ = RowScales(down, hidden_, inter_);
    }
  }

  // Weights layout the primitives prefer for about `m_ref` tokens per expert; (re)builds the
  // ring of max(1, ring_bytes / expert bytes) copies when it differs from the one held.
  // Forgets the primitives made for earlier sizes.
  absl::Status Prepare(int64_t m_ref, uint64_t ring_bytes) {
    try {
      dnnl::memory::desc w1, w2;
      MakeMatmul(true, m_ref, nullptr, &w1);
      MakeMatmul(false, m_ref, nullptr, &w2);
      prims_.clear();
      if (!w_slots_.empty() && w1 == w1_ && w2 == w2_) return absl::OkStatus();
      w1_ = w1;
      w2_ = w2;
      return BuildRing(ring_bytes);
    } catch (const dnnl::error& e) {
      return absl::InternalError(absl::StrCat("oneDNN ", TypeName(type_), " setup: ", e.what()));
    }
  }

  // Creates the primitives for every expert size of `g` (call before timing a step).
  absl::Status Warm(const ExpertGroups& g) {
    try {
      for (int64_t i = 0; i < g.count(); ++i) PrimsFor(g.tokens(i));
    } catch (const dnnl::error& e) {
      return absl::InternalError(absl::StrCat("oneDNN ", TypeName(type_), " primitive: ", e.what()));
    }
    return absl::OkStatus();
  }

  // Same contract as CpuMoeStep::Run; slots are taken in ring order, one per routed expert.
  void Run(const StepRouting& r, const ExpertGroups& g, const float* x, float* out) {
    const int k = r.top_k;
    std::memset(out, 0, static_cast<size_t>(r.tokens) * hidden_ * sizeof(float));
    for (int64_t gi = 0; gi < g.count(); ++gi) {
      const int64_t m = g.tokens(gi);
      Prims& p = PrimsFor(m);
      p.src1.set_data_handle(buf_[0].Get(p.src1.get_desc().get_size()));
      p.dst1.set_data_handle(buf_[1].Get(p.dst1.get_desc().get_size()));
      p.src2.set_data_handle(buf_[2].Get(p.src2.get_desc().get_size()));
      p.dst2.set_data_handle(buf_[3].Get(p.dst2.get_desc().get_size()));
      const int slot = cursor_;
      cursor_ = (cursor_ + 1) % static_cast<int>(w_slots_.size());
      const int32_t* routes = g.route.data() + g.begin[gi];
      // Source rows: the expert's tokens, converted.
      const float sx = PackRows(m, hidden_, [&](int64_t row) {
        return x + static_cast<int64_t>(routes[row] / k) * hidden_;
      }, hidden_, p.src1.get_data_handle());
      Execute(p.mm1, p.src1, w_slots_[slot].first, p.dst1);
      // SiLU(gate) * up, converted.
      const float* d1 = static_cast<const float*>(p.dst1.get_data_handle());
      act_.resize(static_cast<size_t>(m * inter_));
#pragma omp parallel for if (m * inter_ >= (1 << 16))
      for (int64_t row = 0; row < m; ++row) {
        const float* gr = d1 + row * 2 * inter_;
        float* a = act_.data() + row * inter_;
        for (int64_t i = 0; i < inter_; ++i) {
          const float gate = gr[i] * sx;
          a[i] = gate / (1.0f + std::exp(-gate)) * (gr[inter_ + i] * sx);
        }
      }
      const float sh = PackRows(m, inter_, [&](int64_t row) { return act_.data() + row * inter_; },
                                inter_, p.src2.get_data_handle());
      Execute(p.mm2, p.src2, w_slots_[slot].second, p.dst2);
      const float* d2 = static_cast<const float*>(p.dst2.get_data_handle());
#pragma omp parallel for if (m * hidden_ >= (1 << 16))
      for (int64_t row = 0; row < m; ++row) {
        const int32_t route = routes[row];
        const float w = r.weights[route] * sh;
        float* o = out + static_cast<int64_t>(route / k) * hidden_;
        const float* y = d2 + row * hidden_;
        for (int64_t i = 0; i < hidden_; ++i) o[i] += w * y[i];
      }
    }
  }

  void Rewind() { cursor_ = 0; }
  int slots() const { return static_cast<int>(w_slots_.size()); }
  size_t expert_bytes() const { return w1_.get_size() + w2_.get_size(); }
  size_t ring_bytes() const { return arena_.used(); }
  // oneDNN's implementation names for `m` tokens per expert, e.g. "brg:avx512_core_bf16".
  std::string ImplName(int64_t m) {
    try {
      Prims& p = PrimsFor(m);
      return p.impl;
    } catch (const dnnl::error& e) {
      return e.what();
    }
  }

 private:
  struct Prims {
    dnnl::matmul mm1, mm2;
    dnnl::memory src1, dst1, src2, dst2;  // activations: no buffer of their own
    std::string impl;
  };

  // A growing 64-byte aligned buffer shared by every expert size.
  struct Buffer {
    std::vector<uint8_t> raw;
    void* Get(size_t bytes) {
      if (raw.size() < bytes + 64) raw.resize(bytes + 64);
      const uintptr_t p = reinterpret_cast<uintptr_t>(raw.data());
      return raw.data() + (64 - p % 64) % 64;
    }
  };

  // Activations: bf16, or u8 = round(x / scale) + 128 with a zero point of 128.
  dnnl::memory::data_type Src() const {
    return type_ == Type::kBf16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::u8;
  }
  dnnl::memory::data_type Wei() const {
    return type_ == Type::kBf16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::s8;
  }

  // The gate+up (first) or down matmul for m tokens, [m, kdim] x [kdim, n] -> f32; weights
  // `fixed` or format_tag::any (its choice in *chosen).
  dnnl::matmul::primitive_desc MakeMatmul(bool first, int64_t m, const dnnl::memory::desc* fixed,
                                          dnnl::memory::desc* chosen) const {
    const int64_t n = first ? 2 * inter_ : hidden_;
    const int64_t kdim = first ? hidden_ : inter_;
    using md = dnnl::memory::desc;
    using tag = dnnl::memory::format_tag;
    const md src({m, kdim}, Src(), tag::ab);
    const md wei = fixed != nullptr ? *fixed : md({kdim, n}, Wei(), tag::any);
    const md dst({m, n}, dnnl::memory::data_type::f32, tag::ab);
    dnnl::primitive_attr attr;
    if (type_ == Type::kInt8) {
      attr.set_output_scales(1 << 1, first ? w1_scales_ : w2_scales_);
      attr.set_zero_points(DNNL_ARG_SRC, 0, {128});
    }
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wei, dst), attr, engine_);
    if (chosen != nullptr) *chosen = pd.weights_desc();
    return pd;
  }

  Prims& PrimsFor(int64_t m) {
    auto it = prims_.find(m);
    if (it != prims_.end()) return it->second;
    Prims p;
    const auto pd1 = MakeMatmul(true, m, &w1_, nullptr);
    const auto pd2 = MakeMatmul(false, m, &w2_, nullptr);
    p.mm1 = dnnl::matmul(pd1);
    p.mm2 = dnnl::matmul(pd2);
    p.impl = std::string(pd1.impl_info_str()) + " / " + pd2.impl_info_str();
    p.src1 = dnnl::memory(pd1.src_desc(), engine_, DNNL_MEMORY_NONE);
    p.dst1 = dnnl::memory(pd1.dst_desc(), engine_, DNNL_MEMORY_NONE);
    p.src2 = dnnl::memory(pd2.src_desc(), engine_, DNNL_MEMORY_NONE);
    p.dst2 = dnnl::memory(pd2.dst_desc(), engine_, DNNL_MEMORY_NONE);
    return prims_.emplace(m, std::move(p)).first->second;
  }

  void Execute(dnnl::matmul& mm, dnnl::memory& src, dnnl::memory& wei, dnnl::memory& dst) {
    mm.execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
    stream_.wait();
  }

  // Converts m rows of `cols` floats (row(i)) into dst: bf16, or u8 with one scale for all rows
  // (returned; 1 for bf16) and the zero point 128.
  template <class RowFn>
  float PackRows(int64_t m, int64_t cols, RowFn row, int64_t ld, void* dst) const {
    if (type_ == Type::kBf16) {
      uint16_t* d = static_cast<uint16_t*>(dst);
#pragma omp parallel for if (m * cols >= (1 << 16))
      for (int64_t i = 0; i < m; ++i) {
        const float* s = row(i);
        for (int64_t c = 0; c < cols; ++c) d[i * ld + c] = F32ToBf16(s[c]);
      }
      return 1.0f;
    }
    float amax = 0.0f;
#pragma omp parallel for reduction(max : amax) if (m * cols >= (1 << 16))
    for (int64_t i = 0; i < m; ++i) {
      const float* s = row(i);
      for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(s[c]));
    }
    const float scale = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    uint8_t* d = static_cast<uint8_t*>(dst);
#pragma omp parallel for if (m * cols >= (1 << 16))
    for (int64_t i = 0; i < m; ++i) {
      const float* s = row(i);
      for (int64_t c = 0; c < cols; ++c) {
        d[i * ld + c] = static_cast<uint8_t>(static_cast<int>(std::nearbyint(s[c] * inv)) + 128);
      }
    }
    return scale;
  }

  // Per-row int8 scales (max |w| / 127) of a row-major [rows, cols] matrix.
  static std::vector<float> RowScales(const float* w, int64_t rows, int64_t cols) {
    std::vector<float> s(rows);
    for (int64_t i = 0; i < rows; ++i) {
      float amax = 0.0f;
      for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(w[i * cols + c]));
      s[i] = amax / 127.0f;
    }
    return s;
  }

  // The plain weights [n rows of kdim] (tag ba of {kdim, n}) as bf16, or s8 with the per-row
  // scales RowScales gives.
  dnnl::memory PlainWeights(int64_t n, int64_t kdim, const std::vector<const float*>& rows,
                            std::vector<uint8_t>* storage) const {
    const size_t elem = type_ == Type::kBf16 ? 2 : 1;
    storage->assign(static_cast<size_t>(n * kdim) * elem, 0);
    for (int64_t i = 0; i < n; ++i) {
      const float* w = rows[i];
      if (type_ == Type::kBf16) {
        uint16_t* d = reinterpret_cast<uint16_t*>(storage->data()) + i * kdim;
        for (int64_t c = 0; c < kdim; ++c) d[c] = F32ToBf16(w[c]);
        continue;
      }
      float amax = 0.0f;
      for (int64_t c = 0; c < kdim; ++c) amax = std::max(amax, std::fabs(w[c]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int8_t* d = reinterpret_cast<int8_t*>(storage->data()) + i * kdim;
      for (int64_t c = 0; c < kdim; ++c) d[c] = static_cast<int8_t>(std::nearbyint(w[c] * inv));
    }
    return dnnl::memory({{kdim, n}, Wei(), dnnl::memory::format_tag::ba}, engine_, storage->data());
  }

  absl::Status BuildRing(uint64_t ring_bytes) {
    const size_t b1 = (w1_.get_size() + 63) / 64 * 64;
    const size_t b2 = (w2_.get_size() + 63) / 64 * 64;
    const int slots = static_cast<int>(std::max<uint64_t>(1, ring_bytes / (b1 + b2)));
    w_slots_.clear();
    arena_.Release();
    cursor_ = 0;
    if (!arena_.Reset((b1 + b2) * slots + 4096)) {
      return absl::ResourceExhaustedError(absl::StrCat("oneDNN ring: cannot map ", (b1 + b2) * slots, " bytes"));
    }
    std::vector<uint8_t> storage;
    std::vector<const float*> rows;
    for (int64_t i = 0; i < inter_; ++i) rows.push_back(gate_ + i * hidden_);
    for (int64_t i = 0; i < inter_; ++i) rows.push_back(up_ + i * hidden_);
    dnnl::memory plain1 = PlainWeights(2 * inter_, hidden_, rows, &storage);
    dnnl::memory first1(w1_, engine_, arena_.Allocate(b1));
    dnnl::reorder(plain1, first1).execute(stream_, plain1, first1);
    stream_.wait();
    rows.clear();
    for (int64_t i = 0; i < hidden_; ++i) rows.push_back(down_ + i * inter_);
    dnnl::memory plain2 = PlainWeights(hidden_, inter_, rows, &storage);
    dnnl::memory first2(w2_, engine_, arena_.Allocate(b2));
    dnnl::reorder(plain2, first2).execute(stream_, plain2, first2);
    stream_.wait();
    w_slots_.emplace_back(first1, first2);
    for (int s = 1; s < slots; ++s) {
      void* p1 = arena_.Allocate(b1);
      void* p2 = arena_.Allocate(b2);
      std::memcpy(p1, first1.get_data_handle(), w1_.get_size());
      std::memcpy(p2, first2.get_data_handle(), w2_.get_size());
      w_slots_.emplace_back(dnnl::memory(w1_, engine_, p1), dnnl::memory(w2_, engine_, p2));
    }
    return absl::OkStatus();
  }

  const Type type_;
  const int64_t hidden_, inter_;
  const float *gate_, *up_, *down_;
  dnnl::engine engine_;
  dnnl::stream stream_;
  dnnl::memory::desc w1_, w2_;
  std::vector<float> w1_scales_, w2_scales_;
  Arena arena_;
  std::vector<std::pair<dnnl::memory, dnnl::memory>> w_slots_;
  std::map<int64_t, Prims> prims_;
  std::vector<float> act_;
  Buffer buf_[4];  // src1, dst1, src2, dst2
  int cursor_ = 0;
};

}  // namespace moemesh::bench
