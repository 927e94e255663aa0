// Where the modules of a LoraState sit in a Llama model: for each decoder layer and each of its
// Linears, the index of the module training it. Both LoRA training models (CPU and CUDA) place
// a state this way.
#pragma once

#include <array>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/model/llama_config.h"
#include "kbit/train/lora_state.h"

namespace kbit::train {

// For each decoder layer, by model::LayerLinear, the index of its module in state.modules(), or
// −1 where it has no LoRA. kInvalidArgument, naming the module, for a module that is not a Linear
// of the model's decoder layers or whose shapes are not the Linear's.
using LoraPlacement = std::vector<std::array<int, model::kLinearsPerLayer>>;
Result<LoraPlacement> place_lora_modules(const model::LlamaConfig& config, const LoraState& state);

}  // namespace kbit::train
