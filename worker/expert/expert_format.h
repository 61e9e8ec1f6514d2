// ExpertFormat: the weight formats an expert worker can hold, by the name the command line and
// the cluster protocol use ("fp32" = the reference pool, "bf16", "int8-g32", "int8-g128",
// "int4-g32", "int4-g128"), and what each costs per weight (for placement). No packing here
// (kernels/cpu does that). Thread-safe (stateless).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/expert_ffn.h"

namespace moemesh {

struct ExpertFormat {
  bool fp32 = false;   // the fp32 reference pool (kernels/ref); `spec` unused
  cpu::FormatSpec spec;
  std::string Name() const;
  // Resident bytes per weight of a large matrix: 4 (fp32), 2 (bf16), 1 + 8 / group (int8: a float
  // scale and an int32 group sum per group), 0.5 + 8 / group (int4). Padding is not counted.
  double BytesPerWeight() const;
};

// The names above; INVALID_ARGUMENT naming the value and listing the valid names otherwise.
absl::StatusOr<ExpertFormat> ParseExpertFormat(const std::string& name);
std::vector<std::string> ExpertFormatNames();

}  // namespace moemesh
