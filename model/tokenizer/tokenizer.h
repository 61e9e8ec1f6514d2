// A Hugging Face byte-level BPE tokenizer (tokenizer.json) that gives the same ids as the HF
// `tokenizers` library for GPT-2, Qwen2/Qwen3 and Llama-3 style tokenizers. Chat templates and
// streaming detokenization (incremental_detokenizer.h) do not belong here.
// Immutable after load; thread-safe for concurrent Encode/Decode.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/tokenizer/added_vocabulary.h"
#include "model/tokenizer/bpe_model.h"
#include "model/tokenizer/tokenizer_json.h"

namespace moemesh {

class Tokenizer {
 public:
  // Errors name the file and the JSON path of the bad field.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& tokenizer_json_path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json,
                                                            std::string_view source_name);

  // Invalid UTF-8 input gives InvalidArgument naming the byte offset. add_special_tokens
  // applies the post-processor template; !allow_special encodes special-token text as plain
  // text.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_special_tokens = true,
                                              bool allow_special = true) const;
  // The bytes of the ids joined, invalid UTF-8 replaced by U+FFFD as HF's ByteLevel decoder
  // does; an id outside [0, vocab_size()) or without a token gives InvalidArgument.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids, bool skip_special_tokens = false) const;

  std::string_view TokenText(int32_t id) const;  // Raw vocab string ("Ġhello"); empty if none.
  std::optional<int32_t> TokenId(std::string_view token) const;
  bool IsSpecial(int32_t id) const;
  int32_t vocab_size() const { return vocab_size_; }  // Max id + 1 over vocab and added tokens.
  // Raw bytes a token stands for, as HF's ByteLevel decoder maps it (added tokens whose text
  // is not all in the byte alphabet give their content unchanged). Empty if `id` has no token.
  std::string TokenBytes(int32_t id) const;
  // Whether `id` names a token (vocab or added).
  bool IsValidId(int32_t id) const { return id >= 0 && id < vocab_size_ && has_token_[id]; }

 private:
  Tokenizer(TokenizerSpec spec, BpeModel model, AddedVocabulary added);
  // Normalizes, pre-tokenizes and BPE-encodes a text segment that holds no added token.
  void EncodePlain(std::string_view text, std::vector<int32_t>& ids) const;
  void EncodeNormalized(std::string_view text, bool allow_special, std::vector<int32_t>& ids) const;

  TokenizerSpec spec_;  // Model fields moved out; pre-tokenizer, template, nfc used.
  BpeModel model_;
  AddedVocabulary added_;
  int32_t vocab_size_ = 0;
  std::vector<bool> has_token_;
  std::vector<std::string> token_bytes_;
};

}  // namespace moemesh
