#include "runtime/local_collective.h"

#include <condition_variable>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {

// Every operation: each rank posts its buffer and size, waits at the barrier, reads what it
// needs from the others, waits again (so no rank overwrites a buffer another still reads).
struct LocalCollective::Shared {
  explicit Shared(int n) : size(n), buffers(n), counts(n) {}

  void Barrier() {
    std::unique_lock<std::mutex> lock(mu);
    const uint64_t gen = generation;
    if (++arrived == size) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    cv.wait(lock, [&] { return generation != gen; });
  }

  // Ok when every rank posted the same count; else the error every rank returns.
  absl::Status CheckCounts(const char* op) const {
    for (int r = 1; r < size; ++r) {
      if (counts[r] != counts[0]) {
        return absl::InvalidArgumentError(absl::StrCat("LocalCollective::", op, ": rank ", r, " passed ",
                                                       counts[r], " elements, rank 0 passed ", counts[0]));
      }
    }
    return absl::OkStatus();
  }

  const int size;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
  // Written by rank r before the first barrier of an operation, read after it.
  std::vector<const void*> buffers;
  std::vector<size_t> counts;
};

std::vector<std::unique_ptr<Collective>> LocalCollective::CreateGroup(int size) {
  MM_CHECK(size >= 1);
  auto shared = std::make_shared<Shared>(size);
  std::vector<std::unique_ptr<Collective>> group;
  for (int r = 0; r < size; ++r) group.push_back(std::make_unique<LocalCollective>(shared, r));
  return group;
}

LocalCollective::LocalCollective(std::shared_ptr<Shared> shared, int rank)
    : shared_(std::move(shared)), rank_(rank) {}

LocalCollective::~LocalCollective() = default;

int LocalCollective::size() const { return shared_->size; }

absl::Status LocalCollective::AllReduceSum(float* data, size_t count) {
  Shared& s = *shared_;
  s.buffers[rank_] = data;
  s.counts[rank_] = count;
  s.Barrier();
  absl::Status status = s.CheckCounts("AllReduceSum");
  std::vector<float> sum;
  if (status.ok()) {
    sum.assign(count, 0.0f);
    for (int r = 0; r < s.size; ++r) {
      const float* src = static_cast<const float*>(s.buffers[r]);
      for (size_t i = 0; i < count; ++i) sum[i] += src[i];
    }
  }
  s.Barrier();
  if (status.ok() && count > 0) std::memcpy(data, sum.data(), count * sizeof(float));
  return status;
}

absl::Status LocalCollective::AllGather(const float* in, size_t count, float* out) {
  Shared& s = *shared_;
  s.buffers[rank_] = in;
  s.counts[rank_] = count;
  s.Barrier();
  absl::Status status = s.CheckCounts("AllGather");
  if (status.ok() && count > 0) {
    for (int r = 0; r < s.size; ++r) std::memcpy(out + r * count, s.buffers[r], count * sizeof(float));
  }
  s.Barrier();
  return status;
}

absl::Status LocalCollective::Broadcast(void* data, size_t bytes, int root) {
  Shared& s = *shared_;
  if (root < 0 || root >= s.size) {
    // Every rank sees the same bad root, so every rank returns here without meeting the others.
    return absl::InvalidArgumentError(
        absl::StrCat("LocalCollective::Broadcast: root ", root, " is outside [0, ", s.size, ")"));
  }
  s.buffers[rank_] = data;
  s.counts[rank_] = bytes;
  s.Barrier();
  absl::Status status = s.CheckCounts("Broadcast");
  if (status.ok() && rank_ != root && bytes > 0) std::memcpy(data, s.buffers[root], bytes);
  s.Barrier();
  return status;
}

}  // namespace moemesh
