#include "worker/expert/expert_pool.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "worker/expert/expert_format.h"
#include "worker/expert/numa_expert_pool.h"
#include "worker/expert/reference_expert_pool.h"

namespace moemesh {
namespace {

absl::Status CheckSize(const char* field, size_t actual, int64_t expected, const char* shape) {
  if (static_cast<int64_t>(actual) != expected) {
    return absl::InvalidArgumentError(absl::StrCat("batch ", field, " has ", actual,
                                                   " values, expected ", expected, " (", shape, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

ExpertPool::ExpertPool(ModelConfig config, std::vector<std::vector<int>> held, uint64_t bytes)
    : config_(std::move(config)), held_(std::move(held)), bytes_(bytes) {
  held_.resize(config_.num_layers);
  slot_.resize(config_.num_layers);
  for (int l = 0; l < config_.num_layers; ++l) {
    if (!config_.layer_is_moe[l]) continue;
    slot_[l].assign(config_.num_experts, -1);
    for (size_t i = 0; i < held_[l].size(); ++i) slot_[l][held_[l][i]] = static_cast<int>(i);
  }
}

ExpertPool::~ExpertPool() = default;

absl::StatusOr<std::unique_ptr<ExpertPool>> ExpertPool::Load(
    const std::string& model_dir, const std::vector<std::vector<int>>& layer_experts,
    const ExpertPoolOptions& options) {
  MM_ASSIGN_OR_RETURN(ExpertFormat format, ParseExpertFormat(options.format));
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert pool threads is ", options.num_threads, ", expected >= 0"));
  }
  std::vector<NumaNodeSpec> nodes = options.nodes;
  if (nodes.empty()) {
    absl::StatusOr<HostTopology> topology = DiscoverTopology();
    if (topology.ok()) {
      nodes = NodesFromTopology(*topology, options.num_threads);
    } else {
      nodes.push_back(NumaNodeSpec{-1, std::max(1, options.num_threads), {}});
    }
  }
  if (format.fp32) {
    ThreadPoolOptions threads;
    threads.num_threads = 0;
    for (const NumaNodeSpec& n : nodes) {
      threads.num_threads += n.threads;
      threads.cpusets.insert(threads.cpusets.end(), n.cpusets.begin(), n.cpusets.end());
    }
    return ReferenceExpertPool::Load(model_dir, layer_experts, threads);
  }
  NumaPoolConfig config;
  config.format = format.spec;
  config.nodes = std::move(nodes);
  config.show_progress = options.show_progress;
  config.amx_threshold = options.amx_threshold;
  MM_ASSIGN_OR_RETURN(std::unique_ptr<NumaExpertPool> pool,
                      NumaExpertPool::Load(model_dir, layer_experts, config));
  return std::unique_ptr<ExpertPool>(std::move(pool));
}

absl::StatusOr<std::unique_ptr<ExpertPool>> ExpertPool::Load(
    const std::string& model_dir, const std::vector<std::vector<int>>& layer_experts,
    const ThreadPoolOptions& threads) {
  MM_ASSIGN_OR_RETURN(std::unique_ptr<ReferenceExpertPool> pool,
                      ReferenceExpertPool::Load(model_dir, layer_experts, threads));
  return std::unique_ptr<ExpertPool>(std::move(pool));
}

absl::StatusOr<std::unique_ptr<ExpertPool>> ExpertPool::FromWeights(
    ModelConfig config, ModelWeights weights, const ThreadPoolOptions& threads) {
  MM_ASSIGN_OR_RETURN(std::unique_ptr<ReferenceExpertPool> pool,
                      ReferenceExpertPool::FromWeights(std::move(config), std::move(weights), threads));
  return std::unique_ptr<ExpertPool>(std::move(pool));
}

bool ExpertPool::Holds(int layer, int expert) const {
  if (layer < 0 || layer >= config_.num_layers || slot_[layer].empty()) return false;
  if (expert < 0 || expert >= config_.num_experts) return false;
  return slot_[layer][expert] >= 0;
}

std::vector<int> ExpertPool::HeldExperts(int layer) const {
  if (layer < 0 || layer >= config_.num_layers) return {};
  return held_[layer];
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
                       absl::StrJoin(held_[b.layer], ", "), "])"));
    }
  }
  return absl::OkStatus();
}

absl::Status ExpertPool::Run(const ExpertBatch& b, absl::Span<float> out) {
  MM_RETURN_IF_ERROR(Validate(b, out));
  std::lock_guard<std::mutex> lock(run_mu_);
  Compute(b, out);
  return absl::OkStatus();
}

}  // namespace moemesh
