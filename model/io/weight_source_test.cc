// Slicing (rows, columns, expert subsets, general N-D), sharded directories and their errors.
#include <cstring>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/io/safetensors_writer.h"
#include "model/io/slice.h"
#include "model/io/test_temp_dir.h"
#include "model/io/weight_source.h"

namespace moemesh {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Value at flat index i; multiples of 0.25 in [-8, 8) are exact in F32, F16 and BF16.
float V(int64_t i) { return static_cast<float>((i * 13) % 64) * 0.25f - 8.0f; }

std::vector<float> Values(int64_t n) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = V(i);
  return v;
}

TEST(SliceRunsTest, ColumnsAreOneRunPerRow) {
  std::vector<std::pair<size_t, size_t>> runs;
  auto ranges = ResolveSlice("t", {4, 6}, Slice::Dim(1, 2, 5));
  ASSERT_TRUE(ranges.ok());
  ForEachSliceRun({4, 6}, *ranges, 4, [&](size_t o, size_t n) { runs.emplace_back(o, n); });
  EXPECT_THAT(runs, ElementsAre(std::pair<size_t, size_t>{8, 12}, std::pair<size_t, size_t>{32, 12},
                                std::pair<size_t, size_t>{56, 12}, std::pair<size_t, size_t>{80, 12}));
}

TEST(SliceRunsTest, RowsAreOneRun) {
  std::vector<std::pair<size_t, size_t>> runs;
  auto ranges = ResolveSlice("t", {4, 6}, Slice::Rows(1, 3));
  ASSERT_TRUE(ranges.ok());
  ForEachSliceRun({4, 6}, *ranges, 2, [&](size_t o, size_t n) { runs.emplace_back(o, n); });
  EXPECT_THAT(runs, ElementsAre(std::pair<size_t, size_t>{12, 24}));
}

class SliceReadTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    SafetensorsWriter w;
    ASSERT_TRUE(w.AddF32("emb", GetParam(), {6, 4}, Values(24)).ok());
    ASSERT_TRUE(w.AddF32("experts", GetParam(), {4, 3, 5}, Values(60)).ok());
    ASSERT_TRUE(w.AddF32("scalar", GetParam(), {}, Values(1)).ok());
    ASSERT_TRUE(w.Write(dir_.File("model.safetensors")).ok());
    auto src = OpenSafetensorsDir(dir_.path());
    ASSERT_TRUE(src.ok()) << src.status();
    src_ = std::move(*src);
  }
  TestTempDir dir_;
  std::unique_ptr<WeightSource> src_;
};

TEST_P(SliceReadTest, RowsOfDim0) {
  auto got = src_->ReadF32Checked("emb", Slice::Rows(2, 5), {3, 4});
  ASSERT_TRUE(got.ok()) << got.status();
  std::vector<float> want;
  for (int i = 2; i < 5; ++i)
    for (int j = 0; j < 4; ++j) want.push_back(V(i * 4 + j));
  EXPECT_EQ(*got, want);
}

TEST_P(SliceReadTest, ColumnsOfDim1) {
  auto got = src_->ReadF32Checked("emb", Slice::Dim(1, 1, 3), {6, 2});
  ASSERT_TRUE(got.ok()) << got.status();
  std::vector<float> want;
  for (int i = 0; i < 6; ++i)
    for (int j = 1; j < 3; ++j) want.push_back(V(i * 4 + j));
  EXPECT_EQ(*got, want);
}

TEST_P(SliceReadTest, SubsetOfExperts) {
  auto got = src_->ReadF32Checked("experts", Slice::Rows(1, 3), {2, 3, 5});
  ASSERT_TRUE(got.ok()) << got.status();
  std::vector<float> want;
  for (int e = 1; e < 3; ++e)
    for (int n = 0; n < 3; ++n)
      for (int k = 0; k < 5; ++k) want.push_back(V(e * 15 + n * 5 + k));
  EXPECT_EQ(*got, want);
}

TEST_P(SliceReadTest, GeneralPerDimRanges) {
  Slice s{{DimRange{1, 4}, DimRange{1, 2}, DimRange{2, -1}}};
  auto got = src_->ReadF32Checked("experts", s, {3, 1, 3});
  ASSERT_TRUE(got.ok()) << got.status();
  std::vector<float> want;
  for (int e = 1; e < 4; ++e)
    for (int k = 2; k < 5; ++k) want.push_back(V(e * 15 + 5 + k));
  EXPECT_EQ(*got, want);
}

TEST_P(SliceReadTest, EmptySliceAndScalar) {
  auto empty = src_->ReadF32Checked("emb", Slice::Rows(3, 3), {0, 4});
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->empty());
  auto scalar = src_->ReadF32Checked("scalar", Slice::All(), {});
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  EXPECT_THAT(*scalar, ElementsAre(V(0)));
}

TEST_P(SliceReadTest, ConcurrentReads) {
  std::vector<std::thread> threads;
  std::vector<int> ok(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      auto got = src_->ReadF32Checked("experts", Slice::Rows(t % 4, t % 4 + 1), {1, 3, 5});
      bool good = got.ok();
      for (int i = 0; good && i < 15; ++i) good = (*got)[i] == V((t % 4) * 15 + i);
      ok[t] = good;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_THAT(ok, ::testing::Each(1));
}

INSTANTIATE_TEST_SUITE_P(AllFloatTypes, SliceReadTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// A source that implements only ReadRaw: ReadF32 must work through the default ForEachRun.
class FakeSource : public WeightSource {
 public:
  std::string Describe() const override { return "fake"; }
  std::vector<std::string> TensorNames() const override { return {"t"}; }
  bool Has(std::string_view name) const override { return name == "t"; }
  absl::StatusOr<TensorInfo> Info(std::string_view name) const override {
    if (name != "t") return absl::NotFoundError("no");
    return TensorInfo{"t", DType::kBF16, {2, 3}, "fake"};
  }
  absl::Status ReadRaw(std::string_view name, const Slice& slice, void* out,
                       size_t out_bytes) const override {
    const uint16_t row1[] = {0x3F80, 0x4000, 0x4040};  // 1, 2, 3
    if (slice.ranges.size() != 1 || slice.ranges[0].begin != 1 || out_bytes != sizeof(row1)) {
      return absl::InvalidArgumentError("fake reads only row 1");
    }
    std::memcpy(out, row1, sizeof(row1));
    return absl::OkStatus();
  }
  uint64_t TotalBytes() const override { return 12; }
};

TEST(FakeSourceTest, ReadF32GoesThroughReadRaw) {
  FakeSource src;
  auto got = src.ReadF32Checked("t", Slice::Rows(1, 2), {1, 3});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(*got, ElementsAre(1.0f, 2.0f, 3.0f));
}

// ---- Sharded directories ----

class ShardedDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SafetensorsWriter a, b;
    ASSERT_TRUE(a.AddF32("layers.0.w", DType::kBF16, {2, 3}, Values(6)).ok());
    ASSERT_TRUE(a.AddF32("unlisted", DType::kF32, {1}, Values(1)).ok());
    ASSERT_TRUE(b.AddF32("layers.1.w", DType::kF32, {3, 2}, Values(6)).ok());
    ASSERT_TRUE(a.Write(dir_.File("model-00001-of-00002.safetensors")).ok());
    ASSERT_TRUE(b.Write(dir_.File("model-00002-of-00002.safetensors")).ok());
  }
  void WriteIndex(const std::string& json) {
    std::FILE* f = std::fopen(index_.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(json.c_str(), f);
    std::fclose(f);
  }
  TestTempDir dir_;
  std::string index_ = dir_.File("model.safetensors.index.json");
};

TEST_F(ShardedDirTest, ReadsAcrossShards) {
  WriteIndex(R"({"metadata": {"total_size": 36}, "weight_map": {
      "layers.0.w": "model-00001-of-00002.safetensors",
      "layers.1.w": "model-00002-of-00002.safetensors"}})");
  auto src = OpenSafetensorsDir(dir_.path());
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ((*src)->Describe(), dir_.path());
  EXPECT_THAT((*src)->TensorNames(), ElementsAre("layers.0.w", "layers.1.w"));
  EXPECT_FALSE((*src)->Has("unlisted"));
  EXPECT_EQ((*src)->TotalBytes(), 6u * 2 + 6u * 4);
  auto info = (*src)->Info("layers.1.w");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->file, dir_.File("model-00002-of-00002.safetensors"));
  auto w0 = (*src)->ReadF32Checked("layers.0.w", Slice::Dim(1, 2, 3), {2, 1});
  ASSERT_TRUE(w0.ok()) << w0.status();
  EXPECT_THAT(*w0, ElementsAre(V(2), V(5)));
  auto w1 = (*src)->ReadF32Checked("layers.1.w", Slice::Rows(1, 3), {2, 2});
  ASSERT_TRUE(w1.ok()) << w1.status();
  EXPECT_THAT(*w1, ElementsAre(V(2), V(3), V(4), V(5)));
}

TEST_F(ShardedDirTest, IndexNamesMissingShard) {
  WriteIndex(R"({"weight_map": {"layers.0.w": "model-00001-of-00002.safetensors",
                                "layers.2.w": "model-00003-of-00003.safetensors"}})");
  auto s = OpenSafetensorsDir(dir_.path()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(index_), HasSubstr("model-00003-of-00003.safetensors"),
                                 HasSubstr("layers.2.w")));
}

TEST_F(ShardedDirTest, IndexPutsTensorInWrongShard) {
  WriteIndex(R"({"weight_map": {"layers.1.w": "model-00001-of-00002.safetensors"}})");
  auto s = OpenSafetensorsDir(dir_.path()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(index_), HasSubstr("'layers.1.w'"),
                                 HasSubstr("model-00001-of-00002.safetensors")));
}

TEST_F(ShardedDirTest, IndexWithoutWeightMap) {
  WriteIndex(R"({"metadata": {}})");
  auto s = OpenSafetensorsDir(dir_.path()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(index_), HasSubstr("weight_map")));
}

TEST(OpenDirTest, EmptyDirIsNotFound) {
  TestTempDir dir;
  auto s = OpenSafetensorsDir(dir.path()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(dir.path()), HasSubstr("model.safetensors")));
}

}  // namespace
}  // namespace moemesh
