#include "coordinator/placement.h"

#include <algorithm>
#include <cmath>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/progress.h"
#include "common/status.h"

namespace moemesh {
namespace {

absl::Status ValidatePolicy(const PlacementPolicy& policy) {
  if (policy.tp_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("tp_size = ", policy.tp_size, " must be >= 1"));
  }
  if (policy.expert_replicas < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert_replicas = ", policy.expert_replicas, " must be >= 1"));
  }
  if (!(policy.usable_dram_fraction > 0 && policy.usable_dram_fraction <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "usable_dram_fraction = ", policy.usable_dram_fraction, " is outside (0, 1]"));
  }
  if (!(policy.bytes_per_weight > 0 && policy.bytes_per_weight <= 8)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bytes_per_weight = ", policy.bytes_per_weight, " is outside (0, 8]"));
  }
  return absl::OkStatus();
}

absl::Status ValidateTensorParallel(const ModelConfig& model, int32_t tp) {
  const bool heads_ok = model.num_heads % tp == 0;
  const bool kv_ok = model.num_kv_heads > 0 &&
                     (model.num_kv_heads % tp == 0 || tp % model.num_kv_heads == 0);
  if (heads_ok && kv_ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "TP ", tp, " does not divide the model: ", model.num_heads, " attention heads (must be a ",
      "multiple of TP) and ", model.num_kv_heads,
      " KV heads (must be a multiple or a divisor of TP)"));
}

// Workers of one role, sorted by id.
std::vector<const WorkerInventory*> ByRole(const std::vector<WorkerInventory>& workers,
                                           WorkerRole role) {
  std::vector<const WorkerInventory*> out;
  for (const WorkerInventory& w : workers) {
    if (w.role == role) out.push_back(&w);
  }
  std::sort(out.begin(), out.end(),
            [](const WorkerInventory* a, const WorkerInventory* b) { return a->id < b->id; });
  return out;
}

}  // namespace

uint64_t ExpertBytes(const ModelConfig& model, double bytes_per_weight) {
  const uint64_t weights = 3ull * static_cast<uint64_t>(model.hidden_size) *
                           static_cast<uint64_t>(model.expert_intermediate_size);
  return static_cast<uint64_t>(std::ceil(static_cast<double>(weights) * bytes_per_weight));
}

std::string Placement::Summary() const {
  std::string out = absl::StrCat("TP ", attention_ranks.size(), " on ",
                                 absl::StrJoin(attention_ranks, ","), "; ");
  if (expert_workers.empty()) return absl::StrCat(out, "no expert workers");
  absl::StrAppend(&out, expert_workers.size(), " expert workers: ");
  for (size_t w = 0; w < expert_workers.size(); ++w) {
    size_t experts = 0;
    for (const auto& layer : worker_layer_experts[w]) experts += layer.size();
    absl::StrAppend(&out, w == 0 ? "" : ", ", expert_workers[w], " ",
                    FormatBytes(worker_bytes[w]), " (", experts, " experts)");
  }
  return out;
}

absl::StatusOr<Placement> PlanPlacement(const ModelConfig& model,
                                        const std::vector<WorkerInventory>& workers,
                                        const PlacementPolicy& policy) {
  MM_RETURN_IF_ERROR(ValidatePolicy(policy));
  absl::flat_hash_set<std::string> ids;
  for (const WorkerInventory& w : workers) {
    if (!ids.insert(w.id).second) {
      return absl::InvalidArgumentError(absl::StrCat("worker id \"", w.id, "\" appears twice"));
    }
  }
  MM_RETURN_IF_ERROR(ValidateTensorParallel(model, policy.tp_size));
  MM_CHECK(static_cast<int>(model.layer_is_moe.size()) == model.num_layers);

  Placement placement;
  const auto attention = ByRole(workers, WorkerRole::kAttention);
  if (static_cast<int32_t>(attention.size()) != policy.tp_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("TP ", policy.tp_size, " needs exactly ", policy.tp_size,
                     " attention workers, ", attention.size(), " registered"));
  }
  for (const WorkerInventory* w : attention) placement.attention_ranks.push_back(w->id);

  const auto experts = ByRole(workers, WorkerRole::kExpert);
  const int32_t num_workers = static_cast<int32_t>(experts.size());
  for (const WorkerInventory* w : experts) placement.expert_workers.push_back(w->id);
  placement.owners.resize(model.num_layers);
  placement.worker_layer_experts.assign(num_workers,
                                        std::vector<std::vector<int32_t>>(model.num_layers));
  placement.worker_bytes.assign(num_workers, 0);

  const int num_moe_layers = model.num_moe_layers();
  if (num_moe_layers == 0 || model.num_experts == 0) return placement;
  const int32_t replicas = policy.expert_replicas;
  if (num_workers < replicas) {
    return absl::FailedPreconditionError(
        absl::StrCat(replicas, " expert replicas need at least ", replicas,
                     " expert workers, ", num_workers, " registered"));
  }

  const uint64_t expert_bytes = ExpertBytes(model, policy.bytes_per_weight);
  std::vector<uint64_t> capacity(num_workers);
  uint64_t dram_total = 0, offered = 0;
  for (int32_t w = 0; w < num_workers; ++w) {
    capacity[w] = static_cast<uint64_t>(
        std::floor(static_cast<double>(experts[w]->dram_bytes) * policy.usable_dram_fraction));
    dram_total += experts[w]->dram_bytes;
    offered += capacity[w];
  }
  const uint64_t needed = static_cast<uint64_t>(num_moe_layers) * model.num_experts *
                          expert_bytes * static_cast<uint64_t>(replicas);
  const std::string need_vs_offer = absl::StrFormat(
      "routed experts need %s (x%d replicas), expert workers offer %s usable (%g%% of %s)",
      FormatBytes(needed), replicas, FormatBytes(offered), policy.usable_dram_fraction * 100,
      FormatBytes(dram_total));
  if (needed > offered) return absl::ResourceExhaustedError(need_vs_offer);

  std::vector<uint64_t>& load = placement.worker_bytes;
  std::vector<bool> taken(num_workers);
  for (int layer = 0; layer < model.num_layers; ++layer) {
    if (!model.layer_is_moe[layer]) continue;
    placement.owners[layer].resize(model.num_experts);
    for (int32_t e = 0; e < model.num_experts; ++e) {
      std::vector<int32_t>& owners = placement.owners[layer][e];
      std::fill(taken.begin(), taken.end(), false);
      for (int32_t r = 0; r < replicas; ++r) {
        int32_t best = -1;
        for (int32_t w = 0; w < num_workers; ++w) {
          if (taken[w] || load[w] + expert_bytes > capacity[w]) continue;
          if (best < 0 || load[w] < load[best]) best = w;
        }
        if (best < 0) {
          return absl::ResourceExhaustedError(absl::StrCat(
              need_vs_offer, "; no ", replicas, " distinct expert workers have ",
              FormatBytes(expert_bytes), " left for layer ", layer, " expert ", e));
        }
        taken[best] = true;
        load[best] += expert_bytes;
        owners.push_back(best);
        placement.worker_layer_experts[best][layer].push_back(e);
      }
      std::sort(owners.begin(), owners.end());
    }
  }
  return placement;
}

}  // namespace moemesh
