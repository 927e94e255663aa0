#include "kbit/io/peft_adapter.h"

#include <cmath>

#include <gtest/gtest.h>

#include "kbit/io/safetensors_writer.h"
#include "testing/shared_data.h"
#include "testing/temp_dir.h"

namespace kbit::io {
namespace {

using kbit::testing::TempDir;

constexpr const char* kGoldenAdapter = "golden/checkpoints/shakespeare-llama3-qlora-adapter";

// The config with `field` set to `json` (added, or replacing the value).
std::string config_with(const std::string& field, const std::string& json) {
  std::string fields = R"("peft_type": "LORA", "r": 4, "lora_alpha": 8, "bias": "none",)"
                       R"( "target_modules": ["q_proj"])";
  return "{" + fields + ", \"" + field + "\": " + json + "}";
}

Status parse_error(const std::string& text) {
  return parse_peft_lora_config(text, "dir/adapter_config.json").status();
}

void expect_error(const Status& status, StatusCode code, const std::vector<std::string>& parts) {
  EXPECT_EQ(status.code(), code) << status.to_string();
  for (const std::string& part : parts) {
    EXPECT_NE(status.message().find(part), std::string::npos)
        << "'" << part << "' not in: " << status.message();
  }
}

TEST(PeftLoraConfig, ReadsWhatPeft021Writes) {
  KBIT_REQUIRE_SHARED_DIR();
  Result<PeftLoraConfig> config =
      read_peft_lora_config(kbit::testing::shared_file(kGoldenAdapter) / "adapter_config.json");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->r, 8);
  EXPECT_EQ(config->lora_alpha, 16);
  EXPECT_FALSE(config->use_rslora);
  EXPECT_DOUBLE_EQ(config->scaling(), 2.0);
  EXPECT_EQ(config->target_names.size(), 7u);
  for (const char* module : {"model.layers.0.self_attn.q_proj", "model.layers.5.mlp.down_proj",
                             "model.layers.3.self_attn.o_proj"}) {
    EXPECT_TRUE(config->targets(module).value()) << module;
  }
  EXPECT_FALSE(config->targets("lm_head").value());
  EXPECT_FALSE(config->targets("model.layers.0.self_attn.xq_proj").value());
}

TEST(PeftLoraConfig, ScalingAndTargets) {
  Result<PeftLoraConfig> rs = parse_peft_lora_config(config_with("use_rslora", "true"), "c");
  ASSERT_TRUE(rs.ok()) << rs.status().to_string();
  EXPECT_DOUBLE_EQ(rs->scaling(), 8.0 / 2.0);  // alpha / sqrt(r)
  Result<PeftLoraConfig> plain = parse_peft_lora_config(config_with("use_rslora", "false"), "c");
  EXPECT_DOUBLE_EQ(plain->scaling(), 8.0 / 4.0);

  Result<PeftLoraConfig> all = parse_peft_lora_config(
      R"({"peft_type": "LORA", "target_modules": "all-linear", "exclude_modules": ["k_proj"]})",
      "c");
  ASSERT_TRUE(all.ok()) << all.status().to_string();
  EXPECT_TRUE(all->targets("model.layers.0.mlp.up_proj").value());
  EXPECT_FALSE(all->targets("model.layers.0.self_attn.k_proj").value());
  EXPECT_FALSE(all->targets("lm_head").value());

  Result<PeftLoraConfig> regex =
      parse_peft_lora_config(R"({"peft_type": "LORA", "target_modules": ".*\\.(q|v)_proj"})", "c");
  ASSERT_TRUE(regex.ok()) << regex.status().to_string();
  EXPECT_TRUE(regex->targets("model.layers.1.self_attn.v_proj").value());
  EXPECT_FALSE(regex->targets("model.layers.1.self_attn.v_proj2").value());  // a full match

  Result<PeftLoraConfig> defaults = parse_peft_lora_config(R"({"peft_type": "LORA"})", "c");
  ASSERT_TRUE(defaults.ok()) << defaults.status().to_string();
  EXPECT_EQ(defaults->r, 8);
  EXPECT_TRUE(defaults->targets("model.layers.0.self_attn.q_proj").value());
  EXPECT_FALSE(defaults->targets("model.layers.0.self_attn.k_proj").value());
}

TEST(PeftLoraConfig, RefusesWhatKbitDoesNotRunNamingTheField) {
  expect_error(parse_error(config_with("bias", "\"all\"")), StatusCode::kUnimplemented,
               {"dir/adapter_config.json", "'bias'", "\"none\""});
  for (const auto& [field, value] :
       std::vector<std::pair<std::string, std::string>>{{"use_dora", "true"},
                                                        {"fan_in_fan_out", "true"},
                                                        {"modules_to_save", "[\"lm_head\"]"},
                                                        {"layers_to_transform", "[0, 1]"},
                                                        {"rank_pattern", "{\"q_proj\": 4}"},
                                                        {"alpha_pattern", "{\"q_proj\": 4}"},
                                                        {"lora_bias", "true"}}) {
    expect_error(parse_error(config_with(field, value)), StatusCode::kUnimplemented,
                 {"'" + field + "'"});
  }
  // Their "off" values are fine.
  for (const auto& [field, value] : std::vector<std::pair<std::string, std::string>>{
           {"modules_to_save", "null"}, {"layers_to_transform", "[]"}, {"rank_pattern", "{}"}}) {
    EXPECT_TRUE(parse_error(config_with(field, value)).ok()) << field;
  }
  expect_error(parse_error(config_with("new_field", "1")), StatusCode::kInvalidArgument,
               {"'new_field'"});
  expect_error(parse_error(R"({"peft_type": "IA3"})"), StatusCode::kUnimplemented,
               {"'peft_type'", "IA3"});
  expect_error(parse_error(R"({"r": 8})"), StatusCode::kInvalidArgument, {"peft_type"});
  expect_error(parse_error(config_with("r", "0")), StatusCode::kInvalidArgument, {"'r'"});
  expect_error(parse_error(config_with("lora_alpha", "\"16\"")), StatusCode::kInvalidArgument,
               {"'lora_alpha'"});
  expect_error(parse_error(config_with("target_modules", "[1]")), StatusCode::kInvalidArgument,
               {"'target_modules'"});
  expect_error(parse_error("{"), StatusCode::kInvalidArgument, {"not valid JSON"});
}

class PeftAdapterFiles : public ::testing::Test {
 protected:
  // An adapter of rank 2 on "model.layers.0.self_attn.q_proj" [out 4, in 3].
  void write_adapter(const std::vector<std::string>& extra_names = {}, std::int64_t rank_a = 2) {
    dir_.write("adapter_config.json", config_with("r", "2"));
    std::vector<NamedTensor> tensors = {
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
         TensorView(values_, DType::kF32, Shape{rank_a, 3})},
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
         TensorView(values_, DType::kF32, Shape{4, 2})}};
    for (const std::string& name : extra_names) {
      tensors.push_back({name, TensorView(values_, DType::kF32, Shape{2, 2})});
    }
    ASSERT_TRUE(write_safetensors(dir_ / "adapter_model.safetensors", tensors).ok());
  }
  TempDir dir_;
  float values_[12] = {};
};

TEST_F(PeftAdapterFiles, ChecksShapesAgainstTheModel) {
  write_adapter();
  Result<PeftAdapter> adapter = PeftAdapter::open(dir_.path());
  ASSERT_TRUE(adapter.ok()) << adapter.status().to_string();
  EXPECT_EQ(adapter->modules(), std::vector<std::string>{"model.layers.0.self_attn.q_proj"});
  Result<LoraWeights> weights = adapter->weights("model.layers.0.self_attn.q_proj", 4, 3);
  ASSERT_TRUE(weights.ok()) << weights.status().to_string();
  EXPECT_EQ(weights->a.shape(), (Shape{2, 3}));
  EXPECT_EQ(weights->b.shape(), (Shape{4, 2}));
  expect_error(adapter->weights("model.layers.0.self_attn.q_proj", 4, 5).status(),
               StatusCode::kInvalidArgument, {"[2, 3]", "[4, 5]", "[2, 5]", "q_proj"});
  expect_error(adapter->weights("model.layers.1.self_attn.q_proj", 4, 3).status(),
               StatusCode::kNotFound,
               {"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"});
}

TEST_F(PeftAdapterFiles, RefusesBadTensors) {
  write_adapter({}, /*rank_a=*/3);
  expect_error(PeftAdapter::open(dir_.path()).status(), StatusCode::kInvalidArgument,
               {"lora_A.weight", "[3, 3]", "'r' is 2"});
  write_adapter({"base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"});
  expect_error(PeftAdapter::open(dir_.path()).status(), StatusCode::kUnimplemented,
               {"lora_B.bias", "lora_bias"});
  write_adapter({"base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"});
  expect_error(PeftAdapter::open(dir_.path()).status(), StatusCode::kInvalidArgument,
               {"k_proj", "target_modules"});
}

TEST_F(PeftAdapterFiles, MissingFilesAreNamed) {
  dir_.write("adapter_config.json", config_with("r", "2"));
  expect_error(PeftAdapter::open(dir_.path()).status(), StatusCode::kNotFound,
               {"adapter_model.safetensors"});
  dir_.write("adapter_model.bin", "pickle");
  expect_error(PeftAdapter::open(dir_.path()).status(), StatusCode::kUnimplemented,
               {"adapter_model.bin", "safe_serialization=True"});
  expect_error(PeftAdapter::open(dir_ / "nowhere").status(), StatusCode::kNotFound, {"nowhere"});
}

TEST(PeftAdapter, OpensTheGoldenAdapter) {
  KBIT_REQUIRE_SHARED_DIR();
  Result<PeftAdapter> adapter = PeftAdapter::open(kbit::testing::shared_file(kGoldenAdapter));
  ASSERT_TRUE(adapter.ok()) << adapter.status().to_string();
  EXPECT_EQ(adapter->modules().size(), 6u * 7u);
  Result<LoraWeights> k = adapter->weights("model.layers.2.self_attn.k_proj", 128, 384);
  ASSERT_TRUE(k.ok()) << k.status().to_string();
  EXPECT_EQ(k->a.dtype(), DType::kF32);
}

}  // namespace
}  // namespace kbit::io
