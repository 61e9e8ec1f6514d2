#include "runtime/gloo_collective.h"

#include <vector>

#include "gloo/rendezvous/file_store.h"
#include "gtest/gtest.h"
#include "model/io/test_temp_dir.h"
#include "runtime/collective_test_util.h"

namespace moemesh {
namespace {

class GlooCollectiveTest : public ::testing::TestWithParam<int> {};

TEST_P(GlooCollectiveTest, AllReduceAllGatherBroadcast) {
  const int size = GetParam();
  TestTempDir dir;
  gloo::rendezvous::FileStore store(dir.path());
  std::vector<std::vector<float>> reduced(size), gathered(size);
  std::vector<std::vector<char>> broadcast(size);
  RunOnRanks(size, [&](int r) {
    GlooCollectiveConfig config;
    config.group = "test_group";
    config.timeout = std::chrono::seconds(20);
    auto created = GlooCollective::Create(config, store, r, size);
    ASSERT_TRUE(created.ok()) << created.status();
    Collective& c = **created;
    EXPECT_EQ(c.rank(), r);
    EXPECT_EQ(c.size(), size);
    // Large enough for Gloo to split the ring into several segments.
    std::vector<float> data(1 << 18);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>((i % 97) * (r + 1));
    ASSERT_TRUE(c.AllReduceSum(data.data(), data.size()).ok());
    reduced[r] = data;
    std::vector<float> in = {10.0f * r, 10.0f * r + 1, 10.0f * r + 2};
    std::vector<float> out(3 * size);
    ASSERT_TRUE(c.AllGather(in.data(), in.size(), out.data()).ok());
    gathered[r] = out;
    std::vector<char> bytes(7, static_cast<char>('a' + r));
    ASSERT_TRUE(c.Broadcast(bytes.data(), bytes.size(), size - 1).ok());
    broadcast[r] = bytes;
  });
  const float factor = size * (size + 1) / 2.0f;
  for (int r = 0; r < size; ++r) {
    ASSERT_EQ(reduced[r].size(), size_t{1} << 18);
    for (size_t i = 0; i < reduced[r].size(); i += 1009) {
      EXPECT_EQ(reduced[r][i], static_cast<float>(i % 97) * factor) << "rank " << r << " i " << i;
    }
    EXPECT_EQ(reduced[r], reduced[0]);
    for (int s = 0; s < size; ++s) {
      for (int j = 0; j < 3; ++j) EXPECT_EQ(gathered[r][3 * s + j], 10.0f * s + j);
    }
    EXPECT_EQ(broadcast[r], std::vector<char>(7, static_cast<char>('a' + size - 1)));
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, GlooCollectiveTest, ::testing::Values(1, 2, 3));

TEST(GlooCollective, MissingPeerTimesOutAsUnavailable) {
  TestTempDir dir;
  gloo::rendezvous::FileStore store(dir.path());
  GlooCollectiveConfig config;
  config.timeout = std::chrono::milliseconds(300);
  auto created = GlooCollective::Create(config, store, 0, 2);  // rank 1 never joins
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.status().code(), absl::StatusCode::kUnavailable) << created.status();
  EXPECT_NE(created.status().message().find("rank 0"), absl::string_view::npos) << created.status();
}

TEST(GlooCollective, RejectsBadRank) {
  TestTempDir dir;
  gloo::rendezvous::FileStore store(dir.path());
  auto created = GlooCollective::Create(GlooCollectiveConfig{}, store, 2, 2);
  EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moemesh
