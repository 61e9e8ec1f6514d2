#include "coordinator/cascade_cost.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {
namespace {

absl::Status Positive(const char* field, double value) {
  if (std::isfinite(value) && value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("cascade calibration: ", field, " = ", value, " must be a finite number > 0"));
}

absl::Status NonNegative(const char* field, double value) {
  if (std::isfinite(value) && value >= 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("cascade calibration: ", field, " = ", value, " must be a finite number >= 0"));
}

absl::StatusOr<double> Number(const nlohmann::json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end()) {
    return absl::InvalidArgumentError(absl::StrCat("cascade calibration: missing \"", field, "\""));
  }
  if (!it->is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cascade calibration: \"", field, "\" is not a number: ", it->dump()));
  }
  return it->get<double>();
}

}  // namespace

absl::Status CascadeCalibration::Validate() const {
  if (kv_bytes_per_element != 1 && kv_bytes_per_element != 2 && kv_bytes_per_element != 4) {
    return absl::InvalidArgumentError(absl::StrCat("cascade calibration: kv_bytes_per_element = ",
                                                   kv_bytes_per_element, " must be 1, 2 or 4"));
  }
  MM_RETURN_IF_ERROR(Positive("decode_bytes_per_second", decode_bytes_per_second));
  MM_RETURN_IF_ERROR(Positive("prefix_bytes_per_second", prefix_bytes_per_second));
  MM_RETURN_IF_ERROR(Positive("prefix_flops_per_second", prefix_flops_per_second));
  MM_RETURN_IF_ERROR(NonNegative("wide_prefix_flops_per_second", wide_prefix_flops_per_second));
  MM_RETURN_IF_ERROR(NonNegative("level_seconds", level_seconds));
  MM_RETURN_IF_ERROR(NonNegative("merge_seconds_per_row", merge_seconds_per_row));
  if (!(min_speedup >= 1.0) || !std::isfinite(min_speedup)) {
    return absl::InvalidArgumentError(absl::StrCat("cascade calibration: min_speedup = ",
                                                   min_speedup, " must be finite and >= 1"));
  }
  return absl::OkStatus();
}

double CascadeCalibration::PrefixFlopsPerSecond(double rows_per_kv_head) const {
  if (wide_prefix_flops_per_second <= 0) return prefix_flops_per_second;
  const double t = std::clamp((rows_per_kv_head - kFewRowsPerKvHead) /
                                  (kManyRowsPerKvHead - kFewRowsPerKvHead),
                              0.0, 1.0);
  return prefix_flops_per_second + t * (wide_prefix_flops_per_second - prefix_flops_per_second);
}

absl::StatusOr<CascadeCalibration> ParseCascadeCalibration(const std::string& json) {
  const nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("cascade calibration: not a JSON object");
  }
  CascadeCalibration c;
  if (auto it = j.find("device"); it != j.end()) {
    if (!it->is_string()) {
      return absl::InvalidArgumentError("cascade calibration: \"device\" is not a string");
    }
    c.device = it->get<std::string>();
  }
  MM_ASSIGN_OR_RETURN(const double bytes, Number(j, "kv_bytes_per_element"));
  if (bytes != std::floor(bytes) || bytes < 0 || bytes > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("cascade calibration: kv_bytes_per_element = ", bytes, " must be 1, 2 or 4"));
  }
  c.kv_bytes_per_element = static_cast<int32_t>(bytes);
  MM_ASSIGN_OR_RETURN(c.decode_bytes_per_second, Number(j, "decode_bytes_per_second"));
  MM_ASSIGN_OR_RETURN(c.prefix_bytes_per_second, Number(j, "prefix_bytes_per_second"));
  MM_ASSIGN_OR_RETURN(c.prefix_flops_per_second, Number(j, "prefix_flops_per_second"));
  if (j.contains("wide_prefix_flops_per_second")) {
    MM_ASSIGN_OR_RETURN(c.wide_prefix_flops_per_second,
                        Number(j, "wide_prefix_flops_per_second"));
  }
  MM_ASSIGN_OR_RETURN(c.level_seconds, Number(j, "level_seconds"));
  MM_ASSIGN_OR_RETURN(c.merge_seconds_per_row, Number(j, "merge_seconds_per_row"));
  if (j.contains("min_speedup")) {
    MM_ASSIGN_OR_RETURN(c.min_speedup, Number(j, "min_speedup"));
  }
  MM_RETURN_IF_ERROR(c.Validate());
  return c;
}

std::string CascadeCalibrationToJson(const CascadeCalibration& c) {
  nlohmann::json j;
  j["device"] = c.device;
  j["kv_bytes_per_element"] = c.kv_bytes_per_element;
  j["decode_bytes_per_second"] = c.decode_bytes_per_second;
  j["prefix_bytes_per_second"] = c.prefix_bytes_per_second;
  j["prefix_flops_per_second"] = c.prefix_flops_per_second;
  j["wide_prefix_flops_per_second"] = c.wide_prefix_flops_per_second;
  j["level_seconds"] = c.level_seconds;
  j["merge_seconds_per_row"] = c.merge_seconds_per_row;
  j["min_speedup"] = c.min_speedup;
  return j.dump(2) + "\n";
}

absl::StatusOr<CascadeCalibration> LoadCascadeCalibration(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read cascade calibration file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<CascadeCalibration> c = ParseCascadeCalibration(ss.str());
  if (!c.ok())
    return absl::Status(c.status().code(), absl::StrCat(path, ": ", c.status().message()));
  return c;
}

absl::Status SaveCascadeCalibration(const CascadeCalibration& calibration,
                                    const std::string& path) {
  MM_RETURN_IF_ERROR(calibration.Validate());
  std::ofstream out(path);
  out << CascadeCalibrationToJson(calibration);
  out.close();
  if (!out)
    return absl::InternalError(absl::StrCat("cannot write cascade calibration file ", path));
  return absl::OkStatus();
}

CascadeEstimate EstimateCascade(const CascadeShape& s, const CascadeCalibration& c) {
  MM_CHECK(c.Validate().ok());
  MM_CHECK(s.members >= 0 && s.shared_tokens >= 0 && s.q_heads_per_rank > 0 &&
           s.kv_heads_per_rank > 0 && s.head_dim > 0);
  const double shared_bytes = static_cast<double>(s.shared_tokens) * s.kv_heads_per_rank * 2.0 *
                              s.head_dim * c.kv_bytes_per_element;
  const double rows = static_cast<double>(s.members) * s.q_heads_per_rank;
  const double flops = 4.0 * rows * static_cast<double>(s.shared_tokens) * s.head_dim;
  CascadeEstimate e;
  e.saved_bytes = std::max(0, s.members - 1) * shared_bytes;
  e.flat_seconds = s.members * shared_bytes / c.decode_bytes_per_second;
  e.cascade_seconds =
      std::max(shared_bytes / c.prefix_bytes_per_second,
               flops / c.PrefixFlopsPerSecond(rows / s.kv_heads_per_rank)) +
      c.level_seconds + rows * c.merge_seconds_per_row;
  e.cascade = s.members >= 2 && s.shared_tokens > 0 &&
              e.flat_seconds >= c.min_speedup * e.cascade_seconds;
  return e;
}

}  // namespace moemesh
