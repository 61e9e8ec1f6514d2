// The coordinator's rendezvous key-value store: collectives (Gloo's store, later NCCL's unique
// id) meet through it. Get blocks until the keys exist or the deadline passes.
// Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moemesh {

class RendezvousStore {
 public:
  void Set(const std::string& key, std::string value);
  // DEADLINE_EXCEEDED naming the missing keys when they do not all appear in time; UNAVAILABLE
  // once the store is closed (also for a Get already waiting).
  absl::StatusOr<std::vector<std::string>> Get(const std::vector<std::string>& keys,
                                               std::chrono::system_clock::time_point deadline);
  // Wakes every waiting Get and refuses later ones: the coordinator is stopping.
  void Close();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> values_;
  bool closed_ = false;
};

}  // namespace moemesh
