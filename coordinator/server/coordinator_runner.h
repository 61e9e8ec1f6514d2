// `moemesh coordinator`: serves the public API, waits for the expected workers, plans the
// placement (refusing one that cannot fit), configures the workers and runs the step loop until
// SIGINT/SIGTERM. Takes a config struct; flags live in cli/.
#pragma once

#include <chrono>
#include <string>

#include "coordinator/scheduler.h"

namespace moemesh {

struct CoordinatorConfig {
  std::string model_dir;
  std::string listen = "127.0.0.1:0";  // port 0: the OS chooses
  std::string port_file;               // where the chosen port is written (for launchers)
  int tp_size = 1;
  int expert_workers = 1;
  int expert_replicas = 1;
  int expert_threads = 0;              // per expert worker; 0: its cores
  std::string expert_format = "bf16";  // routed experts' weight format (worker/expert/expert_format.h)
  SchedulerConfig scheduler;           // context_length 0: the model's; cascade shapes: the model's
  std::string cascade_calibration;     // JSON file (coordinator/cascade_cost.h); empty: none
  std::chrono::seconds worker_timeout{300};
};

// Returns the process exit code.
int RunCoordinator(const CoordinatorConfig& config);

}  // namespace moemesh
