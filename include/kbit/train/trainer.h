// The optimisation loop of fine-tuning, as transformers' Trainer runs it, for any TrainableModel
// (LoRA adapters on a frozen base, or every weight): each optimizer step takes grad_accum
// micro-batches of batch_size rows, whose loss is the mean over every labelled target of all of
// them (transformers since 4.46 divides by the accumulated batch's count of labelled targets,
// num_items_in_batch), clips the gradients' global norm (max_grad_norm; 0 turns it off), then
// updates every parameter with AdamW at the learning rate of the schedule for that step. The CPU
// models run one row at a time whatever the split, so a step costs the same for any batch_size ×
// grad_accum of the same product; the CUDA model runs its passes of as many rows as it was made
// for (CudaLoraTrainingModel: kbit finetune makes it for batch_size).
//
// Optimizers (bitsandbytes', kbit/optim/adamw.h): "adamw" (32-bit states), "adamw_8bit" and
// "paged_adamw_8bit" (blockwise 8-bit states; a parameter of fewer than 4 096 elements keeps
// 32-bit states, as bitsandbytes' min_8bit_size does). The states live where the parameters do;
// on a CUDA device the paged optimizer keeps the large ones in managed memory
// (kbit/optim/adamw_parameter_state.h), and on the CPU paging changes nothing: its arithmetic is
// the 8-bit one's. Gradient clipping and the steps run on the parameters' device; a step returns
// with the device's work finished.
//
// Rows are taken in order, wrapping around to the first after the last (a new epoch).
//
// Not thread safe; one step at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string_view>

#include "kbit/core/status.h"
#include "kbit/optim/adamw.h"
#include "kbit/optim/lr_schedule.h"
#include "kbit/train/trainable_model.h"
#include "kbit/train/training_data.h"

namespace kbit::train {

enum class OptimizerKind { kAdamW, kAdamW8bit, kPagedAdamW8bit };

// The newest complete checkpoint in `output_dir`: its subfolder checkpoint-N of the largest N
// (folders still under a temporary name, from an interrupted save, are not checkpoints);
// nullopt if there is none.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& output_dir);

// transformers' optim names: "adamw" (also "adamw_torch"), "adamw_8bit" (also "adamw_bnb_8bit"),
// "paged_adamw_8bit"; kInvalidArgument listing them for any other.
Result<OptimizerKind> parse_optimizer(std::string_view name);

struct TrainerOptions {
  OptimizerKind optimizer = OptimizerKind::kPagedAdamW8bit;
  // The base learning rate (lr) and AdamW's constants; the Trainer's weight decay default is 0.
  optim::AdamWHyperparameters adamw{2e-4f, 0.9f, 0.999f, 1e-8f, 0.0f};
  optim::LrSchedule schedule;  // total_steps: the run's optimizer steps
  float max_grad_norm = 1.0f;  // 0: no clipping
  std::int64_t batch_size = 1;
  std::int64_t grad_accum = 1;
  std::uint64_t seed = 42;  // of the LoRA dropout masks, drawn afresh each step from it
};

// What one optimizer step did.
struct StepMetrics {
  std::int64_t step = 0;    // 1 for the first
  double loss = 0;          // the mean over its rows' labelled targets
  float grad_norm = 0;      // before clipping
  double lr = 0;            // the learning rate it applied
  std::int64_t tokens = 0;  // input tokens it processed
  std::int64_t epoch = 0;   // completed passes over the rows when it began
};

class Trainer {
 public:
  // Checks the options (kInvalidArgument naming the field) and makes the optimizer's zero
  // states. `model` and `rows` must outlive the trainer.
  static Result<Trainer> create(TrainableModel& model, const TrainingRows& rows,
                                const TrainerOptions& options);

  Trainer(Trainer&&) noexcept;
  Trainer& operator=(Trainer&&) noexcept;
  ~Trainer();

  // One optimizer step. A non-finite gradient norm skips the update (the step still counts and
  // its metrics say so: grad_norm not finite), as the Trainer does with skipped steps.
  Result<StepMetrics> step();

  // Optimizer states' bytes (what paging would move): 2 per element of 8-bit states plus their
  // absmax, 8 per element of 32-bit ones.
  std::size_t optimizer_state_bytes() const;

  // Optimizer steps taken (restored ones included).
  std::int64_t steps_done() const;

  // Writes a checkpoint of the run so far into the folder `dir`, as transformers' Trainer writes
  // checkpoint-N: what the model saves (TrainableModel::save: a PEFT adapter, or a model
  // folder) and trainer_state.safetensors (every parameter's f32 values under its name and its
  // optimizer states under "<name>.<state>", and in the metadata the step, the position in the
  // rows and what the run was made with). The folder is written beside itself under a
  // temporary name and renamed into place whole, so an interrupted save leaves no partial
  // checkpoint; kInvalidArgument if `dir` exists already.
  Status save_checkpoint(const std::filesystem::path& dir) const;

  // Continues the run a checkpoint saved: its parameters' values, optimizer states, step and
  // position in the rows (from trainer_state.safetensors). The checkpoint must come from a run
  // of the same parameters, optimizer, rows and batch; otherwise kInvalidArgument naming the
  // field or tensor and both values, with nothing changed.
  Status restore_checkpoint(const std::filesystem::path& dir);

 private:
  struct State;
  explicit Trainer(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace kbit::train
