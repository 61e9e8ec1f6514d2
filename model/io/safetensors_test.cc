// Round trips through SafetensorsWriter and the mmap reader, and every malformed-file error.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/io/safetensors.h"
#include "model/io/safetensors_writer.h"
#include "model/io/test_temp_dir.h"
#include "model/io/weight_source.h"

namespace moemesh {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Multiples of 0.25 in [-8, 8): exact in F32, F16 and BF16.
float V(int64_t i) { return static_cast<float>((i * 13) % 64) * 0.25f - 8.0f; }

std::vector<float> Values(int64_t n) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = V(i);
  return v;
}

TEST(SafetensorsTest, RoundTripsF32F16Bf16) {
  TestTempDir dir;
  const std::string path = dir.File("model.safetensors");
  SafetensorsWriter w;
  ASSERT_TRUE(w.AddF32("w.f32", DType::kF32, {3, 5}, Values(15)).ok());
  ASSERT_TRUE(w.AddF32("w.f16", DType::kF16, {3, 5}, Values(15)).ok());
  ASSERT_TRUE(w.AddF32("w.bf16", DType::kBF16, {15}, Values(15)).ok());
  w.SetMetadata("format", "pt");
  ASSERT_TRUE(w.Write(path).ok());

  auto src = OpenSafetensorsFile(path);
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_THAT((*src)->TensorNames(), ElementsAre("w.bf16", "w.f16", "w.f32"));
  EXPECT_EQ((*src)->TotalBytes(), 15u * 4 + 15u * 2 + 15u * 2);
  EXPECT_EQ((*src)->Describe(), path);
  for (const char* name : {"w.f32", "w.f16", "w.bf16"}) {
    std::vector<float> got(15);
    ASSERT_TRUE((*src)->ReadF32(name, Slice::All(), got.data(), got.size()).ok()) << name;
    EXPECT_EQ(got, Values(15)) << name;
  }
  auto info = (*src)->Info("w.f16");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->dtype, DType::kF16);
  EXPECT_THAT(info->shape, ElementsAre(3, 5));
  EXPECT_EQ(info->file, path);
  EXPECT_EQ(info->numel(), 15);

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
}

TEST(SafetensorsTest, WidensHandWrittenHalfBits) {
  TestTempDir dir;
  const std::string path = dir.File("h.safetensors");
  const uint16_t f16[] = {0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001};
  const uint16_t bf16[] = {0x3F80, 0xC000, 0x4049, 0x0000, 0x8000};
  SafetensorsWriter w;
  ASSERT_TRUE(w.Add("h", DType::kF16, {5}, f16, sizeof(f16)).ok());
  ASSERT_TRUE(w.Add("b", DType::kBF16, {5}, bf16, sizeof(bf16)).ok());
  ASSERT_TRUE(w.Write(path).ok());
  auto src = OpenSafetensorsFile(path);
  ASSERT_TRUE(src.ok()) << src.status();

  std::vector<float> h(5), b(5);
  ASSERT_TRUE((*src)->ReadF32("h", Slice::All(), h.data(), 5).ok());
  ASSERT_TRUE((*src)->ReadF32("b", Slice::All(), b.data(), 5).ok());
  EXPECT_THAT(h, ElementsAre(1.0f, -2.0f, 0.5f, 65504.0f, std::ldexp(1.0f, -24)));
  EXPECT_THAT(b, ElementsAre(1.0f, -2.0f, 3.140625f, 0.0f, -0.0f));
  EXPECT_TRUE(std::signbit(b[4]));
  uint16_t raw[5];
  ASSERT_TRUE((*src)->ReadRaw("h", Slice::All(), raw, sizeof(raw)).ok());
  EXPECT_EQ(std::memcmp(raw, f16, sizeof(raw)), 0);
}

// ---- Malformed files ----

class BadFileTest : public ::testing::Test {
 protected:
  // Writes a file with the given header and data and returns the status of opening it.
  absl::Status OpenRaw(std::string_view header, std::string_view data,
                       std::optional<uint64_t> header_len = std::nullopt) {
    EXPECT_TRUE(SafetensorsWriter::WriteRaw(path_, header, data, header_len).ok());
    return SafetensorsFile::Open(path_).status();
  }
  TestTempDir dir_;
  std::string path_ = dir_.File("bad.safetensors");
};

TEST_F(BadFileTest, MissingFileIsNotFound) {
  auto s = SafetensorsFile::Open(dir_.File("nope.safetensors")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("nope.safetensors"));
}

TEST_F(BadFileTest, TooShortForLength) {
  std::ofstream(path_) << "abc";
  auto s = SafetensorsFile::Open(path_).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path_), HasSubstr("3 bytes")));
}

TEST_F(BadFileTest, HeaderLengthAbsurd) {
  auto s = OpenRaw("{}", "", 200ull << 20);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path_), HasSubstr("header length 209715200"),
                                 HasSubstr("104857600")));
}

TEST_F(BadFileTest, HeaderLengthPastEndOfFile) {
  auto s = OpenRaw("{}", "", 1000);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path_), HasSubstr("header length 1000"),
                                 HasSubstr("10 bytes")));
}

TEST_F(BadFileTest, BadJson) {
  auto s = OpenRaw("{\"x\": {\"dtype\": ", "");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path_), HasSubstr("not valid JSON")));
}

TEST_F(BadFileTest, MissingField) {
  auto s = OpenRaw(R"({"x": {"dtype": "F32", "shape": [1]}})", "abcd");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path_), HasSubstr("'x'"), HasSubstr("data_offsets")));
}

TEST_F(BadFileTest, UnknownDType) {
  auto s = OpenRaw(R"({"x": {"dtype": "F8_E9", "shape": [1], "data_offsets": [0, 1]}})", "a");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path_), HasSubstr("'x'"), HasSubstr("F8_E9")));
}

TEST_F(BadFileTest, OffsetsDisagreeWithShape) {
  auto s = OpenRaw(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", "abcd");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path_), HasSubstr("'x'"), HasSubstr("[0, 4)"),
                                 HasSubstr("need 8 bytes")));
}

TEST_F(BadFileTest, NegativeShape) {
  auto s = OpenRaw(R"({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})", "");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("'x'"), HasSubstr("-1")));
}

TEST_F(BadFileTest, TruncatedFile) {
  SafetensorsWriter w;
  ASSERT_TRUE(w.AddF32("a", DType::kF32, {4}, Values(4)).ok());
  ASSERT_TRUE(w.AddF32("b", DType::kF32, {4}, Values(4)).ok());
  std::string bytes = w.Serialize();
  bytes.resize(bytes.size() - 6);  // "b" occupies data bytes [16, 32); 26 remain
  std::ofstream(path_, std::ios::binary) << bytes;
  auto s = SafetensorsFile::Open(path_).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path_), HasSubstr("tensor 'b' needs bytes [16, 32)"),
                                 HasSubstr("only 26 bytes"), HasSubstr("truncated")));
}

// ---- Errors on reading ----

class ReadErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SafetensorsWriter w;
    ASSERT_TRUE(w.AddF32("w", DType::kBF16, {6, 4}, Values(24)).ok());
    const int64_t ids[] = {7, -3};
    ASSERT_TRUE(w.Add("ids", DType::kI64, {2}, ids, sizeof(ids)).ok());
    ASSERT_TRUE(w.Write(path_).ok());
    auto src = OpenSafetensorsFile(path_);
    ASSERT_TRUE(src.ok()) << src.status();
    src_ = std::move(*src);
  }
  TestTempDir dir_;
  std::string path_ = dir_.File("model.safetensors");
  std::unique_ptr<WeightSource> src_;
};

TEST_F(ReadErrorTest, MissingTensor) {
  EXPECT_FALSE(src_->Has("nope"));
  auto s = src_->Info("nope").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "tensor 'nope' not found in " + path_);
  float x;
  EXPECT_EQ(src_->ReadF32("nope", Slice::All(), &x, 1).code(), absl::StatusCode::kNotFound);
}

TEST_F(ReadErrorTest, WrongShape) {
  auto info = src_->Info("w");
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(CheckShape(*info, {6, 4}).ok());
  auto s = CheckShape(*info, {4, 6});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), path_ + ": tensor 'w' has shape [6, 4], expected [4, 6]");

  auto r = src_->ReadF32Checked("w", Slice::Rows(0, 2), {3, 4});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), AllOf(HasSubstr(path_), HasSubstr("'w'"),
                                          HasSubstr("[2, 4]"), HasSubstr("expected [3, 4]")));
}

TEST_F(ReadErrorTest, UnsupportedDTypeForF32) {
  std::vector<float> out(2);
  auto s = src_->ReadF32("ids", Slice::All(), out.data(), out.size());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path_), HasSubstr("'ids'"), HasSubstr("I64")));
  int64_t ids[2];
  ASSERT_TRUE(src_->ReadRaw("ids", Slice::All(), ids, sizeof(ids)).ok());
  EXPECT_THAT(ids, ElementsAre(7, -3));
}

TEST_F(ReadErrorTest, WrongOutputSize) {
  std::vector<float> out(23);
  auto s = src_->ReadF32("w", Slice::All(), out.data(), out.size());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("'w'"), HasSubstr("24"), HasSubstr("23")));
  std::vector<uint16_t> raw(24);
  EXPECT_EQ(src_->ReadRaw("w", Slice::All(), raw.data(), 47).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ReadErrorTest, OutOfRangeSlice) {
  std::vector<float> out(64);
  auto s = src_->ReadF32("w", Slice::Rows(2, 9), out.data(), 28);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path_), HasSubstr("'w'"), HasSubstr("[2, 9)"),
                                 HasSubstr("dim 0"), HasSubstr("size 6")));
  auto info = src_->Info("w");
  ASSERT_TRUE(info.ok());
  s = SliceShape(*info, Slice::Dim(1, 3, 2)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("[3, 2)"), HasSubstr("dim 1"), HasSubstr("size 4")));
  s = SliceShape(*info, Slice::Dim(2, 0, 1)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("3 ranges"));
}

}  // namespace
}  // namespace moemesh
