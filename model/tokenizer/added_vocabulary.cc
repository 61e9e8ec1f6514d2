#include "model/tokenizer/added_vocabulary.h"

#include <algorithm>

#include "absl/strings/string_view.h"
#include "model/tokenizer/unicode.h"
#include "model/tokenizer/utf8.h"

namespace moemesh {
namespace {

char32_t CodePointAt(std::string_view s, size_t pos) {
  char32_t cp = 0;
  return utf8::ValidSequenceLength(s, pos, &cp) == 0 ? 0 : cp;
}

// Start of the code point that ends at `end` (s is valid UTF-8, end > 0).
size_t PrevCodePointStart(std::string_view s, size_t end) {
  size_t pos = end - 1;
  while (pos > 0 && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) --pos;
  return pos;
}

// Rust regex \w, approximated by letters, numbers and '_' (marks and connector punctuation
// other than '_' are not in our tables); only used for single_word tokens.
bool IsWordChar(char32_t cp) { return cp == '_' || unicode::IsLetter(cp) || unicode::IsNumber(cp); }

}  // namespace

AddedVocabulary::AddedVocabulary(std::vector<AddedToken> tokens,
                                 std::vector<std::string> normalized_contents)
    : tokens_(std::move(tokens)) {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    by_id_[tokens_[i].id] = i;
    by_content_[tokens_[i].content] = tokens_[i].id;
    int which = tokens_[i].normalized ? 1 : 0;
    const std::string& text = which ? normalized_contents[i] : tokens_[i].content;
    if (!text.empty()) patterns_[which].push_back(Pattern{text, i});
  }
  for (int which = 0; which < 2; ++which) {
    auto& patterns = patterns_[which];
    std::stable_sort(patterns.begin(), patterns.end(), [](const Pattern& a, const Pattern& b) {
      if (a.text[0] != b.text[0]) return static_cast<unsigned char>(a.text[0]) < static_cast<unsigned char>(b.text[0]);
      return a.text.size() > b.text.size();
    });
    first_[which].assign(256, -1);
    for (size_t i = patterns.size(); i-- > 0;) {
      first_[which][static_cast<unsigned char>(patterns[i].text[0])] = static_cast<int32_t>(i);
    }
  }
}

bool AddedVocabulary::FindMatch(std::string_view text, size_t from, bool normalized,
                                size_t* begin, const Pattern** pattern) const {
  const auto& patterns = patterns_[normalized ? 1 : 0];
  const auto& first = first_[normalized ? 1 : 0];
  if (patterns.empty()) return false;
  for (size_t pos = from; pos < text.size(); ++pos) {
    auto b = static_cast<unsigned char>(text[pos]);
    int32_t i = first[b];
    if (i < 0) continue;
    for (; i < static_cast<int32_t>(patterns.size()) &&
           static_cast<unsigned char>(patterns[i].text[0]) == b;
         ++i) {
      if (text.substr(pos).starts_with(patterns[i].text)) {  // Longest first.
        *begin = pos;
        *pattern = &patterns[i];
        return true;
      }
    }
  }
  return false;
}

std::vector<TextSegment> AddedVocabulary::Split(std::string_view text, bool normalized,
                                                bool allow_special) const {
  std::vector<TextSegment> out;
  if (text.empty()) {
    out.push_back(TextSegment{0, 0, std::nullopt});
    return out;
  }
  size_t done = 0;    // Text before this is already in `out`.
  size_t search = 0;  // The matcher resumes after the previous match, taken or not.
  size_t begin = 0;
  const Pattern* pattern = nullptr;
  while (FindMatch(text, search, normalized, &begin, &pattern)) {
    const AddedToken& token = tokens_[pattern->token];
    size_t start = begin;
    size_t stop = begin + pattern->text.size();
    search = stop;
    if (token.special && !allow_special) continue;
    if (token.single_word) {
      bool word_before = start > 0 && IsWordChar(CodePointAt(text, PrevCodePointStart(text, start)));
      bool word_after = stop < text.size() && IsWordChar(CodePointAt(text, stop));
      if (word_before || word_after) continue;
    }
    if (token.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t prev = PrevCodePointStart(text, s);
        if (!unicode::IsWhiteSpace(CodePointAt(text, prev))) break;
        s = prev;
      }
      start = std::max(s, done);
    }
    if (token.rstrip) {
      char32_t cp = 0;
      while (stop < text.size()) {
        size_t n = utf8::ValidSequenceLength(text, stop, &cp);
        if (n == 0 || !unicode::IsWhiteSpace(cp)) break;
        stop += n;
      }
    }
    if (start > done) out.push_back(TextSegment{done, start, std::nullopt});
    out.push_back(TextSegment{start, stop, token.id});
    done = stop;
  }
  if (done != text.size()) out.push_back(TextSegment{done, text.size(), std::nullopt});
  return out;
}

const AddedToken* AddedVocabulary::FindById(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> AddedVocabulary::FindByContent(std::string_view content) const {
  auto it = by_content_.find(absl::string_view(content.data(), content.size()));
  if (it == by_content_.end()) return std::nullopt;
  return it->second;
}

}  // namespace moemesh
