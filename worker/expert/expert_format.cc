#include "worker/expert/expert_format.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moemesh {

std::string ExpertFormat::Name() const { return fp32 ? "fp32" : spec.Name(); }

double ExpertFormat::BytesPerWeight() const {
  if (fp32) return 4.0;
  const double per_group = 8.0 / spec.group;  // float scale + int32 sum
  switch (spec.format) {
    case cpu::WeightFormat::kBf16:
      return 2.0;
    case cpu::WeightFormat::kInt8:
      return 1.0 + per_group;
    case cpu::WeightFormat::kInt4:
      return 0.5 + per_group;
  }
  return 2.0;
}

std::vector<std::string> ExpertFormatNames() {
  return {"bf16", "int8-g32", "int8-g128", "int4-g32", "int4-g128", "fp32"};
}

absl::StatusOr<ExpertFormat> ParseExpertFormat(const std::string& name) {
  ExpertFormat f;
  if (name == "fp32") {
    f.fp32 = true;
    return f;
  }
  absl::StatusOr<cpu::FormatSpec> spec = cpu::ParseFormat(name);
  if (!spec.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("expert weight format \"", name,
                                                   "\" is not one of ",
                                                   absl::StrJoin(ExpertFormatNames(), ", ")));
  }
  f.spec = *spec;
  return f;
}

}  // namespace moemesh
