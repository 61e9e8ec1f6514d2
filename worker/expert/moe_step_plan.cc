#include "worker/expert/moe_step_plan.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "common/status.h"
#include "common/worker_gate.h"
#include "kernels/cpu/expert_ffn.h"

namespace moemesh {
namespace {

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Splits `rows` into about `pieces` ranges that are multiples of kRowBlock (the last may end at
// `rows`), calling add(begin, end) for each.
template <class Add>
void SplitRows(int64_t rows, int64_t pieces, Add add) {
  const int64_t step =
      std::max<int64_t>(cpu::kRowBlock, RoundUp((rows + pieces - 1) / pieces, cpu::kRowBlock));
  for (int64_t b = 0; b < rows; b += step) add(b, std::min(rows, b + step));
}

// Polls `left` until it reads 0: briefly with pause instructions (the task it waits for is
// usually about to finish), then yielding, so that with more threads than CPUs the waiter
// does not hold the CPU of the thread it waits for.
template <class T>
void WaitZero(const std::atomic<T>& left) {
  for (int i = 0; i < 256; ++i) {
    if (left.load(std::memory_order_acquire) == 0) return;
    CpuRelax();
  }
  while (left.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

}  // namespace

void MoeStepPlan::Build(const MoeStepShape& shape, absl::Span<const int32_t> route_offsets,
                        absl::Span<const int32_t> slot_node) {
  const int nodes = static_cast<int>(shape.node_threads.size());
  const int64_t n_slots = static_cast<int64_t>(slot_node.size());
  MM_CHECK(nodes >= 1);
  MM_CHECK(static_cast<int64_t>(route_offsets.size()) == n_slots + 1);
  MM_CHECK(shape.tasks_per_thread >= 1);
  tasks_.resize(nodes);
  for (std::vector<MoeStepTask>& t : tasks_) t.clear();
  if (slots_capacity_ < static_cast<size_t>(n_slots)) {
    slots_capacity_ = static_cast<size_t>(n_slots);
    gathers_left_.reset(new std::atomic<int32_t>[slots_capacity_]);
    gate_ups_left_.reset(new std::atomic<int32_t>[slots_capacity_]);
  }

  // Each expert's share of its node's work: streaming its weights costs about as much as this
  // many tokens' arithmetic.
  constexpr double kWeightCost = 16.0;
  std::vector<double> node_cost(nodes, 0.0);
  auto routes = [&](int64_t s) { return route_offsets[s + 1] - route_offsets[s]; };
  for (int64_t s = 0; s < n_slots; ++s) {
    MM_CHECK(slot_node[s] >= 0 && slot_node[s] < nodes);
    if (routes(s) > 0) node_cost[slot_node[s]] += kWeightCost + static_cast<double>(routes(s));
  }
  auto pieces = [&](int64_t s) {
    const int node = slot_node[s];
    const double target = static_cast<double>(shape.tasks_per_thread) * shape.node_threads[node];
    return std::max<int64_t>(
        1, static_cast<int64_t>(target * (kWeightCost + routes(s)) / node_cost[node] + 0.5));
  };

  for (int64_t s = 0; s < n_slots; ++s) {  // gathers
    const int32_t slot = static_cast<int32_t>(s);
    int32_t count = 0;
    const int32_t gather_end = Gathers(routes(s)) ? route_offsets[s + 1] : route_offsets[s];
    for (int32_t p = route_offsets[s]; p < gather_end; p += kGatherRoutes, ++count) {
      tasks_[slot_node[s]].push_back(
          {MoeStepTask::kGather, slot, p, std::min(route_offsets[s + 1], p + kGatherRoutes)});
    }
    gathers_left_[s].store(count, std::memory_order_relaxed);
  }
  for (int64_t s = 0; s < n_slots; ++s) {  // gate + up
    int32_t count = 0;
    if (routes(s) > 0) {
      SplitRows(shape.intermediate, pieces(s), [&](int64_t i0, int64_t i1) {
        tasks_[slot_node[s]].push_back({MoeStepTask::kGateUp, static_cast<int32_t>(s),
                                        static_cast<int32_t>(i0), static_cast<int32_t>(i1)});
        ++count;
      });
    }
    gate_ups_left_[s].store(count, std::memory_order_relaxed);
  }
  std::vector<size_t> first_down(nodes);
  for (int n = 0; n < nodes; ++n) first_down[n] = tasks_[n].size();
  for (int64_t s = 0; s < n_slots; ++s) {  // down
    if (routes(s) == 0) continue;
    SplitRows(shape.hidden, pieces(s), [&](int64_t o0, int64_t o1) {
      tasks_[slot_node[s]].push_back({MoeStepTask::kDown, static_cast<int32_t>(s),
                                      static_cast<int32_t>(o0), static_cast<int32_t>(o1)});
    });
  }
  int64_t downs = 0;
  for (int n = 0; n < nodes; ++n) downs += static_cast<int64_t>(tasks_[n].size() - first_down[n]);
  downs_left_.store(downs, std::memory_order_relaxed);
  // Sums: about two ranges of the output per thread, whole 64-byte lines, round robin over nodes.
  int64_t all_threads = 0;
  for (int n : shape.node_threads) all_threads += n;
  const int64_t elements = shape.num_tokens * shape.hidden;
  const int64_t piece =
      std::max(kMinSumElements, RoundUp((elements + 2 * all_threads - 1) / (2 * all_threads), 16));
  for (int64_t e = 0, i = 0; e < elements; e += piece, ++i) {
    tasks_[i % nodes].push_back({MoeStepTask::kSum, -1, static_cast<int32_t>(e),
                                 static_cast<int32_t>(std::min(elements, e + piece))});
  }
  counts_.resize(nodes);
  for (int n = 0; n < nodes; ++n) counts_[n] = static_cast<int64_t>(tasks_[n].size());
}

void MoeStepPlan::WaitInputs(const MoeStepTask& t) const {
  switch (t.kind) {
    case MoeStepTask::kGather:
      return;
    case MoeStepTask::kGateUp:
      return WaitZero(gathers_left_[t.slot]);
    case MoeStepTask::kDown:
      return WaitZero(gate_ups_left_[t.slot]);
    case MoeStepTask::kSum:
      return WaitZero(downs_left_);
  }
}

void MoeStepPlan::Done(const MoeStepTask& t) {
  switch (t.kind) {
    case MoeStepTask::kGather:
      gathers_left_[t.slot].fetch_sub(1, std::memory_order_release);
      return;
    case MoeStepTask::kGateUp:
      gate_ups_left_[t.slot].fetch_sub(1, std::memory_order_release);
      return;
    case MoeStepTask::kDown:
      downs_left_.fetch_sub(1, std::memory_order_release);
      return;
    case MoeStepTask::kSum:
      return;
  }
}

void RunMoeStepTask(const MoeStepTask& t, const MoeStepData& d, cpu::Scratch& scratch) {
  const RouteGroups& g = *d.routes;
  const int64_t hd = d.hidden;
  switch (t.kind) {
    case MoeStepTask::kGather:
      for (int32_t p = t.begin; p < t.end; ++p) {
        std::memcpy(d.xg + p * hd, d.x + static_cast<int64_t>(g.token[p]) * hd, hd * sizeof(float));
      }
      return;
    case MoeStepTask::kGateUp: {
      const int64_t p0 = g.offsets[t.slot];
      const int64_t n = g.offsets[t.slot + 1] - p0;
      const float* x = MoeStepPlan::Gathers(n) ? d.xg + p0 * hd : d.x + static_cast<int64_t>(g.token[p0]) * hd;
      cpu::GateUp(*d.experts[t.slot], x, n, t.begin, t.end, d.h + p0 * d.intermediate,
                  d.paths[t.slot], scratch);
      return;
    }
    case MoeStepTask::kDown: {
      const int64_t p0 = g.offsets[t.slot];
      const int64_t n = g.offsets[t.slot + 1] - p0;
      float* y = d.y + p0 * hd;
      for (int64_t r = 0; r < n; ++r) std::fill(y + r * hd + t.begin, y + r * hd + t.end, 0.0f);
      cpu::Down(*d.experts[t.slot], d.h + p0 * d.intermediate, n, nullptr, t.begin, t.end, y,
                d.paths[t.slot], scratch);
      return;
    }
    case MoeStepTask::kSum:
      SumRoutes(g, d.top_k, hd, d.route_weights, d.y, t.begin, t.end, d.out);
      return;
  }
}

const MoeStepData& MoeStep::Prepare(const ExpertBatch& b, absl::FunctionRef<int32_t(int32_t)> slot,
                                    absl::Span<const cpu::PackedExpert* const> experts,
                                    absl::Span<const int32_t> slot_node, MoeStepShape shape,
                                    float* out) {
  const int64_t n_slots = static_cast<int64_t>(experts.size());
  MM_CHECK(static_cast<int64_t>(slot_node.size()) == n_slots);
  GroupRoutes(b, n_slots, slot, routes_);
  const int64_t held = routes_.held();
  xg_.resize(static_cast<size_t>(held * shape.hidden));
  y_.resize(xg_.size());
  h_.resize(static_cast<size_t>(held * shape.intermediate));
  paths_.assign(n_slots, cpu::CpuPath::kScalar);
  for (int64_t s = 0; s < n_slots; ++s) {
    const int32_t n = routes_.offsets[s + 1] - routes_.offsets[s];
    if (n > 0) paths_[s] = cpu::ChoosePath(experts[s]->gate_up.spec, n);
  }
  shape.num_tokens = b.num_tokens;
  plan_.Build(shape, routes_.offsets, slot_node);
  data_.hidden = shape.hidden;
  data_.intermediate = shape.intermediate;
  data_.top_k = b.top_k;
  data_.x = b.hidden_states.data();
  data_.route_weights = b.expert_weights.data();
  data_.routes = &routes_;
  data_.experts = experts.data();
  data_.paths = paths_.data();
  data_.xg = xg_.data();
  data_.h = h_.data();
  data_.y = y_.data();
  data_.out = out;
  return data_;
}

}  // namespace moemesh
