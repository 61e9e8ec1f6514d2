#include "model/reference/reference_model.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/logging.h"
#include "common/progress.h"
#include "common/status.h"
#include "kernels/ref/ops.h"
#include "model/io/weight_source.h"

namespace moemesh {
namespace {

void Ffn(const FfnWeights& f, const float* x, int64_t n, int64_t hidden, float* out) {
  const int64_t inter = f.gate.rows;
  std::vector<float> g(n * inter), u(n * inter), a(n * inter);
  ref::Linear(x, f.gate.data.data(), nullptr, g.data(), n, inter, hidden);
  ref::Linear(x, f.up.data.data(), nullptr, u.data(), n, inter, hidden);
  ref::SiluMul(g.data(), u.data(), a.data(), n * inter);
  ref::Linear(a.data(), f.down.data.data(), nullptr, out, n, hidden, inter);
}

const float* OrNull(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

}  // namespace

absl::StatusOr<std::unique_ptr<ReferenceModel>> ReferenceModel::Load(const std::string& model_dir,
                                                                     const LoadOptions& options) {
  MM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  MM_ASSIGN_OR_RETURN(std::unique_ptr<WeightSource> source, OpenSafetensorsDir(model_dir));
  std::unique_ptr<ProgressBar> bar;
  LoadProgress progress;
  if (options.show_progress) {
    progress = [&](uint64_t done, uint64_t total) {
      if (!bar) bar = std::make_unique<ProgressBar>("loading weights", total);
      bar->Update(done);
    };
  }
  MM_ASSIGN_OR_RETURN(ModelWeights weights, LoadModelWeights(config, *source, ShardSpec{}, progress));
  if (bar) bar->Finish();
  return std::make_unique<ReferenceModel>(std::move(config), std::move(weights));
}

ReferenceModel::ReferenceModel(ModelConfig config, ModelWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  inv_freq_.resize(config_.head_dim / 2);
  ref::RopeInvFreq(config_.rope_theta, config_.head_dim, inv_freq_.data());
}

SequenceCache ReferenceModel::NewCache() const {
  SequenceCache c;
  c.k.resize(config_.num_layers);
  c.v.resize(config_.num_layers);
  return c;
}

absl::StatusOr<std::vector<std::vector<float>>> ReferenceModel::Forward(
    absl::Span<BatchEntry> batch) const {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size;
  // Validate, then lay out the batch: token t belongs to entry owner[t] at positions[t].
  std::vector<int32_t> tokens;
  std::vector<int64_t> positions;
  for (size_t e = 0; e < batch.size(); ++e) {
    const BatchEntry& entry = batch[e];
    if (entry.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("batch entry ", e, " has no tokens"));
    const int64_t end = entry.cache->length + static_cast<int64_t>(entry.tokens.size());
    if (end > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("sequence of ", end, " tokens exceeds the context length ",
                                                     c.max_position_embeddings));
    }
    for (size_t i = 0; i < entry.tokens.size(); ++i) {
      const int32_t id = entry.tokens[i];
      if (id < 0 || id >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is outside the vocabulary [0, ", c.vocab_size, ")"));
      }
      tokens.push_back(id);
      positions.push_back(entry.cache->length + static_cast<int64_t>(i));
    }
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  std::vector<float> x(n * hidden);
  for (int64_t t = 0; t < n; ++t) {
    std::copy_n(weights_.embed.data.data() + static_cast<int64_t>(tokens[t]) * hidden, hidden,
                x.data() + t * hidden);
  }
  std::vector<float> normed(n * hidden), branch(n * hidden);
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = weights_.layers[l];
    ref::RmsNorm(x.data(), lw.attn_norm.data(), normed.data(), n, hidden, c.rms_norm_eps);
    Attention(lw, l, batch, positions, normed, branch);
    for (int64_t i = 0; i < n * hidden; ++i) x[i] += branch[i];
    ref::RmsNorm(x.data(), lw.mlp_norm.data(), normed.data(), n, hidden, c.rms_norm_eps);
    Mlp(lw, normed, n, branch);
    for (int64_t i = 0; i < n * hidden; ++i) x[i] += branch[i];
  }
  for (BatchEntry& entry : batch) entry.cache->length += static_cast<int64_t>(entry.tokens.size());

  ref::RmsNorm(x.data(), weights_.final_norm.data(), normed.data(), n, hidden, c.rms_norm_eps);
  std::vector<std::vector<float>> logits(batch.size());
  int64_t offset = 0;
  for (size_t e = 0; e < batch.size(); ++e) {
    const int64_t count = static_cast<int64_t>(batch[e].tokens.size());
    const int64_t first = batch[e].all_logits ? 0 : count - 1;
    const int64_t rows = count - first;
    logits[e].resize(rows * c.vocab_size);
    ref::Linear(normed.data() + (offset + first) * hidden, weights_.lm_head.data.data(), nullptr,
                logits[e].data(), rows, c.vocab_size, hidden);
    offset += count;
  }
  return logits;
}

void ReferenceModel::Attention(const LayerWeights& lw, int layer, absl::Span<BatchEntry> batch,
                               const std::vector<int64_t>& positions, const std::vector<float>& x,
                               std::vector<float>& out) const {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(positions.size());
  const int64_t hidden = c.hidden_size;
  const int d = c.head_dim;
  const int64_t qs = c.q_size(), kvs = c.kv_size();
  std::vector<float> q(n * qs), k(n * kvs), v(n * kvs);
  ref::Linear(x.data(), lw.wq.data.data(), OrNull(lw.bq), q.data(), n, qs, hidden);
  ref::Linear(x.data(), lw.wk.data.data(), OrNull(lw.bk), k.data(), n, kvs, hidden);
  ref::Linear(x.data(), lw.wv.data.data(), OrNull(lw.bv), v.data(), n, kvs, hidden);
  switch (c.arch->qk_norm) {
    case QkNorm::kNone:
      break;
    case QkNorm::kPerHead:
      ref::RmsNorm(q.data(), lw.q_norm.data(), q.data(), n * c.num_heads, d, c.rms_norm_eps);
      ref::RmsNorm(k.data(), lw.k_norm.data(), k.data(), n * c.num_kv_heads, d, c.rms_norm_eps);
      break;
    case QkNorm::kWholeProjection:
      ref::RmsNorm(q.data(), lw.q_norm.data(), q.data(), n, qs, c.rms_norm_eps);
      ref::RmsNorm(k.data(), lw.k_norm.data(), k.data(), n, kvs, c.rms_norm_eps);
      break;
  }
  if (c.clip_qkv > 0) {
    for (auto* buf : {&q, &k, &v}) {
      for (float& f : *buf) f = std::clamp(f, -c.clip_qkv, c.clip_qkv);
    }
  }
  for (int64_t t = 0; t < n; ++t) {
    ref::RopeNeox(q.data() + t * qs, c.num_heads, d, positions[t], inv_freq_.data());
    ref::RopeNeox(k.data() + t * kvs, c.num_kv_heads, d, positions[t], inv_freq_.data());
  }
  std::vector<float> attn(n * qs);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  int64_t offset = 0;
  for (BatchEntry& entry : batch) {
    const int64_t count = static_cast<int64_t>(entry.tokens.size());
    std::vector<float>& kc = entry.cache->k[layer];
    std::vector<float>& vc = entry.cache->v[layer];
    const size_t k_old = kc.size(), v_old = vc.size();
    kc.insert(kc.end(), k.begin() + offset * kvs, k.begin() + (offset + count) * kvs);
    vc.insert(vc.end(), v.begin() + offset * kvs, v.begin() + (offset + count) * kvs);
    if (bf16_kv_cache_) {
      for (size_t i = k_old; i < kc.size(); ++i) kc[i] = Bf16ToF32(F32ToBf16(kc[i]));
      for (size_t i = v_old; i < vc.size(); ++i) vc[i] = Bf16ToF32(F32ToBf16(vc[i]));
    }
    const int64_t kv_len = entry.cache->length + count;
    ref::Attention(q.data() + offset * qs, kc.data(), vc.data(), attn.data() + offset * qs, count,
                   kv_len, c.num_heads, c.num_kv_heads, d, scale, c.sliding_window);
    offset += count;
  }
  ref::Linear(attn.data(), lw.wo.data.data(), OrNull(lw.bo), out.data(), n, hidden, qs);
}

void ReferenceModel::Mlp(const LayerWeights& lw, const std::vector<float>& x, int64_t n,
                         std::vector<float>& out) const {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size;
  if (!lw.is_moe) {
    Ffn(lw.dense, x.data(), n, hidden, out.data());
    return;
  }
  std::fill(out.begin(), out.end(), 0.0f);
  const int e_count = c.num_experts;
  const int k = c.experts_per_token;
  std::vector<float> logits(n * e_count);
  ref::Linear(x.data(), lw.router.data.data(), nullptr, logits.data(), n, e_count, hidden);
  std::vector<int32_t> ids(k);
  std::vector<float> weights(k), y(hidden);
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x.data() + t * hidden;
    ref::RouteTopK(logits.data() + t * e_count, e_count, k, c.norm_topk_prob, ids.data(), weights.data());
    for (int j = 0; j < k; ++j) {
      auto it = std::lower_bound(lw.expert_ids.begin(), lw.expert_ids.end(), ids[j]);
      MM_CHECK(it != lw.expert_ids.end() && *it == ids[j]);  // the reference holds every expert
      Ffn(lw.experts[it - lw.expert_ids.begin()], xt, 1, hidden, y.data());
      for (int64_t i = 0; i < hidden; ++i) out[t * hidden + i] += weights[j] * y[i];
    }
    if (!lw.shared_expert_gate.empty()) {
      double gate = 0;
      for (int64_t i = 0; i < hidden; ++i) gate += static_cast<double>(lw.shared_expert_gate[i]) * xt[i];
      const float s = 1.0f / (1.0f + std::exp(-static_cast<float>(gate)));
      Ffn(lw.shared, xt, 1, hidden, y.data());
      for (int64_t i = 0; i < hidden; ++i) out[t * hidden + i] += s * y[i];
    }
  }
}

}  // namespace moemesh
