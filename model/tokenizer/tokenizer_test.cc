#include "model/tokenizer/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "model/tokenizer/split_pattern.h"
#include "model/tokenizer/test_tokenizer_json.h"

namespace moemesh {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::AddedTokenJson;
using testing::MakeTokenizerJson;
using testing::TestTokenizerOptions;

std::unique_ptr<Tokenizer> Load(const TestTokenizerOptions& o) {
  auto tok = Tokenizer::FromJson(MakeTokenizerJson(o).dump(), "test.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

std::vector<int32_t> Enc(const Tokenizer& tok, const std::string& text, bool add_special = true,
                         bool allow_special = true) {
  auto ids = tok.Encode(text, add_special, allow_special);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

nlohmann::json QwenPreTokenizer() {
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"},
             {"pattern", {{"Regex", std::string(SplitPatternRegex(SplitPattern::kQwen2))}}},
             {"behavior", "Isolated"},
             {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
}

// Merges: he=256, ll=257, hell=258, hello=259 (ranks in that order).
TestTokenizerOptions HelloOptions() {
  TestTokenizerOptions o;
  o.merges = {{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}};
  return o;
}

TEST(TokenizerTest, MergesAppliedInRankOrder) {
  TestTokenizerOptions bc_first;
  bc_first.merges = {{"b", "c"}, {"a", "b"}};
  EXPECT_THAT(Enc(*Load(bc_first), "abc"), ElementsAre('a', 256));  // a + bc
  TestTokenizerOptions ab_first;
  ab_first.merges = {{"a", "b"}, {"b", "c"}};
  ab_first.merges_as_pairs = true;  // ["a", "b"] form of merges.
  EXPECT_THAT(Enc(*Load(ab_first), "abc"), ElementsAre(256, 'c'));  // ab + c

  auto tok = Load(HelloOptions());
  EXPECT_THAT(Enc(*tok, "hello"), ElementsAre(259));
  EXPECT_THAT(Enc(*tok, "hello hello"), ElementsAre(259, ' ', 259));  // "Ġ h" is no merge
  EXPECT_THAT(Enc(*tok, "hellhe"), ElementsAre(258, 256));
  EXPECT_THAT(Enc(*tok, "lll"), ElementsAre(257, 'l'));  // leftmost first on equal rank
  EXPECT_EQ(tok->TokenText(259), "hello");
  EXPECT_EQ(tok->TokenText(' '), "\xC4\xA0");  // Ġ
  EXPECT_EQ(tok->TokenBytes(' '), " ");
  EXPECT_EQ(tok->TokenId("hell"), 258);
  EXPECT_FALSE(tok->TokenId("nope").has_value());
  EXPECT_EQ(tok->vocab_size(), 260);
}

TEST(TokenizerTest, AddedAndSpecialTokens) {
  TestTokenizerOptions o = HelloOptions();
  o.added_tokens.push_back(AddedTokenJson(300, "<|end|>", /*special=*/true));
  o.added_tokens.push_back(AddedTokenJson(301, "<m>", false, /*lstrip=*/true, /*rstrip=*/true));
  o.added_tokens.push_back(AddedTokenJson(302, "[M]", false, /*lstrip=*/true, /*rstrip=*/false));
  o.added_tokens.push_back(AddedTokenJson(303, "<|end|>x", false));  // longest match wins
  auto tok = Load(o);
  EXPECT_THAT(Enc(*tok, "hello<|end|>hello"), ElementsAre(259, 300, 259));
  EXPECT_THAT(Enc(*tok, "hello<|end|>xhello"), ElementsAre(259, 303, 259));
  // allow_special=false: "<|end|>" is plain text: pieces "<|", "end", "|>".
  EXPECT_THAT(Enc(*tok, "hello<|end|>hello", true, false),
              ElementsAre(259, '<', '|', 'e', 'n', 'd', '|', '>', 259));
  // lstrip + rstrip swallow the spaces on both sides.
  EXPECT_THAT(Enc(*tok, "a  <m>  b"), ElementsAre('a', 301, 'b'));
  // lstrip only: the space after stays and joins "b".
  EXPECT_THAT(Enc(*tok, "a  [M] b"), ElementsAre('a', 302, ' ', 'b'));
  EXPECT_TRUE(tok->IsSpecial(300));
  EXPECT_FALSE(tok->IsSpecial(301));
  EXPECT_FALSE(tok->IsSpecial(259));
  EXPECT_EQ(tok->TokenId("<|end|>"), 300);
  EXPECT_EQ(tok->TokenText(300), "<|end|>");
  EXPECT_EQ(tok->TokenBytes(300), "<|end|>");
  EXPECT_EQ(tok->vocab_size(), 304);

  EXPECT_EQ(*tok->Decode(std::vector<int32_t>{259, 300, ' ', 259}), "hello<|end|> hello");
  EXPECT_EQ(*tok->Decode(std::vector<int32_t>{259, 300, ' ', 259}, true), "hello hello");
}

TEST(TokenizerTest, NfcNormalizer) {
  TestTokenizerOptions o;
  o.merges = {{"\xC3", "\xA9"}};  // é
  auto raw = Load(o);
  EXPECT_THAT(Enc(*raw, "e\xCC\x81"), ElementsAre('e', 0xCC, 0x81));
  o.normalizer = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}}}};
  auto nfc = Load(o);
  EXPECT_THAT(Enc(*nfc, "e\xCC\x81"), ElementsAre(256));
  EXPECT_THAT(Enc(*nfc, "\xC3\xA9"), ElementsAre(256));
}

TEST(TokenizerTest, PrefixSpaceAndQwenPattern) {
  TestTokenizerOptions o = HelloOptions();
  o.pre_tokenizer = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  EXPECT_THAT(Enc(*Load(o), "hello"), ElementsAre(' ', 259));
  EXPECT_THAT(Enc(*Load(o), " hello"), ElementsAre(' ', 259));

  o.pre_tokenizer = QwenPreTokenizer();
  auto qwen = Load(o);
  // "x\u3000y" -> "x", "\u3000y": the U+3000 bytes E3 80 80 then y.
  EXPECT_THAT(Enc(*qwen, "x\xE3\x80\x80y"), ElementsAre('x', 0xE3, 0x80, 0x80, 'y'));
  EXPECT_THAT(Enc(*qwen, "12"), ElementsAre('1', '2'));
}

TEST(TokenizerTest, TemplateProcessingAddsBos) {
  TestTokenizerOptions o = HelloOptions();
  o.added_tokens.push_back(AddedTokenJson(260, "<s>", true));
  o.post_processor = nlohmann::json::parse(R"({"type": "Sequence", "processors": [
      {"type": "ByteLevel", "trim_offsets": false},
      {"type": "TemplateProcessing",
       "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
       "pair": [],
       "special_tokens": {"<s>": {"id": "<s>", "ids": [260], "tokens": ["<s>"]}}}]})");
  auto tok = Load(o);
  EXPECT_THAT(Enc(*tok, "hello"), ElementsAre(260, 259));
  EXPECT_THAT(Enc(*tok, "hello", false), ElementsAre(259));
  EXPECT_THAT(Enc(*tok, ""), ElementsAre(260));
}

TEST(TokenizerTest, DecodeErrorsAndLossyBytes) {
  auto tok = Load(HelloOptions());
  EXPECT_EQ(*tok->Decode(std::vector<int32_t>{0xC3, 0xA9}), "\xC3\xA9");
  EXPECT_EQ(*tok->Decode(std::vector<int32_t>{'a', 0xC3}), "a\xEF\xBF\xBD");
  auto bad = tok->Decode(std::vector<int32_t>{'a', 5000});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("5000"));
  EXPECT_THAT(bad.status().message(), HasSubstr("260"));
  EXPECT_FALSE(tok->Decode(std::vector<int32_t>{-1}).ok());
  auto invalid = tok->Encode("ok\xFFno");
  ASSERT_FALSE(invalid.ok());
  EXPECT_THAT(invalid.status().message(), HasSubstr("byte offset 2"));
}

absl::Status LoadError(nlohmann::json j) {
  auto tok = Tokenizer::FromJson(j.dump(), "bad.json");
  return tok.ok() ? absl::OkStatus() : tok.status();
}

TEST(TokenizerTest, LoadErrorsNameFieldAndValue) {
  nlohmann::json base = MakeTokenizerJson(HelloOptions());
  nlohmann::json j = base;
  j["model"]["type"] = "WordPiece";
  EXPECT_THAT(LoadError(j).message(), HasSubstr("model.type"));
  EXPECT_THAT(LoadError(j).message(), HasSubstr("WordPiece"));
  EXPECT_THAT(LoadError(j).message(), HasSubstr("BPE"));
  EXPECT_THAT(LoadError(j).message(), HasSubstr("bad.json"));

  j = base;
  j["pre_tokenizer"] = QwenPreTokenizer();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+|\\s+";
  EXPECT_THAT(LoadError(j).message(), HasSubstr("pre_tokenizer.pretokenizers[0].pattern.Regex"));
  EXPECT_THAT(LoadError(j).message(), HasSubstr("\\\\w+|\\\\s+"));  // JSON-escaped in message

  j = base;
  j["model"]["merges"][1] = "x zz";
  EXPECT_THAT(LoadError(j).message(), HasSubstr("model.merges[1]"));
  EXPECT_THAT(LoadError(j).message(), HasSubstr("zz"));

  j = base;
  j["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_THAT(LoadError(j).message(), HasSubstr("Lowercase"));

  j = base;
  j["decoder"] = {{"type", "WordPiece"}};
  EXPECT_THAT(LoadError(j).message(), HasSubstr("decoder.type"));

  EXPECT_THAT(Tokenizer::FromJson("{not json", "x.json").status().message(), HasSubstr("x.json"));
  auto missing = Tokenizer::FromFile("/nonexistent/tokenizer.json");
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent/tokenizer.json"));
}

// Random NFC-stable text of mixed scripts must round-trip encode -> decode byte for byte.
TEST(TokenizerTest, FuzzRoundTrip) {
  const std::vector<std::string> pool = {
      "a", "Z", "q", "7", "0", " ", "  ", "\n", "\r\n", "\t", "\xE3\x80\x80", "'", "'s", "'LL",
      ".", "!", "?", "-", "_", "\xC3\xA9", "\xC3\x9F", "\xD0\xB6", "\xD0\x96", "\xCE\xBB",
      "\xE4\xB8\xAD", "\xE6\x96\x87", "\xED\x95\x9C", "\xE3\x81\x82", "\xD8\xB9", "\xE0\xA4\x95",
      "\xF0\x9F\x98\x80", "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD", "\xE2\x80\x8D", "\xC2\xA0",
      "\xE2\x85\xA3", "\xD9\xA3", "hello", "<|end|>", "\xEF\xBF\xBD", "\xC5\xBF",
  };
  TestTokenizerOptions o = HelloOptions();
  o.added_tokens.push_back(AddedTokenJson(300, "<|end|>", true));
  std::vector<std::unique_ptr<Tokenizer>> toks;
  toks.push_back(Load(o));
  o.pre_tokenizer = QwenPreTokenizer();
  o.normalizer = {{"type", "NFC"}};
  toks.push_back(Load(o));
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 2000; ++iter) {
    std::string text;
    int n = std::uniform_int_distribution<int>(0, 30)(rng);
    for (int i = 0; i < n; ++i) text += pool[std::uniform_int_distribution<size_t>(0, pool.size() - 1)(rng)];
    for (const auto& tok : toks) {
      for (bool allow_special : {true, false}) {
        auto ids = tok->Encode(text, true, allow_special);
        ASSERT_TRUE(ids.ok()) << ids.status();
        auto back = tok->Decode(*ids);
        ASSERT_TRUE(back.ok()) << back.status();
        ASSERT_EQ(*back, text) << "iteration " << iter;
      }
    }
  }
}

}  // namespace
}  // namespace moemesh
