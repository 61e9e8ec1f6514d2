#include "worker/gpu/nccl_group.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace moemesh {
namespace {

absl::Status NcclStatus(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("NCCL ", what, ": ", ncclGetErrorString(r)));
}

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA ", what, ": ", cudaGetErrorString(e)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<NcclGroup>> NcclGroup::Create(gloo::rendezvous::Store& store,
                                                             const std::string& group, int rank,
                                                             int size) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL group ", group, ": rank ", rank,
                                                   " is outside [0, ", size, ")"));
  }
  const std::string key = group + "/nccl-id";
  ncclUniqueId id;
  try {
    if (rank == 0) {
      ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess) return NcclStatus(r, "ncclGetUniqueId");
      std::vector<char> bytes(sizeof(id));
      std::memcpy(bytes.data(), &id, sizeof(id));
      store.set(key, bytes);
    } else {
      store.wait({key});
      std::vector<char> bytes = store.get(key);
      if (bytes.size() != sizeof(id)) {
        return absl::UnavailableError(absl::StrCat("NCCL group ", group, ": the id under ", key,
                                                   " has ", bytes.size(), " bytes, expected ",
                                                   sizeof(id)));
      }
      std::memcpy(&id, bytes.data(), sizeof(id));
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("NCCL group ", group, " rendezvous (rank ", rank, "): ", e.what()));
  }
  ncclComm_t comm;
  ncclResult_t r = ncclCommInitRank(&comm, size, id, rank);
  if (r != ncclSuccess) {
    return absl::UnavailableError(absl::StrCat("NCCL group ", group, ": ncclCommInitRank(rank ",
                                               rank, " of ", size, "): ", ncclGetErrorString(r)));
  }
  cudaStream_t stream;
  absl::Status s = CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                              "cudaStreamCreate");
  if (!s.ok()) {
    ncclCommDestroy(comm);
    return s;
  }
  MM_LOG(INFO) << "NCCL group " << group << ": rank " << rank << " of " << size << " ready";
  return std::unique_ptr<NcclGroup>(new NcclGroup(comm, rank, size, stream));
}

NcclGroup::~NcclGroup() {
  ncclCommDestroy(comm_);
  cudaStreamDestroy(stream_);
}

absl::Status NcclGroup::AllReduceSumAsync(float* data, size_t count, cudaStream_t stream) {
  return NcclStatus(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, stream),
                    "all-reduce");
}

absl::Status NcclGroup::AllGatherAsync(const float* in, size_t count, float* out,
                                       cudaStream_t stream) {
  return NcclStatus(ncclAllGather(in, out, count, ncclFloat32, comm_, stream), "all-gather");
}

absl::Status NcclGroup::AllReduceSum(float* data, size_t count) {
  if (absl::Status s = AllReduceSumAsync(data, count, stream_); !s.ok()) return s;
  return CudaStatus(cudaStreamSynchronize(stream_), "all-reduce");
}

absl::Status NcclGroup::AllGather(const float* in, size_t count, float* out) {
  if (absl::Status s = AllGatherAsync(in, count, out, stream_); !s.ok()) return s;
  return CudaStatus(cudaStreamSynchronize(stream_), "all-gather");
}

absl::Status NcclGroup::Broadcast(void* data, size_t bytes, int root) {
  absl::Status s =
      NcclStatus(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_), "broadcast");
  if (!s.ok()) return s;
  return CudaStatus(cudaStreamSynchronize(stream_), "broadcast");
}

}  // namespace moemesh
