// The part every worker process shares: listen, register with the coordinator, heartbeat, and
// serve until SIGINT/SIGTERM or until the coordinator is lost.
#pragma once

#include <grpcpp/grpcpp.h>

#include "common/shutdown.h"
#include "moemesh/v1/cluster.pb.h"
#include "worker/process/worker_processes.h"

namespace moemesh {

// `builder` already holds the worker's services. `command` names the process in errors
// ("expert-worker"). Returns the process exit code. `shutdown` must have been constructed
// before any thread started.
int ServeWorker(grpc::ServerBuilder& builder, const WorkerProcessConfig& config, v1::WorkerRole role,
                const char* command, ShutdownSignal& shutdown);

}  // namespace moemesh
