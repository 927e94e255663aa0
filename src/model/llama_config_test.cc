#include "kbit/model/llama_config.h"

#include <gtest/gtest.h>

#include "testing/shared_data.h"

namespace kbit::model {
namespace {

// Llama-2-7B as transformers 4 saved it.
constexpr const char* kLlama2 = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "bos_token_id": 1,
  "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 11008, "max_position_embeddings": 4096, "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1,
  "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false,
  "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": true,
  "vocab_size": 32000})";

// Llama-3.1-8B-Instruct, transformers 4 form with llama3 scaling and a list of eos ids.
constexpr const char* kLlama31 = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
  "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 131072,
  "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
  "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "vocab_size": 128256})";

// The same model as transformers 5 writes it.
constexpr const char* kLlama31V5 = R"({
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009], "head_dim": 128, "hidden_size": 4096,
  "intermediate_size": 14336, "max_position_embeddings": 131072, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "dtype": "bfloat16", "vocab_size": 128256,
  "rope_parameters": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_theta": 500000.0,
                      "rope_type": "llama3"}})";

// Mistral-7B-v0.1.
constexpr const char* kMistral = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 32000})";

LlamaConfig parse_ok(const std::string& text) {
  Result<LlamaConfig> config = parse_llama_config(text, "config.json");
  EXPECT_TRUE(config.ok()) << config.status().to_string();
  return config.ok() ? config.value() : LlamaConfig{};
}

std::string parse_error(const std::string& text) {
  Result<LlamaConfig> config = parse_llama_config(text, "dir/config.json");
  EXPECT_FALSE(config.ok());
  return config.ok() ? std::string() : config.status().message();
}

// kLlama2 with one field replaced (or added) by `field_json` ("\"x\": 1").
std::string llama2_with(const std::string& field_json) {
  std::string text = kLlama2;
  return text.substr(0, text.rfind('}')) + ", " + field_json + "}";
}

TEST(LlamaConfig, Llama2) {
  const LlamaConfig c = parse_ok(kLlama2);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.rope.type, RopeType::kDefault);
  EXPECT_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.dtype, DType::kF16);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<std::int64_t>{2});
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.sliding_window);
}

TEST(LlamaConfig, Llama31BothForms) {
  for (const char* text : {kLlama31, kLlama31V5}) {
    const LlamaConfig c = parse_ok(text);
    EXPECT_EQ(c.num_key_value_heads, 8);
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_EQ(c.rope.type, RopeType::kLlama3);
    EXPECT_EQ(c.rope.theta, 500000.0);
    EXPECT_EQ(c.rope.factor, 8.0);
    EXPECT_EQ(c.rope.low_freq_factor, 1.0);
    EXPECT_EQ(c.rope.high_freq_factor, 4.0);
    EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
    EXPECT_EQ(c.dtype, DType::kBF16);
    EXPECT_EQ(c.eos_token_ids, (std::vector<std::int64_t>{128001, 128008, 128009}));
  }
}

TEST(LlamaConfig, Mistral) {
  const LlamaConfig c = parse_ok(kMistral);
  EXPECT_EQ(c.model_type, "mistral");
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.max_position_embeddings, 32768);
}

TEST(LlamaConfig, RopeScalingForms) {
  LlamaConfig c = parse_ok(llama2_with(R"("rope_scaling": {"type": "linear", "factor": 2.0})"));
  EXPECT_EQ(c.rope.type, RopeType::kLinear);
  EXPECT_EQ(c.rope.factor, 2.0);
  c = parse_ok(llama2_with(R"("rope_scaling": {"rope_type": "dynamic", "factor": 4.0})"));
  EXPECT_EQ(c.rope.type, RopeType::kDynamic);
  c = parse_ok(llama2_with(R"("rope_parameters": {"rope_type": "default", "rope_theta": 1e6})"));
  EXPECT_EQ(c.rope.theta, 1e6);
  // llama3 without original_max_position_embeddings takes max_position_embeddings.
  c = parse_ok(llama2_with(
      R"("rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4})"));
  EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
}

TEST(LlamaConfig, Defaults) {
  const LlamaConfig c = parse_ok(R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
      "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2})");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.eos_token_ids, std::vector<std::int64_t>{2});
  EXPECT_FALSE(c.dtype);
}

TEST(LlamaConfig, ErrorsNameFileFieldAndValue) {
  std::string e = parse_error(llama2_with(R"("architectures": ["GPT2LMHeadModel"])"));
  // The duplicate key keeps the last value in nlohmann::json.
  EXPECT_NE(e.find("dir/config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("'architectures'"), std::string::npos) << e;
  EXPECT_NE(e.find("GPT2LMHeadModel"), std::string::npos) << e;
  e = parse_error(llama2_with(R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0})"));
  EXPECT_NE(e.find("'rope_scaling.rope_type' is \"yarn\""), std::string::npos) << e;
  e = parse_error(llama2_with(R"("hidden_act": "gelu")"));
  EXPECT_NE(e.find("'hidden_act' is \"gelu\""), std::string::npos) << e;
  e = parse_error(llama2_with(R"("hidden_size": "4096")"));
  EXPECT_NE(e.find("'hidden_size' must be an integer, found \"4096\""), std::string::npos) << e;
  e = parse_error(llama2_with(R"("num_key_value_heads": 5)"));
  EXPECT_NE(e.find("'num_key_value_heads' must divide"), std::string::npos) << e;
  e = parse_error(llama2_with(R"("rope_scaling": {"type": "linear"})"));
  EXPECT_NE(e.find("'rope_scaling.factor' is missing"), std::string::npos) << e;
  e = parse_error(llama2_with(R"("eos_token_id": [2, "x"])"));
  EXPECT_NE(e.find("'eos_token_id'"), std::string::npos) << e;
  e = parse_error(llama2_with(R"("torch_dtype": "int8")"));
  EXPECT_NE(e.find("'torch_dtype'"), std::string::npos) << e;
  e = parse_error(R"({"model_type": "llama", "hidden_size": 8})");
  EXPECT_NE(e.find("'vocab_size' is missing"), std::string::npos) << e;
  e = parse_error(R"({"model_type": "gemma"})");
  EXPECT_NE(e.find("\"gemma\""), std::string::npos) << e;
  e = parse_error("not json");
  EXPECT_NE(e.find("dir/config.json"), std::string::npos) << e;
}

TEST(LlamaConfig, SharedModels) {
  KBIT_REQUIRE_SHARED_DIR();
  Result<LlamaConfig> llama2 =
      load_llama_config(kbit::testing::shared_file("models/shakespeare-llama2/config.json"));
  ASSERT_TRUE(llama2.ok()) << llama2.status().to_string();
  EXPECT_TRUE(llama2->tie_word_embeddings);
  EXPECT_EQ(llama2->hidden_size, 256);
  EXPECT_EQ(llama2->rope.type, RopeType::kDefault);
  Result<LlamaConfig> llama3 =
      load_llama_config(kbit::testing::shared_file("models/shakespeare-llama3/config.json"));
  ASSERT_TRUE(llama3.ok()) << llama3.status().to_string();
  EXPECT_EQ(llama3->num_key_value_heads, 2);
  EXPECT_EQ(llama3->rope.type, RopeType::kLlama3);
  EXPECT_EQ(llama3->rope.original_max_position_embeddings, 256);
  EXPECT_EQ(llama3->bos_token_id, 0);
  EXPECT_EQ(llama3->dtype, DType::kBF16);
}

}  // namespace
}  // namespace kbit::model
