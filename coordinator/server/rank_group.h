// The coordinator's link to the attention ranks: one Execute stream per rank. A step's plan is
// written to every rank, then every rank's result is read; rank 0's carries the sampled tokens.
// Not thread-safe: only the step loop calls Execute.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "coordinator/server/step_loop.h"
#include "moemesh/v1/cluster.grpc.pb.h"

namespace moemesh {

class GrpcRankGroup final : public RankGroup {
 public:
  // Opens a stream to each rank (addresses in rank order).
  static absl::StatusOr<std::unique_ptr<GrpcRankGroup>> Open(const std::vector<std::string>& addresses);
  ~GrpcRankGroup() override;

  absl::StatusOr<StepResult> Execute(const StepPlan& plan) override;

 private:
  struct Rank {
    std::string address;
    std::unique_ptr<v1::AttentionWorker::Stub> stub;
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::StepPlanMsg, v1::StepResultMsg>> stream;
  };
  absl::Status StreamError(size_t rank, const char* what);

  std::vector<Rank> ranks_;
};

// A channel for cluster-internal calls: no message size limit (activations are large).
std::shared_ptr<grpc::Channel> ClusterChannel(const std::string& address);

}  // namespace moemesh
