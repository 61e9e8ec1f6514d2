// MoeStepPlan: the task lists cover every route, row and token exactly once in dependency order
// on the right node, and a phase run the way the executors run it (each node's threads taking
// its tasks in list order) never starts a task before its inputs are done and always finishes,
// with more threads than CPUs too.
#include "worker/expert/moe_step_plan.h"

#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "kernels/cpu/expert_ffn.h"

namespace moemesh {
namespace {

struct Scenario {
  MoeStepShape shape;
  std::vector<int32_t> offsets;  // per slot, n_slots + 1
  std::vector<int32_t> node;     // per slot
};

Scenario RandomScenario(std::mt19937& rng) {
  Scenario s;
  const int nodes = std::uniform_int_distribution<int>(1, 3)(rng);
  for (int n = 0; n < nodes; ++n) s.shape.node_threads.push_back(std::uniform_int_distribution<int>(1, 4)(rng));
  s.shape.hidden = std::uniform_int_distribution<int>(1, 300)(rng);
  s.shape.intermediate = std::uniform_int_distribution<int>(1, 200)(rng);
  s.shape.num_tokens = std::uniform_int_distribution<int>(1, 40)(rng);
  s.shape.tasks_per_thread = std::uniform_int_distribution<int>(1, 20)(rng);
  const int slots = std::uniform_int_distribution<int>(1, 12)(rng);
  s.offsets.push_back(0);
  for (int i = 0; i < slots; ++i) {
    const int routes = std::uniform_int_distribution<int>(0, 3)(rng) == 0
                           ? 0
                           : std::uniform_int_distribution<int>(1, 80)(rng);
    s.offsets.push_back(s.offsets.back() + routes);
    s.node.push_back(std::uniform_int_distribution<int>(0, nodes - 1)(rng));
  }
  return s;
}

TEST(MoeStepPlanTest, CoversEverythingOnceInDependencyOrder) {
  std::mt19937 rng(11);
  MoeStepPlan plan;  // reused: Build must reset everything
  for (int iter = 0; iter < 500; ++iter) {
    const Scenario s = RandomScenario(rng);
    plan.Build(s.shape, s.offsets, s.node);
    const int nodes = static_cast<int>(s.shape.node_threads.size());
    ASSERT_EQ(plan.nodes(), nodes);
    const int slots = static_cast<int>(s.node.size());
    std::vector<std::vector<int>> gathered(slots), gate_up(slots), down(slots);
    for (int sl = 0; sl < slots; ++sl) {
      gathered[sl].assign(s.offsets[sl + 1] - s.offsets[sl], 0);
      gate_up[sl].assign(s.shape.intermediate, 0);
      down[sl].assign(s.shape.hidden, 0);
    }
    std::vector<int> summed(s.shape.num_tokens * s.shape.hidden, 0);
    int sums = 0;
    for (int n = 0; n < nodes; ++n) {
      int last_kind = MoeStepTask::kGather;
      for (int64_t i = 0; i < plan.counts()[n]; ++i) {
        const MoeStepTask& t = plan.task(n, i);
        ASSERT_GE(t.kind, last_kind) << "kinds out of order on node " << n;
        last_kind = t.kind;
        ASSERT_LT(t.begin, t.end);
        if (t.kind == MoeStepTask::kSum) {
          for (int32_t e = t.begin; e < t.end; ++e) ++summed.at(e);
          EXPECT_EQ(t.begin % 16, 0) << "a sum range that does not start a 64-byte line";
          ++sums;
          continue;
        }
        ASSERT_EQ(s.node[t.slot], n) << "a task of slot " << t.slot << " on another node";
        if (t.kind == MoeStepTask::kGather) {
          for (int32_t p = t.begin; p < t.end; ++p) ++gathered[t.slot].at(p - s.offsets[t.slot]);
          continue;
        }
        EXPECT_EQ(t.begin % cpu::kRowBlock, 0);
        std::vector<int>& rows = t.kind == MoeStepTask::kGateUp ? gate_up[t.slot] : down[t.slot];
        EXPECT_TRUE(t.end % cpu::kRowBlock == 0 || t.end == static_cast<int32_t>(rows.size()));
        for (int32_t r = t.begin; r < t.end; ++r) ++rows.at(r);
      }
    }
    for (int sl = 0; sl < slots; ++sl) {
      const int routes = s.offsets[sl + 1] - s.offsets[sl];
      const int want = routes > 0 ? 1 : 0;  // no tasks for an idle expert
      // A single route is read in place, not gathered.
      for (int c : gathered[sl]) ASSERT_EQ(c, routes > 1 ? 1 : 0) << "slot " << sl;
      for (int c : gate_up[sl]) ASSERT_EQ(c, want) << "slot " << sl;
      for (int c : down[sl]) ASSERT_EQ(c, want) << "slot " << sl;
    }
    for (int c : summed) ASSERT_EQ(c, 1);
    // Two ranges per thread or fewer, none under the minimum unless the output is.
    int threads = 0;
    for (int n : s.shape.node_threads) threads += n;
    const int64_t elements = s.shape.num_tokens * s.shape.hidden;
    EXPECT_LE(sums, std::max<int64_t>(2 * threads, 1));
    EXPECT_LE(sums, (elements + MoeStepPlan::kMinSumElements - 1) / MoeStepPlan::kMinSumElements);
  }
}

// Runs a phase as NumaExecutor does: per node, node_threads threads taking the node's tasks from
// an atomic counter in order. Each task checks that what it reads is complete, sometimes yields
// midway, then marks its outputs.
void RunPhase(MoeStepPlan& plan, const Scenario& s, std::mt19937& rng, std::atomic<int>& errors) {
  const int slots = static_cast<int>(s.node.size());
  std::vector<std::atomic<int>> gathers(slots), gate_ups(slots);
  for (auto& a : gathers) a.store(0);
  for (auto& a : gate_ups) a.store(0);
  std::atomic<int> downs{0};
  std::vector<int> want_gathers(slots, 0), want_gate_ups(slots, 0);
  int want_downs = 0;
  for (int n = 0; n < plan.nodes(); ++n) {
    for (int64_t i = 0; i < plan.counts()[n]; ++i) {
      const MoeStepTask& t = plan.task(n, i);
      if (t.kind == MoeStepTask::kGather) ++want_gathers[t.slot];
      if (t.kind == MoeStepTask::kGateUp) ++want_gate_ups[t.slot];
      if (t.kind == MoeStepTask::kDown) ++want_downs;
    }
  }
  const uint32_t seed = rng();
  std::vector<std::atomic<int64_t>> next(plan.nodes());
  for (auto& a : next) a.store(0);
  std::vector<std::thread> threads;
  for (int n = 0; n < plan.nodes(); ++n) {
    for (int k = 0; k < s.shape.node_threads[n]; ++k) {
      threads.emplace_back([&, n, k] {
        std::mt19937 local(seed + 97 * n + k);
        for (int64_t i; (i = next[n].fetch_add(1)) < plan.counts()[n];) {
          const MoeStepTask& t = plan.task(n, i);
          plan.WaitInputs(t);
          bool ok = true;
          if (t.kind == MoeStepTask::kGateUp) ok = gathers[t.slot].load() == want_gathers[t.slot];
          if (t.kind == MoeStepTask::kDown) ok = gate_ups[t.slot].load() == want_gate_ups[t.slot];
          if (t.kind == MoeStepTask::kSum) ok = downs.load() == want_downs;
          if (!ok) errors.fetch_add(1);
          if (local() % 4 == 0) std::this_thread::yield();
          if (t.kind == MoeStepTask::kGather) gathers[t.slot].fetch_add(1);
          if (t.kind == MoeStepTask::kGateUp) gate_ups[t.slot].fetch_add(1);
          if (t.kind == MoeStepTask::kDown) downs.fetch_add(1);
          plan.Done(t);
        }
      });
    }
  }
  for (std::thread& t : threads) t.join();
}

TEST(MoeStepPlanTest, TasksRunOnlyAfterTheirInputsAndPhasesFinish) {
  std::mt19937 rng(5);
  MoeStepPlan plan;
  std::atomic<int> errors{0};
  for (int iter = 0; iter < 200; ++iter) {  // up to 12 threads: more than CI's CPUs
    const Scenario s = RandomScenario(rng);
    plan.Build(s.shape, s.offsets, s.node);
    RunPhase(plan, s, rng, errors);
    ASSERT_EQ(errors.load(), 0) << "scenario " << iter << ": a task started before its inputs";
  }
}

}  // namespace
}  // namespace moemesh
