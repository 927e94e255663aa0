// `kbit info`: what a model is made of and what it costs in memory in each mode, computed from
// config.json and the checkpoint's headers without reading any weight.
//
// Two measures per mode:
//   footprint_bytes   what transformers' model.get_memory_footprint() reports for the same load:
//                     every parameter at its dtype (the packed codes only for 4-bit, the int8
//                     codes for 8-bit; the other parameters in 16 bits, as transformers loads
//                     them with bitsandbytes, or in f32 / bf16 for those modes) plus
//                     the rotary buffers (inv_freq and original_inv_freq, f32)
//   kbit_bytes        what kbit holds for the weights: the same plus the quantization
//                     statistics (absmax, nested absmax, code tables, row scales), with norms
//                     and biases widened to f32 (equal to LlamaModel::weight_bytes() for the load)
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/io/bnb_quantization_config.h"
#include "kbit/model/llama_config.h"
#include "kbit/model/quantize_options.h"

namespace kbit::model {

// Elements and stored bytes of one class of tensors.
struct TensorClass {
  std::string name;  // "embedding", "lm_head", "attention", "mlp", "norms"
  std::int64_t tensors = 0;
  std::int64_t elements = 0;      // stored (packed codes and statistics count as stored)
  std::int64_t stored_bytes = 0;  // in the checkpoint as it is
};

struct ModeFootprint {
  // "f32", "bf16", "nf4", "nf4_dq", "fp4", "int8" (bitsandbytes' defaults otherwise: block size
  // 64, threshold 6.0, lm_head kept), "requested" for the options passed, or "stored" for a
  // checkpoint already quantized.
  std::string mode;
  std::optional<QuantizeOptions> quantize;  // nullopt: float
  std::int64_t footprint_bytes = 0;
  std::int64_t kbit_bytes = 0;
};

struct ModelSummary {
  LlamaConfig config;
  std::optional<io::BnbQuantizationConfig> stored_quantization;
  std::int64_t parameters = 0;  // of the float model
  std::vector<TensorClass> classes;
  // Float checkpoint: f32, bf16, nf4, nf4_dq, fp4, int8, then "requested" if given. A
  // checkpoint quantized by bitsandbytes: "stored" only.
  std::vector<ModeFootprint> modes;
  // kbit's KV cache (f32 keys and values of every layer) per token of context.
  std::int64_t kv_cache_bytes_per_token = 0;
};

// Reads model_dir/config.json and the checkpoint headers. `requested` adds a mode for those
// options (validated as LlamaModel::load does); it is refused for an already quantized model.
Result<ModelSummary> summarize_model(const std::filesystem::path& model_dir,
                                     const std::optional<QuantizeOptions>& requested);

}  // namespace kbit::model
