// `kbit quantize`: a float Llama checkpoint written again with its Linear layers quantized, in
// the format transformers + bitsandbytes save after loading with a BitsAndBytesConfig
// (save_pretrained), so that either side loads it:
//   model.safetensors   the float tensors as stored, and for each quantized Linear the
//                       state-dict entries of spec 4.1 (4-bit) or 6.2 (int8), laid out as the
//                       reference writer does (byte-identical to its file for the same input)
//   config.json         the source's, with "quantization_config" (spec 8.1)
//   everything else     the folder's other files (tokenizer, generation config, chat template)
//                       copied as they are
#pragma once

#include <filesystem>

#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/model/quantize_options.h"

namespace kbit::model {

// Requires: model_dir a float checkpoint (config.json without quantization_config); output_dir
// must not exist, its parent must. The result is assembled in a temporary folder beside
// output_dir and renamed to it only when complete: on failure nothing is left behind.
// Peak memory: the quantized tensors plus one float tensor.
// A tied lm_head (tie_word_embeddings) that the skip list does not exclude is refused
// (kUnimplemented): the saved format has no quantized tied head.
// `device`: where the weights are quantized (a GPU: uploaded one at a time, quantized there and
// brought back); the bytes written are the same either way.
Status quantize_checkpoint(const std::filesystem::path& model_dir,
                           const std::filesystem::path& output_dir, const QuantizeOptions& options,
                           const ExecutionOptions& execution = {},
                           const Device& device = Device::cpu());

}  // namespace kbit::model
