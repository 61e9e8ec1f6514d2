// WeightSource over one or more memory-mapped .safetensors files (a single file, or the shards
// of a Hugging Face index). Reads copy the slice's contiguous runs straight from the mapping.
#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "model/io/safetensors.h"
#include "model/io/weight_source.h"

namespace moemesh {
namespace {

constexpr size_t kWillNeedMinBytes = 1 << 20;

struct Located {
  const SafetensorsFile* file;
  const SafetensorsEntry* entry;
};

class SafetensorsSource final : public WeightSource {
 public:
  explicit SafetensorsSource(std::string description) : description_(std::move(description)) {}

  const SafetensorsFile* AddFile(std::unique_ptr<SafetensorsFile> file) {
    files_.push_back(std::move(file));
    return files_.back().get();
  }
  // Exposes tensor `name` of `file` (one that AddFile returned).
  void AddTensor(const std::string& name, const SafetensorsFile* file,
                 const SafetensorsEntry* entry) {
    index_[name] = Located{file, entry};
    total_bytes_ += entry->end - entry->begin;
  }

  std::string Describe() const override { return description_; }
  std::vector<std::string> TensorNames() const override {
    std::vector<std::string> names;
    names.reserve(index_.size());
    for (const auto& [name, loc] : index_) names.push_back(name);
    return names;
  }
  bool Has(std::string_view name) const override { return index_.find(name) != index_.end(); }
  absl::StatusOr<TensorInfo> Info(std::string_view name) const override {
    MM_ASSIGN_OR_RETURN(Located loc, Locate(name));
    return TensorInfo{std::string(name), loc.entry->dtype, loc.entry->shape, loc.file->path()};
  }
  uint64_t TotalBytes() const override { return total_bytes_; }

  absl::Status ReadRaw(std::string_view name, const Slice& slice, void* out,
                       size_t out_bytes) const override {
    MM_ASSIGN_OR_RETURN(TensorInfo info, Info(name));
    MM_ASSIGN_OR_RETURN(std::vector<int64_t> shape, SliceShape(info, slice));
    uint64_t need = DTypeSize(info.dtype);
    for (int64_t d : shape) need *= static_cast<uint64_t>(d);
    if (need != out_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          info.file, ": tensor '", info.name, "': slice ", slice.ToString(), " has shape ",
          ShapeToString(shape), " (", need, " bytes) but the output holds ", out_bytes, " bytes"));
    }
    auto* dst = static_cast<uint8_t*>(out);
    return ForEachRun(name, slice, [&](const void* src, size_t bytes) {
      std::memcpy(dst, src, bytes);
      dst += bytes;
    });
  }

 protected:
  absl::Status ForEachRun(std::string_view name, const Slice& slice,
                          absl::FunctionRef<void(const void*, size_t)> fn) const override {
    MM_ASSIGN_OR_RETURN(Located loc, Locate(name));
    const std::string what = absl::StrCat(loc.file->path(), ": tensor '", std::string(name), "'");
    MM_ASSIGN_OR_RETURN(std::vector<DimRange> ranges,
                        ResolveSlice(what, loc.entry->shape, slice));
    const uint8_t* base = loc.file->TensorData(*loc.entry);
    ForEachSliceRun(loc.entry->shape, ranges, DTypeSize(loc.entry->dtype),
                    [&](size_t offset, size_t bytes) {
                      if (bytes >= kWillNeedMinBytes) loc.file->WillNeed(base + offset, bytes);
                      fn(base + offset, bytes);
                    });
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<Located> Locate(std::string_view name) const {
    auto it = index_.find(name);
    if (it == index_.end()) {
      return absl::NotFoundError(absl::StrCat("tensor '", std::string(name), "' not found in ", description_));
    }
    return it->second;
  }

  std::string description_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Located, std::less<>> index_;  // sorted by name
  uint64_t total_bytes_ = 0;
};

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return text.str();
}

// Parses the index's weight_map into tensor -> shard file name.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseIndex(
    const std::string& index_path) {
  MM_ASSIGN_OR_RETURN(std::string text, ReadText(index_path));
  nlohmann::json index = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not valid JSON"));
  }
  auto map_it = index.is_object() ? index.find("weight_map") : index.end();
  if (map_it == index.end() || !map_it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": no object field \"weight_map\""));
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (auto it = map_it->begin(); it != map_it->end(); ++it) {
    const std::string file = it->is_string() ? it->get<std::string>() : "";
    if (file.empty() || file[0] == '/' || file.find("..") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor '", it.key(),
                                                     "' maps to ", it->dump(),
                                                     ", not a file name inside the directory"));
    }
    out.emplace_back(it.key(), file);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<WeightSource>> OpenIndexed(const std::string& dir,
                                                          const std::string& index_path) {
  MM_ASSIGN_OR_RETURN(auto weight_map, ParseIndex(index_path));
  // Group tensors by shard, in file-name order, so each shard is opened once.
  std::map<std::string, std::vector<std::string>> by_file;
  for (auto& [tensor, file] : weight_map) by_file[file].push_back(tensor);
  auto source = std::make_unique<SafetensorsSource>(dir);
  for (const auto& [file, tensors] : by_file) {
    const std::string path = absl::StrCat(dir, "/", file);
    if (!Exists(path)) {
      return absl::NotFoundError(absl::StrCat(index_path, " names shard ", file, " (for tensor '",
                                              tensors.front(), "') but ", path,
                                              " does not exist"));
    }
    MM_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> opened, SafetensorsFile::Open(path));
    const SafetensorsFile* shard = source->AddFile(std::move(opened));
    for (const std::string& tensor : tensors) {
      const SafetensorsEntry* entry = shard->Find(tensor);
      if (entry == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, " puts tensor '", tensor,
                                                       "' in ", file, " but ", path,
                                                       " has no such tensor"));
      }
      source->AddTensor(tensor, shard, entry);
    }
  }
  return source;
}

absl::StatusOr<std::unique_ptr<SafetensorsSource>> OpenSingle(const std::string& path,
                                                              std::string description) {
  MM_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> opened, SafetensorsFile::Open(path));
  auto source = std::make_unique<SafetensorsSource>(std::move(description));
  const SafetensorsFile* file = source->AddFile(std::move(opened));
  for (const auto& [name, entry] : file->tensors()) source->AddTensor(name, file, &entry);
  return source;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightSource>> OpenSafetensorsFile(const std::string& path) {
  MM_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsSource> source, OpenSingle(path, path));
  return source;
}

absl::StatusOr<std::unique_ptr<WeightSource>> OpenSafetensorsDir(const std::string& dir) {
  const std::string index_path = absl::StrCat(dir, "/model.safetensors.index.json");
  if (Exists(index_path)) return OpenIndexed(dir, index_path);
  const std::string single_path = absl::StrCat(dir, "/model.safetensors");
  if (Exists(single_path)) {
    MM_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsSource> source, OpenSingle(single_path, dir));
    return source;
  }
  return absl::NotFoundError(absl::StrCat(dir, ": has neither model.safetensors nor ",
                                          "model.safetensors.index.json"));
}

}  // namespace moemesh
