#include "kbit/io/bnb_quant_state.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <set>

#include <nlohmann/json.hpp>

namespace kbit::io {
namespace {

// transformers' names of the weight dtypes a QuantState records.
std::optional<DType> dtype_from_torch_name(const std::string& name) {
  if (name == "float32") return DType::kF32;
  if (name == "float16") return DType::kF16;
  if (name == "bfloat16") return DType::kBF16;
  return std::nullopt;
}

std::string torch_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    default:
      return "bfloat16";
  }
}

Status field_error(const std::string& field, const std::string& requirement) {
  return invalid_argument("quant_state field '" + field + "' " + requirement);
}

Result<std::int64_t> positive_integer(const nlohmann::json& object, const std::string& field) {
  const nlohmann::json& value = object[field];
  if (!value.is_number_integer() || value.get<std::int64_t>() <= 0) {
    return field_error(field, "must be a positive integer, found " + value.dump());
  }
  return value.get<std::int64_t>();
}

Result<Shape> parse_shape(const nlohmann::json& value) {
  if (!value.is_array() || value.size() > static_cast<std::size_t>(kMaxDims)) {
    return field_error("shape", "must be an array of at most 8 sizes, found " + value.dump());
  }
  std::int64_t dims[kMaxDims] = {};
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (!value[i].is_number_integer() || value[i].get<std::int64_t>() < 0) {
      return field_error("shape", "must hold non-negative integers, found " + value.dump());
    }
    dims[i] = value[i].get<std::int64_t>();
  }
  return Shape::from(dims, static_cast<int>(value.size()));
}

Result<NestedQuantState> parse_nested(const nlohmann::json& object) {
  NestedQuantState nested;
  KBIT_ASSIGN_OR_RETURN(nested.blocksize, positive_integer(object, "nested_blocksize"));
  if (object["nested_dtype"] != "float32") {
    return field_error("nested_dtype",
                       "must be \"float32\", found " + object["nested_dtype"].dump());
  }
  const nlohmann::json& offset = object["nested_offset"];
  if (!offset.is_number() || !std::isfinite(offset.get<double>())) {
    return field_error("nested_offset", "must be a finite number, found " + offset.dump());
  }
  nested.offset = static_cast<float>(offset.get<double>());
  return nested;
}

}  // namespace

Result<QuantState> parse_quant_state(std::string_view json) {
  const nlohmann::json object = nlohmann::json::parse(json, nullptr, false);
  if (object.is_discarded() || !object.is_object()) {
    return invalid_argument("quant_state is not a JSON object: " + std::string(json.substr(0, 80)));
  }
  const std::set<std::string> plain = {"quant_type", "blocksize", "dtype", "shape"};
  const std::set<std::string> nested_keys = {"nested_blocksize", "nested_dtype", "nested_offset"};
  std::size_t nested_present = 0;
  for (const auto& [key, unused] : object.items()) {
    if (nested_keys.count(key) != 0) {
      ++nested_present;
    } else if (plain.count(key) == 0) {
      return field_error(key,
                         "is not a QuantState field (bitsandbytes writes quant_type, "
                         "blocksize, dtype, shape and the nested_* fields)");
    }
  }
  for (const std::string& key : plain) {
    if (!object.contains(key)) return field_error(key, "is missing");
  }
  if (nested_present != 0 && nested_present != nested_keys.size()) {
    return invalid_argument(
        "quant_state has some nested_* fields but not all three "
        "(nested_blocksize, nested_dtype, nested_offset)");
  }
  QuantState state;
  const auto type = object["quant_type"].is_string()
                        ? quant::parse_four_bit_type(object["quant_type"].get<std::string>())
                        : std::nullopt;
  if (!type)
    return field_error("quant_type",
                       "must be \"nf4\" or \"fp4\", found " + object["quant_type"].dump());
  state.type = *type;
  KBIT_ASSIGN_OR_RETURN(state.blocksize, positive_integer(object, "blocksize"));
  if (!quant::is_valid_4bit_block_size(state.blocksize)) {
    return field_error("blocksize",
                       "must be 32, 64, ..., 4096, found " + std::to_string(state.blocksize));
  }
  const auto dtype = object["dtype"].is_string()
                         ? dtype_from_torch_name(object["dtype"].get<std::string>())
                         : std::nullopt;
  if (!dtype) {
    return field_error("dtype", "must be \"float32\", \"float16\" or \"bfloat16\", found " +
                                    object["dtype"].dump());
  }
  state.dtype = *dtype;
  KBIT_ASSIGN_OR_RETURN(state.shape, parse_shape(object["shape"]));
  if (nested_present != 0) {
    KBIT_ASSIGN_OR_RETURN(state.nested, parse_nested(object));
  }
  return state;
}

Result<std::string> serialize_quant_state(const QuantState& state) {
  std::string shape;
  for (int i = 0; i < state.shape.rank(); ++i) {
    shape += (i > 0 ? ", " : "") + std::to_string(state.shape[i]);
  }
  std::string json = "{\"quant_type\": \"" + std::string(quant::four_bit_type_name(state.type)) +
                     "\", \"blocksize\": " + std::to_string(state.blocksize) + ", \"dtype\": \"" +
                     torch_name(state.dtype) + "\", \"shape\": [" + shape + "]";
  if (state.nested) {
    if (!std::isfinite(state.nested->offset)) {
      return invalid_argument("the nested offset is not finite; it cannot be written as JSON");
    }
    json += ", \"nested_blocksize\": " + std::to_string(state.nested->blocksize) +
            ", \"nested_dtype\": \"float32\", \"nested_offset\": " +
            python_float_repr(static_cast<double>(state.nested->offset));
  }
  return json + "}";
}

std::string quant_state_key_suffix(quant::FourBitType type) {
  return "bitsandbytes__" + std::string(quant::four_bit_type_name(type));
}

std::string python_float_repr(double value) {
  // The shortest round-trip digits, as d.ddde±X: std::to_chars gives the same digits as Python.
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), std::fabs(value),
                                    std::chars_format::scientific);
  const std::string scientific(buffer, result.ptr);
  const std::size_t e = scientific.find('e');
  std::string digits = scientific.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exponent = std::stoi(scientific.substr(e + 1));
  const std::string sign = std::signbit(value) ? "-" : "";
  if (exponent < -4 || exponent >= 16) {
    const std::string mantissa =
        digits.size() == 1 ? digits : digits.substr(0, 1) + "." + digits.substr(1);
    const std::string magnitude = std::to_string(std::abs(exponent));
    return sign + mantissa + "e" + (exponent < 0 ? "-" : "+") + (magnitude.size() < 2 ? "0" : "") +
           magnitude;
  }
  if (exponent < 0)
    return sign + "0." + std::string(static_cast<std::size_t>(-exponent - 1), '0') + digits;
  const auto integer_digits = static_cast<std::size_t>(exponent) + 1;
  if (digits.size() <= integer_digits) {
    return sign + digits + std::string(integer_digits - digits.size(), '0') + ".0";
  }
  return sign + digits.substr(0, integer_digits) + "." + digits.substr(integer_digits);
}

}  // namespace kbit::io
