#include "model/tokenizer/unicode.h"

#include <algorithm>

#include "model/tokenizer/unicode_tables.h"

namespace moemesh::unicode {
namespace {

using unicode_tables::CodePointRange;
using unicode_tables::CodePointTriple;

constexpr char32_t kHangulSBase = 0xAC00, kHangulLBase = 0x1100, kHangulVBase = 0x1161,
                   kHangulTBase = 0x11A7;
constexpr char32_t kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr char32_t kHangulNCount = kHangulVCount * kHangulTCount;
constexpr char32_t kHangulSCount = kHangulLCount * kHangulNCount;

bool InRanges(const CodePointRange* ranges, size_t n, char32_t cp) {
  const CodePointRange* end = ranges + n;
  const CodePointRange* it = std::upper_bound(
      ranges, end, cp, [](char32_t v, const CodePointRange& r) { return v < r.first; });
  return it != ranges && cp <= (it - 1)->last;
}

bool IsHangulSyllable(char32_t cp) { return cp >= kHangulSBase && cp < kHangulSBase + kHangulSCount; }

void Decompose(char32_t cp, std::u32string& out) {
  if (IsHangulSyllable(cp)) {
    char32_t s = cp - kHangulSBase;
    out.push_back(kHangulLBase + s / kHangulNCount);
    out.push_back(kHangulVBase + (s % kHangulNCount) / kHangulTCount);
    if (s % kHangulTCount != 0) out.push_back(kHangulTBase + s % kHangulTCount);
    return;
  }
  const CodePointTriple* begin = unicode_tables::kDecompositions;
  const CodePointTriple* end = begin + unicode_tables::kDecompositionsSize;
  const CodePointTriple* it = std::lower_bound(
      begin, end, cp, [](const CodePointTriple& t, char32_t v) { return t.a < v; });
  if (it == end || it->a != cp) {
    out.push_back(cp);
    return;
  }
  Decompose(it->b, out);
  if (it->c != 0) Decompose(it->c, out);
}

// The primary composite of `a` followed by `b`, or 0 if there is none.
char32_t ComposePair(char32_t a, char32_t b) {
  if (a >= kHangulLBase && a < kHangulLBase + kHangulLCount && b >= kHangulVBase &&
      b < kHangulVBase + kHangulVCount) {
    return kHangulSBase + ((a - kHangulLBase) * kHangulVCount + (b - kHangulVBase)) * kHangulTCount;
  }
  if (IsHangulSyllable(a) && (a - kHangulSBase) % kHangulTCount == 0 && b > kHangulTBase &&
      b < kHangulTBase + kHangulTCount) {
    return a + (b - kHangulTBase);
  }
  const CodePointTriple* begin = unicode_tables::kCompositions;
  const CodePointTriple* end = begin + unicode_tables::kCompositionsSize;
  const CodePointTriple* it =
      std::lower_bound(begin, end, std::pair<char32_t, char32_t>(a, b),
                       [](const CodePointTriple& t, const std::pair<char32_t, char32_t>& v) {
                         return t.a < v.first || (t.a == v.first && t.b < v.second);
                       });
  return it != end && it->a == a && it->b == b ? it->c : 0;
}

}  // namespace

bool IsLetter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return InRanges(unicode_tables::kLetterRanges, unicode_tables::kLetterRangesSize, cp);
}

bool IsNumber(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return InRanges(unicode_tables::kNumberRanges, unicode_tables::kNumberRangesSize, cp);
}

bool IsWhiteSpace(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return InRanges(unicode_tables::kWhiteSpaceRanges, unicode_tables::kWhiteSpaceRangesSize, cp);
}

uint8_t CombiningClass(char32_t cp) {
  if (cp < 0x300) return 0;
  const auto* begin = unicode_tables::kCombiningClasses;
  const auto* end = begin + unicode_tables::kCombiningClassesSize;
  const auto* it = std::upper_bound(begin, end, cp, [](char32_t v, const auto& r) { return v < r.first; });
  return it != begin && cp <= (it - 1)->last ? (it - 1)->ccc : 0;
}

std::u32string Nfc(std::u32string_view text) {
  // Everything below U+0300 is NFC-stable (no decomposable or combining code point there
  // changes under NFC), so the common case returns unchanged.
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x300; })) {
    return std::u32string(text);
  }
  std::u32string buf;
  buf.reserve(text.size() + 8);
  for (char32_t cp : text) Decompose(cp, buf);
  // Canonical ordering: stable sort of every run of non-starters by combining class.
  for (size_t i = 0; i < buf.size();) {
    if (CombiningClass(buf[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < buf.size() && CombiningClass(buf[j]) != 0) ++j;
    std::stable_sort(buf.begin() + i, buf.begin() + j,
                     [](char32_t x, char32_t y) { return CombiningClass(x) < CombiningClass(y); });
    i = j;
  }
  if (buf.empty()) return buf;
  // Canonical composition (UAX #15): a character composes with the last starter unless a
  // character in between is blocking it.
  size_t starter = 0;
  size_t out = 1;
  int last_class = CombiningClass(buf[0]) == 0 ? 0 : 256;
  for (size_t i = 1; i < buf.size(); ++i) {
    char32_t ch = buf[i];
    int ch_class = CombiningClass(ch);
    char32_t composite = ComposePair(buf[starter], ch);
    if (composite != 0 && (last_class < ch_class || last_class == 0)) {
      buf[starter] = composite;
      continue;
    }
    if (ch_class == 0) starter = out;
    last_class = ch_class;
    buf[out++] = ch;
  }
  buf.resize(out);
  return buf;
}

std::string_view Version() { return unicode_tables::kUnicodeVersion; }

}  // namespace moemesh::unicode
