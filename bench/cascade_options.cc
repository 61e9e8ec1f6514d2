#include "bench/cascade_options.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace moemesh::bench {
namespace {

[[noreturn]] void Usage(const char* why) {
  std::fprintf(stderr,
               "%s\nusage: bench_cascade [--cases abcd] [--launches N] [--min_ms MS] "
               "[--calibration_out PATH] [--prefix_tile_rows 16|64] [--max_prefix_splits N] "
               "[--q_parts 1|2|3] [--prefix_unit_tiles 0|1|2] [--cluster 0|1|2|4|8|16] "
               "[--overlap 0|1] [--sweep] [--timeline] [--timeline_csv PATH]\n",
               why);
  std::exit(2);
}

}  // namespace

CascadeBenchOptions ParseCascadeBenchArgs(int argc, char** argv) {
  CascadeBenchOptions o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(("missing value for " + arg).c_str());
      return argv[++i];
    };
    if (arg == "--cases") {
      o.cases = value();
      for (char ch : o.cases) {
        if (ch < 'a' || ch > 'd') Usage(("bad case in --cases: " + o.cases).c_str());
      }
    } else if (arg == "--launches") {
      o.launches = std::max(1, std::atoi(value().c_str()));
    } else if (arg == "--min_ms") {
      o.min_ms = std::atof(value().c_str());
    } else if (arg == "--calibration_out") {
      o.calibration_out = value();
    } else if (arg == "--prefix_tile_rows") {
      o.prefix_tile_rows = std::atoi(value().c_str());
    } else if (arg == "--max_prefix_splits") {
      o.max_prefix_splits = std::atoi(value().c_str());
    } else if (arg == "--cluster") {
      o.cluster = std::atoi(value().c_str());
    } else if (arg == "--overlap") {
      const std::string v = value();
      if (v != "0" && v != "1") Usage(("--overlap takes 0 or 1, not " + v).c_str());
      o.overlap = v == "1";
    } else if (arg == "--q_parts") {
      o.q_parts = std::atoi(value().c_str());
    } else if (arg == "--prefix_unit_tiles") {
      o.prefix_unit_tiles = std::atoi(value().c_str());
    } else if (arg == "--timeline") {
      o.timeline = true;
    } else if (arg == "--timeline_csv") {
      o.timeline_csv = value();
    } else if (arg == "--sweep") {
      o.sweep = true;
    } else {
      Usage(("unknown argument " + arg).c_str());
    }
  }
  return o;
}

}  // namespace moemesh::bench
