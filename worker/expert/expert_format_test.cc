#include "worker/expert/expert_format.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace moemesh {
namespace {

TEST(ExpertFormatTest, ParsesEveryName) {
  for (const std::string& name : ExpertFormatNames()) {
    auto f = ParseExpertFormat(name);
    ASSERT_TRUE(f.ok()) << name;
    EXPECT_EQ(f->Name(), name);
  }
  EXPECT_TRUE(ParseExpertFormat("fp32")->fp32);
  EXPECT_EQ(ParseExpertFormat("int4-g128")->spec.group, 128);
}

TEST(ExpertFormatTest, BytesPerWeight) {
  // A float scale and an int32 group sum per group of weights.
  EXPECT_EQ(ParseExpertFormat("fp32")->BytesPerWeight(), 4.0);
  EXPECT_EQ(ParseExpertFormat("bf16")->BytesPerWeight(), 2.0);
  EXPECT_EQ(ParseExpertFormat("int8-g32")->BytesPerWeight(), 1.25);
  EXPECT_EQ(ParseExpertFormat("int8-g128")->BytesPerWeight(), 1.0625);
  EXPECT_EQ(ParseExpertFormat("int4-g32")->BytesPerWeight(), 0.75);
  EXPECT_EQ(ParseExpertFormat("int4-g128")->BytesPerWeight(), 0.5625);
}

TEST(ExpertFormatTest, RejectsUnknownNames) {
  for (const char* bad : {"", "int8", "int4-g64", "BF16", "f32"}) {
    auto f = ParseExpertFormat(bad);
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(f.status().message(), ::testing::HasSubstr(absl::StrCat("\"", bad, "\" is not one of bf16")));
  }
}

}  // namespace
}  // namespace moemesh
