// LoraState: which Linears get a LoRA, and PEFT's default initialisation — A uniform on
// (−1/√in, 1/√in) (bounds, mean, variance and a histogram against the uniform distribution's),
// B and the gradients zero, reproducible from the seed.
#include "kbit/train/lora_state.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "train/tiny_llama_test_support.h"

namespace kbit::train {
namespace {

io::PeftLoraConfig lora_config(std::vector<std::string> targets) {
  io::PeftLoraConfig config;
  config.r = 8;
  config.lora_alpha = 16;
  config.target_names = std::move(targets);
  return config;
}

io::PeftLoraConfig all_linear() {
  io::PeftLoraConfig config = lora_config({});
  config.all_linear = true;
  return config;
}

TEST(LoraState, OneModulePerTargetedLinear) {
  const LoraState state =
      LoraState::create(tiny_llama_config(), lora_config({"q_proj", "v_proj"}), 1).value();
  std::vector<std::string> names;
  for (const LoraModule& module : state.modules()) names.push_back(module.name);
  EXPECT_EQ(names, (std::vector<std::string>{
                       "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                       "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}));
  const LoraModule* v = state.find("model.layers.1.self_attn.v_proj");
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->rank, 8);
  EXPECT_EQ(v->in_features, 32);
  EXPECT_EQ(v->out_features, 16);  // 2 kv heads × head_dim 8
  EXPECT_EQ(state.find("model.layers.0.mlp.up_proj"), nullptr);
  EXPECT_EQ(LoraState::create(tiny_llama_config(), all_linear(), 1)->modules().size(), 14u);
}

TEST(LoraState, ScalingIsAlphaOverRank) {
  io::PeftLoraConfig config = all_linear();
  EXPECT_EQ(LoraState::create(tiny_llama_config(), config, 1)->scaling(), 2.0f);
  config.use_rslora = true;
  EXPECT_FLOAT_EQ(LoraState::create(tiny_llama_config(), config, 1)->scaling(),
                  16.0f / std::sqrt(8.0f));
}

// A over every module, in units of its bound 1/√in: U(−1, 1), whose mean is 0, variance 1/3
// (the variance of u² being 4/45), and each of 10 equal bins holds a tenth of the values. The
// bounds are 5 standard deviations of each statistic: a wrong bound (e.g. √(3/in), kaiming with
// a = 0) or a normal distribution fails them.
TEST(LoraState, InitialisesAsPeft) {
  const LoraState state = LoraState::create(tiny_llama_config(), all_linear(), 42).value();
  std::vector<double> units;
  for (const LoraModule& module : state.modules()) {
    ASSERT_EQ(module.a.size(), static_cast<std::size_t>(module.rank * module.in_features));
    ASSERT_EQ(module.b.size(), static_cast<std::size_t>(module.out_features * module.rank));
    const double bound = 1.0 / std::sqrt(static_cast<double>(module.in_features));
    for (const float a : module.a) {
      ASSERT_LE(std::fabs(a), static_cast<float>(bound)) << module.name;
      units.push_back(a / bound);
    }
    EXPECT_TRUE(std::all_of(module.b.begin(), module.b.end(), [](float b) { return b == 0.0f; }))
        << module.name;
    EXPECT_EQ(module.grad_a, std::vector<float>(module.a.size(), 0.0f)) << module.name;
    EXPECT_EQ(module.grad_b, std::vector<float>(module.b.size(), 0.0f)) << module.name;
  }
  const double n = static_cast<double>(units.size());
  double sum = 0.0, squares = 0.0, largest = 0.0;
  std::vector<double> bins(10, 0.0);
  for (const double u : units) {
    sum += u;
    squares += u * u;
    largest = std::max(largest, std::fabs(u));
    bins[static_cast<std::size_t>(std::min(9.0, (u + 1.0) * 5.0))] += 1.0;
  }
  EXPECT_LT(std::fabs(sum / n), 5.0 * std::sqrt(1.0 / 3.0 / n));
  EXPECT_LT(std::fabs(squares / n - 1.0 / 3.0), 5.0 * std::sqrt(4.0 / 45.0 / n));
  EXPECT_GT(largest, 0.99);
  for (const double count : bins) EXPECT_LT(std::fabs(count - n / 10), 5.0 * std::sqrt(n * 0.09));
}

TEST(LoraState, ReproducibleFromTheSeed) {
  const LoraState one = LoraState::create(tiny_llama_config(), all_linear(), 7).value();
  const LoraState again = LoraState::create(tiny_llama_config(), all_linear(), 7).value();
  const LoraState other = LoraState::create(tiny_llama_config(), all_linear(), 8).value();
  EXPECT_EQ(one.modules()[3].a, again.modules()[3].a);
  EXPECT_NE(one.modules()[3].a, other.modules()[3].a);
  // Each module draws its own part of the stream.
  EXPECT_NE(one.modules()[0].a, one.modules()[1].a);
}

TEST(LoraState, ZeroGradients) {
  LoraState state = LoraState::create(tiny_llama_config(), all_linear(), 1).value();
  state.modules()[2].grad_a[5] = 3.0f;
  state.modules()[4].grad_b[1] = -1.0f;
  state.zero_gradients();
  EXPECT_EQ(state.modules()[2].grad_a[5], 0.0f);
  EXPECT_EQ(state.modules()[4].grad_b[1], 0.0f);
}

TEST(LoraState, RefusesWhatItCannotTrain) {
  const Status lm_head =
      LoraState::create(tiny_llama_config(), lora_config({"q_proj", "lm_head"}), 1).status();
  EXPECT_EQ(lm_head.code(), StatusCode::kUnimplemented) << lm_head.to_string();
  EXPECT_NE(lm_head.message().find("lm_head"), std::string::npos) << lm_head.to_string();
  const Status none = LoraState::create(tiny_llama_config(), lora_config({"c_attn"}), 1).status();
  EXPECT_EQ(none.code(), StatusCode::kInvalidArgument) << none.to_string();
  io::PeftLoraConfig rank_zero = all_linear();
  rank_zero.r = 0;
  EXPECT_EQ(LoraState::create(tiny_llama_config(), rank_zero, 1).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kbit::train
