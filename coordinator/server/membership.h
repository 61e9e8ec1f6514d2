// Workers known to the coordinator: registration (role, protocol version, address, resources)
// and heartbeats. The cluster setup waits here until the expected workers have registered.
// Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "moemesh/v1/cluster.pb.h"

namespace moemesh {

struct WorkerRecord {
  std::string id;    // "attention-0", "expert-1": role and registration order
  v1::WorkerRole role = v1::WORKER_ROLE_UNSPECIFIED;
  std::string address;
  std::string name;
  v1::Resources resources;
  std::chrono::steady_clock::time_point last_heartbeat;
};

class Membership {
 public:
  // FAILED_PRECONDITION when the protocol version differs; INVALID_ARGUMENT for a missing role
  // or address. The same role, name and address again (a retry) returns the id given before.
  absl::StatusOr<std::string> Register(const v1::RegisterRequest& request);
  bool Heartbeat(const std::string& worker_id);
  // Waits until at least the given numbers of workers registered; DEADLINE_EXCEEDED saying how
  // many of each arrived.
  absl::StatusOr<std::vector<WorkerRecord>> WaitFor(int attention, int expert,
                                                    std::chrono::steady_clock::time_point deadline);
  std::vector<WorkerRecord> Snapshot() const;
  // How many attention and expert workers have registered.
  std::pair<int, int> Registered() const;
  // The registered workers as "id (name) at address" joined by ", "; "none" when there are none.
  std::string Describe() const;
  // Workers whose last heartbeat is older than `timeout`.
  std::vector<std::string> Stale(std::chrono::steady_clock::duration timeout) const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<WorkerRecord> workers_;
  int attention_count_ = 0;
  int expert_count_ = 0;
};

}  // namespace moemesh
