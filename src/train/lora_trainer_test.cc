// LoraTrainer on the tiny random Llama (train/tiny_llama_test_support.h): it learns, its
// accumulation is the Trainer's, its optimizer states are the sizes bitsandbytes keeps, and
// bad options are refused.
#include "kbit/train/lora_trainer.h"

#include <gtest/gtest.h>

#include "kbit/model/llama.h"
#include "testing/temp_dir.h"
#include "train/tiny_llama_test_support.h"

namespace kbit::train {
namespace {

io::PeftLoraConfig all_linear() {
  io::PeftLoraConfig config;
  config.r = 4;
  config.lora_alpha = 8;
  config.all_linear = true;
  return config;
}

// Four rows of 16 tokens repeating one short pattern each, every token labelled: a sequence a
// small adapter can learn to predict.
TrainingRows pattern_rows() {
  TrainingRows rows;
  rows.length = 16;
  for (int r = 0; r < 4; ++r) {
    for (int t = 0; t < 16; ++t) {
      const std::int32_t id = static_cast<std::int32_t>((5 * r + 3 * (t % (3 + r))) % 64);
      rows.input_ids.push_back(id);
      rows.labels.push_back(id);
    }
  }
  return rows;
}

class LoraTrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_tiny_llama(dir_.path(), 5);
    base_.emplace(model::LlamaModel::load(dir_.path(), {}).value());
  }
  LoraTrainingModel fresh_model() const {
    return LoraTrainingModel::create(*base_,
                                     LoraState::create(base_->config(), all_linear(), 1).value())
        .value();
  }

  kbit::testing::TempDir dir_;
  std::optional<model::LlamaModel> base_;
};

TEST_F(LoraTrainerTest, LossFallsAsItLearns) {
  for (const OptimizerKind optimizer : {OptimizerKind::kAdamW, OptimizerKind::kPagedAdamW8bit}) {
    LoraTrainingModel model = fresh_model();
    const TrainingRows rows = pattern_rows();
    TrainerOptions options;
    options.optimizer = optimizer;
    options.adamw.lr = 1e-2f;
    options.schedule = {optim::LrScheduleType::kConstant, 0, 0};
    options.batch_size = 2;
    options.grad_accum = 2;
    LoraTrainer trainer = LoraTrainer::create(model, rows, options).value();
    double first = 0;
    double last = 0;
    for (int s = 0; s < 30; ++s) {
      const Result<StepMetrics> step = trainer.step();
      ASSERT_TRUE(step.ok()) << step.status().to_string();
      EXPECT_EQ(step->step, s + 1);
      EXPECT_EQ(step->tokens, 64);
      EXPECT_EQ(step->epoch, s);  // 4 rows a step: one pass each
      EXPECT_TRUE(std::isfinite(step->grad_norm));
      (s == 0 ? first : last) = step->loss;
    }
    // Measured: 4.6 -> below 1 for both optimizers.
    EXPECT_LT(last, 0.5 * first) << "first " << first << ", last " << last;
  }
}

// batch 2 × accumulation 1 and batch 1 × accumulation 2 are the same step: the loss is the mean
// over both rows' targets either way.
TEST_F(LoraTrainerTest, AccumulationIsTheWholeStepsMean) {
  const TrainingRows rows = pattern_rows();
  std::vector<std::vector<float>> after;
  for (const auto& [batch, accum] : {std::pair{2, 1}, std::pair{1, 2}}) {
    LoraTrainingModel model = fresh_model();
    TrainerOptions options;
    options.batch_size = batch;
    options.grad_accum = accum;
    options.schedule = {optim::LrScheduleType::kConstant, 0, 0};
    LoraTrainer trainer = LoraTrainer::create(model, rows, options).value();
    ASSERT_TRUE(trainer.step().ok());
    ASSERT_TRUE(trainer.step().ok());
    after.push_back(model.state().modules()[3].b);
  }
  EXPECT_EQ(after[0], after[1]);
}

// 8 bytes per element in 32 bits; in 8 bits 2 per element and 8 per block of 256, for the
// parameters of at least 4 096 elements only (bitsandbytes' min_8bit_size).
TEST_F(LoraTrainerTest, OptimizerStatesAreTheSizesBitsandbytesKeeps) {
  const TrainingRows rows = pattern_rows();
  io::PeftLoraConfig config = all_linear();
  config.r = 128;  // q's A [128, 32] has 4 096 elements, k's B [16, 128] 2 048
  LoraTrainingModel model =
      LoraTrainingModel::create(*base_, LoraState::create(base_->config(), config, 1).value())
          .value();
  std::size_t full = 0;
  std::size_t eight_bit = 0;
  for (const LoraModule& module : model.state().modules()) {
    for (const std::size_t n : {module.a.size(), module.b.size()}) {
      full += 8 * n;
      eight_bit += n >= 4096 ? 2 * n + 8 * ((n + 255) / 256) : 8 * n;
    }
  }
  ASSERT_LT(eight_bit, full / 2);  // the case holds parameters of both kinds, mostly 8-bit
  TrainerOptions options;
  options.schedule = {optim::LrScheduleType::kConstant, 0, 0};
  for (const auto& [optimizer, bytes] :
       {std::pair{OptimizerKind::kAdamW, full}, std::pair{OptimizerKind::kAdamW8bit, eight_bit},
        std::pair{OptimizerKind::kPagedAdamW8bit, eight_bit}}) {
    options.optimizer = optimizer;
    Result<LoraTrainer> trainer = LoraTrainer::create(model, rows, options);
    ASSERT_TRUE(trainer.ok()) << trainer.status().to_string();
    EXPECT_EQ(trainer->optimizer_state_bytes(), bytes);
  }
}

TEST_F(LoraTrainerTest, RefusesBadOptions) {
  const TrainingRows rows = pattern_rows();
  LoraTrainingModel model = fresh_model();
  TrainerOptions options;
  options.schedule = {optim::LrScheduleType::kConstant, 0, 0};
  EXPECT_TRUE(LoraTrainer::create(model, rows, options).ok());
  options.batch_size = 0;
  EXPECT_EQ(LoraTrainer::create(model, rows, options).status().code(),
            StatusCode::kInvalidArgument);
  options.batch_size = 1;
  options.max_grad_norm = -1;
  EXPECT_EQ(LoraTrainer::create(model, rows, options).status().code(),
            StatusCode::kInvalidArgument);
  options.max_grad_norm = 1;
  options.adamw.lr = -1;
  EXPECT_EQ(LoraTrainer::create(model, rows, options).status().code(),
            StatusCode::kInvalidArgument);
  options.adamw.lr = 1e-3f;
  options.schedule = {optim::LrScheduleType::kLinear, 0, 0};  // linear needs total_steps
  EXPECT_EQ(LoraTrainer::create(model, rows, options).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_optimizer("sgd").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_optimizer("paged_adamw_8bit").value(), OptimizerKind::kPagedAdamW8bit);
}

}  // namespace
}  // namespace kbit::train
