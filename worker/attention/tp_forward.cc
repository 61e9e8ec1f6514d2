#include "worker/attention/tp_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/ref/cascade.h"
#include "kernels/ref/ops.h"

namespace moemesh {
namespace {

const float* OrNull(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

// out[m, H] = down(silu(gate x) * up x).
void Ffn(const FfnWeights& f, const float* x, int64_t m, int64_t hidden, float* out) {
  const int64_t inter = f.gate.rows;
  std::vector<float> g(m * inter), u(m * inter), a(m * inter);
  ref::Linear(x, f.gate.data.data(), nullptr, g.data(), m, inter, hidden);
  ref::Linear(x, f.up.data.data(), nullptr, u.data(), m, inter, hidden);
  ref::SiluMul(g.data(), u.data(), a.data(), m * inter);
  ref::Linear(a.data(), f.down.data.data(), nullptr, out, m, hidden, inter);
}

double SumSquares(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

// Rescales `rows` rows of n values, given each row's sum of squares over `full` values.
void ApplyRmsNorm(float* x, const float* weight, const double* sum_sq, int stride, int64_t rows,
                  int64_t n, int64_t full, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = 1.0f / std::sqrt(static_cast<float>(sum_sq[r * stride] / full) + eps);
    for (int64_t i = 0; i < n; ++i) x[r * n + i] = (x[r * n + i] * inv) * weight[i];
  }
}

}  // namespace

TpForward::TpForward(const ModelConfig* config, const ModelWeights* weights, TpLayout layout,
                     Collective* tp, ExpertClient* experts, PagedKvCache* cache)
    : c_(*config), w_(*weights), layout_(layout), tp_(tp), experts_(experts), cache_(cache) {
  MM_CHECK(tp_->rank() == layout_.rank && tp_->size() == layout_.size);
  MM_CHECK(static_cast<int>(w_.layers.size()) == c_.num_layers);
  MM_CHECK(w_.kv_head_begin == layout_.kv_head_begin && w_.kv_head_end == layout_.kv_head_end);
  MM_CHECK(experts_ != nullptr || c_.num_moe_layers() == 0);
  for (const LayerWeights& lw : w_.layers) {
    MM_CHECK(lw.wq.rows == static_cast<int64_t>(layout_.num_heads()) * c_.head_dim);
    MM_CHECK(lw.wo.cols == lw.wq.rows);
  }
  inv_freq_.resize(c_.head_dim / 2);
  ref::RopeInvFreq(c_.rope_theta, c_.head_dim, inv_freq_.data());
}

absl::StatusOr<std::vector<float>> TpForward::Run(absl::Span<const ForwardSequence> batch) {
  cascade_ = {};
  return Forward(batch);
}

absl::StatusOr<std::vector<float>> TpForward::RunCascade(
    absl::Span<const ForwardSequence> batch, absl::Span<const ForwardCascadeLevel> levels) {
  cascade_ = levels;
  absl::StatusOr<std::vector<float>> logits = Forward(batch);
  cascade_ = {};
  return logits;
}

absl::Status TpForward::CopyBlocks(absl::Span<const BlockCopy> copies) {
  for (const BlockCopy& c : copies) cache_->CopyBlock(c.src, c.dst);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> TpForward::Forward(absl::Span<const ForwardSequence> batch) {
  const int64_t hidden = c_.hidden_size;
  positions_.clear();
  std::vector<int32_t> tokens;
  std::vector<int64_t> logit_rows;
  for (const ForwardSequence& s : batch) {
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      tokens.push_back(s.tokens[i]);
      positions_.push_back(s.start_position + static_cast<int64_t>(i));
    }
    if (s.logits) logit_rows.push_back(static_cast<int64_t>(tokens.size()) - 1);
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return std::vector<float>{};

  // Vocab-parallel embedding: rows outside this rank's slice contribute zeros.
  std::vector<float> x(n * hidden, 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t id = tokens[t];
    if (id < layout_.vocab_begin || id >= layout_.vocab_end) continue;
    std::copy_n(w_.embed.data.data() + (id - layout_.vocab_begin) * hidden, hidden, x.data() + t * hidden);
  }
  MM_RETURN_IF_ERROR(tp_->AllReduceSum(x.data(), x.size()));

  std::vector<float> normed(n * hidden), branch(n * hidden);
  for (int l = 0; l < c_.num_layers; ++l) {
    const LayerWeights& lw = w_.layers[l];
    ref::RmsNorm(x.data(), lw.attn_norm.data(), normed.data(), n, hidden, c_.rms_norm_eps);
    MM_RETURN_IF_ERROR(Attention(l, batch, normed, branch));
    for (int64_t i = 0; i < n * hidden; ++i) x[i] += branch[i];
    ref::RmsNorm(x.data(), lw.mlp_norm.data(), normed.data(), n, hidden, c_.rms_norm_eps);
    MM_RETURN_IF_ERROR(Mlp(l, normed, n, branch));
    for (int64_t i = 0; i < n * hidden; ++i) x[i] += branch[i];
  }
  return Logits(x, logit_rows);
}

absl::Status TpForward::Attention(int layer, absl::Span<const ForwardSequence> batch,
                                  const std::vector<float>& x, std::vector<float>& out) {
  const LayerWeights& lw = w_.layers[layer];
  const int64_t n = static_cast<int64_t>(positions_.size());
  const int64_t hidden = c_.hidden_size;
  const int d = c_.head_dim;
  const int heads = layout_.num_heads();
  const int kv_heads = layout_.num_kv_heads();
  const int64_t qs = static_cast<int64_t>(heads) * d, kvs = static_cast<int64_t>(kv_heads) * d;
  std::vector<float> q(n * qs), k(n * kvs), v(n * kvs);
  ref::Linear(x.data(), lw.wq.data.data(), OrNull(lw.bq), q.data(), n, qs, hidden);
  ref::Linear(x.data(), lw.wk.data.data(), OrNull(lw.bk), k.data(), n, kvs, hidden);
  ref::Linear(x.data(), lw.wv.data.data(), OrNull(lw.bv), v.data(), n, kvs, hidden);
  switch (c_.arch->qk_norm) {
    case QkNorm::kNone:
      break;
    case QkNorm::kPerHead:
      ref::RmsNorm(q.data(), lw.q_norm.data(), q.data(), n * heads, d, c_.rms_norm_eps);
      ref::RmsNorm(k.data(), lw.k_norm.data(), k.data(), n * kv_heads, d, c_.rms_norm_eps);
      break;
    case QkNorm::kWholeProjection:
      MM_RETURN_IF_ERROR(WholeProjectionNorm(lw, n, q.data(), k.data()));
      break;
  }
  if (c_.clip_qkv > 0) {
    for (auto* buf : {&q, &k, &v}) {
      for (float& f : *buf) f = std::clamp(f, -c_.clip_qkv, c_.clip_qkv);
    }
  }
  for (int64_t t = 0; t < n; ++t) {
    ref::RopeNeox(q.data() + t * qs, heads, d, positions_[t], inv_freq_.data());
    ref::RopeNeox(k.data() + t * kvs, kv_heads, d, positions_[t], inv_freq_.data());
  }
  std::vector<float> attn(n * qs);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  if (cascade_.empty()) {
    int64_t offset = 0;
    for (const ForwardSequence& s : batch) {
      const int64_t count = static_cast<int64_t>(s.tokens.size());
      cache_->Write(layer, s.block_table, s.start_position, count, k.data() + offset * kvs,
                    v.data() + offset * kvs);
      cache_->Attend(layer, s.block_table, q.data() + offset * qs, attn.data() + offset * qs,
                     count, s.start_position + count, heads, scale, c_.sliding_window);
      offset += count;
    }
  } else {
    // Every sequence's K/V first: a level's prefix pass reads blocks nobody writes, and each
    // member's suffix includes its own new token.
    std::vector<int64_t> offsets;
    int64_t offset = 0;
    for (const ForwardSequence& s : batch) {
      const int64_t count = static_cast<int64_t>(s.tokens.size());
      cache_->Write(layer, s.block_table, s.start_position, count, k.data() + offset * kvs,
                    v.data() + offset * kvs);
      offsets.push_back(offset);
      offset += count;
    }
    CascadeAttention(layer, batch, offsets, q.data(), attn.data());
  }
  // Row-parallel o_proj: each rank holds the columns of its heads; the bias is added once (by
  // rank 0, inside its partial sum).
  const float* bias = layout_.rank == 0 ? OrNull(lw.bo) : nullptr;
  ref::Linear(attn.data(), lw.wo.data.data(), bias, out.data(), n, hidden, qs);
  return tp_->AllReduceSum(out.data(), out.size());
}

void TpForward::CascadeAttention(int layer, absl::Span<const ForwardSequence> batch,
                                 const std::vector<int64_t>& offsets, const float* q, float* attn) {
  const int d = c_.head_dim;
  const int heads = layout_.num_heads();
  const int64_t qs = static_cast<int64_t>(heads) * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int64_t bs = cache_->block_size();
  // Per member: its merged state so far and the end of its deepest level.
  const size_t b_count = batch.size();
  std::vector<int32_t> deepest(b_count, -1);  // -1: not a member
  std::vector<float> acc_v(b_count * qs, 0.0f);
  std::vector<float> acc_s(b_count * heads, -std::numeric_limits<float>::infinity());
  std::vector<float> gathered, v, lse;
  for (const ForwardCascadeLevel& level : cascade_) {
    const int64_t m = static_cast<int64_t>(level.members.size());
    MM_CHECK(m >= 2);
    gathered.resize(m * qs);
    v.resize(m * qs);
    lse.resize(m * heads);
    for (int64_t i = 0; i < m; ++i) {
      const int32_t b = level.members[i];
      MM_CHECK(b >= 0 && static_cast<size_t>(b) < b_count && batch[b].tokens.size() == 1);
      std::copy_n(q + offsets[b] * qs, qs, gathered.data() + i * qs);
    }
    // One pass over the shared blocks for every member's query rows (through the first member's
    // table: the members' tables hold the same blocks there).
    cache_->AttendPrefix(layer, batch[level.members[0]].block_table, level.block_begin * bs,
                         level.block_end * bs, gathered.data(), m, heads, scale, v.data(),
                         lse.data());
    for (int64_t i = 0; i < m; ++i) {
      const int32_t b = level.members[i];
      ref::MergeStates(acc_v.data() + b * qs, acc_s.data() + b * heads, v.data() + i * qs,
                       lse.data() + i * heads, heads, d);
      deepest[b] = std::max(deepest[b], level.block_end);
    }
  }
  v.resize(qs);
  lse.resize(heads);
  for (size_t b = 0; b < b_count; ++b) {
    const ForwardSequence& s = batch[b];
    const int64_t count = static_cast<int64_t>(s.tokens.size());
    const int64_t kv_len = s.start_position + count;
    if (deepest[b] < 0) {
      cache_->Attend(layer, s.block_table, q + offsets[b] * qs, attn + offsets[b] * qs, count,
                     kv_len, heads, scale, c_.sliding_window);
      continue;
    }
    cache_->AttendSuffix(layer, s.block_table, deepest[b] * bs, q + offsets[b] * qs, 1, kv_len,
                         heads, scale, c_.sliding_window, v.data(), lse.data());
    ref::MergeStates(acc_v.data() + b * qs, acc_s.data() + b * heads, v.data(), lse.data(), heads,
                     d);
    std::copy_n(acc_v.data() + b * qs, qs, attn + offsets[b] * qs);
  }
}

// OLMoE's q/k norms run over the whole projection, which is split across ranks: each rank
// sums the squares of its part in double, the partial sums travel bit-exactly (a double packed
// into two floats through AllGather), and every rank adds them in rank order.
absl::Status TpForward::WholeProjectionNorm(const LayerWeights& lw, int64_t n, float* q, float* k) {
  const int64_t qs = static_cast<int64_t>(layout_.num_heads()) * c_.head_dim;
  const int64_t kvs = static_cast<int64_t>(layout_.num_kv_heads()) * c_.head_dim;
  std::vector<double> partial(n * 2);
  for (int64_t t = 0; t < n; ++t) {
    partial[2 * t] = SumSquares(q + t * qs, qs);
    partial[2 * t + 1] = layout_.counts_k_norm ? SumSquares(k + t * kvs, kvs) : 0.0;
  }
  static_assert(sizeof(double) == 2 * sizeof(float));
  std::vector<float> packed(n * 4), gathered(n * 4 * layout_.size);
  std::memcpy(packed.data(), partial.data(), partial.size() * sizeof(double));
  MM_RETURN_IF_ERROR(tp_->AllGather(packed.data(), packed.size(), gathered.data()));
  std::vector<double> total(n * 2, 0.0), part(n * 2);
  for (int r = 0; r < layout_.size; ++r) {
    std::memcpy(part.data(), gathered.data() + r * n * 4, part.size() * sizeof(double));
    for (int64_t i = 0; i < n * 2; ++i) total[i] += part[i];
  }
  ApplyRmsNorm(q, lw.q_norm.data(), total.data(), 2, n, qs, c_.q_size(), c_.rms_norm_eps);
  ApplyRmsNorm(k, lw.k_norm.data(), total.data() + 1, 2, n, kvs, c_.kv_size(), c_.rms_norm_eps);
  return absl::OkStatus();
}

// Rows split across ranks (rank r: [r*c, min(n, (r+1)*c)), c = ceil(n / size)); each rank
// runs its rows, then an all-gather of padded [c, H] blocks rebuilds [n, H] on every rank. A
// trailing flag per block says whether that rank's rows failed, so all ranks fail together.
absl::Status TpForward::Mlp(int layer, const std::vector<float>& x, int64_t n, std::vector<float>& out) {
  const int64_t hidden = c_.hidden_size;
  const int size = layout_.size;
  const int64_t chunk = (n + size - 1) / size;
  const int64_t begin = std::min<int64_t>(n, layout_.rank * chunk);
  const int64_t end = std::min<int64_t>(n, begin + chunk);
  const int64_t stride = chunk * hidden + 1;
  std::vector<float> block(stride, 0.0f);
  absl::Status local = absl::OkStatus();
  if (end > begin) local = LocalMlp(layer, x.data() + begin * hidden, end - begin, block.data());
  block[stride - 1] = local.ok() ? 0.0f : 1.0f;
  std::vector<float> gathered(stride * size);
  MM_RETURN_IF_ERROR(tp_->AllGather(block.data(), block.size(), gathered.data()));
  MM_RETURN_IF_ERROR(local);
  for (int r = 0; r < size; ++r) {
    if (gathered[r * stride + stride - 1] != 0.0f) {
      return absl::UnavailableError(absl::StrCat("rank ", r, " failed to run the MLP of layer ", layer,
                                                 " (its own status says why)"));
    }
  }
  for (int r = 0; r < size; ++r) {
    const int64_t rb = std::min<int64_t>(n, r * chunk);
    const int64_t re = std::min<int64_t>(n, rb + chunk);
    std::copy_n(gathered.data() + r * stride, (re - rb) * hidden, out.data() + rb * hidden);
  }
  return absl::OkStatus();
}

absl::Status TpForward::LocalMlp(int layer, const float* x, int64_t m, float* out) {
  const LayerWeights& lw = w_.layers[layer];
  const int64_t hidden = c_.hidden_size;
  if (!lw.is_moe) {
    Ffn(lw.dense, x, m, hidden, out);
    return absl::OkStatus();
  }
  const int e_count = c_.num_experts;
  const int k = c_.experts_per_token;
  std::vector<float> logits(m * e_count), weights(m * k);
  std::vector<int32_t> ids(m * k);
  ref::Linear(x, lw.router.data.data(), nullptr, logits.data(), m, e_count, hidden);
  for (int64_t t = 0; t < m; ++t) {
    ref::RouteTopK(logits.data() + t * e_count, e_count, k, c_.norm_topk_prob, ids.data() + t * k,
                   weights.data() + t * k);
  }
  ExpertBatch batch;
  batch.layer = layer;
  batch.num_tokens = static_cast<int32_t>(m);
  batch.hidden = static_cast<int32_t>(hidden);
  batch.top_k = k;
  batch.hidden_states = absl::MakeConstSpan(x, m * hidden);
  batch.expert_ids = ids;
  batch.expert_weights = weights;
  std::fill_n(out, m * hidden, 0.0f);
  absl::Status s = experts_->Run(batch, absl::MakeSpan(out, m * hidden));
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("rank ", layout_.rank, ", layer ", layer,
                                               ": routed experts: ", s.message()));
  }
  if (!lw.shared_expert_gate.empty()) {
    std::vector<float> y(m * hidden);
    Ffn(lw.shared, x, m, hidden, y.data());
    for (int64_t t = 0; t < m; ++t) {
      double gate = 0;
      for (int64_t i = 0; i < hidden; ++i) {
        gate += static_cast<double>(lw.shared_expert_gate[i]) * x[t * hidden + i];
      }
      const float g = 1.0f / (1.0f + std::exp(-static_cast<float>(gate)));
      for (int64_t i = 0; i < hidden; ++i) out[t * hidden + i] += g * y[t * hidden + i];
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> TpForward::Logits(const std::vector<float>& x,
                                                     const std::vector<int64_t>& rows) {
  const int64_t hidden = c_.hidden_size;
  const int64_t m = static_cast<int64_t>(rows.size());
  if (m == 0) return std::vector<float>{};
  std::vector<float> picked(m * hidden), normed(m * hidden);
  for (int64_t i = 0; i < m; ++i) std::copy_n(x.data() + rows[i] * hidden, hidden, picked.data() + i * hidden);
  ref::RmsNorm(picked.data(), w_.final_norm.data(), normed.data(), m, hidden, c_.rms_norm_eps);
  const int64_t slice = layout_.vocab_end - layout_.vocab_begin;
  const int64_t padded = layout_.vocab_padded;
  std::vector<float> local(m * slice), block(m * padded, 0.0f);
  ref::Linear(normed.data(), w_.lm_head.data.data(), nullptr, local.data(), m, slice, hidden);
  for (int64_t i = 0; i < m; ++i) std::copy_n(local.data() + i * slice, slice, block.data() + i * padded);
  std::vector<float> gathered(block.size() * layout_.size);
  MM_RETURN_IF_ERROR(tp_->AllGather(block.data(), block.size(), gathered.data()));
  const int64_t vocab = c_.vocab_size;
  const int64_t base = vocab / layout_.size;  // MakeTpLayout's split
  std::vector<float> logits(m * vocab);
  for (int r = 0; r < layout_.size; ++r) {
    const int64_t vb = r * base;
    const int64_t ve = r == layout_.size - 1 ? vocab : vb + base;
    for (int64_t i = 0; i < m; ++i) {
      std::copy_n(gathered.data() + (r * m + i) * padded, ve - vb, logits.data() + i * vocab + vb);
    }
  }
  return logits;
}

}  // namespace moemesh
