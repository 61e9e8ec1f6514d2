#include "model/io/safetensors_writer.h"

#include <cstdio>
#include <cstring>
#include <map>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {
namespace {

std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

}  // namespace

absl::Status SafetensorsWriter::Add(std::string_view name, DType dtype, std::vector<int64_t> shape,
                                    const void* data, size_t bytes) {
  size_t need = DTypeSize(dtype);
  for (int64_t d : shape) need *= static_cast<size_t>(d);
  if (need != bytes) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", std::string(name), "': ", bytes,
                                                   " bytes given, shape and dtype need ", need));
  }
  for (const Tensor& t : tensors_) {
    if (t.name == name) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", std::string(name), "' added twice"));
    }
  }
  tensors_.push_back(Tensor{std::string(name), dtype, std::move(shape),
                            std::string(static_cast<const char*>(data), bytes)});
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::AddF32(std::string_view name, DType dtype,
                                       std::vector<int64_t> shape,
                                       absl::Span<const float> values) {
  std::string bytes(values.size() * DTypeSize(dtype), '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(&bytes[i * 4], &values[i], 4);
    } else if (dtype == DType::kF16 || dtype == DType::kBF16) {
      const uint16_t h = dtype == DType::kF16 ? F32ToF16(values[i]) : F32ToBf16(values[i]);
      std::memcpy(&bytes[i * 2], &h, 2);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", std::string(name),
                                                     "': AddF32 cannot store ",
                                                     std::string(DTypeName(dtype))));
    }
  }
  return Add(name, dtype, std::move(shape), bytes.data(), bytes.size());
}

void SafetensorsWriter::SetMetadata(std::string key, std::string value) {
  metadata_.emplace_back(std::move(key), std::move(value));
}

std::string SafetensorsWriter::HeaderJson() const {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  if (!metadata_.empty()) {
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    header["__metadata__"] = meta;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

std::string SafetensorsWriter::Serialize() const {
  const std::string header = HeaderJson();
  std::string out = LengthPrefix(header.size()) + header;
  for (const Tensor& t : tensors_) out += t.bytes;
  return out;
}

absl::Status SafetensorsWriter::Write(const std::string& path) const {
  const std::string header = HeaderJson();
  std::string data;
  for (const Tensor& t : tensors_) data += t.bytes;
  return WriteRaw(path, header, data);
}

absl::Status SafetensorsWriter::WriteRaw(const std::string& path, std::string_view header_json,
                                         std::string_view data,
                                         std::optional<uint64_t> header_len) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", path));
  const std::string prefix = LengthPrefix(header_len.value_or(header_json.size()));
  bool ok = std::fwrite(prefix.data(), 1, prefix.size(), f) == prefix.size() &&
            std::fwrite(header_json.data(), 1, header_json.size(), f) == header_json.size() &&
            std::fwrite(data.data(), 1, data.size(), f) == data.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return absl::DataLossError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace moemesh
