#include "kbit/train/lora_trainer.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kbit/optim/clip_grad_norm.h"

namespace kbit::train {
namespace {

// The optimizer state of one parameter (a lora_A or lora_B) and its storage.
struct ParameterState {
  std::vector<float> state1, state2;         // 32-bit states
  std::vector<std::uint8_t> codes1, codes2;  // 8-bit states
  std::vector<float> absmax1, absmax2;
  std::int64_t step = 0;
  bool eight_bit = false;

  ParameterState(std::int64_t n, bool use_8bit) : eight_bit(use_8bit) {
    const auto size = static_cast<std::size_t>(n);
    if (eight_bit) {
      codes1.assign(size, 0);
      codes2.assign(size, 0);
      absmax1.assign(static_cast<std::size_t>(optim::adamw8bit_block_count(n)), 0.0f);
      absmax2.assign(absmax1.size(), 0.0f);
    } else {
      state1.assign(size, 0.0f);
      state2.assign(size, 0.0f);
    }
  }

  std::size_t bytes() const {
    return (state1.size() + state2.size() + absmax1.size() + absmax2.size()) * sizeof(float) +
           codes1.size() + codes2.size();
  }

  Status apply(const optim::AdamWHyperparameters& adamw, std::vector<float>& param,
               std::vector<float>& grad) {
    const Shape shape{static_cast<std::int64_t>(param.size())};
    const TensorView p(param.data(), DType::kF32, shape);
    const TensorView g(grad.data(), DType::kF32, shape);
    const auto f32 = [](std::vector<float>& v) {
      return TensorView(v.data(), DType::kF32, Shape{static_cast<std::int64_t>(v.size())});
    };
    const auto u8 = [](std::vector<std::uint8_t>& v) {
      return TensorView(v.data(), DType::kU8, Shape{static_cast<std::int64_t>(v.size())});
    };
    if (eight_bit) {
      optim::AdamW8bitState state{u8(codes1), u8(codes2), f32(absmax1), f32(absmax2), step};
      KBIT_RETURN_IF_ERROR(optim::adamw8bit_step(adamw, p, g, &state));
      step = state.step;
    } else {
      optim::AdamW32bitState state{f32(state1), f32(state2), step};
      KBIT_RETURN_IF_ERROR(optim::adamw32bit_step(adamw, p, g, &state));
      step = state.step;
    }
    return ok_status();
  }
};

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

}  // namespace

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
  std::vector<ParameterState> parameters;  // per module: A, then B
  std::int64_t steps_done = 0;
  std::int64_t next_row = 0;
  std::int64_t epoch = 0;
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
      state->parameters.emplace_back(count, eight_bit && count >= optim::kMin8bitStateSize);
    }
  }
  return LoraTrainer(std::move(state));
}

std::size_t LoraTrainer::optimizer_state_bytes() const {
  std::size_t bytes = 0;
  for (const ParameterState& parameter : state_->parameters) bytes += parameter.bytes();
  return bytes;
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
  KBIT_ASSIGN_OR_RETURN(metrics.loss, s.model->loss_and_gradients(ids, labels, count));

  std::vector<TensorView> gradients;
  for (LoraModule& module : lora.modules()) {
    for (std::vector<float>* grad : {&module.grad_a, &module.grad_b}) {
      gradients.emplace_back(grad->data(), DType::kF32,
                             Shape{static_cast<std::int64_t>(grad->size())});
    }
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
    KBIT_RETURN_IF_ERROR(s.parameters[p++].apply(adamw, module.a, module.grad_a));
    KBIT_RETURN_IF_ERROR(s.parameters[p++].apply(adamw, module.b, module.grad_b));
  }
  return metrics;
}

}  // namespace kbit::train
