#include "kbit/io/peft_adapter_writer.h"

#include <cmath>
#include <cstdint>
#include <set>
#include <system_error>

#include <nlohmann/json.hpp>

#include "io/atomic_file.h"
#include "kbit/io/safetensors_writer.h"

namespace kbit::io {
namespace {

using Json = nlohmann::json;  // keys in a std::map: sorted, as sort_keys=True sorts them

// null, the list of names, or the regex.
Json module_selection(const std::vector<std::string>& names,
                      const std::optional<std::string>& regex) {
  if (regex) return *regex;
  if (names.empty()) return nullptr;
  return names;
}

// PEFT writes lora_alpha as the user gave it: an integer unless it has a fraction.
Json alpha_value(double alpha) {
  if (std::trunc(alpha) == alpha && std::fabs(alpha) < 0x1p53) {
    return static_cast<std::int64_t>(alpha);
  }
  return alpha;
}

std::string shape_text(const TensorView& tensor) {
  return tensor.shape().to_string() + " " + std::string(dtype_name(tensor.dtype()));
}

Status check_weights(const PeftLoraConfig& config, const std::vector<LoraWeightsToSave>& weights) {
  if (weights.empty()) return invalid_argument("write_peft_adapter: no LoRA weights to save");
  std::set<std::string> seen;
  for (const LoraWeightsToSave& w : weights) {
    const std::string what = "write_peft_adapter: module '" + w.module + "'";
    if (w.module.empty() || !seen.insert(w.module).second) {
      return invalid_argument(what + " is empty or given twice; give each adapted module once");
    }
    KBIT_ASSIGN_OR_RETURN(const bool targeted, config.targets(w.module));
    if (!targeted) {
      return invalid_argument(what +
                              " is not among the config's target_modules; PEFT would not load "
                              "its weights: add it to the targets");
    }
    const TensorView& a = w.a;
    const TensorView& b = w.b;
    const bool shapes_fit = a.shape().rank() == 2 && b.shape().rank() == 2 &&
                            a.shape()[0] == config.r && b.shape()[1] == config.r &&
                            a.shape()[1] > 0 && b.shape()[0] > 0;
    const bool stored_fit = is_floating(a.dtype()) && a.dtype() == b.dtype() && a.is_contiguous() &&
                            b.is_contiguous() && a.device().is_cpu() && b.device().is_cpu();
    if (!shapes_fit || !stored_fit) {
      return invalid_argument(what + " has lora_A " + shape_text(a) + " and lora_B " +
                              shape_text(b) + "; rank " + std::to_string(config.r) + " needs A [" +
                              std::to_string(config.r) + ", in] and B [out, " +
                              std::to_string(config.r) +
                              "], contiguous host tensors of one float dtype");
    }
  }
  return ok_status();
}

}  // namespace

std::string peft_lora_config_json(const PeftLoraConfig& config,
                                  const std::vector<std::string>& adapted_modules) {
  Json object = Json::object();
  // Fields kbit does not implement, at PEFT's "off" values.
  for (const char* key :
       {"alora_invocation_tokens", "arrow_config", "auto_mapping", "corda_config", "eva_config",
        "kasa_config", "layer_replication", "layers_pattern", "layers_to_transform",
        "lora_ga_config", "megatron_config", "modules_to_save", "monteclora_config", "revision",
        "target_parameters", "trainable_token_indices", "use_bdlora", "velora_config"}) {
    object[key] = nullptr;
  }
  for (const char* key :
       {"ensure_weight_tying", "fan_in_fan_out", "lora_bias", "use_dora", "use_qalora"}) {
    object[key] = false;
  }
  object["alpha_pattern"] = Json::object();
  object["rank_pattern"] = Json::object();
  object["loftq_config"] = Json::object();
  object["megatron_core"] = "megatron.core";
  object["qalora_group_size"] = 16;
  // What the adapter is.
  object["peft_type"] = "LORA";
  object["peft_version"] = "0.21.0";
  object["task_type"] = "CAUSAL_LM";
  object["inference_mode"] = true;
  object["init_lora_weights"] = true;
  object["bias"] = "none";
  object["base_model_name_or_path"] =
      config.base_model_name_or_path ? Json(*config.base_model_name_or_path) : Json(nullptr);
  object["r"] = config.r;
  object["lora_alpha"] = alpha_value(config.lora_alpha);
  object["lora_dropout"] = config.lora_dropout;
  object["use_rslora"] = config.use_rslora;
  object["target_modules"] = config.all_linear
                                 ? Json(adapted_modules)
                                 : module_selection(config.target_names, config.target_regex);
  object["exclude_modules"] = module_selection(config.exclude_names, config.exclude_regex);
  return object.dump(2, ' ', /*ensure_ascii=*/true);
}

Status write_peft_adapter(const std::filesystem::path& dir, const PeftLoraConfig& config,
                          const std::vector<LoraWeightsToSave>& weights) {
  KBIT_RETURN_IF_ERROR(check_weights(config, weights));
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return invalid_argument("write_peft_adapter: cannot make the folder " + dir.string() + ": " +
                            error.message() + "; check the path and its permissions");
  }
  std::vector<NamedTensor> tensors;
  std::vector<std::string> modules;
  for (const LoraWeightsToSave& w : weights) {
    tensors.push_back({kPeftKeyPrefix + w.module + kLoraASuffix, w.a});
    tensors.push_back({kPeftKeyPrefix + w.module + kLoraBSuffix, w.b});
    modules.push_back(w.module);
  }
  sort_in_reference_order(tensors);
  KBIT_RETURN_IF_ERROR(write_safetensors(dir / kPeftWeightsFile, tensors, {{"format", "pt"}}));
  const std::string text = peft_lora_config_json(config, modules);
  return write_file_atomically(
      dir / kPeftConfigFile, [&](FileSink& sink) { return sink.write(text.data(), text.size()); });
}

}  // namespace kbit::io
