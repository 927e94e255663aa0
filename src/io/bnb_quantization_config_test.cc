#include "kbit/io/bnb_quantization_config.h"

#include <unistd.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include <gtest/gtest.h>

#include "testing/shared_data.h"

namespace kbit::io {
namespace {

// Whether `text` contains `part`, with both shown when not.
::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "\"" << text << "\"\ndoes not contain\n\"" << part << "\"";
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// The block transformers 5.17 writes for NF4 + double quant + bf16 compute (spec 8.1).
constexpr const char* kNf4DoubleQuantJson = R"({
  "_load_in_4bit": true,
  "_load_in_8bit": false,
  "bnb_4bit_compute_dtype": "bfloat16",
  "bnb_4bit_quant_storage": "uint8",
  "bnb_4bit_quant_type": "nf4",
  "bnb_4bit_use_double_quant": true,
  "llm_int8_enable_fp32_cpu_offload": false,
  "llm_int8_has_fp16_weight": false,
  "llm_int8_skip_modules": null,
  "llm_int8_threshold": 6.0,
  "load_in_4bit": true,
  "load_in_8bit": false,
  "quant_method": "bitsandbytes"
})";

BnbQuantizationConfig four_bit(quant::FourBitType type, bool double_quant) {
  BnbQuantizationConfig config;
  config.four_bit_type = type;
  config.double_quant = double_quant;
  config.compute_dtype = DType::kBF16;
  return config;
}

BnbQuantizationConfig int8() {
  BnbQuantizationConfig config;
  config.mode = BnbQuantMode::kInt8;
  return config;
}

// The error of parsing `json`, which must fail with `code`.
Status parse_error(const std::string& json, StatusCode code = StatusCode::kInvalidArgument) {
  Result<BnbQuantizationConfig> result = parse_bnb_quantization_config(json, "test.json");
  EXPECT_FALSE(result.ok()) << json;
  if (result.ok()) return ok_status();
  EXPECT_EQ(result.status().code(), code) << result.status().to_string();
  EXPECT_TRUE(Contains(result.status().message(), "test.json")) << json;
  return result.status();
}

BnbQuantizationConfig parse_ok(const std::string& json) {
  Result<BnbQuantizationConfig> result = parse_bnb_quantization_config(json, "test.json");
  EXPECT_TRUE(result.ok()) << json << ": " << result.status().to_string();
  return result.ok() ? *result : BnbQuantizationConfig();
}

class BnbQuantizationConfigFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = std::filesystem::temp_directory_path() /
                 ("kbit_bnb_qconfig_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(directory_);
  }
  void TearDown() override { std::filesystem::remove_all(directory_); }
  std::filesystem::path directory_;
};

// ---- the golden checkpoints ------------------------------------------------------------------

struct GoldenCase {
  const char* folder;
  BnbQuantizationConfig config;
};

std::vector<GoldenCase> golden_cases() {
  return {{"shakespeare-llama2-bnb-nf4", four_bit(quant::FourBitType::kNf4, false)},
          {"shakespeare-llama2-bnb-nf4_dq", four_bit(quant::FourBitType::kNf4, true)},
          {"shakespeare-llama2-bnb-fp4", four_bit(quant::FourBitType::kFp4, false)},
          {"shakespeare-llama2-bnb-int8", int8()}};
}

TEST_F(BnbQuantizationConfigFiles, ReadsEveryGoldenCheckpointsConfig) {
  KBIT_REQUIRE_SHARED_DIR();
  for (const GoldenCase& golden : golden_cases()) {
    const auto path =
        testing::shared_file(std::string("golden/checkpoints/") + golden.folder + "/config.json");
    Result<std::optional<BnbQuantizationConfig>> read = read_bnb_quantization_config(path);
    ASSERT_TRUE(read.ok()) << read.status().to_string();
    ASSERT_TRUE(read->has_value()) << golden.folder;
    EXPECT_EQ(**read, golden.config) << golden.folder;
  }
}

TEST_F(BnbQuantizationConfigFiles, WritesEveryGoldenConfigByteForByte) {
  KBIT_REQUIRE_SHARED_DIR();
  const auto float_config = testing::shared_file("models/shakespeare-llama2/config.json");
  for (const GoldenCase& golden : golden_cases()) {
    const auto expected =
        testing::shared_file(std::string("golden/checkpoints/") + golden.folder + "/config.json");
    const auto dest = directory_ / (std::string(golden.folder) + ".json");
    ASSERT_TRUE(write_config_with_quantization(float_config, golden.config, dest).ok());
    EXPECT_EQ(read_file(dest), read_file(expected)) << golden.folder;
    EXPECT_FALSE(std::filesystem::exists(dest.string() + ".tmp-" + std::to_string(::getpid())));
  }
}

TEST_F(BnbQuantizationConfigFiles, FloatCheckpointsHaveNoConfigAndReDumpUnchanged) {
  KBIT_REQUIRE_SHARED_DIR();
  for (const char* model : {"shakespeare-llama2", "shakespeare-llama3"}) {
    const auto path = testing::shared_file(std::string("models/") + model + "/config.json");
    Result<std::optional<BnbQuantizationConfig>> read = read_bnb_quantization_config(path);
    ASSERT_TRUE(read.ok()) << read.status().to_string();
    EXPECT_FALSE(read->has_value()) << model;
    // transformers' layout, reproduced: nested rope_parameters, 1e-05, 500000.0, null, lists.
    const std::string bytes = read_file(path);
    Result<std::string> dumped = python_json_dumps(bytes);
    ASSERT_TRUE(dumped.ok()) << dumped.status().to_string();
    EXPECT_EQ(*dumped, bytes) << model;
  }
}

TEST(BnbQuantizationConfig, WritesTransformersBlock) {
  EXPECT_EQ(bnb_quantization_config_json(four_bit(quant::FourBitType::kNf4, true)),
            kNf4DoubleQuantJson);
  EXPECT_EQ(parse_ok(kNf4DoubleQuantJson), four_bit(quant::FourBitType::kNf4, true));
  // A skip list and a threshold that is not a round number.
  BnbQuantizationConfig config = int8();
  config.skip_modules = std::vector<std::string>{"lm_head", "model\\.layers\\.0\\."};
  config.int8_threshold = 0.5;
  const std::string json = bnb_quantization_config_json(config);
  EXPECT_TRUE(Contains(json,
                       "\"llm_int8_skip_modules\": [\n    \"lm_head\",\n"
                       "    \"model\\\\.layers\\\\.0\\\\.\"\n  ],\n"));
  EXPECT_TRUE(Contains(json, "\"llm_int8_threshold\": 0.5,"));
  config.skip_modules = std::vector<std::string>{};
  EXPECT_TRUE(Contains(bnb_quantization_config_json(config), "\"llm_int8_skip_modules\": [],"));
}

TEST(BnbQuantizationConfig, RoundTrips) {
  std::vector<BnbQuantizationConfig> configs;
  for (const GoldenCase& golden : golden_cases()) configs.push_back(golden.config);
  BnbQuantizationConfig custom = four_bit(quant::FourBitType::kFp4, true);
  custom.compute_dtype = DType::kF16;
  custom.int8_threshold = 0;
  custom.skip_modules = std::vector<std::string>{"lm_head", "m\u00e9lange", "a\"b"};
  custom.fp32_cpu_offload = true;
  custom.int8_has_fp16_weight = true;  // has no effect on a 4-bit checkpoint
  configs.push_back(custom);
  BnbQuantizationConfig eight = int8();
  eight.quant_storage = DType::kBF16;  // ignored by 8-bit checkpoints, but kept
  eight.int8_threshold = 1e-05;
  eight.skip_modules = std::vector<std::string>{};
  configs.push_back(eight);
  for (const BnbQuantizationConfig& config : configs) {
    const std::string json = bnb_quantization_config_json(config);
    EXPECT_EQ(parse_ok(json), config) << json;
  }
  EXPECT_TRUE(Contains(bnb_quantization_config_json(custom), "\"m\\u00e9lange\""));
}

// ---- reader rules ----------------------------------------------------------------------------

TEST(BnbQuantizationConfig, MissingFieldsTakeTransformersDefaults) {
  EXPECT_EQ(parse_ok(R"({"load_in_4bit": true})"), BnbQuantizationConfig());
  EXPECT_EQ(parse_ok(R"({"_load_in_8bit": true, "_load_in_4bit": false})"), int8());
  EXPECT_EQ(parse_ok(R"({"load_in_8bit": true, "quant_method": null})"), int8());
  // A transformers 4.3x checkpoint: no quant_storage, no private keys.
  const BnbQuantizationConfig old = parse_ok(R"({
    "bnb_4bit_compute_dtype": "float16", "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": false, "llm_int8_enable_fp32_cpu_offload": false,
    "llm_int8_has_fp16_weight": false, "llm_int8_skip_modules": null,
    "llm_int8_threshold": 6.0, "load_in_4bit": true, "load_in_8bit": false,
    "quant_method": "bitsandbytes"})");
  EXPECT_EQ(old.mode, BnbQuantMode::kFourBit);
  EXPECT_EQ(old.four_bit_type, quant::FourBitType::kNf4);
  EXPECT_EQ(old.compute_dtype, DType::kF16);
  EXPECT_EQ(old.quant_storage, DType::kU8);
  // None where transformers takes None for its default.
  const BnbQuantizationConfig nulls = parse_ok(
      R"({"load_in_4bit": true, "bnb_4bit_compute_dtype": null, "bnb_4bit_quant_storage": null})");
  EXPECT_EQ(nulls, BnbQuantizationConfig());
  // torch's aliases, and an integer threshold.
  EXPECT_EQ(parse_ok(R"({"load_in_4bit": true, "bnb_4bit_compute_dtype": "half"})").compute_dtype,
            DType::kF16);
  EXPECT_EQ(parse_ok(R"({"load_in_4bit": true, "bnb_4bit_compute_dtype": "float"})").compute_dtype,
            DType::kF32);
  EXPECT_EQ(parse_ok(R"({"load_in_8bit": true, "llm_int8_threshold": 4})").int8_threshold, 4.0);
}

TEST(BnbQuantizationConfig, AcceptsOptionsWithoutEffect) {
  EXPECT_TRUE(parse_ok(R"({"load_in_8bit": true, "llm_int8_enable_fp32_cpu_offload": true})")
                  .fp32_cpu_offload);
  EXPECT_TRUE(
      parse_ok(R"({"load_in_4bit": true, "llm_int8_has_fp16_weight": true})").int8_has_fp16_weight);
  EXPECT_EQ(
      parse_ok(R"({"load_in_8bit": true, "bnb_4bit_quant_storage": "float16"})").quant_storage,
      DType::kF16);
  EXPECT_EQ(parse_ok(R"({"load_in_8bit": true, "llm_int8_threshold": 0.0})").int8_threshold, 0.0);
}

TEST(BnbQuantizationConfig, RejectsContradictoryOrMissingModes) {
  EXPECT_TRUE(Contains(parse_error(R"({"load_in_4bit": true, "_load_in_4bit": false})").message(),
                       "'quantization_config.load_in_4bit' (true) and "
                       "field 'quantization_config._load_in_4bit' (false) are contradictory"));
  EXPECT_TRUE(Contains(parse_error(R"({"load_in_8bit": false, "_load_in_8bit": true})").message(),
                       "contradictory"));
  EXPECT_TRUE(Contains(parse_error(R"({"load_in_4bit": true, "load_in_8bit": true})").message(),
                       "both true"));
  EXPECT_TRUE(Contains(parse_error(R"({"load_in_4bit": true, "_load_in_8bit": true})").message(),
                       "both true"));
  EXPECT_TRUE(Contains(parse_error(R"({"quant_method": "bitsandbytes"})").message(),
                       "neither 'quantization_config.load_in_4bit' nor"));
  EXPECT_TRUE(Contains(parse_error(R"({"load_in_4bit": false, "load_in_8bit": false})").message(),
                       "neither"));
  EXPECT_TRUE(Contains(parse_error("{}").message(), "neither"));
}

TEST(BnbQuantizationConfig, RejectsOtherMethodsAsUnimplemented) {
  const Status gptq =
      parse_error(R"({"quant_method": "gptq", "bits": 4})", StatusCode::kUnimplemented);
  EXPECT_TRUE(Contains(gptq.message(), "'quantization_config.quant_method' is \"gptq\""));
  EXPECT_TRUE(Contains(parse_error(R"({"quant_method": 4, "load_in_4bit": true})").message(),
                       "'quantization_config.quant_method' must be a string"));
}

TEST(BnbQuantizationConfig, RejectsUnknownKeysListingTheKnownOnes) {
  const Status unknown = parse_error(R"({"load_in_4bit": true, "bnb_4bit_blocksize": 64})");
  EXPECT_TRUE(Contains(unknown.message(), "unknown field \"bnb_4bit_blocksize\""));
  EXPECT_TRUE(Contains(unknown.message(), "bnb_4bit_quant_type, bnb_4bit_use_double_quant"));
  EXPECT_TRUE(Contains(unknown.message(), "quant_method)"));
  EXPECT_TRUE(Contains(
      parse_error(R"({"load_in_4bit": true, "_pre_quantization_dtype": "bfloat16"})").message(),
      "\"_pre_quantization_dtype\""));
}

TEST(BnbQuantizationConfig, RejectsWrongTypesNamingFieldAndType) {
  struct Case {
    const char* json;
    const char* message;
  };
  const Case cases[] = {
      {R"({"load_in_4bit": "yes"})", "'quantization_config.load_in_4bit' must be true or false"},
      {R"({"load_in_4bit": null})", "'quantization_config.load_in_4bit' must be true or false"},
      {R"({"load_in_8bit": 1})", "'quantization_config.load_in_8bit' must be true or false"},
      {R"({"_load_in_4bit": 1})", "'quantization_config._load_in_4bit' must be true or false"},
      {R"({"load_in_4bit": true, "bnb_4bit_use_double_quant": 1})",
       "'quantization_config.bnb_4bit_use_double_quant' must be true or false, found 1"},
      {R"({"load_in_4bit": true, "bnb_4bit_quant_type": null})",
       "'quantization_config.bnb_4bit_quant_type' must be a string"},
      {R"({"load_in_4bit": true, "bnb_4bit_compute_dtype": 16})",
       "'quantization_config.bnb_4bit_compute_dtype' must be a string"},
      {R"({"load_in_4bit": true, "bnb_4bit_quant_storage": ["uint8"]})",
       "'quantization_config.bnb_4bit_quant_storage' must be a string"},
      {R"({"load_in_8bit": true, "llm_int8_threshold": "6.0"})",
       "'quantization_config.llm_int8_threshold' must be a number"},
      {R"({"load_in_8bit": true, "llm_int8_threshold": null})",
       "'quantization_config.llm_int8_threshold' must be a number"},
      {R"({"load_in_8bit": true, "llm_int8_skip_modules": "lm_head"})",
       "'quantization_config.llm_int8_skip_modules' must be null (the defaults) or a list"},
      {R"({"load_in_8bit": true, "llm_int8_skip_modules": ["lm_head", 3]})",
       "'quantization_config.llm_int8_skip_modules' must be null (the defaults) or a list"},
      {R"({"load_in_8bit": true, "llm_int8_has_fp16_weight": "false"})",
       "'quantization_config.llm_int8_has_fp16_weight' must be true or false"},
      {R"({"load_in_8bit": true, "llm_int8_enable_fp32_cpu_offload": 0})",
       "'quantization_config.llm_int8_enable_fp32_cpu_offload' must be true or false"},
  };
  for (const Case& c : cases) EXPECT_TRUE(Contains(parse_error(c.json).message(), c.message));
}

TEST(BnbQuantizationConfig, RejectsBadValues) {
  EXPECT_TRUE(
      Contains(parse_error(R"({"load_in_4bit": true, "bnb_4bit_quant_type": "int4"})").message(),
               "'quantization_config.bnb_4bit_quant_type' must be \"nf4\" or \"fp4\", "
               "found \"int4\""));
  EXPECT_TRUE(
      Contains(parse_error(R"({"load_in_4bit": true, "bnb_4bit_quant_type": "NF4"})").message(),
               "found \"NF4\""));
  EXPECT_TRUE(
      Contains(parse_error(R"({"load_in_4bit": true, "bnb_4bit_compute_dtype": "torch.bfloat16"})")
                   .message(),
               "'quantization_config.bnb_4bit_compute_dtype' must be \"float32\", \"float16\" "
               "or \"bfloat16\""));
  EXPECT_TRUE(Contains(parse_error(R"({"load_in_4bit": true, "bnb_4bit_compute_dtype": "float64"})",
                                   StatusCode::kUnimplemented)
                           .message(),
                       "'quantization_config.bnb_4bit_compute_dtype' is \"float64\""));
  EXPECT_TRUE(
      Contains(parse_error(R"({"load_in_4bit": true, "bnb_4bit_quant_storage": "bfloat16"})",
                           StatusCode::kUnimplemented)
                   .message(),
               "'quantization_config.bnb_4bit_quant_storage' is \"bfloat16\"; kbit "
               "reads 4-bit weights packed in uint8 only"));
  EXPECT_TRUE(Contains(parse_error(R"({"load_in_8bit": true, "bnb_4bit_quant_storage": "float64"})",
                                   StatusCode::kUnimplemented)
                           .message(),
                       "is \"float64\""));
  EXPECT_TRUE(Contains(
      parse_error(R"({"load_in_4bit": true, "bnb_4bit_quant_storage": "uint16"})").message(),
      "'quantization_config.bnb_4bit_quant_storage' must be one of \"uint8\""));
  EXPECT_TRUE(
      Contains(parse_error(R"({"load_in_8bit": true, "llm_int8_threshold": -1.0})").message(),
               "'quantization_config.llm_int8_threshold' must be a finite number >= 0"));
  // JSON has no infinity; an overflowing literal is refused by the parser.
  EXPECT_TRUE(
      Contains(parse_error(R"({"load_in_8bit": true, "llm_int8_threshold": 1e999})").message(),
               "not valid JSON"));
  EXPECT_TRUE(Contains(parse_error(R"({"load_in_8bit": true, "llm_int8_has_fp16_weight": true})",
                                   StatusCode::kUnimplemented)
                           .message(),
                       "'quantization_config.llm_int8_has_fp16_weight' is true"));
  EXPECT_TRUE(
      Contains(parse_error(R"({"load_in_8bit": true, "llm_int8_skip_modules": ["model.layers.("]})")
                   .message(),
               "'quantization_config.llm_int8_skip_modules': skip pattern "
               "\"model.layers.(\" is not a valid regex"));
}

TEST(BnbQuantizationConfig, RejectsWhatIsNotAnObject) {
  EXPECT_TRUE(Contains(parse_error("[1, 2]").message(),
                       "'quantization_config' must be a JSON object, found [1,2]"));
  EXPECT_TRUE(Contains(parse_error(R"({"load_in_4bit": tru})").message(),
                       "test.json: quantization_config is not valid JSON (parse error at line 1"));
  EXPECT_TRUE(Contains(parse_error("").message(), "not valid JSON"));
}

TEST_F(BnbQuantizationConfigFiles, ReadErrorsNameTheFile) {
  const auto missing = directory_ / "missing.json";
  Result<std::optional<BnbQuantizationConfig>> absent = read_bnb_quantization_config(missing);
  ASSERT_FALSE(absent.ok());
  EXPECT_EQ(absent.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(absent.status().message(), missing.string()));

  const auto bad = directory_ / "config.json";
  write_file(bad, R"({"model_type": "llama", "quantization_config": {"load_in_4bit": 1}})");
  Result<std::optional<BnbQuantizationConfig>> read = read_bnb_quantization_config(bad);
  ASSERT_FALSE(read.ok());
  EXPECT_TRUE(Contains(read.status().message(),
                       bad.string() + ": field 'quantization_config.load_in_4bit' must be true "
                                      "or false, found 1"));

  write_file(bad, R"({"quantization_config": "nf4"})");
  EXPECT_TRUE(Contains(read_bnb_quantization_config(bad).status().message(),
                       "'quantization_config' must be a JSON object"));
  write_file(bad, R"({"quantization_config": null})");
  ASSERT_TRUE(read_bnb_quantization_config(bad).ok());
  EXPECT_FALSE(read_bnb_quantization_config(bad)->has_value());
  write_file(bad, R"(["not", "a", "config"])");
  EXPECT_TRUE(Contains(read_bnb_quantization_config(bad).status().message(), "not a JSON object"));
  write_file(bad, R"({"quantization_config": {"load_in_4bit": true}})");
  ASSERT_TRUE(read_bnb_quantization_config(bad).ok());
  EXPECT_EQ(read_bnb_quantization_config(bad)->value(), BnbQuantizationConfig());
}

// ---- writing ---------------------------------------------------------------------------------

TEST_F(BnbQuantizationConfigFiles, WriterRefusesQuantizedSourcesAndBadConfigs) {
  const auto source = directory_ / "config.json";
  const auto dest = directory_ / "out.json";
  write_file(source, R"({"vocab_size": 32, "quantization_config": {"load_in_4bit": true}})");
  const Status already = write_config_with_quantization(source, int8(), dest);
  EXPECT_EQ(already.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(already.message(), "already has a quantization_config"));
  EXPECT_FALSE(std::filesystem::exists(dest));

  write_file(source, R"({"vocab_size": 32})");
  BnbQuantizationConfig nan = int8();
  nan.int8_threshold = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(Contains(write_config_with_quantization(source, nan, dest).message(),
                       "'quantization_config.llm_int8_threshold' must be a finite number"));
  EXPECT_TRUE(Contains(bnb_quantization_config_json(nan), "\"llm_int8_threshold\": NaN,"));
  BnbQuantizationConfig bad_pattern = int8();
  bad_pattern.skip_modules = std::vector<std::string>{"[unclosed"};
  EXPECT_TRUE(Contains(write_config_with_quantization(source, bad_pattern, dest).message(),
                       "\"[unclosed\" is not a valid regex"));
  BnbQuantizationConfig storage = four_bit(quant::FourBitType::kNf4, false);
  storage.quant_storage = DType::kBF16;
  EXPECT_EQ(write_config_with_quantization(source, storage, dest).code(),
            StatusCode::kUnimplemented);
  EXPECT_FALSE(std::filesystem::exists(dest));

  EXPECT_EQ(write_config_with_quantization(directory_ / "none.json", int8(), dest).code(),
            StatusCode::kNotFound);
  EXPECT_FALSE(
      write_config_with_quantization(source, int8(), directory_ / "no/such/out.json").ok());
}

TEST_F(BnbQuantizationConfigFiles, WriterLaysOutLikePythonAndMayOverwriteItsSource) {
  const auto path = directory_ / "config.json";
  write_file(path, R"({"z": [], "a": {"y": 1e-5, "x": -0}, "name": "caf\u00e9", "n": null})");
  ASSERT_TRUE(write_config_with_quantization(path, int8(), path).ok());
  const std::string written = read_file(path);
  EXPECT_TRUE(
      written.starts_with("{\n  \"a\": {\n    \"x\": 0,\n    \"y\": 1e-05\n  },\n"
                          "  \"n\": null,\n  \"name\": \"caf\\u00e9\",\n"
                          "  \"quantization_config\": {\n    \"_load_in_4bit\": false,\n"))
      << written;
  EXPECT_TRUE(written.ends_with("    \"quant_method\": \"bitsandbytes\"\n  },\n  \"z\": []\n}\n"))
      << written;
  Result<std::optional<BnbQuantizationConfig>> read = read_bnb_quantization_config(path);
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_EQ(read->value(), int8());
}

TEST(PythonJsonDumps, MatchesJsonDumpsIndent2SortKeys) {
  // Expected: Python 3's json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n".
  const char* text =
      R"({"z": [], "a": {}, "m": {"b": 1, "a": [1, 2.5, -0.0, 1e-05, 1e16, 123456789.123, 1e22,)"
      R"( 0.0001, -3]}, "s": "h\u00e9\u007f\u0001\n\t\"\\/\ud83d\ude00\u2028", "\u00e9": null,)"
      R"( "B": true, "e": false, "big": 18446744073709551615, "neg": -9223372036854775808,)"
      R"( "f": 5E+2, "g": -0})";
  const char* expected = R"({
  "B": true,
  "a": {},
  "big": 18446744073709551615,
  "e": false,
  "f": 500.0,
  "g": 0,
  "m": {
    "a": [
      1,
      2.5,
      -0.0,
      1e-05,
      1e+16,
      123456789.123,
      1e+22,
      0.0001,
      -3
    ],
    "b": 1
  },
  "neg": -9223372036854775808,
  "s": "h\u00e9\u007f\u0001\n\t\"\\/\ud83d\ude00\u2028",
  "z": [],
  "\u00e9": null
}
)";
  Result<std::string> dumped = python_json_dumps(text);
  ASSERT_TRUE(dumped.ok()) << dumped.status().to_string();
  EXPECT_EQ(*dumped, expected);
  EXPECT_FALSE(python_json_dumps("{").ok());
}

// ---- skip patterns ---------------------------------------------------------------------------

TEST(SkipPatterns, MirrorTransformersShouldConvertModule) {
  struct Case {
    const char* name;
    std::vector<std::string> patterns;
    bool skipped;  // Python: any(re.match(p + "\\.", n) or re.match(p, n) or n.endswith(p))
  };
  const Case cases[] = {
      {"lm_head", {"lm_head"}, true},
      {"lm_head_x", {"lm_head"}, true},  // re.match is a prefix match
      {"model.lm_head_x", {"lm_head"}, false},
      {"model.lm_head", {"lm_head"}, true},  // endswith
      {"model.layers.0.mlp.down_proj", {"model\\.layers\\.[0-3]\\.mlp"}, true},
      {"model.layers.4.mlp.down_proj", {"model\\.layers\\.[0-3]\\.mlp"}, false},
      {"model.layers.10.mlp.down_proj", {"model\\.layers\\.1"}, true},
      {"model.layers.0.self_attn.q_proj", {"q_proj"}, true},
      {"model.layers.0.self_attn.q_proj", {"self_attn"}, false},  // not at the start, not the end
      {"model.layers.0.self_attn.q_proj", {"model.layers.0"}, true},
      {"model.layers.0.self_attn.q_proj", {".*attn"}, true},
      {"model.layers.0.self_attn.q_proj", {""}, true},
      {"model.layers.0.self_attn.q_proj", {}, false},
      {"model.layers.0.mlp.up_proj", {"down_proj", "up_proj"}, true},
      {"model.layers.0.mlp.up_proj", {"mlp$"}, false},
      {"model.layers.0.mlp", {"mlp$"}, false},
      {"model.layers.0.mlp.up_proj", {"model.layers.0.mlp$"}, false},
      {"model.layers.0.mlp.up_proj", {"up_proj$"}, false},  // endswith is literal
      {"a.b", {"a|x"}, true},
      {"x.b", {"a|x"}, true},
      {"model.layers.1.mlp.gate_proj", {"(?:model\\.)?layers\\.1\\."}, true},
      {"layers.1x", {"layers.1"}, true},
  };
  for (const Case& c : cases) {
    Result<bool> skipped = module_matches_skip_patterns(c.name, c.patterns);
    ASSERT_TRUE(skipped.ok()) << skipped.status().to_string();
    EXPECT_EQ(*skipped, c.skipped)
        << c.name << " against " << (c.patterns.empty() ? "[]" : c.patterns[0]);
  }
}

TEST(SkipPatterns, ReportsBadPatternsByName) {
  Result<bool> bad = module_matches_skip_patterns("lm_head", {"lm_head", "model.layers.("});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(bad.status().message(), "\"model.layers.(\" is not a valid regex"));
}

TEST(SkipPatterns, DefaultsToLmHead) {
  BnbQuantizationConfig config;
  EXPECT_EQ(effective_skip_modules(config), std::vector<std::string>{"lm_head"});
  config.skip_modules = std::vector<std::string>{};
  EXPECT_TRUE(effective_skip_modules(config).empty());  // a list replaces the defaults
  EXPECT_FALSE(module_matches_skip_patterns("lm_head", effective_skip_modules(config)).value());
  config.skip_modules = std::vector<std::string>{"mlp"};
  EXPECT_EQ(effective_skip_modules(config), std::vector<std::string>{"mlp"});
}

}  // namespace
}  // namespace kbit::io
