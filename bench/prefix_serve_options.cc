#include "bench/prefix_serve_options.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace moemesh {

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}


bool ParsePrefixServeArgs(int argc, char** argv, PrefixServeOptions& o) {
  std::map<std::string, std::string*> strings = {
      {"model", &o.model},
      {"gpus", &o.gpus},
      {"cuda_graphs", &o.cuda_graphs},
      {"cascade_calibration", &o.cascade_calibration},
      {"configs", &o.configs},
      {"serve_args", &o.serve_args},
  };
  std::map<std::string, int*> ints = {
      {"tp", &o.tp},
      {"expert_workers", &o.expert_workers},
      {"expert_threads", &o.expert_threads},
      {"requests", &o.requests},
      {"prompt_tokens", &o.prompt_tokens},
      {"suffix_tokens", &o.suffix_tokens},
      {"max_tokens", &o.max_tokens},
      {"repeats", &o.repeats},
      {"block_size", &o.block_size},
      {"kv_blocks", &o.kv_blocks},
      {"start_timeout_s", &o.start_timeout_s},
      {"timeout_s", &o.timeout_s},
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      std::fprintf(stderr, "unexpected argument \"%s\"\n", arg.c_str());
      return false;
    }
    arg = arg.substr(2);
    std::string value;
    if (const size_t eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::fprintf(stderr, "--%s needs a value\n", arg.c_str());
      return false;
    }
    if (auto s = strings.find(arg); s != strings.end()) {
      *s->second = value;
    } else if (auto n = ints.find(arg); n != ints.end()) {
      char* end = nullptr;
      const long v = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0') {
        std::fprintf(stderr, "--%s = \"%s\" is not an integer\n", arg.c_str(), value.c_str());
        return false;
      }
      *n->second = static_cast<int>(v);
    } else {
      std::fprintf(stderr,
                   "unknown flag --%s (see the comment at the top of bench/prefix_serve.cc)\n",
                   arg.c_str());
      return false;
    }
  }
  auto at_least = [](const char* name, int v, int min) {
    if (v >= min) return true;
    std::fprintf(stderr, "--%s = %d must be at least %d\n", name, v, min);
    return false;
  };
  if (!at_least("tp", o.tp, 1) || !at_least("expert_workers", o.expert_workers, 1) ||
      !at_least("expert_threads", o.expert_threads, 0) || !at_least("requests", o.requests, 1) ||
      !at_least("prompt_tokens", o.prompt_tokens, 0) ||
      !at_least("suffix_tokens", o.suffix_tokens, 1) || !at_least("max_tokens", o.max_tokens, 1) ||
      !at_least("repeats", o.repeats, 1) || !at_least("block_size", o.block_size, 1) ||
      !at_least("kv_blocks", o.kv_blocks, -1) ||
      !at_least("start_timeout_s", o.start_timeout_s, 1) ||
      !at_least("timeout_s", o.timeout_s, 1)) {
    return false;
  }
  if (!o.gpus.empty() && static_cast<int>(Split(o.gpus, ',').size()) != o.tp) {
    std::fprintf(stderr, "--gpus %s names %zu devices but --tp is %d (one per rank)\n",
                 o.gpus.c_str(), Split(o.gpus, ',').size(), o.tp);
    return false;
  }
  return true;
}

}  // namespace moemesh
