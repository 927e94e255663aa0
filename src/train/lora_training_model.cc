#include "kbit/train/lora_training_model.h"

#include <algorithm>
#include <string>

#include "model/cpu_llama.h"
#include "train/causal_lm_backward.h"

namespace kbit::train {
namespace {

Status check_module_fits(const LoraModule& module, const model::LinearModule& linear) {
  const auto a_size = static_cast<std::size_t>(module.rank * module.in_features);
  const auto b_size = static_cast<std::size_t>(module.out_features * module.rank);
  if (module.rank < 1 || module.in_features != linear.in_features ||
      module.out_features != linear.out_features || module.a.size() != a_size ||
      module.grad_a.size() != a_size || module.b.size() != b_size ||
      module.grad_b.size() != b_size) {
    return invalid_argument("LoRA module '" + module.name + "' has A " +
                            Shape{module.rank, module.in_features}.to_string() + " and B " +
                            Shape{module.out_features, module.rank}.to_string() + " (" +
                            std::to_string(module.a.size()) + " and " +
                            std::to_string(module.b.size()) +
                            " values), but the model's Linear is " +
                            Shape{linear.out_features, linear.in_features}.to_string() +
                            ": the state was made for another model");
  }
  return ok_status();
}

}  // namespace

LoraTrainingModel::LoraTrainingModel(const model::LlamaModel& base, LoraState state)
    : base_(&base), state_(std::move(state)) {}
LoraTrainingModel::LoraTrainingModel(LoraTrainingModel&&) noexcept = default;
LoraTrainingModel& LoraTrainingModel::operator=(LoraTrainingModel&&) noexcept = default;
LoraTrainingModel::~LoraTrainingModel() = default;

Result<LoraTrainingModel> LoraTrainingModel::create(const model::LlamaModel& base,
                                                    LoraState state) {
  KBIT_RETURN_IF_ERROR(check_trainable_model(model::cpu_llama(base)));
  const model::LlamaConfig& config = base.config();
  const std::vector<model::LinearModule> linears = model::linear_modules(config);
  std::vector<std::vector<int>> module_of_linear(static_cast<std::size_t>(config.num_hidden_layers),
                                                 std::vector<int>(model::kLinearsPerLayer, -1));
  const std::span<const LoraModule> modules = state.modules();
  for (std::size_t i = 0; i < modules.size(); ++i) {
    // Every Linear but the last (lm_head) belongs to a decoder layer.
    const auto found = std::find_if(
        linears.begin(), linears.end() - 1,
        [&](const model::LinearModule& linear) { return linear.name == modules[i].name; });
    if (found == linears.end() - 1) {
      return invalid_argument("LoRA module '" + modules[i].name +
                              "' is not a Linear of the model's decoder layers; the state was "
                              "made for another model");
    }
    KBIT_RETURN_IF_ERROR(check_module_fits(modules[i], *found));
    const auto index = found - linears.begin();
    module_of_linear[static_cast<std::size_t>(index / model::kLinearsPerLayer)]
                    [static_cast<std::size_t>(index % model::kLinearsPerLayer)] =
                        static_cast<int>(i);
  }
  LoraTrainingModel model(base, std::move(state));
  model.module_of_linear_ = std::move(module_of_linear);
  return model;
}

std::vector<TrainableParameter> LoraTrainingModel::parameters() {
  std::vector<TrainableParameter> parameters;
  for (LoraModule& module : state_.modules()) {
    parameters.push_back({module.name + ".lora_A", module.a, module.grad_a});
    parameters.push_back({module.name + ".lora_B", module.b, module.grad_b});
  }
  return parameters;
}

Result<double> LoraTrainingModel::loss_and_gradients(std::span<const std::int32_t> input_ids,
                                                     std::span<const std::int32_t> labels,
                                                     std::int64_t batch) {
  KBIT_RETURN_IF_ERROR(check_training_batch(base_->config(), input_ids, labels, batch));
  TrainedParts parts;
  parts.lora_scaling = state_.scaling();
  parts.lora_dropout = state_.config().lora_dropout;
  for (const std::vector<int>& indices : module_of_linear_) {
    std::array<LoraModule*, model::kLinearsPerLayer> modules{};
    for (int j = 0; j < model::kLinearsPerLayer; ++j) {
      const int index = indices[static_cast<std::size_t>(j)];
      if (index >= 0) modules[j] = &state_.modules()[static_cast<std::size_t>(index)];
    }
    parts.lora.push_back(modules);
  }
  return causal_lm_loss_and_gradients(*model::cpu_llama(*base_), parts, input_ids, labels, batch,
                                      dropout_seed_);
}

}  // namespace kbit::train
