#include "coordinator/server/step_loop.h"

#include <random>

#include "common/logging.h"
#include "common/status.h"

namespace moemesh {

StepLoop::StepLoop(StepLoopConfig config, const Tokenizer* tokenizer, RankGroup* ranks)
    : config_(std::move(config)),
      tokenizer_(tokenizer),
      ranks_(ranks),
      scheduler_(config_.scheduler),
      seed_base_((static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}()) {}

StepLoop::~StepLoop() { Stop(); }

void StepLoop::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] { Run(); });
}

void StepLoop::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint64_t> ids;
  for (const auto& [id, a] : active_) ids.push_back(id);
  for (uint64_t id : ids) Finish(id, FinishReason::kCancelled);
}

ModelLimits StepLoop::limits() const {
  ModelLimits l;
  l.vocab_size = config_.vocab_size;
  l.context_length = config_.scheduler.context_length;
  l.has_tokenizer = tokenizer_ != nullptr;
  return l;
}

absl::StatusOr<std::shared_ptr<RequestChannel>> StepLoop::Submit(
    std::vector<int32_t> prompt, GenerationParams params, std::optional<Clock::time_point> deadline) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!healthy_) return absl::UnavailableError("the worker group failed; this coordinator cannot serve");
  if (stop_) return absl::UnavailableError("the coordinator is shutting down");
  MM_RETURN_IF_ERROR(ValidateGeneration(prompt, params, limits()));
  const uint64_t id = next_id_++;
  if (!params.sampling.seed) params.sampling.seed = seed_base_ ^ (id * 0x9e3779b97f4a7c15ull);
  const int32_t room = config_.scheduler.context_length - static_cast<int32_t>(prompt.size());
  SchedulerRequest request;
  request.id = id;
  request.prompt = prompt;
  request.sampling = params.sampling;
  request.max_tokens = params.max_tokens ? std::min(*params.max_tokens, room) : room;
  MM_RETURN_IF_ERROR(scheduler_.Add(std::move(request)));
  auto channel = std::make_shared<RequestChannel>(id, static_cast<int32_t>(prompt.size()));
  channel->timings_.submitted = Clock::now();
  Active a;
  a.state = std::make_unique<RequestState>(id, std::move(prompt), std::move(params), tokenizer_,
                                           config_.eos_token_ids, config_.scheduler.context_length, id);
  a.channel = channel;
  a.deadline = deadline;
  active_.emplace(id, std::move(a));
  cv_.notify_all();
  return channel;
}

void StepLoop::Cancel(uint64_t id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancels_.push_back(id);
  }
  cv_.notify_all();
}

StepLoopStats StepLoop::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  StepLoopStats s;
  s.scheduler = scheduler_.stats();
  s.steps = steps_;
  s.healthy = healthy_;
  return s;
}

void StepLoop::Finish(uint64_t id, FinishReason reason) {
  auto it = active_.find(id);
  if (it == active_.end()) return;
  scheduler_.Abort(id);
  it->second.channel->Push(it->second.state->Abort(reason));
  active_.erase(it);
}

void StepLoop::ApplyAborts() {
  for (uint64_t id : cancels_) Finish(id, FinishReason::kCancelled);
  cancels_.clear();
  const auto now = Clock::now();
  std::vector<uint64_t> expired;
  for (const auto& [id, a] : active_) {
    if (a.deadline && *a.deadline <= now) expired.push_back(id);
  }
  for (uint64_t id : expired) Finish(id, FinishReason::kTimeout);
}

StepLoop::Clock::time_point StepLoop::NextWake() const {
  auto wake = Clock::now() + std::chrono::milliseconds(200);
  for (const auto& [id, a] : active_) {
    if (a.deadline && *a.deadline < wake) wake = *a.deadline;
  }
  return wake;
}

void StepLoop::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    ApplyAborts();
    if (stop_) return;
    std::optional<StepPlan> plan;
    if (healthy_) plan = scheduler_.Schedule();
    if (!plan) {
      cv_.wait_until(lock, NextWake());
      continue;
    }
    for (const ScheduledSequence& s : plan->sequences) {
      auto it = active_.find(s.id);
      if (it != active_.end()) it->second.channel->MarkScheduled();
    }
    for (const NewRequest& r : plan->new_requests) {
      auto it = active_.find(r.id);
      if (it != active_.end()) {
        it->second.channel->MarkAdmitted(static_cast<int32_t>(r.prefix_tokens));
      }
    }
    lock.unlock();
    absl::StatusOr<StepResult> result = ranks_->Execute(*plan);
    lock.lock();
    ++steps_;
    if (!result.ok()) {
      MM_LOG(ERROR) << "step " << plan->step << " failed on the worker group: " << result.status();
      healthy_ = false;
      std::vector<uint64_t> ids;
      for (const auto& [id, a] : active_) ids.push_back(id);
      for (uint64_t id : ids) Finish(id, FinishReason::kError);
      continue;
    }
    std::vector<uint64_t> finished;
    for (const SampledToken& t : result->tokens) {
      auto it = active_.find(t.id);
      if (it == active_.end()) continue;
      StepOutput out = it->second.state->AcceptSampled(t.sample);
      const bool done = out.finish != FinishReason::kNone;
      it->second.channel->Push(std::move(out));
      if (done) {
        finished.push_back(t.id);
        active_.erase(it);
      }
    }
    absl::Status updated = scheduler_.Update(*plan, *result, finished);
    if (!updated.ok()) {
      // Rank 0 answered something other than the plan asked for: those requests cannot go on.
      MM_LOG(ERROR) << "step " << plan->step << ": " << updated;
      for (const ScheduledSequence& s : plan->sequences) {
        if (s.sample) Finish(s.id, FinishReason::kError);
      }
    }
  }
}

}  // namespace moemesh
