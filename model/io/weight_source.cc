#include "model/io/weight_source.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {
namespace {

std::string What(const TensorInfo& info) {
  return absl::StrCat(info.file, ": tensor '", info.name, "'");
}

int64_t Numel(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool IsFloat(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

}  // namespace

int64_t TensorInfo::numel() const { return Numel(shape); }

absl::Status CheckShape(const TensorInfo& info, absl::Span<const int64_t> expected) {
  if (absl::Span<const int64_t>(info.shape) == expected) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(What(info), " has shape ",
                                                 ShapeToString(info.shape), ", expected ",
                                                 ShapeToString(expected)));
}

absl::StatusOr<std::vector<int64_t>> SliceShape(const TensorInfo& info, const Slice& slice) {
  MM_ASSIGN_OR_RETURN(std::vector<DimRange> ranges, ResolveSlice(What(info), info.shape, slice));
  std::vector<int64_t> shape;
  shape.reserve(ranges.size());
  for (const DimRange& r : ranges) shape.push_back(r.end - r.begin);
  return shape;
}

absl::Status WeightSource::ReadF32(std::string_view name, const Slice& slice, float* out,
                                   size_t out_elems) const {
  MM_ASSIGN_OR_RETURN(TensorInfo info, Info(name));
  if (!IsFloat(info.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(What(info), " has dtype ", std::string(DTypeName(info.dtype)),
                     ", which cannot be read as f32 (only F32, F16 and BF16 can)"));
  }
  MM_ASSIGN_OR_RETURN(std::vector<int64_t> shape, SliceShape(info, slice));
  const size_t numel = static_cast<size_t>(Numel(shape));
  if (numel != out_elems) {
    return absl::InvalidArgumentError(
        absl::StrCat(What(info), ": slice ", slice.ToString(), " has shape ",
                     ShapeToString(shape), " (", numel, " elements) but the output holds ",
                     out_elems, " elements"));
  }
  const size_t elem_size = DTypeSize(info.dtype);
  size_t done = 0;
  MM_RETURN_IF_ERROR(ForEachRun(name, slice, [&](const void* src, size_t bytes) {
    const size_t n = bytes / elem_size;
    MM_CHECK(done + n <= numel);
    ConvertToF32(info.dtype, src, out + done, n);
    done += n;
  }));
  MM_CHECK(done == numel);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> WeightSource::ReadF32Checked(
    std::string_view name, const Slice& slice, absl::Span<const int64_t> expected_shape) const {
  MM_ASSIGN_OR_RETURN(TensorInfo info, Info(name));
  MM_ASSIGN_OR_RETURN(std::vector<int64_t> shape, SliceShape(info, slice));
  if (absl::Span<const int64_t>(shape) != expected_shape) {
    return absl::InvalidArgumentError(
        absl::StrCat(What(info), ": slice ", slice.ToString(), " of shape ",
                     ShapeToString(info.shape), " has shape ", ShapeToString(shape),
                     ", expected ", ShapeToString(expected_shape)));
  }
  std::vector<float> out(static_cast<size_t>(Numel(shape)));
  MM_RETURN_IF_ERROR(ReadF32(name, slice, out.data(), out.size()));
  return out;
}

absl::Status WeightSource::ForEachRun(std::string_view name, const Slice& slice,
                                      absl::FunctionRef<void(const void*, size_t)> fn) const {
  MM_ASSIGN_OR_RETURN(TensorInfo info, Info(name));
  MM_ASSIGN_OR_RETURN(std::vector<int64_t> shape, SliceShape(info, slice));
  std::vector<char> buffer(static_cast<size_t>(Numel(shape)) * DTypeSize(info.dtype));
  MM_RETURN_IF_ERROR(ReadRaw(name, slice, buffer.data(), buffer.size()));
  if (!buffer.empty()) fn(buffer.data(), buffer.size());
  return absl::OkStatus();
}

}  // namespace moemesh
