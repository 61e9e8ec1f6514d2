// `moemesh run`: single-process generation with the reference engine, streaming the answer
// to stdout. Takes a plain config struct; flags are parsed in main.cc only.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "model/generation/request_state.h"

namespace moemesh {

struct RunConfig {
  std::string model_dir;
  std::string prompt;
  GenerationParams params;
  bool sampling_overridden = false;  // any sampling flag given: generation_config defaults are off
  bool show_progress = true;
};

// Returns the process exit code; errors are printed to stderr.
int RunCommand(const RunConfig& config);

}  // namespace moemesh
