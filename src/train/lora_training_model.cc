#include "kbit/train/lora_training_model.h"

#include <algorithm>
#include <string>

#include "model/cpu_llama.h"
#include "train/causal_lm_backward.h"
#include "train/lora_placement.h"

namespace kbit::train {

LoraTrainingModel::LoraTrainingModel(const model::LlamaModel& base, LoraState state)
    : base_(&base), state_(std::move(state)) {}
LoraTrainingModel::LoraTrainingModel(LoraTrainingModel&&) noexcept = default;
LoraTrainingModel& LoraTrainingModel::operator=(LoraTrainingModel&&) noexcept = default;
LoraTrainingModel::~LoraTrainingModel() = default;

Result<LoraTrainingModel> LoraTrainingModel::create(const model::LlamaModel& base,
                                                    LoraState state) {
  KBIT_RETURN_IF_ERROR(check_trainable_model(model::cpu_llama(base)));
  KBIT_ASSIGN_OR_RETURN(LoraPlacement placement, place_lora_modules(base.config(), state));
  LoraTrainingModel model(base, std::move(state));
  model.placement_ = std::move(placement);
  return model;
}

std::vector<TrainableParameter> LoraTrainingModel::parameters() {
  std::vector<TrainableParameter> parameters;
  for (LoraModule& module : state_.modules()) {
    parameters.push_back(
        {module.name + ".lora_A", host_vector_view(module.a), host_vector_view(module.grad_a)});
    parameters.push_back(
        {module.name + ".lora_B", host_vector_view(module.b), host_vector_view(module.grad_b)});
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
  for (const std::array<int, model::kLinearsPerLayer>& indices : placement_) {
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
