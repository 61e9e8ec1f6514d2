#include "worker/process/worker_server.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "worker/process/registration.h"

namespace moemesh {

int ServeWorker(grpc::ServerBuilder& builder, const WorkerProcessConfig& cfg, v1::WorkerRole role,
                const char* command, ShutdownSignal& shutdown) {
  int port = 0;
  builder.AddListeningPort(cfg.listen, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(-1);
  builder.SetMaxSendMessageSize(-1);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "moemesh %s: cannot listen on %s\n", command, cfg.listen.c_str());
    return 1;
  }
  RegistrationConfig reg;
  reg.coordinator = cfg.coordinator;
  reg.role = role;
  reg.name = cfg.name.empty() ? command : cfg.name;
  reg.memory_limit_bytes = cfg.memory_limit_bytes;
  reg.address = absl::StrCat(cfg.listen.substr(0, cfg.listen.rfind(':')), ":", port);
  Registration registration(reg);
  auto id = registration.Register();
  if (!id.ok()) {
    std::fprintf(stderr, "moemesh %s: %s\n", command, id.status().ToString().c_str());
    return 1;
  }
  MM_LOG(INFO) << reg.name << " registered as " << *id << ", serving on " << reg.address;
  registration.StartHeartbeats([] { kill(getpid(), SIGTERM); });
  const int signal = shutdown.Wait();
  MM_LOG(INFO) << "signal " << signal << ": stopping";
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}

}  // namespace moemesh
