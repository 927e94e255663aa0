// Perplexity of the shared models in each quantized mode against transformers + bitsandbytes in
// the same mode (bf16 model, compute dtype bf16), on the CPU: within 0.5%. Label `slow`: eight
// full scorings of the validation text (scripts/test.sh leaves it out; run it with
// `ctest --preset release -L slow`).
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "generate/validation_text.h"
#include "kbit/generate/perplexity.h"
#include "kbit/model/llama.h"
#include "kbit/tokenizer/tokenizer.h"
#include "testing/shared_data.h"

namespace kbit::generate {
namespace {

using ModelAndMode = std::tuple<std::string, std::string>;

model::QuantizeOptions mode_options(const std::string& mode) {
  model::QuantizeOptions options;
  io::BnbQuantizationConfig& q = options.config;
  q.compute_dtype = DType::kBF16;
  if (mode == "int8") {
    q.mode = io::BnbQuantMode::kInt8;
  } else {
    q.four_bit_type = mode == "fp4" ? quant::FourBitType::kFp4 : quant::FourBitType::kNf4;
    q.double_quant = mode == "nf4_dq";
  }
  return options;
}

class QuantizedPerplexity : public ::testing::TestWithParam<ModelAndMode> {};

TEST_P(QuantizedPerplexity, WithinHalfAPercentOfBitsandbytes) {
  KBIT_REQUIRE_SHARED_DIR();
  const auto& [name, mode] = GetParam();
  std::ifstream reference_file(std::string(KBIT_SOURCE_DIR) +
                               "/src/generate/testdata/perplexity_reference_bnb.json");
  const nlohmann::json reference = nlohmann::json::parse(reference_file);
  const nlohmann::json& expected = reference["models"][name][mode];

  const std::filesystem::path dir = testing::shared_file("models/" + name);
  model::LlamaLoadOptions options;
  options.activation_dtype = DType::kBF16;
  options.quantize = mode_options(mode);
  Result<model::LlamaModel> model = model::LlamaModel::load(dir, options);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  Result<tokenizer::Tokenizer> tokenizer = tokenizer::Tokenizer::load(dir / "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().to_string();
  Result<std::vector<std::int32_t>> ids = tokenizer->encode(validation_text(), false);
  ASSERT_TRUE(ids.ok());
  Result<PerplexityResult> result =
      perplexity(*model, *ids, reference["context"].get<std::int64_t>());
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  EXPECT_EQ(result->tokens, expected["tokens"].get<std::int64_t>());
  const double want = expected["perplexity"].get<double>();
  EXPECT_NEAR(result->perplexity, want, 0.005 * want);
  std::printf("  %s %s: perplexity %.4f (transformers + bitsandbytes %.4f, %+.3f%%)\n",
              name.c_str(), mode.c_str(), result->perplexity, want,
              100.0 * (result->perplexity / want - 1.0));
}

INSTANTIATE_TEST_SUITE_P(SharedModels, QuantizedPerplexity,
                         ::testing::Combine(::testing::Values("shakespeare-llama2",
                                                              "shakespeare-llama3"),
                                            ::testing::Values("nf4_dq", "nf4", "fp4", "int8")));

}  // namespace
}  // namespace kbit::generate
