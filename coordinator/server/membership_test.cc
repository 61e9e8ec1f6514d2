#include "coordinator/server/membership.h"

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

namespace moemesh {
namespace {

v1::RegisterRequest Request(v1::WorkerRole role, const std::string& name,
                            const std::string& address) {
  v1::RegisterRequest r;
  r.set_role(role);
  r.set_protocol_version(v1::PROTOCOL_VERSION_CURRENT);
  r.set_name(name);
  r.set_address(address);
  return r;
}

TEST(Membership, WaitForSaysHowManyOfEachRegisteredAndDescribeNamesThem) {
  Membership m;
  EXPECT_EQ(m.Describe(), "none");
  ASSERT_TRUE(m.Register(Request(v1::WORKER_ROLE_ATTENTION, "attention-1", "127.0.0.1:7001")).ok());
  ASSERT_TRUE(m.Register(Request(v1::WORKER_ROLE_EXPERT, "expert-0", "127.0.0.1:7002")).ok());
  auto w = m.WaitFor(2, 1, std::chrono::steady_clock::now() + std::chrono::milliseconds(20));
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(w.status().message().find("1 of 2 attention and 1 of 1 expert"), std::string::npos)
      << w.status();
  EXPECT_EQ(m.Describe(),
            "attention-0 (attention-1) at 127.0.0.1:7001, expert-0 (expert-0) at 127.0.0.1:7002");
  EXPECT_EQ(m.Registered(), std::make_pair(1, 1));
}

TEST(Membership, WaitForReturnsOnceTheLastWorkerRegisters) {
  Membership m;
  ASSERT_TRUE(m.Register(Request(v1::WORKER_ROLE_ATTENTION, "a", "127.0.0.1:7001")).ok());
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(m.Register(Request(v1::WORKER_ROLE_ATTENTION, "b", "127.0.0.1:7003")).ok());
  });
  auto w = m.WaitFor(2, 0, std::chrono::steady_clock::now() + std::chrono::seconds(30));
  late.join();
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_EQ(w->size(), 2u);
  EXPECT_EQ((*w)[1].id, "attention-1");
  EXPECT_EQ((*w)[1].address, "127.0.0.1:7003");
}

TEST(Membership, ARetriedRegistrationGetsTheIdItHasAndCountsOnce) {
  Membership m;
  auto first = m.Register(Request(v1::WORKER_ROLE_ATTENTION, "attention-3", "127.0.0.1:7001"));
  ASSERT_TRUE(first.ok());
  auto again = m.Register(Request(v1::WORKER_ROLE_ATTENTION, "attention-3", "127.0.0.1:7001"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *first);
  // Another address (or name) is another worker.
  auto other = m.Register(Request(v1::WORKER_ROLE_ATTENTION, "attention-3", "127.0.0.1:7002"));
  ASSERT_TRUE(other.ok());
  EXPECT_NE(*other, *first);
  auto w = m.WaitFor(3, 0, std::chrono::steady_clock::now() + std::chrono::milliseconds(20));
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("2 of 3 attention"), std::string::npos) << w.status();
}

TEST(Membership, RefusesAWorkerWithoutAnAddressOrRole) {
  Membership m;
  auto no_address = m.Register(Request(v1::WORKER_ROLE_ATTENTION, "a", ""));
  EXPECT_EQ(no_address.status().code(), absl::StatusCode::kInvalidArgument);
  auto no_role = m.Register(Request(v1::WORKER_ROLE_UNSPECIFIED, "a", "127.0.0.1:1"));
  EXPECT_EQ(no_role.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.Describe(), "none");
}

}  // namespace
}  // namespace moemesh
