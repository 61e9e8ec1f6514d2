#include "coordinator/kv_block_allocator.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

using ::testing::ElementsAre;

TEST(KvBlockAllocator, AllocatesLowestFreeIdsFirst) {
  KvBlockAllocator a(8, 16);
  EXPECT_EQ(a.block_size(), 16);
  EXPECT_EQ(a.num_blocks(), 8);
  auto first = a.Allocate(3);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(*first, ElementsAre(0, 1, 2));
  auto second = a.Allocate(2);
  ASSERT_TRUE(second.ok());
  EXPECT_THAT(*second, ElementsAre(3, 4));
  a.Release(std::vector<int32_t>{1});
  auto third = a.Allocate(2);
  ASSERT_TRUE(third.ok());
  EXPECT_THAT(*third, ElementsAre(1, 5));
  EXPECT_EQ(a.num_used(), 6);
  EXPECT_EQ(a.num_free(), 2);
}

TEST(KvBlockAllocator, AllOrNothingWhenFull) {
  KvBlockAllocator a(4, 16);
  ASSERT_TRUE(a.Allocate(3).ok());
  auto too_many = a.Allocate(2);
  ASSERT_FALSE(too_many.ok());
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(too_many.status().message(), "KV cache full: need 2 blocks, 1 free of 4");
  EXPECT_EQ(a.num_free(), 1);  // nothing taken
  auto zero = a.Allocate(0);
  ASSERT_TRUE(zero.ok());
  EXPECT_TRUE(zero->empty());
}

TEST(KvBlockAllocator, SharedBlockFreedByLastHolder) {
  KvBlockAllocator a(2, 4);
  auto blocks = a.Allocate(1);
  ASSERT_TRUE(blocks.ok());
  const int32_t b = (*blocks)[0];
  a.Retain(b);
  EXPECT_EQ(a.ref_count(b), 2);
  a.Release({b});
  EXPECT_EQ(a.num_used(), 1);
  a.Release({b});
  EXPECT_EQ(a.num_used(), 0);
  EXPECT_EQ(a.ref_count(b), 0);
}

TEST(KvBlockAllocator, ReleasingAFreeBlockIsABrokenInvariant) {
  KvBlockAllocator a(2, 4);
  EXPECT_DEATH(a.Release({1}), "check failed");
  EXPECT_DEATH(a.Retain(0), "check failed");
}

TEST(KvBlockAllocator, BlocksForRoundsUp) {
  EXPECT_EQ(KvBlockAllocator::BlocksFor(0, 16), 0);
  EXPECT_EQ(KvBlockAllocator::BlocksFor(1, 16), 1);
  EXPECT_EQ(KvBlockAllocator::BlocksFor(16, 16), 1);
  EXPECT_EQ(KvBlockAllocator::BlocksFor(17, 16), 2);
  EXPECT_EQ(KvBlockAllocator::BlocksFor(4096, 16), 256);
}

}  // namespace
}  // namespace moemesh
