// Element types of kbit tensors and exact scalar conversions between them.
//
// Float conversions round to nearest, ties to even, exactly as PyTorch's CPU conversions do:
// f32 -> bf16 and f32 -> f16 are correctly rounded (f16 subnormals included), overflow gives
// Inf, and NaN stays NaN (bf16 NaN is 0x7fc0, f16 NaN keeps its sign: 0x7e00 / 0xfe00).
// Widening conversions (bf16/f16 -> f32) are exact.
#pragma once

#include <bit>
#include <cstdint>
#include <optional>
#include <string_view>

namespace kbit {

enum class DType : std::uint8_t { kF32, kF16, kBF16, kI8, kU8, kI32, kI64 };

// Bytes per element.
std::size_t dtype_size(DType dtype);
// kbit's short name: "f32", "f16", "bf16", "i8", "u8", "i32", "i64".
std::string_view dtype_name(DType dtype);
// Parses a short name ("bf16"), a safetensors name ("BF16") or a PyTorch name ("bfloat16",
// "torch.bfloat16"); nullopt if none matches.
std::optional<DType> parse_dtype(std::string_view name);
bool is_floating(DType dtype);

// Storage types for the 16-bit floats: raw bits, so that no arithmetic happens by accident.
struct bf16 {
  std::uint16_t bits;
};
struct f16 {
  std::uint16_t bits;
};

inline float bf16_to_f32(bf16 value) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(value.bits) << 16);
}

inline bf16 f32_to_bf16(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return bf16{0x7fc0};  // NaN
  const std::uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return bf16{static_cast<std::uint16_t>((bits + rounding_bias) >> 16)};
}

float f16_to_f32(f16 value);
f16 f32_to_f16(float value);

}  // namespace kbit
