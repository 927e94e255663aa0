#include "kbit/io/bnb_quantization_config.h"

#include <cmath>
#include <fstream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "io/atomic_file.h"
#include "io/python_pattern.h"
#include "kbit/io/bnb_quant_state.h"

namespace kbit::io {
namespace {

using Json = nlohmann::json;

// BitsAndBytesConfig.to_dict()'s keys, sorted as config.json holds them.
constexpr const char* kKeys[] = {
    "_load_in_4bit",
    "_load_in_8bit",
    "bnb_4bit_compute_dtype",
    "bnb_4bit_quant_storage",
    "bnb_4bit_quant_type",
    "bnb_4bit_use_double_quant",
    "llm_int8_enable_fp32_cpu_offload",
    "llm_int8_has_fp16_weight",
    "llm_int8_skip_modules",
    "llm_int8_threshold",
    "load_in_4bit",
    "load_in_8bit",
    "quant_method",
};

constexpr const char* kQuantMethod = "bitsandbytes";

// ---- Python's json.dumps(indent=2, sort_keys=True, ensure_ascii=True) -------------------------

void append_unicode_escape(std::string& out, std::uint32_t unit) {
  static const char kHex[] = "0123456789abcdef";
  out += "\\u";
  for (int shift = 12; shift >= 0; shift -= 4) out += kHex[(unit >> shift) & 0xf];
}

// The next code point of UTF-8 `text` at `i` (advanced past it), or nullopt for an invalid
// sequence (then `i` advances by one byte).
std::optional<std::uint32_t> next_code_point(const std::string& text, std::size_t& i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  std::size_t length = 0;
  std::uint32_t code = 0;
  std::uint32_t minimum = 0;
  if (lead < 0x80) {
    ++i;
    return lead;
  } else if ((lead & 0xe0) == 0xc0) {
    length = 2, code = lead & 0x1fu, minimum = 0x80;
  } else if ((lead & 0xf0) == 0xe0) {
    length = 3, code = lead & 0x0fu, minimum = 0x800;
  } else if ((lead & 0xf8) == 0xf0) {
    length = 4, code = lead & 0x07u, minimum = 0x10000;
  } else {
    ++i;
    return std::nullopt;
  }
  if (i + length > text.size()) {
    ++i;
    return std::nullopt;
  }
  for (std::size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xc0) != 0x80) {
      ++i;
      return std::nullopt;
    }
    code = (code << 6) | (byte(i + k) & 0x3fu);
  }
  if (code < minimum || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) {
    ++i;
    return std::nullopt;
  }
  i += length;
  return code;
}

// A JSON string as Python writes it with ensure_ascii: printable ASCII as is, the short escapes
// for " \ \n \r \t \b \f, everything else (DEL included) as \uxxxx, lower-case, with surrogate
// pairs above U+FFFF. Invalid UTF-8 (which Python strings cannot hold) becomes U+FFFD.
void append_python_string(std::string& out, const std::string& text) {
  out += '"';
  std::size_t i = 0;
  while (i < text.size()) {
    const std::uint32_t code = next_code_point(text, i).value_or(0xfffd);
    switch (code) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (code >= 0x20 && code <= 0x7e) {
          out += static_cast<char>(code);
        } else if (code < 0x10000) {
          append_unicode_escape(out, code);
        } else {
          const std::uint32_t offset = code - 0x10000;
          append_unicode_escape(out, 0xd800 + (offset >> 10));
          append_unicode_escape(out, 0xdc00 + (offset & 0x3ff));
        }
    }
  }
  out += '"';
}

void append_python_float(std::string& out, double value) {
  if (std::isnan(value)) {
    out += "NaN";
  } else if (std::isinf(value)) {
    out += value < 0 ? "-Infinity" : "Infinity";
  } else {
    out += python_float_repr(value);
  }
}

void append_python_json(std::string& out, const Json& value, int depth) {
  const auto newline = [&](int level) {
    out += '\n';
    out.append(static_cast<std::size_t>(2 * level), ' ');
  };
  switch (value.type()) {
    case Json::value_t::boolean:
      out += value.get<bool>() ? "true" : "false";
      break;
    case Json::value_t::number_integer:
      out += std::to_string(value.get<std::int64_t>());
      break;
    case Json::value_t::number_unsigned:
      out += std::to_string(value.get<std::uint64_t>());
      break;
    case Json::value_t::number_float:
      append_python_float(out, value.get<double>());
      break;
    case Json::value_t::string:
      append_python_string(out, value.get_ref<const std::string&>());
      break;
    case Json::value_t::array:
      if (value.empty()) {
        out += "[]";
        break;
      }
      out += '[';
      for (std::size_t i = 0; i < value.size(); ++i) {
        if (i > 0) out += ',';
        newline(depth + 1);
        append_python_json(out, value[i], depth + 1);
      }
      newline(depth);
      out += ']';
      break;
    case Json::value_t::object: {
      if (value.empty()) {
        out += "{}";
        break;
      }
      // nlohmann keeps keys in a std::map: byte order, which for UTF-8 is Python's code point
      // order (sort_keys).
      out += '{';
      bool first = true;
      for (const auto& [key, item] : value.items()) {
        if (!first) out += ',';
        first = false;
        newline(depth + 1);
        append_python_string(out, key);
        out += ": ";
        append_python_json(out, item, depth + 1);
      }
      newline(depth);
      out += '}';
      break;
    }
    default:  // null (binary and discarded values do not come out of the parser)
      out += "null";
      break;
  }
}

// ---- reading ---------------------------------------------------------------------------------

Result<std::string> read_text(const std::filesystem::path& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path.string() + ": cannot open; " + what);
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return data_loss(path.string() + ": read failed");
  return text.str();
}

// Parses `text`; the error names `source` and the parser's position.
Result<Json> parse_json(std::string_view text, std::string_view source, const char* what) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& error) {  // parse_error, or out_of_range for 1e999
    std::string message = error.what();
    const std::size_t bracket = message.find("] ");
    if (message.starts_with("[json.exception") && bracket != std::string::npos) {
      message.erase(0, bracket + 2);
    }
    return invalid_argument(std::string(source) + ": " + what + " is not valid JSON (" + message +
                            ")");
  }
}

std::string truncated_dump(const Json& value) {
  std::string text = value.dump(-1, ' ', /*ensure_ascii=*/true);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

std::string accepted_keys() {
  std::string list;
  for (const char* key : kKeys) list += (list.empty() ? "" : ", ") + std::string(key);
  return list;
}

// `pattern` compiled as Python's re would use it on a str (Unicode classes).
Result<PythonPattern> compile_pattern(const std::string& pattern) {
  Result<PythonPattern> compiled = PythonPattern::compile(pattern);
  if (compiled.ok()) return compiled;
  std::string quoted;
  append_python_string(quoted, pattern);
  return invalid_argument("skip pattern " + quoted + " is not a valid regex (" +
                          compiled.status().message() + ")");
}

// Python's re.match(pattern, subject): a match that starts at offset 0.
Result<bool> match_at_start(const PythonPattern& code, std::string_view subject,
                            const std::string& pattern) {
  Result<bool> matched = code.matches(subject, PythonPattern::Anchor::kStart);
  if (matched.ok()) return matched;
  return invalid_argument("matching module name \"" + std::string(subject) +
                          "\" against skip pattern \"" + pattern +
                          "\" failed: " + matched.status().message());
}

// Reads the fields of one quantization_config object; every error names the source and field.
class Fields {
 public:
  Fields(const Json& object, std::string source) : object_(object), source_(std::move(source)) {}

  const Json* find(const char* key) const {
    const auto it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }

  std::string field(const char* key) const {
    return "field 'quantization_config." + std::string(key) + "'";
  }

  Status error(const char* key, const std::string& what) const {
    const Json* value = find(key);
    return invalid_argument(source_ + ": " + field(key) + " " + what +
                            (value != nullptr ? ", found " + truncated_dump(*value) : ""));
  }

  Status unsupported(const char* key, const std::string& what) const {
    return unimplemented(source_ + ": " + field(key) + " " + what);
  }

  Result<std::optional<bool>> optional_bool(const char* key) const {
    const Json* value = find(key);
    if (value == nullptr) return std::optional<bool>();
    if (!value->is_boolean()) return error(key, "must be true or false");
    return std::optional<bool>(value->get<bool>());
  }

  Result<bool> boolean(const char* key, bool fallback) const {
    KBIT_ASSIGN_OR_RETURN(std::optional<bool> value, optional_bool(key));
    return value.value_or(fallback);
  }

  // A string, or nullopt when absent (or null, where `null_allowed`).
  Result<std::optional<std::string>> optional_string(const char* key, bool null_allowed,
                                                     const std::string& expected) const {
    const Json* value = find(key);
    if (value == nullptr || (null_allowed && value->is_null())) {
      return std::optional<std::string>();
    }
    if (!value->is_string()) return error(key, "must be a string: " + expected);
    return std::optional<std::string>(value->get<std::string>());
  }

  // load_in_Nbit, or _load_in_Nbit where the public key is missing; false when both are.
  Result<bool> load_flag(const char* public_key, const char* private_key) const {
    KBIT_ASSIGN_OR_RETURN(std::optional<bool> shown, optional_bool(public_key));
    KBIT_ASSIGN_OR_RETURN(std::optional<bool> hidden, optional_bool(private_key));
    if (shown && hidden && *shown != *hidden) {
      return invalid_argument(source_ + ": " + field(public_key) + " (" +
                              (*shown ? "true" : "false") + ") and " + field(private_key) + " (" +
                              (*hidden ? "true" : "false") +
                              ") are contradictory; transformers writes the same value in both: "
                              "make them equal");
    }
    return shown ? *shown : hidden.value_or(false);
  }

  const std::string& source() const { return source_; }

 private:
  const Json& object_;
  std::string source_;
};

Result<DType> parse_compute_dtype(const Fields& fields) {
  const char* key = "bnb_4bit_compute_dtype";
  KBIT_ASSIGN_OR_RETURN(std::optional<std::string> name,
                        fields.optional_string(key, /*null_allowed=*/true,
                                               "\"float32\", \"float16\" or \"bfloat16\""));
  if (!name) return DType::kF32;
  // transformers resolves the name with getattr(torch, name) and writes it back canonical.
  if (*name == "float32" || *name == "float") return DType::kF32;
  if (*name == "float16" || *name == "half") return DType::kF16;
  if (*name == "bfloat16") return DType::kBF16;
  if (*name == "float64" || *name == "double") {
    return fields.unsupported(key, "is \"" + *name +
                                       "\"; kbit computes in float32, float16 or bfloat16: write "
                                       "one of those");
  }
  return fields.error(key,
                      "must be \"float32\", \"float16\" or \"bfloat16\" (torch's dtype name "
                      "without \"torch.\")");
}

Result<DType> parse_quant_storage(const Fields& fields, BnbQuantMode mode) {
  const char* key = "bnb_4bit_quant_storage";
  const char* accepted = "\"uint8\", \"int8\", \"float16\", \"bfloat16\", \"float32\", \"float64\"";
  KBIT_ASSIGN_OR_RETURN(std::optional<std::string> name,
                        fields.optional_string(key, /*null_allowed=*/true, accepted));
  if (!name) return DType::kU8;
  std::optional<DType> storage;
  if (*name == "uint8") storage = DType::kU8;
  if (*name == "int8") storage = DType::kI8;
  if (*name == "float16") storage = DType::kF16;
  if (*name == "bfloat16") storage = DType::kBF16;
  if (*name == "float32") storage = DType::kF32;
  if (!storage && *name != "float64") {
    return fields.error(key, std::string("must be one of ") + accepted +
                                 " (transformers' choices; the default is \"uint8\")");
  }
  // The storage dtype only shapes 4-bit weights; an 8-bit checkpoint ignores it.
  if (!storage || (mode == BnbQuantMode::kFourBit && *storage != DType::kU8)) {
    return fields.unsupported(key, "is \"" + *name +
                                       "\"; kbit reads 4-bit weights packed in uint8 only (the "
                                       "default): re-quantize with bnb_4bit_quant_storage "
                                       "\"uint8\"");
  }
  return *storage;
}

Result<std::optional<std::vector<std::string>>> parse_skip_modules(const Fields& fields) {
  const char* key = "llm_int8_skip_modules";
  const Json* value = fields.find(key);
  if (value == nullptr || value->is_null()) return std::optional<std::vector<std::string>>();
  const char* expected = "must be null (the defaults) or a list of module-name patterns (strings)";
  if (!value->is_array()) return fields.error(key, expected);
  std::vector<std::string> patterns;
  for (const Json& item : *value) {
    if (!item.is_string()) return fields.error(key, expected);
    patterns.push_back(item.get<std::string>());
    Result<PythonPattern> code = compile_pattern(patterns.back());
    if (!code.ok()) {
      return invalid_argument(fields.source() + ": " + fields.field(key) + ": " +
                              code.status().message() +
                              "; the patterns are Python regexes: escape a literal '(', '[' or '.' "
                              "with a backslash");
    }
  }
  return std::optional<std::vector<std::string>>(std::move(patterns));
}

Result<BnbQuantizationConfig> parse_object(const Json& object, const std::string& source) {
  if (!object.is_object()) {
    return invalid_argument(source + ": 'quantization_config' must be a JSON object, found " +
                            truncated_dump(object));
  }
  const Fields fields(object, source);

  // Another method's config has other keys: say which method first.
  KBIT_ASSIGN_OR_RETURN(
      std::optional<std::string> method,
      fields.optional_string("quant_method", /*null_allowed=*/true, "\"bitsandbytes\""));
  if (method && *method != kQuantMethod) {
    return fields.unsupported(
        "quant_method", "is \"" + *method +
                            "\"; kbit reads checkpoints quantized with bitsandbytes "
                            "(\"bitsandbytes\") only: use the float model or a bitsandbytes one");
  }
  for (const auto& [key, unused] : object.items()) {
    bool known = false;
    for (const char* accepted : kKeys) known = known || key == accepted;
    if (!known) {
      std::string quoted;
      append_python_string(quoted, key);
      return invalid_argument(source + ": quantization_config has the unknown field " + quoted +
                              "; remove it (BitsAndBytesConfig's fields are " + accepted_keys() +
                              ")");
    }
  }

  BnbQuantizationConfig config;
  KBIT_ASSIGN_OR_RETURN(const bool four_bit, fields.load_flag("load_in_4bit", "_load_in_4bit"));
  KBIT_ASSIGN_OR_RETURN(const bool eight_bit, fields.load_flag("load_in_8bit", "_load_in_8bit"));
  if (four_bit && eight_bit) {
    return invalid_argument(source +
                            ": fields 'quantization_config.load_in_4bit' and "
                            "'quantization_config.load_in_8bit' are both true; a checkpoint is "
                            "4-bit or 8-bit: set the other to false");
  }
  if (!four_bit && !eight_bit) {
    return invalid_argument(source +
                            ": neither 'quantization_config.load_in_4bit' nor "
                            "'quantization_config.load_in_8bit' is true; set the one the weights "
                            "were quantized with (4-bit: uint8 weights with a quant_state; "
                            "8-bit: int8 weights with an SCB)");
  }
  config.mode = four_bit ? BnbQuantMode::kFourBit : BnbQuantMode::kInt8;

  KBIT_ASSIGN_OR_RETURN(
      std::optional<std::string> type_name,
      fields.optional_string("bnb_4bit_quant_type", /*null_allowed=*/false, "\"nf4\" or \"fp4\""));
  if (type_name) {
    const std::optional<quant::FourBitType> type = quant::parse_four_bit_type(*type_name);
    if (!type) return fields.error("bnb_4bit_quant_type", "must be \"nf4\" or \"fp4\"");
    config.four_bit_type = *type;
  }
  KBIT_ASSIGN_OR_RETURN(config.double_quant, fields.boolean("bnb_4bit_use_double_quant", false));
  KBIT_ASSIGN_OR_RETURN(config.compute_dtype, parse_compute_dtype(fields));
  KBIT_ASSIGN_OR_RETURN(config.quant_storage, parse_quant_storage(fields, config.mode));

  if (const Json* threshold = fields.find("llm_int8_threshold")) {
    const char* key = "llm_int8_threshold";
    if (!threshold->is_number()) return fields.error(key, "must be a number (the default is 6.0)");
    config.int8_threshold = threshold->get<double>();
    if (!std::isfinite(config.int8_threshold) || config.int8_threshold < 0) {
      return fields.error(key,
                          "must be a finite number >= 0 (6.0 is the default; 0 turns the outlier "
                          "decomposition off)");
    }
  }
  KBIT_ASSIGN_OR_RETURN(config.skip_modules, parse_skip_modules(fields));
  KBIT_ASSIGN_OR_RETURN(config.int8_has_fp16_weight,
                        fields.boolean("llm_int8_has_fp16_weight", false));
  if (config.int8_has_fp16_weight && config.mode == BnbQuantMode::kInt8) {
    return fields.unsupported("llm_int8_has_fp16_weight",
                              "is true: the checkpoint keeps float weights that bitsandbytes "
                              "re-quantizes on use, and kbit runs int8 weights only; remove "
                              "quantization_config to load it as a float model, or re-save it "
                              "with llm_int8_has_fp16_weight false");
  }
  KBIT_ASSIGN_OR_RETURN(config.fp32_cpu_offload,
                        fields.boolean("llm_int8_enable_fp32_cpu_offload", false));
  return config;
}

// ---- writing ---------------------------------------------------------------------------------

std::string torch_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
    case DType::kI8:
      return "int8";
    case DType::kU8:
      return "uint8";
    case DType::kI32:
      return "int32";
    case DType::kI64:
      return "int64";
  }
  return "unknown";
}

Json to_json(const BnbQuantizationConfig& config) {
  const bool four_bit = config.mode == BnbQuantMode::kFourBit;
  Json object = Json::object();
  object["_load_in_4bit"] = four_bit;
  object["_load_in_8bit"] = !four_bit;
  object["bnb_4bit_compute_dtype"] = torch_dtype_name(config.compute_dtype);
  object["bnb_4bit_quant_storage"] = torch_dtype_name(config.quant_storage);
  object["bnb_4bit_quant_type"] = std::string(quant::four_bit_type_name(config.four_bit_type));
  object["bnb_4bit_use_double_quant"] = config.double_quant;
  object["llm_int8_enable_fp32_cpu_offload"] = config.fp32_cpu_offload;
  object["llm_int8_has_fp16_weight"] = config.int8_has_fp16_weight;
  object["llm_int8_skip_modules"] =
      config.skip_modules ? Json(*config.skip_modules) : Json(nullptr);
  object["llm_int8_threshold"] = config.int8_threshold;  // a float, as transformers requires
  object["load_in_4bit"] = four_bit;
  object["load_in_8bit"] = !four_bit;
  object["quant_method"] = kQuantMethod;
  return object;
}

std::string python_dumps(const Json& value) {
  std::string out;
  append_python_json(out, value, 0);
  return out;
}

}  // namespace

Result<std::optional<BnbQuantizationConfig>> read_bnb_quantization_config(
    const std::filesystem::path& config_path) {
  KBIT_ASSIGN_OR_RETURN(const std::string text,
                        read_text(config_path, "a model folder needs its config.json"));
  KBIT_ASSIGN_OR_RETURN(const Json root, parse_json(text, config_path.string(), "config.json"));
  if (!root.is_object()) {
    return invalid_argument(config_path.string() +
                            ": not a JSON object; expected a Hugging Face config.json");
  }
  const auto it = root.find("quantization_config");
  if (it == root.end() || it->is_null()) return std::optional<BnbQuantizationConfig>();
  KBIT_ASSIGN_OR_RETURN(BnbQuantizationConfig config, parse_object(*it, config_path.string()));
  return std::optional<BnbQuantizationConfig>(std::move(config));
}

Result<BnbQuantizationConfig> parse_bnb_quantization_config(std::string_view object_json,
                                                            std::string_view source) {
  KBIT_ASSIGN_OR_RETURN(const Json object, parse_json(object_json, source, "quantization_config"));
  return parse_object(object, std::string(source));
}

std::string bnb_quantization_config_json(const BnbQuantizationConfig& config) {
  return python_dumps(to_json(config));
}

Status write_config_with_quantization(const std::filesystem::path& source,
                                      const BnbQuantizationConfig& config,
                                      const std::filesystem::path& dest) {
  KBIT_ASSIGN_OR_RETURN(const std::string text,
                        read_text(source, "name the float model's config.json"));
  KBIT_ASSIGN_OR_RETURN(Json root, parse_json(text, source.string(), "config.json"));
  if (!root.is_object()) {
    return invalid_argument(source.string() +
                            ": not a JSON object; expected a Hugging Face config.json");
  }
  const auto existing = root.find("quantization_config");
  if (existing != root.end() && !existing->is_null()) {
    return invalid_argument(source.string() +
                            ": already has a quantization_config; kbit quantizes float "
                            "checkpoints: start from the float model's config.json");
  }
  Json object = to_json(config);
  // Write only what reads back.
  KBIT_RETURN_IF_ERROR(
      parse_object(object, "the quantization_config to write to " + dest.string()).status());
  root["quantization_config"] = std::move(object);
  const std::string written = python_dumps(root) + "\n";
  return write_file_atomically(
      dest, [&](FileSink& sink) { return sink.write(written.data(), written.size()); });
}

Result<std::string> python_json_dumps(std::string_view json_text) {
  KBIT_ASSIGN_OR_RETURN(const Json value, parse_json(json_text, "JSON text", "the text"));
  return python_dumps(value) + "\n";
}

Result<bool> module_matches_skip_patterns(std::string_view module_name,
                                          const std::vector<std::string>& patterns) {
  // Compile every pattern first, so that a bad one is reported whatever the name.
  std::vector<std::pair<PythonPattern, PythonPattern>> compiled;
  for (const std::string& pattern : patterns) {
    KBIT_ASSIGN_OR_RETURN(PythonPattern plain, compile_pattern(pattern));
    KBIT_ASSIGN_OR_RETURN(PythonPattern with_dot, compile_pattern(pattern + "\\."));
    compiled.emplace_back(std::move(with_dot), std::move(plain));
  }
  for (std::size_t i = 0; i < patterns.size(); ++i) {
    KBIT_ASSIGN_OR_RETURN(const bool dotted,
                          match_at_start(compiled[i].first, module_name, patterns[i]));
    if (dotted) return true;
    KBIT_ASSIGN_OR_RETURN(const bool plain,
                          match_at_start(compiled[i].second, module_name, patterns[i]));
    if (plain || module_name.ends_with(patterns[i])) return true;
  }
  return false;
}

std::vector<std::string> effective_skip_modules(const BnbQuantizationConfig& config) {
  if (config.skip_modules) return *config.skip_modules;
  return {"lm_head"};
}

}  // namespace kbit::io
