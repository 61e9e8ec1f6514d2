#include "common/thread_pool.h"

#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace moemesh {
namespace {

// Waits (bounded) until `counter` reaches `target`; false on timeout. Never a sleep: a wait on a
// condition that another thread makes true.
class Gate {
 public:
  void Arrive() {
    std::lock_guard<std::mutex> lock(mu_);
    ++count_;
    cv_.notify_all();
  }
  bool WaitFor(int target) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(20), [&] { return count_ >= target; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_ = 0;
};

TEST(ThreadPoolTest, CoversEveryIndexOnce) {
  for (int threads : {1, 2, 4, 7}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t n : {0, 1, 2, 5, 64, 1000, 4097}) {
      for (int64_t chunk : {0, 1, 3, 100, 5000}) {
        std::vector<std::atomic<int>> hits(n);
        pool.ParallelFor(n, [&](int64_t b, int64_t e) {
          ASSERT_LE(0, b);
          ASSERT_LT(b, e);
          ASSERT_LE(e, n);
          if (chunk > 0) {
            ASSERT_LE(e - b, chunk);
          }
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        }, chunk);
        for (int64_t i = 0; i < n; ++i) {
          ASSERT_EQ(hits[i].load(), 1) << "threads " << threads << " n " << n << " chunk " << chunk
                                       << " index " << i;
        }
      }
    }
  }
}

TEST(ThreadPoolTest, ManyCallsInARow) {
  ThreadPool pool(3);
  int64_t total = 0;
  for (int round = 0; round < 2000; ++round) {
    std::atomic<int64_t> sum{0};
    pool.ParallelFor(round % 17, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sum += i + 1;
    }, 1);
    const int64_t n = round % 17;
    ASSERT_EQ(sum.load(), n * (n + 1) / 2);
    total += sum.load();
  }
  EXPECT_GT(total, 0);
}

// Item 0 cannot finish before every other item has: with static partitioning the thread holding
// item 0 would also hold others and the wait would time out. Dynamic scheduling hands them to
// the other threads.
TEST(ThreadPoolTest, SkewedWorkIsTakenByOtherThreads) {
  ThreadPool pool(4);
  const int64_t n = 40;
  Gate others;
  std::atomic<bool> timed_out{false};
  pool.ParallelFor(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (i == 0) {
        if (!others.WaitFor(n - 1)) timed_out = true;
      } else {
        others.Arrive();
      }
    }
  }, 1);
  EXPECT_FALSE(timed_out.load());
}

// With one background thread, two items that wait for each other finish only if the calling
// thread runs one of them.
TEST(ThreadPoolTest, CallerParticipates) {
  ThreadPool pool(2);
  Gate started;
  std::atomic<bool> timed_out{false};
  std::atomic<bool> caller_ran{false};
  const auto caller = std::this_thread::get_id();
  pool.ParallelFor(2, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (std::this_thread::get_id() == caller) caller_ran = true;
      started.Arrive();
      if (!started.WaitFor(2)) timed_out = true;
    }
  }, 1);
  EXPECT_FALSE(timed_out.load());
  EXPECT_TRUE(caller_ran.load());
}

// Spin settings that exercise every path: never spin (always park), spin so short that workers
// park between most calls (the publish/park race), the default, and spin longer than any test.
constexpr int kSpinCases[] = {0, 1, kDefaultSpinUs, 1000000};

// Polls (bounded) until every background thread of `pool` is asleep; false on timeout.
bool WaitUntilAllParked(const ThreadPool& pool) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (pool.parked_threads() != pool.num_threads() - 1) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::yield();
  }
  return true;
}

// Back-to-back tiny loops: no lost wake-up (a hang), no index skipped or run twice, no job
// mixed up with the next one (each call checks its own counters, by generation).
TEST(ThreadPoolTest, BackToBackTinyJobsEveryIndexOnce) {
  for (int spin : kSpinCases) {
    for (int threads : {2, 3}) {
      ThreadPool pool(ThreadPoolOptions{threads, {}, spin});
      std::vector<std::atomic<int>> hits(9);
      // Threads that spin for long on fewer CPUs than threads (this 2-CPU VM) wait for the
      // scheduler at each call: fewer rounds there.
      const int rounds = spin > 1000 ? 200 : 2000;
      for (int round = 0; round < rounds; ++round) {
        const int64_t n = 1 + round % 9;
        for (int64_t i = 0; i < n; ++i) hits[i].store(0, std::memory_order_relaxed);
        std::atomic<int64_t> calls{0};
        pool.ParallelFor(n, [&](int64_t b, int64_t e) {
          calls.fetch_add(1);
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        }, 1);
        ASSERT_EQ(calls.load(), n)
            << "spin " << spin << " threads " << threads << " round " << round;
        for (int64_t i = 0; i < n; ++i) {
          ASSERT_EQ(hits[i].load(), 1) << "spin " << spin << " threads " << threads << " round "
                                       << round << " index " << i;
        }
      }
    }
  }
}

// A job published while every worker sleeps still runs on them (not only on the caller): two
// items that wait for each other finish only if a woken worker takes one.
TEST(ThreadPoolTest, JobAfterWorkersParkedWakesThem) {
  for (int spin : {0, 1, kDefaultSpinUs}) {
    ThreadPool pool(ThreadPoolOptions{2, {}, spin});
    for (int round = 0; round < 3; ++round) {
      ASSERT_TRUE(WaitUntilAllParked(pool)) << "spin " << spin << " round " << round;
      Gate started;
      std::atomic<bool> timed_out{false};
      pool.ParallelFor(2, [&](int64_t b, int64_t e) {
        started.Arrive();
        if (!started.WaitFor(2)) timed_out = true;
      }, 1);
      EXPECT_FALSE(timed_out.load()) << "spin " << spin << " round " << round;
    }
  }
}

// The caller sleeps (spin 0 or spin far shorter than the job) until a slow worker leaves.
TEST(ThreadPoolTest, CallerWaitsForASlowWorker) {
  for (int spin : {0, 1, kDefaultSpinUs}) {
    ThreadPool pool(ThreadPoolOptions{2, {}, spin});
    const auto caller = std::this_thread::get_id();
    Gate worker_started;
    Gate caller_done;
    std::atomic<bool> worker_finished{false};
    pool.ParallelFor(2, [&](int64_t b, int64_t e) {
      if (std::this_thread::get_id() == caller) {  // the worker holds the other item
        worker_started.WaitFor(1);
        caller_done.Arrive();
        return;
      }
      worker_started.Arrive();
      caller_done.WaitFor(1);  // the caller is about to run out of chunks and wait
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(5);
      while (std::chrono::steady_clock::now() < until) {
      }
      worker_finished = true;
    }, 1);
    EXPECT_TRUE(worker_finished.load()) << "spin " << spin;
  }
}

// Destruction while workers spin (just after a job, spin far longer than the test) and while
// they sleep; both return promptly (no worker waits out its spin).
TEST(ThreadPoolTest, DestroyWhileSpinningOrParked) {
  for (int spin : {1000000, 0, 1}) {
    for (int threads : {2, 4}) {
      const auto start = std::chrono::steady_clock::now();
      {
        ThreadPool pool(ThreadPoolOptions{threads, {}, spin});
        std::atomic<int64_t> sum{0};
        pool.ParallelFor(64, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) sum += i;
        }, 1);
        ASSERT_EQ(sum.load(), 64 * 63 / 2);
        if (spin < 1000) {
          ASSERT_TRUE(WaitUntilAllParked(pool)) << "spin " << spin << " threads " << threads;
        }
      }
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      EXPECT_LT(s, 0.9) << "spin " << spin << " threads " << threads;  // < the 1 s spin
    }
  }
  ThreadPool never_used(ThreadPoolOptions{3, {}, 1000000});  // destroyed while spinning, idle
}

TEST(ThreadPoolTest, AutoSpinResolves) {
  EXPECT_EQ(ResolveSpinUs(0, 1), 0);
  EXPECT_EQ(ResolveSpinUs(37, 1 << 20), 37);
  EXPECT_EQ(ResolveSpinUs(kSpinAuto, 1), kDefaultSpinUs);
  EXPECT_EQ(ResolveSpinUs(kSpinAuto, 1 << 20), 0);  // more threads than CPUs: no spinning
}

int FirstAllowedCpu() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return -1;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) return c;
  }
  return -1;
}

TEST(ThreadPoolTest, PinsBackgroundThreads) {
  const int cpu = FirstAllowedCpu();
  if (cpu < 0) GTEST_SKIP() << "sched_getaffinity gave no cpu";
  ThreadPool pool(ThreadPoolOptions{2, {{cpu}}});
  Gate started;
  std::atomic<int> worker_cpus{-1};
  std::atomic<int> worker_cpu_count{-1};
  const auto caller = std::this_thread::get_id();
  pool.ParallelFor(2, [&](int64_t b, int64_t e) {
    if (std::this_thread::get_id() != caller) {
      cpu_set_t set;
      CPU_ZERO(&set);
      if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        worker_cpu_count = CPU_COUNT(&set);
        worker_cpus = CPU_ISSET(cpu, &set) ? cpu : -2;
      }
    }
    started.Arrive();
    started.WaitFor(2);  // both threads take one item
  }, 1);
  EXPECT_EQ(pool.pinned_threads(), 1);
  EXPECT_EQ(worker_cpu_count.load(), 1);
  EXPECT_EQ(worker_cpus.load(), cpu);
}

TEST(ThreadPoolTest, PinningFailureIsNotFatal) {
  ThreadPool pool(ThreadPoolOptions{3, {{1 << 20}, {}}});  // a cpu that does not exist; empty set
  EXPECT_EQ(pool.pinned_threads(), 0);
  std::atomic<int64_t> sum{0};
  pool.ParallelFor(100, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sum += i;
  });
  EXPECT_EQ(sum.load(), 4950);
}

}  // namespace
}  // namespace moemesh
