#include "kbit/model/llama_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

namespace kbit::model {
namespace {

using Json = nlohmann::json;

// Reads fields of one JSON object, naming config.json and the field in every error.
class FieldReader {
 public:
  FieldReader(const Json& object, std::string source, std::string prefix)
      : object_(object), source_(std::move(source)), prefix_(std::move(prefix)) {}

  // The field, or nullptr when absent or null.
  const Json* find(const std::string& key) const {
    const auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  Status error(const std::string& key, const std::string& what) const {
    const Json* value = find(key);
    return invalid_argument(source_ + ": field '" + prefix_ + key + "' " + what +
                            (value != nullptr ? ", found " + value->dump() : ""));
  }

  Result<std::optional<std::int64_t>> optional_int(const std::string& key) const {
    const Json* value = find(key);
    if (value == nullptr) return std::optional<std::int64_t>();
    if (!value->is_number_integer()) return error(key, "must be an integer");
    return std::optional<std::int64_t>(value->get<std::int64_t>());
  }

  Result<std::int64_t> positive_int(const std::string& key,
                                    std::optional<std::int64_t> fallback) const {
    KBIT_ASSIGN_OR_RETURN(std::optional<std::int64_t> value, optional_int(key));
    if (!value) {
      if (fallback) return *fallback;
      return invalid_argument(source_ + ": field '" + prefix_ + key +
                              "' is missing; it is required (a positive integer)");
    }
    if (*value <= 0) return error(key, "must be a positive integer");
    return *value;
  }

  Result<double> number(const std::string& key, std::optional<double> fallback) const {
    const Json* value = find(key);
    if (value == nullptr) {
      if (fallback) return *fallback;
      return invalid_argument(source_ + ": field '" + prefix_ + key +
                              "' is missing; it is required (a number)");
    }
    if (!value->is_number()) return error(key, "must be a number");
    const double result = value->get<double>();
    if (!std::isfinite(result)) return error(key, "must be finite");
    return result;
  }

  Result<bool> boolean(const std::string& key, bool fallback) const {
    const Json* value = find(key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) return error(key, "must be true or false");
    return value->get<bool>();
  }

  Result<std::optional<std::string>> optional_string(const std::string& key) const {
    const Json* value = find(key);
    if (value == nullptr) return std::optional<std::string>();
    if (!value->is_string()) return error(key, "must be a string");
    return std::optional<std::string>(value->get<std::string>());
  }

  // An int, or a list of ints (eos_token_id).
  Result<std::vector<std::int64_t>> int_or_int_list(const std::string& key,
                                                    std::vector<std::int64_t> fallback) const {
    if (object_.contains(key) && object_.at(key).is_null()) return std::vector<std::int64_t>();
    const Json* value = find(key);
    if (value == nullptr) return fallback;
    if (value->is_number_integer()) return std::vector<std::int64_t>{value->get<std::int64_t>()};
    if (!value->is_array()) return error(key, "must be an integer or a list of integers");
    std::vector<std::int64_t> ids;
    for (const Json& id : *value) {
      if (!id.is_number_integer()) return error(key, "must be an integer or a list of integers");
      ids.push_back(id.get<std::int64_t>());
    }
    return ids;
  }

  const std::string& source() const { return source_; }

 private:
  const Json& object_;
  std::string source_;
  std::string prefix_;
};

Result<RopeType> parse_rope_type(const std::string& name, const std::string& source,
                                 const std::string& field) {
  if (name == "default") return RopeType::kDefault;
  if (name == "linear") return RopeType::kLinear;
  if (name == "dynamic") return RopeType::kDynamic;
  if (name == "llama3") return RopeType::kLlama3;
  return unimplemented(source + ": field '" + field + "' is \"" + name +
                       "\"; kbit supports the RoPE types default, linear, dynamic and llama3");
}

// transformers 5's conversion (spec 11.1): rope_parameters = rope_scaling or rope_parameters or
// {}; rope_theta defaults into it; rope_type defaults to the legacy key `type`, then "default".
Result<RopeParameters> parse_rope(const FieldReader& top, std::int64_t max_position_embeddings) {
  const Json empty = Json::object();
  const Json* params = &empty;
  std::string name;
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    const Json* value = top.find(key);
    if (value == nullptr) continue;
    if (!value->is_object()) return top.error(key, "must be an object or null");
    if (value->empty()) continue;
    params = value;
    name = key;
    break;
  }
  const FieldReader fields(*params, top.source(), name.empty() ? "" : name + ".");
  RopeParameters rope;
  if (fields.find("rope_theta") != nullptr) {
    KBIT_ASSIGN_OR_RETURN(rope.theta, fields.number("rope_theta", std::nullopt));
  } else {
    KBIT_ASSIGN_OR_RETURN(rope.theta, top.number("rope_theta", 10000.0));
  }
  if (rope.theta <= 0.0) {
    return invalid_argument(top.source() + ": rope_theta must be positive, found " +
                            std::to_string(rope.theta));
  }
  std::string type_field = "rope_type";
  KBIT_ASSIGN_OR_RETURN(std::optional<std::string> type, fields.optional_string("rope_type"));
  if (!type) {
    type_field = "type";
    KBIT_ASSIGN_OR_RETURN(type, fields.optional_string("type"));
  }
  const std::string qualified = (name.empty() ? "" : name + ".") + type_field;
  KBIT_ASSIGN_OR_RETURN(rope.type,
                        parse_rope_type(type.value_or("default"), top.source(), qualified));
  if (rope.type != RopeType::kDefault) {
    KBIT_ASSIGN_OR_RETURN(rope.factor, fields.number("factor", std::nullopt));
    if (rope.factor < 1.0 && rope.type != RopeType::kLinear) {
      return fields.error("factor", "must be at least 1.0");
    }
    if (rope.factor <= 0.0) return fields.error("factor", "must be positive");
  }
  rope.original_max_position_embeddings = max_position_embeddings;
  if (rope.type == RopeType::kLlama3) {
    KBIT_ASSIGN_OR_RETURN(rope.low_freq_factor, fields.number("low_freq_factor", std::nullopt));
    KBIT_ASSIGN_OR_RETURN(rope.high_freq_factor, fields.number("high_freq_factor", std::nullopt));
    if (!(rope.high_freq_factor > rope.low_freq_factor) || rope.low_freq_factor <= 0.0) {
      return fields.error("high_freq_factor", "must be greater than low_freq_factor (" +
                                                  std::to_string(rope.low_freq_factor) +
                                                  ", which must be positive)");
    }
    KBIT_ASSIGN_OR_RETURN(
        rope.original_max_position_embeddings,
        fields.positive_int("original_max_position_embeddings", max_position_embeddings));
  }
  return rope;
}

}  // namespace

std::string_view rope_type_name(RopeType type) {
  switch (type) {
    case RopeType::kDefault:
      return "default";
    case RopeType::kLinear:
      return "linear";
    case RopeType::kDynamic:
      return "dynamic";
    case RopeType::kLlama3:
      return "llama3";
  }
  return "unknown";
}

Result<LlamaConfig> parse_llama_config(std::string_view json_text, const std::string& source) {
  const Json root = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return invalid_argument(source + ": not a JSON object; expected a Hugging Face config.json");
  }
  const FieldReader top(root, source, "");
  LlamaConfig config;

  // Architecture: `architectures` names the class; model_type must agree when present.
  KBIT_ASSIGN_OR_RETURN(std::optional<std::string> model_type, top.optional_string("model_type"));
  const Json* architectures = top.find("architectures");
  if (architectures != nullptr) {
    if (!architectures->is_array() || architectures->size() != 1 ||
        !(*architectures)[0].is_string()) {
      return top.error("architectures", "must be a list of one class name");
    }
    config.architecture = (*architectures)[0].get<std::string>();
  } else if (model_type == "llama") {
    config.architecture = "LlamaForCausalLM";
  } else if (model_type == "mistral") {
    config.architecture = "MistralForCausalLM";
  }
  if (config.architecture == "LlamaForCausalLM") {
    config.model_type = "llama";
  } else if (config.architecture == "MistralForCausalLM") {
    config.model_type = "mistral";
  } else if (architectures != nullptr) {
    return unimplemented(source + ": field 'architectures' is " + architectures->dump() +
                         "; kbit runs LlamaForCausalLM and MistralForCausalLM");
  } else {
    return unimplemented(source + ": field 'model_type' is " +
                         (model_type ? "\"" + *model_type + "\"" : std::string("missing")) +
                         " and 'architectures' is missing; kbit runs llama and mistral models");
  }
  if (model_type && *model_type != config.model_type) {
    return unimplemented(source + ": field 'model_type' is \"" + *model_type + "\" but " +
                         "'architectures' says " + config.architecture + "; kbit runs llama " +
                         "and mistral models");
  }
  const bool mistral = config.model_type == "mistral";

  KBIT_ASSIGN_OR_RETURN(std::optional<std::string> act, top.optional_string("hidden_act"));
  if (act.value_or("silu") != "silu") {
    return unimplemented(source + ": field 'hidden_act' is \"" + *act +
                         "\"; Llama models use \"silu\", the only activation kbit implements");
  }

  KBIT_ASSIGN_OR_RETURN(config.vocab_size, top.positive_int("vocab_size", std::nullopt));
  KBIT_ASSIGN_OR_RETURN(config.hidden_size, top.positive_int("hidden_size", std::nullopt));
  KBIT_ASSIGN_OR_RETURN(config.intermediate_size,
                        top.positive_int("intermediate_size", std::nullopt));
  KBIT_ASSIGN_OR_RETURN(config.num_hidden_layers,
                        top.positive_int("num_hidden_layers", std::nullopt));
  KBIT_ASSIGN_OR_RETURN(config.num_attention_heads,
                        top.positive_int("num_attention_heads", std::nullopt));
  KBIT_ASSIGN_OR_RETURN(
      config.num_key_value_heads,
      top.positive_int("num_key_value_heads", mistral ? 8 : config.num_attention_heads));
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    return top.error("num_key_value_heads", "must divide num_attention_heads (" +
                                                std::to_string(config.num_attention_heads) + ")");
  }
  if (top.find("head_dim") == nullptr && config.hidden_size % config.num_attention_heads != 0) {
    return top.error("hidden_size",
                     "must be a multiple of num_attention_heads when head_dim is "
                     "absent");
  }
  KBIT_ASSIGN_OR_RETURN(
      config.head_dim,
      top.positive_int("head_dim", config.hidden_size / config.num_attention_heads));
  if (config.head_dim % 2 != 0) return top.error("head_dim", "must be even for RoPE");
  KBIT_ASSIGN_OR_RETURN(
      config.max_position_embeddings,
      top.positive_int("max_position_embeddings", mistral ? std::int64_t{4096} * 32 : 2048));
  KBIT_ASSIGN_OR_RETURN(config.rms_norm_eps, top.number("rms_norm_eps", 1e-6));
  if (config.rms_norm_eps < 0.0) return top.error("rms_norm_eps", "must not be negative");
  KBIT_ASSIGN_OR_RETURN(config.tie_word_embeddings, top.boolean("tie_word_embeddings", false));
  KBIT_ASSIGN_OR_RETURN(config.attention_bias, top.boolean("attention_bias", false));
  KBIT_ASSIGN_OR_RETURN(config.mlp_bias, top.boolean("mlp_bias", false));
  if (mistral) {
    if (!root.contains("sliding_window")) {
      config.sliding_window = 4096;
    } else {
      KBIT_ASSIGN_OR_RETURN(config.sliding_window, top.optional_int("sliding_window"));
      if (config.sliding_window && *config.sliding_window <= 0) {
        return top.error("sliding_window", "must be a positive integer or null");
      }
    }
  }
  if (const Json* partial = top.find("partial_rotary_factor");
      partial != nullptr && !(partial->is_number() && partial->get<double>() == 1.0)) {
    return top.error("partial_rotary_factor", "is not supported by kbit's Llama (use 1.0)");
  }
  KBIT_ASSIGN_OR_RETURN(config.rope, parse_rope(top, config.max_position_embeddings));

  // Storage dtype: v5 `dtype`, else 4.x `torch_dtype`.
  for (const char* key : {"dtype", "torch_dtype"}) {
    KBIT_ASSIGN_OR_RETURN(std::optional<std::string> name, top.optional_string(key));
    if (!name) continue;
    const std::optional<DType> dtype = parse_dtype(*name);
    if (!dtype || !is_floating(*dtype)) {
      return top.error(key, "must be one of float32, float16, bfloat16");
    }
    config.dtype = dtype;
    break;
  }
  std::optional<std::int64_t> bos;
  if (!root.contains("bos_token_id")) {
    bos = 1;
  } else {
    KBIT_ASSIGN_OR_RETURN(bos, top.optional_int("bos_token_id"));
  }
  config.bos_token_id = bos;
  KBIT_ASSIGN_OR_RETURN(config.eos_token_ids, top.int_or_int_list("eos_token_id", {2}));
  KBIT_ASSIGN_OR_RETURN(config.pad_token_id, top.optional_int("pad_token_id"));
  return config;
}

Result<LlamaConfig> load_llama_config(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return not_found(path.string() + ": cannot open; a model folder needs its config.json");
  }
  std::stringstream text;
  text << in.rdbuf();
  return parse_llama_config(text.str(), path.string());
}

std::vector<LinearModule> linear_modules(const LlamaConfig& config) {
  const std::int64_t e = config.hidden_size;
  const std::int64_t q_out = config.num_attention_heads * config.head_dim;
  const std::int64_t kv_out = config.num_key_value_heads * config.head_dim;
  const std::int64_t i = config.intermediate_size;
  const bool ab = config.attention_bias;
  const bool mb = config.mlp_bias;
  std::vector<LinearModule> modules;
  for (std::int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    modules.push_back({p + "self_attn.q_proj", q_out, e, ab});
    modules.push_back({p + "self_attn.k_proj", kv_out, e, ab});
    modules.push_back({p + "self_attn.v_proj", kv_out, e, ab});
    modules.push_back({p + "self_attn.o_proj", e, q_out, ab});
    modules.push_back({p + "mlp.gate_proj", i, e, mb});
    modules.push_back({p + "mlp.up_proj", i, e, mb});
    modules.push_back({p + "mlp.down_proj", e, i, mb});
  }
  modules.push_back({"lm_head", config.vocab_size, e, false});
  return modules;
}

}  // namespace kbit::model
