#include "kbit/io/safetensors_writer.h"

#include <cstring>
#include <fstream>

#include <gtest/gtest.h>

#include "kbit/core/random.h"
#include "kbit/io/safetensors.h"

namespace kbit::io {
namespace {

class SafetensorsWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ =
        std::filesystem::temp_directory_path() / ("kbit_writer_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(directory_);
  }
  void TearDown() override { std::filesystem::remove_all(directory_); }
  std::filesystem::path directory_;
};

TEST_F(SafetensorsWriterTest, RoundTripsThroughTheReader) {
  Tensor weight = Tensor::empty(Shape{3, 5}, DType::kBF16).value();
  ASSERT_TRUE(fill_normal(weight.view(), 3).ok());
  std::vector<std::uint8_t> packed = {1, 2, 3};  // odd size: the next tensor is misaligned
  std::vector<std::int64_t> ids = {7, -8};
  const std::filesystem::path path = directory_ / "model.safetensors";
  ASSERT_TRUE(write_safetensors(path,
                                {{"w", weight.view()},
                                 {"packed", TensorView(packed.data(), DType::kU8, Shape{3, 1})},
                                 {"ids", TensorView(ids.data(), DType::kI64, Shape{2})}},
                                {{"format", "pt"}})
                  .ok());
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->names(), (std::vector<std::string>{"w", "packed", "ids"}));
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_EQ(std::memcmp(file->tensor("w")->data(), weight.data_as<void>(), weight.nbytes()), 0);
  EXPECT_EQ(file->tensor("packed")->shape(), (Shape{3, 1}));
  EXPECT_EQ(file->tensor("ids")->data_as<std::int64_t>()[1], -8);
  // The header is padded so that the data section starts 8-byte aligned.
  std::ifstream in(path, std::ios::binary);
  std::uint64_t header_length = 0;
  in.read(reinterpret_cast<char*>(&header_length), 8);
  EXPECT_EQ(header_length % 8, 0u);
  EXPECT_FALSE(std::filesystem::exists(path.string() + ".tmp-" + std::to_string(::getpid())));
}

TEST_F(SafetensorsWriterTest, RejectsBadNamesAndLeavesNothingBehind) {
  float value = 1;
  const TensorView scalar(&value, DType::kF32, Shape{});
  const std::filesystem::path path = directory_ / "out.safetensors";
  Status duplicate = write_safetensors(path, {{"a", scalar}, {"a", scalar}});
  EXPECT_NE(duplicate.message().find("'a' appears twice"), std::string::npos);
  EXPECT_FALSE(write_safetensors(path, {{"__metadata__", scalar}}).ok());
  EXPECT_FALSE(std::filesystem::exists(path));
  const Status unwritable =
      write_safetensors(directory_ / "missing" / "out.safetensors", {{"a", scalar}});
  EXPECT_NE(unwritable.message().find("cannot create"), std::string::npos);
  EXPECT_TRUE(std::filesystem::is_empty(directory_));
}

}  // namespace
}  // namespace kbit::io
