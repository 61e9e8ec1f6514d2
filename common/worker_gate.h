// WorkerGate: the wake/park protocol between one caller thread and a fixed set of worker threads
// that run a job together: the caller publishes a job generation, each worker takes part once
// and leaves, the caller waits until all have left. Both sides first poll an atomic for a
// bounded time (pause instructions, no yield, no syscall) and only then sleep on a condition
// variable; a sleeper is notified only when one is known to be asleep, so back-to-back jobs
// cost no futex calls. Holds no job: the owner stores its job before Publish() and workers read
// it after WaitForWork() returns. Thread-safety: Publish, WaitDone and Stop from one caller
// thread at a time; WaitForWork and Leave from the workers; parked_workers from any thread.
#pragma once

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace moemesh {

// One polling step of a spin-wait (a pause instruction: lets the sibling hyperthread run and
// saves power).
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// Spin-time options (microseconds a waiting thread polls before it sleeps).
inline constexpr int kSpinAuto = -1;          // kDefaultSpinUs, or 0 when threads > usable CPUs
inline constexpr int kDefaultSpinUs = 100;    // > a futex wake-up, << a decode step

// Resolves kSpinAuto for a group of `threads` busy threads: spinning pays only when every one
// has a CPU of its own; with more threads than the CPUs this process may use, a spinning thread
// would take time from one with work. Any other value is returned unchanged (0: never spin).
inline int ResolveSpinUs(int spin_us, int threads) {
  if (spin_us != kSpinAuto) return std::max(0, spin_us);
  int cpus = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
  return threads <= std::max(1, cpus) ? kDefaultSpinUs : 0;
}

class WorkerGate {
 public:
  // spin_us >= 0: how long WaitForWork and WaitDone poll before sleeping; 0: sleep at once.
  explicit WorkerGate(int spin_us) : spin_(std::chrono::microseconds(std::max(0, spin_us))) {}
  WorkerGate(const WorkerGate&) = delete;
  WorkerGate& operator=(const WorkerGate&) = delete;

  // Caller: starts a job in which each of `workers` threads will call Leave() once. The owner's
  // job data, written before this call, is visible to workers when WaitForWork returns.
  void Publish(int workers) {
    busy_.store(workers, std::memory_order_relaxed);  // ordered before the generation's RMW
    generation_.fetch_add(1, std::memory_order_seq_cst);
    // Pairs with the seq_cst increment-then-check in WaitForWork: either a parker sees the new
    // generation, or it is counted here and gets notified.
    if (parked_workers_.load(std::memory_order_seq_cst) > 0) NotifyAll(work_cv_);
  }

  // Caller: returns when every worker of the current job has called Leave(); what they wrote
  // before leaving is visible then.
  void WaitDone() {
    if (SpinUntil([&] { return busy_.load(std::memory_order_acquire) == 0; })) return;
    std::unique_lock<std::mutex> lock(mu_);
    caller_parked_.store(true, std::memory_order_seq_cst);
    done_cv_.wait(lock, [&] { return busy_.load(std::memory_order_seq_cst) == 0; });
    caller_parked_.store(false, std::memory_order_relaxed);
  }

  // Caller, with no job in progress: every current and later WaitForWork returns false.
  void Stop() {
    stop_.store(true, std::memory_order_seq_cst);
    NotifyAll(work_cv_);
  }

  // Worker: waits until a generation other than *seen is published (sets *seen to it, true) or
  // Stop is called (false).
  bool WaitForWork(uint64_t* seen) {
    const auto ready = [&] {
      return stop_.load(std::memory_order_acquire) ||
             generation_.load(std::memory_order_acquire) != *seen;
    };
    if (!SpinUntil(ready)) {
      std::unique_lock<std::mutex> lock(mu_);
      parked_workers_.fetch_add(1, std::memory_order_seq_cst);
      work_cv_.wait(lock, [&] {
        return stop_.load(std::memory_order_seq_cst) ||
               generation_.load(std::memory_order_seq_cst) != *seen;
      });
      parked_workers_.fetch_sub(1, std::memory_order_relaxed);
    }
    if (stop_.load(std::memory_order_acquire)) return false;
    *seen = generation_.load(std::memory_order_acquire);
    return true;
  }

  // Worker: done with the current job (touches nothing of the owner's job afterwards).
  void Leave() {
    // Pairs with WaitDone's seq_cst store of caller_parked_ then load of busy_.
    if (busy_.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
        caller_parked_.load(std::memory_order_seq_cst)) {
      NotifyAll(done_cv_);
    }
  }

  // Workers asleep in WaitForWork now (a snapshot; for tests and statistics).
  int parked_workers() const { return parked_workers_.load(std::memory_order_relaxed); }

 private:
  static constexpr int kPollsPerClockRead = 32;

  // Polls `ready` for at most spin_ (reading the clock every kPollsPerClockRead polls); returns
  // its last value.
  template <typename Ready>
  bool SpinUntil(const Ready& ready) const {
    if (ready()) return true;
    if (spin_.count() == 0) return false;
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      for (int i = 0; i < kPollsPerClockRead; ++i) {
        CpuRelax();
        if (ready()) return true;
      }
      if (std::chrono::steady_clock::now() - start >= spin_) return ready();
    }
  }

  // Taking the mutex orders the notification after a sleeper's predicate check: a thread that
  // checked the predicate under mu_ is inside wait() (mu_ released) once we hold mu_.
  void NotifyAll(std::condition_variable& cv) {
    { std::lock_guard<std::mutex> lock(mu_); }
    cv.notify_all();
  }

  const std::chrono::nanoseconds spin_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> busy_{0};  // workers still in the current job
  std::atomic<bool> stop_{false};
  std::atomic<int> parked_workers_{0};
  std::atomic<bool> caller_parked_{false};
  std::mutex mu_;                      // only for sleeping; guards no data of its own
  std::condition_variable work_cv_;    // a new generation or stop
  std::condition_variable done_cv_;    // busy_ reached 0
};

}  // namespace moemesh
