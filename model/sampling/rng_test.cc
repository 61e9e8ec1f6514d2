#include "model/sampling/rng.h"

#include <cstdint>

#include "gtest/gtest.h"

namespace moemesh {
namespace {

// Published SplitMix64 test vector (Rosetta Code "Pseudo-random numbers/Splitmix64", seed
// 1234567), and the first output for seed 0 of Vigna's reference splitmix64.c.
TEST(SplitMix64, MatchesPublishedVectors) {
  SplitMix64 rng(1234567);
  EXPECT_EQ(rng.Next(), 6457827717110365317ull);
  EXPECT_EQ(rng.Next(), 3203168211198807973ull);
  EXPECT_EQ(rng.Next(), 9817491932198370423ull);
  EXPECT_EQ(rng.Next(), 4593380528125082431ull);
  EXPECT_EQ(rng.Next(), 16408922859458223821ull);
  EXPECT_EQ(SplitMix64(0).Next(), 0xE220A8397B1DCDAFull);
}

TEST(SplitMix64, AtMatchesTheStream) {
  SplitMix64 rng(42);
  for (uint64_t i = 0; i < 100; ++i) EXPECT_EQ(rng.Next(), SplitMix64::At(42, i)) << i;
}

TEST(SplitMix64, UnitDoubleIsExactAndInRange) {
  EXPECT_EQ(SplitMix64::ToUnitDouble(0), 0.0);
  EXPECT_EQ(SplitMix64::ToUnitDouble(~0ull), 1.0 - 0x1.0p-53);
  EXPECT_EQ(SplitMix64::ToUnitDouble(1ull << 63), 0.5);
  SplitMix64 rng(7);
  double sum = 0;
  constexpr int kDraws = 100000;
  for (int i = 0; i < kDraws; ++i) {
    const double u = rng.NextDouble();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  // Mean of U[0,1) has standard deviation sqrt(1/12 / 1e5) ~ 0.0009; 5 sigma.
  EXPECT_NEAR(sum / kDraws, 0.5, 0.0046);
}

}  // namespace
}  // namespace moemesh

namespace moemesh {
namespace {

TEST(SplitMix64Skip, SkipEqualsDrawing) {
  SplitMix64 a(99), b(99);
  for (int i = 0; i < 37; ++i) a.Next();
  b.Skip(37);
  EXPECT_EQ(a.Next(), b.Next());
  EXPECT_EQ(SplitMix64::At(99, 38), b.Next());
}

}  // namespace
}  // namespace moemesh
