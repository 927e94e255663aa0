// kbit finetune-bench: the speed and memory of QLoRA fine-tuning steps, as transformers' Trainer
// with PEFT is measured: LoRA on every Linear of a model (a checkpoint, or random weights of a
// config's shape), rows of random tokens, each optimizer step one micro-batch of `--batch` rows of
// `--length` tokens through the forward, the backward with per-layer gradient checkpointing and
// the optimizer. Reports the median tokens per second of the timed steps (after one warm-up step)
// and the peak device memory.
#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_flags.h"
#include "kbit/core/allocator.h"
#include "kbit/train/cuda_lora_training_model.h"
#include "kbit/train/trainer.h"

namespace kbit::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct FinetuneBenchFlags {
  BenchModelFlags source;
  std::int64_t batch = 1;
  std::int64_t length = 2048;
  std::int64_t lora_r = 16;
  double lora_alpha = 32;
  double lora_dropout = 0;
  std::string lora_dtype = "auto";
  std::string optimizer = "paged_adamw_8bit";
  int steps = 5;
  std::uint64_t seed = 0;
  bool json = false;
};

// Rows of random tokens, every position labelled, enough for the warm-up and timed steps.
train::TrainingRows random_rows(const FinetuneBenchFlags& flags, std::int64_t vocab) {
  train::TrainingRows rows;
  rows.length = flags.length;
  std::mt19937_64 random(flags.seed);
  const std::int64_t count = flags.batch * (flags.steps + 1) * flags.length;
  for (std::int64_t i = 0; i < count; ++i) {
    rows.input_ids.push_back(
        static_cast<std::int32_t>(random() % static_cast<std::uint64_t>(vocab)));
  }
  rows.labels = rows.input_ids;
  return rows;
}

Status run(const FinetuneBenchFlags& flags) {
  if (flags.batch < 1 || flags.length < 2 || flags.steps < 1) {
    return invalid_argument("--batch and --steps must be at least 1, --length at least 2");
  }
  KBIT_ASSIGN_OR_RETURN(model::LlamaLoadOptions options, model_load_options(flags.source.model));
  if (!options.device.is_cuda()) {
    return invalid_argument("finetune-bench measures a GPU: use --device cuda");
  }
  options.rounded_absmax = false;  // what only decoding uses (LlamaLoadOptions)
  KBIT_ASSIGN_OR_RETURN(const model::LlamaModel model,
                        load_bench_model(flags.source, options, flags.seed));
  io::PeftLoraConfig lora;
  lora.r = flags.lora_r;
  lora.lora_alpha = flags.lora_alpha;
  lora.lora_dropout = flags.lora_dropout;
  lora.all_linear = true;
  KBIT_ASSIGN_OR_RETURN(const train::LoraState state,
                        train::LoraState::create(model.config(), lora, flags.seed));
  const int device = model.device().index;
  cuda_allocator_reset_peak(device);
  KBIT_ASSIGN_OR_RETURN(const DType lora_dtype, resolve_lora_dtype(flags.lora_dtype, model.device(),
                                                                   model.activation_dtype()));
  KBIT_ASSIGN_OR_RETURN(
      train::CudaLoraTrainingModel trained,
      train::CudaLoraTrainingModel::create(model, state, flags.batch, lora_dtype));
  const train::TrainingRows rows = random_rows(flags, model.config().vocab_size);
  train::TrainerOptions trainer_options;
  KBIT_ASSIGN_OR_RETURN(trainer_options.optimizer, train::parse_optimizer(flags.optimizer));
  trainer_options.schedule.total_steps = flags.steps + 1;
  trainer_options.batch_size = flags.batch;
  KBIT_ASSIGN_OR_RETURN(train::Trainer trainer,
                        train::Trainer::create(trained, rows, trainer_options));
  std::vector<double> seconds;
  double last_loss = 0;
  for (int step = 0; step <= flags.steps; ++step) {
    const auto start = Clock::now();
    KBIT_ASSIGN_OR_RETURN(const train::StepMetrics metrics, trainer.step());
    if (step > 0) seconds.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    last_loss = metrics.loss;
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  const double tokens_per_second = static_cast<double>(flags.batch * flags.length) / median;
  // Device memory: the caching allocator's peak (weights, adapters, activations, scratch) and the
  // optimizer state, whose paged part is managed memory the allocator does not see.
  const std::size_t peak = cuda_allocator_stats(device).peak_in_use;
  const std::size_t optimizer = trainer.optimizer_state_bytes();
  KBIT_ASSIGN_OR_RETURN(const DeviceMemory memory, device_memory(model.device()));
  const std::size_t in_use = memory.total - memory.free;
  const nlohmann::json out = {{"model", bench_model_source(flags.source)},
                              {"device", model.device().to_string()},
                              {"batch", flags.batch},
                              {"length", flags.length},
                              {"lora_r", flags.lora_r},
                              {"lora_dtype", dtype_name(lora_dtype)},
                              {"optimizer", flags.optimizer},
                              {"step_seconds", seconds},
                              {"tokens_per_second", tokens_per_second},
                              {"last_loss", last_loss},
                              {"allocator_peak_bytes", peak},
                              {"optimizer_state_bytes", optimizer},
                              {"device_in_use_bytes", in_use}};
  if (flags.json) {
    fmt::print("{}\n", out.dump());
    return ok_status();
  }
  fmt::print(
      "{} x {} tokens: {:.1f} tok/s (median step {:.3f} s), peak {:.2f} GiB allocated + {:.2f} "
      "GiB optimizer state; {:.2f} GiB of the device in use after the run\n",
      flags.batch, flags.length, tokens_per_second, median, static_cast<double>(peak) / (1 << 30),
      static_cast<double>(optimizer) / (1 << 30), static_cast<double>(in_use) / (1 << 30));
  return ok_status();
}

}  // namespace

Action add_finetune_bench_command(CLI::App& app) {
  auto flags = std::make_shared<FinetuneBenchFlags>();
  CLI::App* command = app.add_subcommand(
      "finetune-bench", "QLoRA fine-tuning speed and peak device memory (LoRA on every Linear)");
  add_bench_model_flags(*command, flags->source);
  command->add_option("-b,--batch", flags->batch, "rows per step")->capture_default_str();
  command->add_option("-l,--length", flags->length, "tokens per row")->capture_default_str();
  command->add_option("--lora-r", flags->lora_r, "LoRA rank")->capture_default_str();
  command->add_option("--lora-alpha", flags->lora_alpha, "LoRA alpha")->capture_default_str();
  add_lora_dtype_flag(*command, flags->lora_dtype);
  command->add_option("--lora-dropout", flags->lora_dropout, "dropout on the LoRA input")
      ->capture_default_str();
  command->add_option("--optim", flags->optimizer, "adamw, adamw_8bit or paged_adamw_8bit")
      ->capture_default_str();
  command->add_option("--steps", flags->steps, "timed steps (after one warm-up)")
      ->capture_default_str();
  command->add_option("--seed", flags->seed, "seed of the tokens, weights and adapters")
      ->capture_default_str();
  command->add_flag("--json", flags->json, "print one JSON object");
  return [flags] { return run(*flags); };
}

}  // namespace kbit::cli
