#include "kbit/model/quantize_options.h"

#include <cmath>
#include <string>

#include "kbit/quant/blockwise_4bit.h"

namespace kbit::model {

Status validate_quantize_options(const QuantizeOptions& options) {
  const io::BnbQuantizationConfig& q = options.config;
  if (q.mode == io::BnbQuantMode::kFourBit &&
      !quant::is_valid_4bit_block_size(options.block_size)) {
    return invalid_argument("--blocksize " + std::to_string(options.block_size) +
                            " is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096");
  }
  if (!is_floating(q.compute_dtype)) {
    return invalid_argument("--compute-dtype " + std::string(dtype_name(q.compute_dtype)) +
                            " is not one of f32, f16, bf16");
  }
  if (!(q.int8_threshold >= 0 && std::isfinite(q.int8_threshold))) {
    return invalid_argument("--int8-threshold " + std::to_string(q.int8_threshold) +
                            " must be finite and >= 0 (bitsandbytes' default: 6.0)");
  }
  if (q.quant_storage != DType::kU8) {
    return unimplemented("4-bit storage dtype " + std::string(dtype_name(q.quant_storage)) +
                         " is not supported; kbit stores 4-bit codes as u8");
  }
  if (q.int8_has_fp16_weight) {
    return unimplemented(
        "llm_int8_has_fp16_weight is not supported; kbit keeps int8 weights quantized");
  }
  return ok_status();
}

Result<bool> quantizes_module(const io::BnbQuantizationConfig& config, std::string_view module) {
  KBIT_ASSIGN_OR_RETURN(const bool skipped, io::module_matches_skip_patterns(
                                                module, io::effective_skip_modules(config)));
  return !skipped;
}

}  // namespace kbit::model
