// Hand-written scanners for the pre-tokenizer regexes of the models we serve (GPT-2 ByteLevel,
// Qwen2, Llama-3), with the exact leftmost-first semantics of the regex engine HF tokenizers
// uses (alternation order, greedy quantifiers, `\s+(?!\S)` backtracking, Unicode \s, \p{L},
// \p{N}). Byte-level mapping and BPE do not belong here. Thread-safe (stateless).
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>
#include <vector>

namespace moemesh {

enum class SplitPattern {
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
  // \s*[\r\n]+|\s+(?!\S)|\s+
  kQwen2,
  // As kQwen2 with \p{N}{1,3}.
  kLlama3,
};

// The exact regex string of each pattern (as it appears in tokenizer.json after JSON decoding).
std::string_view SplitPatternRegex(SplitPattern pattern);
// Recognises a regex by its exact string.
std::optional<SplitPattern> RecognizeSplitPattern(std::string_view regex);

// Splits `text` into the consecutive matches of `pattern` (these patterns match every code
// point, so the pieces cover the text). Returns the end index of each piece, in order.
std::vector<size_t> SplitWithPattern(SplitPattern pattern, std::u32string_view text);

}  // namespace moemesh
