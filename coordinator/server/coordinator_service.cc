#include "coordinator/server/coordinator_service.h"

#include <chrono>

#include "common/logging.h"
#include "rpc/grpc_status.h"

namespace moemesh {

grpc::Status CoordinatorService::Register(grpc::ServerContext*, const v1::RegisterRequest* request,
                                          v1::RegisterResponse* response) {
  auto id = membership_->Register(*request);
  if (!id.ok()) {
    MM_LOG(WARNING) << "refused worker \"" << request->name() << "\" at " << request->address() << ": "
                    << id.status();
    return ToGrpcStatus(id.status());
  }
  MM_LOG(INFO) << "registered " << *id << " (" << request->name() << ") at " << request->address() << ": "
               << request->resources().cores() << " cores, "
               << request->resources().dram_bytes() / (1 << 20) << " MiB, " << request->resources().gpus_size()
               << " GPUs";
  response->set_worker_id(*id);
  response->set_protocol_version(v1::PROTOCOL_VERSION_CURRENT);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* request,
                                           v1::HeartbeatResponse* response) {
  response->set_known(membership_->Heartbeat(request->worker_id()));
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::StoreSet(grpc::ServerContext*, const v1::StoreSetRequest* request,
                                          v1::StoreSetResponse*) {
  if (request->key().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "key: empty");
  store_->Set(request->key(), request->value());
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::StoreGet(grpc::ServerContext* context, const v1::StoreGetRequest* request,
                                          v1::StoreGetResponse* response) {
  auto deadline = context->deadline();
  const auto cap = std::chrono::system_clock::now() + std::chrono::minutes(10);
  if (deadline > cap) deadline = cap;
  std::vector<std::string> keys(request->keys().begin(), request->keys().end());
  auto values = store_->Get(keys, deadline);
  if (!values.ok()) return ToGrpcStatus(values.status());
  for (std::string& v : *values) response->add_values(std::move(v));
  return grpc::Status::OK;
}

}  // namespace moemesh
