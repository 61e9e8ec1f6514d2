// `moemesh serve`: a whole local cluster on loopback: the coordinator and its attention and
// expert workers as child processes of this one. Stops them all on SIGINT/SIGTERM, and stops the
// rest when any of them dies. Takes a config struct; flags live in main.cc.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moemesh {

struct ServeConfig {
  std::string model_dir;
  std::string host = "127.0.0.1";
  int port = 0;                    // the coordinator's public port; 0: the OS chooses
  std::string port_file;           // written with the port once the cluster is ready
  int tp_size = 1;
  int expert_workers = 1;
  int expert_replicas = 1;
  int expert_threads = 0;
  std::string expert_format = "bf16";  // routed experts' weight format (expert_format.h)
  int64_t expert_memory_limit = 0;  // bytes of DRAM each expert worker offers (0: the host's)
  int64_t expert_amx_threshold = 0;  // each expert worker's --amx_threshold (0: it measures)
  std::vector<std::string> gpus;   // CUDA device of each attention rank (empty: CPU ranks)
  bool cuda_graphs = true;
  std::vector<std::string> coordinator_flags;  // passed through (scheduler and KV settings)
};

int ServeCommand(const ServeConfig& config);

}  // namespace moemesh
