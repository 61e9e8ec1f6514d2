#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "worker/expert/expert_pool.h"
#include "worker/expert/expert_service.h"
#include "worker/expert/expert_test_util.h"
#include "worker/expert/expert_wire.h"
#include "worker/expert/grpc_expert_client.h"
#include "worker/expert/local_expert_client.h"
#include "worker/expert/moe_dispatcher.h"

namespace moemesh {
namespace {

using ::moemesh::testing::ExpertFixtureDir;
using ::moemesh::testing::MakeRandomBatch;
using ::moemesh::testing::RandomBatch;
using ::testing::HasSubstr;

std::unique_ptr<ExpertPool> LoadPool(const std::vector<std::vector<int>>& layer_experts = {}) {
  auto pool = ExpertPool::Load(ExpertFixtureDir(), layer_experts, ThreadPoolOptions{2, {}});
  MM_CHECK(pool.ok());
  return std::move(*pool);
}

// A pool served on a loopback port.
struct Served {
  std::unique_ptr<ExpertPool> pool;
  std::unique_ptr<ExpertService> service;
  std::unique_ptr<grpc::Server> server;
  std::string address;

  explicit Served(std::unique_ptr<ExpertPool> p) : pool(std::move(p)) {
    service = std::make_unique<ExpertService>(pool.get());
    int port = 0;
    auto s = StartExpertServer(service.get(), "127.0.0.1:0", &port);
    MM_CHECK(s.ok());
    server = std::move(*s);
    address = absl::StrCat("127.0.0.1:", port);
  }
  // Clients close their streams first; the deadline only bounds a test that forgot to.
  ~Served() { server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5)); }
};

TEST(ExpertRpcTest, RoundTripEqualsLocal) {
  Served served(LoadPool());
  LocalExpertClient local(served.pool.get());
  GrpcExpertClient remote(served.address);
  const ModelConfig& c = served.pool->config();
  uint32_t seed = 7;
  for (int round = 0; round < 2; ++round) {  // several calls on one stream
    for (int tokens : {1, 3, 17, 300}) {
      const RandomBatch b = MakeRandomBatch(c, 2, tokens, seed++, 0.2);
      std::vector<float> want(static_cast<size_t>(tokens) * c.hidden_size), got(want.size(), -1.0f);
      ASSERT_TRUE(local.Run(b.batch(), absl::MakeSpan(want)).ok());
      const absl::Status st = remote.Run(b.batch(), absl::MakeSpan(got));
      ASSERT_TRUE(st.ok()) << st;
      ASSERT_EQ(got, want) << "tokens " << tokens;
    }
  }
}

TEST(ExpertRpcTest, WorkerErrorsKeepTheirCodeAndTheStream) {
  Served served(LoadPool({{0}, {}, {0}}));
  GrpcExpertClient remote(served.address);
  const ModelConfig& c = served.pool->config();
  RandomBatch b = MakeRandomBatch(c, 0, 2, 1);
  std::vector<float> out(2 * c.hidden_size);
  absl::Status st = remote.Run(b.batch(), absl::MakeSpan(out));  // routes to experts it lacks
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr(served.address));
  EXPECT_THAT(st.message(), HasSubstr("layer 0 expert"));
  std::fill(b.expert_ids.begin(), b.expert_ids.end(), 0);
  st = remote.Run(b.batch(), absl::MakeSpan(out));
  EXPECT_TRUE(st.ok()) << st;
}

TEST(ExpertRpcTest, MalformedRequestGetsErrorAndStreamContinues) {
  Served served(LoadPool());
  const ModelConfig& c = served.pool->config();
  const RandomBatch b = MakeRandomBatch(c, 0, 3, 21);
  std::vector<float> want(3 * c.hidden_size);
  ASSERT_TRUE(served.pool->Run(b.batch(), absl::MakeSpan(want)).ok());

  auto channel = grpc::CreateChannel(served.address, grpc::InsecureChannelCredentials());
  auto stub = v1::ExpertWorker::NewStub(channel);
  grpc::ClientContext context;
  auto stream = stub->Dispatch(&context);
  v1::ExpertRequest good;
  EncodeExpertRequest(b.batch(), 1, &good);

  struct Bad {
    std::function<void(v1::ExpertRequest*)> mutate;
    const char* message;
  };
  const std::vector<Bad> bads = {
      {[](v1::ExpertRequest* r) { r->mutable_hidden_states()->resize(17); },
       "ExpertRequest.hidden_states has 17 bytes, expected 576"},
      {[](v1::ExpertRequest* r) { r->mutable_expert_ids()->RemoveLast(); },
       "ExpertRequest.expert_ids has 8 values, expected 9"},
      {[](v1::ExpertRequest* r) { r->add_expert_weights(1.0f); },
       "ExpertRequest.expert_weights has 10 values, expected 9"},
      {[](v1::ExpertRequest* r) { r->set_num_tokens(-4); }, "ExpertRequest.num_tokens is -4"},
      {[](v1::ExpertRequest* r) { r->set_top_k(0); }, "ExpertRequest.top_k is 0"},
      {[](v1::ExpertRequest* r) { r->set_hidden(0); }, "ExpertRequest.hidden is 0"},
      {[](v1::ExpertRequest* r) { r->set_num_tokens(1 << 30); }, "hidden_states has 576 bytes"},
      {[](v1::ExpertRequest* r) { r->set_layer(1); }, "layer 1 is not a MoE layer"},
      {[](v1::ExpertRequest* r) { r->set_expert_ids(2, 99); }, "expert_ids[2] (token 0) is 99"},
  };
  uint64_t seq = 100;
  for (const Bad& bad : bads) {
    v1::ExpertRequest r = good;
    r.set_sequence(++seq);
    bad.mutate(&r);
    ASSERT_TRUE(stream->Write(r));
    v1::ExpertResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.sequence(), seq);
    EXPECT_THAT(resp.error(), HasSubstr(bad.message));
    EXPECT_EQ(resp.error_code(), static_cast<int>(absl::StatusCode::kInvalidArgument)) << resp.error();
    EXPECT_TRUE(resp.partial_sums().empty());
  }
  // The same stream still serves a good request.
  good.set_sequence(++seq);
  ASSERT_TRUE(stream->Write(good));
  v1::ExpertResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.sequence(), seq);
  EXPECT_EQ(resp.error(), "");
  std::vector<float> got(want.size());
  ASSERT_TRUE(DecodeExpertPartialSums(resp, absl::MakeSpan(got)).ok());
  EXPECT_EQ(got, want);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST(ExpertRpcTest, ConcurrentStreamsAndDispatcherOverGrpc) {
  // Three workers with disjoint experts behind a dispatcher, called from two threads at once
  // (one GrpcExpertClient set per caller, as one per attention rank), equal one local pool.
  Served w0(LoadPool({{0, 3}, {}, {0, 3}}));
  Served w1(LoadPool({{1, 4}, {}, {1, 4}}));
  Served w2(LoadPool({{2, 5}, {}, {2, 5}}));
  auto full = LoadPool();
  const ModelConfig& c = full->config();
  std::vector<std::vector<std::vector<int>>> owners(c.num_layers,
                                                    std::vector<std::vector<int>>(c.num_experts));
  for (int l : {0, 2}) {
    for (int e = 0; e < c.num_experts; ++e) owners[l][e] = {e % 3};
  }
  std::atomic<int> failures{0};
  auto rank = [&](uint32_t seed) {
    GrpcExpertClient g0(w0.address), g1(w1.address), g2(w2.address);
    auto d = MoeDispatcher::Create(owners, {&g0, &g1, &g2});
    MM_CHECK(d.ok());
    for (int tokens : {1, 17, 300}) {
      const RandomBatch b = MakeRandomBatch(c, 2, tokens, seed++, 0.1);
      std::vector<float> want(static_cast<size_t>(tokens) * c.hidden_size), got(want.size());
      MM_CHECK(full->Run(b.batch(), absl::MakeSpan(want)).ok());
      if (!(*d)->Run(b.batch(), absl::MakeSpan(got)).ok()) {
        ++failures;
        continue;
      }
      for (size_t i = 0; i < want.size(); ++i) {
        if (std::abs(got[i] - want[i]) > 1e-6 * (1.0 + std::abs(want[i]))) {
          ++failures;
          break;
        }
      }
    }
  };
  std::thread other(rank, 1000u);
  rank(2000u);
  other.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(ExpertRpcTest, UnreachableWorkerIsUnavailableNamingTheAddress) {
  std::string address;
  {
    Served gone(LoadPool({{0}, {}, {0}}));
    address = gone.address;
  }
  GrpcExpertClient remote(address, GrpcExpertClientOptions{std::chrono::milliseconds(10000)});
  RandomBatch b = MakeRandomBatch(*LoadModelConfig(ExpertFixtureDir()), 0, 2, 1);
  std::vector<float> out(2 * b.hidden);
  const absl::Status st = remote.Run(b.batch(), absl::MakeSpan(out));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(st.message(), HasSubstr(address));
}

// Stream 0 never answers (blocks until the client cancels); stream 1 ends without answering;
// later streams are served by the real service.
class FlakyService final : public v1::ExpertWorker::Service {
 public:
  explicit FlakyService(ExpertService* real) : real_(real) {}
  grpc::Status Dispatch(grpc::ServerContext* context,
                        grpc::ServerReaderWriter<v1::ExpertResponse, v1::ExpertRequest>* stream) override {
    const int n = streams_++;
    v1::ExpertRequest request;
    if (n == 0) {
      while (stream->Read(&request)) {
      }
      return grpc::Status::OK;
    }
    if (n == 1) {
      stream->Read(&request);
      return grpc::Status(grpc::StatusCode::INTERNAL, "flaky worker dropped the stream");
    }
    return real_->Dispatch(context, stream);
  }
  std::atomic<int> streams_{0};

 private:
  ExpertService* real_;
};

TEST(ExpertRpcTest, TimeoutAndBrokenStreamAreRetriedOnANewStream) {
  auto pool = LoadPool();
  ExpertService real(pool.get());
  FlakyService flaky(&real);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&flaky);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  const std::string address = absl::StrCat("127.0.0.1:", port);

  auto remote_owner = std::make_unique<GrpcExpertClient>(
      address, GrpcExpertClientOptions{std::chrono::milliseconds(300)});
  GrpcExpertClient& remote = *remote_owner;
  const RandomBatch b = MakeRandomBatch(pool->config(), 0, 3, 5);
  std::vector<float> want(3 * b.hidden), got(want.size());
  ASSERT_TRUE(pool->Run(b.batch(), absl::MakeSpan(want)).ok());

  absl::Status st = remote.Run(b.batch(), absl::MakeSpan(got));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(st.message(), HasSubstr(address));
  EXPECT_THAT(st.message(), HasSubstr("no response within 300 ms"));

  st = remote.Run(b.batch(), absl::MakeSpan(got));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(st.message(), HasSubstr("flaky worker dropped the stream"));

  st = remote.Run(b.batch(), absl::MakeSpan(got));
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(got, want);
  EXPECT_EQ(flaky.streams_.load(), 3);
  remote_owner.reset();  // closes the stream, so Shutdown has nothing to wait for
  server->Shutdown();
}

}  // namespace
}  // namespace moemesh
