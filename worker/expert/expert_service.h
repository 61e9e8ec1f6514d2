// ExpertService: the gRPC ExpertWorker service over an ExpertPool. Each Dispatch stream (one per
// attention rank) reads a request, runs it, writes its response, in order; a bad request is
// answered with an error response (naming the field) and the stream goes on. Not for routing or
// scheduling. Thread-safe: streams run concurrently on gRPC's threads; the pool serialises the
// computation itself (ExpertPool::Run takes a mutex), so concurrent streams queue on it.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "moemesh/v1/expert.grpc.pb.h"
#include "worker/expert/expert_pool.h"

namespace moemesh {

class ExpertService final : public v1::ExpertWorker::Service {
 public:
  explicit ExpertService(ExpertPool* pool) : pool_(pool) {}  // not owned; must outlive this

  grpc::Status Dispatch(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::ExpertResponse, v1::ExpertRequest>* stream) override;

 private:
  ExpertPool* pool_;
};

// Builds and starts an insecure server for `service` on `address` ("host:port"; port 0 picks a
// free port), accepting messages up to kMaxExpertMessageBytes. `bound_port` (optional) gets
// the port. UNAVAILABLE naming the address when it cannot be bound.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartExpertServer(ExpertService* service,
                                                                const std::string& address,
                                                                int* bound_port = nullptr);

}  // namespace moemesh
