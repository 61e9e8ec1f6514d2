#include "model/io/slice.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moemesh {

Slice Slice::All() { return Slice{}; }

Slice Slice::Rows(int64_t begin, int64_t end) { return Slice{{DimRange{begin, end}}}; }

Slice Slice::Dim(int dim, int64_t begin, int64_t end) {
  Slice s;
  s.ranges.assign(dim < 0 ? 0 : static_cast<size_t>(dim), DimRange{});
  s.ranges.push_back(DimRange{begin, end});
  return s;
}

std::string Slice::ToString() const {
  std::vector<std::string> parts;
  for (const DimRange& r : ranges) {
    if (r.begin == 0 && r.end == -1) {
      parts.push_back(":");
    } else {
      parts.push_back(absl::StrCat(r.begin, ":", r.end == -1 ? "" : absl::StrCat(r.end)));
    }
  }
  return absl::StrCat("[", absl::StrJoin(parts, ", "), "]");
}

std::string ShapeToString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<std::vector<DimRange>> ResolveSlice(const std::string& what,
                                                   absl::Span<const int64_t> shape,
                                                   const Slice& slice) {
  if (slice.ranges.size() > shape.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": slice ", slice.ToString(), " has ", slice.ranges.size(),
                     " ranges but the tensor has only ", shape.size(), " dims (shape ",
                     ShapeToString(shape), ")"));
  }
  std::vector<DimRange> out(shape.size());
  for (size_t d = 0; d < shape.size(); ++d) {
    DimRange r = d < slice.ranges.size() ? slice.ranges[d] : DimRange{};
    if (r.end == -1) r.end = shape[d];
    if (r.begin < 0 || r.end < r.begin || r.end > shape[d]) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": slice range [", r.begin, ", ", r.end, ") of dim ", d,
                       " is outside the dim's size ", shape[d], " (shape ", ShapeToString(shape),
                       ")"));
    }
    out[d] = r;
  }
  return out;
}

void ForEachSliceRun(absl::Span<const int64_t> shape, absl::Span<const DimRange> ranges,
                     size_t elem_size, absl::FunctionRef<void(size_t, size_t)> fn) {
  const size_t rank = shape.size();
  for (const DimRange& r : ranges) {
    if (r.end <= r.begin) return;  // empty slice
  }
  // block[d]: bytes of the sub-tensor over dims [d, rank); one step of dim d is block[d + 1].
  std::vector<size_t> block(rank + 1, elem_size);
  for (size_t d = rank; d-- > 0;) block[d] = block[d + 1] * static_cast<size_t>(shape[d]);
  // The run is the innermost partial dim together with all the whole dims after it.
  size_t inner = rank;  // dims [inner, rank) are whole
  while (inner > 0 && ranges[inner - 1].begin == 0 && ranges[inner - 1].end == shape[inner - 1]) {
    --inner;
  }
  if (inner == 0) {  // the whole tensor
    fn(0, block[0]);
    return;
  }
  const size_t run_dim = inner - 1;
  const size_t run_bytes =
      static_cast<size_t>(ranges[run_dim].end - ranges[run_dim].begin) * block[run_dim + 1];
  // Odometer over dims [0, run_dim).
  std::vector<int64_t> index(run_dim);
  for (size_t d = 0; d < run_dim; ++d) index[d] = ranges[d].begin;
  while (true) {
    size_t offset = static_cast<size_t>(ranges[run_dim].begin) * block[run_dim + 1];
    for (size_t d = 0; d < run_dim; ++d) offset += static_cast<size_t>(index[d]) * block[d + 1];
    fn(offset, run_bytes);
    size_t d = run_dim;
    while (d > 0) {
      --d;
      if (++index[d] < ranges[d].end) break;
      index[d] = ranges[d].begin;
      if (d == 0) return;
    }
    if (run_dim == 0) return;
  }
}

}  // namespace moemesh
