// The continuous-batching scheduler: pure logic, no threads or sockets. Each step goes
// Schedule() -> (the caller dispatches the plan to the workers) -> Update(), strictly
// alternating. Owns the waiting queue, the running set and the KV blocks with their prefix cache
// (prefix_cache.h), and plans each step's cascade levels (cascade_planner.h). Stop logic (EOS,
// stop strings), tokenization and request validation against the model are the caller's.
// Not thread-safe: one owner (the coordinator's step loop).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "coordinator/cascade_planner.h"
#include "coordinator/kv_block_allocator.h"
#include "coordinator/prefix_cache.h"
#include "model/sampling/sampling.h"
#include "runtime/step_plan.h"

namespace moemesh {

struct SchedulerConfig {
  int32_t max_step_tokens = 2048;  // token budget per step (prefill chunks + decodes)
  int32_t max_running = 64;        // requests in the running set
  int32_t max_waiting = 256;       // admission queue bound (Add); preempted requests go back
                                   // to the queue even past it
  int32_t block_size = 16;         // tokens per KV block
  int32_t num_blocks = 1024;       // KV blocks in the cache
  int32_t context_length = 4096;   // prompt + max_tokens limit
  bool prefix_caching = true;      // reuse the KV blocks of cached prefixes (prefix_cache.h)
  CascadeConfig cascade = {};      // cascade levels among each step's decodes

  // InvalidArgument naming the field and the value when one is out of range.
  absl::Status Validate() const;
};

struct SchedulerRequest {
  uint64_t id = 0;
  std::vector<int32_t> prompt;
  SamplingParams sampling;  // seed must be set (the coordinator resolves it)
  int32_t max_tokens = 0;
};

struct SchedulerStats {
  int32_t waiting = 0;
  int32_t running = 0;
  int32_t kv_blocks_free = 0;    // allocatable now: free, or cached and held by no request
  int32_t kv_blocks_used = 0;    // held by requests
  int32_t kv_blocks_cached = 0;  // cached and held by no request (part of kv_blocks_free)
  uint64_t preemptions = 0;
  uint64_t cascade_levels = 0;   // cascade levels planned so far
};

class Scheduler {
 public:
  // `config` must pass Validate() (checked).
  explicit Scheduler(SchedulerConfig config);

  // Queues a request. ALREADY_EXISTS when the id is live (waiting or running);
  // INVALID_ARGUMENT for an empty prompt, max_tokens < 1, an unset seed, invalid sampling, or
  // when prompt + max_tokens can never fit (beyond context_length, or more KV blocks than the
  // whole cache): the message names the numbers; RESOURCE_EXHAUSTED when the waiting queue is
  // full ("admission queue full: 256 requests waiting").
  absl::Status Add(SchedulerRequest request);

  // The next step's plan, or nullopt when there is nothing to send. Running requests, in
  // admission order, get their pending tokens (one decode token, or the rest of a prompt chunked
  // to the budget); then, unless someone was preempted in this step, waiting requests are
  // admitted FIFO while the token budget, max_running and free blocks allow (a prompt longer than
  // the remaining budget is chunked; `sample` is false until its last chunk). With prefix
  // caching, an admitted request's table starts with the cached blocks of its longest cached
  // prefix (NewRequest::prefix_blocks; a partly valid block is copied: `block_copies`) and its
  // first chunk starts after them; its computed blocks join the cache once scheduled, visible
  // from the next plan on. `cascade` holds the levels the cascade planner keeps among this
  // plan's one-token sequences. A running request
  // that needs a block when none is free preempts the most recently admitted running request(s)
  // (itself when it is the most recent): their blocks are freed, they go to the FRONT of the
  // waiting queue, and their ids are in this plan's `finished`; re-admitted, they are sent again
  // as NewRequest with `output` = tokens generated so far and prompt + output are recomputed.
  // A plan may carry only `finished` ids. Workers apply `finished` before `new_requests` (an id
  // finished and then added again can appear in both). Must not be called while a plan awaits
  // its Update (checked).
  std::optional<StepPlan> Schedule();

  // Feeds back rank 0's sampled tokens for `plan` (the last plan scheduled, checked) and the ids
  // the caller decided are finished (EOS, stop strings, max_tokens). Finished requests free their
  // blocks now and appear in the NEXT plan's `finished`. A request that reaches max_tokens is
  // finished here even when the caller does not list it. Tokens of requests aborted since the
  // plan are ignored. INTERNAL when `result` does not match the plan (wrong step, a token that was
  // not asked for or given twice, a missing token): no token is applied, `finished` still is, and
  // the caller should Abort the plan's sampling requests (their state is no longer consistent).
  absl::Status Update(const StepPlan& plan, const StepResult& result,
                      absl::Span<const uint64_t> finished);

  // Cancel / deadline: removes a waiting or running request and frees its blocks; a running
  // request's id goes into the next plan's `finished`. Unknown ids: no-op, returns false.
  bool Abort(uint64_t id);

  SchedulerStats stats() const;
  // True while a request is waiting or running, or finished ids are still to be sent.
  bool HasWork() const;
  const SchedulerConfig& config() const { return config_; }

 private:
  struct Request {
    SchedulerRequest params;
    std::vector<int32_t> output;  // tokens sampled so far
    std::vector<int32_t> tokens;  // prompt, then output
    int64_t num_computed = 0;     // tokens scheduled into the KV cache this admission
    std::vector<int32_t> blocks;  // this admission's block table
    PrefixCache::Chain chain;     // where its blocks hang in the prefix cache
    bool running = false;

    int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  };

  // The sequence for `r`'s next `n` tokens; `new_blocks` are appended to its block table.
  ScheduledSequence ScheduleTokens(Request& r, int64_t n, std::vector<int32_t> new_blocks);
  // Moves the most recently admitted running request to the front of the waiting queue.
  uint64_t PreemptLast(StepPlan& plan);
  // Removes a request wherever it is; running ones are reported in the next plan.
  void Remove(uint64_t id);
  // Admits the front of the waiting queue within `budget`, or returns false (blocks short).
  bool Admit(StepPlan& plan, int64_t& budget, std::vector<int32_t>& copy_sources);

  SchedulerConfig config_;
  PrefixCache cache_;
  absl::flat_hash_map<uint64_t, Request> requests_;  // every live request
  std::deque<uint64_t> waiting_;                    // admission order, front first
  std::vector<uint64_t> running_;                   // admission order, oldest first
  std::vector<uint64_t> pending_finished_;          // for the next plan
  absl::flat_hash_map<uint64_t, bool> in_flight_;   // outstanding plan: id -> sample
  std::optional<uint64_t> outstanding_step_;
  uint64_t next_step_ = 0;
  uint64_t preemptions_ = 0;
  uint64_t cascade_levels_ = 0;
};

}  // namespace moemesh
