// A progress bar for long loads: redraws one line on a terminal; otherwise (logs, CI) prints a
// line per 10% step once the load has taken a second, and a final line. Not thread-safe: one
// owner calls Update.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace moemesh {

class ProgressBar {
 public:
  // `total` is in `unit`s (e.g. bytes); `out` is where the bar is drawn (stderr by default).
  ProgressBar(std::string label, uint64_t total, std::FILE* out = stderr);
  ~ProgressBar();

  void Update(uint64_t done);
  void Finish();

 private:
  void Draw(bool final);

  std::string label_;
  uint64_t total_;
  uint64_t done_ = 0;
  std::FILE* out_;
  bool tty_;
  bool finished_ = false;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

// "1.5 GiB", "312 KiB": binary units for byte counts.
std::string FormatBytes(uint64_t bytes);

}  // namespace moemesh
