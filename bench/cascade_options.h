// Command-line options of bench_cascade (bench/cascade.cc; the usage is at the top of that file).
#pragma once

#include <string>

namespace moemesh::bench {

struct CascadeBenchOptions {
  std::string cases = "abcd";  // of (a)-(d)
  int launches = 20;
  double min_ms = 200;
  std::string calibration_out;
  int prefix_tile_rows = 0;
  int max_prefix_splits = 0;
  int q_parts = 3;
  int prefix_unit_tiles = 0;
  int cluster = 0;
  bool overlap = true;  // CascadeParams::overlap of the cascade calls (flat keeps its default)
  bool sweep = false;
  bool timeline = false;
  std::string timeline_csv;
};

// Parses argv; on a bad or unknown argument prints the usage and exits with status 2.
CascadeBenchOptions ParseCascadeBenchArgs(int argc, char** argv);

}  // namespace moemesh::bench
