#include "coordinator/server/coordinator_runner.h"

#include <algorithm>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <optional>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/shutdown.h"
#include "common/status.h"
#include "coordinator/cascade_cost.h"
#include "coordinator/cascade_planner.h"
#include "coordinator/placement.h"
#include "coordinator/server/coordinator_service.h"
#include "coordinator/server/generation_service.h"
#include "coordinator/server/rank_group.h"
#include "coordinator/server/step_loop.h"
#include "model/arch/model_config.h"
#include "rpc/grpc_status.h"
#include "worker/expert/expert_format.h"

namespace moemesh {
namespace {

absl::Status WritePortFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << port << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path, ": ", ec.message()));
  return absl::OkStatus();
}

std::vector<WorkerInventory> Inventory(const std::vector<WorkerRecord>& workers) {
  std::vector<WorkerInventory> out;
  for (const WorkerRecord& w : workers) {
    WorkerInventory inv;
    inv.id = w.id;
    inv.role = w.role == v1::WORKER_ROLE_ATTENTION ? WorkerRole::kAttention : WorkerRole::kExpert;
    inv.dram_bytes = w.resources.dram_bytes();
    inv.cores = w.resources.cores();
    inv.numa_nodes = w.resources.numa_nodes();
    for (const v1::Gpu& g : w.resources.gpus()) inv.gpu_memory_bytes += g.memory_bytes();
    out.push_back(inv);
  }
  return out;
}

// Cascade levels per step an attention rank's forward pass takes when cascade is not off.
constexpr int32_t kRankCascadeLevels = 4;

// Configures every worker for the placement: expert workers first (they load their experts),
// then all attention ranks at once (they meet in the rendezvous store). Returns the KV blocks
// every rank holds (the smallest rank's count, when the ranks chose from their free memory).
// With cascade=auto and no calibration file, rank 0 measures the cost model's constants on its
// GPU: *measured receives them (left empty, with the reason logged, where it could not).
absl::StatusOr<int32_t> ConfigureWorkers(const CoordinatorConfig& cfg, const Placement& placement,
                                         const std::map<std::string, std::string>& address_of,
                                         std::optional<CascadeCalibration>* measured) {
  const CascadeConfig& cascade = cfg.scheduler.cascade;
  const bool measure = cascade.mode == CascadeMode::kAuto && !cascade.calibration.has_value();
  std::vector<std::future<absl::Status>> experts;
  for (size_t i = 0; i < placement.expert_workers.size(); ++i) {
    experts.push_back(std::async(std::launch::async, [&, i]() -> absl::Status {
      const std::string& address = address_of.at(placement.expert_workers[i]);
      v1::ExpertAssignment a;
      a.set_model_dir(cfg.model_dir);
      a.set_threads(cfg.expert_threads);
      a.set_weight_format(cfg.expert_format);
      for (const auto& layer : placement.worker_layer_experts[i]) {
        a.add_layers()->mutable_experts()->Add(layer.begin(), layer.end());
      }
      auto stub = v1::ExpertControl::NewStub(ClusterChannel(address));
      grpc::ClientContext ctx;
      v1::ConfigureResponse response;
      absl::Status s = FromGrpcStatus(stub->Configure(&ctx, a, &response));
      if (!s.ok()) return absl::Status(s.code(), absl::StrCat(placement.expert_workers[i], ": ", s.message()));
      MM_LOG(INFO) << placement.expert_workers[i] << " loaded " << response.weight_bytes() << " bytes of experts in "
                   << response.load_seconds() << " s";
      return absl::OkStatus();
    }));
  }
  for (auto& f : experts) MM_RETURN_IF_ERROR(f.get());

  // The ranks load and then meet in the rendezvous store, where the others would wait (up to the
  // collectives' timeout) for a rank that failed: the first failure cancels the other calls.
  const size_t n_ranks = placement.attention_ranks.size();
  std::vector<int32_t> rank_blocks(n_ranks, 0);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  for (size_t r = 0; r < n_ranks; ++r) contexts.push_back(std::make_unique<grpc::ClientContext>());
  std::mutex mu;
  std::condition_variable changed;
  size_t finished = 0;
  absl::Status first;  // the first failure (cancellations after it are not failures)
  auto ConfigureRank = [&](size_t r) -> absl::Status {
    v1::AttentionAssignment a;
    a.set_model_dir(cfg.model_dir);
    a.set_rank(static_cast<int32_t>(r));
    a.set_tp_size(cfg.tp_size);
    a.set_group("tp0");
    a.set_num_kv_blocks(cfg.scheduler.num_blocks);
    a.set_block_size(cfg.scheduler.block_size);
    a.set_collective_host("127.0.0.1");
    a.set_max_step_tokens(cfg.scheduler.max_step_tokens);
    a.set_max_sequences(cfg.scheduler.max_running);
    a.set_max_context(cfg.scheduler.context_length);
    a.set_max_cascade_levels(cascade.mode == CascadeMode::kOff ? 0 : kRankCascadeLevels);
    a.set_measure_cascade(measure && r == 0);
    for (const auto& layer : placement.owners) {
      v1::LayerOwners* lo = a.add_owners();
      for (const auto& owners : layer) {
        lo->add_experts()->mutable_workers()->Add(owners.begin(), owners.end());
      }
    }
    for (const std::string& id : placement.expert_workers) {
      a.add_expert_addresses(address_of.at(id));
    }
    auto stub = v1::AttentionWorker::NewStub(
        ClusterChannel(address_of.at(placement.attention_ranks[r])));
    v1::ConfigureResponse response;
    absl::Status s = FromGrpcStatus(stub->Configure(contexts[r].get(), a, &response));
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("attention rank ", r, ": ", s.message()));
    }
    MM_LOG(INFO) << "attention rank " << r << " (" << response.device() << ") loaded "
                 << response.weight_bytes() << " bytes in " << response.load_seconds() << " s; "
                 << response.num_kv_blocks() << " KV blocks";
    rank_blocks[r] = response.num_kv_blocks();
    if (measure && r == 0) {
      if (response.cascade_calibration().empty()) {
        MM_LOG(INFO) << "cascade calibration of rank 0 " << response.cascade_calibration_note();
      } else {
        // A bad calibration from a worker leaves the decisions flat; it does not stop the
        // cluster.
        absl::StatusOr<CascadeCalibration> c =
            ParseCascadeCalibration(response.cascade_calibration());
        if (c.ok()) {
          *measured = *c;
        } else {
          MM_LOG(WARNING) << "attention rank 0 sent a cascade calibration the coordinator rejects ("
                          << c.status().message() << "); cascade=auto stays flat";
        }
      }
    }
    return absl::OkStatus();
  };
  std::vector<std::future<void>> ranks;
  for (size_t r = 0; r < n_ranks; ++r) {
    ranks.push_back(std::async(std::launch::async, [&, r] {
      absl::Status s = ConfigureRank(r);
      std::lock_guard<std::mutex> lock(mu);
      if (!s.ok() && first.ok()) first = s;
      ++finished;
      changed.notify_all();
    }));
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    changed.wait(lock, [&] { return finished == n_ranks || !first.ok(); });
  }
  if (!first.ok()) {
    for (auto& c : contexts) c->TryCancel();
  }
  for (auto& f : ranks) f.get();
  MM_RETURN_IF_ERROR(first);
  int32_t blocks = *std::min_element(rank_blocks.begin(), rank_blocks.end());
  if (blocks < 1) return absl::InternalError("an attention rank reported no KV blocks");
  return blocks;
}

absl::Status Run(CoordinatorConfig cfg) {
  MM_ASSIGN_OR_RETURN(ExpertFormat expert_format, ParseExpertFormat(cfg.expert_format));
  MM_ASSIGN_OR_RETURN(ModelConfig model, LoadModelConfig(cfg.model_dir));
  MM_ASSIGN_OR_RETURN(GenerationDefaults defaults, LoadGenerationDefaults(cfg.model_dir));
  MM_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                      Tokenizer::FromFile((std::filesystem::path(cfg.model_dir) / "tokenizer.json").string()));
  if (cfg.scheduler.context_length <= 0 || cfg.scheduler.context_length > model.max_position_embeddings) {
    cfg.scheduler.context_length = model.max_position_embeddings;
  }
  MM_LOG(INFO) << model.Summary();
  // The cascade cost model sees one rank's attention (KV heads are replicated when TP exceeds
  // them) and the model's sliding window.
  CascadeConfig& cascade = cfg.scheduler.cascade;
  cascade.q_heads_per_rank = std::max(1, model.num_heads / cfg.tp_size);
  cascade.kv_heads_per_rank = std::max(1, model.num_kv_heads / cfg.tp_size);
  cascade.head_dim = model.head_dim;
  cascade.sliding_window = model.sliding_window;
  if (!cfg.cascade_calibration.empty()) {
    MM_ASSIGN_OR_RETURN(cascade.calibration, LoadCascadeCalibration(cfg.cascade_calibration));
    MM_LOG(INFO) << "cascade calibration of " << cascade.calibration->device << " from "
                 << cfg.cascade_calibration;
  }
  MM_RETURN_IF_ERROR(cascade.Validate());
  MM_LOG(INFO) << "prefix caching " << (cfg.scheduler.prefix_caching ? "on" : "off") << ", cascade "
               << CascadeModeName(cascade.mode);

  Membership membership;
  RendezvousStore store;
  CoordinatorService cluster_service(&membership, &store);
  GenerationService generation(model, *tokenizer, defaults);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(cfg.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&cluster_service);
  builder.RegisterService(&generation);
  builder.SetMaxReceiveMessageSize(-1);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) return absl::UnavailableError(absl::StrCat("cannot listen on ", cfg.listen));
  // A set-up error stops the server promptly: handlers waiting in the rendezvous store (ranks
  // meeting for their collectives) are woken, and calls still open after 2 s are cancelled.
  struct StopOnError {
    grpc::Server* server;
    RendezvousStore* store;
    ~StopOnError() {
      if (server == nullptr) return;
      store->Close();
      server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    }
  } stop_on_error{server.get(), &store};
  server->GetHealthCheckService()->SetServingStatus(false);
  const std::string host = cfg.listen.substr(0, cfg.listen.rfind(':'));
  std::fprintf(stderr, "coordinator listening on %s:%d\n", host.c_str(), port);
  if (!cfg.port_file.empty()) MM_RETURN_IF_ERROR(WritePortFile(cfg.port_file, port));

  ShutdownSignal shutdown;
  // Waits in slices of a second: between them, the counts so far go into the reason ModelInfo
  // and Generate give, and every 10 s into a log line, so a worker that never registers shows.
  auto waiting_reason = [&] {
    const auto [attention, expert] = membership.Registered();
    return absl::StrCat("waiting for ", cfg.tp_size, " attention and ", cfg.expert_workers,
                        " expert workers to register (", attention, " and ", expert,
                        " so far)");
  };
  generation.SetWaitingReason(waiting_reason());
  const auto workers_deadline = std::chrono::steady_clock::now() + cfg.worker_timeout;
  auto next_report = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  absl::StatusOr<std::vector<WorkerRecord>> workers;
  while (true) {
    const auto now = std::chrono::steady_clock::now();
    workers = membership.WaitFor(cfg.tp_size, cfg.expert_workers,
                                 std::min(workers_deadline, now + std::chrono::seconds(1)));
    if (workers.ok() || std::chrono::steady_clock::now() >= workers_deadline) break;
    generation.SetWaitingReason(waiting_reason());
    if (std::chrono::steady_clock::now() >= next_report) {
      MM_LOG(INFO) << waiting_reason() << "; registered: " << membership.Describe();
      next_report += std::chrono::seconds(10);
    }
  }
  if (!workers.ok()) {
    return absl::DeadlineExceededError(absl::StrCat(
        workers.status().message(), " after ", cfg.worker_timeout.count(),
        " s (--worker_timeout_s); registered: ", membership.Describe()));
  }
  PlacementPolicy policy;
  policy.tp_size = cfg.tp_size;
  policy.expert_replicas = cfg.expert_replicas;
  policy.bytes_per_weight = expert_format.BytesPerWeight();
  MM_ASSIGN_OR_RETURN(Placement placement, PlanPlacement(model, Inventory(*workers), policy));
  MM_LOG(INFO) << "placement (experts in " << expert_format.Name() << "): " << placement.Summary();
  std::map<std::string, std::string> address_of;
  for (const WorkerRecord& w : *workers) address_of[w.id] = w.address;
  generation.SetWaitingReason("configuring workers (loading weights)");
  std::optional<CascadeCalibration> measured;
  MM_ASSIGN_OR_RETURN(cfg.scheduler.num_blocks,
                      ConfigureWorkers(cfg, placement, address_of, &measured));
  if (measured.has_value()) {
    const CascadeCalibration& c = *measured;
    MM_LOG(INFO) << "cascade calibration measured on attention rank 0 (" << c.device
                 << "): decode " << c.decode_bytes_per_second / 1e9 << " GB/s, prefix "
                 << c.prefix_bytes_per_second / 1e9 << " GB/s, " << c.prefix_flops_per_second / 1e12
                 << " / " << c.wide_prefix_flops_per_second / 1e12 << " TFLOP/s at "
                 << kFewRowsPerKvHead << " / " << kManyRowsPerKvHead << " rows per KV head, level "
                 << c.level_seconds * 1e6 << " us + " << c.merge_seconds_per_row * 1e9 << " ns/row";
    cfg.scheduler.cascade.calibration = measured;
  }
  if (cfg.scheduler.cascade.mode == CascadeMode::kAuto &&
      !cfg.scheduler.cascade.calibration.has_value()) {
    MM_LOG(INFO) << "cascade=auto without a calibration (neither --cascade_calibration nor one "
                    "measured by a GPU rank): decode attention stays flat";
  }
  MM_LOG(INFO) << "KV cache: " << cfg.scheduler.num_blocks << " blocks of " << cfg.scheduler.block_size
               << " tokens per rank";

  std::vector<std::string> rank_addresses;
  for (const std::string& id : placement.attention_ranks) rank_addresses.push_back(address_of.at(id));
  MM_ASSIGN_OR_RETURN(std::unique_ptr<GrpcRankGroup> ranks, GrpcRankGroup::Open(rank_addresses));
  StepLoopConfig loop_config;
  loop_config.scheduler = cfg.scheduler;
  loop_config.eos_token_ids = defaults.eos_token_ids;
  loop_config.vocab_size = model.vocab_size;
  StepLoop loop(loop_config, tokenizer.get(), ranks.get());
  loop.Start();
  generation.SetReady(&loop, placement.Summary());
  server->GetHealthCheckService()->SetServingStatus(true);
  std::fprintf(stderr, "ready: %s\n", placement.Summary().c_str());

  const int signal = shutdown.Wait();
  MM_LOG(INFO) << "signal " << signal << ": shutting down";
  server->GetHealthCheckService()->SetServingStatus(false);
  loop.Stop();
  ranks.reset();  // closes the step streams so the workers' handlers return
  stop_on_error.server = nullptr;
  store.Close();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return absl::OkStatus();
}

}  // namespace

int RunCoordinator(const CoordinatorConfig& config) {
  absl::Status s = Run(config);
  if (!s.ok()) {
    std::fprintf(stderr, "moemesh coordinator: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace moemesh
