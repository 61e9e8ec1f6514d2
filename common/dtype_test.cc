#include "common/dtype.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(DType, Bf16RoundTripsEveryValue) {
  for (uint32_t v = 0; v < 0x10000; ++v) {
    const float f = Bf16ToF32(static_cast<uint16_t>(v));
    if (std::isnan(f)) continue;
    EXPECT_EQ(F32ToBf16(f), v) << v;
  }
}

TEST(DType, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 lies exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
}

TEST(DType, F16RoundTripsEveryValue) {
  for (uint32_t v = 0; v < 0x10000; ++v) {
    const float f = F16ToF32(static_cast<uint16_t>(v));
    if (std::isnan(f)) continue;
    EXPECT_EQ(F32ToF16(f), v) << v;
  }
}

TEST(DType, F16KnownValues) {
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F32ToF16(70000.0f), 0x7c00);  // overflow to +inf
}

TEST(DType, ParseNamesAndRejectsUnknown) {
  EXPECT_EQ(*ParseDType("BF16"), DType::kBF16);
  auto bad = ParseDType("F8_E4M3");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("F8_E4M3"), std::string::npos);
}

}  // namespace
}  // namespace moemesh
