// Test helper: runs one function per rank of a group on its own thread and joins them.
// Test-only; call from one thread.
#pragma once

#include <functional>
#include <thread>
#include <vector>

namespace moemesh {

inline void RunOnRanks(int size, const std::function<void(int rank)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) threads.emplace_back(fn, r);
  for (std::thread& t : threads) t.join();
}

}  // namespace moemesh
