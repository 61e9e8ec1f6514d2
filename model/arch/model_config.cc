#include "model/arch/model_config.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"

namespace moemesh {
namespace {

using nlohmann::json;

// Reads config values with errors that name the file, the key and the value.
class ConfigReader {
 public:
  ConfigReader(const json& j, absl::string_view source) : j_(j), source_(source) {}

  bool Has(absl::string_view key) const {
    auto it = j_.find(std::string(key));
    return it != j_.end() && !it->is_null();
  }

  absl::StatusOr<int> Int(absl::string_view key, std::optional<int> fallback, int min_value) const {
    if (!Has(key)) {
      if (fallback) return *fallback;
      return Error(absl::StrCat("missing required key \"", key, "\""));
    }
    const json& v = j_.at(std::string(key));
    if (!v.is_number_integer()) return Error(absl::StrCat("\"", key, "\" = ", v.dump(), " is not an integer"));
    const int64_t x = v.get<int64_t>();
    if (x < min_value || x > (int64_t{1} << 30)) {
      return Error(absl::StrCat("\"", key, "\" = ", x, " is out of range [", min_value, ", 2^30]"));
    }
    return static_cast<int>(x);
  }

  absl::StatusOr<double> Number(absl::string_view key, double fallback, double min_exclusive) const {
    if (!Has(key)) return fallback;
    const json& v = j_.at(std::string(key));
    if (!v.is_number()) return Error(absl::StrCat("\"", key, "\" = ", v.dump(), " is not a number"));
    const double x = v.get<double>();
    if (!(x > min_exclusive)) {
      return Error(absl::StrCat("\"", key, "\" = ", v.dump(), " must be greater than ", min_exclusive));
    }
    return x;
  }

  absl::StatusOr<bool> Bool(absl::string_view key, bool fallback) const {
    if (!Has(key)) return fallback;
    const json& v = j_.at(std::string(key));
    if (!v.is_boolean()) return Error(absl::StrCat("\"", key, "\" = ", v.dump(), " is not a boolean"));
    return v.get<bool>();
  }

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", what));
  }

  const json& raw() const { return j_; }

 private:
  const json& j_;
  absl::string_view source_;
};

absl::Status ParseRopeScaling(const ConfigReader& r) {
  if (!r.Has("rope_scaling")) return absl::OkStatus();
  const json& rs = r.raw().at("rope_scaling");
  std::string type = "default";
  if (rs.is_object()) {
    if (rs.contains("rope_type") && rs["rope_type"].is_string()) type = rs["rope_type"].get<std::string>();
    else if (rs.contains("type") && rs["type"].is_string()) type = rs["type"].get<std::string>();
  }
  if (type != "default") {
    return r.Error(absl::StrCat("rope_scaling type \"", type,
                                "\" is not supported (supported: default, i.e. no scaling)"));
  }
  return absl::OkStatus();
}

absl::Status ParseLayerKinds(const ConfigReader& r, ModelConfig& c) {
  c.layer_is_moe.assign(c.num_layers, c.num_experts > 0);
  if (c.arch->moe_layers != MoeLayerRule::kSparseStep) return absl::OkStatus();
  MM_ASSIGN_OR_RETURN(int step, r.Int("decoder_sparse_step", 1, 1));
  std::vector<int> mlp_only;
  if (r.Has("mlp_only_layers")) {
    const json& v = r.raw().at("mlp_only_layers");
    if (!v.is_array()) return r.Error("\"mlp_only_layers\" is not a list");
    for (const json& e : v) {
      if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= c.num_layers) {
        return r.Error(absl::StrCat("\"mlp_only_layers\" entry ", e.dump(),
                                    " is not a layer index in [0, ", c.num_layers, ")"));
      }
      mlp_only.push_back(e.get<int>());
    }
  }
  for (int l = 0; l < c.num_layers; ++l) {
    const bool listed = std::find(mlp_only.begin(), mlp_only.end(), l) != mlp_only.end();
    c.layer_is_moe[l] = !listed && c.num_experts > 0 && (l + 1) % step == 0;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int ModelConfig::num_moe_layers() const {
  int n = 0;
  for (bool m : layer_is_moe) n += m ? 1 : 0;
  return n;
}

std::string ModelConfig::Summary() const {
  return absl::StrFormat(
      "%s: %d layers (%d MoE), hidden %d, heads %d/%d x %d, vocab %d, experts %d top-%d "
      "(width %d%s)",
      arch->display_name, num_layers, num_moe_layers(), hidden_size, num_heads, num_kv_heads,
      head_dim, vocab_size, num_experts, experts_per_token, expert_intermediate_size,
      shared_intermediate_size > 0 ? absl::StrCat(", shared ", shared_intermediate_size) : "");
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view text, absl::string_view source) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a valid JSON object"));
  }
  ConfigReader r(j, source);
  if (!j.contains("model_type") || !j["model_type"].is_string()) {
    return r.Error(absl::StrCat("missing \"model_type\" (supported: ", SupportedArchList(), ")"));
  }
  const std::string model_type = j["model_type"].get<std::string>();
  ModelConfig c;
  c.arch = FindArch(model_type);
  if (c.arch == nullptr) {
    return r.Error(absl::StrCat("unsupported architecture \"", model_type,
                                "\" (supported: ", SupportedArchList(), ")"));
  }
  const ArchSpec& a = *c.arch;
  MM_ASSIGN_OR_RETURN(c.hidden_size, r.Int("hidden_size", std::nullopt, 1));
  MM_ASSIGN_OR_RETURN(c.num_layers, r.Int("num_hidden_layers", std::nullopt, 1));
  MM_ASSIGN_OR_RETURN(c.num_heads, r.Int("num_attention_heads", std::nullopt, 1));
  MM_ASSIGN_OR_RETURN(c.num_kv_heads, r.Int("num_key_value_heads", c.num_heads, 1));
  if (c.num_heads % c.num_kv_heads != 0) {
    return r.Error(absl::StrCat("\"num_attention_heads\" = ", c.num_heads,
                                " is not a multiple of \"num_key_value_heads\" = ", c.num_kv_heads));
  }
  if (!r.Has("head_dim") && c.hidden_size % c.num_heads != 0) {
    return r.Error(absl::StrCat("no \"head_dim\" and \"hidden_size\" = ", c.hidden_size,
                                " is not a multiple of \"num_attention_heads\" = ", c.num_heads));
  }
  MM_ASSIGN_OR_RETURN(c.head_dim, r.Int("head_dim", c.hidden_size / c.num_heads, 2));
  if (c.head_dim % 2 != 0) return r.Error(absl::StrCat("\"head_dim\" = ", c.head_dim, " must be even for RoPE"));
  MM_ASSIGN_OR_RETURN(c.vocab_size, r.Int("vocab_size", std::nullopt, 1));
  MM_ASSIGN_OR_RETURN(c.max_position_embeddings, r.Int("max_position_embeddings", 4096, 1));
  MM_ASSIGN_OR_RETURN(double eps, r.Number("rms_norm_eps", a.default_rms_eps, 0.0));
  c.rms_norm_eps = static_cast<float>(eps);
  MM_ASSIGN_OR_RETURN(double theta, r.Number("rope_theta", a.default_rope_theta, 0.0));
  c.rope_theta = static_cast<float>(theta);
  MM_RETURN_IF_ERROR(ParseRopeScaling(r));
  MM_ASSIGN_OR_RETURN(c.tie_word_embeddings, r.Bool("tie_word_embeddings", false));
  if (!a.key_attention_bias.empty()) {
    MM_ASSIGN_OR_RETURN(c.attention_bias, r.Bool(a.key_attention_bias, a.attention_bias_default));
  }
  if (a.has_clip_qkv && r.Has("clip_qkv")) {
    MM_ASSIGN_OR_RETURN(double clip, r.Number("clip_qkv", 0.0, 0.0));
    c.clip_qkv = static_cast<float>(clip);
  }
  MM_ASSIGN_OR_RETURN(bool use_window, r.Bool("use_sliding_window", false));
  if (use_window) return r.Error("\"use_sliding_window\" = true is not supported");
  if (r.Has("sliding_window")) {
    if (!a.supports_sliding_window) {
      // Qwen configs carry "sliding_window" even when it is off; only Mixtral applies it.
    } else {
      MM_ASSIGN_OR_RETURN(int window, r.Int("sliding_window", 0, 1));
      c.sliding_window = window;
    }
  }

  MM_ASSIGN_OR_RETURN(c.num_experts, r.Int(a.key_num_experts, std::nullopt, 1));
  MM_ASSIGN_OR_RETURN(c.experts_per_token, r.Int("num_experts_per_tok", std::nullopt, 1));
  if (c.experts_per_token > c.num_experts) {
    return r.Error(absl::StrCat("\"num_experts_per_tok\" = ", c.experts_per_token, " exceeds \"",
                                a.key_num_experts, "\" = ", c.num_experts));
  }
  MM_ASSIGN_OR_RETURN(c.expert_intermediate_size, r.Int(a.key_expert_intermediate, std::nullopt, 1));
  MM_ASSIGN_OR_RETURN(c.dense_intermediate_size, r.Int("intermediate_size", 0, 0));
  if (!a.key_shared_intermediate.empty()) {
    MM_ASSIGN_OR_RETURN(c.shared_intermediate_size, r.Int(a.key_shared_intermediate, 0, 0));
  }
  if (a.has_norm_topk_flag) {
    MM_ASSIGN_OR_RETURN(c.norm_topk_prob, r.Bool("norm_topk_prob", a.norm_topk_default));
  } else {
    c.norm_topk_prob = a.norm_topk_default;
  }
  MM_RETURN_IF_ERROR(ParseLayerKinds(r, c));
  if (c.num_moe_layers() < c.num_layers && c.dense_intermediate_size <= 0) {
    return r.Error("dense (non-MoE) layers need \"intermediate_size\" > 0");
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  MM_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseModelConfig(text, path);
}

absl::StatusOr<GenerationDefaults> LoadGenerationDefaults(const std::string& model_dir) {
  GenerationDefaults d;
  const std::string path = (std::filesystem::path(model_dir) / "generation_config.json").string();
  if (!std::filesystem::exists(path)) return d;
  MM_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a valid JSON object"));
  }
  auto bad = [&](absl::string_view key) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": \"", key, "\" = ", j[std::string(key)].dump(), " has the wrong type"));
  };
  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    const json& e = j["eos_token_id"];
    if (e.is_number_integer()) {
      d.eos_token_ids.push_back(e.get<int32_t>());
    } else if (e.is_array()) {
      for (const json& x : e) {
        if (!x.is_number_integer()) return bad("eos_token_id");
        d.eos_token_ids.push_back(x.get<int32_t>());
      }
    } else {
      return bad("eos_token_id");
    }
  }
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) {
    d.bos_token_id = j["bos_token_id"].get<int32_t>();
  }
  const bool do_sample = j.contains("do_sample") && j["do_sample"].is_boolean() && j["do_sample"].get<bool>();
  if (do_sample) {
    if (j.contains("temperature") && j["temperature"].is_number()) d.temperature = j["temperature"].get<float>();
    if (j.contains("top_p") && j["top_p"].is_number()) d.top_p = j["top_p"].get<float>();
    if (j.contains("top_k") && j["top_k"].is_number_integer()) d.top_k = j["top_k"].get<int32_t>();
  }
  if (j.contains("repetition_penalty") && j["repetition_penalty"].is_number()) {
    d.repetition_penalty = j["repetition_penalty"].get<float>();
  }
  return d;
}

}  // namespace moemesh
