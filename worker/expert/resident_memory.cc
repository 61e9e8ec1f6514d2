#include "worker/expert/resident_memory.h"

#include <unistd.h>

#include <fstream>

#include "absl/strings/str_cat.h"

namespace moemesh {

absl::StatusOr<uint64_t> ResidentBytes() {
  std::ifstream in("/proc/self/statm");
  uint64_t size_pages = 0;
  uint64_t resident_pages = 0;
  if (!(in >> size_pages >> resident_pages)) {
    return absl::UnavailableError("cannot read the resident page count from /proc/self/statm");
  }
  return resident_pages * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace moemesh
