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
