// NumaExecutor: every task of every node runs exactly once, on that node's threads; the work is
// shared by a node's threads; NodesFromTopology spreads threads by cores.
#include "worker/expert/numa_executor.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <gtest/gtest.h>

namespace moemesh {
namespace {

TEST(NumaExecutorTest, EveryTaskOnceOnItsNode) {
  NumaExecutor ex({NumaNodeSpec{-1, 2, {}}, NumaNodeSpec{-1, 3, {}}, NumaNodeSpec{-1, 1, {}}}, nullptr);
  EXPECT_EQ(ex.num_nodes(), 3);
  EXPECT_EQ(ex.num_threads(), 6);
  std::mutex mu;
  std::map<std::thread::id, std::set<int>> nodes_of_thread;
  for (int round = 0; round < 20; ++round) {
    const std::vector<int64_t> counts = {37, 5 * round, 0};
    std::vector<std::vector<std::atomic<int>>> seen(3);
    for (int n = 0; n < 3; ++n) seen[n] = std::vector<std::atomic<int>>(counts[n]);
    ex.Run(counts, [&](int node, int64_t i) {
      seen[node][i].fetch_add(1);
      std::lock_guard<std::mutex> lock(mu);
      nodes_of_thread[std::this_thread::get_id()].insert(node);
    });
    for (int n = 0; n < 3; ++n) {
      for (int64_t i = 0; i < counts[n]; ++i) ASSERT_EQ(seen[n][i].load(), 1) << n << " " << i;
    }
  }
  for (const auto& [id, nodes] : nodes_of_thread) EXPECT_EQ(nodes.size(), 1u) << "a thread ran two nodes' tasks";
}

TEST(NumaExecutorTest, ANodesThreadsShareItsTasks) {
  // One node with all the work (skewed routing): its 3 threads take tasks from one counter.
  NumaExecutor ex({NumaNodeSpec{-1, 3, {}}, NumaNodeSpec{-1, 1, {}}}, nullptr);
  std::mutex mu;
  std::set<std::thread::id> threads;
  ex.Run({60, 0}, [&](int, int64_t) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(2);
    while (std::chrono::steady_clock::now() < until) {
    }
    std::lock_guard<std::mutex> lock(mu);
    threads.insert(std::this_thread::get_id());
  });
  EXPECT_GE(threads.size(), 2u);
}

TEST(NumaExecutorTest, SingleNodeRunsOnTheCaller) {
  NumaExecutor ex({NumaNodeSpec{-1, 1, {}}}, nullptr);
  std::thread::id ran;
  ex.Run({1}, [&](int, int64_t) { ran = std::this_thread::get_id(); });
  EXPECT_EQ(ran, std::this_thread::get_id());
}

// Polls (bounded) until `parked` threads of `ex` sleep; false on timeout.
bool WaitUntilParked(const NumaExecutor& ex, int parked) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (ex.parked_threads() != parked) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::yield();
  }
  return true;
}

// Back-to-back tiny phases with every spin setting (0: always sleep; 1 us: park/publish races;
// default; longer than the test): every task once, no hang.
TEST(NumaExecutorTest, BackToBackTinyPhases) {
  for (int spin : {0, 1, kDefaultSpinUs, 1000000}) {
    NumaExecutor ex({NumaNodeSpec{-1, 2, {}}, NumaNodeSpec{-1, 1, {}}}, nullptr, spin);
    std::vector<std::vector<std::atomic<int>>> seen(2);
    for (int n = 0; n < 2; ++n) seen[n] = std::vector<std::atomic<int>>(4);
    // Long spins on fewer CPUs than threads (this 2-CPU VM) wait for the scheduler at each
    // phase: fewer rounds there.
    const int rounds = spin > 1000 ? 100 : 1000;
    for (int round = 0; round < rounds; ++round) {
      const std::vector<int64_t> counts = {round % 5, (round / 5) % 3};
      for (auto& node : seen) {
        for (auto& v : node) v.store(0, std::memory_order_relaxed);
      }
      ex.Run(counts, [&](int node, int64_t i) { seen[node][i].fetch_add(1); });
      for (int n = 0; n < 2; ++n) {
        for (int64_t i = 0; i < counts[n]; ++i) {
          ASSERT_EQ(seen[n][i].load(), 1) << "spin " << spin << " round " << round << " node " << n
                                          << " task " << i;
        }
      }
    }
  }
}

// After every thread has gone to sleep, a phase still wakes the drivers and the pool workers
// (node 0's two tasks wait for each other: both of its threads must run one), and the executor
// is then destroyed with every thread asleep.
TEST(NumaExecutorTest, PhaseAfterAllParkedAndDestroyParked) {
  for (int spin : {0, 1, kDefaultSpinUs}) {
    NumaExecutor ex({NumaNodeSpec{-1, 2, {}}, NumaNodeSpec{-1, 1, {}}}, nullptr, spin);
    const int sleepers = 2 + 1;  // two drivers, node 0's background thread
    for (int round = 0; round < 3; ++round) {
      ASSERT_TRUE(WaitUntilParked(ex, sleepers)) << "spin " << spin << " round " << round;
      std::mutex mu;
      std::condition_variable cv;
      int arrived = 0;
      std::atomic<bool> timed_out{false};
      std::atomic<int> node1{0};
      ex.Run({2, 1}, [&](int node, int64_t) {
        if (node == 1) {
          node1.fetch_add(1);
          return;
        }
        std::unique_lock<std::mutex> lock(mu);
        ++arrived;
        cv.notify_all();
        if (!cv.wait_for(lock, std::chrono::seconds(20), [&] { return arrived >= 2; })) {
          timed_out = true;
        }
      });
      EXPECT_FALSE(timed_out.load()) << "spin " << spin << " round " << round;
      EXPECT_EQ(node1.load(), 1) << "spin " << spin << " round " << round;
    }
    ASSERT_TRUE(WaitUntilParked(ex, sleepers)) << "spin " << spin;
  }
}

// Destruction while drivers and workers spin (spin far longer than the test) is prompt.
TEST(NumaExecutorTest, DestroyWhileSpinning) {
  const auto start = std::chrono::steady_clock::now();
  {
    NumaExecutor ex({NumaNodeSpec{-1, 2, {}}, NumaNodeSpec{-1, 1, {}}}, nullptr, 1000000);
    std::atomic<int> ran{0};
    ex.Run({3, 2}, [&](int, int64_t) { ran.fetch_add(1); });
    EXPECT_EQ(ran.load(), 5);
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 0.9);
}

TEST(NumaExecutorTest, NodesFromTopologySpreadsThreadsByCores) {
  HostTopology topo;
  for (int n = 0; n < 2; ++n) {
    NumaNode node;
    node.os_index = n;
    node.cores = 4;
    node.memory_bytes = 1 << 30;
    for (int c = 0; c < 4; ++c) node.core_pus.push_back({n * 4 + c});
    topo.numa_nodes.push_back(node);
  }
  auto all = NodesFromTopology(topo, 0);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].threads, 4);
  EXPECT_EQ(all[1].threads, 4);
  EXPECT_EQ(all[1].os_index, 1);
  EXPECT_EQ(all[1].cpusets, (std::vector<std::vector<int>>{{4}, {5}, {6}, {7}}));
  auto three = NodesFromTopology(topo, 3);
  EXPECT_EQ(three[0].threads + three[1].threads, 3);
  auto one = NodesFromTopology(topo, 1);  // at least one thread per node
  EXPECT_EQ(one[0].threads, 1);
  EXPECT_EQ(one[1].threads, 1);
  topo.numa_nodes.resize(1);
  topo.numa_nodes[0].memory_bytes = 0;  // no NUMA information: memory left unbound
  EXPECT_EQ(NodesFromTopology(topo, 0)[0].os_index, -1);
}

}  // namespace
}  // namespace moemesh
