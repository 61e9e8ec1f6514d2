// Hwloc and NodeArena: memory bound to the node asked for, aligned, reserved ahead.
#include "worker/expert/numa_memory.h"

#include <cstring>

#include <gtest/gtest.h>

#include "common/topology.h"

namespace moemesh {
namespace {

TEST(NumaMemoryTest, ArenaMemoryIsBoundToItsNode) {
  auto topo = DiscoverTopology();
  ASSERT_TRUE(topo.ok()) << topo.status();
  if (topo->numa_nodes[0].memory_bytes == 0) GTEST_SKIP() << "hwloc reports no NUMA node here";
  auto hwloc = Hwloc::Open();
  ASSERT_TRUE(hwloc.ok()) << hwloc.status();
  for (const NumaNode& node : topo->numa_nodes) {
    NodeArena arena(hwloc->get(), node.os_index, 1 << 20);
    void* p = arena.Allocate(100000);
    ASSERT_NE(p, nullptr);
    std::memset(p, 1, 100000);
    auto nodes = (*hwloc)->AreaNodes(p, 100000);
    ASSERT_TRUE(nodes.ok()) << nodes.status();
    EXPECT_EQ(*nodes, std::vector<int>{node.os_index});
  }
}

TEST(NumaMemoryTest, ArenaAlignsAndReserves) {
  auto hwloc = Hwloc::Open();
  ASSERT_TRUE(hwloc.ok()) << hwloc.status();
  NodeArena arena(hwloc->get(), -1, 4096);
  char* a = static_cast<char*>(arena.Allocate(1));
  char* b = static_cast<char*>(arena.Allocate(65));
  ASSERT_TRUE(a != nullptr && b != nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 64, 0u);
  EXPECT_EQ(b - a, 64);  // bump allocation within a chunk
  EXPECT_EQ(arena.used_bytes(), 64u + 128u);
  EXPECT_EQ(arena.mapped_bytes(), 4096u);
  // A reservation larger than what is left starts a chunk big enough for it.
  ASSERT_TRUE(arena.Reserve(10100).ok());  // rounded to 10112 = 2 x 5056
  EXPECT_EQ(arena.mapped_bytes(), 4096u + 10112u);
  char* c = static_cast<char*>(arena.Allocate(5000));
  char* d = static_cast<char*>(arena.Allocate(5000));
  EXPECT_EQ(d - c, 5056);  // both inside the reserved chunk
  EXPECT_EQ(arena.mapped_bytes(), 4096u + 10112u);
  std::memset(c, 0, 10112);
}

}  // namespace
}  // namespace moemesh
