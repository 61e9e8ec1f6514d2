// `moemesh generate`: a client of the public API that streams the answer to the terminal.
#pragma once

#include <string>

#include "moemesh/v1/generate.pb.h"

namespace moemesh {

struct GenerateCommandConfig {
  std::string server;        // host:port of the coordinator
  v1::GenerateRequest request;
  double timeout_s = 0;      // 0: no deadline
  bool show_logprobs = false;
};

int GenerateCommand(const GenerateCommandConfig& config);

}  // namespace moemesh
