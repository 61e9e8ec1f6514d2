#include "model/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moemesh {
namespace {

using Json = nlohmann::json;

absl::Status Invalid(const std::string& path, const std::string& name, absl::string_view msg) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "' ", msg));
}

absl::StatusOr<SafetensorsEntry> ParseEntry(const std::string& path, const std::string& name,
                                            const Json& j, uint64_t data_size) {
  if (!j.is_object()) return Invalid(path, name, "is not a JSON object in the header");
  auto dtype_it = j.find("dtype");
  auto shape_it = j.find("shape");
  auto offsets_it = j.find("data_offsets");
  if (dtype_it == j.end() || !dtype_it->is_string()) {
    return Invalid(path, name, "has no string field \"dtype\"");
  }
  if (shape_it == j.end() || !shape_it->is_array()) {
    return Invalid(path, name, "has no array field \"shape\"");
  }
  if (offsets_it == j.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
    return Invalid(path, name, "has no field \"data_offsets\" of two non-negative integers");
  }
  SafetensorsEntry e;
  const std::string dtype_name = dtype_it->get<std::string>();
  absl::StatusOr<DType> dtype = ParseDType(dtype_name);
  if (!dtype.ok()) return Invalid(path, name, absl::StrCat("has ", dtype.status().message()));
  e.dtype = *dtype;
  uint64_t bytes = DTypeSize(e.dtype);
  for (const Json& d : *shape_it) {
    if (!d.is_number_unsigned()) {
      return Invalid(path, name, absl::StrCat("has shape entry ", d.dump(),
                                              " (must be a non-negative integer)"));
    }
    const uint64_t v = d.get<uint64_t>();
    if (v > (1ull << 62) || __builtin_mul_overflow(bytes, v, &bytes) || bytes > (1ull << 62)) {
      return Invalid(path, name, absl::StrCat("has shape ", shape_it->dump(), " too large"));
    }
    e.shape.push_back(static_cast<int64_t>(v));
  }
  e.begin = (*offsets_it)[0].get<uint64_t>();
  e.end = (*offsets_it)[1].get<uint64_t>();
  if (e.end < e.begin || e.end - e.begin != bytes) {
    return Invalid(path, name,
                   absl::StrCat("has data_offsets [", e.begin, ", ", e.end, ") but dtype ",
                                dtype_name, " and shape ", shape_it->dump(), " need ", bytes,
                                " bytes"));
  }
  if (e.end > data_size) {
    return absl::DataLossError(absl::StrCat(
        path, ": tensor '", name, "' needs bytes [", e.begin, ", ", e.end,
        ") but the file's data section has only ", data_size, " bytes (file truncated?)"));
  }
  return e;
}

}  // namespace

SafetensorsFile::SafetensorsFile(std::string path, void* map, size_t map_size)
    : path_(std::move(path)), map_(map), map_size_(map_size) {}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    close(fd);
    return absl::DataLossError(absl::StrCat(path, ": file has ", file_size,
                                            " bytes, fewer than the 8-byte header length"));
  }
  void* map = mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  close(fd);
  if (map == MAP_FAILED) return absl::ErrnoToStatus(mmap_errno, absl::StrCat("cannot mmap ", path));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(path, map, file_size));

  const auto* bytes = static_cast<const uint8_t*>(map);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little-endian
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_len,
                                                   " exceeds the limit of ",
                                                   kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (header_len > file_size - 8) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", header_len,
                                            " reaches past the end of the file (", file_size,
                                            " bytes; file truncated?)"));
  }
  file->data_ = bytes + 8 + header_len;
  file->data_size_ = file_size - 8 - header_len;
  MM_RETURN_IF_ERROR(
      file->ParseHeader(std::string_view(reinterpret_cast<const char*>(bytes + 8), header_len)));
  return file;
}

absl::Status SafetensorsFile::ParseHeader(std::string_view json_text) {
  Json header;
  try {
    header = Json::parse(json_text);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": header is not a JSON object"));
  }
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(path_, ": __metadata__ is not an object"));
      }
      for (auto m = it->begin(); m != it->end(); ++m) {
        metadata_[m.key()] = m->is_string() ? m->get<std::string>() : m->dump();
      }
      continue;
    }
    MM_ASSIGN_OR_RETURN(SafetensorsEntry entry, ParseEntry(path_, it.key(), *it, data_size_));
    tensors_.emplace(it.key(), std::move(entry));
  }
  return absl::OkStatus();
}

const SafetensorsEntry* SafetensorsFile::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

void SafetensorsFile::WillNeed(const void* p, size_t bytes) const {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + bytes;
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_WILLNEED);  // a hint; errors ignored
}

}  // namespace moemesh
