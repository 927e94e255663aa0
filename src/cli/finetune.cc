// kbit finetune: fine-tuning of a model on a JSONL dataset: LoRA, saved as a PEFT adapter, or with
// --full every weight, saved as a model folder.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_flags.h"
#include "cli/progress_bar.h"
#include "kbit/core/allocator.h"
#include "kbit/core/memory_stats.h"
#include "kbit/generate/chat_template.h"
#include "kbit/io/training_jsonl.h"
#include "kbit/train/cuda_lora_training_model.h"
#include "kbit/train/full_training_model.h"
#include "kbit/train/lora_training_model.h"
#include "kbit/train/trainer.h"

namespace kbit::cli {
namespace {

struct FinetuneFlags {
  ModelFlags model;
  std::filesystem::path data;
  std::filesystem::path output;
  bool full = false;
  std::int64_t lora_r = 16;
  double lora_alpha = 32;
  double lora_dropout = 0;
  bool use_rslora = false;
  std::string lora_dtype = "auto";
  std::vector<std::string> target_modules{"all-linear"};
  std::string optimizer = "paged_adamw_8bit";
  float lr = 2e-4f;
  float weight_decay = 0;
  float max_grad_norm = 1;
  std::string lr_scheduler = "linear";
  std::int64_t warmup_steps = 0;
  double epochs = 1;
  std::int64_t max_steps = 0;
  std::int64_t batch_size = 1;
  std::int64_t grad_accum = 1;
  std::int64_t max_length = 512;
  std::string layout = "packed";
  std::int64_t save_every = 0;
  bool resume = false;
  std::uint64_t seed = 42;
  std::filesystem::path metrics;
};

// --target-modules: "all-linear", or module names.
io::PeftLoraConfig lora_config(const FinetuneFlags& flags) {
  io::PeftLoraConfig config;
  config.r = flags.lora_r;
  config.lora_alpha = flags.lora_alpha;
  config.lora_dropout = flags.lora_dropout;
  config.use_rslora = flags.use_rslora;
  config.base_model_name_or_path = flags.model.model_dir.string();
  config.all_linear = flags.target_modules == std::vector<std::string>{"all-linear"};
  if (!config.all_linear) config.target_names = flags.target_modules;
  return config;
}

// The training rows of the dataset, tokenized as train/training_data.h says.
Result<train::TrainingRows> training_rows(const FinetuneFlags& flags,
                                          const tokenizer::Tokenizer& tokenizer) {
  KBIT_ASSIGN_OR_RETURN(const io::TrainingDataset dataset, io::read_training_jsonl(flags.data));
  std::optional<generate::ChatTemplate> chat_template;
  if (dataset.layout == io::TrainingLayout::kMessages) {
    KBIT_ASSIGN_OR_RETURN(chat_template,
                          generate::ChatTemplate::load_for_model(flags.model.model_dir));
  }
  Result<std::vector<train::TokenizedExample>> examples =
      train::tokenize_dataset(dataset, tokenizer, chat_template ? &*chat_template : nullptr);
  if (!examples.ok()) return examples.status().with_context(flags.data.string());
  if (flags.layout != "packed" && flags.layout != "padded") {
    return invalid_argument("--layout must be packed or padded, got " + flags.layout);
  }
  const train::RowLayout layout =
      flags.layout == "packed" ? train::RowLayout::kPacked : train::RowLayout::kPadded;
  const std::int32_t pad = tokenizer.eos_id().value_or(0);
  return train::make_training_rows(*examples, flags.max_length, layout, pad, flags.seed);
}

// Optimizer steps: --max-steps, else --epochs passes over the rows.
Result<std::int64_t> total_steps(const FinetuneFlags& flags, std::int64_t rows) {
  if (flags.max_steps > 0) return flags.max_steps;
  if (!(flags.epochs > 0) || !std::isfinite(flags.epochs)) {
    return invalid_argument("--epochs must be above 0, or give --max-steps");
  }
  const double per_step = static_cast<double>(flags.batch_size * flags.grad_accum);
  return std::max<std::int64_t>(
      1, static_cast<std::int64_t>(std::ceil(flags.epochs * static_cast<double>(rows) / per_step)));
}

Result<train::TrainerOptions> trainer_options(const FinetuneFlags& flags, std::int64_t steps) {
  train::TrainerOptions options;
  KBIT_ASSIGN_OR_RETURN(options.optimizer, train::parse_optimizer(flags.optimizer));
  options.adamw.lr = flags.lr;
  options.adamw.weight_decay = flags.weight_decay;
  KBIT_ASSIGN_OR_RETURN(options.schedule.type, optim::parse_lr_schedule_type(flags.lr_scheduler));
  options.schedule.warmup_steps = flags.warmup_steps;
  options.schedule.total_steps = steps;
  options.max_grad_norm = flags.max_grad_norm;
  options.batch_size = flags.batch_size;
  options.grad_accum = flags.grad_accum;
  options.seed = flags.seed;
  return options;
}

// What the run trains: LoRA adapters on the loaded base, or with --full every weight.
Result<std::unique_ptr<train::TrainableModel>> trainable_model(const FinetuneFlags& flags,
                                                               const model::LlamaModel& base) {
  if (flags.full) {
    KBIT_ASSIGN_OR_RETURN(train::FullTrainingModel model,
                          train::FullTrainingModel::create(base, flags.model.model_dir));
    return std::unique_ptr<train::TrainableModel>(
        std::make_unique<train::FullTrainingModel>(std::move(model)));
  }
  KBIT_ASSIGN_OR_RETURN(train::LoraState state,
                        train::LoraState::create(base.config(), lora_config(flags), flags.seed));
  KBIT_ASSIGN_OR_RETURN(const DType lora_dtype, resolve_lora_dtype(flags.lora_dtype, base.device(),
                                                                   base.activation_dtype()));
  if (base.device().is_cuda()) {
    // A micro-batch of rows runs through the layers at once.
    KBIT_ASSIGN_OR_RETURN(
        train::CudaLoraTrainingModel model,
        train::CudaLoraTrainingModel::create(base, state, flags.batch_size, lora_dtype));
    return std::unique_ptr<train::TrainableModel>(
        std::make_unique<train::CudaLoraTrainingModel>(std::move(model)));
  }
  KBIT_ASSIGN_OR_RETURN(train::LoraTrainingModel model,
                        train::LoraTrainingModel::create(base, std::move(state)));
  return std::unique_ptr<train::TrainableModel>(
      std::make_unique<train::LoraTrainingModel>(std::move(model)));
}

// The memory the run has held at most: on a GPU the caching allocator's peak (weights, adapters,
// activations, scratch, optimizer state) plus paged optimizer state, which is managed memory the
// allocator does not see; on the CPU the process's peak resident set (0 where the system does
// not say).
std::size_t peak_memory_bytes(Device device, const train::TrainerOptions& options,
                              const train::Trainer& trainer) {
  if (!device.is_cuda()) return static_cast<std::size_t>(peak_resident_bytes().value_or(0));
  const bool paged = options.optimizer == train::OptimizerKind::kPagedAdamW8bit;
  return cuda_allocator_stats(device.index).peak_in_use +
         (paged ? trainer.optimizer_state_bytes() : 0);
}

nlohmann::json metrics_json(const train::StepMetrics& m, double seconds, std::size_t peak_memory) {
  return {{"step", m.step},           {"loss", m.loss},
          {"grad_norm", m.grad_norm}, {"learning_rate", m.lr},
          {"epoch", m.epoch},         {"tokens", m.tokens},
          {"seconds", seconds},       {"peak_memory_bytes", peak_memory}};
}

Status run(const FinetuneFlags& flags) {
  ModelFlags model_flags = flags.model;
  // Full fine-tuning runs on the CPU only for now: --device auto means the CPU there.
  if (flags.full && model_flags.device == "auto") model_flags.device = "cpu";
  KBIT_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(model_flags, true));
  KBIT_ASSIGN_OR_RETURN(const train::TrainingRows rows, training_rows(flags, loaded.tokenizer));
  KBIT_ASSIGN_OR_RETURN(const std::int64_t steps, total_steps(flags, rows.rows()));
  KBIT_ASSIGN_OR_RETURN(const train::TrainerOptions options, trainer_options(flags, steps));
  KBIT_ASSIGN_OR_RETURN(const std::unique_ptr<train::TrainableModel> model,
                        trainable_model(flags, loaded.model));
  KBIT_ASSIGN_OR_RETURN(train::Trainer trainer, train::Trainer::create(*model, rows, options));
  if (flags.resume) {
    const std::optional<std::filesystem::path> checkpoint = train::latest_checkpoint(flags.output);
    if (!checkpoint) {
      return invalid_argument("--resume: " + flags.output.string() +
                              " holds no checkpoint-N folder to resume from; run without --resume");
    }
    KBIT_RETURN_IF_ERROR(trainer.restore_checkpoint(*checkpoint));
    fmt::print(stderr, "finetune: resuming from {} (step {})\n", checkpoint->string(),
               trainer.steps_done());
  }
  std::ofstream metrics;
  if (!flags.metrics.empty()) {
    metrics.open(flags.metrics, flags.resume ? std::ios::app : std::ios::trunc);
    if (!metrics) return invalid_argument("--metrics " + flags.metrics.string() + ": cannot open");
  }
  std::size_t values = 0;
  const std::vector<train::TrainableParameter> parameters = model->parameters();
  for (const train::TrainableParameter& parameter : parameters)
    values += static_cast<std::size_t>(parameter.values.numel());
  fmt::print(stderr,
             "finetune: {} rows of {} tokens, {} steps of {} rows, {} trained tensors of {} "
             "values, {:.1f} MB of optimizer state\n",
             rows.rows(), rows.length, steps, flags.batch_size * flags.grad_accum,
             parameters.size(), values, static_cast<double>(trainer.optimizer_state_bytes()) / 1e6);
  ProgressBar bar("finetune", "steps");
  const auto start = std::chrono::steady_clock::now();
  std::int64_t steps_here = 0;  // this invocation's, for the rate
  while (trainer.steps_done() < steps) {
    KBIT_ASSIGN_OR_RETURN(const train::StepMetrics step, trainer.step());
    ++steps_here;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const bool report = step.step == 1 || step.step == steps || step.step % 10 == 0;
    const std::size_t peak_memory = metrics.is_open() || report
                                        ? peak_memory_bytes(loaded.model.device(), options, trainer)
                                        : 0;
    if (metrics.is_open()) metrics << metrics_json(step, seconds, peak_memory).dump() << std::endl;
    bar.update(step.step, steps);
    if (flags.save_every > 0 && step.step % flags.save_every == 0) {
      KBIT_RETURN_IF_ERROR(
          trainer.save_checkpoint(flags.output / ("checkpoint-" + std::to_string(step.step))));
    }
    if (report) {
      fmt::print(stderr,
                 "step {}/{}  loss {:.4f}  lr {:.3g}  grad norm {:.3f}  {:.0f} tok/s  peak {} "
                 "{:.2f} GiB\n",
                 step.step, steps, step.loss, step.lr, step.grad_norm,
                 static_cast<double>(steps_here * step.tokens) / seconds,
                 loaded.model.device().is_cuda() ? "device" : "RSS",
                 static_cast<double>(peak_memory) / (1 << 30));
    }
  }
  KBIT_RETURN_IF_ERROR(model->save(flags.output));
  fmt::print("saved the {} to {}\n", flags.full ? "model" : "adapter", flags.output.string());
  return ok_status();
}

}  // namespace

Action add_finetune_command(CLI::App& app) {
  auto flags = std::make_shared<FinetuneFlags>();
  CLI::App* command = app.add_subcommand(
      "finetune",
      "fine-tuning on a JSONL dataset (text, prompt/completion or messages): LoRA, saved as a "
      "PEFT adapter, or with --full every weight, saved as a model folder");
  add_model_flags(*command, flags->model);
  command->add_option("--data", flags->data, "the training data, JSON Lines")->required();
  command
      ->add_option("-o,--output", flags->output,
                   "the folder to write: the adapter (or with --full the model) and checkpoints")
      ->required();
  CLI::Option* full = command->add_flag(
      "--full", flags->full,
      "train every weight (f32 master weights) instead of LoRA adapters; saves the model in its "
      "checkpoint's dtype");
  const std::vector<CLI::Option*> lora_options = {
      command->add_option("--lora-r", flags->lora_r, "LoRA rank")->capture_default_str(),
      command->add_option("--lora-alpha", flags->lora_alpha, "LoRA alpha")->capture_default_str(),
      command->add_option("--lora-dropout", flags->lora_dropout, "dropout on the LoRA input")
          ->capture_default_str(),
      command->add_flag("--use-rslora", flags->use_rslora, "scale by alpha / sqrt(r)"),
      add_lora_dtype_flag(*command, flags->lora_dtype),
      command
          ->add_option("--target-modules", flags->target_modules,
                       "all-linear, or module names separated by commas (q_proj,v_proj)")
          ->delimiter(',')
          ->capture_default_str()};
  for (CLI::Option* option : lora_options) option->excludes(full);
  command->add_option("--optim", flags->optimizer, "adamw, adamw_8bit or paged_adamw_8bit")
      ->capture_default_str();
  command->add_option("--lr", flags->lr, "learning rate")->capture_default_str();
  command->add_option("--weight-decay", flags->weight_decay, "AdamW's decoupled weight decay")
      ->capture_default_str();
  command->add_option("--max-grad-norm", flags->max_grad_norm, "clip the gradient norm (0: off)")
      ->capture_default_str();
  command
      ->add_option("--lr-scheduler", flags->lr_scheduler,
                   "constant, constant_with_warmup, linear or cosine")
      ->capture_default_str();
  command->add_option("--warmup-steps", flags->warmup_steps, "")->capture_default_str();
  command->add_option("--epochs", flags->epochs, "passes over the data")->capture_default_str();
  command->add_option("--max-steps", flags->max_steps, "optimizer steps (overrides --epochs)");
  command->add_option("--batch-size", flags->batch_size, "rows per micro-batch")
      ->capture_default_str();
  command->add_option("--grad-accum", flags->grad_accum, "micro-batches per optimizer step")
      ->capture_default_str();
  command->add_option("--max-length", flags->max_length, "tokens per row")->capture_default_str();
  command
      ->add_option("--layout", flags->layout,
                   "packed (examples concatenated into rows) or padded (one per row)")
      ->capture_default_str();
  command->add_option("--save-every", flags->save_every,
                      "every N steps, save a checkpoint (the adapter or model, and the "
                      "trainer's state) as OUTPUT/checkpoint-N");
  command->add_flag("--resume", flags->resume,
                    "continue from the newest OUTPUT/checkpoint-N, with the same data and options");
  command->add_option("--seed", flags->seed, "LoRA initialisation and data order")
      ->capture_default_str();
  command->add_option("--metrics", flags->metrics, "write one JSON line of metrics per step");
  return [flags] { return run(*flags); };
}

}  // namespace kbit::cli
