// Whole models in 4-bit and int8 against transformers + bitsandbytes (golden logits of every
// mode, their checkpoints, their memory footprints).
#include <fstream>
#include <iostream>
#include <tuple>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kbit/model/llama.h"
#include "kbit/model/model_summary.h"
#include "model/llama_test_support.h"
#include "testing/golden.h"
#include "testing/shared_data.h"

namespace kbit::model {
namespace {

const std::vector<std::string> kModes = {"nf4_dq", "nf4", "fp4", "int8"};

LlamaModel load_quantized(const std::filesystem::path& dir,
                          const std::optional<QuantizeOptions>& quantize, DType activation_dtype,
                          CpuKernel kernel = CpuKernel::kFast) {
  LlamaLoadOptions options;
  options.execution.cpu_kernel = kernel;
  options.activation_dtype = activation_dtype;
  options.quantize = quantize;
  Result<LlamaModel> loaded = LlamaModel::load(dir, options);
  EXPECT_TRUE(loaded.ok()) << loaded.status().to_string();
  return std::move(loaded).value();
}

struct GoldenPrompt {
  std::vector<std::int32_t> ids;
  std::vector<float> f32_logits;   // the float model in f32
  std::vector<float> mode_logits;  // transformers + bitsandbytes in the mode
  std::vector<std::int32_t> mode_greedy;
};

GoldenPrompt read_golden_prompt(const std::string& model, const std::string& mode, int prompt) {
  Result<io::SafetensorsFile> file = kbit::testing::open_golden("model-" + model + ".safetensors");
  EXPECT_TRUE(file.ok()) << file.status().to_string();
  if (!file.ok()) return {};
  const std::string key = ".prompt" + std::to_string(prompt);
  using kbit::testing::golden_values;
  return GoldenPrompt{to_ids(golden_values<std::int64_t>(*file, mode + key + ".input_ids")),
                      golden_values<float>(*file, "f32" + key + ".logits"),
                      golden_values<float>(*file, mode + key + ".logits"),
                      to_ids(golden_values<std::int64_t>(*file, mode + key + ".greedy"))};
}

using ModelAndMode = std::tuple<std::string, std::string>;

class QuantizedGolden : public ::testing::TestWithParam<ModelAndMode> {
 protected:
  std::string model_name() const { return std::get<0>(GetParam()); }
  std::string mode() const { return std::get<1>(GetParam()); }
  std::filesystem::path model_dir() const {
    return kbit::testing::shared_file("models/" + model_name());
  }
};

// Measured, distance to the golden f32 logits (mean / max |Δ| over every logit of both prompts'
// positions), kbit bf16 | kbit f32 compute | transformers in the mode:
//   llama2 nf4_dq  0.1044 / 0.8085 | 0.1057 / 0.8148 | 0.1051 / 0.8085   (prompt 0)
//   llama2 fp4     0.1322 / 1.4250 | 0.1313 / 1.3805 | 0.1321 / 1.3625   (prompt 0)
//   llama2 int8    0.0227 / 0.1343 | 0.0242 / 0.1451 | 0.0227 / 0.1343   (prompt 0)
//   llama2 int8    0.0262 / 0.1563 | 0.0247 / 0.2294 | 0.0262 / 0.1563   (prompt 1)
//   llama3 nf4     0.0547 / 0.5394 | 0.0535 / 0.5256 | 0.0538 / 0.5144   (prompt 0)
//   llama3 fp4     0.0828 / 0.5528 |        —        | 0.0801 / 0.5216   (prompt 1, AVX2)
// The distance is the quantization error, the same in all three (the bytes are bitsandbytes'),
// plus compute noise that moves it either way by a few percent (the AVX2 and AVX-512 kernels sum
// in different orders: the llama3 fp4 line is +3.4% on an AVX2-only CPU). The bounds below allow
// that noise, 5%, and no more: a wrong code, scale or outlier column would cost far more.

// The same options as transformers' golden run (bf16 activations, compute dtype bf16): kbit's
// logits are the mode's up to the summation order, and as close to the float model's.
TEST_P(QuantizedGolden, Bf16ComputeMatchesTransformersAndIsAsCloseToTheFloatModel) {
  KBIT_REQUIRE_SHARED_DIR();
  const LlamaModel model =
      load_quantized(model_dir(), golden_mode_options(mode(), DType::kBF16), DType::kBF16);
  const std::int64_t vocab = model.config().vocab_size;
  for (int prompt = 0; prompt < 2; ++prompt) {
    const std::string name = model_name() + " " + mode() + " prompt" + std::to_string(prompt);
    const GoldenPrompt golden = read_golden_prompt(model_name(), mode(), prompt);
    ASSERT_EQ(golden.f32_logits.size(), golden.ids.size() * static_cast<std::size_t>(vocab));
    const std::vector<float> logits = forward_all(model, golden.ids);
    const Closeness to_mode = closeness(logits, golden.mode_logits, vocab);
    const Closeness ours = closeness(logits, golden.f32_logits, vocab);
    const Closeness theirs = closeness(golden.mode_logits, golden.f32_logits, vocab);
    std::cout << "[ quantized] " << name << " kbit bf16 vs transformers in the mode: " << to_mode
              << "\n[ quantized] " << name << " to f32: kbit bf16 " << ours << " | transformers "
              << theirs << "\n";
    // As the float bf16 model (llama_test.cc): flipped bf16 roundings spread, one ulp at a time.
    EXPECT_LE(to_mode.mean_abs_diff, 0.015) << name;
    EXPECT_LE(to_mode.max_abs_diff, 2 * bf16_ulp(max_abs(golden.mode_logits))) << name;
    EXPECT_GE(to_mode.argmax_agreement, 0.9) << name;
    EXPECT_LE(ours.mean_abs_diff, 1.05 * theirs.mean_abs_diff) << name;
    EXPECT_LE(ours.max_abs_diff, theirs.max_abs_diff + bf16_ulp(max_abs(golden.f32_logits)))
        << name;
  }
}

// kbit's f32-compute mode (compute dtype f32, f32 activations) on bitsandbytes' codes: as close
// to the float model as transformers in the mode, within the compute noise measured above.
TEST_P(QuantizedGolden, F32ComputeIsAsCloseToTheFloatModelAsTransformers) {
  KBIT_REQUIRE_SHARED_DIR();
  const LlamaModel model =
      load_quantized(model_dir(), golden_mode_options(mode(), DType::kF32), DType::kF32);
  const std::int64_t vocab = model.config().vocab_size;
  for (int prompt = 0; prompt < 2; ++prompt) {
    const std::string name = model_name() + " " + mode() + " prompt" + std::to_string(prompt);
    const GoldenPrompt golden = read_golden_prompt(model_name(), mode(), prompt);
    const Closeness ours = closeness(forward_all(model, golden.ids), golden.f32_logits, vocab);
    const Closeness theirs = closeness(golden.mode_logits, golden.f32_logits, vocab);
    std::cout << "[ quantized] " << name << " to f32: kbit f32 compute " << ours
              << " | transformers " << theirs << "\n";
    EXPECT_LE(ours.mean_abs_diff, 1.1 * theirs.mean_abs_diff) << name;
    EXPECT_LE(ours.max_abs_diff, 1.5 * theirs.max_abs_diff) << name;
  }
}

// Greedy decoding with f32 compute: the fast kernels and the scalar reference kernels choose the
// same 40 tokens, and they begin as transformers' continuation in the mode does.
TEST_P(QuantizedGolden, F32ComputeGreedyIsStableAndSensible) {
  KBIT_REQUIRE_SHARED_DIR();
  const std::optional<QuantizeOptions> options = golden_mode_options(mode(), DType::kF32);
  const LlamaModel fast = load_quantized(model_dir(), options, DType::kF32);
  const LlamaModel reference =
      load_quantized(model_dir(), options, DType::kF32, CpuKernel::kReference);
  for (int prompt = 0; prompt < 2; ++prompt) {
    const std::string name = model_name() + " " + mode() + " prompt" + std::to_string(prompt);
    const GoldenPrompt golden = read_golden_prompt(model_name(), mode(), prompt);
    const std::size_t length = golden.mode_greedy.size();
    const std::vector<std::int32_t> ours = greedy_sequence(fast, golden.ids, length);
    EXPECT_EQ(ours, greedy_sequence(reference, golden.ids, length)) << name;
    std::size_t common = golden.ids.size();
    while (common < length && ours[common] == golden.mode_greedy[common]) ++common;
    std::cout << "[ quantized] " << name << " greedy: " << common - golden.ids.size() << " of "
              << length - golden.ids.size() << " new tokens as transformers in the mode\n";
  }
}

INSTANTIATE_TEST_SUITE_P(SharedModels, QuantizedGolden,
                         ::testing::Combine(::testing::Values("shakespeare-llama2",
                                                              "shakespeare-llama3"),
                                            ::testing::ValuesIn(kModes)),
                         [](const ::testing::TestParamInfo<ModelAndMode>& param) {
                           std::string name =
                               std::get<0>(param.param) + "_" + std::get<1>(param.param);
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

class GoldenCheckpoint : public ::testing::TestWithParam<std::string> {};

// transformers' saved checkpoint holds the same bytes as kbit's quantization of the bf16 model,
// so loading it gives the very same logits, with its config's compute dtype (bf16).
TEST_P(GoldenCheckpoint, GivesTheLogitsOfQuantizingOnLoad) {
  KBIT_REQUIRE_SHARED_DIR();
  const std::string mode = GetParam();
  const LlamaModel saved = load_quantized(
      kbit::testing::shared_file("golden/checkpoints/shakespeare-llama2-bnb-" + mode), std::nullopt,
      DType::kBF16);
  ASSERT_TRUE(saved.quantization().has_value());
  const LlamaModel on_load = load_quantized(kbit::testing::shared_file("models/shakespeare-llama2"),
                                            golden_mode_options(mode, DType::kBF16), DType::kBF16);
  EXPECT_EQ(saved.weight_bytes(), on_load.weight_bytes());
  for (int prompt = 0; prompt < 2; ++prompt) {
    const GoldenPrompt golden = read_golden_prompt("shakespeare-llama2", mode, prompt);
    EXPECT_EQ(forward_all(saved, golden.ids), forward_all(on_load, golden.ids)) << mode;
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, GoldenCheckpoint, ::testing::ValuesIn(kModes));

// `kbit info`'s footprints are transformers' get_memory_footprint() for each mode
// (golden/summary.json), and kbit's own weight bytes what a loaded model holds.
TEST(ModelSummary, FootprintsMatchTransformersAndLoadedModels) {
  KBIT_REQUIRE_SHARED_DIR();
  const std::filesystem::path dir = kbit::testing::shared_file("models/shakespeare-llama2");
  std::ifstream summary_file(kbit::testing::shared_file("golden/summary.json"));
  const nlohmann::json golden = nlohmann::json::parse(summary_file);
  Result<ModelSummary> summary = summarize_model(dir, std::nullopt);
  ASSERT_TRUE(summary.ok()) << summary.status().to_string();
  for (const ModeFootprint& mode : summary->modes) {
    const nlohmann::json& expected = golden["models"]["shakespeare-llama2"];
    if (expected.contains(mode.mode)) {
      EXPECT_EQ(mode.footprint_bytes, expected[mode.mode]["footprint_bytes"].get<std::int64_t>())
          << mode.mode;
    }
    const DType activations = mode.mode == "bf16" ? DType::kBF16 : DType::kF32;
    const LlamaModel loaded = load_quantized(dir, mode.quantize, activations);
    EXPECT_EQ(mode.kbit_bytes, static_cast<std::int64_t>(loaded.weight_bytes())) << mode.mode;
  }
  for (const std::string& mode : kModes) {
    const std::filesystem::path saved = kbit::testing::shared_file(
        std::string("golden/checkpoints/shakespeare-llama2-bnb-") + mode);
    Result<ModelSummary> stored = summarize_model(saved, std::nullopt);
    ASSERT_TRUE(stored.ok()) << stored.status().to_string();
    ASSERT_EQ(stored->modes.size(), 1u);
    EXPECT_EQ(stored->modes[0].footprint_bytes,
              golden["models"]["shakespeare-llama2"][mode]["footprint_bytes"].get<std::int64_t>());
    const LlamaModel loaded = load_quantized(saved, std::nullopt, DType::kF32);
    EXPECT_EQ(stored->modes[0].kbit_bytes, static_cast<std::int64_t>(loaded.weight_bytes()))
        << mode;
  }
}

}  // namespace
}  // namespace kbit::model
