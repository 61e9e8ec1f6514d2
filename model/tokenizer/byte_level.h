// The GPT-2 byte-level alphabet: every byte maps to one printable code point so that BPE
// vocabularies can be stored as text ("Ġ" stands for the space byte). No BPE or regex logic
// belongs here. Thread-safe (immutable tables built once).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace moemesh::byte_level {

// The code point byte `b` is written as.
char32_t ByteToChar(unsigned char b);
// The byte that code point `c` stands for, if `c` is one of the 256 alphabet characters.
std::optional<unsigned char> CharToByte(char32_t c);
// Maps every byte of `bytes` to its alphabet character, UTF-8 encoded.
std::string Encode(std::string_view bytes);
// The bytes a token string stands for, as HF's ByteLevel decoder does it: if every character
// of `token` (valid UTF-8) is in the alphabet, the mapped bytes; otherwise `token` unchanged.
std::string DecodeToken(std::string_view token);

}  // namespace moemesh::byte_level
