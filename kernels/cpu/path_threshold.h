// Measures from how many tokens per expert one CPU expert path beats another: the AMX threshold
// of ChoosePath (AMX against AVX-512), or any other pair (the tests time AVX-512 against
// scalar). Times GateUp + Down on one packed expert, on the calling thread, weights warm in
// cache. Nothing here sets thresholds: callers pass the result to SetAmxThreshold.
// Thread-safe: reads the packed expert only; uses its own buffers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/expert_ffn.h"

namespace moemesh::cpu {

struct PathThresholdOptions {
  std::vector<int64_t> tokens = {1, 2, 4, 8, 16, 32};  // ascending, each >= 1
  int reps = 5;  // timed calls per (path, token count) after one untimed; the median is kept
  // Weight bytes of the timed slice of the expert: GateUp over its first intermediate rows and
  // Down over its first output rows, each about half of this (at least one row block), so the
  // slice stays in the last-level cache and the routine stays fast. 0: the whole expert.
  // A slice of megabytes is what a pool task holds when experts have 8-32 tokens each (a
  // batch of hundreds of tokens: few tasks per expert), where the threshold matters.
  size_t max_weight_bytes = size_t{8} << 20;
  uint32_t seed = 1;  // of the random activations
};

struct PathTiming {
  int64_t tokens = 0;
  double seconds_a = 0;  // median seconds of one GateUp + Down call on the slice, path a
  double seconds_b = 0;  // the same for path b
};

struct PathThreshold {
  CpuPath a = CpuPath::kAmx;
  CpuPath b = CpuPath::kAvx512;
  // The smallest measured token count from which `a` is faster than `b` at it and at every
  // larger measured count; kNeverTokens when `a` is not faster at the largest count.
  int64_t from_tokens = kNeverTokens;
  std::vector<PathTiming> timings;  // one per options.tokens entry, in order
  int64_t gate_up_rows = 0;         // intermediate rows [0, gate_up_rows) timed in GateUp
  int64_t down_rows = 0;            // output rows [0, down_rows) timed in Down
  size_t weight_bytes = 0;          // packed bytes of the timed slice (approximately)
  double seconds = 0;               // wall time of the whole measurement
  bool never() const { return from_tokens == kNeverTokens; }
};

// The rule alone: the smallest `tokens` from which seconds_a < seconds_b in that entry and every
// later one (entries in ascending tokens); kNeverTokens when the last is not (or none).
int64_t ThresholdFromTimings(const std::vector<PathTiming>& timings);

// Times path `a` against path `b` on `expert` at each of options.tokens (the two interleaved
// call by call, so drift hits both) and finds the threshold. FAILED_PRECONDITION when a path is
// not supported here; INVALID_ARGUMENT for a == b, empty or unsorted token counts, counts < 1,
// reps < 1 or an empty expert. Cost: about (reps + 1) * sum(tokens) tokens of the slice per
// path: 8 MiB at up to 32 tokens is tens of milliseconds for AMX against AVX-512.
absl::StatusOr<PathThreshold> MeasurePathThreshold(const PackedExpert& expert, CpuPath a,
                                                   CpuPath b,
                                                   const PathThresholdOptions& options = {});

}  // namespace moemesh::cpu
