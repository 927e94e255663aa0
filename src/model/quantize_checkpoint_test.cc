// `kbit quantize` against transformers' saved checkpoints, and the errors of quantized
// checkpoints: each clear, and nothing half-written left behind.
#include "kbit/model/quantize_checkpoint.h"

#include <fstream>
#include <iterator>

#include <gtest/gtest.h>

#include "kbit/io/safetensors.h"
#include "kbit/io/safetensors_writer.h"
#include "kbit/model/llama.h"
#include "testing/shared_data.h"
#include "testing/temp_dir.h"

namespace kbit::model {
namespace {

namespace fs = std::filesystem;
using kbit::testing::TempDir;

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

QuantizeOptions golden_mode(const std::string& mode) {
  QuantizeOptions options;
  io::BnbQuantizationConfig& q = options.config;
  if (mode == "int8") {
    q.mode = io::BnbQuantMode::kInt8;  // transformers' defaults: compute dtype float32, fp4
    return options;
  }
  q.four_bit_type = mode == "fp4" ? quant::FourBitType::kFp4 : quant::FourBitType::kNf4;
  q.double_quant = mode == "nf4_dq";
  q.compute_dtype = DType::kBF16;
  return options;
}

fs::path source_model() {
  return kbit::testing::shared_file("models/shakespeare-llama2");
}

fs::path golden_checkpoint(const std::string& mode) {
  return kbit::testing::shared_file("golden/checkpoints/shakespeare-llama2-bnb-" + mode);
}

// Only `expected` (or nothing) is in `dir`: no temporary folder was left behind.
void expect_folder_holds_only(const fs::path& dir, const std::vector<std::string>& expected) {
  std::vector<std::string> names;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, expected);
}

class QuantizeCheckpoint : public ::testing::TestWithParam<std::string> {};

// The bitsandbytes state dict written as transformers' save_pretrained writes it: the same bytes.
TEST_P(QuantizeCheckpoint, WritesTheBytesTransformersWrites) {
  KBIT_REQUIRE_SHARED_DIR();
  const TempDir dir;
  const fs::path output = dir / "quantized";
  const Status status = quantize_checkpoint(source_model(), output, golden_mode(GetParam()));
  ASSERT_TRUE(status.ok()) << status.to_string();
  const fs::path golden = golden_checkpoint(GetParam());
  EXPECT_TRUE(read_bytes(output / "model.safetensors") == read_bytes(golden / "model.safetensors"))
      << GetParam() << ": model.safetensors differs from transformers'";
  EXPECT_EQ(read_bytes(output / "config.json"), read_bytes(golden / "config.json"));
  for (const char* copied : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                             "chat_template.jinja"}) {
    EXPECT_EQ(read_bytes(output / copied), read_bytes(source_model() / copied)) << copied;
  }
  expect_folder_holds_only(dir.path(), {"quantized"});
}

INSTANTIATE_TEST_SUITE_P(Modes, QuantizeCheckpoint,
                         ::testing::Values("nf4_dq", "nf4", "fp4", "int8"));

// Each failure says what is wrong and leaves the output folder's parent as it was.
void expect_quantize_fails(const fs::path& model, const QuantizeOptions& options,
                           const std::string& message_part) {
  const TempDir dir;
  const Status status = quantize_checkpoint(model, dir / "out", options);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find(message_part), std::string::npos) << status.to_string();
  expect_folder_holds_only(dir.path(), {});
}

TEST(QuantizeCheckpointErrors, RefusesAnAlreadyQuantizedCheckpoint) {
  KBIT_REQUIRE_SHARED_DIR();
  expect_quantize_fails(golden_checkpoint("nf4"), golden_mode("nf4"), "already quantized");
}

TEST(QuantizeCheckpointErrors, RefusesABlockSizeThatStraddlesRows) {
  KBIT_REQUIRE_SHARED_DIR();
  QuantizeOptions options = golden_mode("nf4");
  options.block_size = 512;  // neither divides down_proj's 768 inputs nor is a multiple of them
  expect_quantize_fails(source_model(), options, "mlp.down_proj.weight");
  options.block_size = 100;
  expect_quantize_fails(source_model(), options, "--blocksize 100");
}

TEST(QuantizeCheckpointErrors, RefusesATiedHeadToQuantize) {
  KBIT_REQUIRE_SHARED_DIR();
  QuantizeOptions options = golden_mode("nf4");
  options.config.skip_modules = std::vector<std::string>();
  expect_quantize_fails(source_model(), options, "tie_word_embeddings");
}

TEST(QuantizeCheckpointErrors, RefusesAnExistingOutputAndAMissingParent) {
  KBIT_REQUIRE_SHARED_DIR();
  const TempDir dir;
  dir.write("existing", "keep me");
  Status status = quantize_checkpoint(source_model(), dir / "existing", golden_mode("nf4"));
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("already exists"), std::string::npos) << status.to_string();
  EXPECT_EQ(read_bytes(dir / "existing"), "keep me");
  status = quantize_checkpoint(source_model(), dir / "no" / "such" / "out", golden_mode("nf4"));
  EXPECT_NE(status.message().find("does not exist"), std::string::npos) << status.to_string();
  expect_folder_holds_only(dir.path(), {"existing"});
}

// A copy of a golden checkpoint that a test may break.
class BrokenCheckpoint : public ::testing::Test {
 protected:
  void copy(const std::string& mode) {
    for (const fs::directory_entry& entry : fs::directory_iterator(golden_checkpoint(mode))) {
      fs::copy_file(entry.path(), dir_ / entry.path().filename());
      fs::permissions(dir_ / entry.path().filename(), fs::perms::owner_write,
                      fs::perm_options::add);
    }
  }
  // Rewrites model.safetensors without the tensor `name`.
  void drop_tensor(const std::string& name) {
    Result<io::SafetensorsFile> file = io::SafetensorsFile::open(dir_ / "model.safetensors");
    ASSERT_TRUE(file.ok()) << file.status().to_string();
    std::vector<io::NamedTensor> kept;
    for (const std::string& kept_name : file->names()) {
      if (kept_name != name) kept.push_back({kept_name, file->tensor(kept_name).value()});
    }
    ASSERT_EQ(kept.size() + 1, file->names().size()) << name << " is not in the checkpoint";
    const Status written = io::write_safetensors(dir_ / "model.safetensors.new", kept);
    ASSERT_TRUE(written.ok()) << written.to_string();
    fs::rename(dir_ / "model.safetensors.new", dir_ / "model.safetensors");
  }
  // Replaces `from` by `to` in config.json.
  void edit_config(const std::string& from, const std::string& to) {
    std::string text = read_bytes(dir_ / "config.json");
    const std::size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
    dir_.write("config.json", text);
  }
  // Loading fails with a message containing each part.
  void expect_load_fails(const std::vector<std::string>& parts,
                         const LlamaLoadOptions& options = {}) {
    Result<LlamaModel> model = LlamaModel::load(dir_.path(), options);
    ASSERT_FALSE(model.ok());
    for (const std::string& part : parts) {
      EXPECT_NE(model.status().message().find(part), std::string::npos)
          << model.status().to_string() << "\n  lacks: " << part;
    }
  }
  TempDir dir_;
};

TEST_F(BrokenCheckpoint, Int8CheckpointWithoutScb) {
  KBIT_REQUIRE_SHARED_DIR();
  copy("int8");
  drop_tensor("model.layers.2.mlp.up_proj.SCB");
  expect_load_fails({"model.layers.2.mlp.up_proj.SCB", "is missing", "row scales"});
}

TEST_F(BrokenCheckpoint, FourBitCheckpointWithoutAbsmax) {
  KBIT_REQUIRE_SHARED_DIR();
  copy("nf4_dq");
  drop_tensor("model.layers.0.self_attn.k_proj.weight.nested_absmax");
  expect_load_fails({"model.layers.0.self_attn.k_proj.weight.nested_absmax", "is missing"});
}

TEST_F(BrokenCheckpoint, QuantizationConfigWithAnUnknownField) {
  KBIT_REQUIRE_SHARED_DIR();
  copy("nf4");
  edit_config("\"bnb_4bit_quant_type\"",
              "\"bnb_4bit_quant_kind\": 1,\n    \"bnb_4bit_quant_type\"");
  expect_load_fails({"config.json", "bnb_4bit_quant_kind"});
}

TEST_F(BrokenCheckpoint, QuantizationConfigThatContradictsItself) {
  KBIT_REQUIRE_SHARED_DIR();
  copy("nf4");
  edit_config("\"load_in_8bit\": false", "\"load_in_8bit\": true");
  expect_load_fails({"config.json", "load_in_8bit"});
}

TEST_F(BrokenCheckpoint, QuantizationConfigThatContradictsTheWeights) {
  KBIT_REQUIRE_SHARED_DIR();
  copy("nf4");
  edit_config("\"bnb_4bit_quant_type\": \"nf4\"", "\"bnb_4bit_quant_type\": \"fp4\"");
  expect_load_fails({"bitsandbytes__fp4", "is missing"});
}

TEST_F(BrokenCheckpoint, QuantizingOnLoadWhatIsAlreadyQuantized) {
  KBIT_REQUIRE_SHARED_DIR();
  copy("nf4");
  LlamaLoadOptions options;
  options.quantize.emplace();
  expect_load_fails({"already quantized"}, options);
}

}  // namespace
}  // namespace kbit::model
