// transformers' BitsAndBytesConfig as config.json stores it under "quantization_config" (spec 8.1,
// 8.2, 8.4). A checkpoint is pre-quantized with bitsandbytes iff that key is present; transformers
// 5 writes the 13 keys of BitsAndBytesConfig.to_dict(), sorted, e.g.
//   "quantization_config": {
//     "_load_in_4bit": true,
//     "_load_in_8bit": false,
//     "bnb_4bit_compute_dtype": "bfloat16",
//     "bnb_4bit_quant_storage": "uint8",
//     "bnb_4bit_quant_type": "nf4",
//     "bnb_4bit_use_double_quant": true,
//     "llm_int8_enable_fp32_cpu_offload": false,
//     "llm_int8_has_fp16_weight": false,
//     "llm_int8_skip_modules": null,
//     "llm_int8_threshold": 6.0,
//     "load_in_4bit": true,
//     "load_in_8bit": false,
//     "quant_method": "bitsandbytes"
//   },
// kbit reads it strictly (every key known, every type checked) and writes config.json byte for
// byte as transformers does. Everything here is a pure function of its arguments; thread safe.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kbit/core/dtype.h"
#include "kbit/core/status.h"
#include "kbit/quant/blockwise_4bit.h"

namespace kbit::io {

enum class BnbQuantMode {
  kFourBit,  // load_in_4bit: Linear4bit, NF4/FP4 blockwise (spec 2-4)
  kInt8,     // load_in_8bit: Linear8bitLt, LLM.int8 row-wise (spec 6)
};

// BitsAndBytesConfig, with transformers' defaults. The 4-bit fields are kept (and written) in
// 8-bit mode too, as transformers does, but only checked for validity there.
struct BnbQuantizationConfig {
  BnbQuantMode mode = BnbQuantMode::kFourBit;                   // load_in_4bit / load_in_8bit
  quant::FourBitType four_bit_type = quant::FourBitType::kFp4;  // bnb_4bit_quant_type
  bool double_quant = false;                                    // bnb_4bit_use_double_quant
  DType compute_dtype = DType::kF32;                            // bnb_4bit_compute_dtype
  DType quant_storage = DType::kU8;                             // bnb_4bit_quant_storage
  double int8_threshold = 6.0;                                  // llm_int8_threshold
  // llm_int8_skip_modules: Python regexes of modules left unquantized; nullopt (JSON null) means
  // transformers' defaults (effective_skip_modules). A list replaces the defaults entirely.
  std::optional<std::vector<std::string>> skip_modules;
  bool int8_has_fp16_weight = false;  // llm_int8_has_fp16_weight
  // llm_int8_enable_fp32_cpu_offload: how the checkpoint was made (modules placed on cpu/disk
  // were left unquantized and saved as float tensors). Accepted and kept; it changes nothing in
  // kbit, whose loader tells quantized from float modules by the tensors present.
  bool fp32_cpu_offload = false;

  bool operator==(const BnbQuantizationConfig&) const = default;
};

// The "quantization_config" of the config.json at `config_path`: nullopt when the key is absent
// or null (a float checkpoint). Errors: kNotFound when the file cannot be opened; kInvalidArgument
// for a file that is not a JSON object or a quantization_config transformers would refuse or
// misread; kUnimplemented for a valid configuration kbit cannot run (another quant_method,
// bnb_4bit_quant_storage other than uint8 in 4-bit mode, llm_int8_has_fp16_weight in 8-bit mode,
// a float64 compute dtype). Every message names the file, the field and what to write instead.
//
// Rules (spec 8.1): the mode comes from load_in_4bit / load_in_8bit, or from _load_in_4bit /
// _load_in_8bit where the public key is missing; a public and private key that disagree, both
// modes true, or neither true are errors. quant_method, when present and not null, must be
// "bitsandbytes". Missing fields take the defaults above; null is accepted where transformers
// accepts None (quant_method, bnb_4bit_compute_dtype, bnb_4bit_quant_storage,
// llm_int8_skip_modules). Unknown keys are errors. bnb_4bit_compute_dtype is "float32",
// "float16" or "bfloat16" (torch's aliases "float" and "half" too); llm_int8_threshold is a
// finite number >= 0 (an integer is accepted); each skip pattern must compile as a regex.
Result<std::optional<BnbQuantizationConfig>> read_bnb_quantization_config(
    const std::filesystem::path& config_path);

// The same rules applied to the JSON text of a quantization_config object (what config.json
// holds under the key). `source` names it in errors, e.g. a file name.
Result<BnbQuantizationConfig> parse_bnb_quantization_config(std::string_view object_json,
                                                            std::string_view source);

// The 13-key object transformers 5 writes for `config` (BitsAndBytesConfig.to_dict()), laid out as
// json.dumps(indent=2, sort_keys=True) with no trailing newline. Writes `config` as it is, without
// the reader's checks (a non-finite threshold comes out as Python would: NaN, Infinity).
std::string bnb_quantization_config_json(const BnbQuantizationConfig& config);

// Writes `dest`: the config.json at `source` with "quantization_config" set to `config`, in
// transformers' layout, json.dumps(indent=2, sort_keys=True, ensure_ascii=True) + "\n" (nested
// objects sorted too, floats as Python's repr, non-ASCII as \uXXXX). A config.json that
// transformers wrote comes back byte-identical apart from the new key. The file is written beside
// `dest` under a temporary name and renamed into place, so `dest` may equal `source` and is never
// left half-written. Fails (kInvalidArgument) when `source` already has a non-null
// quantization_config or is not a JSON object, and when `config` would not read back (it is
// checked by the reader's rules, kUnimplemented included).
Status write_config_with_quantization(const std::filesystem::path& source,
                                      const BnbQuantizationConfig& config,
                                      const std::filesystem::path& dest);

// `json_text` (a JSON document) laid out as transformers writes config.json:
// json.dumps(value, indent=2, sort_keys=True) + "\n". Fails for text that is not JSON. Integers
// beyond 64 bits are read as floats, so they do not round-trip (configs hold none).
Result<std::string> python_json_dumps(std::string_view json_text);

// transformers' should_convert_module, negated (spec 8.2): true when `module_name` (e.g.
// "model.layers.0.mlp.down_proj", "lm_head") is matched by some pattern p, that is when Python's
// re.match(p + "\\.", name) or re.match(p, name) succeeds (anchored at the start only) or
// name.endswith(p). So "lm_head" also matches "lm_head_x", and "" matches everything. Patterns are
// compiled with PCRE2 (UTF, Unicode properties), whose syntax agrees with Python's re for the
// patterns module lists use. Fails for a pattern that does not compile, naming it.
Result<bool> module_matches_skip_patterns(std::string_view module_name,
                                          const std::vector<std::string>& patterns);

// The skip list in effect: config.skip_modules if given, else {"lm_head"} (transformers'
// get_keys_to_not_convert for LlamaForCausalLM, tied embeddings or not).
std::vector<std::string> effective_skip_modules(const BnbQuantizationConfig& config);

}  // namespace kbit::io
