// The one place that converts between absl::Status and grpc::Status (codes map one to one).
// Thread-safe (pure functions).
#pragma once

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"

namespace moemesh {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace moemesh
