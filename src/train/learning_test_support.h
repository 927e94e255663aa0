// What the learning tests share (train/finetune_learning_test.cc on the CPU,
// train/cuda/cuda_finetune_learning_test.cc on the GPU): the data, the held-out score and the
// recipe. Each base model was trained on the first nine tenths of tinyshakespeare.txt; the last
// tenth (validation_text) is new to it. Training takes one epoch over the first half of that
// tenth (600-character examples, packed into rows of 128 tokens, 4 rows per step, linear decay,
// seed 42); the held-out score is the perplexity of the second half (windows of 256 tokens).
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "generate/validation_text.h"
#include "kbit/generate/perplexity.h"
#include "kbit/model/llama.h"
#include "kbit/train/trainer.h"
#include "kbit/train/training_data.h"
#include "model/llama_test_support.h"
#include "testing/temp_dir.h"

namespace kbit::train {

inline constexpr std::size_t kExampleChars = 600;
inline constexpr std::int64_t kContext = 256;

// shakespeare-llama3's QLoRA base: nf4 with double quantization, `dtype` activations and compute.
inline model::LlamaLoadOptions nf4_dq_options(Device device, DType dtype,
                                              std::vector<std::filesystem::path> adapters = {}) {
  model::LlamaLoadOptions options;
  options.device = device;
  options.activation_dtype = dtype;
  options.quantize = model::golden_mode_options("nf4_dq", dtype);
  options.adapters = std::move(adapters);
  return options;
}

// The QLoRA adapter the tests train: r 8, α 16 on all seven Linears of every layer.
inline io::PeftLoraConfig learning_lora_config() {
  io::PeftLoraConfig lora;
  lora.r = 8;
  lora.lora_alpha = 16;
  lora.all_linear = true;
  return lora;
}

inline double held_out_perplexity(const model::LlamaModel& model,
                                  std::span<const std::int32_t> ids) {
  Result<generate::PerplexityResult> result = generate::perplexity(model, ids, kContext);
  EXPECT_TRUE(result.ok()) << result.status().to_string();
  return result.ok() ? result->perplexity : 0.0;
}

// The training rows of the validation text's first half and the held-out ids of its second
// half, for the model in `dir`.
struct LearningData {
  TrainingRows rows;
  std::vector<std::int32_t> held_out;
};

inline LearningData learning_data(const std::filesystem::path& dir) {
  const tokenizer::Tokenizer tokenizer = tokenizer::Tokenizer::load(dir / "tokenizer.json").value();
  const std::string text = generate::validation_text();
  const std::string train_text = text.substr(0, text.size() / 2);
  io::TrainingDataset dataset;
  for (std::size_t first = 0; first < train_text.size(); first += kExampleChars) {
    io::TrainingExample example;
    example.line = static_cast<std::int64_t>(dataset.examples.size() + 1);
    example.text = train_text.substr(first, kExampleChars);
    dataset.examples.push_back(std::move(example));
  }
  const std::vector<TokenizedExample> examples =
      tokenize_dataset(dataset, tokenizer, nullptr).value();
  return {make_training_rows(examples, 128, RowLayout::kPacked, *tokenizer.eos_id(), 42).value(),
          tokenizer.encode(text.substr(text.size() / 2), false).value()};
}

// Options for one epoch over `rows` with linear decay.
inline TrainerOptions one_epoch(const TrainingRows& rows, OptimizerKind optimizer, float lr) {
  TrainerOptions options;
  options.optimizer = optimizer;
  options.adamw.lr = lr;
  options.batch_size = 4;
  const std::int64_t steps = (rows.rows() + options.batch_size - 1) / options.batch_size;
  options.schedule = {optim::LrScheduleType::kLinear, 0, steps};
  return options;
}

inline void train(Trainer& trainer, const TrainerOptions& options) {
  for (std::int64_t s = 0; s < options.schedule.total_steps; ++s) {
    const Result<StepMetrics> step = trainer.step();
    ASSERT_TRUE(step.ok()) << step.status().to_string();
  }
}

// Trains `model` (the adapter of learning_lora_config on the nf4_dq base of `dir`) for one epoch
// of the recipe, PagedAdamW8bit at lr 1e-3, saves the adapter, and returns the held-out
// perplexity of the base loaded with it on `device` in `dtype`; steps_taken gets the steps.
inline double train_and_score_adapter(TrainableModel& model, const LearningData& data,
                                      const std::filesystem::path& dir, Device device, DType dtype,
                                      std::int64_t& steps_taken) {
  const TrainerOptions options = one_epoch(data.rows, OptimizerKind::kPagedAdamW8bit, 1e-3f);
  Trainer trainer = Trainer::create(model, data.rows, options).value();
  train(trainer, options);
  steps_taken = options.schedule.total_steps;
  const kbit::testing::TempDir adapter;
  EXPECT_TRUE(model.save(adapter.path()).ok());
  const model::LlamaModel adapted =
      model::LlamaModel::load(dir, nf4_dq_options(device, dtype, {adapter.path()})).value();
  return held_out_perplexity(adapted, data.held_out);
}

}  // namespace kbit::train
