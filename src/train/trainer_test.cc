// Trainer on the tiny random Llama (train/tiny_llama_test_support.h), training LoRA adapters and
// every weight: it learns, its accumulation is the Trainer's, its optimizer states are the sizes
// bitsandbytes keeps, checkpoints resume the same run, and bad options are refused.
#include "kbit/train/trainer.h"

#include <gtest/gtest.h>

#include <functional>
#include <memory>

#include "kbit/model/llama.h"
#include "kbit/train/full_training_model.h"
#include "kbit/train/lora_training_model.h"
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

class TrainerTest : public ::testing::Test {
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
  std::unique_ptr<TrainableModel> fresh_full_model() const {
    return std::make_unique<FullTrainingModel>(
        FullTrainingModel::create(*base_, dir_.path()).value());
  }

  kbit::testing::TempDir dir_;
  std::optional<model::LlamaModel> base_;
};

TEST_F(TrainerTest, LossFallsAsItLearns) {
  for (const OptimizerKind optimizer : {OptimizerKind::kAdamW, OptimizerKind::kPagedAdamW8bit}) {
    LoraTrainingModel model = fresh_model();
    const TrainingRows rows = pattern_rows();
    TrainerOptions options;
    options.optimizer = optimizer;
    options.adamw.lr = 1e-2f;
    options.schedule = {optim::LrScheduleType::kConstant, 0, 0};
    options.batch_size = 2;
    options.grad_accum = 2;
    Trainer trainer = Trainer::create(model, rows, options).value();
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

// Every weight trained with AdamW8bit (the tiny model's tensors, of at most 2 048 elements, all
// keep 32-bit states, as bitsandbytes' min_8bit_size says; the slow test of
// finetune_learning_test.cc trains 8-bit ones).
TEST_F(TrainerTest, FullFineTuningLossFalls) {
  std::unique_ptr<TrainableModel> model = fresh_full_model();
  const TrainingRows rows = pattern_rows();
  TrainerOptions options;
  options.optimizer = OptimizerKind::kAdamW8bit;
  options.adamw.lr = 1e-3f;
  options.schedule = {optim::LrScheduleType::kConstant, 0, 0};
  options.batch_size = 4;
  Trainer trainer = Trainer::create(*model, rows, options).value();
  double first = 0;
  double last = 0;
  for (int s = 0; s < 30; ++s) {
    const Result<StepMetrics> step = trainer.step();
    ASSERT_TRUE(step.ok()) << step.status().to_string();
    (s == 0 ? first : last) = step->loss;
  }
  EXPECT_LT(last, 0.5 * first) << "first " << first << ", last " << last;
}

// batch 2 × accumulation 1 and batch 1 × accumulation 2 are the same step: the loss is the mean
// over both rows' targets either way.
TEST_F(TrainerTest, AccumulationIsTheWholeStepsMean) {
  const TrainingRows rows = pattern_rows();
  std::vector<std::vector<float>> after;
  for (const auto& [batch, accum] : {std::pair{2, 1}, std::pair{1, 2}}) {
    LoraTrainingModel model = fresh_model();
    TrainerOptions options;
    options.batch_size = batch;
    options.grad_accum = accum;
    options.schedule = {optim::LrScheduleType::kConstant, 0, 0};
    Trainer trainer = Trainer::create(model, rows, options).value();
    ASSERT_TRUE(trainer.step().ok());
    ASSERT_TRUE(trainer.step().ok());
    after.push_back(model.state().modules()[3].b);
  }
  EXPECT_EQ(after[0], after[1]);
}

// 8 bytes per element in 32 bits; in 8 bits 2 per element and 8 per block of 256, for the
// parameters of at least 4 096 elements only (bitsandbytes' min_8bit_size).
TEST_F(TrainerTest, OptimizerStatesAreTheSizesBitsandbytesKeeps) {
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
    Result<Trainer> trainer = Trainer::create(model, rows, options);
    ASSERT_TRUE(trainer.ok()) << trainer.status().to_string();
    EXPECT_EQ(trainer->optimizer_state_bytes(), bytes);
  }
}

// Three steps, a checkpoint, a fresh model and trainer restored from it, three more steps: the
// same losses and parameters as six steps in one run, for both kinds of optimizer state and for
// LoRA and full fine-tuning.
void expect_checkpoint_resumes_the_same_run(
    const std::function<std::unique_ptr<TrainableModel>()>& fresh, const TrainingRows& rows,
    const std::filesystem::path& out) {
  for (const OptimizerKind optimizer : {OptimizerKind::kAdamW, OptimizerKind::kAdamW8bit}) {
    TrainerOptions options;
    options.optimizer = optimizer;
    options.adamw.lr = 1e-2f;
    options.schedule = {optim::LrScheduleType::kLinear, 1, 6};
    options.batch_size = 3;  // rows wrap around between steps
    std::unique_ptr<TrainableModel> straight = fresh();
    Trainer one_run = Trainer::create(*straight, rows, options).value();
    std::vector<double> losses;
    for (int s = 0; s < 6; ++s) losses.push_back(one_run.step().value().loss);

    std::unique_ptr<TrainableModel> first = fresh();
    Trainer before = Trainer::create(*first, rows, options).value();
    for (int s = 0; s < 3; ++s)
      ASSERT_EQ(before.step().value().loss, losses[static_cast<std::size_t>(s)]);
    const std::filesystem::path checkpoint = out / "checkpoint-3";
    ASSERT_TRUE(before.save_checkpoint(checkpoint).ok());
    EXPECT_EQ(before.save_checkpoint(checkpoint).code(), StatusCode::kInvalidArgument);

    std::unique_ptr<TrainableModel> second = fresh();
    Trainer after = Trainer::create(*second, rows, options).value();
    const Status restored = after.restore_checkpoint(checkpoint);
    ASSERT_TRUE(restored.ok()) << restored.to_string();
    EXPECT_EQ(after.steps_done(), 3);
    for (int s = 3; s < 6; ++s) {
      const StepMetrics step = after.step().value();
      EXPECT_EQ(step.step, s + 1);
      EXPECT_EQ(step.loss, losses[static_cast<std::size_t>(s)]) << "step " << s + 1;
    }
    const std::vector<TrainableParameter> resumed = second->parameters();
    const std::vector<TrainableParameter> expected = straight->parameters();
    ASSERT_EQ(resumed.size(), expected.size());
    for (std::size_t p = 0; p < resumed.size(); ++p) {
      EXPECT_TRUE(std::ranges::equal(resumed[p].host_values(), expected[p].host_values()))
          << resumed[p].name;
    }
    std::filesystem::remove_all(out);
  }
}

TEST_F(TrainerTest, ALoraCheckpointResumesTheSameRun) {
  io::PeftLoraConfig config = all_linear();
  config.r = 128;  // some parameters of 4 096 elements or more: 8-bit states too
  expect_checkpoint_resumes_the_same_run(
      [&]() -> std::unique_ptr<TrainableModel> {
        return std::make_unique<LoraTrainingModel>(
            LoraTrainingModel::create(*base_, LoraState::create(base_->config(), config, 1).value())
                .value());
      },
      pattern_rows(), dir_ / "out");
}

TEST_F(TrainerTest, AFullFineTuningCheckpointResumesTheSameRun) {
  expect_checkpoint_resumes_the_same_run([&] { return fresh_full_model(); }, pattern_rows(),
                                         dir_ / "out");
}

// A folder under its temporary name (an interrupted save) is not a checkpoint; the newest
// complete one is.
TEST_F(TrainerTest, LatestCheckpointSkipsInterruptedSaves) {
  const std::filesystem::path out = dir_ / "out";
  EXPECT_FALSE(latest_checkpoint(out).has_value());
  for (const char* name :
       {"checkpoint-2", "checkpoint-10", "checkpoint-12.tmp-4242", "checkpoint-x", "checkpoint-"}) {
    std::filesystem::create_directories(out / name);
  }
  EXPECT_EQ(latest_checkpoint(out), out / "checkpoint-10");
}

// A checkpoint of another run (other rows, another optimizer) is refused, naming what differs,
// and the trainer is left as it was.
TEST_F(TrainerTest, RefusesACheckpointOfAnotherRun) {
  const TrainingRows rows = pattern_rows();
  TrainerOptions options;
  options.schedule = {optim::LrScheduleType::kConstant, 0, 0};
  LoraTrainingModel model = fresh_model();
  Trainer trainer = Trainer::create(model, rows, options).value();
  ASSERT_TRUE(trainer.step().ok());
  const std::filesystem::path checkpoint = dir_ / "checkpoint-1";
  ASSERT_TRUE(trainer.save_checkpoint(checkpoint).ok());

  TrainingRows fewer = rows;
  fewer.input_ids.resize(fewer.input_ids.size() / 2);
  fewer.labels.resize(fewer.labels.size() / 2);
  LoraTrainingModel other = fresh_model();
  Trainer other_rows = Trainer::create(other, fewer, options).value();
  Status status = other_rows.restore_checkpoint(checkpoint);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("rows is 4 but this run's is 2"), std::string::npos)
      << status.message();
  EXPECT_EQ(other_rows.steps_done(), 0);
  options.optimizer = OptimizerKind::kAdamW;
  Trainer other_optimizer = Trainer::create(other, rows, options).value();
  status = other_optimizer.restore_checkpoint(checkpoint);
  EXPECT_NE(status.message().find("optimizer is paged_adamw_8bit but this run's is adamw"),
            std::string::npos)
      << status.message();
  EXPECT_EQ(other.state().modules()[0].a, fresh_model().state().modules()[0].a);
}

TEST_F(TrainerTest, RefusesBadOptions) {
  const TrainingRows rows = pattern_rows();
  LoraTrainingModel model = fresh_model();
  TrainerOptions options;
  options.schedule = {optim::LrScheduleType::kConstant, 0, 0};
  EXPECT_TRUE(Trainer::create(model, rows, options).ok());
  options.batch_size = 0;
  EXPECT_EQ(Trainer::create(model, rows, options).status().code(), StatusCode::kInvalidArgument);
  options.batch_size = 1;
  options.max_grad_norm = -1;
  EXPECT_EQ(Trainer::create(model, rows, options).status().code(), StatusCode::kInvalidArgument);
  options.max_grad_norm = 1;
  options.adamw.lr = -1;
  EXPECT_EQ(Trainer::create(model, rows, options).status().code(), StatusCode::kInvalidArgument);
  options.adamw.lr = 1e-3f;
  options.schedule = {optim::LrScheduleType::kLinear, 0, 0};  // linear needs total_steps
  EXPECT_EQ(Trainer::create(model, rows, options).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_optimizer("sgd").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_optimizer("paged_adamw_8bit").value(), OptimizerKind::kPagedAdamW8bit);
}

}  // namespace
}  // namespace kbit::train
