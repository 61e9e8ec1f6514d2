#include "model/generation/stop_text.h"

#include <algorithm>

namespace moemesh {

StopTextStream::StopTextStream(const Tokenizer& tokenizer, std::vector<std::string> stop_strings,
                               bool skip_special_tokens)
    : detok_(tokenizer, skip_special_tokens), stops_(std::move(stop_strings)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

size_t StopTextStream::HeldSuffix(const std::string& pending) const {
  // The longest suffix of `pending` that is a proper prefix of some stop string.
  size_t held = 0;
  for (const std::string& stop : stops_) {
    const size_t max_len = std::min(stop.size() - 1, pending.size());
    for (size_t len = max_len; len > held; --len) {
      if (pending.compare(pending.size() - len, len, stop, 0, len) == 0) {
        held = len;
        break;
      }
    }
  }
  return held;
}

std::string StopTextStream::Release(std::string text) {
  emitted_ += text;
  return text;
}

std::string StopTextStream::Push(int32_t token) {
  if (matched_) return {};
  pending_ += detok_.Push(token);
  // The earliest stop string wins; at equal positions the longest.
  size_t best = std::string::npos;
  const std::string* best_stop = nullptr;
  for (const std::string& stop : stops_) {
    const size_t pos = pending_.find(stop);
    if (pos == std::string::npos) continue;
    if (pos < best || (pos == best && stop.size() > best_stop->size())) {
      best = pos;
      best_stop = &stop;
    }
  }
  if (best_stop != nullptr) {
    matched_ = *best_stop;
    std::string out = pending_.substr(0, best);
    pending_.clear();
    return Release(std::move(out));
  }
  const size_t held = HeldSuffix(pending_);
  std::string out = pending_.substr(0, pending_.size() - held);
  pending_.erase(0, pending_.size() - held);
  return Release(std::move(out));
}

std::string StopTextStream::Finish() {
  if (matched_) return {};
  std::string out = pending_ + detok_.Flush();
  pending_.clear();
  return Release(std::move(out));
}

}  // namespace moemesh
