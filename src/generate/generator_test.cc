// Generation and perplexity on the shared models, against transformers' outputs.
#include "kbit/generate/generator.h"

#include <fstream>
#include <iterator>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "generate/validation_text.h"
#include "kbit/generate/perplexity.h"
#include "testing/golden.h"

namespace kbit::generate {
namespace {

struct SharedModel {
  model::LlamaModel model;
  tokenizer::Tokenizer tokenizer;
};

Result<SharedModel> load_shared_model(const std::string& name) {
  const std::filesystem::path dir = testing::shared_file("models/" + name);
  KBIT_ASSIGN_OR_RETURN(model::LlamaModel model, model::LlamaModel::load(dir, {}));
  KBIT_ASSIGN_OR_RETURN(tokenizer::Tokenizer tokenizer,
                        tokenizer::Tokenizer::load(dir / "tokenizer.json"));
  return SharedModel{std::move(model), std::move(tokenizer)};
}

std::vector<std::int32_t> as_int32(const std::vector<std::int64_t>& ids) {
  return std::vector<std::int32_t>(ids.begin(), ids.end());
}

class GeneratorTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!testing::shared_dir()) GTEST_SKIP() << "KBIT_SHARED_DIR is not set: needs ../shared";
  }
};

// f32 greedy decoding reproduces transformers' 40 tokens for both prompts, and the streamed text
// is the returned text. (The golden prompt ids are stored with the bf16 entries; they are the
// same in every mode.)
TEST_P(GeneratorTest, GreedyMatchesTransformers) {
  Result<SharedModel> shared = load_shared_model(GetParam());
  ASSERT_TRUE(shared.ok()) << shared.status().to_string();
  Result<io::SafetensorsFile> golden = testing::open_golden("greedy-f32.safetensors");
  Result<io::SafetensorsFile> inputs = testing::open_golden("model-" + GetParam() + ".safetensors");
  ASSERT_TRUE(golden.ok() && inputs.ok());
  for (int prompt = 0; prompt < 2; ++prompt) {
    const std::string key = ".prompt" + std::to_string(prompt);
    const auto prompt_ids =
        as_int32(testing::golden_values<std::int64_t>(*inputs, "bf16" + key + ".input_ids"));
    const auto expected =
        as_int32(testing::golden_values<std::int64_t>(*golden, GetParam() + key + ".greedy"));
    GenerationParams params;
    params.sampling.temperature = 0.0f;
    params.max_new_tokens = 40;
    params.stop_at_eos = false;
    Result<model::KvCache> cache = shared->model.new_cache(128);
    ASSERT_TRUE(cache.ok());
    std::string streamed;
    Result<GenerationResult> result =
        generate(shared->model, shared->tokenizer, *cache, prompt_ids, params,
                 [&](std::string_view text) { streamed += text; });
    ASSERT_TRUE(result.ok()) << result.status().to_string();
    const std::vector<std::int32_t> continuation(expected.begin() + prompt_ids.size(),
                                                 expected.end());
    EXPECT_EQ(result->tokens, continuation) << "prompt " << prompt;
    EXPECT_EQ(streamed, result->text);
    EXPECT_EQ(result->stop_reason, StopReason::kTokenBudget);
    EXPECT_EQ(result->text, *shared->tokenizer.decode(result->tokens, false));
  }
}

// A stop string ends generation; the text stops right before it, streamed or not.
TEST_P(GeneratorTest, StopStringsAndContextEnd) {
  Result<SharedModel> shared = load_shared_model(GetParam());
  ASSERT_TRUE(shared.ok()) << shared.status().to_string();
  Result<std::vector<std::int32_t>> prompt = shared->tokenizer.encode("ROMEO:\n", true);
  ASSERT_TRUE(prompt.ok());
  GenerationParams params;
  params.sampling.temperature = 0.0f;
  params.max_new_tokens = 60;
  params.stop_at_eos = false;
  Result<model::KvCache> cache = shared->model.new_cache(256);
  Result<GenerationResult> free_run =
      generate(shared->model, shared->tokenizer, *cache, *prompt, params);
  ASSERT_TRUE(free_run.ok());
  ASSERT_GT(free_run->text.size(), 20u);
  // Stop at a piece of the free-running text that starts a few characters in.
  const std::string stop = free_run->text.substr(10, 4);
  params.stop_strings = {stop};
  ASSERT_TRUE(cache->truncate(0).ok());
  std::string streamed;
  Result<GenerationResult> stopped = generate(shared->model, shared->tokenizer, *cache, *prompt,
                                              params, [&](std::string_view t) { streamed += t; });
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->stop_reason, StopReason::kStopString);
  EXPECT_EQ(stopped->text, free_run->text.substr(0, free_run->text.find(stop)));
  EXPECT_EQ(streamed, stopped->text);
  // A context of prompt + 5 positions ends the run.
  Result<model::KvCache> small =
      shared->model.new_cache(static_cast<std::int64_t>(prompt->size()) + 5);
  params.stop_strings.clear();
  Result<GenerationResult> full =
      generate(shared->model, shared->tokenizer, *small, *prompt, params);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->stop_reason, StopReason::kContextFull);
  EXPECT_LE(full->tokens.size(), 5u);
}

// Perplexity on the last tenth of the training text agrees with transformers in f32 to 0.1%.
TEST_P(GeneratorTest, PerplexityMatchesTransformers) {
  Result<SharedModel> shared = load_shared_model(GetParam());
  ASSERT_TRUE(shared.ok()) << shared.status().to_string();
  std::ifstream reference_file(std::string(KBIT_SOURCE_DIR) +
                               "/src/generate/testdata/perplexity_reference.json");
  const nlohmann::json reference = nlohmann::json::parse(reference_file);
  const nlohmann::json& expected = reference["models"][GetParam()];
  Result<std::vector<std::int32_t>> ids = shared->tokenizer.encode(validation_text(), false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(static_cast<std::int64_t>(ids->size()), expected["text_tokens"].get<std::int64_t>());
  Result<PerplexityResult> result =
      perplexity(shared->model, *ids, reference["context"].get<std::int64_t>());
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  EXPECT_EQ(result->windows, expected["windows"].get<std::int64_t>());
  EXPECT_EQ(result->tokens, expected["tokens"].get<std::int64_t>());
  const double reference_perplexity = expected["perplexity"].get<double>();
  EXPECT_NEAR(result->perplexity, reference_perplexity, 0.001 * reference_perplexity);
  std::printf("  %s: perplexity %.4f (transformers %.4f)\n", GetParam().c_str(), result->perplexity,
              reference_perplexity);
}

INSTANTIATE_TEST_SUITE_P(SharedModels, GeneratorTest,
                         ::testing::Values("shakespeare-llama2", "shakespeare-llama3"),
                         [](const ::testing::TestParamInfo<std::string>& model) {
                           return model.param == "shakespeare-llama2" ? "Llama2" : "Llama3";
                         });

}  // namespace
}  // namespace kbit::generate
