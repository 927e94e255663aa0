#include "kbit/core/dtype.h"

#include <array>
#include <string>

namespace kbit {
namespace {

struct DTypeNames {
  DType dtype;
  std::size_t size;
  std::string_view short_name;
  std::string_view safetensors_name;
  std::string_view torch_name;
};

constexpr std::array<DTypeNames, 7> kNames = {{
    {DType::kF32, 4, "f32", "F32", "float32"},
    {DType::kF16, 2, "f16", "F16", "float16"},
    {DType::kBF16, 2, "bf16", "BF16", "bfloat16"},
    {DType::kI8, 1, "i8", "I8", "int8"},
    {DType::kU8, 1, "u8", "U8", "uint8"},
    {DType::kI32, 4, "i32", "I32", "int32"},
    {DType::kI64, 8, "i64", "I64", "int64"},
}};

const DTypeNames& names_of(DType dtype) {
  return kNames[static_cast<std::size_t>(dtype)];
}

}  // namespace

std::size_t dtype_size(DType dtype) {
  return names_of(dtype).size;
}
std::string_view dtype_name(DType dtype) {
  return names_of(dtype).short_name;
}

std::optional<DType> parse_dtype(std::string_view name) {
  if (name.starts_with("torch.")) name.remove_prefix(6);
  for (const DTypeNames& entry : kNames) {
    if (name == entry.short_name || name == entry.safetensors_name || name == entry.torch_name) {
      return entry.dtype;
    }
  }
  return std::nullopt;
}

bool is_floating(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

float f16_to_f32(f16 value) {
  const std::uint32_t sign = static_cast<std::uint32_t>(value.bits & 0x8000u) << 16;
  const std::uint32_t exponent = (value.bits >> 10) & 0x1fu;
  std::uint32_t mantissa = value.bits & 0x3ffu;
  if (exponent == 0x1f) {  // Inf or NaN
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  }
  if (exponent != 0) {
    return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  }
  if (mantissa == 0) return std::bit_cast<float>(sign);
  // Subnormal f16: normalise into f32's wider exponent range.
  std::uint32_t shifted_exponent = 113;
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    --shifted_exponent;
  }
  return std::bit_cast<float>(sign | (shifted_exponent << 23) | ((mantissa & 0x3ffu) << 13));
}

f16 f32_to_f16(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return f16{static_cast<std::uint16_t>(sign | 0x7e00u)};  // NaN
  if (magnitude >= 0x477ff000u) {  // rounds to a value beyond 65504, or Inf
    return f16{static_cast<std::uint16_t>(sign | 0x7c00u)};
  }
  if (magnitude < 0x38800000u) {
    // Result is an f16 subnormal or zero: its unit is 2^-24. Adding 0.5 puts the value in a
    // binade where f32's own round-to-nearest-even rounds at exactly that unit.
    const float shifted = std::bit_cast<float>(magnitude) + 0.5f;
    return f16{static_cast<std::uint16_t>(
        sign | (std::bit_cast<std::uint32_t>(shifted) - std::bit_cast<std::uint32_t>(0.5f)))};
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to even.
  const std::uint32_t odd = (magnitude >> 13) & 1u;
  const std::uint32_t rounded = magnitude + 0xfffu + odd - (112u << 23);
  return f16{static_cast<std::uint16_t>(sign | (rounded >> 13))};
}

}  // namespace kbit
