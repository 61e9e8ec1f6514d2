// The byte-pair-encoding model of a Hugging Face tokenizer: vocabulary, merge ranks, and the
// merge loop applied to one pre-token (already mapped to the byte-level alphabet). Parsing
// tokenizer.json, added tokens and pre-tokenization belong elsewhere. Immutable after Create;
// thread-safe for concurrent Tokenize.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace moemesh {

struct BpeModelSpec {
  std::vector<std::pair<std::string, int32_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // In rank order.
  bool ignore_merges = false;  // A pre-token found whole in the vocab is not merged.
};

class BpeModel {
 public:
  // `source` names the file for error messages.
  static absl::StatusOr<BpeModel> Create(const BpeModelSpec& spec, std::string_view source);

  // Appends the ids of `word` (UTF-8 text in the byte-level alphabet). Characters missing
  // from the vocabulary are dropped, as HF does for a BPE model without unk_token.
  void Tokenize(std::string_view word, std::vector<int32_t>& ids) const;

  std::optional<int32_t> TokenId(std::string_view token) const;
  // Empty when `id` has no vocabulary entry.
  std::string_view TokenText(int32_t id) const;
  // Max id + 1 over the vocabulary.
  int32_t size() const { return static_cast<int32_t>(id_to_token_.size()); }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const Merge* FindMerge(int32_t a, int32_t b) const;

  absl::flat_hash_map<std::string, int32_t> token_to_id_;
  std::vector<std::string> id_to_token_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  bool ignore_merges_ = false;
};

}  // namespace moemesh
