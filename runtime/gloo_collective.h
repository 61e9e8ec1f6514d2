// GlooCollective: a Collective over Gloo's TCP transport, one object per rank (one per process
// in production). Ranks find each other through a caller-provided rendezvous store (a file
// store, Redis, or the coordinator's store), under a per-group key prefix. Gloo's exceptions
// never leave this file: they become UNAVAILABLE statuses naming the operation and the rank.
// Not thread-safe: a rank's calls must not overlap (Collective's contract).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/collective.h"

namespace gloo {
class Context;
namespace rendezvous {
class Store;
}  // namespace rendezvous
}  // namespace gloo

namespace moemesh {

struct GlooCollectiveConfig {
  std::string hostname = "127.0.0.1";  // address this rank listens on (its peers must reach it)
  std::string group = "tp";            // key prefix in the store: groups sharing a store differ
  std::chrono::milliseconds timeout{30000};  // for connecting and for every operation
};

class GlooCollective : public Collective {
 public:
  // Connects rank `rank` of `size` (blocks until every rank of the group has joined, or the
  // timeout). The store is only used during Create.
  static absl::StatusOr<std::unique_ptr<GlooCollective>> Create(const GlooCollectiveConfig& config,
                                                                 gloo::rendezvous::Store& store,
                                                                 int rank, int size);
  ~GlooCollective() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::Status AllReduceSum(float* data, size_t count) override;
  absl::Status AllGather(const float* in, size_t count, float* out) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;

 private:
  GlooCollective(std::shared_ptr<gloo::Context> context, int rank, int size,
                 std::chrono::milliseconds timeout);

  std::shared_ptr<gloo::Context> context_;
  int rank_;
  int size_;
  std::chrono::milliseconds timeout_;
};

}  // namespace moemesh
