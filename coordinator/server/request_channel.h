// One request's stream of outputs: the step loop pushes, the request's RPC handler takes.
// Also carries the request's timings for the final message. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

#include "model/generation/request_state.h"

namespace moemesh {

struct RequestTimings {
  using Clock = std::chrono::steady_clock;
  Clock::time_point submitted;
  Clock::time_point first_scheduled;  // left default until scheduled
  Clock::time_point first_token;
  Clock::time_point finished;
};

class RequestChannel {
 public:
  RequestChannel(uint64_t id, int32_t prompt_tokens) : id_(id), prompt_tokens_(prompt_tokens) {}

  uint64_t id() const { return id_; }
  int32_t prompt_tokens() const { return prompt_tokens_; }

  void Push(StepOutput out);
  // Waits up to `timeout` for outputs; returns those queued (possibly none).
  std::vector<StepOutput> Take(std::chrono::milliseconds timeout);
  bool finished() const;
  int32_t completion_tokens() const;
  // Prompt tokens whose KV came from the prefix cache at the request's first admission.
  int32_t cached_tokens() const;
  RequestTimings timings() const;
  void MarkScheduled();
  // Records the cached prompt tokens of the first admission (later calls are ignored).
  void MarkAdmitted(int32_t cached_tokens);

 private:
  const uint64_t id_;
  const int32_t prompt_tokens_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StepOutput> queue_;
  bool finished_ = false;
  int32_t completion_tokens_ = 0;
  int32_t cached_tokens_ = -1;  // -1: not admitted yet
  RequestTimings timings_;

  friend class StepLoop;
};

}  // namespace moemesh
