#include "worker/process/registration.h"

#include <algorithm>
#include <thread>

#include <grpcpp/grpcpp.h>

#ifdef MOEMESH_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/topology.h"
#include "rpc/grpc_status.h"

namespace moemesh {

v1::Resources HostResources() {
  v1::Resources r;
#ifdef MOEMESH_HAVE_CUDA
  int devices = 0;
  if (cudaGetDeviceCount(&devices) == cudaSuccess) {
    for (int d = 0; d < devices; ++d) {
      cudaDeviceProp prop;
      if (cudaGetDeviceProperties(&prop, d) != cudaSuccess) continue;
      v1::Gpu* gpu = r.add_gpus();
      gpu->set_name(prop.name);
      gpu->set_memory_bytes(prop.totalGlobalMem);
    }
  }
#endif
  auto topo = DiscoverTopology();
  if (topo.ok()) {
    r.set_numa_nodes(static_cast<int32_t>(topo->numa_nodes.size()));
    r.set_cores(topo->total_cores());
    r.set_threads(topo->total_pus());
    r.set_dram_bytes(topo->total_memory_bytes());
  } else {
    MM_LOG(WARNING) << "hwloc: " << topo.status();
  }
  return r;
}

Registration::Registration(RegistrationConfig config)
    : config_(std::move(config)),
      stub_(v1::Coordinator::NewStub(grpc::CreateChannel(config_.coordinator, grpc::InsecureChannelCredentials()))) {}

Registration::~Registration() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
}

absl::StatusOr<std::string> Registration::Register() {
  v1::RegisterRequest request;
  request.set_role(config_.role);
  request.set_protocol_version(v1::PROTOCOL_VERSION_CURRENT);
  request.set_address(config_.address);
  request.set_name(config_.name);
  *request.mutable_resources() = HostResources();
  if (config_.memory_limit_bytes > 0 && config_.memory_limit_bytes < request.resources().dram_bytes()) {
    request.mutable_resources()->set_dram_bytes(config_.memory_limit_bytes);
  }
  // Attempts of at most kAttempt each until connect_timeout, so that an answer lost on the way
  // is asked for again (the coordinator gives a retry the same id) and each wait is logged.
  constexpr std::chrono::seconds kAttempt{10};
  const auto start = std::chrono::system_clock::now();
  const auto deadline = start + config_.connect_timeout;
  while (true) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::min(deadline, std::chrono::system_clock::now() + kAttempt));
    ctx.set_wait_for_ready(true);  // wait for the coordinator to come up
    v1::RegisterResponse response;
    grpc::Status s = stub_->Register(&ctx, request, &response);
    if (s.ok()) {
      worker_id_ = response.worker_id();
      return worker_id_;
    }
    // Transient: the coordinator not up yet, no answer in time, or its server out of threads.
    const bool retry = s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                       s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
                       s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
    if (retry && std::chrono::system_clock::now() < deadline) {
      MM_LOG(WARNING) << config_.name << ": no registration with the coordinator at "
                      << config_.coordinator << " after "
                      << std::chrono::duration_cast<std::chrono::seconds>(
                             std::chrono::system_clock::now() - start).count()
                      << " s (" << s.error_message() << "); trying again";
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    absl::Status st = FromGrpcStatus(s);
    return absl::Status(st.code(), absl::StrCat("registering with the coordinator at ",
                                                config_.coordinator, ": ", st.message()));
  }
}

void Registration::StartHeartbeats(std::function<void()> on_lost) {
  heartbeat_ = std::thread([this, on_lost = std::move(on_lost)] {
    auto last_ok = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, config_.heartbeat_interval, [&] { return stop_; })) {
      lock.unlock();
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + config_.heartbeat_interval * 2);
      v1::HeartbeatRequest request;
      request.set_worker_id(worker_id_);
      v1::HeartbeatResponse response;
      const bool ok = stub_->Heartbeat(&ctx, request, &response).ok() && response.known();
      lock.lock();
      if (ok) {
        last_ok = std::chrono::steady_clock::now();
      } else if (std::chrono::steady_clock::now() - last_ok > config_.lost_after) {
        MM_LOG(ERROR) << "lost the coordinator at " << config_.coordinator;
        lock.unlock();
        on_lost();
        return;
      }
    }
  });
}

}  // namespace moemesh
