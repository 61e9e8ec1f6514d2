// Randomised simulation of the scheduler against fake workers and a fake model whose token
// depends only on the request and its position, with caches small enough to force preemption.
// The fake workers check every plan against what they hold; the fake client owns stop logic.
#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "coordinator/kv_block_allocator.h"
#include "coordinator/scheduler.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

int32_t ModelToken(uint64_t id, int64_t position) {
  uint64_t x = id * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(position) * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  return static_cast<int32_t>(x % 50000);
}

struct ClientRequest {
  std::vector<int32_t> prompt;
  int32_t max_tokens = 0;
  int32_t stop_after = 0;  // the client's own stop (EOS); may be beyond max_tokens
  std::vector<int32_t> output;
  bool live = true;
  bool aborted = false;
  bool admitted = false;
};

struct WorkerSequence {
  std::vector<int32_t> tokens;  // prompt + output as the worker knows them
  int64_t cached = 0;
  std::vector<int32_t> blocks;
};

struct SimulationParams {
  uint64_t seed;
  SchedulerConfig config;
  int num_requests;
  int max_prompt;
  double abort_probability;
};

class Simulation {
 public:
  explicit Simulation(const SimulationParams& p) : p_(p), rng_(p.seed), scheduler_(p.config) {}

  void Run() {
    const SchedulerConfig& c = p_.config;
    const int64_t cache_tokens = static_cast<int64_t>(c.num_blocks) * c.block_size;
    uint64_t next_id = 1;
    int steps = 0;
    while (next_id <= static_cast<uint64_t>(p_.num_requests) || scheduler_.HasWork()) {
      ASSERT_LT(steps, 200000) << "no progress";
      // Arrivals.
      const int arrivals = std::uniform_int_distribution<int>(0, 2)(rng_);
      for (int a = 0; a < arrivals && next_id <= static_cast<uint64_t>(p_.num_requests); ++a) {
        SchedulerRequest r;
        r.id = next_id;
        const int prompt = std::uniform_int_distribution<int>(1, p_.max_prompt)(rng_);
        for (int i = 0; i < prompt; ++i) r.prompt.push_back(ModelToken(r.id * 31 + 7, i));
        const int64_t room = std::min<int64_t>(c.context_length - prompt, cache_tokens + 1 - prompt);
        r.max_tokens = std::uniform_int_distribution<int>(1, static_cast<int>(std::min<int64_t>(room, 40)))(rng_);
        r.sampling.seed = r.id;
        const int32_t stop_after = std::uniform_int_distribution<int>(1, r.max_tokens + 5)(rng_);
        const bool full = scheduler_.stats().waiting >= c.max_waiting;
        const absl::Status status = scheduler_.Add(r);
        if (full) {
          ASSERT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
          ++rejected_;
          break;  // retry the same id later
        }
        ASSERT_TRUE(status.ok()) << status;
        ClientRequest& client = clients_[r.id];
        client.prompt = r.prompt;
        client.max_tokens = r.max_tokens;
        client.stop_after = stop_after;
        add_order_.push_back(r.id);
        ++next_id;
      }
      MaybeAbort();
      std::optional<StepPlan> plan = scheduler_.Schedule();
      if (!plan.has_value()) {
        ASSERT_FALSE(scheduler_.HasWork());
        continue;
      }
      ++steps;
      StepResult result;
      ASSERT_NO_FATAL_FAILURE(RunWorkers(*plan, result));
      if (std::bernoulli_distribution(p_.abort_probability / 4)(rng_)) MaybeAbort(1.0);
      std::vector<uint64_t> finished;
      for (const SampledToken& t : result.tokens) {
        ClientRequest& client = clients_.at(t.id);
        if (!client.live) continue;  // aborted while the step ran
        client.output.push_back(t.sample.token);
        ASSERT_LE(static_cast<int32_t>(client.output.size()), client.max_tokens) << t.id;
        if (static_cast<int32_t>(client.output.size()) == client.stop_after) {
          finished.push_back(t.id);
        }
        // At max_tokens the scheduler finishes the request by itself.
        if (static_cast<int32_t>(client.output.size()) >= std::min(client.stop_after, client.max_tokens)) {
          client.live = false;
        }
      }
      ASSERT_TRUE(scheduler_.Update(*plan, result, finished).ok());
      ASSERT_NO_FATAL_FAILURE(CheckAccounting());
    }
    steps_ = steps;
    // Idle: every block free, workers hold nothing, every request got exactly its tokens.
    const SchedulerStats stats = scheduler_.stats();
    EXPECT_EQ(stats.kv_blocks_free, c.num_blocks);
    EXPECT_EQ(stats.kv_blocks_used, 0);
    EXPECT_EQ(stats.running + stats.waiting, 0);
    EXPECT_TRUE(workers_.empty());
    EXPECT_TRUE(block_owner_.empty());
    for (const auto& [id, client] : clients_) {
      EXPECT_FALSE(client.live) << id;
      const int64_t prompt = static_cast<int64_t>(client.prompt.size());
      const size_t expected_length =
          client.aborted ? client.output.size()
                         : static_cast<size_t>(std::min(client.stop_after, client.max_tokens));
      ASSERT_EQ(client.output.size(), expected_length) << id;
      for (size_t i = 0; i < client.output.size(); ++i) {
        ASSERT_EQ(client.output[i], ModelToken(id, prompt + static_cast<int64_t>(i)))
            << "request " << id << " token " << i;
      }
    }
  }

  int steps() const { return steps_; }
  int rejected() const { return rejected_; }
  int aborted() const { return aborted_; }
  uint64_t preemptions() const { return scheduler_.stats().preemptions; }

 private:
  void MaybeAbort(double probability = -1) {
    if (probability < 0) probability = p_.abort_probability;
    if (!std::bernoulli_distribution(probability)(rng_)) return;
    std::vector<uint64_t> live;
    for (const auto& [id, client] : clients_) {
      if (client.live) live.push_back(id);
    }
    if (live.empty()) return;
    const uint64_t id = live[std::uniform_int_distribution<size_t>(0, live.size() - 1)(rng_)];
    ASSERT_TRUE(scheduler_.Abort(id));
    ASSERT_FALSE(scheduler_.Abort(id));
    clients_[id].live = false;
    clients_[id].aborted = true;
    ++aborted_;
  }

  // The attention ranks and rank 0's sampler: checks the plan against worker state.
  void RunWorkers(const StepPlan& plan, StepResult& result) {
    const SchedulerConfig& c = p_.config;
    EXPECT_EQ(plan.step, next_step_++);
    // Requests the workers hold that ended must be dropped now; live ones only by preemption.
    std::set<uint64_t> finished(plan.finished.begin(), plan.finished.end());
    ASSERT_EQ(finished.size(), plan.finished.size());
    for (const auto& [id, seq] : workers_) {
      if (!clients_.at(id).live) {
        ASSERT_TRUE(finished.contains(id)) << "ended request " << id;
      }
    }
    for (uint64_t id : plan.finished) {
      auto it = workers_.find(id);
      ASSERT_NE(it, workers_.end()) << "finished request unknown to workers: " << id;
      for (int32_t b : it->second.blocks) block_owner_.erase(b);
      workers_.erase(it);
    }
    for (const NewRequest& r : plan.new_requests) {
      ASSERT_FALSE(workers_.contains(r.id)) << "sent twice: " << r.id;
      ClientRequest& client = clients_.at(r.id);
      ASSERT_TRUE(client.live) << r.id;
      ASSERT_EQ(r.prompt, client.prompt);
      ASSERT_EQ(r.output, client.output) << r.id;
      ASSERT_EQ(r.sampling.seed, std::optional<uint64_t>(r.id));
      // A request is not dropped and re-sent in one plan (no admission after a preemption).
      ASSERT_FALSE(finished.contains(r.id)) << r.id;
      if (!client.admitted) {
        // FIFO: every live request added before this one was admitted before it, and preempted
        // requests (back at the front of the queue) resumed before it.
        for (uint64_t earlier : add_order_) {
          if (earlier == r.id) break;
          const ClientRequest& e = clients_.at(earlier);
          ASSERT_TRUE(e.admitted || !e.live) << earlier << " overtaken by " << r.id;
        }
        for (const auto& [id, other] : clients_) {
          ASSERT_FALSE(other.live && other.admitted && !workers_.contains(id))
              << "preempted request " << id << " overtaken by " << r.id;
        }
        client.admitted = true;
      }
      WorkerSequence seq;
      seq.tokens = r.prompt;
      seq.tokens.insert(seq.tokens.end(), r.output.begin(), r.output.end());
      workers_[r.id] = std::move(seq);
    }
    ASSERT_LE(static_cast<int32_t>(workers_.size()), c.max_running);
    int64_t step_tokens = 0;
    std::set<uint64_t> scheduled;
    result.step = plan.step;
    for (const ScheduledSequence& s : plan.sequences) {
      ASSERT_TRUE(scheduled.insert(s.id).second) << "scheduled twice: " << s.id;
      auto it = workers_.find(s.id);
      ASSERT_NE(it, workers_.end()) << s.id;
      WorkerSequence& w = it->second;
      const ClientRequest& client = clients_.at(s.id);
      const int64_t prompt = static_cast<int64_t>(client.prompt.size());
      ASSERT_FALSE(s.tokens.empty());
      ASSERT_EQ(s.start_position, w.cached) << s.id;
      const int64_t end = s.start_position + static_cast<int64_t>(s.tokens.size());
      ASSERT_LE(end, static_cast<int64_t>(w.tokens.size())) << s.id;
      ASSERT_LE(end, c.context_length);
      for (size_t j = 0; j < s.tokens.size(); ++j) {
        const int64_t pos = s.start_position + static_cast<int64_t>(j);
        ASSERT_EQ(s.tokens[j], w.tokens[pos]);
        ASSERT_EQ(s.tokens[j], pos < prompt ? client.prompt[pos] : ModelToken(s.id, pos));
      }
      for (int32_t b : s.new_blocks) {
        ASSERT_GE(b, 0);
        ASSERT_LT(b, c.num_blocks);
        ASSERT_TRUE(block_owner_.emplace(b, s.id).second) << "block " << b << " given twice";
        w.blocks.push_back(b);
      }
      w.cached = end;
      ASSERT_EQ(static_cast<int64_t>(w.blocks.size()),
                KvBlockAllocator::BlocksFor(w.cached, c.block_size));
      ASSERT_EQ(s.sample, w.cached == static_cast<int64_t>(w.tokens.size()));
      step_tokens += static_cast<int64_t>(s.tokens.size());
      if (s.sample) {
        ASSERT_LT(end, prompt + client.max_tokens) << "would sample beyond max_tokens";
        const int32_t token = ModelToken(s.id, end);
        w.tokens.push_back(token);
        SampledToken sampled;
        sampled.id = s.id;
        sampled.sample.token = token;
        result.tokens.push_back(std::move(sampled));
      }
    }
    ASSERT_LE(step_tokens, c.max_step_tokens);
  }

  void CheckAccounting() {
    const SchedulerStats stats = scheduler_.stats();
    ASSERT_EQ(stats.kv_blocks_free + stats.kv_blocks_used, p_.config.num_blocks);
    int32_t running = 0, used = 0, live = 0;
    for (const auto& [id, seq] : workers_) {
      if (!clients_.at(id).live) continue;
      ++running;
      used += static_cast<int32_t>(seq.blocks.size());
    }
    for (const auto& [id, client] : clients_) live += client.live;
    ASSERT_EQ(stats.running, running);
    ASSERT_EQ(stats.kv_blocks_used, used);
    ASSERT_EQ(stats.waiting + stats.running, live);
    // Preempted requests go back to the queue even past max_waiting (it bounds admissions).
    ASSERT_LE(stats.waiting, p_.config.max_waiting + p_.config.max_running);
  }

  SimulationParams p_;
  std::mt19937_64 rng_;
  Scheduler scheduler_;
  std::map<uint64_t, ClientRequest> clients_;
  std::vector<uint64_t> add_order_;
  std::map<uint64_t, WorkerSequence> workers_;
  std::map<int32_t, uint64_t> block_owner_;
  uint64_t next_step_ = 0;
  int steps_ = 0;
  int rejected_ = 0;
  int aborted_ = 0;
};

TEST(SchedulerSimulation, SmallCacheForcesPreemptionAndEverythingStillHolds) {
  for (uint64_t seed : {1, 2, 3}) {
    SCOPED_TRACE(seed);
    Simulation sim(SimulationParams{
        .seed = seed,
        .config = {.max_step_tokens = 32, .max_running = 8, .max_waiting = 12, .block_size = 4,
                   .num_blocks = 24, .context_length = 128},
        .num_requests = 400,
        .max_prompt = 60,
        .abort_probability = 0.02});
    ASSERT_NO_FATAL_FAILURE(sim.Run());
    EXPECT_GT(sim.steps(), 2000);
    EXPECT_GT(sim.preemptions(), 50u);
    EXPECT_GT(sim.rejected(), 0);
    EXPECT_GT(sim.aborted(), 0);
  }
}

TEST(SchedulerSimulation, BudgetSmallerThanTheRunningSet) {
  Simulation sim(SimulationParams{
      .seed = 11,
      .config = {.max_step_tokens = 3, .max_running = 6, .max_waiting = 8, .block_size = 2,
                 .num_blocks = 40, .context_length = 64},
      .num_requests = 150,
      .max_prompt = 20,
      .abort_probability = 0.01});
  ASSERT_NO_FATAL_FAILURE(sim.Run());
  EXPECT_GT(sim.steps(), 1000);
}

TEST(SchedulerSimulation, RoomyCacheNeverPreempts) {
  Simulation sim(SimulationParams{
      .seed = 5,
      .config = {.max_step_tokens = 64, .max_running = 4, .max_waiting = 64, .block_size = 16,
                 .num_blocks = 64, .context_length = 256},
      .num_requests = 200,
      .max_prompt = 100,
      .abort_probability = 0.0});
  ASSERT_NO_FATAL_FAILURE(sim.Run());
  EXPECT_EQ(sim.preemptions(), 0u);
}

}  // namespace
}  // namespace moemesh
