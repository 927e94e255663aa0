#include "kbit/train/lora_trainer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

#include <charconv>
#include <cstring>
#include <map>
#include <system_error>

#include "kbit/core/random.h"
#include "kbit/io/peft_adapter.h"
#include "kbit/io/safetensors.h"
#include "kbit/io/safetensors_writer.h"
#include "kbit/optim/adamw_parameter_state.h"
#include "kbit/optim/clip_grad_norm.h"

namespace kbit::train {
namespace {

// A one-dimensional view of a vector's elements.
TensorView view_of(std::vector<float>& values) {
  return TensorView(values.data(), DType::kF32, Shape{static_cast<std::int64_t>(values.size())});
}

Status check_options(const TrainerOptions& options, const TrainingRows& rows) {
  KBIT_RETURN_IF_ERROR(optim::check_adamw_hyperparameters(options.adamw));
  KBIT_RETURN_IF_ERROR(optim::check_lr_schedule(options.schedule));
  if (!(options.max_grad_norm >= 0) || !std::isfinite(options.max_grad_norm)) {
    return invalid_argument("max_grad_norm must be finite and >= 0 (0: no clipping), got " +
                            std::to_string(options.max_grad_norm));
  }
  if (options.batch_size < 1 || options.grad_accum < 1) {
    return invalid_argument("batch size and gradient accumulation must be at least 1, got " +
                            std::to_string(options.batch_size) + " and " +
                            std::to_string(options.grad_accum));
  }
  if (rows.rows() < 1) return invalid_argument("no training rows");
  return ok_status();
}

constexpr const char* kTrainerStateFile = "trainer_state.safetensors";
constexpr std::string_view kCheckpointPrefix = "checkpoint-";

const char* optimizer_name(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kAdamW:
      return "adamw";
    case OptimizerKind::kAdamW8bit:
      return "adamw_8bit";
    case OptimizerKind::kPagedAdamW8bit:
      return "paged_adamw_8bit";
  }
  return "?";
}

// The whole of `text` as a decimal integer, or nullopt (empty, a sign or other characters).
std::optional<std::int64_t> parse_integer(std::string_view text) {
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// N of a folder named checkpoint-N, or nullopt.
std::optional<std::int64_t> checkpoint_number(std::string_view name) {
  if (!name.starts_with(kCheckpointPrefix)) return std::nullopt;
  return parse_integer(name.substr(kCheckpointPrefix.size()));
}

// A metadata value as an integer, or kInvalidArgument naming the file and the key.
Result<std::int64_t> metadata_integer(const io::SafetensorsFile& file, const std::string& key) {
  const auto it = file.metadata().find(key);
  const std::optional<std::int64_t> value =
      it != file.metadata().end() ? parse_integer(it->second) : std::nullopt;
  if (value) return *value;
  return invalid_argument(file.path().string() + ": metadata '" + key +
                          "' is missing or not an integer; is this a checkpoint of kbit finetune?");
}

}  // namespace

std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& output_dir) {
  std::optional<std::filesystem::path> latest;
  std::int64_t latest_number = -1;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(output_dir, error)) {
    const std::optional<std::int64_t> number = checkpoint_number(entry.path().filename().string());
    if (number && *number > latest_number && entry.is_directory()) {
      latest_number = *number;
      latest = entry.path();
    }
  }
  return latest;
}

Result<OptimizerKind> parse_optimizer(std::string_view name) {
  if (name == "adamw" || name == "adamw_torch") return OptimizerKind::kAdamW;
  if (name == "adamw_8bit" || name == "adamw_bnb_8bit") return OptimizerKind::kAdamW8bit;
  if (name == "paged_adamw_8bit") return OptimizerKind::kPagedAdamW8bit;
  return invalid_argument("unknown optimizer '" + std::string(name) +
                          "'; kbit has adamw, adamw_8bit and paged_adamw_8bit");
}

struct LoraTrainer::State {
  LoraTrainingModel* model;
  const TrainingRows* rows;
  TrainerOptions options;
  std::vector<optim::AdamWParameterState> parameters;  // per module: A, then B
  std::int64_t steps_done = 0;
  std::int64_t next_row = 0;
  std::int64_t epoch = 0;

  std::map<std::string, std::string> run_identity() const;
  std::string tensor_name(std::size_t p, const std::string& role) const;
};

LoraTrainer::LoraTrainer(std::unique_ptr<State> state) : state_(std::move(state)) {}
LoraTrainer::LoraTrainer(LoraTrainer&&) noexcept = default;
LoraTrainer& LoraTrainer::operator=(LoraTrainer&&) noexcept = default;
LoraTrainer::~LoraTrainer() = default;

Result<LoraTrainer> LoraTrainer::create(LoraTrainingModel& model, const TrainingRows& rows,
                                        const TrainerOptions& options) {
  KBIT_RETURN_IF_ERROR(check_options(options, rows));
  auto state = std::make_unique<State>(State{&model, &rows, options, {}, 0, 0, 0});
  const bool eight_bit = options.optimizer != OptimizerKind::kAdamW;
  for (const LoraModule& module : model.state().modules()) {
    for (const std::size_t n : {module.a.size(), module.b.size()}) {
      const auto count = static_cast<std::int64_t>(n);
      state->parameters.emplace_back(count, eight_bit);
    }
  }
  return LoraTrainer(std::move(state));
}

std::int64_t LoraTrainer::steps_done() const {
  return state_->steps_done;
}

// What a checkpoint must share with the run that restores it.
std::map<std::string, std::string> LoraTrainer::State::run_identity() const {
  return {{"optimizer", optimizer_name(options.optimizer)},
          {"rows", std::to_string(rows->rows())},
          {"row_length", std::to_string(rows->length)},
          {"rows_per_step", std::to_string(options.batch_size * options.grad_accum)},
          {"lora_modules", std::to_string(model->state().modules().size())}};
}

// trainer_state.safetensors' name of state tensor `role` of parameter p (module p / 2's A or B).
std::string LoraTrainer::State::tensor_name(std::size_t p, const std::string& role) const {
  return model->state().modules()[p / 2].name + (p % 2 == 0 ? ".lora_A." : ".lora_B.") + role;
}

Status LoraTrainer::save_checkpoint(const std::filesystem::path& dir) const {
  State& s = *state_;
  std::error_code error;
  if (std::filesystem::exists(dir, error)) {
    return invalid_argument("checkpoint " + dir.string() +
                            " exists already; save into a new folder");
  }
  std::filesystem::path temporary = dir;
  temporary += ".tmp-" + std::to_string(::getpid());
  std::filesystem::remove_all(temporary, error);  // left by an interrupted save of this process
  const auto fail = [&](const Status& status) {
    std::filesystem::remove_all(temporary, error);
    return status;
  };
  if (Status saved = s.model->state().save(temporary); !saved.ok()) return fail(saved);
  std::vector<io::NamedTensor> tensors;
  for (std::size_t p = 0; p < s.parameters.size(); ++p) {
    for (auto& [role, tensor] : s.parameters[p].tensors()) {
      tensors.push_back({s.tensor_name(p, role), tensor});
    }
  }
  std::map<std::string, std::string> metadata = s.run_identity();
  metadata["step"] = std::to_string(s.steps_done);
  metadata["next_row"] = std::to_string(s.next_row);
  metadata["epoch"] = std::to_string(s.epoch);
  metadata["optimizer_step"] =
      std::to_string(s.parameters.empty() ? 0 : s.parameters.front().step());
  io::sort_in_reference_order(tensors);
  if (Status written = io::write_safetensors(temporary / kTrainerStateFile, tensors, metadata);
      !written.ok()) {
    return fail(written);
  }
  std::filesystem::rename(temporary, dir, error);
  if (error) {
    return fail(invalid_argument("checkpoint " + dir.string() + ": cannot rename " +
                                 temporary.string() + " into place: " + error.message()));
  }
  return ok_status();
}

Status LoraTrainer::restore_checkpoint(const std::filesystem::path& dir) {
  State& s = *state_;
  KBIT_ASSIGN_OR_RETURN(const io::SafetensorsFile file,
                        io::SafetensorsFile::open(dir / kTrainerStateFile));
  for (const auto& [key, value] : s.run_identity()) {
    const auto it = file.metadata().find(key);
    const std::string saved = it == file.metadata().end() ? "nothing" : it->second;
    if (saved != value) {
      return invalid_argument(file.path().string() + ": the checkpoint's " + key + " is " + saved +
                              " but this run's is " + value +
                              "; resume with the data and options the checkpoint was made with");
    }
  }
  KBIT_ASSIGN_OR_RETURN(const std::int64_t step, metadata_integer(file, "step"));
  KBIT_ASSIGN_OR_RETURN(const std::int64_t next_row, metadata_integer(file, "next_row"));
  KBIT_ASSIGN_OR_RETURN(const std::int64_t epoch, metadata_integer(file, "epoch"));
  KBIT_ASSIGN_OR_RETURN(const std::int64_t optimizer_step,
                        metadata_integer(file, "optimizer_step"));
  if (step < 0 || next_row < 0 || next_row >= s.rows->rows() || epoch < 0 || optimizer_step < 0 ||
      optimizer_step > step) {
    return invalid_argument(file.path().string() +
                            ": the step counts in its metadata are "
                            "inconsistent; the checkpoint is damaged");
  }
  // Every tensor checked before anything is copied.
  KBIT_ASSIGN_OR_RETURN(const io::PeftAdapter adapter, io::PeftAdapter::open(dir));
  std::vector<io::LoraWeights> weights;
  for (const LoraModule& module : s.model->state().modules()) {
    KBIT_ASSIGN_OR_RETURN(io::LoraWeights w,
                          adapter.weights(module.name, module.out_features, module.in_features));
    if (w.a.dtype() != DType::kF32 || w.b.dtype() != DType::kF32) {
      return invalid_argument(dir.string() + ": module '" + module.name +
                              "' is not stored in f32 as kbit saves checkpoints");
    }
    weights.push_back(w);
  }
  std::vector<std::pair<TensorView, TensorView>> copies;  // (destination, source)
  for (std::size_t p = 0; p < s.parameters.size(); ++p) {
    for (auto& [role, tensor] : s.parameters[p].tensors()) {
      const std::string name = s.tensor_name(p, role);
      KBIT_ASSIGN_OR_RETURN(const TensorView saved, file.tensor(name));
      if (saved.dtype() != tensor.dtype() || saved.numel() != tensor.numel()) {
        return invalid_argument(file.path().string() + ": tensor '" + name + "' is " +
                                saved.describe() + ", this run's is " + tensor.describe());
      }
      copies.emplace_back(tensor, saved);
    }
  }
  for (std::size_t m = 0; m < weights.size(); ++m) {
    LoraModule& module = s.model->state().modules()[m];
    std::copy_n(weights[m].a.data_as<const float>(), module.a.size(), module.a.begin());
    std::copy_n(weights[m].b.data_as<const float>(), module.b.size(), module.b.begin());
  }
  for (auto& [destination, source] : copies) {
    std::memcpy(destination.data(), source.data(), source.nbytes());
  }
  for (optim::AdamWParameterState& parameter : s.parameters) parameter.set_step(optimizer_step);
  s.steps_done = step;
  s.next_row = next_row;
  s.epoch = epoch;
  return ok_status();
}

std::size_t LoraTrainer::optimizer_state_bytes() const {
  std::int64_t bytes = 0;
  for (const optim::AdamWParameterState& parameter : state_->parameters) bytes += parameter.bytes();
  return static_cast<std::size_t>(bytes);
}

Result<StepMetrics> LoraTrainer::step() {
  State& s = *state_;
  const TrainingRows& rows = *s.rows;
  const std::int64_t count = s.options.batch_size * s.options.grad_accum;
  const auto length = static_cast<std::size_t>(rows.length);
  StepMetrics metrics;
  metrics.step = s.steps_done + 1;
  metrics.epoch = s.epoch;
  metrics.tokens = count * rows.length;
  std::vector<std::int32_t> ids;
  std::vector<std::int32_t> labels;
  for (std::int64_t r = 0; r < count; ++r) {
    const auto first = static_cast<std::size_t>(s.next_row) * length;
    ids.insert(ids.end(), rows.input_ids.begin() + first, rows.input_ids.begin() + first + length);
    labels.insert(labels.end(), rows.labels.begin() + first, rows.labels.begin() + first + length);
    if (++s.next_row == rows.rows()) {
      s.next_row = 0;
      ++s.epoch;
    }
  }
  LoraState& lora = s.model->state();
  lora.zero_gradients();
  s.model->set_dropout_seed(random_bits(s.options.seed, static_cast<std::uint64_t>(s.steps_done)));
  KBIT_ASSIGN_OR_RETURN(metrics.loss, s.model->loss_and_gradients(ids, labels, count));

  std::vector<TensorView> gradients;
  for (LoraModule& module : lora.modules()) {
    gradients.push_back(view_of(module.grad_a));
    gradients.push_back(view_of(module.grad_b));
  }
  const float max_norm =
      s.options.max_grad_norm > 0 ? s.options.max_grad_norm : std::numeric_limits<float>::max();
  KBIT_ASSIGN_OR_RETURN(metrics.grad_norm, optim::clip_grad_norm(gradients, max_norm));
  metrics.lr = s.options.adamw.lr * optim::lr_multiplier(s.options.schedule, s.steps_done);
  ++s.steps_done;
  if (!std::isfinite(metrics.grad_norm)) return metrics;  // skipped, as the Trainer does

  optim::AdamWHyperparameters adamw = s.options.adamw;
  adamw.lr = static_cast<float>(metrics.lr);
  std::size_t p = 0;
  for (LoraModule& module : lora.modules()) {
    KBIT_RETURN_IF_ERROR(s.parameters[p++].apply(adamw, view_of(module.a), view_of(module.grad_a)));
    KBIT_RETURN_IF_ERROR(s.parameters[p++].apply(adamw, view_of(module.b), view_of(module.grad_b)));
  }
  return metrics;
}

}  // namespace kbit::train
