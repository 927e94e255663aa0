// `kbit merge`: a float Llama checkpoint written again with LoRA adapters merged into its
// weights, as PEFT's merge_and_unload() followed by save_pretrained() gives it (spec 9.5):
//   model.safetensors   every tensor as stored, but each adapted Linear's weight W [out, in]
//                       replaced by W + scaling · B · A, computed in f32 (B · A summed over the
//                       rank) and rounded to W's dtype once per adapter, as PEFT adds each
//                       adapter's f32 delta into the weight in turn
//   everything else     the folder's other files, config.json included, copied as they are
// The merged model computes without adapters what the base computes with them (up to the
// rounding of the merged weights to their dtype).
#pragma once

#include <filesystem>
#include <vector>

#include "kbit/core/status.h"

namespace kbit::model {

// Requires: model_dir a float checkpoint (a bitsandbytes-quantized one is refused: merge the
// adapters into the float model it came from), adapters that fit it (every adapted module a
// Linear of the model with its shape; errors name the adapter, the tensor and both shapes), and
// output_dir new (written whole: see model_folder.h). LoRA on a tied lm_head is refused
// (kUnimplemented): merging it would untie the embedding. Peak memory: the merged weights plus
// one f32 delta of the largest Linear.
Status merge_adapters(const std::filesystem::path& model_dir,
                      const std::vector<std::filesystem::path>& adapters,
                      const std::filesystem::path& output_dir);

}  // namespace kbit::model
