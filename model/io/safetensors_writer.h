// Builds .safetensors files: synthetic model weights for tests and fixtures, and deliberately
// broken files (custom header text, wrong length prefix, missing data) for error-path tests.
// Reading belongs to safetensors.h. Thread-safety: a writer is not thread-safe; WriteRaw is.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/dtype.h"

namespace moemesh {

class SafetensorsWriter {
 public:
  // Adds a tensor with its raw little-endian bytes; InvalidArgument when `bytes` does not
  // match shape * dtype size or the name is taken.
  absl::Status Add(std::string_view name, DType dtype, std::vector<int64_t> shape,
                   const void* data, size_t bytes);
  // Adds f32 values stored as `dtype` (F32, F16 or BF16; narrowing rounds to nearest even).
  absl::Status AddF32(std::string_view name, DType dtype, std::vector<int64_t> shape,
                      absl::Span<const float> values);
  void SetMetadata(std::string key, std::string value);

  std::string HeaderJson() const;  // padded with spaces to a multiple of 8 bytes
  std::string Serialize() const;   // the whole file: length, header, data
  absl::Status Write(const std::string& path) const;

  // Writes `header_json` after an 8-byte little-endian length (its own length unless
  // `header_len` overrides it), then `data`. For building broken files.
  static absl::Status WriteRaw(const std::string& path, std::string_view header_json,
                               std::string_view data,
                               std::optional<uint64_t> header_len = std::nullopt);

 private:
  struct Tensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::vector<Tensor> tensors_;
  std::vector<std::pair<std::string, std::string>> metadata_;
};

}  // namespace moemesh
