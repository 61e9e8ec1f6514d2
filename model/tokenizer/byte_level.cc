#include "model/tokenizer/byte_level.h"

#include <array>

#include "model/tokenizer/utf8.h"

namespace moemesh::byte_level {
namespace {

struct Tables {
  std::array<char32_t, 256> byte_to_char;
  std::array<std::string, 256> byte_to_utf8;
  std::array<int, 512> char_to_byte;  // All alphabet characters are below U+0200.
};

// Printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 bytes
// take U+0100, U+0101, ... in byte order.
Tables BuildTables() {
  Tables t;
  t.char_to_byte.fill(-1);
  char32_t next = 0x100;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    char32_t c = printable ? static_cast<char32_t>(b) : next++;
    t.byte_to_char[b] = c;
    t.char_to_byte[c] = b;
    utf8::Append(c, t.byte_to_utf8[b]);
  }
  return t;
}

const Tables& GetTables() {
  static const Tables* tables = new Tables(BuildTables());
  return *tables;
}

}  // namespace

char32_t ByteToChar(unsigned char b) { return GetTables().byte_to_char[b]; }

std::optional<unsigned char> CharToByte(char32_t c) {
  if (c >= 512 || GetTables().char_to_byte[c] < 0) return std::nullopt;
  return static_cast<unsigned char>(GetTables().char_to_byte[c]);
}

std::string Encode(std::string_view bytes) {
  const Tables& t = GetTables();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char b : bytes) out.append(t.byte_to_utf8[static_cast<unsigned char>(b)]);
  return out;
}

std::string DecodeToken(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    char32_t cp = 0;
    size_t n = utf8::ValidSequenceLength(token, pos, &cp);
    std::optional<unsigned char> b = n == 0 ? std::nullopt : CharToByte(cp);
    if (!b.has_value()) return std::string(token);
    out.push_back(static_cast<char>(*b));
    pos += n;
  }
  return out;
}

}  // namespace moemesh::byte_level
