#include "model/tokenizer/utf8.h"

#include "absl/strings/str_format.h"

namespace moemesh::utf8 {
namespace {

// Allowed range of the second byte after lead byte `b0` (Unicode Table 3-7), or {1, 0} when
// `b0` cannot start a multi-byte sequence. The remaining bytes are always 0x80..0xBF.
struct ByteRange {
  unsigned char lo, hi;
};
ByteRange SecondByteRange(unsigned char b0) {
  if (b0 >= 0xC2 && b0 <= 0xDF) return {0x80, 0xBF};
  if (b0 == 0xE0) return {0xA0, 0xBF};
  if (b0 == 0xED) return {0x80, 0x9F};
  if (b0 >= 0xE1 && b0 <= 0xEF) return {0x80, 0xBF};
  if (b0 == 0xF0) return {0x90, 0xBF};
  if (b0 >= 0xF1 && b0 <= 0xF3) return {0x80, 0xBF};
  if (b0 == 0xF4) return {0x80, 0x8F};
  return {1, 0};
}

size_t SequenceLength(unsigned char b0) { return b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4; }

// Number of bytes at `pos` that form a valid prefix of a sequence (>= 1 when s[pos] is a valid
// lead byte), and whether the sequence is complete.
size_t ValidPrefix(std::string_view s, size_t pos, bool* complete) {
  auto b0 = static_cast<unsigned char>(s[pos]);
  *complete = false;
  if (b0 < 0x80) {
    *complete = true;
    return 1;
  }
  ByteRange r = SecondByteRange(b0);
  if (r.lo > r.hi) return 0;
  size_t need = SequenceLength(b0);
  size_t n = 1;
  while (n < need && pos + n < s.size()) {
    auto b = static_cast<unsigned char>(s[pos + n]);
    bool ok = n == 1 ? (b >= r.lo && b <= r.hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) break;
    ++n;
  }
  *complete = n == need;
  return n;
}

}  // namespace

void Append(char32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t ValidSequenceLength(std::string_view s, size_t pos, char32_t* cp) {
  bool complete = false;
  size_t n = ValidPrefix(s, pos, &complete);
  if (!complete) return 0;
  auto b0 = static_cast<unsigned char>(s[pos]);
  char32_t v = n == 1 ? b0 : n == 2 ? (b0 & 0x1F) : n == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (size_t i = 1; i < n; ++i) v = (v << 6) | (static_cast<unsigned char>(s[pos + i]) & 0x3F);
  *cp = v;
  return n;
}

absl::StatusOr<std::u32string> Decode(std::string_view s, std::vector<size_t>* byte_offsets) {
  std::u32string out;
  out.reserve(s.size());
  if (byte_offsets != nullptr) {
    byte_offsets->clear();
    byte_offsets->reserve(s.size() + 1);
  }
  size_t pos = 0;
  while (pos < s.size()) {
    char32_t cp = 0;
    size_t n = ValidSequenceLength(s, pos, &cp);
    if (n == 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "invalid UTF-8 in text at byte offset %d (byte 0x%02X; text is %d bytes)", pos,
          static_cast<unsigned char>(s[pos]), s.size()));
    }
    if (byte_offsets != nullptr) byte_offsets->push_back(pos);
    out.push_back(cp);
    pos += n;
  }
  if (byte_offsets != nullptr) byte_offsets->push_back(s.size());
  return out;
}

std::string DecodeLossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    bool complete = false;
    size_t n = ValidPrefix(bytes, pos, &complete);
    if (complete) {
      out.append(bytes.substr(pos, n));
      pos += n;
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD for the maximal subpart (at least one byte).
      pos += n == 0 ? 1 : n;
    }
  }
  return out;
}

size_t IncompleteTailLength(std::string_view bytes) {
  // A sequence is at most 4 bytes, so only the last 3 bytes can start an incomplete one.
  size_t first = bytes.size() > 3 ? bytes.size() - 3 : 0;
  for (size_t pos = first; pos < bytes.size(); ++pos) {
    bool complete = false;
    size_t n = ValidPrefix(bytes, pos, &complete);
    if (!complete && n > 0 && pos + n == bytes.size()) return n;
  }
  return 0;
}

}  // namespace moemesh::utf8
