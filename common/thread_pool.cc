#include "common/thread_pool.h"

#include <hwloc.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status.h"

// Every hwloc call goes through this: a non-zero result becomes a Status naming the call, the
// file and the line.
#define MM_HWLOC_CALL(expr) ::moemesh::HwlocResult((expr), #expr, __FILE__, __LINE__)

namespace moemesh {
namespace {

absl::Status HwlocResult(int rc, const char* expr, const char* file, int line) {
  if (rc == 0) return absl::OkStatus();
  const int err = errno;
  return absl::InternalError(
      absl::StrFormat("%s:%d: %s returned %d (%s)", file, line, expr, rc, std::strerror(err)));
}

}  // namespace

ThreadPool::ThreadPool(const ThreadPoolOptions& options)
    : cpusets_(options.cpusets), gate_(ResolveSpinUs(options.spin_us, options.num_threads)) {
  MM_CHECK(options.num_threads >= 1);
  if (!cpusets_.empty() && options.num_threads > 1) {
    hwloc_topology_t topo;
    absl::Status st = MM_HWLOC_CALL(hwloc_topology_init(&topo));
    if (st.ok()) {
      st = MM_HWLOC_CALL(hwloc_topology_load(topo));
      if (st.ok()) {
        topology_ = topo;
      } else {
        hwloc_topology_destroy(topo);
      }
    }
    if (!st.ok()) {
      MM_LOG(WARNING) << "thread pool: cannot pin threads: " << st.message();
      pin_failure_logged_ = true;
    }
  }
  workers_.reserve(options.num_threads - 1);
  for (int i = 0; i + 1 < options.num_threads; ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
}

ThreadPool::~ThreadPool() {
  gate_.Stop();
  for (std::thread& t : workers_) t.join();
  if (topology_ != nullptr) hwloc_topology_destroy(static_cast<hwloc_topology_t>(topology_));
}

void ThreadPool::Pin(int index) {
  if (topology_ == nullptr) return;
  const std::vector<int>& cpus = cpusets_[index % cpusets_.size()];
  hwloc_bitmap_t set = hwloc_bitmap_alloc();
  absl::Status st = set == nullptr ? absl::ResourceExhaustedError("hwloc_bitmap_alloc failed")
                                   : absl::OkStatus();
  for (size_t i = 0; st.ok() && i < cpus.size(); ++i) {
    if (cpus[i] < 0) {
      st = absl::InvalidArgumentError(absl::StrFormat("cpu index %d is negative", cpus[i]));
    } else {
      st = MM_HWLOC_CALL(hwloc_bitmap_set(set, static_cast<unsigned>(cpus[i])));
    }
  }
  if (st.ok() && cpus.empty()) st = absl::InvalidArgumentError("empty cpuset");
  if (st.ok()) {
    st = MM_HWLOC_CALL(
        hwloc_set_cpubind(static_cast<hwloc_topology_t>(topology_), set, HWLOC_CPUBIND_THREAD));
  }
  if (set != nullptr) hwloc_bitmap_free(set);
  if (st.ok()) {
    ++pinned_;
  } else if (!pin_failure_logged_.exchange(true)) {
    MM_LOG(WARNING) << "thread pool: cannot pin thread " << index << " to cpus ["
                    << absl::StrJoin(cpus, ",") << "]: " << st.message()
                    << " (further pinning failures of this pool are not logged)";
  }
}

void ThreadPool::RunChunks(Job* job) {
  for (;;) {
    const int64_t begin = job->next.fetch_add(job->chunk, std::memory_order_relaxed);
    if (begin >= job->n) return;
    (*job->fn)(begin, std::min(job->n, begin + job->chunk));
  }
}

void ThreadPool::WorkerLoop(int index) {
  Pin(index);
  uint64_t seen = 0;
  while (gate_.WaitForWork(&seen)) {
    RunChunks(job_);
    gate_.Leave();
  }
}

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn,
                             int64_t chunk) {
  if (n <= 0) return;
  if (chunk <= 0) {
    const int64_t pieces = static_cast<int64_t>(num_threads()) * 4;
    chunk = std::max<int64_t>(1, (n + pieces - 1) / pieces);
  }
  if (workers_.empty() || n <= chunk) {
    for (int64_t begin = 0; begin < n; begin += chunk) fn(begin, std::min(n, begin + chunk));
    return;
  }
  Job job;
  job.fn = &fn;
  job.n = n;
  job.chunk = chunk;
  job_ = &job;
  gate_.Publish(static_cast<int>(workers_.size()));
  RunChunks(&job);
  // Every worker must leave the job before it goes out of scope, even one that found no chunk.
  gate_.WaitDone();
  job_ = nullptr;
}

}  // namespace moemesh
