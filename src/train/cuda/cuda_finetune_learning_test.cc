// Learning works on the GPU (must-show 4's GPU half): QLoRA fine-tuning of shakespeare-llama3 in
// nf4_dq with CudaLoraTrainingModel, on the text and with the recipe of the CPU's learning test
// (train/learning_test_support.h), in the GPU's training precision (bf16 activations and compute,
// bf16 LoRA as under autocast: kbit finetune's default on a GPU), lowers the held-out perplexity
// scored on the GPU with the saved adapter. Label `cuda`: skips visibly without a GPU.
//
// Measured on an H200: held-out perplexity 126.2 before, 112.1 after 38 steps (−11%, as the
// CPU's f32 run). The test asks for at least 5%, as the CPU's.
#include <gtest/gtest.h>

#include <iostream>

#include "kbit/model/llama.h"
#include "kbit/train/cuda_lora_training_model.h"
#include "testing/shared_data.h"
#include "train/learning_test_support.h"

namespace kbit::train {
namespace {

TEST(CudaFinetuneLearning, QloraLowersHeldOutPerplexity) {
  KBIT_REQUIRE_CUDA();
  KBIT_REQUIRE_SHARED_DIR();
  const std::filesystem::path dir = kbit::testing::shared_file("models/shakespeare-llama3");
  const LearningData data = learning_data(dir);
  const model::LlamaModel base =
      model::LlamaModel::load(dir, nf4_dq_options(Device::cuda(0), DType::kBF16)).value();
  const double before = held_out_perplexity(base, data.held_out);

  CudaLoraTrainingModel model =
      CudaLoraTrainingModel::create(
          base, LoraState::create(base.config(), learning_lora_config(), 42).value(), 4,
          DType::kBF16)
          .value();
  std::int64_t steps = 0;
  const double after =
      train_and_score_adapter(model, data, dir, Device::cuda(0), DType::kBF16, steps);
  std::cout << "[ learn ] QLoRA on the GPU: held-out perplexity " << before << " -> " << after
            << " after " << steps << " steps\n";
  EXPECT_LT(after, 0.95 * before);
}

}  // namespace
}  // namespace kbit::train
