// The public gRPC API (generate.proto): Generate streams a request's tokens and text from the
// step loop, Tokenize and ModelInfo answer from the model and the loop's stats. Requests that
// arrive before the workers are ready get UNAVAILABLE. Thread-safe: one handler thread per RPC
// (gRPC's synchronous server); handlers block only on their own RequestChannel.
#pragma once

#include <atomic>
#include <string>

#include "model/arch/model_config.h"
#include "model/tokenizer/tokenizer.h"
#include "moemesh/v1/generate.grpc.pb.h"
#include "coordinator/server/step_loop.h"

namespace moemesh {

class GenerationService final : public v1::Generation::Service {
 public:
  GenerationService(const ModelConfig& config, const Tokenizer& tokenizer, GenerationDefaults defaults);

  // Makes the service live; until then Generate answers UNAVAILABLE with `waiting_reason()`.
  void SetReady(StepLoop* loop, std::string placement_summary);
  void SetWaitingReason(std::string reason);

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status ModelInfo(grpc::ServerContext* context, const v1::ModelInfoRequest* request,
                         v1::ModelInfoResponse* response) override;

 private:
  absl::StatusOr<std::vector<int32_t>> PromptIds(const v1::GenerateRequest& request) const;
  GenerationParams Params(const v1::GenerateRequest& request) const;

  const ModelConfig& config_;
  const Tokenizer& tokenizer_;
  const GenerationDefaults defaults_;
  std::atomic<StepLoop*> loop_{nullptr};
  mutable std::mutex mu_;
  std::string placement_summary_;
  std::string waiting_reason_ = "the coordinator is starting";
};

}  // namespace moemesh
