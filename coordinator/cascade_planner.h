// The cascade planner: each step, forms cascade levels (runtime/step_plan.h CascadeLevel) among
// the step's one-token sequences whose block tables start with the same physical blocks, and
// keeps a level only when the cost model (cascade_cost.h) says it beats flat attention (or
// always, or never, as configured). Pure functions and value types; no tensor math. Thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "coordinator/cascade_cost.h"
#include "runtime/step_plan.h"

namespace moemesh {

enum class CascadeMode {
  kAuto,  // per level and step from the cost model; flat when there is no calibration
  kOn,    // every level with a shared block (for testing the cascade path)
  kOff,   // always flat
};

// "auto", "on", "off"; INVALID_ARGUMENT otherwise.
absl::StatusOr<CascadeMode> ParseCascadeMode(const std::string& text);
const char* CascadeModeName(CascadeMode mode);

struct CascadeConfig {
  CascadeMode mode = CascadeMode::kAuto;
  // The attention shape of one rank (the cost model's), and the model's sliding window.
  int32_t q_heads_per_rank = 1;
  int32_t kv_heads_per_rank = 1;
  int32_t head_dim = 128;
  int64_t sliding_window = 0;                     // 0: none
  std::optional<CascadeCalibration> calibration;  // required for kAuto to pick cascade

  // INVALID_ARGUMENT naming the field when a shape field is < 1, the window < 0, or the
  // calibration fails its Validate.
  absl::Status Validate() const;
};

// One sequence of the step that may join a level.
struct CascadeSequence {
  uint64_t id = 0;
  absl::Span<const int32_t> blocks;  // its block table, including this step's new blocks
  int64_t position = 0;              // of its one query token (= the tokens cached before it)
};

// The levels for this step, outer (shallower) levels before the inner ones they contain.
// Candidates are the compressed trie of the tables over blocks entirely below each sequence's
// query (block i counts when (i + 1) * block_size <= position): every branch shared by at least
// two sequences is a candidate over [its start, its end). Walking down, a candidate the
// mode/cost model rejects is not emitted and its range is carried into its children's
// candidates, so every member's levels tile [0, its deepest end) and the shared blocks of a
// rejected outer level are still attended once through an accepted inner one. With a sliding
// window, a sequence whose window does not reach position 0 (position >= window) joins no level.
// Deterministic: depth-first (each accepted level is followed by the levels nested in it;
// sibling branches by ascending block id); members in input order.
std::vector<CascadeLevel> PlanCascade(absl::Span<const CascadeSequence> sequences,
                                      const CascadeConfig& config, int32_t block_size);

}  // namespace moemesh
