// WeightSource: the seam through which engines and workers read model weights, each loading
// only its own shard as slices (rows, columns, a subset of experts). Knows nothing about
// architectures or sharding plans; file formats live in their own files (safetensors.h).
// Thread-safety: implementations are immutable after opening; all methods are const and may be
// called concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/dtype.h"
#include "model/io/slice.h"

namespace moemesh {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string file;  // path of the file it lives in
  int64_t numel() const;
  uint64_t bytes() const { return static_cast<uint64_t>(numel()) * DTypeSize(dtype); }
};

// Error codes: NotFound for an unknown tensor; InvalidArgument for a bad slice, a wrong output
// size, a shape mismatch or a dtype that cannot be widened to f32.
class WeightSource {
 public:
  virtual ~WeightSource() = default;

  virtual std::string Describe() const = 0;                  // e.g. the directory, for errors
  virtual std::vector<std::string> TensorNames() const = 0;  // sorted
  virtual bool Has(std::string_view name) const = 0;
  // NotFound: "tensor 'x' not found in <Describe()>".
  virtual absl::StatusOr<TensorInfo> Info(std::string_view name) const = 0;
  // Copies the slice in the stored dtype (row-major, the slice's own shape) into `out`;
  // `out_bytes` must equal the slice's numel * dtype size.
  virtual absl::Status ReadRaw(std::string_view name, const Slice& slice, void* out,
                               size_t out_bytes) const = 0;
  // Total bytes of all tensors (for progress bars).
  virtual uint64_t TotalBytes() const = 0;

  // Same as ReadRaw, widened to f32 (F32/F16/BF16 only); reads no bytes outside the slice.
  absl::Status ReadF32(std::string_view name, const Slice& slice, float* out,
                       size_t out_elems) const;
  // Reads the slice after checking its shape equals `expected_shape` (InvalidArgument naming
  // the file, the tensor, the expected and the actual shapes).
  absl::StatusOr<std::vector<float>> ReadF32Checked(
      std::string_view name, const Slice& slice, absl::Span<const int64_t> expected_shape) const;

 protected:
  // Calls `fn(src, bytes)` for each contiguous run of the slice's stored bytes, in row-major
  // order. The default reads the whole slice through ReadRaw into a buffer and calls `fn` once;
  // file-backed sources override it to point straight into their mapping.
  virtual absl::Status ForEachRun(std::string_view name, const Slice& slice,
                                  absl::FunctionRef<void(const void*, size_t)> fn) const;
};

// InvalidArgument "file: tensor 'x' has shape [a, b], expected [c, d]".
absl::Status CheckShape(const TensorInfo& info, absl::Span<const int64_t> expected);
// The slice's own shape; InvalidArgument naming the tensor, the dim, the range and the dim size.
absl::StatusOr<std::vector<int64_t>> SliceShape(const TensorInfo& info, const Slice& slice);

// Opens a Hugging Face model directory's weights: `model.safetensors`, or the shards named by
// `model.safetensors.index.json` ({"weight_map": {tensor: file}}); every shard must exist
// (NotFound naming the index and the file) and hold the tensors the index puts in it.
absl::StatusOr<std::unique_ptr<WeightSource>> OpenSafetensorsDir(const std::string& dir);
absl::StatusOr<std::unique_ptr<WeightSource>> OpenSafetensorsFile(const std::string& path);

}  // namespace moemesh
