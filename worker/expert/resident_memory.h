// The process's resident memory (RSS), read from /proc/self/statm: what an expert worker
// reports after loading, next to its weights' bytes. Linux only. Thread-safe.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"

namespace moemesh {

// Resident bytes of this process; UNAVAILABLE naming the file when it cannot be read.
absl::StatusOr<uint64_t> ResidentBytes();

}  // namespace moemesh
