#include "worker/expert/expert_pool.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/progress.h"
#include "common/status.h"
#include "kernels/ref/ops.h"
#include "model/io/weight_source.h"

namespace moemesh {
namespace {

constexpr int64_t kMaxRowsPerTask = 64;

absl::Status CheckMatrix(const Matrix& m, int64_t rows, int64_t cols, int layer, int expert,
                         const char* name) {
  if (m.rows != rows || m.cols != cols || static_cast<int64_t>(m.data.size()) != rows * cols) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " expert ", expert, " ", name, " is [", m.rows, ", ", m.cols,
                     "] with ", m.data.size(), " values, expected [", rows, ", ", cols, "]"));
  }
  return absl::OkStatus();
}

absl::Status CheckSize(const char* field, size_t actual, int64_t expected, const char* shape) {
  if (static_cast<int64_t>(actual) != expected) {
    return absl::InvalidArgumentError(absl::StrCat("batch ", field, " has ", actual,
                                                   " values, expected ", expected, " (", shape, ")"));
  }
  return absl::OkStatus();
}

// One expert's FFN over `rows` gathered tokens: y = down(silu(gate x) * up x).
void ExpertRows(const FfnWeights& f, const float* hidden_states, const int32_t* tokens,
                int64_t rows, int64_t h, int64_t inter, float* y) {
  thread_local std::vector<float> scratch;
  scratch.resize(static_cast<size_t>(rows * (h + 2 * inter)));
  float* x = scratch.data();
  float* gate = x + rows * h;
  float* up = gate + rows * inter;
  for (int64_t i = 0; i < rows; ++i) {
    std::memcpy(x + i * h, hidden_states + static_cast<int64_t>(tokens[i]) * h, h * sizeof(float));
  }
  ref::Linear(x, f.gate.data.data(), nullptr, gate, rows, inter, h);
  ref::Linear(x, f.up.data.data(), nullptr, up, rows, inter, h);
  ref::SiluMul(gate, up, gate, rows * inter);
  ref::Linear(gate, f.down.data.data(), nullptr, y, rows, h, inter);
}

}  // namespace

ExpertPool::ExpertPool(ModelConfig config, ModelWeights weights, const ThreadPoolOptions& threads)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      pool_(std::make_unique<ThreadPool>(threads)) {
  slot_.resize(config_.num_layers);
  for (int l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& lw = weights_.layers[l];
    if (!lw.is_moe) continue;
    slot_[l].assign(config_.num_experts, -1);
    for (size_t i = 0; i < lw.expert_ids.size(); ++i) slot_[l][lw.expert_ids[i]] = static_cast<int>(i);
  }
}

absl::StatusOr<std::unique_ptr<ExpertPool>> ExpertPool::FromWeights(
    ModelConfig config, ModelWeights weights, const ThreadPoolOptions& threads) {
  if (threads.num_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert pool threads is ", threads.num_threads, ", expected >= 1"));
  }
  if (static_cast<int>(weights.layers.size()) != config.num_layers ||
      static_cast<int>(config.layer_is_moe.size()) != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("weights hold ", weights.layers.size(),
                                                   " layers, the config has ", config.num_layers));
  }
  const int64_t h = config.hidden_size;
  const int64_t inter = config.expert_intermediate_size;
  for (int l = 0; l < config.num_layers; ++l) {
    const LayerWeights& lw = weights.layers[l];
    if (lw.is_moe != config.layer_is_moe[l]) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", l, ": weights say is_moe=", lw.is_moe, ", the config says ",
                       static_cast<bool>(config.layer_is_moe[l])));
    }
    if (!lw.is_moe) continue;
    if (lw.expert_ids.size() != lw.experts.size()) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, " lists ", lw.expert_ids.size(),
                                                     " expert ids for ", lw.experts.size(), " experts"));
    }
    std::vector<bool> seen(config.num_experts, false);
    for (size_t i = 0; i < lw.experts.size(); ++i) {
      const int e = lw.expert_ids[i];
      if (e < 0 || e >= config.num_experts || seen[e]) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", l, " expert id ", e,
                                                       " is repeated or outside [0, ",
                                                       config.num_experts, ")"));
      }
      seen[e] = true;
      const FfnWeights& f = lw.experts[i];
      MM_RETURN_IF_ERROR(CheckMatrix(f.gate, inter, h, l, e, "gate"));
      MM_RETURN_IF_ERROR(CheckMatrix(f.up, inter, h, l, e, "up"));
      MM_RETURN_IF_ERROR(CheckMatrix(f.down, h, inter, l, e, "down"));
    }
  }
  return std::unique_ptr<ExpertPool>(new ExpertPool(std::move(config), std::move(weights), threads));
}

absl::StatusOr<std::unique_ptr<ExpertPool>> ExpertPool::Load(
    const std::string& model_dir, const std::vector<std::vector<int>>& layer_experts,
    const ThreadPoolOptions& threads) {
  MM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  MM_ASSIGN_OR_RETURN(std::unique_ptr<WeightSource> source, OpenSafetensorsDir(model_dir));
  ShardSpec shard;
  shard.load_dense = false;
  shard.layer_experts = layer_experts;
  MM_ASSIGN_OR_RETURN(ModelWeights weights, LoadModelWeights(config, *source, shard));
  int held = 0;
  for (const LayerWeights& lw : weights.layers) held += static_cast<int>(lw.experts.size());
  MM_LOG(INFO) << "expert pool: loaded " << held << " routed experts over "
               << config.num_moe_layers() << " MoE layers from " << model_dir << " ("
               << FormatBytes(weights.bytes) << " fp32), " << threads.num_threads << " threads";
  return FromWeights(std::move(config), std::move(weights), threads);
}

bool ExpertPool::Holds(int layer, int expert) const {
  if (layer < 0 || layer >= config_.num_layers || slot_[layer].empty()) return false;
  if (expert < 0 || expert >= config_.num_experts) return false;
  return slot_[layer][expert] >= 0;
}

std::vector<int> ExpertPool::HeldExperts(int layer) const {
  if (layer < 0 || layer >= config_.num_layers) return {};
  return weights_.layers[layer].expert_ids;
}

absl::Status ExpertPool::Validate(const ExpertBatch& b, absl::Span<const float> out) const {
  if (b.layer < 0 || b.layer >= config_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch layer ", b.layer, " is outside [0, ", config_.num_layers, ")"));
  }
  if (!config_.layer_is_moe[b.layer]) {
    return absl::InvalidArgumentError(absl::StrCat("batch layer ", b.layer, " is not a MoE layer"));
  }
  if (b.hidden != config_.hidden_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch hidden is ", b.hidden, ", the model's is ", config_.hidden_size));
  }
  if (b.num_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("batch num_tokens is ", b.num_tokens, ", expected >= 0"));
  }
  if (b.top_k < 1 || b.top_k > config_.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("batch top_k is ", b.top_k, ", expected within [1, ",
                                                   config_.num_experts, "]"));
  }
  const int64_t th = static_cast<int64_t>(b.num_tokens) * b.hidden;
  const int64_t tk = static_cast<int64_t>(b.num_tokens) * b.top_k;
  if (tk > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("batch num_tokens * top_k is ", tk, ", limit ",
                                                   std::numeric_limits<int32_t>::max()));
  }
  MM_RETURN_IF_ERROR(CheckSize("hidden_states", b.hidden_states.size(), th, "num_tokens * hidden"));
  MM_RETURN_IF_ERROR(CheckSize("expert_ids", b.expert_ids.size(), tk, "num_tokens * top_k"));
  MM_RETURN_IF_ERROR(CheckSize("expert_weights", b.expert_weights.size(), tk, "num_tokens * top_k"));
  MM_RETURN_IF_ERROR(CheckSize("out", out.size(), th, "num_tokens * hidden"));
  const std::vector<int>& slots = slot_[b.layer];
  for (int64_t r = 0; r < tk; ++r) {
    const int32_t e = b.expert_ids[r];
    if (e < -1 || e >= config_.num_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("batch expert_ids[", r, "] (token ", r / b.top_k, ") is ", e,
                       ", expected -1 or within [0, ", config_.num_experts, ")"));
    }
    if (e >= 0 && slots[e] < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("layer ", b.layer, " expert ", e, " is not held by this expert pool (holds [",
                       absl::StrJoin(weights_.layers[b.layer].expert_ids, ", "), "])"));
    }
  }
  return absl::OkStatus();
}

absl::Status ExpertPool::Run(const ExpertBatch& b, absl::Span<float> out) {
  MM_RETURN_IF_ERROR(Validate(b, out));
  std::lock_guard<std::mutex> lock(run_mu_);
  const LayerWeights& lw = weights_.layers[b.layer];
  const std::vector<int>& slots = slot_[b.layer];
  const int64_t n_slots = static_cast<int64_t>(lw.experts.size());
  const int64_t k = b.top_k;
  const int64_t h = b.hidden;
  const int64_t inter = config_.expert_intermediate_size;
  const int64_t n_routes = static_cast<int64_t>(b.num_tokens) * k;

  // Group the held routes by expert (counting sort; tokens ascending within an expert).
  route_count_.assign(n_slots + 1, 0);
  for (int64_t r = 0; r < n_routes; ++r) {
    if (b.expert_ids[r] >= 0) ++route_count_[slots[b.expert_ids[r]] + 1];
  }
  for (int64_t s = 0; s < n_slots; ++s) route_count_[s + 1] += route_count_[s];
  const int64_t held = route_count_[n_slots];
  std::vector<int32_t> cursor(route_count_.begin(), route_count_.end() - 1);
  route_token_.resize(held);
  route_pos_.resize(n_routes);
  for (int64_t r = 0; r < n_routes; ++r) {
    const int32_t e = b.expert_ids[r];
    if (e < 0) {
      route_pos_[r] = -1;
      continue;
    }
    const int32_t p = cursor[slots[e]]++;
    route_token_[p] = static_cast<int32_t>(r / k);
    route_pos_[r] = p;
  }

  // Tasks: (expert, a run of its rows). Each row's result is independent of how rows are cut.
  struct Task {
    int32_t slot;
    int32_t begin;  // grouped positions [begin, end)
    int32_t end;
  };
  const int64_t threads = pool_->num_threads();
  const int64_t rows_per_task =
      std::clamp<int64_t>((held + 4 * threads - 1) / (4 * threads), 1, kMaxRowsPerTask);
  std::vector<Task> tasks;
  for (int64_t s = 0; s < n_slots; ++s) {
    for (int64_t p = route_count_[s]; p < route_count_[s + 1]; p += rows_per_task) {
      tasks.push_back({static_cast<int32_t>(s), static_cast<int32_t>(p),
                       static_cast<int32_t>(std::min<int64_t>(p + rows_per_task, route_count_[s + 1]))});
    }
  }
  route_out_.resize(static_cast<size_t>(held * h));
  pool_->ParallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Task& t = tasks[i];
      ExpertRows(lw.experts[t.slot], b.hidden_states.data(), route_token_.data() + t.begin,
                 t.end - t.begin, h, inter, route_out_.data() + static_cast<int64_t>(t.begin) * h);
    }
  }, 1);

  // Per token, in j order: the sum does not depend on which thread ran which expert.
  pool_->ParallelFor(b.num_tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* o = out.data() + t * h;
      std::fill(o, o + h, 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        const int32_t p = route_pos_[t * k + j];
        if (p < 0) continue;
        const float w = b.expert_weights[t * k + j];
        const float* y = route_out_.data() + static_cast<int64_t>(p) * h;
        for (int64_t i = 0; i < h; ++i) o[i] += w * y[i];
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace moemesh
