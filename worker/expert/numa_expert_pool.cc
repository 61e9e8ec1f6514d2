#include "worker/expert/route_groups.h"
#include "worker/expert/numa_expert_pool.h"

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/progress.h"
#include "common/status.h"
#include "kernels/cpu/path_threshold.h"

namespace moemesh {
namespace {

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// An upper bound of cpu::PackExpert's buffer bytes (each buffer 64-byte rounded), to reserve
// arena space before packing.
size_t PackedBytesBound(int64_t hidden, int64_t inter, const cpu::FormatSpec& spec) {
  const bool quantized = spec.format != cpu::WeightFormat::kBf16;
  const int64_t col_align = quantized ? std::max<int64_t>(64, spec.group) : 64;
  auto matrix = [&](int64_t rows, int64_t cols) -> int64_t {
    const int64_t rp = RoundUp(rows, cpu::kRowBlock);
    const int64_t cp = RoundUp(cols, col_align);
    int64_t bytes = 0;
    switch (spec.format) {
      case cpu::WeightFormat::kBf16: bytes = rp * cp * 2; break;
      case cpu::WeightFormat::kInt8: bytes = rp * cp; break;
      case cpu::WeightFormat::kInt4: bytes = rp * cp / 2; break;
    }
    bytes = RoundUp(bytes, 64) + 64;
    if (quantized) bytes += 2 * (RoundUp(rp * (cp / spec.group) * 4, 64) + 64);
    return bytes;
  };
  return static_cast<size_t>(matrix(2 * RoundUp(inter, cpu::kRowBlock), hidden) + matrix(hidden, inter));
}

// The experts held per layer: all of every MoE layer, or the listed ones (sorted, unique).
absl::StatusOr<std::vector<std::vector<int>>> HeldLists(const ModelConfig& c,
                                                        const std::vector<std::vector<int>>& lists) {
  if (!lists.empty() && static_cast<int>(lists.size()) != c.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("expert lists cover ", lists.size(),
                                                   " layers; the model has ", c.num_layers));
  }
  std::vector<std::vector<int>> held(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.layer_is_moe[l]) continue;
    if (lists.empty()) {
      for (int e = 0; e < c.num_experts; ++e) held[l].push_back(e);
      continue;
    }
    held[l] = lists[l];
    std::sort(held[l].begin(), held[l].end());
    held[l].erase(std::unique(held[l].begin(), held[l].end()), held[l].end());
    for (int e : held[l]) {
      if (e < 0 || e >= c.num_experts) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", l, " expert ", e,
                                                       " is outside [0, ", c.num_experts, ")"));
      }
    }
  }
  return held;
}

absl::Status CheckConfig(const NumaPoolConfig& cfg) {
  if (cfg.nodes.empty()) return absl::InvalidArgumentError("expert pool config lists no NUMA nodes");
  for (size_t n = 0; n < cfg.nodes.size(); ++n) {
    if (cfg.nodes[n].threads < 1) {
      return absl::InvalidArgumentError(absl::StrCat("NUMA node entry ", n, " has ",
                                                     cfg.nodes[n].threads, " threads, expected >= 1"));
    }
  }
  if (cfg.amx_threshold < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("AMX threshold is ", cfg.amx_threshold,
                     " tokens, expected >= 0 (0: measure)"));
  }
  if (cfg.format.format != cpu::WeightFormat::kBf16 && cfg.format.group != 32 && cfg.format.group != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight format group is ", cfg.format.group, ", expected 32 or 128"));
  }
  return absl::OkStatus();
}

// Sets the AMX threshold of `format` (process-wide) and logs it in one line: `configured` when
// >= 1, else measured on `sample` (AMX against AVX-512, one thread, a few tens of ms) where AMX
// runs. A failed measurement keeps the default and says so.
void ApplyAmxThreshold(const cpu::FormatSpec& format, int64_t configured,
                       const cpu::PackedExpert* sample) {
  const bool amx = cpu::PathSupported(cpu::CpuPath::kAmx);
  const char* other = cpu::PathName(cpu::ChoosePath(format, 0));  // the best path below AMX
  if (configured > 0) cpu::SetAmxThreshold(format.format, configured);
  if (!amx) {
    MM_LOG(INFO) << "AMX not available: " << other << " path for all token counts";
    return;
  }
  if (configured > 0) {
    MM_LOG(INFO) << "AMX from " << configured << " tokens per expert for " << format.Name()
                 << " (configured)";
    return;
  }
  const int64_t current = cpu::AmxThreshold(format.format);
  if (sample == nullptr) {
    MM_LOG(INFO) << "AMX from " << current << " tokens per expert for " << format.Name()
                 << " (default: no expert held to measure on)";
    return;
  }
  const absl::StatusOr<cpu::PathThreshold> r =
      cpu::MeasurePathThreshold(*sample, cpu::CpuPath::kAmx, cpu::CpuPath::kAvx512);
  if (!r.ok()) {
    MM_LOG(WARNING) << "AMX threshold not measured (" << r.status() << "): AMX from " << current
                    << " tokens per expert for " << format.Name();
    return;
  }
  cpu::SetAmxThreshold(format.format, r->from_tokens);
  std::string ratios;  // AMX time / AVX-512 time per measured count
  for (const cpu::PathTiming& t : r->timings) {
    absl::StrAppend(&ratios, ratios.empty() ? "" : ", ", t.tokens, ": ",
                    absl::StrFormat("%.2f", t.seconds_a / t.seconds_b));
  }
  const std::string how =
      absl::StrFormat("(measured in %.0f ms on %.1f MiB of one expert; AMX/%s time at ",
                      r->seconds * 1e3, r->weight_bytes / 1048576.0, other) +
      ratios + " tokens)";
  if (r->never()) {
    MM_LOG(INFO) << "AMX not faster than " << other << " up to " << r->timings.back().tokens
                 << " tokens per expert for " << format.Name() << ": " << other
                 << " path for all token counts " << how;
  } else {
    MM_LOG(INFO) << "AMX from " << r->from_tokens << " tokens per expert for " << format.Name()
                 << " " << how;
  }
}

}  // namespace

NumaExpertPool::NumaExpertPool(ModelConfig config, std::vector<std::vector<int>> held,
                               const NumaPoolConfig& cfg)
    : ExpertPool(std::move(config), std::move(held), 0),
      format_(cfg.format),
      show_progress_(cfg.show_progress) {}

NumaExpertPool::~NumaExpertPool() {
  executor_.reset();  // threads first, then the weights, their arenas and hwloc (member order)
  experts_.clear();
}

absl::StatusOr<std::unique_ptr<NumaExpertPool>> NumaExpertPool::Load(
    const std::string& model_dir, const std::vector<std::vector<int>>& layer_experts,
    const NumaPoolConfig& cfg) {
  MM_RETURN_IF_ERROR(CheckConfig(cfg));
  MM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  MM_ASSIGN_OR_RETURN(std::unique_ptr<WeightSource> source, OpenSafetensorsDir(model_dir));
  MM_ASSIGN_OR_RETURN(std::vector<std::vector<int>> held, HeldLists(config, layer_experts));
  std::unique_ptr<NumaExpertPool> pool(new NumaExpertPool(std::move(config), std::move(held), cfg));
  MM_ASSIGN_OR_RETURN(pool->hwloc_, Hwloc::Open());
  for (const NumaNodeSpec& node : cfg.nodes) {
    pool->arenas_.push_back(std::make_unique<NodeArena>(pool->hwloc_.get(), node.os_index, size_t{256} << 20));
  }
  pool->node_bytes_.assign(cfg.nodes.size(), 0);
  MM_RETURN_IF_ERROR(pool->LoadExperts(model_dir, *source));
  const cpu::PackedExpert* sample = nullptr;  // the first held expert
  for (const std::vector<Held>& layer : pool->experts_) {
    if (sample == nullptr && !layer.empty()) sample = &layer.front().packed;
  }
  ApplyAmxThreshold(cfg.format, cfg.amx_threshold, sample);  // before the pool's threads spin
  pool->executor_ = std::make_unique<NumaExecutor>(cfg.nodes, pool->hwloc_.get());
  return pool;
}

absl::Status NumaExpertPool::LoadExperts(const std::string& model_dir, const WeightSource& source) {
  const ModelConfig& c = config();
  const int64_t h = c.hidden_size;
  const int64_t inter = c.expert_intermediate_size;
  const size_t bound = PackedBytesBound(h, inter, format_);
  int64_t count = 0;
  for (int l = 0; l < c.num_layers; ++l) count += static_cast<int64_t>(HeldExperts(l).size());
  const auto start = std::chrono::steady_clock::now();
  std::optional<ProgressBar> bar;  // by bytes (the packed size bound per expert)
  if (show_progress_) {
    bar.emplace(absl::StrCat("packing ", count, " experts (", format_.Name(), ")"),
                static_cast<uint64_t>(count) * bound);
  }
  int64_t done = 0;
  experts_.resize(c.num_layers);
  uint64_t packed = 0;
  uint64_t fp32 = 0;
  std::vector<int> node_experts(arenas_.size(), 0);
  for (int l = 0; l < c.num_layers; ++l) {
    const std::vector<int> held = HeldExperts(l);
    for (int e : held) {
      // Read one expert in fp32, pack it into its node's memory, drop the fp32 copy.
      ShardSpec shard;
      shard.load_dense = false;
      shard.layer_experts.assign(c.num_layers, {});
      shard.layer_experts[l] = {e};
      MM_ASSIGN_OR_RETURN(ModelWeights w, LoadModelWeights(c, source, shard));
      if (w.layers[l].experts.size() != 1) {
        return absl::InternalError(absl::StrCat(model_dir, ": layer ", l, " expert ", e, " did not load"));
      }
      const FfnWeights& f = w.layers[l].experts[0];
      const int node = static_cast<int>(
          std::min_element(node_bytes_.begin(), node_bytes_.end()) - node_bytes_.begin());
      NodeArena& arena = *arenas_[node];
      MM_RETURN_IF_ERROR(arena.Reserve(bound));
      Held held_expert;
      held_expert.node = node;
      held_expert.packed = cpu::PackExpert(f.gate.data.data(), f.up.data.data(), f.down.data.data(), h,
                                           inter, format_, &NodeArena::AllocateFn, &arena, nullptr);
      const uint64_t bytes = held_expert.packed.bytes();
      node_bytes_[node] += bytes;
      ++node_experts[node];
      packed += bytes;
      fp32 += w.bytes;
      experts_[l].push_back(std::move(held_expert));
      ++done;
      if (bar) bar->Update(static_cast<uint64_t>(done) * bound);
    }
  }
  if (bar) bar->Finish();
  malloc_trim(0);  // give the fp32 staging memory back to the OS
  set_bytes(packed);
  std::string per_node;
  for (size_t n = 0; n < arenas_.size(); ++n) {
    absl::StrAppend(&per_node, n == 0 ? "" : "; ", "node ", n, " (NUMA ",
                    arenas_[n]->node() < 0 ? std::string("unbound") : absl::StrCat(arenas_[n]->node()),
                    "): ", FormatBytes(node_bytes_[n]), ", ", node_experts[n], " experts");
  }
  MM_LOG(INFO) << "expert pool: " << count << " routed experts from " << model_dir << " packed as "
               << format_.Name() << ": " << FormatBytes(packed) << " (" << FormatBytes(fp32)
               << " in fp32) in "
               << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
               << " s; " << per_node;
  return absl::OkStatus();
}

int NumaExpertPool::NodeOf(int layer, int expert) const {
  MM_CHECK(Holds(layer, expert));
  return experts_[layer][Slot(layer, expert)].node;
}

const cpu::PackedExpert& NumaExpertPool::Packed(int layer, int expert) const {
  MM_CHECK(Holds(layer, expert));
  return experts_[layer][Slot(layer, expert)].packed;
}

void NumaExpertPool::Compute(const ExpertBatch& b, absl::Span<float> out) {
  const std::vector<Held>& experts = experts_[b.layer];
  const int64_t n_slots = static_cast<int64_t>(experts.size());
  slot_node_.resize(n_slots);
  packed_.resize(n_slots);
  for (int64_t s = 0; s < n_slots; ++s) {
    slot_node_[s] = experts[s].node;
    packed_[s] = &experts[s].packed;
  }
  MoeStepShape shape;
  shape.hidden = b.hidden;
  shape.intermediate = config().expert_intermediate_size;
  for (int n = 0; n < executor_->num_nodes(); ++n) shape.node_threads.push_back(executor_->node_threads(n));
  const MoeStepData& d = step_.Prepare(b, [&](int32_t e) { return Slot(b.layer, e); }, packed_,
                                       slot_node_, shape, out.data());
  MoeStepPlan& plan = step_.plan();
  // One phase: gather the tokens of experts with several, gate+up, down, then each token's sum
  // in j order (independent of which thread ran which expert).
  executor_->Run(plan.counts(), [&](int node, int64_t i) {
    thread_local cpu::Scratch scratch;
    const MoeStepTask& t = plan.task(node, i);
    plan.WaitInputs(t);
    RunMoeStepTask(t, d, scratch);
    plan.Done(t);
  });
}

}  // namespace moemesh
