// The cluster-facing gRPC service (cluster.proto Coordinator): worker registration and
// heartbeats, and the rendezvous store of the collectives. Thread-safe.
#pragma once

#include "coordinator/server/membership.h"
#include "coordinator/server/rendezvous_store.h"
#include "moemesh/v1/cluster.grpc.pb.h"

namespace moemesh {

class CoordinatorService final : public v1::Coordinator::Service {
 public:
  CoordinatorService(Membership* membership, RendezvousStore* store)
      : membership_(membership), store_(store) {}

  grpc::Status Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status StoreSet(grpc::ServerContext* context, const v1::StoreSetRequest* request,
                        v1::StoreSetResponse* response) override;
  grpc::Status StoreGet(grpc::ServerContext* context, const v1::StoreGetRequest* request,
                        v1::StoreGetResponse* response) override;

 private:
  Membership* membership_;
  RendezvousStore* store_;
};

}  // namespace moemesh
