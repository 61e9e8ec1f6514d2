// Test-only helper: builds small byte-level BPE tokenizer.json documents (the 256 byte-alphabet
// characters get ids 0..255 = the byte value, merges get 256, 257, ... in order). Only for
// tests in this folder. Thread-safe (stateless).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "model/tokenizer/byte_level.h"
#include "model/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace moemesh::testing {

// The byte-alphabet spelling of `bytes` ("Ġ" for a space).
inline std::string Bl(const std::string& bytes) { return byte_level::Encode(bytes); }

struct TestTokenizerOptions {
  std::vector<std::pair<std::string, std::string>> merges;  // Raw bytes; Bl() is applied.
  nlohmann::json added_tokens = nlohmann::json::array();
  nlohmann::json normalizer = nullptr;
  nlohmann::json pre_tokenizer = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  nlohmann::json post_processor = nullptr;
  bool merges_as_pairs = false;
};

inline nlohmann::json MakeTokenizerJson(const TestTokenizerOptions& o) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[Bl(std::string(1, static_cast<char>(b)))] = b;
  nlohmann::json merges = nlohmann::json::array();
  int next = 256;
  for (const auto& [a, b] : o.merges) {
    if (!vocab.contains(Bl(a + b))) vocab[Bl(a + b)] = next++;
    if (o.merges_as_pairs) {
      merges.push_back({Bl(a), Bl(b)});
    } else {
      merges.push_back(Bl(a) + " " + Bl(b));
    }
  }
  nlohmann::json j;
  j["version"] = "1.0";
  j["added_tokens"] = o.added_tokens;
  j["normalizer"] = o.normalizer;
  j["pre_tokenizer"] = o.pre_tokenizer;
  j["post_processor"] = o.post_processor;
  j["decoder"] = {{"type", "ByteLevel"}};
  j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                {"byte_fallback", false}, {"ignore_merges", false}, {"vocab", vocab}, {"merges", merges}};
  return j;
}

inline nlohmann::json AddedTokenJson(int id, const std::string& content, bool special,
                                     bool lstrip = false, bool rstrip = false, bool normalized = false) {
  return {{"id", id}, {"content", content}, {"special", special}, {"lstrip", lstrip},
          {"rstrip", rstrip}, {"normalized", normalized}, {"single_word", false}};
}

}  // namespace moemesh::testing
