// Gloo's rendezvous store backed by the coordinator (cluster.proto StoreSet/StoreGet), so a
// tensor-parallel group meets through the coordinator it already knows. Thread-safe.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <gloo/rendezvous/store.h>

#include "moemesh/v1/cluster.grpc.pb.h"

namespace moemesh {

class CoordinatorStore final : public gloo::rendezvous::Store {
 public:
  // `stub` must outlive the store.
  CoordinatorStore(v1::Coordinator::Stub* stub, std::chrono::milliseconds timeout)
      : stub_(stub), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

 private:
  std::vector<std::string> Get(const std::vector<std::string>& keys, std::chrono::milliseconds timeout);

  v1::Coordinator::Stub* stub_;
  std::chrono::milliseconds timeout_;
};

}  // namespace moemesh
