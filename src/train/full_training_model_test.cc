// FullTrainingModel on the tiny random Llama (train/tiny_llama_test_support.h), tied and untied:
// every weight's gradient against finite differences (train/gradient_check_test_support.h), the
// loss against LlamaModel::forward's before and after save(), and the errors.
//
// Finite differences measured (largest ‖analytic − numeric‖ / ‖numeric‖ of a tensor, untied /
// tied): h = 0.04: 6.6e-3 / 5.4e-2; 0.02: 6.4e-4 / 5.8e-3; 0.01: 7.8e-5 / 4.1e-4; 0.005:
// 1.2e-4 / 1.2e-4. The whole weights move along the directions, and the tiny model's embedding
// of std 1 (its tied lm_head) makes the loss curve sharply, so truncation binds down to small
// steps. At h = 0.005 the tolerance, 1e-3, is 8 times the worst measured.
#include "kbit/train/full_training_model.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "kbit/io/safetensors.h"
#include "kbit/model/llama.h"
#include "testing/temp_dir.h"
#include "train/gradient_check_test_support.h"

namespace kbit::train {
namespace {

constexpr double kStep = 0.005;
constexpr double kGradientTolerance = 1e-3;

FullTrainingModel full_model(const model::LlamaModel& base, const kbit::testing::TempDir& dir) {
  Result<FullTrainingModel> model = FullTrainingModel::create(base, dir.path());
  EXPECT_TRUE(model.ok()) << model.status().to_string();
  return std::move(model).value();
}

TEST(FullTrainingGradients, MatchFiniteDifferences) {
  for (const bool tied : {false, true}) {
    const kbit::testing::TempDir dir;
    const model::LlamaModel base = load_tiny(dir, tied);
    FullTrainingModel model = full_model(base, dir);
    std::cout << "[ train] full, " << (tied ? "tied" : "untied") << ": largest relative error "
              << check_gradients(model, tiny_batch(), kStep, kGradientTolerance) << "\n";
  }
}

// The parameters, in transformers' order, each of its checkpoint tensor's size.
TEST(FullTrainingModel, ParametersAreEveryWeight) {
  for (const bool tied : {false, true}) {
    const kbit::testing::TempDir dir;
    const model::LlamaModel base = load_tiny(dir, tied);
    FullTrainingModel model = full_model(base, dir);
    const std::vector<TrainableParameter> parameters = model.parameters();
    ASSERT_EQ(parameters.size(), tied ? 20u : 21u);
    EXPECT_EQ(parameters.front().name, "model.embed_tokens.weight");
    EXPECT_EQ(parameters[1].name, "model.layers.0.input_layernorm.weight");
    EXPECT_EQ(parameters[2].name, "model.layers.0.self_attn.q_proj.weight");
    EXPECT_EQ(parameters[6].name, "model.layers.0.post_attention_layernorm.weight");
    EXPECT_EQ(parameters[9].name, "model.layers.0.mlp.down_proj.weight");
    EXPECT_EQ(parameters[19].name, "model.norm.weight");
    if (!tied) {
      EXPECT_EQ(parameters[20].name, "lm_head.weight");
    }
    const io::SafetensorsFile file = io::SafetensorsFile::open(dir / "model.safetensors").value();
    for (const TrainableParameter& p : parameters) {
      EXPECT_EQ(p.values.numel(), file.tensor(p.name).value().numel()) << p.name;
      EXPECT_EQ(p.gradient.numel(), p.values.numel()) << p.name;
    }
  }
}

// The loss is LlamaModel::forward's, before training and after changing weights, saving them
// and loading the saved folder.
TEST(FullTrainingModel, SavedWeightsLoadAndGiveTheSameLoss) {
  const kbit::testing::TempDir dir;
  const model::LlamaModel base = load_tiny(dir, /*tied=*/true);
  FullTrainingModel model = full_model(base, dir);
  const Batch batch = tiny_batch();
  const double before = forward_loss(base, batch);
  EXPECT_NEAR(loss(model, batch), before, 1e-6 * before);

  std::uint64_t stream = 77;
  for (const TrainableParameter& p : model.parameters()) {
    const std::span<float> values = p.host_values();
    for (std::size_t i = 0; i < values.size(); ++i) {
      values[i] += static_cast<float>(0.05 * normal_sample(stream, i));
    }
    ++stream;
  }
  const double changed = loss(model, batch);
  EXPECT_GT(std::fabs(changed - before), 1e-3);
  const std::filesystem::path saved = dir / "saved";
  ASSERT_TRUE(model.save(saved).ok());
  EXPECT_TRUE(std::filesystem::exists(saved / "config.json"));
  const model::LlamaModel reloaded = model::LlamaModel::load(saved, {}).value();
  // The tiny checkpoint is f32: saved without rounding.
  EXPECT_NEAR(forward_loss(reloaded, batch), changed, 1e-6 * changed);
  // Saving again over the folder replaces its files.
  ASSERT_TRUE(model.save(saved).ok());
}

// The reference kernels (CpuKernel::kReference) and the fast ones give the same gradients up to
// the order of the sums.
TEST(FullTrainingModel, FastKernelsMatchTheReference) {
  const kbit::testing::TempDir dir;
  write_tiny_llama(dir.path(), 5);
  std::vector<std::vector<float>> gradients[2];
  for (const CpuKernel kernel : {CpuKernel::kReference, CpuKernel::kFast}) {
    model::LlamaLoadOptions options;
    options.execution.cpu_kernel = kernel;
    const model::LlamaModel base = model::LlamaModel::load(dir.path(), options).value();
    FullTrainingModel model = full_model(base, dir);
    loss(model, tiny_batch());
    for (const TrainableParameter& p : model.parameters()) {
      gradients[kernel == CpuKernel::kFast].emplace_back(p.host_gradient().begin(),
                                                         p.host_gradient().end());
    }
  }
  for (std::size_t p = 0; p < gradients[0].size(); ++p) {
    const std::vector<double> reference(gradients[0][p].begin(), gradients[0][p].end());
    EXPECT_LT(kbit::testing::relative_error<float>(gradients[1][p], reference), 1e-5) << p;
  }
}

TEST(FullTrainingModel, RefusesQuantizedAndBf16Models) {
  const kbit::testing::TempDir dir;
  model::QuantizeOptions nf4;
  nf4.block_size = 32;
  const model::LlamaModel quantized = load_tiny(dir, false, nf4);
  Status status = FullTrainingModel::create(quantized, dir.path()).status();
  EXPECT_EQ(status.code(), StatusCode::kUnimplemented) << status.to_string();
  EXPECT_NE(status.message().find("model.layers.0.self_attn.q_proj is quantized"),
            std::string::npos)
      << status.to_string();

  model::LlamaLoadOptions options;
  options.activation_dtype = DType::kBF16;
  const model::LlamaModel bf16 = model::LlamaModel::load(dir.path(), options).value();
  status = FullTrainingModel::create(bf16, dir.path()).status();
  EXPECT_EQ(status.code(), StatusCode::kUnimplemented) << status.to_string();
  EXPECT_NE(status.message().find("f32 activations"), std::string::npos) << status.to_string();
}

}  // namespace
}  // namespace kbit::train
