#include "worker/expert/route_groups.h"
#include "worker/expert/reference_expert_pool.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
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

ReferenceExpertPool::ReferenceExpertPool(ModelConfig config, ModelWeights weights,
                                         std::vector<std::vector<int>> held,
                                         const ThreadPoolOptions& threads)
    : ExpertPool(std::move(config), std::move(held), weights.bytes),
      weights_(std::move(weights)),
      pool_(std::make_unique<ThreadPool>(threads)) {}

absl::StatusOr<std::unique_ptr<ReferenceExpertPool>> ReferenceExpertPool::FromWeights(
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
  std::vector<std::vector<int>> held(config.num_layers);
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
      if (e < 0 || e >= config.num_experts || seen[e] || (i > 0 && e < lw.expert_ids[i - 1])) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", l, " expert id ", e,
                                                       " is repeated, out of order or outside [0, ",
                                                       config.num_experts, ")"));
      }
      seen[e] = true;
      const FfnWeights& f = lw.experts[i];
      MM_RETURN_IF_ERROR(CheckMatrix(f.gate, inter, h, l, e, "gate"));
      MM_RETURN_IF_ERROR(CheckMatrix(f.up, inter, h, l, e, "up"));
      MM_RETURN_IF_ERROR(CheckMatrix(f.down, h, inter, l, e, "down"));
    }
    held[l] = lw.expert_ids;
  }
  return std::unique_ptr<ReferenceExpertPool>(
      new ReferenceExpertPool(std::move(config), std::move(weights), std::move(held), threads));
}

absl::StatusOr<std::unique_ptr<ReferenceExpertPool>> ReferenceExpertPool::Load(
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

void ReferenceExpertPool::Compute(const ExpertBatch& b, absl::Span<float> out) {
  const LayerWeights& lw = weights_.layers[b.layer];
  const int64_t n_slots = static_cast<int64_t>(lw.experts.size());
  const int64_t h = b.hidden;
  const int64_t inter = config().expert_intermediate_size;

  GroupRoutes(b, n_slots, [&](int32_t e) { return Slot(b.layer, e); }, routes_);
  const int64_t held = routes_.held();

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
    for (int64_t p = routes_.offsets[s]; p < routes_.offsets[s + 1]; p += rows_per_task) {
      tasks.push_back({static_cast<int32_t>(s), static_cast<int32_t>(p),
                       static_cast<int32_t>(std::min<int64_t>(p + rows_per_task, routes_.offsets[s + 1]))});
    }
  }
  route_out_.resize(static_cast<size_t>(held * h));
  pool_->ParallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Task& t = tasks[i];
      ExpertRows(lw.experts[t.slot], b.hidden_states.data(), routes_.token.data() + t.begin,
                 t.end - t.begin, h, inter, route_out_.data() + static_cast<int64_t>(t.begin) * h);
    }
  }, 1);

  // Per token, in j order: the sum does not depend on which thread ran which expert.
  pool_->ParallelFor(b.num_tokens, [&](int64_t begin, int64_t end) {
    SumRoutes(routes_, b.top_k, h, b.expert_weights.data(), route_out_.data(), begin * h, end * h,
              out.data());
  });
}

}  // namespace moemesh
