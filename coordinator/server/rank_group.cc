#include "coordinator/server/rank_group.h"

#include "absl/strings/str_cat.h"
#include "rpc/grpc_status.h"
#include "rpc/plan_codec.h"

namespace moemesh {

std::shared_ptr<grpc::Channel> ClusterChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

absl::StatusOr<std::unique_ptr<GrpcRankGroup>> GrpcRankGroup::Open(const std::vector<std::string>& addresses) {
  auto group = std::unique_ptr<GrpcRankGroup>(new GrpcRankGroup());
  for (const std::string& address : addresses) {
    Rank r;
    r.address = address;
    auto channel = ClusterChannel(address);
    // The stream fails at once if its channel's first connect attempt does: connect first.
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30))) {
      return absl::UnavailableError(absl::StrCat("cannot connect to attention rank at ", address));
    }
    r.stub = v1::AttentionWorker::NewStub(channel);
    r.context = std::make_unique<grpc::ClientContext>();
    r.stream = r.stub->Execute(r.context.get());
    if (!r.stream) return absl::UnavailableError(absl::StrCat("cannot open a step stream to ", address));
    group->ranks_.push_back(std::move(r));
  }
  return group;
}

GrpcRankGroup::~GrpcRankGroup() {
  for (Rank& r : ranks_) {
    r.stream->WritesDone();
    r.stream->Finish();
  }
}

absl::Status GrpcRankGroup::StreamError(size_t rank, const char* what) {
  Rank& r = ranks_[rank];
  r.context->TryCancel();
  const grpc::Status s = r.stream->Finish();
  return absl::UnavailableError(absl::StrCat("attention rank ", rank, " at ", r.address, ": ", what, " (",
                                             s.error_message(), ")"));
}

absl::StatusOr<StepResult> GrpcRankGroup::Execute(const StepPlan& plan) {
  v1::StepPlanMsg msg;
  EncodePlan(plan, &msg);
  for (size_t i = 0; i < ranks_.size(); ++i) {
    if (!ranks_[i].stream->Write(msg)) return StreamError(i, "the step stream closed");
  }
  StepResult rank0;
  absl::Status first_error;
  for (size_t i = 0; i < ranks_.size(); ++i) {
    v1::StepResultMsg result;
    if (!ranks_[i].stream->Read(&result)) return StreamError(i, "the step stream closed");
    if (!result.error().empty() && first_error.ok()) {
      first_error = absl::Status(static_cast<absl::StatusCode>(result.error_code()),
                                 absl::StrCat("attention rank ", i, ": ", result.error()));
    }
    if (i == 0) rank0 = DecodeResult(result);
  }
  if (!first_error.ok()) return first_error;
  return rank0;
}

}  // namespace moemesh
