// The cascade cost model: for one cascade level in one step, is a prefix pass plus a merge
// cheaper than letting every member read the shared KV itself (flat decode)? Cascade saves
// (members - 1) * shared tokens * kv_heads_per_rank * 2 * head_dim * bytes per element of KV
// reads per layer and pays fixed costs (extra launches, the merge) that only a measurement on
// the GPU can tell: they come from a CascadeCalibration, which the GPU worker measures at
// start-up and which is stored as a small JSON file. Every layer has the same shape, so one
// layer decides for the step. Pure functions and value types; thread-safe.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moemesh {

// Measured constants of one GPU and attention implementation (seconds and bytes are per layer
// per rank). Fill from timings of the kernels the worker actually runs:
// - decode_bytes_per_second: KV bytes read / time of the flat decode kernel over a batch whose
//   KV is larger than L2 (no sharing);
// - prefix_bytes_per_second: shared KV bytes / time of the prefix pass alone, at few rows (its
//   parallelism is limited: one row tile per KV head when members x group <= the tile);
// - prefix_flops_per_second: 4 * rows * tokens * head_dim / time of the fused cascade launch at
//   kFewRowsPerKvHead rows (members x query heads) per KV head, and
//   wide_prefix_flops_per_second the same at kManyRowsPerKvHead rows, where the prefix work is
//   compute-bound and runs on wider tiles (0: not measured, the few-row rate applies to all);
//   between the two the rate is interpolated linearly in the rows per KV head;
// - level_seconds: time of (cascade - flat) on a tiny shared range, i.e. the launches and
//   merge pass one more level adds;
// - merge_seconds_per_row: the growth of that difference per (member x query head) row: the
//   partial output and LSE written, read back and merged.
struct CascadeCalibration {
  std::string device;                // for logs, e.g. "NVIDIA H100 80GB HBM3"
  int32_t kv_bytes_per_element = 2;  // bf16 KV cache
  double decode_bytes_per_second = 0;
  double prefix_bytes_per_second = 0;
  double prefix_flops_per_second = 0;
  double wide_prefix_flops_per_second = 0;
  double level_seconds = 0;
  double merge_seconds_per_row = 0;
  // Policy, not a measurement: cascade is chosen only when flat is predicted at least this many
  // times slower, the margin for the model's error (on an H200 its cascade estimate was 2x low
  // on one shape, because flat reads shared blocks from L2 after the first member). >= 1.
  double min_speedup = 1.5;

  // INVALID_ARGUMENT naming the field unless rates are > 0 (the wide rate >= 0) and times >= 0
  // (all finite) and kv_bytes_per_element is 1, 2 or 4.
  absl::Status Validate() const;

  // The prefix flop rate at `rows_per_kv_head` rows (see above).
  double PrefixFlopsPerSecond(double rows_per_kv_head) const;
};

// The rows per KV head at which the two prefix flop rates are measured.
inline constexpr int kFewRowsPerKvHead = 64;
inline constexpr int kManyRowsPerKvHead = 512;

// JSON form: an object with the fields above by name, e.g.
//   {"device": "NVIDIA H100 80GB HBM3", "kv_bytes_per_element": 2,
//    "decode_bytes_per_second": 2.6e12, "prefix_bytes_per_second": 2.0e12,
//    "prefix_flops_per_second": 5e14, "wide_prefix_flops_per_second": 6e14,
//    "level_seconds": 7e-6, "merge_seconds_per_row": 2e-9}
// Parsing fails with INVALID_ARGUMENT naming the missing or bad field (every measured field is
// required but wide_prefix_flops_per_second, which files written before it lack; device and
// min_speedup are optional), and runs Validate.
absl::StatusOr<CascadeCalibration> ParseCascadeCalibration(const std::string& json);
std::string CascadeCalibrationToJson(const CascadeCalibration& calibration);
// NOT_FOUND when the file cannot be read; otherwise as ParseCascadeCalibration (the message
// names the path).
absl::StatusOr<CascadeCalibration> LoadCascadeCalibration(const std::string& path);
absl::Status SaveCascadeCalibration(const CascadeCalibration& calibration, const std::string& path);

// One candidate level on one rank.
struct CascadeShape {
  int32_t members = 0;        // sequences sharing the range
  int64_t shared_tokens = 0;  // positions in the shared range
  int32_t q_heads_per_rank = 0;
  int32_t kv_heads_per_rank = 0;
  int32_t head_dim = 0;
};

struct CascadeEstimate {
  double saved_bytes = 0;      // (members - 1) * shared KV bytes, per layer
  double flat_seconds = 0;     // members reading the shared range themselves
  double cascade_seconds = 0;  // one prefix pass + level_seconds + merge rows
  bool cascade = false;        // flat_seconds >= min_speedup * cascade_seconds
};

// Flat: members * shared bytes / decode rate. Cascade: max(shared bytes / prefix rate,
// 4 * rows * tokens * head_dim / PrefixFlopsPerSecond(rows / kv_heads_per_rank)) +
// level_seconds + rows * merge_seconds_per_row, with rows = members * q_heads_per_rank and
// shared bytes = tokens *
// kv_heads_per_rank * 2 * head_dim * kv_bytes_per_element. The suffixes are read either way and
// cancel out. `calibration` must pass Validate (checked).
CascadeEstimate EstimateCascade(const CascadeShape& shape, const CascadeCalibration& calibration);

}  // namespace moemesh
