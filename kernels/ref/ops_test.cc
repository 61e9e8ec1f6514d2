#include "kernels/ref/ops.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace moemesh::ref {
namespace {

TEST(RefOps, LinearWithBias) {
  const float x[] = {1, 2, 3, 4, 5, 6};            // [2, 3]
  const float w[] = {1, 0, -1, 0.5f, 0.5f, 0.5f};  // [2, 3]
  const float b[] = {10, 20};
  float y[4];
  Linear(x, w, b, y, 2, 2, 3);
  EXPECT_FLOAT_EQ(y[0], 1 - 3 + 10);
  EXPECT_FLOAT_EQ(y[1], 3 + 20);
  EXPECT_FLOAT_EQ(y[2], 4 - 6 + 10);
  EXPECT_FLOAT_EQ(y[3], 7.5f + 20);
}

TEST(RefOps, RmsNorm) {
  const float x[] = {3, 4};
  const float w[] = {1, 2};
  float out[2];
  RmsNorm(x, w, out, 1, 2, 0.0f);
  const float rms = std::sqrt((9.0f + 16.0f) / 2);
  EXPECT_FLOAT_EQ(out[0], 3 / rms);
  EXPECT_FLOAT_EQ(out[1], 8 / rms);
}

TEST(RefOps, RopeRotatesPairsHalfApart) {
  float inv[2];
  RopeInvFreq(10000.0f, 4, inv);
  EXPECT_FLOAT_EQ(inv[0], 1.0f);
  EXPECT_FLOAT_EQ(inv[1], 0.01f);
  float x[] = {1, 0, 0, 1};  // pairs (x0, x2) and (x1, x3)
  RopeNeox(x, 1, 4, 2, inv);
  EXPECT_NEAR(x[0], std::cos(2.0f), 1e-6);
  EXPECT_NEAR(x[2], std::sin(2.0f), 1e-6);
  EXPECT_NEAR(x[1], -std::sin(0.02f), 1e-6);
  EXPECT_NEAR(x[3], std::cos(0.02f), 1e-6);
}

TEST(RefOps, SoftmaxAndSilu) {
  float x[] = {0, std::log(3.0f)};
  Softmax(x, 2);
  EXPECT_NEAR(x[0], 0.25f, 1e-7);
  EXPECT_NEAR(x[1], 0.75f, 1e-7);
  const float g[] = {0, 2};
  const float u[] = {5, 3};
  float o[2];
  SiluMul(g, u, o, 2);
  EXPECT_FLOAT_EQ(o[0], 0);
  EXPECT_NEAR(o[1], 2 / (1 + std::exp(-2.0f)) * 3, 1e-6);
}

TEST(RefOps, AttentionCausalGqaAndWindow) {
  // 2 query heads share 1 KV head; head_dim 1; 3 tokens.
  const float k[] = {0, 0, 0};
  const float v[] = {1, 2, 6};
  const float q[] = {1, 1, 1, 1, 1, 1};
  float out[6];
  Attention(q, k, v, out, 3, 3, 2, 1, 1, 1.0f, 0);
  // Equal scores: each query averages the values it can see.
  EXPECT_FLOAT_EQ(out[0], 1);
  EXPECT_FLOAT_EQ(out[1], 1);
  EXPECT_FLOAT_EQ(out[2], 1.5f);
  EXPECT_FLOAT_EQ(out[4], 3);
  // Decode of the last token only, window 2: sees tokens 1 and 2.
  Attention(q, k, v, out, 1, 3, 2, 1, 1, 1.0f, 2);
  EXPECT_FLOAT_EQ(out[0], 4);
}

TEST(RefOps, RouteTopK) {
  const float logits[] = {0, std::log(4.0f), std::log(2.0f), std::log(1.0f)};  // probs 1:4:2:1
  int32_t ids[2];
  float w[2];
  RouteTopK(logits, 4, 2, false, ids, w);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 2);
  EXPECT_NEAR(w[0], 0.5f, 1e-6);
  EXPECT_NEAR(w[1], 0.25f, 1e-6);
  RouteTopK(logits, 4, 2, true, ids, w);
  EXPECT_NEAR(w[0], 2.0f / 3, 1e-6);
  // Ties go to the lower id.
  const float tie[] = {1, 1, 1};
  RouteTopK(tie, 3, 2, true, ids, w);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 1);
}

}  // namespace
}  // namespace moemesh::ref
