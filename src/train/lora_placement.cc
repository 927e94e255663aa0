#include "train/lora_placement.h"

#include <algorithm>
#include <string>

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

Result<LoraPlacement> place_lora_modules(const model::LlamaConfig& config, const LoraState& state) {
  const std::vector<model::LinearModule> linears = model::linear_modules(config);
  LoraPlacement placement(static_cast<std::size_t>(config.num_hidden_layers));
  for (auto& layer : placement) layer.fill(-1);
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
    placement[static_cast<std::size_t>(index / model::kLinearsPerLayer)]
             [static_cast<std::size_t>(index % model::kLinearsPerLayer)] = static_cast<int>(i);
  }
  return placement;
}

}  // namespace kbit::train
