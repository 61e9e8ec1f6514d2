#include "common/progress.h"

#include <unistd.h>

#include "absl/strings/str_format.h"

namespace moemesh {

std::string FormatBytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024.0 && unit < 4) {
    v /= 1024.0;
    ++unit;
  }
  return unit == 0 ? absl::StrFormat("%d B", bytes) : absl::StrFormat("%.1f %s", v, kUnits[unit]);
}

ProgressBar::ProgressBar(std::string label, uint64_t total, std::FILE* out)
    : label_(std::move(label)),
      total_(total),
      out_(out),
      tty_(isatty(fileno(out)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() { Finish(); }

void ProgressBar::Update(uint64_t done) {
  done_ = done > total_ ? total_ : done;
  auto now = std::chrono::steady_clock::now();
  if (tty_) {
    if (now - last_draw_ > std::chrono::milliseconds(100)) {
      last_draw_ = now;
      Draw(false);
    }
    return;
  }
  // Without a terminal: a line per 10% step, and none for loads that finish within a second.
  if (now - start_ < std::chrono::seconds(1)) return;
  int decile = total_ == 0 ? 10 : static_cast<int>(done_ * 10 / total_);
  if (decile != last_decile_) {
    last_decile_ = decile;
    Draw(false);
  }
}

void ProgressBar::Finish() {
  if (finished_) return;
  finished_ = true;
  done_ = total_;
  Draw(true);
}

void ProgressBar::Draw(bool final) {
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double frac = total_ == 0 ? 1.0 : static_cast<double>(done_) / static_cast<double>(total_);
  const double rate = secs > 0 ? static_cast<double>(done_) / secs : 0.0;
  if (tty_) {
    constexpr int kWidth = 30;
    int filled = static_cast<int>(frac * kWidth);
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(out_, "\r%s [%s] %3.0f%% %s / %s (%s/s)%s", label_.c_str(), bar.c_str(),
                 frac * 100, FormatBytes(done_).c_str(), FormatBytes(total_).c_str(),
                 FormatBytes(static_cast<uint64_t>(rate)).c_str(), final ? "\n" : "");
  } else if (final || done_ < total_) {
    std::fprintf(out_, "%s %3.0f%% %s / %s%s\n", label_.c_str(), frac * 100,
                 FormatBytes(done_).c_str(), FormatBytes(total_).c_str(),
                 final ? absl::StrFormat(" in %.2f s", secs).c_str() : "");
  }
  std::fflush(out_);
}

}  // namespace moemesh
