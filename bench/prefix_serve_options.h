// Command-line options of bench_prefix_serve (bench/prefix_serve.cc; the flags are described at
// the top of that file).
#pragma once

#include <string>
#include <vector>

namespace moemesh {

struct PrefixServeOptions {
  std::string model = "models/demo";
  int tp = 1;
  std::string gpus;  // comma-separated, passed to serve --gpus
  int expert_workers = 1;
  int expert_threads = 0;
  std::string cuda_graphs = "true";
  int requests = 32;
  int prompt_tokens = 0;  // 0: chosen from the context length
  int suffix_tokens = 16;
  int max_tokens = 32;
  int repeats = 1;
  int block_size = 16;
  int kv_blocks = -1;  // -1: enough for every request without sharing
  std::string cascade_calibration;
  std::string configs = "1,2,3,4";
  std::string serve_args;
  int start_timeout_s = 300;
  int timeout_s = 600;
};

// Parses argv (values after a space or '='); false, after printing why, on an unknown flag, a
// value that is not an integer or below its minimum, or --gpus not naming one device per rank.
bool ParsePrefixServeArgs(int argc, char** argv, PrefixServeOptions& o);

// The non-empty pieces of s between separators.
std::vector<std::string> Split(const std::string& s, char sep);

}  // namespace moemesh
