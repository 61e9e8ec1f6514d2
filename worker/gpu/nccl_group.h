// NcclGroup: a tensor-parallel group's NCCL communicator on this process's GPU. Rendezvous
// goes through the coordinator's key-value store (the same one Gloo uses): rank 0 creates the
// NCCL unique id and publishes it under "<group>/nccl-id", the others wait for it. Collectives
// are enqueued on a caller's stream on DEVICE pointers and may be captured in CUDA graphs.
// It also implements Collective (runtime/collective.h) synchronously on device pointers, so
// code written against Collective can run on it. Not thread-safe: one caller at a time.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <memory>
#include <string>

#include <gloo/rendezvous/store.h>

#include "absl/status/statusor.h"
#include "runtime/collective.h"

namespace moemesh {

class NcclGroup final : public Collective {
 public:
  // Initialises the communicator of `rank` in a group of `size` on the current CUDA device.
  // UNAVAILABLE naming the group and NCCL's message when the rendezvous or init fails.
  static absl::StatusOr<std::unique_ptr<NcclGroup>> Create(gloo::rendezvous::Store& store,
                                                           const std::string& group, int rank,
                                                           int size);
  ~NcclGroup() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  // Asynchronous, on `stream`: in-place sum / concatenation in rank order.
  absl::Status AllReduceSumAsync(float* data, size_t count, cudaStream_t stream);
  absl::Status AllGatherAsync(const float* in, size_t count, float* out, cudaStream_t stream);

  // Collective: the same on device pointers, synchronised before returning.
  absl::Status AllReduceSum(float* data, size_t count) override;
  absl::Status AllGather(const float* in, size_t count, float* out) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;

 private:
  NcclGroup(ncclComm_t comm, int rank, int size, cudaStream_t stream)
      : comm_(comm), rank_(rank), size_(size), stream_(stream) {}

  ncclComm_t comm_;
  int rank_, size_;
  cudaStream_t stream_;  // for the synchronous Collective calls
};

}  // namespace moemesh
