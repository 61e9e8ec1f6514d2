// Collective: the operations a tensor-parallel group needs (all-reduce, all-gather, broadcast)
// behind one interface, implemented with Gloo on CPUs (gloo_collective.h), in-process threads
// for tests (local_collective.h), and NCCL on GPUs later. Every rank calls each operation in the
// same order. One object per rank; a rank's calls must not overlap (not thread-safe).
#pragma once

#include <cstddef>

#include "absl/status/status.h"

namespace moemesh {

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // data[i] = sum over ranks of data[i], in place on every rank.
  virtual absl::Status AllReduceSum(float* data, size_t count) = 0;
  // out = concat over ranks (in rank order) of each rank's `count` floats; out holds size()*count.
  virtual absl::Status AllGather(const float* in, size_t count, float* out) = 0;
  // Copies `bytes` from `root` to every rank.
  virtual absl::Status Broadcast(void* data, size_t bytes, int root) = 0;
};

}  // namespace moemesh
