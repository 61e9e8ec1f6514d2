// A worker's membership in the cluster: registers with the coordinator (retrying until it
// answers), reports the host's resources, then heartbeats on a thread. When the coordinator
// stays unreachable past `lost_after`, `on_lost` runs (workers exit: a launcher restarts them).
// Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "moemesh/v1/cluster.grpc.pb.h"

namespace moemesh {

struct RegistrationConfig {
  std::string coordinator;   // host:port
  v1::WorkerRole role = v1::WORKER_ROLE_UNSPECIFIED;
  std::string address;       // this worker's own server
  std::string name;
  std::chrono::seconds connect_timeout{60};
  std::chrono::milliseconds heartbeat_interval{1000};
  std::chrono::seconds lost_after{15};
  uint64_t memory_limit_bytes = 0;  // caps the DRAM reported to the coordinator (0: no cap)
};

// The resources of this host, found with hwloc.
v1::Resources HostResources();

class Registration {
 public:
  explicit Registration(RegistrationConfig config);
  ~Registration();

  // Registers (retrying until connect_timeout); returns the worker id.
  absl::StatusOr<std::string> Register();
  // Starts heartbeats; `on_lost` is called once if the coordinator is lost.
  void StartHeartbeats(std::function<void()> on_lost);

  v1::Coordinator::Stub* stub() { return stub_.get(); }

 private:
  RegistrationConfig config_;
  std::unique_ptr<v1::Coordinator::Stub> stub_;
  std::string worker_id_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread heartbeat_;
};

}  // namespace moemesh
