// `moemesh attention-worker`: serves AttentionWorker (cluster.proto).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <mutex>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/shutdown.h"
#include "common/status.h"
#include "model/arch/model_config.h"
#include "model/io/weight_source.h"
#include "moemesh/v1/cluster.grpc.pb.h"
#include "rpc/grpc_status.h"
#include "rpc/plan_codec.h"
#include "runtime/gloo_collective.h"
#include "worker/attention/attention_runner.h"
#include "worker/expert/grpc_expert_client.h"
#include "worker/expert/moe_dispatcher.h"
#include "worker/process/coordinator_store.h"
#include "worker/process/worker_server.h"
#include "worker/process/worker_processes.h"

#ifdef MOEMESH_HAVE_GPU_WORKER
#include <cuda_runtime.h>

#include "kernels/cuda/cascade.h"
#include "worker/gpu/cascade_calibration.h"
#include "worker/gpu/gpu_forward.h"
#include "worker/gpu/nccl_group.h"
#endif

namespace moemesh {
namespace {

class AttentionWorkerService final : public v1::AttentionWorker::Service {
 public:
  AttentionWorkerService(std::string coordinator, int gpu, bool cuda_graphs)
      : gpu_(gpu),
        cuda_graphs_(cuda_graphs),
        coordinator_stub_(v1::Coordinator::NewStub(
            grpc::CreateChannel(coordinator, grpc::InsecureChannelCredentials()))) {}

  grpc::Status Configure(grpc::ServerContext*, const v1::AttentionAssignment* a,
                         v1::ConfigureResponse* response) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (runner_) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "already configured");
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = Load(*a);
    if (!s.ok()) {
      MM_LOG(ERROR) << "configure: " << s;
      return ToGrpcStatus(s);
    }
    response->set_weight_bytes(weight_bytes_);
    response->set_num_kv_blocks(num_kv_blocks_);
    response->set_device(device_name_);
    response->set_cascade_calibration(cascade_calibration_);
    response->set_cascade_calibration_note(cascade_calibration_note_);
    response->set_load_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return grpc::Status::OK;
  }

  grpc::Status Execute(grpc::ServerContext*,
                       grpc::ServerReaderWriter<v1::StepResultMsg, v1::StepPlanMsg>* stream) override {
    v1::StepPlanMsg plan;
    while (stream->Read(&plan)) {
      v1::StepResultMsg out;
      std::lock_guard<std::mutex> lock(mu_);
      if (!runner_) {
        out.set_step(plan.step());
        out.set_error("not configured");
        out.set_error_code(static_cast<int>(absl::StatusCode::kFailedPrecondition));
      } else {
        absl::StatusOr<StepResult> result = runner_->Execute(DecodePlan(plan));
        if (result.ok()) {
          EncodeResult(*result, &out);
        } else {
          out.set_step(plan.step());
          out.set_error(std::string(result.status().message()));
          out.set_error_code(static_cast<int>(result.status().code()));
        }
      }
      if (!stream->Write(out)) break;
    }
    return grpc::Status::OK;
  }

 private:
  absl::Status Load(const v1::AttentionAssignment& a) {
    MM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(a.model_dir()));
    MM_RETURN_IF_ERROR(AttentionRunner::CheckTp(config, a.tp_size()));
    if (a.rank() < 0 || a.rank() >= a.tp_size()) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", a.rank(), " is outside [0, ", a.tp_size(), ")"));
    }
    MM_ASSIGN_OR_RETURN(std::unique_ptr<WeightSource> source, OpenSafetensorsDir(a.model_dir()));
    MM_ASSIGN_OR_RETURN(ModelWeights weights,
                        LoadModelWeights(config, *source, AttentionRunner::ShardFor(config, a.rank(), a.tp_size())));
    weight_bytes_ = weights.bytes;
    for (const std::string& address : a.expert_addresses()) {
      expert_clients_.push_back(std::make_unique<GrpcExpertClient>(address));
    }
    std::vector<ExpertClient*> clients;
    for (auto& c : expert_clients_) clients.push_back(c.get());
    std::vector<std::vector<std::vector<int>>> owners;
    for (const v1::LayerOwners& layer : a.owners()) {
      owners.emplace_back();
      for (const v1::ExpertOwners& e : layer.experts()) owners.back().emplace_back(e.workers().begin(), e.workers().end());
    }
    MM_ASSIGN_OR_RETURN(dispatcher_, MoeDispatcher::Create(std::move(owners), std::move(clients)));
    store_ = std::make_unique<CoordinatorStore>(coordinator_stub_.get(), std::chrono::seconds(120));
    AttentionRunnerConfig runner_config;
    runner_config.num_kv_blocks = a.num_kv_blocks() > 0 ? a.num_kv_blocks() : kCpuKvBlocks;
    runner_config.block_size = a.block_size();
    if (gpu_ >= 0) return LoadGpu(a, std::move(config), std::move(weights), runner_config);
    GlooCollectiveConfig gloo;
    gloo.hostname = a.collective_host().empty() ? "127.0.0.1" : a.collective_host();
    gloo.group = a.group();
    gloo.timeout = std::chrono::seconds(120);
    MM_ASSIGN_OR_RETURN(collective_, GlooCollective::Create(gloo, *store_, a.rank(), a.tp_size()));
    num_kv_blocks_ = runner_config.num_kv_blocks;
    device_name_ = "cpu";
    if (a.measure_cascade()) cascade_calibration_note_ = "not measured: a CPU attention rank";
    runner_ = std::make_unique<AttentionRunner>(std::move(config), std::move(weights), runner_config,
                                                collective_.get(), dispatcher_.get());
    MM_LOG(INFO) << "rank " << a.rank() << "/" << a.tp_size() << " ready: " << weight_bytes_ << " bytes, "
                 << a.expert_addresses_size() << " expert workers";
    return absl::OkStatus();
  }

  // The GPU path: the shard goes to the device in bf16, collectives over NCCL, and the KV cache
  // takes the blocks asked for or fills the free memory.
  absl::Status LoadGpu(const v1::AttentionAssignment& a, ModelConfig config, ModelWeights weights,
                       AttentionRunnerConfig runner_config) {
#ifndef MOEMESH_HAVE_GPU_WORKER
    return absl::FailedPreconditionError(
        absl::StrCat("--gpu=", gpu_, ": this moemesh was built without CUDA and NCCL"));
#else
    int devices = 0;
    cudaError_t e = cudaGetDeviceCount(&devices);
    if (e != cudaSuccess || gpu_ >= devices) {
      return absl::FailedPreconditionError(absl::StrCat("--gpu=", gpu_, ": this host has ",
                                                        e == cudaSuccess ? devices : 0,
                                                        " CUDA devices (", cudaGetErrorString(e), ")"));
    }
    cudaSetDevice(gpu_);
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, gpu_);
    device_name_ = absl::StrCat("cuda:", gpu_, " ", prop.name);
    const TpLayout layout = MakeTpLayout(config, a.rank(), a.tp_size());
    if (a.measure_cascade()) MeasureCascade(config, layout, a.block_size());
    MM_ASSIGN_OR_RETURN(DeviceWeights device_weights, DeviceWeights::Upload(config, weights));
    weights = ModelWeights();  // the host copy is no longer needed
    weight_bytes_ = device_weights.bytes;
    MM_ASSIGN_OR_RETURN(nccl_, NcclGroup::Create(*store_, a.group(), a.rank(), a.tp_size()));
    GpuForwardConfig g;
    g.device = gpu_;
    g.num_kv_blocks = a.num_kv_blocks();
    g.block_size = a.block_size();
    if (a.max_step_tokens() > 0) g.max_step_tokens = a.max_step_tokens();
    if (a.max_sequences() > 0) g.max_sequences = a.max_sequences();
    g.max_context = a.max_context() > 0 ? a.max_context() : config.max_position_embeddings;
    g.cuda_graphs = cuda_graphs_;
    g.max_cascade_levels = std::max(0, a.max_cascade_levels());
    MM_ASSIGN_OR_RETURN(std::unique_ptr<GpuForward> forward,
                        GpuForward::Create(config, layout, std::move(device_weights), nccl_.get(),
                                           dispatcher_.get(), g));
    num_kv_blocks_ = forward->num_kv_blocks();
    runner_config.num_kv_blocks = num_kv_blocks_;
    runner_ = std::make_unique<AttentionRunner>(std::move(config), runner_config, nccl_.get(),
                                                std::move(forward));
    MM_LOG(INFO) << "rank " << a.rank() << "/" << a.tp_size() << " ready on " << device_name_ << ": "
                 << weight_bytes_ << " bytes of weights, " << num_kv_blocks_ << " KV blocks, "
                 << a.expert_addresses_size() << " expert workers";
    return absl::OkStatus();
#endif
  }

#ifdef MOEMESH_HAVE_GPU_WORKER
  // The cascade cost model's constants on this GPU for the shard's attention shape (before the
  // weights and the KV cache take its memory): cascade_calibration_ as JSON, or
  // cascade_calibration_note_ saying why not.
  void MeasureCascade(const ModelConfig& config, const TpLayout& layout, int block_size) {
    const int kv_heads = layout.num_kv_heads(), heads = layout.num_heads();
    if (config.head_dim != 64 && config.head_dim != 128) {
      cascade_calibration_note_ = absl::StrCat("not measured: head_dim ", config.head_dim,
                                               " has no CUDA cascade kernel (64 or 128)");
    } else if (kv_heads <= 0 || heads % kv_heads != 0 ||
               heads / kv_heads > cuda::kCascadeMaxGroup || block_size <= 0) {
      cascade_calibration_note_ = absl::StrCat("not measured: ", heads, " query heads over ",
                                               kv_heads, " KV heads per rank");
    } else {
      const auto start = std::chrono::steady_clock::now();
      cudaStream_t stream;
      cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
      const cuda::CascadeTimings t =
          cuda::MeasureCascadeCosts(kv_heads, heads, config.head_dim, block_size, stream);
      cudaStreamDestroy(stream);
      cascade_calibration_ = CascadeCalibrationToJson(ToCascadeCalibration(t));
      cascade_calibration_note_ = t.detail;
      const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
      MM_LOG(INFO) << "cascade calibration measured in " << took.count() << " s:\n" << t.detail;
    }
    if (cascade_calibration_.empty()) {
      MM_LOG(INFO) << "cascade calibration " << cascade_calibration_note_;
    }
  }
#endif

  static constexpr int32_t kCpuKvBlocks = 2048;  // CPU ranks, when the coordinator leaves it open
  const int gpu_;
  const bool cuda_graphs_;
  int32_t num_kv_blocks_ = 0;
  std::string device_name_;
  std::string cascade_calibration_, cascade_calibration_note_;
#ifdef MOEMESH_HAVE_GPU_WORKER
  std::unique_ptr<NcclGroup> nccl_;
#endif
  std::unique_ptr<v1::Coordinator::Stub> coordinator_stub_;
  std::mutex mu_;
  uint64_t weight_bytes_ = 0;
  std::vector<std::unique_ptr<GrpcExpertClient>> expert_clients_;
  std::unique_ptr<MoeDispatcher> dispatcher_;
  std::unique_ptr<CoordinatorStore> store_;
  std::unique_ptr<GlooCollective> collective_;
  std::unique_ptr<AttentionRunner> runner_;
};

}  // namespace

int RunAttentionWorker(const WorkerProcessConfig& cfg) {
  ShutdownSignal shutdown;
  AttentionWorkerService service(cfg.coordinator, cfg.gpu, cfg.cuda_graphs);
  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  return ServeWorker(builder, cfg, v1::WORKER_ROLE_ATTENTION, "attention-worker", shutdown);
}

}  // namespace moemesh
