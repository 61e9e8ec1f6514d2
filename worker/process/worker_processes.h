// The worker processes: `moemesh attention-worker` (one tensor-parallel rank: its shard of the
// attention and dense layers, Gloo collectives, experts reached over gRPC) and
// `moemesh expert-worker` (a pool of routed experts). Each starts its own gRPC server, registers
// with the coordinator, loads what the coordinator assigns, and serves until SIGINT/SIGTERM or
// until the coordinator is lost. Config structs; flags live in cli/.
#pragma once

#include <cstdint>
#include <string>

namespace moemesh {

struct WorkerProcessConfig {
  std::string coordinator;           // host:port
  std::string listen = "127.0.0.1:0";
  std::string name;
  int threads = 0;                   // expert workers: compute threads (0: the host's cores)
  uint64_t memory_limit_bytes = 0;   // expert workers: DRAM offered for experts (0: the host's)
  int64_t amx_threshold = 0;         // expert workers: tokens per expert from which AMX runs
                                     // (0: measured at load; ExpertPoolOptions::amx_threshold)
  int gpu = -1;                      // attention workers: CUDA device to run on (-1: the CPU)
  bool cuda_graphs = true;           // attention workers on a GPU: capture decode steps
};

int RunAttentionWorker(const WorkerProcessConfig& config);
int RunExpertWorker(const WorkerProcessConfig& config);

}  // namespace moemesh
