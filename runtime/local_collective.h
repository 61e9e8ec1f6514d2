// LocalCollective: a Collective for N ranks that are N threads of one process, for tests and
// single-host experiments. Ranks meet at a shared barrier; every reduction sums in rank order,
// so all ranks get bit-identical results. No timeouts: a rank that never calls blocks the rest.
// Each object is used by one thread (its rank); the group's shared state is internally locked.
#pragma once

#include <memory>
#include <vector>

#include "runtime/collective.h"

namespace moemesh {

class LocalCollective : public Collective {
 public:
  struct Shared;  // the group's rendezvous state (local_collective.cc)

  // One Collective per rank, rank i at index i. `size` >= 1 (checked).
  static std::vector<std::unique_ptr<Collective>> CreateGroup(int size);

  LocalCollective(std::shared_ptr<Shared> shared, int rank);
  ~LocalCollective() override;

  int rank() const override { return rank_; }
  int size() const override;
  absl::Status AllReduceSum(float* data, size_t count) override;
  absl::Status AllGather(const float* in, size_t count, float* out) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;

 private:
  std::shared_ptr<Shared> shared_;
  int rank_;
};

}  // namespace moemesh
