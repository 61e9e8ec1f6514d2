#include "coordinator/cascade_planner.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {
namespace {

class Planner {
 public:
  Planner(absl::Span<const CascadeSequence> seqs, const CascadeConfig& config, int32_t block_size)
      : seqs_(seqs), config_(config), block_size_(block_size), eligible_(seqs.size(), 0) {
    for (size_t i = 0; i < seqs.size(); ++i) {
      const CascadeSequence& s = seqs[i];
      if (config.sliding_window > 0 && s.position >= config.sliding_window) continue;
      eligible_[i] = static_cast<int32_t>(
          std::min<int64_t>(s.position / block_size, static_cast<int64_t>(s.blocks.size())));
    }
  }

  std::vector<CascadeLevel> Plan() {
    std::vector<int> all;
    for (size_t i = 0; i < seqs_.size(); ++i) {
      if (eligible_[i] > 0) all.push_back(static_cast<int>(i));
    }
    Recurse(all, 0, 0);
    return std::move(levels_);
  }

 private:
  // `members` share blocks [0, depth); an accepted ancestor level ends at `pending`.
  void Recurse(const std::vector<int>& members, int32_t depth, int32_t pending) {
    std::map<int32_t, std::vector<int>> groups;  // by block id at `depth`, members in input order
    for (int m : members) {
      if (eligible_[m] > depth) groups[seqs_[m].blocks[depth]].push_back(m);
    }
    for (const auto& [block, group] : groups) {
      if (group.size() < 2) continue;
      int32_t end = depth + 1;
      while (SharedAt(group, end)) ++end;
      if (Accept(static_cast<int32_t>(group.size()), end - pending)) {
        CascadeLevel level;
        for (int m : group) level.members.push_back(seqs_[m].id);
        level.block_begin = pending;
        level.block_end = end;
        levels_.push_back(std::move(level));
        Recurse(group, end, end);
      } else {
        Recurse(group, end, pending);
      }
    }
  }

  // Whether every member has an eligible block `index` and they are all the same.
  bool SharedAt(const std::vector<int>& group, int32_t index) const {
    for (int m : group) {
      if (eligible_[m] <= index) return false;
      if (seqs_[m].blocks[index] != seqs_[group[0]].blocks[index]) return false;
    }
    return true;
  }

  bool Accept(int32_t members, int32_t blocks) const {
    switch (config_.mode) {
      case CascadeMode::kOn:
        return blocks > 0;
      case CascadeMode::kOff:
        return false;
      case CascadeMode::kAuto:
        break;
    }
    if (!config_.calibration.has_value()) return false;
    CascadeShape shape;
    shape.members = members;
    shape.shared_tokens = static_cast<int64_t>(blocks) * block_size_;
    shape.q_heads_per_rank = config_.q_heads_per_rank;
    shape.kv_heads_per_rank = config_.kv_heads_per_rank;
    shape.head_dim = config_.head_dim;
    return EstimateCascade(shape, *config_.calibration).cascade;
  }

  absl::Span<const CascadeSequence> seqs_;
  const CascadeConfig& config_;
  const int32_t block_size_;
  std::vector<int32_t> eligible_;  // blocks of each table a level may cover
  std::vector<CascadeLevel> levels_;
};

}  // namespace

absl::StatusOr<CascadeMode> ParseCascadeMode(const std::string& text) {
  if (text == "auto") return CascadeMode::kAuto;
  if (text == "on") return CascadeMode::kOn;
  if (text == "off") return CascadeMode::kOff;
  return absl::InvalidArgumentError(
      absl::StrCat("cascade mode \"", text, "\" is not one of auto, on, off"));
}

const char* CascadeModeName(CascadeMode mode) {
  switch (mode) {
    case CascadeMode::kAuto:
      return "auto";
    case CascadeMode::kOn:
      return "on";
    case CascadeMode::kOff:
      return "off";
  }
  return "?";
}

absl::Status CascadeConfig::Validate() const {
  auto at_least_one = [](const char* field, int64_t v) -> absl::Status {
    if (v >= 1) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("cascade.", field, " = ", v, " must be >= 1"));
  };
  MM_RETURN_IF_ERROR(at_least_one("q_heads_per_rank", q_heads_per_rank));
  MM_RETURN_IF_ERROR(at_least_one("kv_heads_per_rank", kv_heads_per_rank));
  MM_RETURN_IF_ERROR(at_least_one("head_dim", head_dim));
  if (sliding_window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cascade.sliding_window = ", sliding_window, " must be >= 0"));
  }
  if (calibration.has_value()) MM_RETURN_IF_ERROR(calibration->Validate());
  return absl::OkStatus();
}

std::vector<CascadeLevel> PlanCascade(absl::Span<const CascadeSequence> sequences,
                                      const CascadeConfig& config, int32_t block_size) {
  MM_CHECK(block_size >= 1);
  if (config.mode == CascadeMode::kOff) return {};
  if (config.mode == CascadeMode::kAuto && !config.calibration.has_value()) return {};
  return Planner(sequences, config, block_size).Plan();
}

}  // namespace moemesh
