// UTF-8 decoding and encoding for the tokenizer: strict validation (for input text), the
// lossy decoder that matches Rust's String::from_utf8_lossy (for detokenizing), and the
// incomplete-tail check used by streaming detokenization. Nothing Unicode-property related
// belongs here (see unicode.h). Thread-safe (stateless).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace moemesh::utf8 {

// Appends the UTF-8 encoding of `cp` (must be a Unicode scalar value) to `out`.
void Append(char32_t cp, std::string& out);

// Length of the valid UTF-8 sequence starting at `s[pos]`, or 0 when the bytes there are not a
// complete well-formed sequence (overlongs, surrogates and > U+10FFFF are ill-formed).
size_t ValidSequenceLength(std::string_view s, size_t pos, char32_t* cp);

// Decodes strictly; InvalidArgument names the byte offset and value of the first bad byte.
// `byte_offsets` (optional) receives the offset of every code point plus a final s.size().
absl::StatusOr<std::u32string> Decode(std::string_view s, std::vector<size_t>* byte_offsets = nullptr);

// Replaces every maximal ill-formed subsequence with U+FFFD, exactly like from_utf8_lossy.
std::string DecodeLossy(std::string_view bytes);

// Length of a trailing suffix of `bytes` that is a proper prefix of some well-formed sequence
// (it could still become valid if more bytes arrive); 0 if none.
size_t IncompleteTailLength(std::string_view bytes);

}  // namespace moemesh::utf8
