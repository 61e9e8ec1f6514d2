#include "model/generation/request_state.h"

#include <cmath>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/golden/fixtures.h"

namespace moemesh {
namespace {

using ::testing::HasSubstr;

class RequestStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tok = Tokenizer::FromFile((testing::FixtureDir() / "tokenizers/qwen2/tokenizer.json").string());
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = std::move(*tok);
    vocab_ = tok_->vocab_size();
    eos_ = *tok_->TokenId("<|endoftext|>");
  }

  // Logits that make greedy sampling pick `token`.
  std::vector<float> Force(int32_t token) const {
    std::vector<float> logits(vocab_, 0.0f);
    logits[token] = 10.0f;
    return logits;
  }

  GenerationParams Greedy() const {
    GenerationParams p;
    p.sampling.temperature = 0;
    return p;
  }

  // Feeds `tokens` one by one; returns the outputs.
  std::vector<StepOutput> Feed(RequestState& r, const std::vector<int32_t>& tokens) {
    std::vector<StepOutput> outs;
    for (int32_t t : tokens) {
      if (r.finished()) break;
      outs.push_back(r.Accept(Force(t)));
    }
    return outs;
  }

  std::unique_ptr<Tokenizer> tok_;
  int32_t vocab_ = 0;
  int32_t eos_ = 0;
};

TEST_F(RequestStateTest, StopStringAcrossTokensIsNeverShown) {
  auto ids = tok_->Encode("Hello world. Bye now", false);
  ASSERT_TRUE(ids.ok());
  GenerationParams p = Greedy();
  p.stop_strings = {"ld. B", "zzz"};
  RequestState r(1, {1, 2}, p, tok_.get(), {eos_}, 1000, 0);
  std::string shown;
  for (const StepOutput& o : Feed(r, *ids)) {
    shown += o.text;
    EXPECT_EQ(shown.find("ld"), std::string::npos) << "part of the stop string was shown: " << shown;
    if (o.finish != FinishReason::kNone) {
      EXPECT_EQ(o.finish, FinishReason::kStopSequence);
      EXPECT_EQ(o.matched_stop, "ld. B");
    }
  }
  EXPECT_EQ(shown, "Hello wor");
  EXPECT_TRUE(r.finished());
}

TEST_F(RequestStateTest, HeldBackPrefixIsReleasedWhenItCannotMatch) {
  auto ids = tok_->Encode("abc abd", false);
  ASSERT_TRUE(ids.ok());
  GenerationParams p = Greedy();
  p.stop_strings = {"abx"};
  p.max_tokens = static_cast<int32_t>(ids->size());
  RequestState r(1, {1}, p, tok_.get(), {eos_}, 1000, 0);
  std::string shown;
  for (const StepOutput& o : Feed(r, *ids)) shown += o.text;
  EXPECT_EQ(shown, "abc abd");
  EXPECT_EQ(r.finish_reason(), FinishReason::kLength);
}

TEST_F(RequestStateTest, EosStopsUnlessIgnored) {
  auto ids = tok_->Encode("hi", false);
  std::vector<int32_t> seq = *ids;
  seq.push_back(eos_);
  seq.push_back((*ids)[0]);
  RequestState r(1, {1}, Greedy(), tok_.get(), {eos_}, 1000, 0);
  auto outs = Feed(r, seq);
  ASSERT_EQ(outs.size(), ids->size() + 1);
  EXPECT_EQ(outs.back().finish, FinishReason::kStop);
  EXPECT_EQ(r.text(), "hi");  // the EOS token adds no text

  GenerationParams p = Greedy();
  p.ignore_eos = true;
  p.max_tokens = static_cast<int32_t>(seq.size());
  RequestState r2(2, {1}, p, tok_.get(), {eos_}, 1000, 0);
  auto outs2 = Feed(r2, seq);
  ASSERT_EQ(outs2.size(), seq.size());
  EXPECT_EQ(outs2.back().finish, FinishReason::kLength);
}

TEST_F(RequestStateTest, StopTokenIdsAndMaxTokensAndContext) {
  GenerationParams p = Greedy();
  p.stop_token_ids = {7};
  RequestState r(1, {1}, p, tok_.get(), {eos_}, 1000, 0);
  auto outs = Feed(r, {5, 6, 7, 8});
  ASSERT_EQ(outs.size(), 3u);
  EXPECT_EQ(outs.back().finish, FinishReason::kStop);

  // No max_tokens: the context (5) minus the prompt (2) is the limit.
  RequestState r2(2, {1, 2}, Greedy(), tok_.get(), {eos_}, 5, 0);
  auto outs2 = Feed(r2, {5, 6, 7, 8, 9});
  ASSERT_EQ(outs2.size(), 3u);
  EXPECT_EQ(outs2.back().finish, FinishReason::kLength);
}

TEST_F(RequestStateTest, SplitUtf8IsNeverEmittedBroken) {
  // Byte-level tokens of an emoji and CJK text, fed one byte token at a time.
  const std::string text = "a\xF0\x9F\x98\x80\xE4\xB8\xAD b";
  std::vector<int32_t> bytes_as_tokens;
  for (unsigned char c : text) {
    auto ids = tok_->Encode(std::string(1, static_cast<char>(c)), false);
    // Invalid single bytes cannot be encoded from text; find the byte token by its bytes.
    bool found = false;
    for (int32_t id = 0; id < vocab_ && !found; ++id) {
      if (tok_->TokenBytes(id) == std::string(1, static_cast<char>(c))) {
        bytes_as_tokens.push_back(id);
        found = true;
      }
    }
    ASSERT_TRUE(found) << "no token for byte " << int(c);
    (void)ids;
  }
  GenerationParams p = Greedy();
  p.max_tokens = static_cast<int32_t>(bytes_as_tokens.size());
  RequestState r(1, {1}, p, tok_.get(), {eos_}, 1000, 0);
  std::string shown;
  for (const StepOutput& o : Feed(r, bytes_as_tokens)) {
    shown += o.text;
    // Every prefix shown is valid UTF-8: re-encoding it as text must succeed.
    EXPECT_TRUE(tok_->Encode(shown, false).ok()) << "broken UTF-8 after " << shown.size() << " bytes";
  }
  EXPECT_EQ(shown, text);
}

TEST(ValidateGeneration, EachBadFieldIsNamedWithItsLimit) {
  ModelLimits limits{100, 50, true};
  GenerationParams ok;
  EXPECT_TRUE(ValidateGeneration(std::vector<int32_t>{1, 2}, ok, limits).ok());

  auto msg = [&](std::vector<int32_t> prompt, GenerationParams p) {
    absl::Status s = ValidateGeneration(prompt, p, limits);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    return std::string(s.message());
  };
  EXPECT_THAT(msg({}, ok), HasSubstr("prompt is empty"));
  EXPECT_THAT(msg(std::vector<int32_t>(50, 1), ok), HasSubstr("context length is 50"));
  EXPECT_THAT(msg({1, 100}, ok), HasSubstr("prompt token 1 = 100 is outside the vocabulary [0, 100)"));
  GenerationParams p = ok;
  p.max_tokens = 0;
  EXPECT_THAT(msg({1}, p), HasSubstr("max_tokens = 0"));
  p.max_tokens = 50;
  EXPECT_THAT(msg({1}, p), HasSubstr("at most 49"));
  p = ok;
  p.sampling.temperature = -1;
  EXPECT_THAT(msg({1}, p), HasSubstr("temperature"));
  p = ok;
  p.sampling.top_p = 0;
  EXPECT_THAT(msg({1}, p), HasSubstr("top_p"));
  p = ok;
  p.stop_strings = {""};
  EXPECT_THAT(msg({1}, p), HasSubstr("empty string"));
  p = ok;
  p.stop_strings = std::vector<std::string>(kMaxStopStrings + 1, "x");
  EXPECT_THAT(msg({1}, p), HasSubstr("limit is 16"));
  p = ok;
  p.stop_token_ids = {-3};
  EXPECT_THAT(msg({1}, p), HasSubstr("stop_token_ids entry -3"));
  ModelLimits no_tok{100, 50, false};
  p = ok;
  p.stop_strings = {"x"};
  EXPECT_FALSE(ValidateGeneration(std::vector<int32_t>{1}, p, no_tok).ok());
}

}  // namespace
}  // namespace moemesh
