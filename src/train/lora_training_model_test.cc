// LoraTrainingModel on the tiny random Llama (train/tiny_llama_test_support.h) with LoRA on all
// 7 Linears of both layers and B made nonzero: the analytic gradients against finite
// differences of the loss the same code computes (train/gradient_check_test_support.h), the loss
// against LlamaModel::forward's logits, and the errors.
//
// Finite differences measured (largest ‖analytic − numeric‖ / ‖numeric‖ of a tensor, f32 base /
// nf4 base): h = 0.03: 1.4e-4 / 8.4e-4; 0.02: 3.8e-5 / 1.8e-4; 0.01: 7.0e-5 / 1.9e-4; 0.001:
// 7.1e-4 / 2.0e-3 — truncation above 0.02, noise below. With B of std 0.1 the LoRA terms change
// each projection by about a quarter; larger B needs smaller steps (the loss curves more), where
// the noise grows. The tolerance, 1e-3, is 5 times the worst measured; a sign flipped in the
// LoRA backward gives errors near 2, the LoRA terms' input gradient left out 2.5e-2 and more.
#include "kbit/train/lora_training_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "kbit/core/random.h"
#include "kbit/model/llama.h"
#include "testing/temp_dir.h"
#include "train/gradient_check_test_support.h"

namespace kbit::train {
namespace {

constexpr double kStep = 0.02;
constexpr double kGradientTolerance = 1e-3;

io::PeftLoraConfig all_linear(std::int64_t rank = 4) {
  io::PeftLoraConfig config;
  config.r = rank;
  config.lora_alpha = 8;
  config.all_linear = true;
  return config;
}

// A state for `base` with every B random (a fresh B = 0 would hide most paths).
LoraState random_state(const model::LlamaModel& base) {
  LoraState state = LoraState::create(base.config(), all_linear(), 3).value();
  std::uint64_t stream = 1000;
  for (LoraModule& module : state.modules()) {
    for (std::size_t i = 0; i < module.b.size(); ++i) {
      module.b[i] = static_cast<float>(0.1 * normal_sample(stream, i));
    }
    ++stream;
  }
  return state;
}

TEST(LoraTrainingGradients, MatchFiniteDifferencesOnAFloatBase) {
  const kbit::testing::TempDir dir;
  const model::LlamaModel base = load_tiny(dir, /*tied=*/false);
  LoraTrainingModel model = LoraTrainingModel::create(base, random_state(base)).value();
  std::cout << "[ train] f32 base: largest relative error "
            << check_gradients(model, tiny_batch(), kStep, kGradientTolerance) << "\n";
}

TEST(LoraTrainingGradients, MatchFiniteDifferencesOnATiedNf4Base) {
  const kbit::testing::TempDir dir;
  model::QuantizeOptions nf4;
  nf4.config.compute_dtype = DType::kF32;
  nf4.block_size = 32;
  const model::LlamaModel base = load_tiny(dir, /*tied=*/true, nf4);
  LoraTrainingModel model = LoraTrainingModel::create(base, random_state(base)).value();
  std::cout << "[ train] nf4 base: largest relative error "
            << check_gradients(model, tiny_batch(), kStep, kGradientTolerance) << "\n";
}

// With lora_dropout the gradients are those of the loss under the seed's masks: the same seed,
// the same loss; another seed, another loss.
TEST(LoraTrainingGradients, MatchFiniteDifferencesWithDropout) {
  const kbit::testing::TempDir dir;
  const model::LlamaModel base = load_tiny(dir, /*tied=*/false);
  io::PeftLoraConfig config = all_linear();
  config.lora_dropout = 0.3;
  LoraState state = random_state(base);
  LoraState dropped = LoraState::create(base.config(), config, 3).value();
  for (std::size_t m = 0; m < state.modules().size(); ++m) {
    dropped.modules()[m].a = state.modules()[m].a;
    dropped.modules()[m].b = state.modules()[m].b;
  }
  LoraTrainingModel model = LoraTrainingModel::create(base, std::move(dropped)).value();
  model.set_dropout_seed(7);
  const Batch batch = tiny_batch();
  const double first = loss(model, batch);
  EXPECT_EQ(loss(model, batch), first);
  model.set_dropout_seed(8);
  EXPECT_NE(loss(model, batch), first);
  model.set_dropout_seed(7);
  std::cout << "[ train] f32 base, dropout 0.3: largest relative error "
            << check_gradients(model, batch, kStep, kGradientTolerance) << "\n";
}

// With B = 0 the adapters change nothing: the loss is the one of LlamaModel::forward's logits.
TEST(LoraTrainingModel, FreshAdaptersGiveTheBaseModelsLoss) {
  const kbit::testing::TempDir dir;
  const model::LlamaModel base = load_tiny(dir, /*tied=*/true);
  LoraTrainingModel model =
      LoraTrainingModel::create(base, LoraState::create(base.config(), all_linear(), 3).value())
          .value();
  const Batch batch = tiny_batch();
  const double want = forward_loss(base, batch);
  EXPECT_NEAR(loss(model, batch), want, 1e-6 * want);
}

TEST(LoraTrainingModel, GradientsAccumulate) {
  const kbit::testing::TempDir dir;
  const model::LlamaModel base = load_tiny(dir, /*tied=*/false);
  LoraTrainingModel model = LoraTrainingModel::create(base, random_state(base)).value();
  const Batch batch = tiny_batch();
  const double first = loss(model, batch);
  const std::vector<float> once = model.state().modules()[5].grad_a;
  EXPECT_EQ(loss(model, batch), first);
  // The second call adds its contributions to the first's (rounded as it goes).
  const std::vector<float>& twice = model.state().modules()[5].grad_a;
  double largest = 0.0;
  for (const float g : once) largest = std::max(largest, std::fabs(static_cast<double>(g)));
  for (std::size_t i = 0; i < once.size(); ++i) {
    EXPECT_NEAR(twice[i], 2 * once[i], 1e-6 * largest) << i;
  }
}

class LoraTrainingErrors : public ::testing::Test {
 protected:
  void expect_batch_error(const Batch& batch, const std::string& part) {
    model::LlamaModel base = load_tiny(dir_, false);
    LoraTrainingModel model = LoraTrainingModel::create(base, random_state(base)).value();
    const Status status = model.loss_and_gradients(batch.ids, batch.labels, batch.batch).status();
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
    EXPECT_NE(status.message().find(part), std::string::npos) << status.to_string();
    for (const LoraModule& module : model.state().modules()) {
      EXPECT_EQ(module.grad_a, std::vector<float>(module.grad_a.size(), 0.0f)) << module.name;
    }
  }
  kbit::testing::TempDir dir_;
};

TEST_F(LoraTrainingErrors, BadBatches) {
  Batch batch = tiny_batch();
  batch.batch = 4;  // 18 ids are not [4, T]
  expect_batch_error(batch, "[batch, T]");
  batch = tiny_batch();
  batch.labels.pop_back();
  expect_batch_error(batch, "[batch, T]");
  batch = tiny_batch();
  batch.ids[7] = 64;
  expect_batch_error(batch, "token id 64 at index 7");
  batch = tiny_batch();
  batch.labels[4] = -1;
  expect_batch_error(batch, "label -1 at index 4");
  batch = tiny_batch();
  // Only the first position of each sequence labelled: never a target after the shift.
  for (std::size_t i = 0; i < batch.labels.size(); ++i) {
    if (i % 9 != 0) batch.labels[i] = -100;
  }
  expect_batch_error(batch, "no labelled targets");
}

TEST_F(LoraTrainingErrors, Bf16Activations) {
  write_tiny_llama(dir_.path(), 5);
  model::LlamaLoadOptions options;
  options.activation_dtype = DType::kBF16;
  const model::LlamaModel base = model::LlamaModel::load(dir_.path(), options).value();
  const Status status = LoraTrainingModel::create(base, random_state(base)).status();
  EXPECT_EQ(status.code(), StatusCode::kUnimplemented) << status.to_string();
  EXPECT_NE(status.message().find("f32 activations"), std::string::npos) << status.to_string();
}

TEST_F(LoraTrainingErrors, StateOfAnotherModel) {
  const model::LlamaModel base = load_tiny(dir_, false);
  model::LlamaConfig wider = base.config();
  wider.intermediate_size = 96;
  const Status status =
      LoraTrainingModel::create(base, LoraState::create(wider, all_linear(), 1).value()).status();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
  EXPECT_NE(status.message().find("model.layers.0.mlp.gate_proj"), std::string::npos)
      << status.to_string();
}

// A base loaded with a PEFT adapter (on q_proj) is refused.
TEST_F(LoraTrainingErrors, LoadedAdapters) {
  write_tiny_llama(dir_.path(), 5);
  const std::filesystem::path adapter = dir_ / "adapter";
  std::filesystem::create_directory(adapter);
  std::ofstream(adapter / "adapter_config.json")
      << R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})";
  std::vector<std::vector<float>> storage;
  std::vector<io::NamedTensor> tensors;
  for (const char* layer : {"0", "1"}) {
    const std::string prefix =
        std::string("base_model.model.model.layers.") + layer + ".self_attn.q_proj.";
    for (const char* part : {"lora_A.weight", "lora_B.weight"}) {
      storage.emplace_back(4 * 32, 0.01f);
      const Shape shape = part[5] == 'A' ? Shape{4, 32} : Shape{32, 4};
      tensors.push_back({prefix + part, TensorView(storage.back().data(), DType::kF32, shape)});
    }
  }
  ASSERT_TRUE(io::write_safetensors(adapter / "adapter_model.safetensors", tensors).ok());
  model::LlamaLoadOptions options;
  options.adapters = {adapter};
  Result<model::LlamaModel> base = model::LlamaModel::load(dir_.path(), options);
  ASSERT_TRUE(base.ok()) << base.status().to_string();
  const Status status = LoraTrainingModel::create(*base, random_state(*base)).status();
  EXPECT_EQ(status.code(), StatusCode::kUnimplemented) << status.to_string();
  EXPECT_NE(status.message().find("adapters"), std::string::npos) << status.to_string();
}

}  // namespace
}  // namespace kbit::train
