#include "model/tokenizer/split_pattern.h"

#include "model/tokenizer/unicode.h"

namespace moemesh {
namespace {

using unicode::IsLetter;
using unicode::IsNumber;
using unicode::IsWhiteSpace;

bool IsCrLf(char32_t c) { return c == '\r' || c == '\n'; }
// [^\s\p{L}\p{N}]
bool IsOther(char32_t c) { return !IsWhiteSpace(c) && !IsLetter(c) && !IsNumber(c); }

class Scanner {
 public:
  Scanner(SplitPattern pattern, std::u32string_view text) : pattern_(pattern), t_(text) {}

  // Length of the match starting at `i` (always >= 1 for these patterns).
  size_t MatchAt(size_t i) const {
    if (size_t n = Contraction(i)) return n;
    if (pattern_ == SplitPattern::kGpt2) {
      if (size_t n = OptionalSpaceThenRun(i, IsLetter)) return n;
      if (size_t n = OptionalSpaceThenRun(i, IsNumber)) return n;
      if (size_t n = OptionalSpaceThenRun(i, IsOther)) return n;
    } else {
      if (size_t n = PrefixedLetters(i)) return n;
      if (IsNumber(t_[i])) {
        size_t max = pattern_ == SplitPattern::kLlama3 ? 3 : 1;
        size_t n = 1;
        while (n < max && i + n < t_.size() && IsNumber(t_[i + n])) ++n;
        return n;
      }
      if (size_t n = OptionalSpaceThenRun(i, IsOther)) {
        while (i + n < t_.size() && IsCrLf(t_[i + n])) ++n;  // [\r\n]*
        return n;
      }
    }
    // The remaining alternatives all start with whitespace; if t_[i] is not whitespace, the
    // alternatives above matched it (every code point is a letter, number or "other").
    size_t run = 0;
    while (i + run < t_.size() && IsWhiteSpace(t_[i + run])) ++run;
    if (pattern_ != SplitPattern::kGpt2) {
      // \s*[\r\n]+ : backtracks to end just after the last CR/LF of the whitespace run.
      for (size_t k = run; k > 0; --k) {
        if (IsCrLf(t_[i + k - 1])) return k;
      }
    }
    // \s+(?!\S) : the whole run at end of text, else the run minus its last character.
    if (i + run == t_.size()) return run;
    if (run >= 2) return run - 1;
    return run;  // \s+
  }

 private:
  // 's|'t|'re|'ve|'m|'ll|'d, case-insensitive for Qwen2/Llama-3 (where U+017F ſ folds to s).
  size_t Contraction(size_t i) const {
    if (t_[i] != '\'' || i + 1 >= t_.size()) return 0;
    bool fold = pattern_ != SplitPattern::kGpt2;
    auto is = [&](size_t k, char lower) {
      if (k >= t_.size()) return false;
      char32_t c = t_[k];
      if (c == static_cast<char32_t>(lower)) return true;
      if (!fold) return false;
      return c == static_cast<char32_t>(lower - 'a' + 'A') || (lower == 's' && c == 0x17F);
    };
    if (is(i + 1, 's') || is(i + 1, 't') || is(i + 1, 'm') || is(i + 1, 'd')) return 2;
    if ((is(i + 1, 'r') || is(i + 1, 'v')) && is(i + 2, 'e')) return 3;
    if (is(i + 1, 'l') && is(i + 2, 'l')) return 3;
    return 0;
  }

  // ` ?X+` where X is `pred`.
  template <typename Pred>
  size_t OptionalSpaceThenRun(size_t i, Pred pred) const {
    size_t j = i + (t_[i] == ' ' ? 1 : 0);
    if (j >= t_.size() || !pred(t_[j])) return 0;
    while (j < t_.size() && pred(t_[j])) ++j;
    return j - i;
  }

  // [^\r\n\p{L}\p{N}]?\p{L}+
  size_t PrefixedLetters(size_t i) const {
    size_t j = i;
    if (!IsLetter(t_[j])) {
      if (IsCrLf(t_[j]) || IsNumber(t_[j])) return 0;
      ++j;
      if (j >= t_.size() || !IsLetter(t_[j])) return 0;
    }
    while (j < t_.size() && IsLetter(t_[j])) ++j;
    return j - i;
  }

  SplitPattern pattern_;
  std::u32string_view t_;
};

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

}  // namespace

std::string_view SplitPatternRegex(SplitPattern pattern) {
  switch (pattern) {
    case SplitPattern::kGpt2:
      return kGpt2Regex;
    case SplitPattern::kQwen2:
      return kQwen2Regex;
    case SplitPattern::kLlama3:
      return kLlama3Regex;
  }
  return {};
}

std::optional<SplitPattern> RecognizeSplitPattern(std::string_view regex) {
  for (SplitPattern p : {SplitPattern::kGpt2, SplitPattern::kQwen2, SplitPattern::kLlama3}) {
    if (regex == SplitPatternRegex(p)) return p;
  }
  return std::nullopt;
}

std::vector<size_t> SplitWithPattern(SplitPattern pattern, std::u32string_view text) {
  Scanner scanner(pattern, text);
  std::vector<size_t> ends;
  size_t i = 0;
  while (i < text.size()) {
    i += scanner.MatchAt(i);
    ends.push_back(i);
  }
  return ends;
}

}  // namespace moemesh
