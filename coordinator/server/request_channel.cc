#include "coordinator/server/request_channel.h"

#include <algorithm>

namespace moemesh {

void RequestChannel::Push(StepOutput out) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = RequestTimings::Clock::now();
    if (out.token >= 0) {
      if (completion_tokens_++ == 0) timings_.first_token = now;
    }
    if (out.finish != FinishReason::kNone) {
      finished_ = true;
      timings_.finished = now;
    }
    queue_.push_back(std::move(out));
  }
  cv_.notify_all();
}

std::vector<StepOutput> RequestChannel::Take(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !queue_.empty(); });
  std::vector<StepOutput> out(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
  queue_.clear();
  return out;
}

bool RequestChannel::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_;
}

int32_t RequestChannel::completion_tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return completion_tokens_;
}

int32_t RequestChannel::cached_tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::max(cached_tokens_, 0);
}

void RequestChannel::MarkAdmitted(int32_t cached_tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cached_tokens_ < 0) cached_tokens_ = std::min(cached_tokens, prompt_tokens_);
}

RequestTimings RequestChannel::timings() const {
  std::lock_guard<std::mutex> lock(mu_);
  return timings_;
}

void RequestChannel::MarkScheduled() {
  std::lock_guard<std::mutex> lock(mu_);
  if (timings_.first_scheduled == RequestTimings::Clock::time_point()) {
    timings_.first_scheduled = RequestTimings::Clock::now();
  }
}

}  // namespace moemesh
