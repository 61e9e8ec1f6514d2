// `moemesh expert-worker`: serves ExpertControl (cluster.proto) and ExpertWorker (expert.proto).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/progress.h"
#include "common/logging.h"
#include "common/shutdown.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "common/topology.h"
#include "moemesh/v1/cluster.grpc.pb.h"
#include "rpc/grpc_status.h"
#include "worker/expert/expert_pool.h"
#include "worker/expert/expert_service.h"
#include "worker/expert/resident_memory.h"
#include "worker/process/worker_server.h"
#include "worker/process/worker_processes.h"

namespace moemesh {
namespace {

// Logs the resident memory after loading next to the weights' bytes: RSS should stay within 5%
// of the weights plus a small fixed amount (the process, gRPC, scratch).
void ReportResidentMemory(const absl::StatusOr<uint64_t>& before, uint64_t weight_bytes) {
  const absl::StatusOr<uint64_t> after = ResidentBytes();
  if (!before.ok() || !after.ok()) {
    MM_LOG(WARNING) << "resident memory unknown: " << (before.ok() ? after.status() : before.status());
    return;
  }
  const uint64_t growth = *after > *before ? *after - *before : 0;
  const double w = weight_bytes == 0 ? 1.0 : static_cast<double>(weight_bytes);
  MM_LOG(INFO) << "resident memory " << FormatBytes(*after) << " for " << FormatBytes(weight_bytes)
               << " of expert weights (" << absl::StrFormat("%.3f", *after / w) << " x); loading added "
               << FormatBytes(growth) << " (" << absl::StrFormat("%.3f", growth / w)
               << " x the weights) to the " << FormatBytes(*before) << " before";
}

// Loads the pool on Configure; Dispatch calls wait for nothing: before Configure they fail.
class ExpertWorkerServices final : public v1::ExpertControl::Service, public v1::ExpertWorker::Service {
 public:
  ExpertWorkerServices(int threads, int64_t amx_threshold, HostTopology topology)
      : threads_(threads), amx_threshold_(amx_threshold), topology_(std::move(topology)) {}

  grpc::Status Configure(grpc::ServerContext*, const v1::ExpertAssignment* a,
                         v1::ConfigureResponse* response) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (pool_) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "already configured");
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::vector<int>> layer_experts;
    size_t count = 0;
    for (const v1::LayerExperts& layer : a->layers()) {
      layer_experts.emplace_back(layer.experts().begin(), layer.experts().end());
      count += layer.experts_size();
    }
    ExpertPoolOptions options;
    options.format = a->weight_format().empty() ? "bf16" : a->weight_format();
    options.num_threads = a->threads() > 0 ? a->threads() : threads_;
    options.nodes = NodesFromTopology(topology_, options.num_threads);  // pinned one per core
    options.show_progress = true;
    options.amx_threshold = amx_threshold_;
    MM_LOG(INFO) << "loading " << count << " experts as " << options.format << " with "
                 << options.num_threads << " threads on " << options.nodes.size() << " NUMA node"
                 << (options.nodes.size() == 1 ? "" : "s");
    const absl::StatusOr<uint64_t> rss_before = ResidentBytes();
    auto pool = ExpertPool::Load(a->model_dir(), layer_experts, options);
    if (!pool.ok()) {
      MM_LOG(ERROR) << "configure: " << pool.status();
      return ToGrpcStatus(pool.status());
    }
    ReportResidentMemory(rss_before, (*pool)->bytes());
    pool_ = std::move(*pool);
    service_ = std::make_unique<ExpertService>(pool_.get());
    ready_.store(service_.get());
    response->set_weight_bytes(pool_->bytes());
    response->set_load_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return grpc::Status::OK;
  }

  grpc::Status Dispatch(grpc::ServerContext* context,
                        grpc::ServerReaderWriter<v1::ExpertResponse, v1::ExpertRequest>* stream) override {
    ExpertService* service = ready_.load();
    if (service == nullptr) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "expert worker not configured yet");
    }
    return service->Dispatch(context, stream);
  }

 private:
  const int threads_;
  const int64_t amx_threshold_;
  const HostTopology topology_;  // one node holding every core when hwloc failed
  std::mutex mu_;
  std::unique_ptr<ExpertPool> pool_;
  std::unique_ptr<ExpertService> service_;
  std::atomic<ExpertService*> ready_{nullptr};
};

}  // namespace

int RunExpertWorker(const WorkerProcessConfig& cfg) {
  ShutdownSignal shutdown;
  int threads = cfg.threads;
  HostTopology topology;
  auto topo = DiscoverTopology();
  if (topo.ok()) {
    topology = *topo;
    if (threads <= 0) threads = std::max(1, topo->total_cores());
    MM_LOG(INFO) << "host: " << topo->Summary() << "; " << threads << " compute threads pinned one per core";
  } else {
    MM_LOG(WARNING) << "hwloc: " << topo.status() << "; threads are not pinned, memory not bound";
    if (threads <= 0) threads = 1;
    topology.numa_nodes.push_back(NumaNode{-1, threads, threads, 0, {}});
  }
  ExpertWorkerServices services(threads, cfg.amx_threshold, std::move(topology));
  grpc::ServerBuilder builder;
  builder.RegisterService(static_cast<v1::ExpertControl::Service*>(&services));
  builder.RegisterService(static_cast<v1::ExpertWorker::Service*>(&services));
  return ServeWorker(builder, cfg, v1::WORKER_ROLE_EXPERT, "expert-worker", shutdown);
}

}  // namespace moemesh
