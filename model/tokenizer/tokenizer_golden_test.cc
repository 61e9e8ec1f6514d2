// Golden test against the Hugging Face `tokenizers` library: every case of every fixture
// under tests/fixtures/tokenizers/<name>/ (tokenizer.json + expected.json, produced by
// tools/gen_fixtures.py) must give identical ids and decoded text. The fixture root can be
// overridden with MOEMESH_TOKENIZER_FIXTURES (for previews); a missing root fails.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "model/tokenizer/incremental_detokenizer.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

namespace fs = std::filesystem;

fs::path FixtureRoot() {
  if (const char* dir = std::getenv("MOEMESH_TOKENIZER_FIXTURES")) return dir;
  const char* src = std::getenv("MOEMESH_SOURCE_DIR");
  return fs::path(src != nullptr ? src : ".") / "tests" / "fixtures" / "tokenizers";
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::string Show(const std::vector<int32_t>& ids) { return nlohmann::json(ids).dump(); }

void CheckFixture(const fs::path& dir) {
  SCOPED_TRACE(dir.string());
  auto tok = Tokenizer::FromFile((dir / "tokenizer.json").string());
  ASSERT_TRUE(tok.ok()) << tok.status();
  nlohmann::json expected = nlohmann::json::parse(ReadFile(dir / "expected.json"));
  const auto& cases = expected.at("cases");
  ASSERT_FALSE(cases.empty());
  int failures = 0;
  for (size_t i = 0; i < cases.size() && failures < 20; ++i) {
    const auto& c = cases[i];
    std::string text = c.at("text").get<std::string>();
    auto want_ids = c.at("ids").get<std::vector<int32_t>>();
    auto want_plain = c.at("ids_no_special").get<std::vector<int32_t>>();
    std::string want_decoded = c.at("decoded").get<std::string>();
    std::string where = "case " + std::to_string(i) + " text " + nlohmann::json(text).dump();

    auto ids = (*tok)->Encode(text, true);
    ASSERT_TRUE(ids.ok()) << where << ": " << ids.status();
    if (*ids != want_ids) {
      ADD_FAILURE() << where << "\n  ids:  " << Show(*ids) << "\n  want: " << Show(want_ids);
      ++failures;
    }
    auto plain = (*tok)->Encode(text, false);
    ASSERT_TRUE(plain.ok()) << where << ": " << plain.status();
    if (*plain != want_plain) {
      ADD_FAILURE() << where << "\n  ids_no_special: " << Show(*plain) << "\n  want:           "
                    << Show(want_plain);
      ++failures;
    }
    auto decoded = (*tok)->Decode(want_ids);
    ASSERT_TRUE(decoded.ok()) << where << ": " << decoded.status();
    if (*decoded != want_decoded) {
      ADD_FAILURE() << where << "\n  decoded: " << nlohmann::json(*decoded).dump()
                    << "\n  want:    " << nlohmann::json(want_decoded).dump();
      ++failures;
    }

    IncrementalDetokenizer detok(**tok, false);
    std::string streamed;
    for (int32_t id : want_ids) {
      std::string piece = detok.Push(id);
      if (!utf8::Decode(piece).ok()) {
        ADD_FAILURE() << where << ": streamed piece is not valid UTF-8 after id " << id;
        ++failures;
      }
      streamed += piece;
    }
    streamed += detok.Flush();
    if (streamed != *decoded) {
      ADD_FAILURE() << where << ": streamed text differs from Decode";
      ++failures;
    }
  }
}

TEST(TokenizerGoldenTest, MatchesHuggingFaceTokenizers) {
  fs::path root = FixtureRoot();
  ASSERT_TRUE(fs::is_directory(root)) << "fixture directory missing: " << root
                                      << " (generate it with tools/gen_fixtures.py)";
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (entry.is_directory() && fs::exists(entry.path() / "expected.json")) dirs.push_back(entry.path());
  }
  std::sort(dirs.begin(), dirs.end());
  ASSERT_FALSE(dirs.empty()) << "no <name>/expected.json under " << root;
  for (const fs::path& dir : dirs) CheckFixture(dir);
}

}  // namespace
}  // namespace moemesh
