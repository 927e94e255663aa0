#include "kbit/io/safetensors.h"

#include <cstring>
#include <fstream>

#include <gtest/gtest.h>

#include "testing/shared_data.h"

namespace kbit::io {
namespace {

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = std::filesystem::temp_directory_path() /
                 ("kbit_safetensors_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(directory_);
  }
  void TearDown() override { std::filesystem::remove_all(directory_); }

  // Writes an 8-byte length, `header` and `data` to a file and returns its path.
  std::filesystem::path write(const std::string& header, const std::string& data,
                              std::uint64_t claimed_header_length = 0) {
    const std::filesystem::path path = directory_ / ("file" + std::to_string(count_++));
    std::ofstream out(path, std::ios::binary);
    std::uint64_t length = claimed_header_length != 0 ? claimed_header_length : header.size();
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>((length >> (8 * i)) & 0xff));
    out << header << data;
    return path;
  }

  // The message of the failure of opening a file with this header and data.
  std::string open_error(const std::string& header, const std::string& data) {
    Result<SafetensorsFile> file = SafetensorsFile::open(write(header, data));
    EXPECT_FALSE(file.ok());
    return file.ok() ? std::string() : file.status().message();
  }

  std::filesystem::path directory_;
  int count_ = 0;
};

std::string bytes_of(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4);
}

TEST_F(SafetensorsTest, ReadsTensorsAndMetadata) {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]},)"
      R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  Result<SafetensorsFile> file =
      SafetensorsFile::open(write(header, bytes_of({1.0f, 2.0f, 3.0f, 4.0f, 5.0f})));
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(file->metadata().at("format"), "pt");
  Result<TensorView> b = file->tensor("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->shape(), Shape{2});
  EXPECT_EQ(b->data_as<float>()[1], 5.0f);
  Result<TensorView> missing = file->tensor("c");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("'c'"), std::string::npos);
}

TEST_F(SafetensorsTest, CopiesMisalignedTensorsToAlignedMemory) {
  const std::string header = R"({"u":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
                             R"("f":{"dtype":"F32","shape":[2],"data_offsets":[3,11]}})";
  const std::string data = std::string("\x01\x02\x03", 3) + bytes_of({6.5f, -1.25f});
  Result<SafetensorsFile> file = SafetensorsFile::open(write(header, data));
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  Result<TensorView> f = file->tensor("f");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f->data()) % 4, 0u);
  EXPECT_EQ(f->data_as<float>()[0], 6.5f);
  EXPECT_EQ(f->data_as<float>()[1], -1.25f);
}

TEST_F(SafetensorsTest, EmptyTensorsAndScalars) {
  const std::string header = R"({"empty":{"dtype":"F16","shape":[0,4],"data_offsets":[0,0]},)"
                             R"("scalar":{"dtype":"I64","shape":[],"data_offsets":[0,8]}})";
  Result<SafetensorsFile> file = SafetensorsFile::open(write(header, std::string(8, '\x07')));
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->tensor("empty")->numel(), 0);
  EXPECT_EQ(file->tensor("scalar")->numel(), 1);
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  Result<SafetensorsFile> file = SafetensorsFile::open(directory_ / "absent.safetensors");
  EXPECT_EQ(file.status().code(), StatusCode::kNotFound);
  EXPECT_NE(file.status().message().find("absent.safetensors"), std::string::npos);
}

TEST_F(SafetensorsTest, RejectsTruncatedAndMalformedFiles) {
  const std::filesystem::path tiny = directory_ / "tiny";
  std::ofstream(tiny) << "abc";
  EXPECT_NE(SafetensorsFile::open(tiny).status().message().find("fewer than the 8-byte"),
            std::string::npos);
  const std::string valid = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  Result<SafetensorsFile> lying = SafetensorsFile::open(write(valid, bytes_of({1, 2}), 1 << 20));
  EXPECT_NE(lying.status().message().find("truncated"), std::string::npos);
  EXPECT_NE(open_error(valid, bytes_of({1})).find("truncated"), std::string::npos);
  EXPECT_NE(open_error("{not json", "").find("not a JSON object"), std::string::npos);
  EXPECT_NE(open_error("[1,2]", "").find("not a JSON object"), std::string::npos);
}

TEST_F(SafetensorsTest, RejectsBadEntries) {
  EXPECT_NE(
      open_error(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", std::string(8, '\0'))
          .find("tensor 'w': dtype F64 is not supported"),
      std::string::npos);
  EXPECT_NE(
      open_error(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0'))
          .find("needs 12"),
      std::string::npos);
  EXPECT_NE(
      open_error(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}})", std::string(8, '\0'))
          .find("shape[0] must be a non-negative integer"),
      std::string::npos);
  EXPECT_NE(
      open_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", std::string(8, '\0'))
          .find("end before they begin"),
      std::string::npos);
  EXPECT_NE(open_error(R"({"w":{"dtype":"F32","shape":[2],"offsets":[0,8]}})", std::string(8, '\0'))
                .find("unknown field 'offsets'"),
            std::string::npos);
  EXPECT_NE(open_error(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],)"
                       R"("data_offsets":[0,8]}})",
                       std::string(8, '\0'))
                .find("too large"),
            std::string::npos);
}

TEST_F(SafetensorsTest, RejectsOverlapsAndGaps) {
  EXPECT_NE(open_error(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                       R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                       std::string(6, '\0'))
                .find("tensor 'b' at data_offsets [2, 6] overlaps"),
            std::string::npos);
  EXPECT_NE(open_error(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                       R"("b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})",
                       std::string(6, '\0'))
                .find("leaves a gap"),
            std::string::npos);
  EXPECT_NE(
      open_error(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", std::string(5, '\0'))
          .find("cover 2"),
      std::string::npos);
}

TEST(SafetensorsGoldenTest, OpensReferenceFiles) {
  KBIT_REQUIRE_SHARED_DIR();
  Result<SafetensorsFile> file =
      SafetensorsFile::open(kbit::testing::shared_file("golden/quant4bit.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->names().size(), 161u);
  Result<TensorView> input = file->tensor("input_bf16");
  ASSERT_TRUE(input.ok());
  EXPECT_EQ(input->dtype(), DType::kBF16);
  EXPECT_EQ(input->shape(), (Shape{64, 1000}));
}

}  // namespace
}  // namespace kbit::io
