// ThreadPool: a fixed set of threads for data-parallel loops (ParallelFor) with dynamic
// scheduling, optionally pinned to cpusets through hwloc. Idle threads poll briefly for the next
// job before sleeping (WorkerGate), so back-to-back loops skip the wake-up latency. Not a task
// queue: no futures, no per-task allocation. Thread-safety: ParallelFor may be called from ONE
// thread at a time (the caller serialises, e.g. with a mutex); the caller's thread runs chunks too. `fn` must not
// throw and must not call ParallelFor on the same pool.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "common/worker_gate.h"

namespace moemesh {

struct ThreadPoolOptions {
  int num_threads = 1;  // total parallelism, the calling thread included (>= 1)
  // Optional pinning: background thread i (0 <= i < num_threads - 1) is bound to the OS
  // processor (PU) indices in cpusets[i % cpusets.size()]. Empty: no pinning. A failed binding
  // is logged once per pool and otherwise ignored.
  std::vector<std::vector<int>> cpusets;
  // Microseconds an idle background thread polls for the next job (and the caller for the end
  // of a job) before sleeping on a condition variable. 0: sleep at once (no spinning; every job
  // then pays a wake-up per thread). kSpinAuto: kDefaultSpinUs (100) when num_threads is at most
  // the CPUs this process may use, else 0.
  int spin_us = kSpinAuto;
};

class ThreadPool {
 public:
  explicit ThreadPool(const ThreadPoolOptions& options);
  explicit ThreadPool(int num_threads) : ThreadPool(ThreadPoolOptions{num_threads, {}}) {}
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }
  // How many background threads were pinned successfully (0 without cpusets).
  int pinned_threads() const { return pinned_.load(); }
  // Background threads asleep waiting for a job right now (a snapshot; for tests and stats).
  int parked_threads() const { return gate_.parked_workers(); }

  // Calls fn(begin, end) over disjoint chunks covering [0, n), on the pool's threads and the
  // caller's; returns when every chunk is done. Chunks are handed out from an atomic counter,
  // so threads that finish early take more. `chunk` = 0 picks about 4 chunks per thread.
  void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t chunk = 0);

 private:
  struct Job {
    const std::function<void(int64_t, int64_t)>* fn = nullptr;
    int64_t n = 0;
    int64_t chunk = 1;
    std::atomic<int64_t> next{0};
  };

  void WorkerLoop(int index);
  static void RunChunks(Job* job);
  void Pin(int index);

  std::vector<std::vector<int>> cpusets_;
  std::vector<std::thread> workers_;
  std::atomic<int> pinned_{0};
  std::atomic<bool> pin_failure_logged_{false};
  void* topology_ = nullptr;  // hwloc_topology_t when pinning

  WorkerGate gate_;
  // The current job: written by ParallelFor before gate_.Publish, read by workers between
  // gate_.WaitForWork and gate_.Leave.
  Job* job_ = nullptr;
};

}  // namespace moemesh
