// The Llama forward against transformers (f32 golden logits and greedy continuations).
#include "kbit/model/llama.h"

#include <algorithm>
#include <cmath>
#include <iostream>

#include <gtest/gtest.h>

#include "testing/golden.h"
#include "testing/shared_data.h"

namespace kbit::model {
namespace {

struct Golden {
  std::vector<std::int32_t> ids;
  std::vector<float> logits;  // [ids.size(), vocab]
};

std::vector<std::int32_t> to_ids(const std::vector<std::int64_t>& ids) {
  return std::vector<std::int32_t>(ids.begin(), ids.end());
}

Golden read_golden(const std::string& model, int prompt) {
  Result<io::SafetensorsFile> file = kbit::testing::open_golden("model-" + model + ".safetensors");
  EXPECT_TRUE(file.ok()) << file.status().to_string();
  if (!file.ok()) return {};
  // The f32 entries hold logits only; the prompt's ids are those of every mode (README.md).
  const std::string prompt_name = ".prompt" + std::to_string(prompt);
  return Golden{to_ids(kbit::testing::golden_values<std::int64_t>(
                    *file, "bf16" + prompt_name + ".input_ids")),
                kbit::testing::golden_values<float>(*file, "f32" + prompt_name + ".logits")};
}

LlamaModel load(const std::string& model, CpuKernel kernel = CpuKernel::kFast) {
  LlamaLoadOptions options;
  options.execution.cpu_kernel = kernel;
  Result<LlamaModel> loaded =
      LlamaModel::load(kbit::testing::shared_file("models/" + model), options);
  EXPECT_TRUE(loaded.ok()) << loaded.status().to_string();
  return std::move(loaded).value();
}

std::vector<float> forward_all(const LlamaModel& model, const std::vector<std::int32_t>& ids) {
  const std::int64_t vocab = model.config().vocab_size;
  std::vector<float> logits(ids.size() * static_cast<std::size_t>(vocab));
  KvCache cache = model.new_cache(static_cast<std::int64_t>(ids.size())).value();
  const Status status = model.forward(
      ids, cache,
      TensorView(logits.data(), DType::kF32, Shape{static_cast<std::int64_t>(ids.size()), vocab}),
      /*all_positions=*/true);
  EXPECT_TRUE(status.ok()) << status.to_string();
  EXPECT_EQ(cache.size(), static_cast<std::int64_t>(ids.size()));
  return logits;
}

std::vector<float> forward_one_by_one(const LlamaModel& model,
                                      const std::vector<std::int32_t>& ids) {
  const std::int64_t vocab = model.config().vocab_size;
  std::vector<float> logits(ids.size() * static_cast<std::size_t>(vocab));
  KvCache cache = model.new_cache(static_cast<std::int64_t>(ids.size())).value();
  for (std::size_t t = 0; t < ids.size(); ++t) {
    const Status status =
        model.forward(std::span<const std::int32_t>(&ids[t], 1), cache,
                      TensorView(logits.data() + t * static_cast<std::size_t>(vocab), DType::kF32,
                                 Shape{1, vocab}),
                      /*all_positions=*/false);
    EXPECT_TRUE(status.ok()) << status.to_string();
  }
  return logits;
}

struct Comparison {
  double max_abs_diff = 0.0;
  double max_abs_want = 0.0;
  int argmax_mismatches = 0;
};

Comparison compare(const std::vector<float>& got, const std::vector<float>& want,
                   std::int64_t vocab) {
  Comparison c;
  const auto v = static_cast<std::size_t>(vocab);
  for (std::size_t row = 0; row * v < want.size(); ++row) {
    const auto g = got.begin() + static_cast<std::ptrdiff_t>(row * v);
    const auto w = want.begin() + static_cast<std::ptrdiff_t>(row * v);
    if (std::max_element(g, g + vocab) - g != std::max_element(w, w + vocab) - w) {
      ++c.argmax_mismatches;
    }
  }
  for (std::size_t i = 0; i < want.size(); ++i) {
    c.max_abs_diff = std::max(c.max_abs_diff, std::fabs(static_cast<double>(got[i]) - want[i]));
    c.max_abs_want = std::max(c.max_abs_want, std::fabs(static_cast<double>(want[i])));
  }
  return c;
}

void expect_matches(const Comparison& c, const std::string& what) {
  std::cout << "[ logits   ] " << what << ": max |diff| " << c.max_abs_diff << ", max |logit| "
            << c.max_abs_want << ", ratio " << c.max_abs_diff / c.max_abs_want << "\n";
  EXPECT_LE(c.max_abs_diff, 1e-3 * c.max_abs_want) << what;
  EXPECT_EQ(c.argmax_mismatches, 0) << what;
}

class GoldenLogits : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenLogits, WholePromptAndTokenByTokenMatchTransformers) {
  KBIT_REQUIRE_SHARED_DIR();
  const LlamaModel model = load(GetParam());
  const std::int64_t vocab = model.config().vocab_size;
  for (int prompt = 0; prompt < 2; ++prompt) {
    const Golden golden = read_golden(GetParam(), prompt);
    ASSERT_FALSE(golden.ids.empty());
    ASSERT_EQ(golden.logits.size(), golden.ids.size() * static_cast<std::size_t>(vocab));
    const std::string name = GetParam() + " prompt" + std::to_string(prompt);
    const std::vector<float> whole = forward_all(model, golden.ids);
    expect_matches(compare(whole, golden.logits, vocab), name + " whole prompt");
    const std::vector<float> stepwise = forward_one_by_one(model, golden.ids);
    expect_matches(compare(stepwise, golden.logits, vocab), name + " token by token");
    const Comparison between = compare(stepwise, whole, vocab);
    EXPECT_LE(between.max_abs_diff, 1e-4 * between.max_abs_want) << name;
    std::cout << "[ logits   ] " << name << ": whole vs token by token max |diff| "
              << between.max_abs_diff << "\n";
  }
}

// The plain reference kernels (one thread) give the same logits.
TEST_P(GoldenLogits, ReferenceKernelsMatchTransformers) {
  KBIT_REQUIRE_SHARED_DIR();
  const LlamaModel model = load(GetParam(), CpuKernel::kReference);
  const Golden golden = read_golden(GetParam(), 0);
  ASSERT_FALSE(golden.ids.empty());
  expect_matches(compare(forward_all(model, golden.ids), golden.logits, model.config().vocab_size),
                 GetParam() + " prompt0 reference kernels");
}

TEST_P(GoldenLogits, GreedyReproducesTransformers) {
  KBIT_REQUIRE_SHARED_DIR();
  const LlamaModel model = load(GetParam());
  const std::int64_t vocab = model.config().vocab_size;
  Result<io::SafetensorsFile> file = kbit::testing::open_golden("greedy-f32.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  for (int prompt = 0; prompt < 2; ++prompt) {
    const std::string key = GetParam() + ".prompt" + std::to_string(prompt) + ".greedy";
    const std::vector<std::int32_t> want =
        to_ids(kbit::testing::golden_values<std::int64_t>(*file, key));
    const Golden golden = read_golden(GetParam(), prompt);
    ASSERT_GT(want.size(), golden.ids.size());
    ASSERT_TRUE(std::equal(golden.ids.begin(), golden.ids.end(), want.begin()));
    KvCache cache = model.new_cache(static_cast<std::int64_t>(want.size())).value();
    std::vector<std::int32_t> sequence = golden.ids;
    std::vector<float> logits(static_cast<std::size_t>(vocab));
    std::span<const std::int32_t> next(sequence);
    while (sequence.size() < want.size()) {
      ASSERT_TRUE(model
                      .forward(next, cache, TensorView(logits.data(), DType::kF32, Shape{1, vocab}),
                               /*all_positions=*/false)
                      .ok());
      sequence.push_back(static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) -
                                                   logits.begin()));
      next = std::span<const std::int32_t>(&sequence.back(), 1);
    }
    EXPECT_EQ(sequence, want) << key;
  }
}

INSTANTIATE_TEST_SUITE_P(SharedModels, GoldenLogits,
                         ::testing::Values("shakespeare-llama2", "shakespeare-llama3"));

TEST(LlamaModel, ForwardRefusesBadArgumentsAndKeepsTheCache) {
  KBIT_REQUIRE_SHARED_DIR();
  const LlamaModel model = load("shakespeare-llama2");
  const std::int64_t vocab = model.config().vocab_size;
  KvCache cache = model.new_cache(2).value();
  std::vector<float> logits(static_cast<std::size_t>(3 * vocab));
  const TensorView one(logits.data(), DType::kF32, Shape{1, vocab});
  const std::vector<std::int32_t> bad = {1, static_cast<std::int32_t>(vocab)};
  Status status = model.forward(bad, cache, one, false);
  EXPECT_NE(status.message().find("token id 2048 at index 1"), std::string::npos)
      << status.to_string();
  const std::vector<std::int32_t> three = {1, 2, 3};
  status =
      model.forward(three, cache, TensorView(logits.data(), DType::kF32, Shape{3, vocab}), true);
  EXPECT_NE(status.message().find("do not fit"), std::string::npos) << status.to_string();
  const std::vector<std::int32_t> two = {1, 2};
  status = model.forward(two, cache, one, true);
  EXPECT_NE(status.message().find("logits must be"), std::string::npos) << status.to_string();
  EXPECT_EQ(cache.size(), 0);
  EXPECT_TRUE(model.forward(two, cache, one, false).ok());
  EXPECT_EQ(cache.size(), 2);
  EXPECT_TRUE(cache.truncate(1).ok());
  EXPECT_FALSE(cache.truncate(5).ok());
  EXPECT_FALSE(model.new_cache(0).ok());
}

TEST(LlamaModel, LoadErrorsNameTheFolder) {
  Result<LlamaModel> missing = LlamaModel::load("/nonexistent/model", {});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/model/config.json"), std::string::npos);
}

}  // namespace
}  // namespace kbit::model
