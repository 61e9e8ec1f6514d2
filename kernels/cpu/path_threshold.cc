// MeasurePathThreshold: GateUp + Down on a slice of one packed expert, two paths interleaved,
// the median of a few calls per (path, token count). Portable code: no instruction-set flags.
#include "kernels/cpu/path_threshold.h"

#include <algorithm>
#include <chrono>
#include <random>

#include "absl/strings/str_cat.h"

namespace moemesh::cpu {
namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

absl::Status CheckArgs(const PackedExpert& e, CpuPath a, CpuPath b,
                       const PathThresholdOptions& o) {
  for (CpuPath p : {a, b}) {
    if (!PathSupported(p)) {
      return absl::FailedPreconditionError(
          absl::StrCat("path threshold: path ", PathName(p), " is not supported on this CPU"));
    }
  }
  if (a == b) {
    return absl::InvalidArgumentError(
        absl::StrCat("path threshold: compares path ", PathName(a), " with itself"));
  }
  if (o.tokens.empty()) return absl::InvalidArgumentError("path threshold: no token counts");
  for (size_t i = 0; i < o.tokens.size(); ++i) {
    if (o.tokens[i] < 1 || (i > 0 && o.tokens[i] <= o.tokens[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("path threshold: token count ", i, " is ", o.tokens[i],
                       ", expected >= 1 and above the one before"));
    }
  }
  if (o.reps < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("path threshold: reps is ", o.reps, ", expected >= 1"));
  }
  if (e.hidden < 1 || e.intermediate < 1 || e.gate_up.data == nullptr || e.down.data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("path threshold: empty expert (hidden ", e.hidden, ", intermediate ",
                     e.intermediate, ")"));
  }
  return absl::OkStatus();
}

// Row blocks of the slice: as many as fit in `budget` bytes, at least 1, at most all (all for
// budget 0).
int64_t SliceBlocks(size_t budget, size_t bytes_per_block, int64_t max_blocks) {
  if (budget == 0 || bytes_per_block == 0) return max_blocks;
  return std::clamp<int64_t>(static_cast<int64_t>(budget / bytes_per_block), 1, max_blocks);
}

}  // namespace

int64_t ThresholdFromTimings(const std::vector<PathTiming>& timings) {
  int64_t from = kNeverTokens;
  for (size_t i = timings.size(); i-- > 0;) {
    if (!(timings[i].seconds_a < timings[i].seconds_b)) break;
    from = timings[i].tokens;
  }
  return from;
}

absl::StatusOr<PathThreshold> MeasurePathThreshold(const PackedExpert& e, CpuPath a, CpuPath b,
                                                   const PathThresholdOptions& o) {
  if (absl::Status s = CheckArgs(e, a, b, o); !s.ok()) return s;
  const auto start = Clock::now();
  PathThreshold r;
  r.a = a;
  r.b = b;

  // GateUp over 16 intermediate rows reads two packed row blocks (gate and up); Down over 16
  // output rows reads one. Half the budget each.
  const int64_t gu_blocks = e.gate_up.rows_padded / kRowBlock;  // 2 per 16 intermediate rows
  const int64_t down_blocks = e.down.rows_padded / kRowBlock;
  const size_t gu_block_bytes = e.gate_up.bytes() / static_cast<size_t>(gu_blocks);
  const size_t down_block_bytes = e.down.bytes() / static_cast<size_t>(down_blocks);
  const size_t half = o.max_weight_bytes == 0 ? 0 : std::max<size_t>(1, o.max_weight_bytes / 2);
  const int64_t i_blocks = SliceBlocks(half, 2 * gu_block_bytes, gu_blocks / 2);
  const int64_t o_blocks = SliceBlocks(half, down_block_bytes, down_blocks);
  r.gate_up_rows = std::min(e.intermediate, i_blocks * kRowBlock);
  r.down_rows = std::min(e.hidden, o_blocks * kRowBlock);
  r.weight_bytes = static_cast<size_t>(i_blocks) * 2 * gu_block_bytes +
                   static_cast<size_t>(o_blocks) * down_block_bytes;

  // Activations: x [n, H] and h [n, I] at unit scale (Down reads all I columns of h; GateUp
  // overwrites its slice's columns with values of the same scale).
  const int64_t max_n = o.tokens.back();
  std::mt19937 rng(o.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(max_n * e.hidden));
  std::vector<float> h(static_cast<size_t>(max_n * e.intermediate));
  for (float& v : x) v = normal(rng);
  for (float& v : h) v = 0.3f * normal(rng);
  std::vector<float> y(static_cast<size_t>(max_n * e.hidden), 0.0f);
  Scratch scratch;
  auto call = [&](CpuPath path, int64_t n) {
    const auto t0 = Clock::now();
    GateUp(e, x.data(), n, 0, r.gate_up_rows, h.data(), path, scratch);
    Down(e, h.data(), n, nullptr, 0, r.down_rows, y.data(), path, scratch);
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };

  for (int64_t n : o.tokens) {
    call(a, n);  // warm: weights into the cache, scratch grown, AMX tiles granted
    call(b, n);
    std::vector<double> ta, tb;
    for (int rep = 0; rep < o.reps; ++rep) {
      ta.push_back(call(a, n));
      tb.push_back(call(b, n));
    }
    r.timings.push_back({n, Median(ta), Median(tb)});
  }
  r.from_tokens = ThresholdFromTimings(r.timings);
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return r;
}

}  // namespace moemesh::cpu
