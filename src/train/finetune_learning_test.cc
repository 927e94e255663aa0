// Learning works (label `slow`, about a minute and a half on two cores): fine-tuning on text the
// base was not trained on lowers the perplexity of the text that follows it. The data and the
// recipe: train/learning_test_support.h; the result is saved, loaded as kbit generate would load
// it, and scored. The data order and the initialisation are seeded and the CPU kernels are
// deterministic: every run gives the same numbers. Measured on the build machine:
//   QLoRA: shakespeare-llama3 in nf4_dq, an adapter of r 8, α 16 on all seven Linears of every
//     layer, PagedAdamW8bit at lr 1e-3: held-out perplexity 126.2 before, 112.1 after (−11%).
//     The test asks for at least 5%.
//   Full fine-tuning: every weight of shakespeare-llama2 (bf16; f32 master weights, saved in
//     bf16), AdamW8bit at lr 1e-4: 104.0 before, 99.7 after (−4.2%); at lr 3e-4 the model fits
//     the first half's play and the second half's perplexity rises (105.1). The test asks for at
//     least 2%, and for AdamW8bit's states to cost about 2 bytes per parameter.
#include <gtest/gtest.h>

#include <iostream>

#include "kbit/io/checkpoint.h"
#include "kbit/model/llama.h"
#include "kbit/train/full_training_model.h"
#include "kbit/train/lora_training_model.h"
#include "kbit/train/trainer.h"
#include "testing/shared_data.h"
#include "testing/temp_dir.h"
#include "train/learning_test_support.h"

namespace kbit::train {
namespace {

TEST(FinetuneLearning, QloraLowersHeldOutPerplexity) {
  KBIT_REQUIRE_SHARED_DIR();
  const std::filesystem::path dir = kbit::testing::shared_file("models/shakespeare-llama3");
  const LearningData data = learning_data(dir);
  const model::LlamaModel base =
      model::LlamaModel::load(dir, nf4_dq_options(Device::cpu(), DType::kF32)).value();
  const double before = held_out_perplexity(base, data.held_out);

  LoraTrainingModel model =
      LoraTrainingModel::create(
          base, LoraState::create(base.config(), learning_lora_config(), 42).value())
          .value();
  std::int64_t steps = 0;
  const double after = train_and_score_adapter(model, data, dir, Device::cpu(), DType::kF32, steps);
  std::cout << "[ learn ] QLoRA: held-out perplexity " << before << " -> " << after << " after "
            << steps << " steps\n";
  EXPECT_LT(after, 0.95 * before);
}

TEST(FinetuneLearning, FullFineTuningLowersHeldOutPerplexity) {
  KBIT_REQUIRE_SHARED_DIR();
  const std::filesystem::path dir = kbit::testing::shared_file("models/shakespeare-llama2");
  const LearningData data = learning_data(dir);
  const model::LlamaModel base = model::LlamaModel::load(dir, {}).value();
  const double before = held_out_perplexity(base, data.held_out);

  FullTrainingModel model = FullTrainingModel::create(base, dir).value();
  const TrainerOptions options = one_epoch(data.rows, OptimizerKind::kAdamW8bit, 1e-4f);
  Trainer trainer = Trainer::create(model, data.rows, options).value();
  std::size_t parameters = 0;
  for (const TrainableParameter& p : model.parameters())
    parameters += static_cast<std::size_t>(p.values.numel());
  const double state_bytes_per_parameter =
      static_cast<double>(trainer.optimizer_state_bytes()) / static_cast<double>(parameters);
  EXPECT_LT(state_bytes_per_parameter, 2.1);  // 2 + absmax, and the norms' 8
  train(trainer, options);

  const kbit::testing::TempDir saved;
  ASSERT_TRUE(model.save(saved.path()).ok());
  const io::Checkpoint checkpoint = io::Checkpoint::open(saved.path()).value();
  EXPECT_EQ(checkpoint.tensor("model.layers.0.mlp.up_proj.weight").value().dtype(), DType::kBF16);
  const model::LlamaModel trained = model::LlamaModel::load(saved.path(), {}).value();
  const double after = held_out_perplexity(trained, data.held_out);
  std::cout << "[ learn ] full fine-tuning: held-out perplexity " << before << " -> " << after
            << " after " << options.schedule.total_steps << " steps, optimizer state "
            << state_bytes_per_parameter << " bytes per parameter\n";
  EXPECT_LT(after, 0.98 * before);
}

}  // namespace
}  // namespace kbit::train
