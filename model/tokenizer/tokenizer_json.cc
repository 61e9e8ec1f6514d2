#include "model/tokenizer/tokenizer_json.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

using Json = nlohmann::json;

// Shortened JSON rendering of a value for error messages.
std::string Show(const Json& v) {
  std::string s = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  return s.size() > 120 ? s.substr(0, 117) + "..." : s;
}

class Parser {
 public:
  explicit Parser(std::string_view source) : source_(source) {}

  absl::Status Error(const std::string& path, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", path, ": ", what));
  }
  absl::Status Unsupported(const std::string& path, const Json& v, const std::string& supported) const {
    return Error(path, absl::StrCat("unsupported value ", Show(v), "; supported: ", supported));
  }

  // A member that must be an object.
  absl::StatusOr<const Json*> Object(const Json& parent, const std::string& parent_path,
                                     const char* key) const {
    std::string path = Path(parent_path, key);
    auto it = parent.find(key);
    if (it == parent.end()) return Error(path, "missing");
    if (!it->is_object()) return Error(path, absl::StrCat("expected an object, got ", Show(*it)));
    return &*it;
  }
  // A string member; `type` checks use this.
  absl::StatusOr<std::string> String(const Json& parent, const std::string& parent_path,
                                     const char* key) const {
    std::string path = Path(parent_path, key);
    auto it = parent.find(key);
    if (it == parent.end()) return Error(path, "missing");
    if (!it->is_string()) return Error(path, absl::StrCat("expected a string, got ", Show(*it)));
    return it->get<std::string>();
  }
  // A boolean member, `fallback` when absent or null.
  absl::StatusOr<bool> Bool(const Json& parent, const std::string& parent_path, const char* key,
                            bool fallback) const {
    auto it = parent.find(key);
    if (it == parent.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) {
      return Error(Path(parent_path, key), absl::StrCat("expected true/false, got ", Show(*it)));
    }
    return it->get<bool>();
  }
  absl::StatusOr<int32_t> Id(const Json& v, const std::string& path) const {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
      return Error(path, absl::StrCat("expected a token id in [0, 2^31), got ", Show(v)));
    }
    return static_cast<int32_t>(v.get<int64_t>());
  }

  static std::string Path(const std::string& parent, const std::string& key) {
    return parent.empty() ? std::string(key) : absl::StrCat(parent, ".", key);
  }

  absl::Status ParseModel(const Json& root, TokenizerSpec& spec) const {
    MM_ASSIGN_OR_RETURN(const Json* model, Object(root, "", "model"));
    auto type_it = model->find("type");
    if (type_it != model->end() && !(type_it->is_string() && *type_it == "BPE")) {
      return Unsupported("model.type", *type_it, "\"BPE\" (WordPiece, Unigram and WordLevel are not)");
    }
    if (type_it == model->end() && !model->contains("merges")) {
      return Error("model.type", "missing, and the model has no merges (only BPE is supported)");
    }
    for (const char* key : {"unk_token", "continuing_subword_prefix", "end_of_word_suffix"}) {
      auto it = model->find(key);
      if (it != model->end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty())) {
        return Unsupported(Path("model", key), *it, "null");
      }
    }
    auto dropout = model->find("dropout");
    if (dropout != model->end() && !dropout->is_null() &&
        !(dropout->is_number() && dropout->get<double>() == 0.0)) {
      return Unsupported("model.dropout", *dropout, "null");
    }
    MM_ASSIGN_OR_RETURN(bool byte_fallback, Bool(*model, "model", "byte_fallback", false));
    if (byte_fallback) return Unsupported("model.byte_fallback", true, "false");
    MM_ASSIGN_OR_RETURN(spec.bpe.ignore_merges, Bool(*model, "model", "ignore_merges", false));

    MM_ASSIGN_OR_RETURN(const Json* vocab, Object(*model, "model", "vocab"));
    spec.bpe.vocab.reserve(vocab->size());
    for (auto it = vocab->begin(); it != vocab->end(); ++it) {
      MM_ASSIGN_OR_RETURN(int32_t id, Id(it.value(), absl::StrCat("model.vocab[\"", it.key(), "\"]")));
      spec.bpe.vocab.emplace_back(it.key(), id);
    }

    auto merges = model->find("merges");
    if (merges == model->end()) return Error("model.merges", "missing");
    if (!merges->is_array()) return Error("model.merges", absl::StrCat("expected an array, got ", Show(*merges)));
    spec.bpe.merges.reserve(merges->size());
    for (size_t i = 0; i < merges->size(); ++i) {
      const Json& m = (*merges)[i];
      std::string path = absl::StrFormat("model.merges[%d]", i);
      if (m.is_string()) {
        std::string s = m.get<std::string>();
        size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          return Error(path, absl::StrCat("expected \"a b\" (two tokens, one space), got ", Show(m)));
        }
        spec.bpe.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        spec.bpe.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        return Error(path, absl::StrCat("expected \"a b\" or [\"a\", \"b\"], got ", Show(m)));
      }
    }
    return absl::OkStatus();
  }

  absl::Status ParseAddedTokens(const Json& root, TokenizerSpec& spec) const {
    auto it = root.find("added_tokens");
    if (it == root.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_array()) return Error("added_tokens", absl::StrCat("expected an array, got ", Show(*it)));
    for (size_t i = 0; i < it->size(); ++i) {
      const Json& t = (*it)[i];
      std::string path = absl::StrFormat("added_tokens[%d]", i);
      if (!t.is_object()) return Error(path, absl::StrCat("expected an object, got ", Show(t)));
      AddedToken token;
      auto id = t.find("id");
      if (id == t.end()) return Error(path + ".id", "missing");
      MM_ASSIGN_OR_RETURN(token.id, Id(*id, path + ".id"));
      MM_ASSIGN_OR_RETURN(token.content, String(t, path, "content"));
      if (token.content.empty()) return Error(path + ".content", "empty");
      MM_ASSIGN_OR_RETURN(token.special, Bool(t, path, "special", false));
      MM_ASSIGN_OR_RETURN(token.lstrip, Bool(t, path, "lstrip", false));
      MM_ASSIGN_OR_RETURN(token.rstrip, Bool(t, path, "rstrip", false));
      MM_ASSIGN_OR_RETURN(token.normalized, Bool(t, path, "normalized", !token.special));
      MM_ASSIGN_OR_RETURN(token.single_word, Bool(t, path, "single_word", false));
      spec.added_tokens.push_back(std::move(token));
    }
    return absl::OkStatus();
  }

  absl::Status ParseNormalizer(const Json& n, const std::string& path, TokenizerSpec& spec) const {
    if (n.is_null()) return absl::OkStatus();
    if (!n.is_object()) return Error(path, absl::StrCat("expected an object or null, got ", Show(n)));
    MM_ASSIGN_OR_RETURN(std::string type, String(n, path, "type"));
    if (type == "NFC") {
      spec.nfc = true;
      return absl::OkStatus();
    }
    if (type == "Sequence") {
      auto list = n.find("normalizers");
      std::string list_path = Path(path, "normalizers");
      if (list == n.end() || !list->is_array()) return Error(list_path, "expected an array");
      for (size_t i = 0; i < list->size(); ++i) {
        MM_RETURN_IF_ERROR(ParseNormalizer((*list)[i], absl::StrFormat("%s[%d]", list_path, i), spec));
      }
      return absl::OkStatus();
    }
    return Unsupported(Path(path, "type"), type, "null, \"NFC\", \"Sequence\" of those");
  }

  absl::Status ParsePreTokenizer(const Json& p, const std::string& path, TokenizerSpec& spec) const {
    if (!p.is_object()) return Error(path, absl::StrCat("expected an object, got ", Show(p)));
    MM_ASSIGN_OR_RETURN(std::string type, String(p, path, "type"));
    PreTokenizerStep step;
    if (type == "Sequence") {
      auto list = p.find("pretokenizers");
      std::string list_path = Path(path, "pretokenizers");
      if (list == p.end() || !list->is_array()) return Error(list_path, "expected an array");
      for (size_t i = 0; i < list->size(); ++i) {
        MM_RETURN_IF_ERROR(ParsePreTokenizer((*list)[i], absl::StrFormat("%s[%d]", list_path, i), spec));
      }
      return absl::OkStatus();
    }
    if (type == "ByteLevel") {
      step.kind = PreTokenizerStep::Kind::kByteLevel;
      MM_ASSIGN_OR_RETURN(step.add_prefix_space, Bool(p, path, "add_prefix_space", true));
      MM_ASSIGN_OR_RETURN(step.use_regex, Bool(p, path, "use_regex", true));
    } else if (type == "Split") {
      MM_ASSIGN_OR_RETURN(const Json* pattern, Object(p, path, "pattern"));
      std::string pattern_path = Path(path, "pattern");
      auto regex = pattern->find("Regex");
      if (regex == pattern->end() || !regex->is_string()) {
        return Unsupported(pattern_path, *pattern, "{\"Regex\": <the GPT-2, Qwen2 or Llama-3 pattern>}");
      }
      auto known = RecognizeSplitPattern(regex->get<std::string>());
      if (!known) {
        return Unsupported(pattern_path + ".Regex", *regex, "the exact GPT-2, Qwen2 or Llama-3 pattern");
      }
      step.pattern = *known;
      MM_ASSIGN_OR_RETURN(std::string behavior, String(p, path, "behavior"));
      if (behavior != "Isolated") return Unsupported(Path(path, "behavior"), behavior, "\"Isolated\"");
      MM_ASSIGN_OR_RETURN(bool invert, Bool(p, path, "invert", false));
      if (invert) return Unsupported(Path(path, "invert"), true, "false");
    } else {
      return Unsupported(Path(path, "type"), type, "\"ByteLevel\", \"Split\", \"Sequence\" of those");
    }
    if (!spec.pre_tokenizer.empty() &&
        spec.pre_tokenizer.back().kind == PreTokenizerStep::Kind::kByteLevel) {
      return Error(path, "nothing may follow the ByteLevel pre-tokenizer");
    }
    spec.pre_tokenizer.push_back(step);
    return absl::OkStatus();
  }

  // Maps special token names of TemplateProcessing to their ids.
  absl::Status ParsePostProcessor(const Json& p, const std::string& path, TokenizerSpec& spec) const {
    if (p.is_null()) return absl::OkStatus();
    if (!p.is_object()) return Error(path, absl::StrCat("expected an object or null, got ", Show(p)));
    MM_ASSIGN_OR_RETURN(std::string type, String(p, path, "type"));
    if (type == "ByteLevel") return absl::OkStatus();  // Only adjusts offsets.
    if (type == "Sequence") {
      auto list = p.find("processors");
      std::string list_path = Path(path, "processors");
      if (list == p.end() || !list->is_array()) return Error(list_path, "expected an array");
      for (size_t i = 0; i < list->size(); ++i) {
        MM_RETURN_IF_ERROR(ParsePostProcessor((*list)[i], absl::StrFormat("%s[%d]", list_path, i), spec));
      }
      return absl::OkStatus();
    }
    if (type != "TemplateProcessing") {
      return Unsupported(Path(path, "type"), type,
                         "null, \"ByteLevel\", \"TemplateProcessing\", \"Sequence\" of those");
    }
    if (!spec.single_template.empty()) return Error(path, "a second TemplateProcessing is not supported");
    std::string single_path = Path(path, "single");
    auto single = p.find("single");
    if (single == p.end() || !single->is_array()) return Error(single_path, "expected an array");
    MM_ASSIGN_OR_RETURN(const Json* specials, Object(p, path, "special_tokens"));
    bool has_sequence = false;
    for (size_t i = 0; i < single->size(); ++i) {
      const Json& piece = (*single)[i];
      std::string piece_path = absl::StrFormat("%s[%d]", single_path, i);
      TemplatePiece out;
      if (piece.contains("Sequence")) {
        out.is_sequence = true;
        const Json& seq = piece["Sequence"];
        if (!seq.is_object() || seq.value("id", "") != "A") {
          return Unsupported(piece_path + ".Sequence", seq, "{\"id\": \"A\"} in the single template");
        }
        has_sequence = true;
      } else if (piece.contains("SpecialToken")) {
        MM_ASSIGN_OR_RETURN(std::string name, String(piece["SpecialToken"], piece_path + ".SpecialToken", "id"));
        std::string special_path = absl::StrCat(path, ".special_tokens[\"", name, "\"]");
        auto entry = specials->find(name);
        if (entry == specials->end()) return Error(special_path, "missing (used by " + piece_path + ")");
        auto ids = entry->find("ids");
        if (ids == entry->end() || !ids->is_array()) return Error(special_path + ".ids", "expected an array");
        for (size_t k = 0; k < ids->size(); ++k) {
          MM_ASSIGN_OR_RETURN(int32_t id, Id((*ids)[k], absl::StrFormat("%s.ids[%d]", special_path, k)));
          out.ids.push_back(id);
        }
      } else {
        return Unsupported(piece_path, piece, "{\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
      spec.single_template.push_back(std::move(out));
    }
    if (!has_sequence) return Error(single_path, "has no {\"Sequence\": {\"id\": \"A\"}} element");
    return absl::OkStatus();
  }

  absl::Status ParseDecoder(const Json& root) const {
    auto it = root.find("decoder");
    if (it == root.end() || !it->is_object()) {
      return Unsupported("decoder", it == root.end() ? Json() : *it, "{\"type\": \"ByteLevel\"}");
    }
    MM_ASSIGN_OR_RETURN(std::string type, String(*it, "decoder", "type"));
    if (type != "ByteLevel") return Unsupported("decoder.type", type, "\"ByteLevel\"");
    return absl::OkStatus();
  }

 private:
  std::string source_;
};

}  // namespace

absl::StatusOr<TokenizerSpec> ParseTokenizerJson(std::string_view json, std::string_view source) {
  Json root;
  try {
    root = Json::parse(json.begin(), json.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(source), ": not valid JSON: ", e.what()));
  }
  Parser parser(source);
  if (!root.is_object()) return parser.Error("(root)", "expected a JSON object");
  TokenizerSpec spec;
  try {
    MM_RETURN_IF_ERROR(parser.ParseModel(root, spec));
    MM_RETURN_IF_ERROR(parser.ParseAddedTokens(root, spec));
    MM_RETURN_IF_ERROR(parser.ParseNormalizer(root.value("normalizer", Json()), "normalizer", spec));
    auto pre = root.find("pre_tokenizer");
    if (pre == root.end() || pre->is_null()) {
      return parser.Error("pre_tokenizer", "missing; a ByteLevel pre-tokenizer is required");
    }
    MM_RETURN_IF_ERROR(parser.ParsePreTokenizer(*pre, "pre_tokenizer", spec));
    if (spec.pre_tokenizer.back().kind != PreTokenizerStep::Kind::kByteLevel) {
      return parser.Error("pre_tokenizer", "must end with a ByteLevel pre-tokenizer");
    }
    MM_RETURN_IF_ERROR(parser.ParsePostProcessor(root.value("post_processor", Json()), "post_processor", spec));
    MM_RETURN_IF_ERROR(parser.ParseDecoder(root));
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(source), ": malformed tokenizer.json: ", e.what()));
  }
  return spec;
}

}  // namespace moemesh
