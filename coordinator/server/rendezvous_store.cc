#include "coordinator/server/rendezvous_store.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moemesh {

void RendezvousStore::Set(const std::string& key, std::string value) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    values_[key] = std::move(value);
  }
  cv_.notify_all();
}

void RendezvousStore::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

absl::StatusOr<std::vector<std::string>> RendezvousStore::Get(
    const std::vector<std::string>& keys, std::chrono::system_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  auto all_present = [&] {
    for (const std::string& k : keys) {
      if (values_.find(k) == values_.end()) return false;
    }
    return true;
  };
  const bool present = cv_.wait_until(lock, deadline, [&] { return closed_ || all_present(); });
  if (closed_) return absl::UnavailableError("the coordinator is stopping");
  if (!present) {
    std::vector<std::string> missing;
    for (const std::string& k : keys) {
      if (values_.find(k) == values_.end()) missing.push_back(k);
    }
    return absl::DeadlineExceededError(
        absl::StrCat("rendezvous keys not set in time: ", absl::StrJoin(missing, ", ")));
  }
  std::vector<std::string> out;
  for (const std::string& k : keys) out.push_back(values_.at(k));
  return out;
}

}  // namespace moemesh
