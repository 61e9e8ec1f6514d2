#include "model/reference/model_weights.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/dtype.h"
#include "common/status.h"

namespace moemesh {
namespace {

// One tensor (or slice of one) to read into a destination vector.
struct ReadJob {
  std::string name;
  Slice slice;
  std::vector<int64_t> shape;  // expected shape of the slice
  std::vector<float>* out;
  uint64_t stored_bytes = 0;
};

class Planner {
 public:
  Planner(const ModelConfig& c, const WeightSource& src) : c_(c), src_(src) {}

  // Plans reading `name` sliced by `slice` with the expected slice shape `shape`; the full
  // tensor must exist and have `full_shape`.
  absl::Status Add(std::string name, std::vector<int64_t> full_shape, Slice slice,
                   std::vector<int64_t> shape, std::vector<float>* out) {
    MM_ASSIGN_OR_RETURN(TensorInfo info, src_.Info(name));
    MM_RETURN_IF_ERROR(CheckShape(info, full_shape));
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    jobs_.push_back({std::move(name), std::move(slice), std::move(shape), out,
                     static_cast<uint64_t>(n) * DTypeSize(info.dtype)});
    return absl::OkStatus();
  }

  absl::Status AddMatrix(std::string name, std::vector<int64_t> full_shape, Slice slice,
                         int64_t rows, int64_t cols, Matrix* m) {
    m->rows = rows;
    m->cols = cols;
    return Add(std::move(name), std::move(full_shape), std::move(slice), {rows, cols}, &m->data);
  }

  // One expert's matrix out of a fused [E, N, K] tensor: the slice keeps its leading 1.
  absl::Status AddExpertMatrix(std::string name, std::vector<int64_t> full_shape, Slice slice,
                               int64_t rows, int64_t cols, Matrix* m) {
    m->rows = rows;
    m->cols = cols;
    return Add(std::move(name), std::move(full_shape), std::move(slice), {1, rows, cols}, &m->data);
  }

  absl::Status AddVector(std::string name, int64_t full, int64_t begin, int64_t end,
                         std::vector<float>* out) {
    return Add(std::move(name), {full}, Slice::Rows(begin, end), {end - begin}, out);
  }

  absl::Status Run(const LoadProgress& progress) {
    uint64_t total = 0;
    for (const ReadJob& j : jobs_) total += j.stored_bytes;
    uint64_t done = 0;
    for (ReadJob& j : jobs_) {
      MM_ASSIGN_OR_RETURN(*j.out, src_.ReadF32Checked(j.name, j.slice, j.shape));
      done += j.stored_bytes;
      if (progress) progress(done, total);
    }
    return absl::OkStatus();
  }

 private:
  const ModelConfig& c_;
  const WeightSource& src_;
  std::vector<ReadJob> jobs_;
};

std::string LayerName(int layer, absl::string_view rest) {
  return absl::StrCat("model.layers.", layer, ".", rest);
}

std::string ExpertName(absl::string_view tmpl, int expert) {
  return absl::StrReplaceAll(tmpl, {{"{E}", absl::StrCat(expert)}});
}

absl::Status PlanFfn(Planner& p, const std::string& gate, const std::string& up,
                     const std::string& down, int64_t hidden, int64_t inter, FfnWeights* f) {
  MM_RETURN_IF_ERROR(p.AddMatrix(gate, {inter, hidden}, Slice::All(), inter, hidden, &f->gate));
  MM_RETURN_IF_ERROR(p.AddMatrix(up, {inter, hidden}, Slice::All(), inter, hidden, &f->up));
  return p.AddMatrix(down, {hidden, inter}, Slice::All(), hidden, inter, &f->down);
}

absl::Status PlanAttention(Planner& p, const ModelConfig& c, int layer, int hb, int he, int kvb,
                           int kve, LayerWeights* lw) {
  const ArchSpec& a = *c.arch;
  const int64_t d = c.head_dim;
  const int64_t h = c.hidden_size;
  const int64_t nq = he - hb;
  const int64_t nkv = kve - kvb;
  auto name = [&](absl::string_view rest) { return LayerName(layer, absl::StrCat("self_attn.", rest)); };
  MM_RETURN_IF_ERROR(p.AddMatrix(name("q_proj.weight"), {c.q_size(), h}, Slice::Rows(hb * d, he * d),
                                 nq * d, h, &lw->wq));
  MM_RETURN_IF_ERROR(p.AddMatrix(name("k_proj.weight"), {c.kv_size(), h},
                                 Slice::Rows(kvb * d, kve * d), nkv * d, h, &lw->wk));
  MM_RETURN_IF_ERROR(p.AddMatrix(name("v_proj.weight"), {c.kv_size(), h},
                                 Slice::Rows(kvb * d, kve * d), nkv * d, h, &lw->wv));
  MM_RETURN_IF_ERROR(p.AddMatrix(name("o_proj.weight"), {h, c.q_size()},
                                 Slice::Dim(1, hb * d, he * d), h, nq * d, &lw->wo));
  if (c.attention_bias) {
    MM_RETURN_IF_ERROR(p.AddVector(name("q_proj.bias"), c.q_size(), hb * d, he * d, &lw->bq));
    MM_RETURN_IF_ERROR(p.AddVector(name("k_proj.bias"), c.kv_size(), kvb * d, kve * d, &lw->bk));
    MM_RETURN_IF_ERROR(p.AddVector(name("v_proj.bias"), c.kv_size(), kvb * d, kve * d, &lw->bv));
    if (a.bias_on_o_proj) MM_RETURN_IF_ERROR(p.AddVector(name("o_proj.bias"), h, 0, h, &lw->bo));
  }
  switch (a.qk_norm) {
    case QkNorm::kNone:
      break;
    case QkNorm::kPerHead:
      MM_RETURN_IF_ERROR(p.AddVector(name("q_norm.weight"), d, 0, d, &lw->q_norm));
      MM_RETURN_IF_ERROR(p.AddVector(name("k_norm.weight"), d, 0, d, &lw->k_norm));
      break;
    case QkNorm::kWholeProjection:
      MM_RETURN_IF_ERROR(p.AddVector(name("q_norm.weight"), c.q_size(), hb * d, he * d, &lw->q_norm));
      MM_RETURN_IF_ERROR(p.AddVector(name("k_norm.weight"), c.kv_size(), kvb * d, kve * d, &lw->k_norm));
      break;
  }
  return absl::OkStatus();
}

absl::Status PlanMoe(Planner& p, const ModelConfig& c, const WeightSource& src, int layer,
                     const std::vector<int>& experts, bool dense, LayerWeights* lw) {
  const ArchSpec& a = *c.arch;
  const int64_t h = c.hidden_size;
  const int64_t inter = c.expert_intermediate_size;
  const int64_t e_count = c.num_experts;
  std::string prefix;
  for (absl::string_view candidate : a.moe_prefixes) {
    if (src.Has(LayerName(layer, absl::StrCat(candidate, ".", a.router)))) {
      prefix = LayerName(layer, candidate);
      break;
    }
  }
  if (prefix.empty()) {
    std::vector<std::string> tried;
    for (absl::string_view candidate : a.moe_prefixes) {
      tried.push_back(LayerName(layer, absl::StrCat(candidate, ".", a.router)));
    }
    return absl::NotFoundError(absl::StrCat("router tensor not found in ", src.Describe(),
                                            " (tried ", absl::StrJoin(tried, ", "), ")"));
  }
  auto name = [&](absl::string_view rest) { return absl::StrCat(prefix, ".", rest); };
  if (dense) {
    MM_RETURN_IF_ERROR(p.AddMatrix(name(a.router), {e_count, h}, Slice::All(), e_count, h, &lw->router));
  }
  lw->expert_ids = experts;
  lw->experts.resize(experts.size());
  if (experts.empty() && !dense) return absl::OkStatus();
  const bool per_expert = src.Has(name(ExpertName(a.expert_gate, experts.empty() ? 0 : experts[0])));
  const bool fused = src.Has(name(a.fused_gate_up));
  if (!experts.empty() && !per_expert && !fused) {
    return absl::NotFoundError(absl::StrCat(
        "expert weights of layer ", layer, " not found in ", src.Describe(), " (tried ",
        name(ExpertName(a.expert_gate, 0)), " and the fused ", name(a.fused_gate_up), ")"));
  }
  for (size_t i = 0; i < experts.size(); ++i) {
    const int e = experts[i];
    FfnWeights* f = &lw->experts[i];
    if (per_expert) {
      MM_RETURN_IF_ERROR(PlanFfn(p, name(ExpertName(a.expert_gate, e)), name(ExpertName(a.expert_up, e)),
                                 name(ExpertName(a.expert_down, e)), h, inter, f));
      continue;
    }
    const std::string gate_up = name(a.fused_gate_up);
    Slice gate_slice{{{e, e + 1}, {0, inter}}};
    Slice up_slice{{{e, e + 1}, {inter, 2 * inter}}};
    MM_RETURN_IF_ERROR(p.AddExpertMatrix(gate_up, {e_count, 2 * inter, h}, gate_slice, inter, h, &f->gate));
    MM_RETURN_IF_ERROR(p.AddExpertMatrix(gate_up, {e_count, 2 * inter, h}, up_slice, inter, h, &f->up));
    MM_RETURN_IF_ERROR(p.AddExpertMatrix(name(a.fused_down), {e_count, h, inter},
                                         Slice::Rows(e, e + 1), h, inter, &f->down));
  }
  if (dense && c.shared_intermediate_size > 0) {
    MM_RETURN_IF_ERROR(PlanFfn(p, name(a.shared_gate_proj), name(a.shared_up_proj),
                               name(a.shared_down_proj), h, c.shared_intermediate_size, &lw->shared));
    MM_RETURN_IF_ERROR(p.Add(name(a.shared_expert_gate), {1, h}, Slice::All(), {1, h},
                             &lw->shared_expert_gate));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelWeights> LoadModelWeights(const ModelConfig& c, const WeightSource& src,
                                              const ShardSpec& shard, const LoadProgress& progress) {
  const int hb = shard.head_begin;
  const int he = shard.head_end < 0 ? c.num_heads : shard.head_end;
  if (hb < 0 || he > c.num_heads || hb >= he) {
    return absl::InvalidArgumentError(absl::StrCat("shard heads [", hb, ", ", he,
                                                   ") are not a range within [0, ", c.num_heads, ")"));
  }
  const int64_t vb = shard.vocab_begin;
  const int64_t ve = shard.vocab_end < 0 ? c.vocab_size : shard.vocab_end;
  if (vb < 0 || ve > c.vocab_size || vb >= ve) {
    return absl::InvalidArgumentError(absl::StrCat("shard vocabulary rows [", vb, ", ", ve,
                                                   ") are not a range within [0, ", c.vocab_size, ")"));
  }
  auto check_experts = [&](std::vector<int> list) -> absl::StatusOr<std::vector<int>> {
    std::sort(list.begin(), list.end());
    list.erase(std::unique(list.begin(), list.end()), list.end());
    for (int e : list) {
      if (e < 0 || e >= c.num_experts) {
        return absl::InvalidArgumentError(
            absl::StrCat("shard expert ", e, " is outside [0, ", c.num_experts, ")"));
      }
    }
    return list;
  };
  std::vector<std::vector<int>> layer_experts(c.num_layers);
  if (!shard.layer_experts.empty() && static_cast<int>(shard.layer_experts.size()) != c.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("shard lists experts for ", shard.layer_experts.size(),
                                                   " layers; the model has ", c.num_layers));
  }
  for (int l = 0; l < c.num_layers; ++l) {
    std::vector<int> list;
    if (!shard.layer_experts.empty()) {
      list = shard.layer_experts[l];
    } else if (shard.experts) {
      list = *shard.experts;
    } else {
      for (int e = 0; e < c.num_experts; ++e) list.push_back(e);
    }
    MM_ASSIGN_OR_RETURN(layer_experts[l], check_experts(std::move(list)));
  }
  const int group = c.num_heads / c.num_kv_heads;
  ModelWeights w;
  w.kv_head_begin = hb / group;
  w.kv_head_end = (he - 1) / group + 1;

  Planner p(c, src);
  const int64_t h = c.hidden_size;
  const int64_t vocab = c.vocab_size;
  const bool dense = shard.load_dense;
  if (dense) {
    MM_RETURN_IF_ERROR(p.AddMatrix("model.embed_tokens.weight", {vocab, h}, Slice::Rows(vb, ve), ve - vb, h, &w.embed));
    MM_RETURN_IF_ERROR(p.AddVector("model.norm.weight", h, 0, h, &w.final_norm));
    if (!c.tie_word_embeddings) {
      MM_RETURN_IF_ERROR(p.AddMatrix("lm_head.weight", {vocab, h}, Slice::Rows(vb, ve), ve - vb, h, &w.lm_head));
    }
  }
  w.layers.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights* lw = &w.layers[l];
    lw->is_moe = c.layer_is_moe[l];
    if (dense) {
      MM_RETURN_IF_ERROR(p.AddVector(LayerName(l, "input_layernorm.weight"), h, 0, h, &lw->attn_norm));
      MM_RETURN_IF_ERROR(p.AddVector(LayerName(l, "post_attention_layernorm.weight"), h, 0, h, &lw->mlp_norm));
      MM_RETURN_IF_ERROR(PlanAttention(p, c, l, hb, he, w.kv_head_begin, w.kv_head_end, lw));
    }
    if (lw->is_moe) {
      MM_RETURN_IF_ERROR(PlanMoe(p, c, src, l, layer_experts[l], dense, lw));
    } else if (dense) {
      const ArchSpec& a = *c.arch;
      MM_RETURN_IF_ERROR(PlanFfn(p, LayerName(l, a.dense_gate), LayerName(l, a.dense_up),
                                 LayerName(l, a.dense_down), h, c.dense_intermediate_size, &lw->dense));
    }
  }
  MM_RETURN_IF_ERROR(p.Run(progress));
  if (c.tie_word_embeddings) w.lm_head = w.embed;

  auto count = [&](const std::vector<float>& v) { w.bytes += v.size() * sizeof(float); };
  auto count_m = [&](const Matrix& m) { count(m.data); };
  auto count_f = [&](const FfnWeights& f) { count_m(f.gate); count_m(f.up); count_m(f.down); };
  count_m(w.embed);
  count_m(w.lm_head);
  for (const LayerWeights& lw : w.layers) {
    for (const Matrix* m : {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.router}) count_m(*m);
    for (const FfnWeights& f : lw.experts) count_f(f);
    count_f(lw.dense);
    count_f(lw.shared);
  }
  return w;
}

void RoundMatricesToBf16(ModelWeights& w) {
  auto round = [](std::vector<float>& v) {
    for (float& f : v) f = Bf16ToF32(F32ToBf16(f));
  };
  auto round_ffn = [&](FfnWeights& f) {
    round(f.gate.data);
    round(f.up.data);
    round(f.down.data);
  };
  round(w.embed.data);
  round(w.lm_head.data);
  for (LayerWeights& lw : w.layers) {
    for (Matrix* m : {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.router}) round(m->data);
    for (FfnWeights& f : lw.experts) round_ffn(f);
    round_ffn(lw.dense);
    round_ffn(lw.shared);
    round(lw.shared_expert_gate);
  }
}

}  // namespace moemesh
