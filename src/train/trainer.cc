#include "kbit/train/trainer.h"

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
#include "kbit/io/safetensors.h"
#include "kbit/io/safetensors_writer.h"
#include "kbit/optim/adamw_parameter_state.h"
#include "kbit/optim/clip_grad_norm.h"

namespace kbit::train {
namespace {

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

struct Trainer::State {
  TrainableModel* model;
  const TrainingRows* rows;
  TrainerOptions options;
  std::vector<TrainableParameter> parameters;         // the model's, in its order
  std::vector<optim::AdamWParameterState> optimizer;  // one per parameter
  std::int64_t steps_done = 0;
  std::int64_t next_row = 0;
  std::int64_t epoch = 0;

  std::map<std::string, std::string> run_identity() const;
};

Trainer::Trainer(std::unique_ptr<State> state) : state_(std::move(state)) {}
Trainer::Trainer(Trainer&&) noexcept = default;
Trainer& Trainer::operator=(Trainer&&) noexcept = default;
Trainer::~Trainer() = default;

Result<Trainer> Trainer::create(TrainableModel& model, const TrainingRows& rows,
                                const TrainerOptions& options) {
  KBIT_RETURN_IF_ERROR(check_options(options, rows));
  auto state = std::make_unique<State>(State{&model, &rows, options, model.parameters(), {}});
  const bool eight_bit = options.optimizer != OptimizerKind::kAdamW;
  const bool paged = options.optimizer == OptimizerKind::kPagedAdamW8bit;
  for (const TrainableParameter& parameter : state->parameters) {
    KBIT_ASSIGN_OR_RETURN(optim::AdamWParameterState optimizer_state,
                          optim::AdamWParameterState::create(parameter.values.numel(), eight_bit,
                                                             {parameter.values.device(), paged}));
    state->optimizer.push_back(std::move(optimizer_state));
  }
  return Trainer(std::move(state));
}

std::int64_t Trainer::steps_done() const {
  return state_->steps_done;
}

// What a checkpoint must share with the run that restores it.
std::map<std::string, std::string> Trainer::State::run_identity() const {
  return {{"optimizer", optimizer_name(options.optimizer)},
          {"rows", std::to_string(rows->rows())},
          {"row_length", std::to_string(rows->length)},
          {"rows_per_step", std::to_string(options.batch_size * options.grad_accum)},
          {"parameters", std::to_string(parameters.size())}};
}

Status Trainer::save_checkpoint(const std::filesystem::path& dir) const {
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
  if (Status saved = s.model->save(temporary); !saved.ok()) return fail(saved);
  std::vector<io::NamedTensor> tensors;
  std::vector<Tensor> host_copies;  // of the tensors on a device, for the writer
  const auto add = [&](const std::string& name, const TensorView& tensor) -> Status {
    if (tensor.device().is_cpu()) {
      tensors.push_back({name, tensor});
      return ok_status();
    }
    KBIT_ASSIGN_OR_RETURN(Tensor copy, Tensor::empty(tensor.shape(), tensor.dtype()));
    KBIT_RETURN_IF_ERROR(copy_tensor(tensor, copy.view()));
    tensors.push_back({name, copy.view()});
    host_copies.push_back(std::move(copy));
    return ok_status();
  };
  for (std::size_t p = 0; p < s.parameters.size(); ++p) {
    const std::string& name = s.parameters[p].name;
    Status added = add(name, s.parameters[p].values);
    for (auto& [role, tensor] : s.optimizer[p].tensors()) {
      if (added.ok()) added = add(name + "." + role, tensor);
    }
    if (!added.ok()) return fail(added);
  }
  std::map<std::string, std::string> metadata = s.run_identity();
  metadata["step"] = std::to_string(s.steps_done);
  metadata["next_row"] = std::to_string(s.next_row);
  metadata["epoch"] = std::to_string(s.epoch);
  metadata["optimizer_step"] = std::to_string(s.optimizer.empty() ? 0 : s.optimizer.front().step());
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

Status Trainer::restore_checkpoint(const std::filesystem::path& dir) {
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
  std::vector<std::pair<TensorView, TensorView>> copies;  // (destination, source)
  const auto expect = [&](const std::string& name, const TensorView& destination) -> Status {
    KBIT_ASSIGN_OR_RETURN(const TensorView saved, file.tensor(name));
    if (saved.dtype() != destination.dtype() || saved.numel() != destination.numel()) {
      return invalid_argument(file.path().string() + ": tensor '" + name + "' is " +
                              saved.describe() + ", this run's is " + destination.describe());
    }
    copies.emplace_back(destination, saved);
    return ok_status();
  };
  for (std::size_t p = 0; p < s.parameters.size(); ++p) {
    const std::string& name = s.parameters[p].name;
    KBIT_RETURN_IF_ERROR(expect(name, s.parameters[p].values));
    for (auto& [role, tensor] : s.optimizer[p].tensors()) {
      KBIT_RETURN_IF_ERROR(expect(name + "." + role, tensor));
    }
  }
  for (auto& [destination, source] : copies) {
    KBIT_RETURN_IF_ERROR(
        copy_tensor(TensorView(source.data(), source.dtype(), destination.shape()), destination));
  }
  for (optim::AdamWParameterState& state : s.optimizer) state.set_step(optimizer_step);
  s.steps_done = step;
  s.next_row = next_row;
  s.epoch = epoch;
  return ok_status();
}

std::size_t Trainer::optimizer_state_bytes() const {
  std::int64_t bytes = 0;
  for (const optim::AdamWParameterState& state : state_->optimizer) bytes += state.bytes();
  return static_cast<std::size_t>(bytes);
}

Result<StepMetrics> Trainer::step() {
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
  for (const TrainableParameter& parameter : s.parameters) {
    KBIT_RETURN_IF_ERROR(zero_tensor(parameter.gradient));
  }
  s.model->set_dropout_seed(random_bits(s.options.seed, static_cast<std::uint64_t>(s.steps_done)));
  KBIT_ASSIGN_OR_RETURN(metrics.loss, s.model->loss_and_gradients(ids, labels, count));

  std::vector<TensorView> gradients;
  for (const TrainableParameter& parameter : s.parameters) gradients.push_back(parameter.gradient);
  const float max_norm =
      s.options.max_grad_norm > 0 ? s.options.max_grad_norm : std::numeric_limits<float>::max();
  KBIT_ASSIGN_OR_RETURN(metrics.grad_norm, optim::clip_grad_norm(gradients, max_norm));
  metrics.lr = s.options.adamw.lr * optim::lr_multiplier(s.options.schedule, s.steps_done);
  ++s.steps_done;
  if (!std::isfinite(metrics.grad_norm)) return metrics;  // skipped, as the Trainer does

  optim::AdamWHyperparameters adamw = s.options.adamw;
  adamw.lr = static_cast<float>(metrics.lr);
  for (std::size_t p = 0; p < s.parameters.size(); ++p) {
    const TrainableParameter& parameter = s.parameters[p];
    KBIT_RETURN_IF_ERROR(s.optimizer[p].apply(adamw, parameter.values, parameter.gradient));
  }
  // A device's steps are queued on its default stream: done before the model computes again.
  if (!s.parameters.empty())
    KBIT_RETURN_IF_ERROR(synchronize(s.parameters.front().values.device()));
  return metrics;
}

}  // namespace kbit::train
