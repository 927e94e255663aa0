// A PEFT LoRA adapter folder as PeftModel.save_pretrained writes it (spec 9.1-9.4):
//   adapter_config.json        LoraConfig (json.dumps(indent=2, sort_keys=True)), e.g. PEFT 0.21:
//                              {"peft_type": "LORA", "r": 8, "lora_alpha": 16,
//                               "target_modules": ["q_proj", "v_proj"], "bias": "none", ...}
//   adapter_model.safetensors  for each adapted Linear <module> (its name in the base model, e.g.
//                              "model.layers.0.self_attn.q_proj"):
//                                base_model.model.<module>.lora_A.weight  [r, in_features]
//                                base_model.model.<module>.lora_B.weight  [out_features, r]
//                              in F32 (PEFT's default), F16 or BF16.
//
// The reader is strict. The config must be a LoRA config whose every field is one PEFT 0.21
// writes; fields that change what the adapter computes and that kbit does not implement (DoRA,
// bias other than "none", lora_bias, fan_in_fan_out, rank_pattern / alpha_pattern,
// layers_to_transform, modules_to_save, layer_replication, target_parameters, trainable tokens,
// the aLoRA / QALoRA / Arrow / KaSA / MonteCLoRA / VeLoRA / BD-LoRA / Megatron variants) are
// refused with kUnimplemented naming the field, unless they hold PEFT's "off" value (false, null,
// {} or []). Fields used only to initialise or train an adapter (init_lora_weights, lora_dropout,
// loftq_config, eva_config, corda_config, lora_ga_config, ...) and informative ones
// (base_model_name_or_path, revision, task_type, peft_version, ...) are checked for type where it
// matters and otherwise ignored. The weights file must hold exactly lora_A and lora_B of each
// adapted module, both, with rank r and float dtypes; every error names the file, the field or
// tensor, and the fix.
//
// A PeftAdapter is move-only; the views it returns point into the mapped weights file and stay
// valid while it lives. Const methods are thread safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit::io {

// The files of an adapter folder, and the keys of module <module>'s LoRA weights in the weights
// file: kPeftKeyPrefix + <module> + kLoraASuffix (or kLoraBSuffix).
inline constexpr const char* kPeftConfigFile = "adapter_config.json";
inline constexpr const char* kPeftWeightsFile = "adapter_model.safetensors";
inline constexpr const char* kPeftKeyPrefix = "base_model.model.";
inline constexpr const char* kLoraASuffix = ".lora_A.weight";
inline constexpr const char* kLoraBSuffix = ".lora_B.weight";

// The fields of LoraConfig that decide what a loaded adapter computes.
struct PeftLoraConfig {
  std::int64_t r = 8;       // rank (> 0)
  double lora_alpha = 8.0;  // α
  bool use_rslora = false;  // scaling α/√r instead of α/r
  double lora_dropout = 0;  // training only; inference ignores it
  // target_modules (spec 9.3): a list of names (a module matches one if its name equals it or
  // ends with "." + it), or a regex the whole module name must match, or "all-linear" (every
  // Linear but the output layer). null in the file: Llama's default, ["q_proj", "v_proj"].
  std::vector<std::string> target_names;
  std::optional<std::string> target_regex;
  bool all_linear = false;
  // exclude_modules, in the same two forms (null: none).
  std::vector<std::string> exclude_names;
  std::optional<std::string> exclude_regex;
  std::optional<std::string> base_model_name_or_path;  // informative

  // lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora.
  double scaling() const;
  // Whether PEFT puts a LoRA on the Linear named `module` (relative to the base model, e.g.
  // "model.layers.0.mlp.up_proj"; the output layer is "lm_head"). kInvalidArgument only if a
  // regex fails to match (e.g. PCRE2's match limit).
  Result<bool> targets(const std::string& module) const;
};

// Parses the text of an adapter_config.json; `source` (a path) names it in errors.
Result<PeftLoraConfig> parse_peft_lora_config(const std::string& text, const std::string& source);
// Reads and parses `path`; kNotFound if it cannot be opened.
Result<PeftLoraConfig> read_peft_lora_config(const std::filesystem::path& path);

// One adapted Linear: views into the weights file.
struct LoraWeights {
  TensorView a;  // lora_A.weight [r, in_features]
  TensorView b;  // lora_B.weight [out_features, r]
};

class PeftAdapter {
 public:
  // Reads dir/adapter_config.json and maps dir/adapter_model.safetensors, checking both as above.
  // kNotFound for a missing folder or file (kUnimplemented for a legacy adapter_model.bin, which
  // is a torch pickle); kInvalidArgument / kUnimplemented for a config or tensor that is wrong or
  // that kbit does not implement; kDataLoss for a malformed safetensors file.
  static Result<PeftAdapter> open(const std::filesystem::path& dir);

  PeftAdapter(PeftAdapter&&) noexcept;
  PeftAdapter& operator=(PeftAdapter&&) noexcept;
  ~PeftAdapter();

  const std::filesystem::path& dir() const;
  const PeftLoraConfig& config() const;
  // The adapted modules (names relative to the base model), sorted.
  std::vector<std::string> modules() const;

  // The LoRA of `module`, checked against the model's Linear [out_features, in_features]:
  // kNotFound if the adapter has none (naming the tensor and the target that selects the module);
  // kInvalidArgument if a shape differs, naming the adapter's and the model's shapes.
  Result<LoraWeights> weights(const std::string& module, std::int64_t out_features,
                              std::int64_t in_features) const;

 private:
  struct State;
  explicit PeftAdapter(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace kbit::io
