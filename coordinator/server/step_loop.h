// The coordinator's step loop: the one owner of the scheduler and of every request's
// generation state. Each iteration applies cancels and deadlines, asks the scheduler for a
// plan, runs it on the tensor-parallel group, turns rank 0's sampled tokens into outputs (stop
// strings, EOS, lengths) and feeds back what finished. RPC handlers talk to it through Submit,
// Cancel and their RequestChannel. Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/scheduler.h"
#include "coordinator/server/request_channel.h"
#include "model/generation/request_state.h"
#include "model/tokenizer/tokenizer.h"
#include "runtime/step_plan.h"

namespace moemesh {

// Delivers a plan to every rank of the group and returns rank 0's result.
class RankGroup {
 public:
  virtual ~RankGroup() = default;
  virtual absl::StatusOr<StepResult> Execute(const StepPlan& plan) = 0;
};

struct StepLoopConfig {
  SchedulerConfig scheduler;
  std::vector<int32_t> eos_token_ids;
  int32_t vocab_size = 0;
};

struct StepLoopStats {
  SchedulerStats scheduler;
  uint64_t steps = 0;
  bool healthy = true;
};

class StepLoop {
 public:
  using Clock = std::chrono::steady_clock;

  // `tokenizer` may be null (token ids only); `ranks` must outlive the loop.
  StepLoop(StepLoopConfig config, const Tokenizer* tokenizer, RankGroup* ranks);
  ~StepLoop();

  void Start();
  void Stop();

  // Validates and queues a request. INVALID_ARGUMENT names the field; RESOURCE_EXHAUSTED when
  // the admission queue is full; UNAVAILABLE once the worker group has failed.
  absl::StatusOr<std::shared_ptr<RequestChannel>> Submit(std::vector<int32_t> prompt,
                                                         GenerationParams params,
                                                         std::optional<Clock::time_point> deadline);
  // Finishes the request with "cancelled" and frees its KV blocks; unknown ids are ignored.
  void Cancel(uint64_t id);

  StepLoopStats stats() const;
  ModelLimits limits() const;

 private:
  struct Active {
    std::unique_ptr<RequestState> state;
    std::shared_ptr<RequestChannel> channel;
    std::optional<Clock::time_point> deadline;
  };

  void Run();
  // Applies cancels and expired deadlines. Requires mu_.
  void ApplyAborts();
  void Finish(uint64_t id, FinishReason reason);
  Clock::time_point NextWake() const;

  const StepLoopConfig config_;
  const Tokenizer* tokenizer_;
  RankGroup* ranks_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  Scheduler scheduler_;
  std::map<uint64_t, Active> active_;
  std::vector<uint64_t> cancels_;
  uint64_t next_id_ = 1;
  uint64_t steps_ = 0;
  uint64_t seed_base_;
  bool healthy_ = true;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace moemesh
