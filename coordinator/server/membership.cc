#include "coordinator/server/membership.h"

#include "absl/strings/str_cat.h"

namespace moemesh {

absl::StatusOr<std::string> Membership::Register(const v1::RegisterRequest& request) {
  if (request.protocol_version() != v1::PROTOCOL_VERSION_CURRENT) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker \"", request.name(), "\" speaks protocol version ", request.protocol_version(),
                     "; this coordinator speaks ", static_cast<int>(v1::PROTOCOL_VERSION_CURRENT)));
  }
  if (request.role() != v1::WORKER_ROLE_ATTENTION && request.role() != v1::WORKER_ROLE_EXPERT) {
    return absl::InvalidArgumentError("role: must be attention or expert");
  }
  if (request.address().empty()) return absl::InvalidArgumentError("address: empty");
  std::lock_guard<std::mutex> lock(mu_);
  // A retried registration (the first answer was lost) gets the id it already has.
  for (WorkerRecord& known : workers_) {
    if (known.address == request.address() && known.name == request.name() &&
        known.role == request.role()) {
      known.last_heartbeat = std::chrono::steady_clock::now();
      return known.id;
    }
  }
  WorkerRecord w;
  const bool attention = request.role() == v1::WORKER_ROLE_ATTENTION;
  w.id = attention ? absl::StrCat("attention-", attention_count_++) : absl::StrCat("expert-", expert_count_++);
  w.role = request.role();
  w.address = request.address();
  w.name = request.name();
  w.resources = request.resources();
  w.last_heartbeat = std::chrono::steady_clock::now();
  workers_.push_back(w);
  cv_.notify_all();
  return w.id;
}

bool Membership::Heartbeat(const std::string& worker_id) {
  std::lock_guard<std::mutex> lock(mu_);
  for (WorkerRecord& w : workers_) {
    if (w.id == worker_id) {
      w.last_heartbeat = std::chrono::steady_clock::now();
      return true;
    }
  }
  return false;
}

absl::StatusOr<std::vector<WorkerRecord>> Membership::WaitFor(
    int attention, int expert, std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_until(lock, deadline, [&] { return attention_count_ >= attention && expert_count_ >= expert; })) {
    return absl::DeadlineExceededError(absl::StrCat("waiting for workers: ", attention_count_, " of ", attention,
                                                    " attention and ", expert_count_, " of ", expert,
                                                    " expert workers registered"));
  }
  return workers_;
}

std::vector<WorkerRecord> Membership::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return workers_;
}

std::pair<int, int> Membership::Registered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {attention_count_, expert_count_};
}

std::string Membership::Describe() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const WorkerRecord& w : workers_) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", w.id, " (", w.name, ") at ", w.address);
  }
  return out.empty() ? "none" : out;
}

std::vector<std::string> Membership::Stale(std::chrono::steady_clock::duration timeout) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  const auto now = std::chrono::steady_clock::now();
  for (const WorkerRecord& w : workers_) {
    if (now - w.last_heartbeat > timeout) out.push_back(w.id);
  }
  return out;
}

}  // namespace moemesh
