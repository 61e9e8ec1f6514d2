// Randomised simulation of the scheduler against fake workers and a fake model whose token
// depends only on the request and its position, with caches small enough to force preemption.
// The fake workers check every plan against what they hold; the fake client owns stop logic.
// The workers' fake KV cache holds, for every written row, a hash of the tokens up to that
// position: every step checks that each sequence's table holds its own prefix (through shared
// blocks, copies and eviction), that no request writes a block another holds, and that cascade
// levels describe blocks the members really share.
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

// The fake KV of position p: a hash of tokens [0, p].
std::vector<uint64_t> PrefixTags(const std::vector<int32_t>& tokens, int64_t n) {
  std::vector<uint64_t> tags(n);
  uint64_t h = 0x12345;
  for (int64_t p = 0; p < n; ++p) {
    h = (h ^ static_cast<uint64_t>(tokens[p])) * 0x100000001B3ull + 0x9E3779B97F4A7C15ull;
    tags[p] = h | 1;  // never 0 (an unwritten row)
  }
  return tags;
}

struct SimulationParams {
  uint64_t seed;
  SchedulerConfig config;
  int num_requests;
  int max_prompt;
  double abort_probability;
  double shared_prompt_probability = 0;  // a prompt starting with one of a few shared prefixes
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
        int own_from = 0;
        if (std::bernoulli_distribution(p_.shared_prompt_probability)(rng_)) {
          // One of 3 shared prefixes (system prompts, or n samples of one prompt).
          const uint64_t family = std::uniform_int_distribution<int>(0, 2)(rng_);
          own_from = std::uniform_int_distribution<int>(prompt / 2, prompt)(rng_);
          for (int i = 0; i < own_from; ++i) r.prompt.push_back(ModelToken(family + 7777, i));
        }
        for (int i = own_from; i < prompt; ++i) r.prompt.push_back(ModelToken(r.id * 31 + 7, i));
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
    EXPECT_TRUE(block_refs_.empty());
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
  int64_t cached_tokens() const { return cached_tokens_; }
  int copies() const { return copies_; }
  int cascade_levels() const { return cascade_levels_; }

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
      for (int32_t b : it->second.blocks) Unref(b);
      workers_.erase(it);
    }
    // Copies run before the step: into blocks nobody holds, none both a source and a target.
    std::set<int32_t> sources, targets;
    for (const BlockCopy& cp : plan.block_copies) sources.insert(cp.src);
    for (const BlockCopy& cp : plan.block_copies) {
      ASSERT_TRUE(cp.src >= 0 && cp.src < c.num_blocks) << cp.src;
      ASSERT_TRUE(cp.dst >= 0 && cp.dst < c.num_blocks) << cp.dst;
      ASSERT_FALSE(block_refs_.contains(cp.dst)) << "copy into held block " << cp.dst;
      ASSERT_TRUE(targets.insert(cp.dst).second) << "two copies into " << cp.dst;
      ASSERT_FALSE(sources.contains(cp.dst)) << "block " << cp.dst << " is a source and a target";
    }
    std::map<int32_t, std::vector<uint64_t>> copied;
    for (const BlockCopy& cp : plan.block_copies) copied[cp.dst] = Rows(cp.src);
    for (auto& [dst, rows] : copied) kv_[dst] = std::move(rows);
    copies_ += static_cast<int>(plan.block_copies.size());
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
      // A cached prefix: blocks covering exactly prefix_tokens, leaving a token to compute, and
      // holding this request's own prefix (after this step's copies).
      ASSERT_GE(r.prefix_tokens, 0);
      ASSERT_LT(r.prefix_tokens, static_cast<int64_t>(seq.tokens.size())) << r.id;
      ASSERT_EQ(static_cast<int64_t>(r.prefix_blocks.size()),
                KvBlockAllocator::BlocksFor(r.prefix_tokens, c.block_size)) << r.id;
      if (r.prefix_tokens % c.block_size != 0) {
        ASSERT_TRUE(targets.contains(r.prefix_blocks.back())) << "partly used block not a copy";
      }
      seq.cached = r.prefix_tokens;
      seq.blocks = r.prefix_blocks;
      for (int32_t b : r.prefix_blocks) ++block_refs_[b];
      ASSERT_NO_FATAL_FAILURE(CheckHolds(r.id, seq, seq.cached));
      cached_tokens_ += r.prefix_tokens;
      workers_[r.id] = std::move(seq);
    }
    ASSERT_LE(static_cast<int32_t>(workers_.size()), c.max_running);
    int64_t step_tokens = 0;
    std::set<uint64_t> scheduled;
    std::map<uint64_t, int64_t> one_token;  // id -> query position
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
        ASSERT_FALSE(block_refs_.contains(b)) << "block " << b << " given while held";
        ASSERT_FALSE(targets.contains(b)) << "block " << b << " is a copy target and new";
        block_refs_[b] = 1;
        kv_.erase(b);  // whatever it held before is garbage now
        w.blocks.push_back(b);
      }
      ASSERT_EQ(static_cast<int64_t>(w.blocks.size()),
                KvBlockAllocator::BlocksFor(end, c.block_size));
      // Everything before the step is this request's own prefix; its writes go to blocks it
      // holds alone.
      ASSERT_NO_FATAL_FAILURE(CheckHolds(s.id, w, w.cached));
      const std::vector<uint64_t> tags = PrefixTags(w.tokens, end);
      for (int64_t pos = s.start_position; pos < end; ++pos) {
        const int32_t b = w.blocks[pos / c.block_size];
        ASSERT_EQ(block_refs_.at(b), 1) << "request " << s.id << " writes shared block " << b;
        std::vector<uint64_t>& rows = kv_[b];
        rows.resize(c.block_size, 0);
        rows[pos % c.block_size] = tags[pos];
      }
      w.cached = end;
      if (s.tokens.size() == 1) one_token[s.id] = s.start_position;
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
    // Cascade levels: one-token members sharing [begin, end) below their queries; each member's
    // levels tile [0, its deepest end).
    std::map<uint64_t, int32_t> reached;
    for (const CascadeLevel& l : plan.cascade) {
      ASSERT_GE(l.members.size(), 2u);
      ASSERT_LT(l.block_begin, l.block_end);
      const std::vector<int32_t>& first = workers_.at(l.members[0]).blocks;
      for (uint64_t m : l.members) {
        ASSERT_TRUE(one_token.contains(m)) << "cascade member " << m << " is not a decode";
        ASSERT_LE(static_cast<int64_t>(l.block_end) * c.block_size, one_token.at(m));
        const std::vector<int32_t>& blocks = workers_.at(m).blocks;
        for (int32_t b = l.block_begin; b < l.block_end; ++b) ASSERT_EQ(blocks[b], first[b]);
        ASSERT_EQ(reached[m], l.block_begin) << "member " << m;
        reached[m] = l.block_end;
      }
      ++cascade_levels_;
    }
  }

  // The rows of a block (unwritten rows 0).
  std::vector<uint64_t> Rows(int32_t block) const {
    auto it = kv_.find(block);
    return it == kv_.end() ? std::vector<uint64_t>(p_.config.block_size, 0) : it->second;
  }

  // Positions [0, n) of the sequence's table hold its own prefix.
  void CheckHolds(uint64_t id, const WorkerSequence& w, int64_t n) const {
    const std::vector<uint64_t> tags = PrefixTags(w.tokens, n);
    const int bs = p_.config.block_size;
    for (int64_t pos = 0; pos < n; ++pos) {
      const std::vector<uint64_t> rows = Rows(w.blocks[pos / bs]);
      ASSERT_EQ(rows[pos % bs], tags[pos])
          << "request " << id << " position " << pos << " (block " << w.blocks[pos / bs] << ")";
    }
  }

  void Unref(int32_t block) {
    auto it = block_refs_.find(block);
    ASSERT_NE(it, block_refs_.end()) << block;
    if (--it->second == 0) block_refs_.erase(it);
  }

  void CheckAccounting() {
    const SchedulerStats stats = scheduler_.stats();
    ASSERT_EQ(stats.kv_blocks_free + stats.kv_blocks_used, p_.config.num_blocks);
    int32_t running = 0, live = 0;
    std::set<int32_t> used;
    for (const auto& [id, seq] : workers_) {
      if (!clients_.at(id).live) continue;
      ++running;
      used.insert(seq.blocks.begin(), seq.blocks.end());
    }
    for (const auto& [id, client] : clients_) live += client.live;
    ASSERT_EQ(stats.running, running);
    ASSERT_EQ(stats.kv_blocks_used, static_cast<int32_t>(used.size()));
    ASSERT_LE(stats.kv_blocks_cached, stats.kv_blocks_free);
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
  std::map<int32_t, int> block_refs_;                   // held blocks: sequences holding them
  std::map<int32_t, std::vector<uint64_t>> kv_;         // block -> rows' prefix tags
  int64_t cached_tokens_ = 0;
  int copies_ = 0;
  int cascade_levels_ = 0;
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

SchedulerConfig WithCascadeOn(SchedulerConfig c) {
  c.cascade.mode = CascadeMode::kOn;
  return c;
}

TEST(SchedulerSimulation, SharedPrefixesReuseCopyEvictAndCascade) {
  for (uint64_t seed : {21, 22, 23}) {
    SCOPED_TRACE(seed);
    Simulation sim(SimulationParams{
        .seed = seed,
        .config = WithCascadeOn({.max_step_tokens = 48, .max_running = 8, .max_waiting = 16,
                                 .block_size = 4, .num_blocks = 40, .context_length = 128}),
        .num_requests = 300,
        .max_prompt = 50,
        .abort_probability = 0.02,
        .shared_prompt_probability = 0.8});
    ASSERT_NO_FATAL_FAILURE(sim.Run());
    EXPECT_GT(sim.cached_tokens(), 1000);
    EXPECT_GT(sim.copies(), 20);
    EXPECT_GT(sim.cascade_levels(), 50);
    EXPECT_GT(sim.preemptions(), 0u);
  }
}

TEST(SchedulerSimulation, BlockSizeOneAndPrefixCachingOff) {
  Simulation one(SimulationParams{
      .seed = 31,
      .config = WithCascadeOn({.max_step_tokens = 16, .max_running = 5, .max_waiting = 8,
                               .block_size = 1, .num_blocks = 90, .context_length = 64}),
      .num_requests = 120,
      .max_prompt = 30,
      .abort_probability = 0.02,
      .shared_prompt_probability = 0.7});
  ASSERT_NO_FATAL_FAILURE(one.Run());
  EXPECT_GT(one.cached_tokens(), 100);
  EXPECT_EQ(one.copies(), 0);  // a block of one token is full or empty: never copied
  Simulation off(SimulationParams{
      .seed = 32,
      .config = {.max_step_tokens = 32, .max_running = 8, .max_waiting = 12, .block_size = 4,
                 .num_blocks = 24, .context_length = 128, .prefix_caching = false},
      .num_requests = 150,
      .max_prompt = 40,
      .abort_probability = 0.02,
      .shared_prompt_probability = 0.7});
  ASSERT_NO_FATAL_FAILURE(off.Run());
  EXPECT_EQ(off.cached_tokens(), 0);
  EXPECT_EQ(off.copies(), 0);
}

}  // namespace
}  // namespace moemesh
