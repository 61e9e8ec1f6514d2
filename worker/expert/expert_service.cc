#include "worker/expert/expert_service.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "worker/expert/expert_wire.h"

namespace moemesh {

grpc::Status ExpertService::Dispatch(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::ExpertResponse, v1::ExpertRequest>* stream) {
  v1::ExpertRequest request;
  v1::ExpertResponse response;
  DecodedExpertRequest decoded;
  std::vector<float> out;
  while (stream->Read(&request)) {
    absl::Status status = DecodeExpertRequest(request, &decoded);
    if (status.ok()) {
      out.resize(static_cast<size_t>(decoded.batch.num_tokens) * decoded.batch.hidden);
      status = pool_->Run(decoded.batch, absl::MakeSpan(out));
    }
    if (status.ok()) {
      EncodeExpertResult(request.sequence(), out, &response);
    } else {
      MM_LOG(WARNING) << "expert request " << request.sequence() << " from " << context->peer()
                      << " failed: " << status;
      EncodeExpertError(request.sequence(), status, &response);
    }
    if (!stream->Write(response)) break;  // the client went away
  }
  return grpc::Status::OK;
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartExpertServer(ExpertService* service,
                                                                const std::string& address,
                                                                int* bound_port) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(kMaxExpertMessageBytes);
  builder.SetMaxSendMessageSize(kMaxExpertMessageBytes);
  builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("expert worker cannot listen on '", address, "'"));
  }
  if (bound_port != nullptr) *bound_port = port;
  return server;
}

}  // namespace moemesh
