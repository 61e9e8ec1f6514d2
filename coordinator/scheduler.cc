#include "coordinator/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {
namespace {

absl::Status AtLeast(const char* field, int64_t value, int64_t min) {
  if (value >= min) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, " = ", value, " must be >= ", min));
}

}  // namespace

absl::Status SchedulerConfig::Validate() const {
  MM_RETURN_IF_ERROR(AtLeast("max_step_tokens", max_step_tokens, 1));
  MM_RETURN_IF_ERROR(AtLeast("max_running", max_running, 1));
  MM_RETURN_IF_ERROR(AtLeast("max_waiting", max_waiting, 0));
  MM_RETURN_IF_ERROR(AtLeast("block_size", block_size, 1));
  MM_RETURN_IF_ERROR(AtLeast("num_blocks", num_blocks, 1));
  MM_RETURN_IF_ERROR(AtLeast("context_length", context_length, 1));
  return cascade.Validate();
}

Scheduler::Scheduler(SchedulerConfig config)
    : config_(config), cache_(config.num_blocks, config.block_size, config.prefix_caching) {
  MM_CHECK(config_.Validate().ok());
}

absl::Status Scheduler::Add(SchedulerRequest request) {
  if (requests_.contains(request.id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("request ", request.id, " is already waiting or running"));
  }
  if (request.prompt.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("request ", request.id, ": prompt is empty"));
  }
  if (request.max_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("request ", request.id, ": max_tokens = ",
                                                   request.max_tokens, " must be >= 1"));
  }
  if (!request.sampling.seed.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request ", request.id, ": sampling.seed is unset (the coordinator resolves it)"));
  }
  MM_RETURN_IF_ERROR(request.sampling.Validate());
  const int64_t prompt_size = static_cast<int64_t>(request.prompt.size());
  const int64_t total = prompt_size + request.max_tokens;
  if (total > config_.context_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("request ", request.id, ": prompt (", prompt_size, " tokens) + max_tokens (",
                     request.max_tokens, ") = ", total, " exceeds context_length ",
                     config_.context_length));
  }
  // The last sampled token is never fed back, so the cache holds at most total - 1 tokens.
  const int32_t blocks = KvBlockAllocator::BlocksFor(total - 1, config_.block_size);
  if (blocks > config_.num_blocks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request ", request.id, ": prompt (", prompt_size, " tokens) + max_tokens (",
        request.max_tokens, ") needs ", blocks, " KV blocks of ", config_.block_size,
        " tokens, the whole cache has ", config_.num_blocks));
  }
  if (static_cast<int64_t>(waiting_.size()) >= config_.max_waiting) {
    return absl::ResourceExhaustedError(
        absl::StrCat("admission queue full: ", waiting_.size(), " requests waiting"));
  }
  const uint64_t id = request.id;
  Request& r = requests_[id];
  r.params = std::move(request);
  r.tokens = r.params.prompt;
  waiting_.push_back(id);
  return absl::OkStatus();
}

ScheduledSequence Scheduler::ScheduleTokens(Request& r, int64_t n,
                                            std::vector<int32_t> new_blocks) {
  ScheduledSequence seq;
  seq.id = r.params.id;
  seq.start_position = r.num_computed;
  seq.tokens.reserve(n);
  seq.tokens.assign(r.tokens.begin() + r.num_computed, r.tokens.begin() + r.num_computed + n);
  r.blocks.insert(r.blocks.end(), new_blocks.begin(), new_blocks.end());
  seq.new_blocks = std::move(new_blocks);
  r.num_computed += n;
  MM_CHECK(r.num_computed <= r.num_tokens());
  MM_CHECK(static_cast<int64_t>(r.blocks.size()) ==
           KvBlockAllocator::BlocksFor(r.num_computed, config_.block_size));
  seq.sample = r.num_computed == r.num_tokens();
  in_flight_[seq.id] = seq.sample;
  return seq;
}

uint64_t Scheduler::PreemptLast(StepPlan& plan) {
  MM_CHECK(!running_.empty());
  const uint64_t id = running_.back();
  running_.pop_back();
  Request& r = requests_.at(id);
  cache_.Release(r.blocks);
  r.blocks.clear();
  r.num_computed = 0;
  r.chain = {};
  r.running = false;
  waiting_.push_front(id);
  plan.finished.push_back(id);
  ++preemptions_;
  return id;
}

bool Scheduler::Admit(StepPlan& plan, int64_t& budget, std::vector<int32_t>& copy_sources) {
  const uint64_t id = waiting_.front();
  Request& r = requests_.at(id);
  MM_CHECK(r.num_computed == 0 && r.blocks.empty());
  // Hold the cached prefix while allocating, so making room cannot evict it.
  const PrefixCache::Match match = cache_.Lookup(r.tokens);
  cache_.Acquire(match.shared);
  if (match.copy_src >= 0) cache_.Acquire({&match.copy_src, 1});
  const int64_t n = std::min(r.num_tokens() - match.tokens, budget);
  MM_CHECK(n >= 1);
  const int32_t need = KvBlockAllocator::BlocksFor(match.tokens + n, config_.block_size) -
                       static_cast<int32_t>(match.shared.size());
  if (need > cache_.num_available()) {
    cache_.Release(match.shared);
    if (match.copy_src >= 0) cache_.Release({&match.copy_src, 1});
    return false;
  }
  auto fresh = cache_.Allocate(need);
  MM_CHECK(fresh.ok());
  waiting_.pop_front();
  running_.push_back(id);
  r.running = true;
  r.blocks = match.shared;
  r.num_computed = match.tokens;
  r.chain = {.node = match.node, .blocks = static_cast<int32_t>(match.shared.size())};
  NewRequest nr{.id = id, .prompt = r.params.prompt, .output = r.output,
                .sampling = r.params.sampling, .prefix_blocks = match.shared,
                .prefix_tokens = match.tokens};
  std::vector<int32_t> blocks = *std::move(fresh);
  if (match.copy_src >= 0) {
    // The block holding the first position to compute is a private copy of the cached one. The
    // source stays held until the plan is built, so no later admission reuses it in this step.
    const int32_t dst = blocks.front();
    blocks.erase(blocks.begin());
    plan.block_copies.push_back({match.copy_src, dst});
    copy_sources.push_back(match.copy_src);
    nr.prefix_blocks.push_back(dst);
    r.blocks.push_back(dst);
  }
  plan.new_requests.push_back(std::move(nr));
  plan.sequences.push_back(ScheduleTokens(r, n, std::move(blocks)));
  budget -= n;
  return true;
}

std::optional<StepPlan> Scheduler::Schedule() {
  MM_CHECK(!outstanding_step_.has_value());
  StepPlan plan;
  plan.finished = std::move(pending_finished_);
  pending_finished_.clear();
  int64_t budget = config_.max_step_tokens;
  bool preempted = false;

  // Running requests, oldest first. Victims come from the back, so never one already scheduled.
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    const uint64_t id = running_[i];
    Request& r = requests_.at(id);
    const int64_t n = std::min(r.num_tokens() - r.num_computed, budget);
    if (n <= 0) continue;
    const int32_t need = KvBlockAllocator::BlocksFor(r.num_computed + n, config_.block_size) -
                         static_cast<int32_t>(r.blocks.size());
    bool self_preempted = false;
    while (need > cache_.num_available() && !self_preempted) {
      self_preempted = PreemptLast(plan) == id;
      preempted = true;
    }
    if (self_preempted) break;  // it was the last running request
    auto blocks = cache_.Allocate(need);
    MM_CHECK(blocks.ok());
    plan.sequences.push_back(ScheduleTokens(r, n, *std::move(blocks)));
    budget -= n;
  }

  // Admissions, FIFO. None after a preemption: the victims would be re-admitted at once.
  std::vector<int32_t> copy_sources;
  while (!preempted && budget > 0 && !waiting_.empty() &&
         static_cast<int32_t>(running_.size()) < config_.max_running) {
    if (!Admit(plan, budget, copy_sources)) break;
  }
  cache_.Release(copy_sources);

  if (plan.sequences.empty() && plan.finished.empty()) {
    MM_CHECK(plan.new_requests.empty());
    return std::nullopt;
  }
  // What this plan computes joins the prefix cache (usable from the next plan on: the workers
  // run plans in order), and the one-token sequences may form cascade levels.
  std::vector<CascadeSequence> decodes;
  for (const ScheduledSequence& seq : plan.sequences) {
    Request& r = requests_.at(seq.id);
    cache_.Insert(r.tokens, r.blocks, r.num_computed, r.chain);
    if (seq.tokens.size() == 1) decodes.push_back({seq.id, r.blocks, seq.start_position});
  }
  plan.cascade = PlanCascade(decodes, config_.cascade, config_.block_size);
  cascade_levels_ += plan.cascade.size();
  plan.step = next_step_++;
  outstanding_step_ = plan.step;
  return plan;
}

absl::Status Scheduler::Update(const StepPlan& plan, const StepResult& result,
                               absl::Span<const uint64_t> finished) {
  MM_CHECK(outstanding_step_.has_value() && *outstanding_step_ == plan.step);
  outstanding_step_.reset();

  // Check the whole result before applying any of it.
  absl::Status status;
  if (result.step != plan.step) {
    status = absl::InternalError(
        absl::StrCat("step result for step ", result.step, ", expected step ", plan.step));
  }
  absl::flat_hash_map<uint64_t, bool> expected;  // id -> token seen
  for (const ScheduledSequence& seq : plan.sequences) {
    if (seq.sample) expected[seq.id] = false;
  }
  for (const SampledToken& t : result.tokens) {
    if (!status.ok()) break;
    auto it = expected.find(t.id);
    if (it == expected.end()) {
      status = absl::InternalError(absl::StrCat("step ", plan.step, " result: request ", t.id,
                                                " was not scheduled to sample"));
    } else if (it->second) {
      status = absl::InternalError(
          absl::StrCat("step ", plan.step, " result: two tokens for request ", t.id));
    } else {
      it->second = true;
    }
  }
  for (const auto& [id, seen] : expected) {
    if (status.ok() && !seen && in_flight_.contains(id)) {
      status = absl::InternalError(
          absl::StrCat("step ", plan.step, " result: no token for request ", id));
    }
  }

  std::vector<uint64_t> done(finished.begin(), finished.end());
  if (status.ok()) {
    for (const SampledToken& t : result.tokens) {
      if (!in_flight_.contains(t.id)) continue;  // aborted since the plan
      Request& r = requests_.at(t.id);
      r.output.push_back(t.sample.token);
      r.tokens.push_back(t.sample.token);
      if (static_cast<int32_t>(r.output.size()) >= r.params.max_tokens) done.push_back(t.id);
    }
  }
  in_flight_.clear();
  for (uint64_t id : done) {
    if (requests_.contains(id)) Remove(id);
  }
  return status;
}

void Scheduler::Remove(uint64_t id) {
  Request& r = requests_.at(id);
  if (r.running) {
    running_.erase(std::find(running_.begin(), running_.end(), id));
    cache_.Release(r.blocks);
    pending_finished_.push_back(id);
  } else {
    auto it = std::find(waiting_.begin(), waiting_.end(), id);
    MM_CHECK(it != waiting_.end());
    waiting_.erase(it);
  }
  in_flight_.erase(id);
  requests_.erase(id);
}

bool Scheduler::Abort(uint64_t id) {
  if (!requests_.contains(id)) return false;
  Remove(id);
  return true;
}

SchedulerStats Scheduler::stats() const {
  return SchedulerStats{.waiting = static_cast<int32_t>(waiting_.size()),
                        .running = static_cast<int32_t>(running_.size()),
                        .kv_blocks_free = cache_.num_available(),
                        .kv_blocks_used = cache_.num_blocks() - cache_.num_available(),
                        .kv_blocks_cached = cache_.num_cached_idle(),
                        .preemptions = preemptions_,
                        .cascade_levels = cascade_levels_};
}

bool Scheduler::HasWork() const {
  return !waiting_.empty() || !running_.empty() || !pending_finished_.empty();
}

}  // namespace moemesh
