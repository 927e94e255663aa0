#include "kbit/io/peft_adapter.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "io/python_pattern.h"
#include "kbit/io/safetensors.h"

namespace kbit::io {
namespace {

using Json = nlohmann::json;

// Fields of LoraConfig for variants kbit does not implement: each must hold PEFT's "off" value
// (null, false, {} or []).
struct OffField {
  const char* key;
  const char* feature;
};
constexpr OffField kOffFields[] = {
    {"alora_invocation_tokens", "Activated LoRA (aLoRA)"},
    {"alpha_pattern", "per-module alphas"},
    {"arrow_config", "Arrow routing"},
    {"fan_in_fan_out", "weights stored [in, out] (GPT-2's Conv1D)"},
    {"kasa_config", "KaSA"},
    {"layer_replication", "layer replication"},
    {"layers_to_transform", "adapters on some of the layers only"},
    {"lora_bias", "a bias on lora_B"},
    {"megatron_config", "Megatron parallel layers"},
    {"modules_to_save", "fully trained extra modules"},
    {"monteclora_config", "MonteCLoRA"},
    {"rank_pattern", "per-module ranks"},
    {"target_parameters", "LoRA on parameters rather than modules"},
    {"trainable_token_indices", "trainable token embeddings"},
    {"use_bdlora", "BD-LoRA"},
    {"use_dora", "DoRA (weight-decomposed LoRA)"},
    {"use_qalora", "QALoRA"},
    {"velora_config", "VeLoRA"},
};

// Fields that only initialise or train an adapter, or only inform: accepted and ignored.
constexpr const char* kIgnoredFields[] = {
    "auto_mapping",      "base_model_name_or_path",
    "corda_config",      "ensure_weight_tying",
    "eva_config",        "inference_mode",
    "init_lora_weights", "layers_pattern",
    "loftq_config",      "lora_ga_config",
    "megatron_core",     "peft_version",
    "qalora_group_size", "revision",
    "task_type",
};

// Fields kbit reads.
constexpr const char* kReadFields[] = {
    "bias", "exclude_modules", "lora_alpha", "lora_dropout", "peft_type",
    "r",    "target_modules",  "use_rslora",
};

bool is_off(const Json& value) {
  return value.is_null() || (value.is_boolean() && !value.get<bool>()) ||
         ((value.is_object() || value.is_array()) && value.empty());
}

std::string dump(const Json& value) {
  std::string text = value.dump(-1, ' ', /*ensure_ascii=*/true);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

// ---- regexes: Python's re.fullmatch, as PEFT matches module names ----------------------------

Result<PythonPattern> compile_regex(const std::string& pattern) {
  Result<PythonPattern> compiled = PythonPattern::compile(pattern);
  if (compiled.ok()) return compiled;
  return invalid_argument("\"" + pattern + "\" is not a valid regex (" +
                          compiled.status().message() + ")");
}

Result<bool> full_match(const std::string& pattern, const std::string& subject) {
  KBIT_ASSIGN_OR_RETURN(const PythonPattern code, compile_regex(pattern));
  Result<bool> matched = code.matches(subject, PythonPattern::Anchor::kWhole);
  if (matched.ok()) return matched;
  return invalid_argument("matching module \"" + subject + "\" against \"" + pattern +
                          "\" failed: " + matched.status().message());
}

// PEFT's check_target_module_exists for a list: the name, or a suffix after a '.'.
bool matches_name(const std::vector<std::string>& names, const std::string& module) {
  return std::any_of(names.begin(), names.end(), [&](const std::string& name) {
    return module == name || (module.size() > name.size() && module.ends_with(name) &&
                              module[module.size() - name.size() - 1] == '.');
  });
}

// ---- adapter_config.json ----------------------------------------------------------------------

class Fields {
 public:
  Fields(const Json& object, const std::string& source) : object_(object), source_(source) {}

  const Json* find(const char* key) const {
    const auto it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }
  Status error(const char* key, const std::string& what) const {
    const Json* value = find(key);
    return invalid_argument(source_ + ": field '" + key + "' " + what +
                            (value != nullptr ? ", found " + dump(*value) : ""));
  }
  Status unsupported(const char* key, const std::string& what) const {
    return unimplemented(source_ + ": field '" + key + "' " + what);
  }

  Result<double> number(const char* key, double fallback) const {
    const Json* value = find(key);
    if (value == nullptr) return fallback;
    if (!value->is_number()) return error(key, "must be a number");
    return value->get<double>();
  }
  Result<bool> boolean(const char* key, bool fallback) const {
    const Json* value = find(key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) return error(key, "must be true or false");
    return value->get<bool>();
  }

  // target_modules / exclude_modules: null, a list of names, or a regex string.
  Status module_selection(const char* key, std::vector<std::string>& names,
                          std::optional<std::string>& regex) const {
    const Json* value = find(key);
    if (value == nullptr || value->is_null()) return ok_status();
    if (value->is_string()) {
      regex = value->get<std::string>();
      Result<PythonPattern> code = compile_regex(*regex);
      if (!code.ok()) {
        return error(key, "is a string, which PEFT takes as a Python regex, but " +
                              code.status().message() +
                              "; write a valid regex or a list of module names");
      }
      return ok_status();
    }
    const std::string expected =
        "must be null, a list of module names or a regex string (e.g. [\"q_proj\", \"v_proj\"])";
    if (!value->is_array()) return error(key, expected);
    for (const Json& item : *value) {
      if (!item.is_string()) return error(key, expected);
      names.push_back(item.get<std::string>());
    }
    return ok_status();
  }

  const std::string& source() const { return source_; }

 private:
  const Json& object_;
  const std::string& source_;
};

Result<PeftLoraConfig> parse_object(const Json& object, const std::string& source) {
  if (!object.is_object()) {
    return invalid_argument(source + ": must hold a JSON object (PEFT's LoraConfig), found " +
                            dump(object));
  }
  const Fields fields(object, source);
  // Another PEFT method's config has other keys: say which method first.
  const Json* type = fields.find("peft_type");
  if (type == nullptr) {
    return invalid_argument(source +
                            ": has no field 'peft_type'; PEFT always writes it: add \"peft_type\": "
                            "\"LORA\" if this is a LoRA adapter");
  }
  if (!type->is_string()) return fields.error("peft_type", "must be a string (\"LORA\")");
  if (type->get<std::string>() != "LORA") {
    return fields.unsupported("peft_type", "is \"" + type->get<std::string>() +
                                               "\"; kbit runs LoRA adapters (\"LORA\") only");
  }
  for (const auto& [key, value] : object.items()) {
    const auto known = [&](const char* name) { return key == name; };
    if (std::any_of(std::begin(kReadFields), std::end(kReadFields), known) ||
        std::any_of(std::begin(kIgnoredFields), std::end(kIgnoredFields), known)) {
      continue;
    }
    const auto off = std::find_if(std::begin(kOffFields), std::end(kOffFields),
                                  [&](const OffField& field) { return key == field.key; });
    if (off == std::end(kOffFields)) {
      return invalid_argument(source + ": has the unknown field '" + key +
                              "'; kbit reads the fields PEFT 0.21 writes for LoRA: remove it, or "
                              "re-save the adapter with PEFT 0.21");
    }
    if (!is_off(value)) {
      return fields.unsupported(off->key, "is " + dump(value) + ": " + off->feature +
                                              " is not implemented in kbit; only adapters with "
                                              "it off (null, false, {} or []) run");
    }
  }

  PeftLoraConfig config;
  if (const Json* r = fields.find("r")) {
    if (!r->is_number_integer() || r->get<std::int64_t>() < 1) {
      return fields.error("r", "must be an integer >= 1 (the rank)");
    }
    config.r = r->get<std::int64_t>();
  }
  KBIT_ASSIGN_OR_RETURN(config.lora_alpha, fields.number("lora_alpha", 8.0));
  if (!std::isfinite(config.lora_alpha)) return fields.error("lora_alpha", "must be finite");
  KBIT_ASSIGN_OR_RETURN(config.use_rslora, fields.boolean("use_rslora", false));
  KBIT_ASSIGN_OR_RETURN(config.lora_dropout, fields.number("lora_dropout", 0.0));
  if (!(config.lora_dropout >= 0 && config.lora_dropout <= 1)) {
    return fields.error("lora_dropout", "must be a probability in [0, 1]");
  }
  if (const Json* bias = fields.find("bias")) {
    if (!bias->is_string())
      return fields.error("bias", "must be \"none\", \"all\" or \"lora_only\"");
    if (bias->get<std::string>() != "none") {
      return fields.unsupported("bias", "is \"" + bias->get<std::string>() +
                                            "\": trained biases are not implemented in kbit; "
                                            "only adapters with bias \"none\" run");
    }
  }
  KBIT_RETURN_IF_ERROR(
      fields.module_selection("target_modules", config.target_names, config.target_regex));
  if (config.target_regex && config.target_regex->size() == 10) {
    std::string lower = *config.target_regex;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (lower == "all-linear") {
      config.all_linear = true;
      config.target_regex.reset();
    }
  }
  const Json* targets = fields.find("target_modules");
  if (targets == nullptr || targets->is_null()) {
    config.target_names = {"q_proj", "v_proj"};  // PEFT's default for Llama and Mistral
  } else if (targets->is_array() && targets->empty()) {
    return fields.error("target_modules", "must name at least one module");
  }
  KBIT_RETURN_IF_ERROR(
      fields.module_selection("exclude_modules", config.exclude_names, config.exclude_regex));
  if (const Json* base = fields.find("base_model_name_or_path"); base && base->is_string()) {
    config.base_model_name_or_path = base->get<std::string>();
  }
  return config;
}

std::string describe_targets(const PeftLoraConfig& config) {
  if (config.all_linear) return "\"all-linear\"";
  if (config.target_regex) return "\"" + *config.target_regex + "\"";
  std::string list;
  for (const std::string& name : config.target_names) {
    list += (list.empty() ? "" : ", ") + ("\"" + name + "\"");
  }
  return "[" + list + "]";
}

}  // namespace

double PeftLoraConfig::scaling() const {
  const double rank = static_cast<double>(r);
  return use_rslora ? lora_alpha / std::sqrt(rank) : lora_alpha / rank;
}

Result<bool> PeftLoraConfig::targets(const std::string& module) const {
  if (exclude_regex) {
    KBIT_ASSIGN_OR_RETURN(const bool excluded, full_match(*exclude_regex, module));
    if (excluded) return false;
  }
  if (matches_name(exclude_names, module)) return false;
  if (all_linear) return module != "lm_head";
  if (target_regex) return full_match(*target_regex, module);
  return matches_name(target_names, module);
}

Result<PeftLoraConfig> parse_peft_lora_config(const std::string& text, const std::string& source) {
  Json object;
  try {
    object = Json::parse(text);
  } catch (const Json::exception& error) {
    return invalid_argument(source + ": is not valid JSON (" + error.what() + ")");
  }
  return parse_object(object, source);
}

Result<PeftLoraConfig> read_peft_lora_config(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return not_found(path.string() + ": cannot open; a PEFT adapter folder holds " +
                     kPeftConfigFile + " and " + kPeftWeightsFile + " (PeftModel.save_pretrained)");
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return data_loss(path.string() + ": read failed");
  return parse_peft_lora_config(text.str(), path.string());
}

struct PeftAdapter::State {
  std::filesystem::path dir;
  PeftLoraConfig config;
  SafetensorsFile file;
  std::map<std::string, LoraWeights> modules;
};

PeftAdapter::PeftAdapter(std::unique_ptr<State> state) : state_(std::move(state)) {}
PeftAdapter::PeftAdapter(PeftAdapter&&) noexcept = default;
PeftAdapter& PeftAdapter::operator=(PeftAdapter&&) noexcept = default;
PeftAdapter::~PeftAdapter() = default;

const std::filesystem::path& PeftAdapter::dir() const {
  return state_->dir;
}

const PeftLoraConfig& PeftAdapter::config() const {
  return state_->config;
}

std::vector<std::string> PeftAdapter::modules() const {
  std::vector<std::string> names;
  for (const auto& [name, unused] : state_->modules) names.push_back(name);
  return names;
}

Result<PeftAdapter> PeftAdapter::open(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir)) {
    return not_found(dir.string() +
                     ": is not a folder; an adapter is the folder PeftModel.save_pretrained "
                     "writes (adapter_config.json, adapter_model.safetensors)");
  }
  KBIT_ASSIGN_OR_RETURN(PeftLoraConfig config, read_peft_lora_config(dir / kPeftConfigFile));
  const std::filesystem::path weights_path = dir / kPeftWeightsFile;
  if (!std::filesystem::exists(weights_path)) {
    if (std::filesystem::exists(dir / "adapter_model.bin")) {
      return unimplemented(weights_path.string() +
                           " is missing and the folder holds adapter_model.bin, a torch pickle, "
                           "which kbit does not read: re-save the adapter with "
                           "save_pretrained(dir, safe_serialization=True)");
    }
    return not_found(weights_path.string() +
                     ": missing; PeftModel.save_pretrained writes the adapter's weights there");
  }
  KBIT_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(weights_path));
  const std::string source = weights_path.string();

  std::map<std::string, LoraWeights> modules;
  for (const std::string& name : file.names()) {
    const bool is_a = name.ends_with(kLoraASuffix);
    const bool is_b = name.ends_with(kLoraBSuffix);
    const std::size_t prefix = std::string_view(kPeftKeyPrefix).size();
    const std::size_t suffix = std::string_view(kLoraASuffix).size();
    if (!name.starts_with(kPeftKeyPrefix) || (!is_a && !is_b) || name.size() <= prefix + suffix) {
      std::string what =
          "is not a LoRA weight kbit reads (base_model.model.<module>.lora_A.weight "
          "or .lora_B.weight)";
      if (name.ends_with(".lora_B.bias")) what += "; it is lora_bias's, which kbit does not run";
      if (name.find("lora_magnitude_vector") != std::string::npos) what += "; it is DoRA's";
      if (name.find("lora_embedding_") != std::string::npos) {
        what += "; it is a LoRA on an embedding, which kbit does not run";
      }
      return unimplemented(source + ": tensor '" + name + "' " + what +
                           "; use an adapter of plain LoRA on Linear layers");
    }
    const std::string module = name.substr(prefix, name.size() - prefix - suffix);
    KBIT_ASSIGN_OR_RETURN(SafetensorsEntry entry, file.entry(name));
    if (!is_floating(entry.dtype) || entry.shape.rank() != 2) {
      return invalid_argument(source + ": tensor '" + name + "' is " +
                              std::string(dtype_name(entry.dtype)) + " " + entry.shape.to_string() +
                              "; LoRA weights are 2-D F32, F16 or BF16 matrices");
    }
    const std::int64_t rank = is_a ? entry.shape[0] : entry.shape[1];
    if (rank != config.r) {
      return invalid_argument(source + ": tensor '" + name + "' has shape " +
                              entry.shape.to_string() + ", of rank " + std::to_string(rank) +
                              ", but adapter_config.json's 'r' is " + std::to_string(config.r) +
                              "; the config and the weights must come from the same adapter");
    }
    KBIT_ASSIGN_OR_RETURN(const bool targeted, config.targets(module));
    if (!targeted) {
      return invalid_argument(source + ": tensor '" + name + "' is for module '" + module +
                              "', which adapter_config.json's target_modules (" +
                              describe_targets(config) +
                              ") does not select; the config and the weights must come from the "
                              "same adapter");
    }
    KBIT_ASSIGN_OR_RETURN(TensorView view, file.tensor(name));
    (is_a ? modules[module].a : modules[module].b) = view;
  }
  for (const auto& [module, weights] : modules) {
    if (weights.a.data() == nullptr || weights.b.data() == nullptr) {
      return invalid_argument(
          source + ": module '" + module + "' has " +
          (weights.a.data() == nullptr ? "lora_B but no lora_A" : "lora_A but no lora_B") +
          "; an adapted module needs both (" + kPeftKeyPrefix + module + kLoraASuffix + ", " +
          kLoraBSuffix + ")");
    }
  }
  if (modules.empty()) {
    return invalid_argument(source + ": holds no LoRA weights (" + kPeftKeyPrefix +
                            "<module>.lora_A.weight); is it an adapter of another PEFT method?");
  }
  auto state =
      std::make_unique<State>(State{dir, std::move(config), std::move(file), std::move(modules)});
  return PeftAdapter(std::move(state));
}

Result<LoraWeights> PeftAdapter::weights(const std::string& module, std::int64_t out_features,
                                         std::int64_t in_features) const {
  const std::string source = (state_->dir / kPeftWeightsFile).string();
  const auto it = state_->modules.find(module);
  if (it == state_->modules.end()) {
    return not_found(source + ": has no " + kPeftKeyPrefix + module + kLoraASuffix +
                     ", though adapter_config.json's target_modules (" +
                     describe_targets(state_->config) + ") select the model's module '" + module +
                     "'; the adapter was made for another model, or the file is incomplete");
  }
  const LoraWeights& weights = it->second;
  const Shape expected_a{state_->config.r, in_features};
  const Shape expected_b{out_features, state_->config.r};
  if (!(weights.a.shape() == expected_a) || !(weights.b.shape() == expected_b)) {
    return invalid_argument(
        source + ": module '" + module + "' has lora_A " + weights.a.shape().to_string() +
        " and lora_B " + weights.b.shape().to_string() +
        ", but the model's Linear is [out, in] = " + Shape{out_features, in_features}.to_string() +
        ", which needs lora_A " + expected_a.to_string() + " and lora_B " + expected_b.to_string() +
        "; the adapter was trained on another base model");
  }
  return weights;
}

}  // namespace kbit::io
