// Reads a Hugging Face tokenizer.json into a plain TokenizerSpec, validating that every
// component is one this tokenizer implements exactly (BPE model, NFC normalizer, GPT-2 /
// Qwen2 / Llama-3 pre-tokenizers, ByteLevel decoder, TemplateProcessing). Errors name the
// source, the JSON path of the field and the offending value. No encoding logic belongs here.
// Thread-safe (stateless).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tokenizer/added_vocabulary.h"
#include "model/tokenizer/bpe_model.h"
#include "model/tokenizer/split_pattern.h"

namespace moemesh {

struct PreTokenizerStep {
  // Split: pieces are cut at the matches of `pattern`. ByteLevel: each piece gets a leading
  // space when add_prefix_space (and it has none), is cut with the GPT-2 pattern when
  // use_regex, and is then mapped to the byte-level alphabet.
  enum class Kind { kSplit, kByteLevel } kind = Kind::kSplit;
  SplitPattern pattern = SplitPattern::kGpt2;
  bool add_prefix_space = false;
  bool use_regex = false;
};

// One element of TemplateProcessing's "single" template: the input sequence, or the ids of a
// special token.
struct TemplatePiece {
  bool is_sequence = false;
  std::vector<int32_t> ids;
};

struct TokenizerSpec {
  BpeModelSpec bpe;
  std::vector<AddedToken> added_tokens;
  bool nfc = false;
  std::vector<PreTokenizerStep> pre_tokenizer;  // The last step is ByteLevel.
  std::vector<TemplatePiece> single_template;   // Empty: add_special_tokens adds nothing.
};

absl::StatusOr<TokenizerSpec> ParseTokenizerJson(std::string_view json, std::string_view source);

}  // namespace moemesh
