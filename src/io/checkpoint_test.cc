#include "kbit/io/checkpoint.h"

#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

#include "kbit/io/safetensors_writer.h"
#include "testing/shared_data.h"

namespace kbit::io {
namespace {

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("kbit_checkpoint_test_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes a shard holding f32 [2] tensors of these names.
  void write_shard(const std::string& file, const std::vector<std::string>& names) {
    std::vector<NamedTensor> tensors;
    for (const std::string& name : names) {
      tensors.push_back({name, TensorView(values_, DType::kF32, Shape{2})});
    }
    ASSERT_TRUE(write_safetensors(dir_ / file, tensors).ok());
  }
  void write_index(const std::string& weight_map) {
    std::ofstream(dir_ / "model.safetensors.index.json")
        << R"({"metadata": {}, "weight_map": )" << weight_map << "}";
  }
  std::string open_error() {
    Result<Checkpoint> checkpoint = Checkpoint::open(dir_);
    EXPECT_FALSE(checkpoint.ok());
    return checkpoint.ok() ? std::string() : checkpoint.status().message();
  }

  std::filesystem::path dir_;
  float values_[2] = {1.5f, -2.0f};
};

TEST_F(CheckpointTest, OpensASingleFile) {
  write_shard("model.safetensors", {"a", "b"});
  Result<Checkpoint> checkpoint = Checkpoint::open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().to_string();
  EXPECT_EQ(checkpoint->names(), (std::vector<std::string>{"a", "b"}));
  Result<TensorView> a = checkpoint->tensor("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->data_as<const float>()[1], -2.0f);
  EXPECT_EQ(checkpoint->total_bytes(), 16u);
  EXPECT_EQ(checkpoint->tensor("c").status().code(), StatusCode::kNotFound);
}

TEST_F(CheckpointTest, OpensShardsThroughTheIndex) {
  write_shard("s1.safetensors", {"a"});
  write_shard("s2.safetensors", {"b", "c"});
  write_index(R"({"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"})");
  Result<Checkpoint> checkpoint = Checkpoint::open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().to_string();
  EXPECT_EQ(checkpoint->names().size(), 3u);
  EXPECT_TRUE(checkpoint->contains("c"));
  EXPECT_TRUE(checkpoint->entry("b").ok());
}

TEST_F(CheckpointTest, MissingShardNamesIndexShardAndTensor) {
  write_shard("s1.safetensors", {"a"});
  write_index(R"({"a": "s1.safetensors", "b": "s2.safetensors"})");
  const std::string error = open_error();
  EXPECT_NE(error.find("model.safetensors.index.json"), std::string::npos) << error;
  EXPECT_NE(error.find("'s2.safetensors'"), std::string::npos) << error;
  EXPECT_NE(error.find("'b'"), std::string::npos) << error;
}

TEST_F(CheckpointTest, TensorAbsentFromItsShard) {
  write_shard("s1.safetensors", {"a"});
  write_shard("s2.safetensors", {"b"});
  write_index(R"({"a": "s1.safetensors", "b": "s1.safetensors"})");
  const std::string error = open_error();
  EXPECT_NE(error.find("tensor 'b' is listed in shard 's1.safetensors'"), std::string::npos)
      << error;
}

TEST_F(CheckpointTest, DuplicateTensorAcrossShards) {
  write_shard("s1.safetensors", {"a", "b"});
  write_shard("s2.safetensors", {"b"});
  write_index(R"({"a": "s1.safetensors", "b": "s2.safetensors"})");
  const std::string error = open_error();
  EXPECT_NE(error.find("tensor 'b' is stored in both 's1.safetensors' and 's2.safetensors'"),
            std::string::npos)
      << error;
}

TEST_F(CheckpointTest, BadIndexAndEmptyFolder) {
  EXPECT_NE(open_error().find("holds neither model.safetensors"), std::string::npos);
  std::ofstream(dir_ / "model.safetensors.index.json") << R"({"metadata": {}})";
  EXPECT_NE(open_error().find("'weight_map'"), std::string::npos);
  write_index(R"({"a": "../s1.safetensors"})");
  EXPECT_NE(open_error().find("not a file name inside the model folder"), std::string::npos);
}

TEST(CheckpointShared, OpensTheShardedAndSingleFileModels) {
  KBIT_REQUIRE_SHARED_DIR();
  Result<Checkpoint> sharded =
      Checkpoint::open(kbit::testing::shared_file("models/shakespeare-llama3"));
  ASSERT_TRUE(sharded.ok()) << sharded.status().to_string();
  EXPECT_TRUE(sharded->contains("lm_head.weight"));
  EXPECT_EQ(sharded->total_bytes(), 25175808u);
  Result<Checkpoint> single =
      Checkpoint::open(kbit::testing::shared_file("models/shakespeare-llama2"));
  ASSERT_TRUE(single.ok()) << single.status().to_string();
  EXPECT_TRUE(single->contains("model.embed_tokens.weight"));
}

}  // namespace
}  // namespace kbit::io
