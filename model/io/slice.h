// Slices of stored tensors (per-dimension index ranges) and the walk over the contiguous byte
// runs a slice covers in a row-major tensor. Pure shape arithmetic: no files, no dtypes beyond
// an element size. Thread-safe (stateless functions, value types).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace moemesh {

struct DimRange {
  int64_t begin = 0;
  int64_t end = -1;  // -1 = to the end of the dimension
};

// One range per leading dimension; dimensions past ranges.size() are taken whole.
struct Slice {
  std::vector<DimRange> ranges;

  static Slice All();
  static Slice Rows(int64_t begin, int64_t end);              // a range of dim 0
  static Slice Dim(int dim, int64_t begin, int64_t end);      // full ranges before `dim`
  std::string ToString() const;                               // "[0:4, :]"
};

// Formats a shape as "[a, b, c]".
std::string ShapeToString(absl::Span<const int64_t> shape);

// Resolves `slice` against `shape` into one concrete [begin, end) per dimension. Errors
// (InvalidArgument) name `what` (e.g. "model.safetensors: tensor 'x'"), the dim, the range and
// the dim size.
absl::StatusOr<std::vector<DimRange>> ResolveSlice(const std::string& what,
                                                   absl::Span<const int64_t> shape,
                                                   const Slice& slice);

// Calls `fn(byte_offset, byte_count)` for each maximal contiguous run of the resolved slice
// `ranges` in a row-major tensor of `shape`, in row-major order of the slice. Offsets are from
// the tensor's first byte. Nothing is called for an empty slice.
void ForEachSliceRun(absl::Span<const int64_t> shape, absl::Span<const DimRange> ranges,
                     size_t elem_size, absl::FunctionRef<void(size_t, size_t)> fn);

}  // namespace moemesh
