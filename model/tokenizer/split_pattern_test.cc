#include "model/tokenizer/split_pattern.h"

#include <gtest/gtest.h>

#include "model/tokenizer/utf8.h"

namespace moemesh {
namespace {

std::vector<std::string> Split(SplitPattern p, const std::string& text) {
  std::vector<size_t> offsets;
  auto cps = utf8::Decode(text, &offsets);
  EXPECT_TRUE(cps.ok());
  std::vector<std::string> out;
  size_t begin = 0;
  for (size_t end : SplitWithPattern(p, *cps)) {
    out.push_back(text.substr(offsets[begin], offsets[end] - offsets[begin]));
    begin = end;
  }
  return out;
}

using V = std::vector<std::string>;
constexpr auto kGpt2 = SplitPattern::kGpt2;
constexpr auto kQwen2 = SplitPattern::kQwen2;
constexpr auto kLlama3 = SplitPattern::kLlama3;

TEST(SplitPatternTest, RecognizesExactRegexOnly) {
  EXPECT_EQ(RecognizeSplitPattern(
                R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"),
            kGpt2);
  EXPECT_EQ(RecognizeSplitPattern(SplitPatternRegex(kQwen2)), kQwen2);
  EXPECT_NE(SplitPatternRegex(kQwen2), SplitPatternRegex(kLlama3));
  EXPECT_FALSE(RecognizeSplitPattern(R"(\s+|\S+)").has_value());
}

// "  hello\n\n world": the first space run is followed by a letter, so \s+(?!\S) leaves the
// last space for " hello"; "\n\n " then is \s*[\r\n]+ -> "\n\n" (Qwen2) or \s+(?!\S) minus
// its last char -> "\n\n" (GPT-2).
TEST(SplitPatternTest, WhitespaceBeforeWordsAndNewlines) {
  V want = {" ", " hello", "\n\n", " world"};
  EXPECT_EQ(Split(kGpt2, "  hello\n\n world"), want);
  EXPECT_EQ(Split(kQwen2, "  hello\n\n world"), want);
  EXPECT_EQ(Split(kLlama3, "  hello\n\n world"), want);
  // Trailing whitespace goes whole into one piece.
  EXPECT_EQ(Split(kGpt2, "hi   "), (V{"hi", "   "}));
  // Qwen2: spaces after the last newline of a run are not taken by \s*[\r\n]+.
  EXPECT_EQ(Split(kQwen2, "a\n  b"), (V{"a", "\n", " ", " b"}));
  // GPT-2: "\n  " then 'b': \s+(?!\S) keeps "\n ", " b".
  EXPECT_EQ(Split(kGpt2, "a\n  b"), (V{"a", "\n ", " b"}));
}

TEST(SplitPatternTest, Contractions) {
  EXPECT_EQ(Split(kGpt2, "I'm"), (V{"I", "'m"}));
  EXPECT_EQ(Split(kQwen2, "I'm"), (V{"I", "'m"}));
  EXPECT_EQ(Split(kGpt2, "we'll"), (V{"we", "'ll"}));
  // GPT-2 is case-sensitive: "'S" is punctuation then a letter run.
  EXPECT_EQ(Split(kGpt2, "I'M"), (V{"I", "'", "M"}));
  // Qwen2 has (?i:...): "'M" is a contraction, and so is "'ſ" (long s folds to s).
  EXPECT_EQ(Split(kQwen2, "I'M"), (V{"I", "'M"}));
  EXPECT_EQ(Split(kQwen2, "a'\xC5\xBFx"), (V{"a", "'\xC5\xBF", "x"}));
  // Qwen2: a non-letter may prefix a letter run: "'x" is one piece.
  EXPECT_EQ(Split(kQwen2, "a'xy"), (V{"a", "'xy"}));
  EXPECT_EQ(Split(kGpt2, "a'xy"), (V{"a", "'", "xy"}));
}

TEST(SplitPatternTest, Numbers) {
  EXPECT_EQ(Split(kGpt2, "123456"), (V{"123456"}));
  EXPECT_EQ(Split(kQwen2, "123456"), (V{"1", "2", "3", "4", "5", "6"}));
  EXPECT_EQ(Split(kLlama3, "1234567"), (V{"123", "456", "7"}));
  EXPECT_EQ(Split(kGpt2, "a 12"), (V{"a", " 12"}));
  // Qwen2: " 1" is not a piece; the space stands alone.
  EXPECT_EQ(Split(kQwen2, "a 12"), (V{"a", " ", "1", "2"}));
}

TEST(SplitPatternTest, SpacesAndUnicodeWhitespace) {
  EXPECT_EQ(Split(kGpt2, "a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(Split(kQwen2, "a  b"), (V{"a", " ", " b"}));
  // U+3000 is \s but not ' ': GPT-2 keeps it alone; Qwen2's optional prefix takes it.
  EXPECT_EQ(Split(kGpt2, "x\xE3\x80\x80y"), (V{"x", "\xE3\x80\x80", "y"}));
  EXPECT_EQ(Split(kQwen2, "x\xE3\x80\x80y"), (V{"x", "\xE3\x80\x80y"}));
  EXPECT_EQ(Split(kQwen2, "\thello"), (V{"\thello"}));
  EXPECT_EQ(Split(kQwen2, "\nhello"), (V{"\n", "hello"}));
}

TEST(SplitPatternTest, PunctuationAndMarks) {
  EXPECT_EQ(Split(kGpt2, "hi!!! ok"), (V{"hi", "!!!", " ok"}));
  // Qwen2 takes trailing newlines with punctuation.
  EXPECT_EQ(Split(kQwen2, "end.\n\nNext"), (V{"end", ".\n\n", "Next"}));
  // GPT-2: "\n\n" before a letter: \s+(?!\S) leaves the last "\n", which is then \s+.
  EXPECT_EQ(Split(kGpt2, "end.\n\nNext"), (V{"end", ".", "\n", "\n", "Next"}));
  // A combining mark is not a letter: decomposed "é" splits.
  EXPECT_EQ(Split(kGpt2, "e\xCC\x81"), (V{"e", "\xCC\x81"}));
  EXPECT_EQ(Split(kQwen2, "\xF0\x9F\x98\x80!"), (V{"\xF0\x9F\x98\x80!"}));
}

}  // namespace
}  // namespace moemesh
