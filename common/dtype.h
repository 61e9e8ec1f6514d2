// Element types of stored tensors and exact conversions between them. bf16 and f16 widen to
// f32 exactly; narrowing rounds to nearest even. Thread-safe (pure functions).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/status/statusor.h"

namespace moemesh {

enum class DType : uint8_t { kF32, kF16, kBF16, kI32, kI64, kU8, kI8, kBool, kF64 };

size_t DTypeSize(DType t);
std::string_view DTypeName(DType t);  // safetensors spelling: "F32", "BF16", ...
// Parses a safetensors dtype string; unknown names get InvalidArgument naming the value.
absl::StatusOr<DType> ParseDType(std::string_view name);

inline float Bf16ToF32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0) {
    return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  }
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float F16ToF32(uint16_t v);
uint16_t F32ToF16(float f);

// Widens `n` elements of type `src_type` at `src` into f32. Only float types are allowed.
void ConvertToF32(DType src_type, const void* src, float* dst, size_t n);

}  // namespace moemesh
