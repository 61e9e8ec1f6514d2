// Added tokens of a Hugging Face tokenizer (special tokens like <|im_start|> and extra words):
// finding them in text with HF's semantics (leftmost-longest match, lstrip/rstrip,
// single_word, special tokens skipped when they must be encoded as plain text). Normalization,
// pre-tokenization and BPE belong elsewhere. Immutable after construction; thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace moemesh {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;       // Swallow whitespace on the left.
  bool rstrip = false;       // Swallow whitespace on the right.
  bool normalized = false;   // Matched against normalized text (else against the raw text).
  bool single_word = false;  // Only matched when not inside a word.
};

// A piece of text: either an added token (`id` set) or plain text to be tokenized by the model.
struct TextSegment {
  size_t begin;
  size_t end;
  std::optional<int32_t> id;
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  // `normalized_contents[i]` is tokens[i].content after the normalizer (same when none).
  AddedVocabulary(std::vector<AddedToken> tokens, std::vector<std::string> normalized_contents);

  // Splits `text` on the tokens whose `normalized` flag equals `normalized`. Special tokens
  // are skipped when !allow_special. Empty text gives one empty plain segment.
  std::vector<TextSegment> Split(std::string_view text, bool normalized, bool allow_special) const;

  const AddedToken* FindById(int32_t id) const;
  std::optional<int32_t> FindByContent(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  bool has_normalized() const { return !patterns_[1].empty(); }

 private:
  struct Pattern {
    std::string text;
    size_t token;  // Index into tokens_.
  };
  // Leftmost-longest match at or after `from`; returns false when none.
  bool FindMatch(std::string_view text, size_t from, bool normalized, size_t* begin,
                 const Pattern** pattern) const;

  std::vector<AddedToken> tokens_;
  absl::flat_hash_map<int32_t, size_t> by_id_;
  absl::flat_hash_map<std::string, int32_t> by_content_;
  // patterns_[normalized]: sorted by first byte, then longest first.
  std::vector<Pattern> patterns_[2];
  // first_[normalized][byte] = index of the first pattern starting with that byte, or -1.
  std::vector<int32_t> first_[2];
};

}  // namespace moemesh
