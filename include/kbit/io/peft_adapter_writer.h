// Writing a PEFT LoRA adapter folder as PeftModel.save_pretrained (PEFT 0.21) writes it, so that
// PEFT loads what kbit trains (spec 9.1-9.4; the reader is kbit/io/peft_adapter.h):
//   adapter_config.json        every field PEFT 0.21 writes, json.dumps(indent=2, sort_keys=True)
//                              with no trailing newline; the fields kbit does not implement hold
//                              PEFT's "off" values
//   adapter_model.safetensors  base_model.model.<module>.lora_A.weight [r, in] and .lora_B.weight
//                              [out, r] of each adapted module, metadata {"format": "pt"}, in the
//                              order safetensors' Python binding lays them out
// Each file is written atomically (kbit/io/atomic_file.h): the weights first, then the config, so
// a folder whose config is present holds a complete adapter.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/io/peft_adapter.h"

namespace kbit::io {

// One adapted Linear's weights: `module` its name in the base model (e.g.
// "model.layers.0.self_attn.q_proj"); a [r, in] and b [out, r], contiguous host tensors of one
// float dtype (PEFT saves f32).
struct LoraWeightsToSave {
  std::string module;
  TensorView a;
  TensorView b;
};

// The text of adapter_config.json for `config` (task type "CAUSAL_LM", inference_mode true).
// target_modules: config.target_names in their order, or its regex; with config.all_linear, the
// names in `adapted_modules` (PEFT since 0.15 saves "all-linear" expanded to the full names).
std::string peft_lora_config_json(const PeftLoraConfig& config,
                                  const std::vector<std::string>& adapted_modules);

// Writes the folder `dir` (made if missing; files of the same names replaced). Requires each
// module once, targeted by the config (PeftLoraConfig::targets), with a of rank config.r. Errors
// name the module and the shape or the file and the OS error; on an error in the arguments
// nothing is written.
Status write_peft_adapter(const std::filesystem::path& dir, const PeftLoraConfig& config,
                          const std::vector<LoraWeightsToSave>& weights);

}  // namespace kbit::io
