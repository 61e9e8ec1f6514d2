#include "runtime/local_collective.h"

#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/collective_test_util.h"

namespace moemesh {
namespace {

class LocalCollectiveTest : public ::testing::TestWithParam<int> {};

TEST_P(LocalCollectiveTest, AllReduceAllGatherBroadcast) {
  const int size = GetParam();
  auto group = LocalCollective::CreateGroup(size);
  std::vector<std::vector<float>> reduced(size), gathered(size);
  std::vector<std::vector<char>> broadcast(size);
  RunOnRanks(size, [&](int r) {
    Collective& c = *group[r];
    EXPECT_EQ(c.rank(), r);
    EXPECT_EQ(c.size(), size);
    for (int round = 0; round < 20; ++round) {  // repeated, to exercise barrier reuse
      std::vector<float> data = {1.0f * r, 2.0f + r, -0.5f * round};
      ASSERT_TRUE(c.AllReduceSum(data.data(), data.size()).ok());
      reduced[r] = data;
      std::vector<float> in = {10.0f * r + round, 10.0f * r + 1};
      std::vector<float> out(2 * size);
      ASSERT_TRUE(c.AllGather(in.data(), in.size(), out.data()).ok());
      gathered[r] = out;
      std::vector<char> bytes(5, static_cast<char>('a' + r));
      ASSERT_TRUE(c.Broadcast(bytes.data(), bytes.size(), size - 1).ok());
      broadcast[r] = bytes;
    }
  });
  float sum_r = 0;
  for (int r = 0; r < size; ++r) sum_r += r;
  for (int r = 0; r < size; ++r) {
    EXPECT_EQ(reduced[r], (std::vector<float>{sum_r, 2.0f * size + sum_r, -0.5f * 19 * size}));
    for (int s = 0; s < size; ++s) {
      EXPECT_EQ(gathered[r][2 * s], 10.0f * s + 19);
      EXPECT_EQ(gathered[r][2 * s + 1], 10.0f * s + 1);
    }
    EXPECT_EQ(broadcast[r], std::vector<char>(5, static_cast<char>('a' + size - 1)));
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, LocalCollectiveTest, ::testing::Values(1, 2, 3, 4));

TEST(LocalCollective, MismatchedCountsFailOnEveryRank) {
  auto group = LocalCollective::CreateGroup(2);
  std::vector<absl::Status> status(2);
  RunOnRanks(2, [&](int r) {
    std::vector<float> data(3 + r, 1.0f);
    status[r] = group[r]->AllReduceSum(data.data(), data.size());
  });
  for (const absl::Status& s : status) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("rank 1 passed 4"), absl::string_view::npos) << s;
  }
}

}  // namespace
}  // namespace moemesh
