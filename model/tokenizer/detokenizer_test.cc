#include "model/tokenizer/incremental_detokenizer.h"

#include <gtest/gtest.h>

#include <random>

#include "model/tokenizer/test_tokenizer_json.h"
#include "model/tokenizer/utf8.h"

namespace moemesh {
namespace {

// Ids 0..255 are single bytes in this vocabulary, so any byte sequence can be streamed.
std::unique_ptr<Tokenizer> ByteTokenizer() {
  testing::TestTokenizerOptions o;
  o.added_tokens.push_back(testing::AddedTokenJson(256, "<|eot|>", true));
  auto tok = Tokenizer::FromJson(testing::MakeTokenizerJson(o).dump(), "test.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return std::move(*tok);
}

const std::string kReplacement = "\xEF\xBF\xBD";

TEST(DetokenizerTest, HoldsBackIncompleteCharacters) {
  auto tok = ByteTokenizer();
  IncrementalDetokenizer d(*tok, false);
  EXPECT_EQ(d.Push('a'), "a");
  EXPECT_EQ(d.Push(0xF0), "");
  EXPECT_EQ(d.Push(0x9F), "");
  EXPECT_EQ(d.Push(0x98), "");
  EXPECT_EQ(d.Push(0x80), "\xF0\x9F\x98\x80");
  EXPECT_EQ(d.Push(256), "<|eot|>");
  EXPECT_EQ(d.Flush(), "");
  EXPECT_EQ(d.text(), "a\xF0\x9F\x98\x80<|eot|>");
}

TEST(DetokenizerTest, InvalidBytesBecomeReplacementLikeDecode) {
  auto tok = ByteTokenizer();
  IncrementalDetokenizer d(*tok, true);
  EXPECT_EQ(d.Push(0xFF), kReplacement);
  EXPECT_EQ(d.Push(0xE2), "");
  EXPECT_EQ(d.Push(0x82), "");
  EXPECT_EQ(d.Push('A'), kReplacement + "A");  // a truncated sequence is one U+FFFD
  EXPECT_EQ(d.Push(256), "");                   // skipped special token
  EXPECT_EQ(d.Push(0xC3), "");
  EXPECT_EQ(d.Flush(), kReplacement);
}

TEST(DetokenizerTest, RandomBytesMatchDecode) {
  auto tok = ByteTokenizer();
  std::mt19937 rng(7);
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<int32_t> ids;
    int n = std::uniform_int_distribution<int>(0, 12)(rng);
    for (int i = 0; i < n; ++i) {
      // Bias toward UTF-8 lead and continuation bytes.
      int kind = std::uniform_int_distribution<int>(0, 3)(rng);
      int lo = kind == 0 ? 0 : kind == 1 ? 0x80 : kind == 2 ? 0xC0 : 0xE0;
      int hi = kind == 0 ? 0x7F : kind == 1 ? 0xBF : kind == 2 ? 0xDF : 0xF7;
      ids.push_back(std::uniform_int_distribution<int>(lo, hi)(rng));
    }
    IncrementalDetokenizer d(*tok, false);
    std::string streamed;
    for (int32_t id : ids) {
      std::string piece = d.Push(id);
      ASSERT_TRUE(utf8::Decode(piece).ok());
      streamed += piece;
    }
    streamed += d.Flush();
    EXPECT_EQ(streamed, *tok->Decode(ids));
    EXPECT_EQ(d.text(), streamed);
  }
}

}  // namespace
}  // namespace moemesh
