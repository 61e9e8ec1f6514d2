// Locating and reading the committed transformers fixtures (tests/fixtures, made by
// tools/gen_fixtures.py). Test-only helpers; thread-safe (no state).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moemesh::testing {

inline std::filesystem::path SourceDir() {
  const char* env = std::getenv("MOEMESH_SOURCE_DIR");
  return env != nullptr ? std::filesystem::path(env) : std::filesystem::current_path();
}

inline std::filesystem::path FixtureDir() { return SourceDir() / "tests" / "fixtures"; }

// Every model fixture directory (one holding reference.json), sorted.
inline std::vector<std::filesystem::path> ModelFixtures() {
  std::vector<std::filesystem::path> dirs;
  const auto root = FixtureDir() / "models";
  if (!std::filesystem::exists(root)) return dirs;
  for (const auto& entry : std::filesystem::directory_iterator(root)) {
    if (std::filesystem::exists(entry.path() / "reference.json")) dirs.push_back(entry.path());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

inline nlohmann::json ReadJson(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

}  // namespace moemesh::testing
