#include "worker/attention/tp_layout.h"

#include "gtest/gtest.h"
#include "worker/attention/attention_runner.h"

namespace moemesh {
namespace {

ModelConfig Shape(int heads, int kv_heads, int vocab) {
  ModelConfig c;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.vocab_size = vocab;
  return c;
}

TEST(TpLayout, CheckTpNamesTheNumbers) {
  EXPECT_TRUE(AttentionRunner::CheckTp(Shape(6, 2, 100), 2).ok());
  EXPECT_TRUE(AttentionRunner::CheckTp(Shape(8, 2, 100), 4).ok());
  EXPECT_TRUE(AttentionRunner::CheckTp(Shape(8, 2, 100), 8).ok());
  absl::Status s = AttentionRunner::CheckTp(Shape(6, 2, 100), 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("3 and the 2 KV heads"), absl::string_view::npos) << s;
  s = AttentionRunner::CheckTp(Shape(5, 1, 100), 2);
  EXPECT_NE(s.message().find("2 does not divide the 5 attention heads"), absl::string_view::npos) << s;
  EXPECT_FALSE(AttentionRunner::CheckTp(Shape(4, 4, 3), 4).ok());
  EXPECT_FALSE(AttentionRunner::CheckTp(Shape(4, 4, 3), 0).ok());
}

TEST(TpLayout, SplitsHeadsAndVocabulary) {
  const ModelConfig c = Shape(8, 2, 503);
  int64_t next_vocab = 0;
  for (int r = 0; r < 3 + 1; ++r) {
    const TpLayout l = MakeTpLayout(c, r, 4);
    EXPECT_EQ(l.head_begin, 2 * r);
    EXPECT_EQ(l.head_end, 2 * r + 2);
    EXPECT_EQ(l.kv_head_begin, r / 2);  // group of 4 query heads per KV head
    EXPECT_EQ(l.kv_head_end, r / 2 + 1);
    EXPECT_EQ(l.counts_k_norm, r % 2 == 0) << r;  // first holder of each replicated KV head
    EXPECT_EQ(l.vocab_begin, next_vocab);
    EXPECT_EQ(l.vocab_end - l.vocab_begin, r == 3 ? 503 - 3 * 125 : 125);
    EXPECT_EQ(l.vocab_padded, 128);
    next_vocab = l.vocab_end;
    const ShardSpec s = AttentionRunner::ShardFor(c, r, 4);
    EXPECT_EQ(s.head_begin, l.head_begin);
    EXPECT_EQ(s.head_end, l.head_end);
    EXPECT_EQ(s.vocab_begin, l.vocab_begin);
    EXPECT_EQ(s.vocab_end, l.vocab_end);
    ASSERT_TRUE(s.experts.has_value());
    EXPECT_TRUE(s.experts->empty());
    EXPECT_TRUE(s.load_dense);
  }
  EXPECT_EQ(next_vocab, 503);
  // KV heads split with the query heads when the group is at least as large as the KV heads.
  const TpLayout l = MakeTpLayout(Shape(8, 4, 503), 1, 2);
  EXPECT_EQ(l.kv_head_begin, 2);
  EXPECT_EQ(l.kv_head_end, 4);
  EXPECT_TRUE(l.counts_k_norm);
}

}  // namespace
}  // namespace moemesh
