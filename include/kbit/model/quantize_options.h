// What "quantize the Linear layers" means in kbit: transformers' BitsAndBytesConfig (what
// config.json records) plus the 4-bit block size, which bitsandbytes keeps per weight.
#pragma once

#include <cstdint>
#include <string_view>

#include "kbit/io/bnb_quantization_config.h"

namespace kbit::model {

struct QuantizeOptions {
  io::BnbQuantizationConfig config;
  // 4-bit block size: 32, 64, ..., 4096 (bitsandbytes' default 64). It must divide every
  // quantized Linear's input features, or be a multiple of them.
  std::int64_t block_size = 64;
};

// kInvalidArgument naming the option at fault (as the command-line flag names it) for a block
// size, compute dtype or threshold kbit cannot use, kUnimplemented for storage other than u8 or
// int8 weights kept in f16 (llm_int8_has_fp16_weight).
Status validate_quantize_options(const QuantizeOptions& options);

// Whether `config` quantizes the Linear `module` (e.g. "lm_head"): not matched by the skip list
// in effect (io::effective_skip_modules). Fails for a skip pattern that is not a valid regex.
Result<bool> quantizes_module(const io::BnbQuantizationConfig& config, std::string_view module);

}  // namespace kbit::model
