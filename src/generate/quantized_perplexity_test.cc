// Perplexity of the shared models in each quantized mode against transformers + bitsandbytes in
// the same mode (bf16 model, compute dtype bf16): within 0.5%.
//
// Compiled twice: for the CPU (label `slow`: eight full scorings of the validation text;
// scripts/test.sh leaves it out, `ctest --preset release -L slow` runs it), and with
// KBIT_TEST_ON_GPU for the GPU (label `cuda`), where the float model in f32 (against transformers
// in f32) and in bf16 are scored too.
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "generate/validation_text.h"
#include "kbit/generate/perplexity.h"
#include "kbit/model/llama.h"
#include "kbit/tokenizer/tokenizer.h"
#include "model/llama_test_support.h"
#include "testing/shared_data.h"

namespace kbit::generate {
namespace {

using ModelAndMode = std::tuple<std::string, std::string>;

// The two builds' tests need distinct names for CTest (KBIT_PERPLEXITY_SUITE_PREFIX).
#ifdef KBIT_TEST_ON_GPU
#define KBIT_PERPLEXITY_SUITE_PREFIX Gpu
constexpr bool kOnGpu = true;
const std::vector<std::string> kModes = {"f32", "bf16", "nf4_dq", "nf4", "fp4", "int8"};
#else
#define KBIT_PERPLEXITY_SUITE_PREFIX Cpu
constexpr bool kOnGpu = false;
const std::vector<std::string> kModes = {"nf4_dq", "nf4", "fp4", "int8"};
#endif

class QuantizedPerplexity : public ::testing::TestWithParam<ModelAndMode> {};

TEST_P(QuantizedPerplexity, WithinHalfAPercentOfBitsandbytes) {
  if (kOnGpu) KBIT_REQUIRE_CUDA();
  KBIT_REQUIRE_SHARED_DIR();
  const auto& [name, mode] = GetParam();
  // transformers in f32 (the float model's reference), or + bitsandbytes in bf16 and each mode.
  const std::string reference_name =
      mode == "f32" ? "perplexity_reference.json" : "perplexity_reference_bnb.json";
  std::ifstream reference_file(std::string(KBIT_SOURCE_DIR) + "/src/generate/testdata/" +
                               reference_name);
  const nlohmann::json reference = nlohmann::json::parse(reference_file);
  const nlohmann::json& expected =
      mode == "f32" ? reference["models"][name] : reference["models"][name][mode];

  const std::filesystem::path dir = testing::shared_file("models/" + name);
  model::LlamaLoadOptions options;
  options.device = kOnGpu ? Device::cuda(0) : Device::cpu();
  options.activation_dtype = mode == "f32" ? DType::kF32 : DType::kBF16;
  options.quantize = model::golden_mode_options(mode, DType::kBF16);
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
  std::printf("  %s %s on %s: perplexity %.4f (reference %.4f, %+.3f%%)\n", name.c_str(),
              mode.c_str(), options.device.to_string().c_str(), result->perplexity, want,
              100.0 * (result->perplexity / want - 1.0));
}

INSTANTIATE_TEST_SUITE_P(KBIT_PERPLEXITY_SUITE_PREFIX, QuantizedPerplexity,
                         ::testing::Combine(::testing::Values("shakespeare-llama2",
                                                              "shakespeare-llama3"),
                                            ::testing::ValuesIn(kModes)));

}  // namespace
}  // namespace kbit::generate
