#include "absl/strings/str_join.h"
#include "model/arch/arch_spec.h"

namespace moemesh {

const std::vector<const ArchSpec*>& SupportedArchs() {
  static const std::vector<const ArchSpec*> archs = {&Qwen3MoeArch(), &MixtralArch(),
                                                     &Qwen2MoeArch(), &OlmoeArch()};
  return archs;
}

const ArchSpec* FindArch(absl::string_view model_type) {
  for (const ArchSpec* spec : SupportedArchs()) {
    if (spec->model_type == model_type) return spec;
  }
  return nullptr;
}

std::string SupportedArchList() {
  std::vector<absl::string_view> names;
  for (const ArchSpec* spec : SupportedArchs()) names.push_back(spec->model_type);
  return absl::StrJoin(names, ", ");
}

}  // namespace moemesh
