// One .safetensors file, memory-mapped read-only: the parsed, validated header (tensor names,
// dtypes, shapes, byte ranges, "__metadata__") and pointers into the mapped data section.
// Slicing, f32 widening and multi-file directories belong to weight_source.h, not here.
// Thread-safety: immutable after Open; all methods const and safe to call concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace moemesh {

struct SafetensorsEntry {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte range [begin, end) within the data section
  uint64_t end = 0;
};

// Largest header accepted (the JSON text after the 8-byte length).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

class SafetensorsFile {
 public:
  using EntryMap = std::map<std::string, SafetensorsEntry, std::less<>>;

  // Errors name the file (and the tensor and value where there is one): NotFound /
  // PermissionDenied when it cannot be opened; InvalidArgument for a malformed header (absurd
  // length, bad JSON, missing or ill-typed fields, unknown dtype, offsets not matching the
  // shape); DataLoss when the header or a tensor reaches past the end of the file (truncated).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const EntryMap& tensors() const { return tensors_; }  // sorted by name
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry* Find(std::string_view name) const;
  // First byte of a tensor in the mapping.
  const uint8_t* TensorData(const SafetensorsEntry& entry) const { return data_ + entry.begin; }
  uint64_t data_size() const { return data_size_; }
  // Hints the kernel that [p, p + bytes) of the mapping is about to be read.
  void WillNeed(const void* p, size_t bytes) const;

 private:
  SafetensorsFile(std::string path, void* map, size_t map_size);
  absl::Status ParseHeader(std::string_view json_text);

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;
  uint64_t data_size_ = 0;
  EntryMap tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moemesh
