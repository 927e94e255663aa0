#include "kbit/core/dtype.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

namespace kbit {
namespace {

std::uint32_t bits_of(float value) {
  return std::bit_cast<std::uint32_t>(value);
}

TEST(DTypeTest, NamesAndSizesRoundTrip) {
  for (DType dtype :
       {DType::kF32, DType::kF16, DType::kBF16, DType::kI8, DType::kU8, DType::kI32, DType::kI64}) {
    EXPECT_EQ(parse_dtype(dtype_name(dtype)), dtype);
  }
  EXPECT_EQ(parse_dtype("BF16"), DType::kBF16);
  EXPECT_EQ(parse_dtype("torch.float16"), DType::kF16);
  EXPECT_EQ(parse_dtype("float32"), DType::kF32);
  EXPECT_EQ(parse_dtype("F64"), std::nullopt);
  EXPECT_EQ(dtype_size(DType::kI64), 8u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
}

// bf16 keeps the top 16 bits, rounding the low 16 to nearest, ties to even.
TEST(DTypeTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f).bits, 0x3f80);
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f808000u)).bits, 0x3f80);  // tie, even below
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f818000u)).bits, 0x3f82);  // tie, even above
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f808001u)).bits, 0x3f81);
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x7f7fffffu)).bits, 0x7f80);  // overflow to Inf
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()).bits, 0xff80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()).bits, 0x7fc0);
  EXPECT_EQ(f32_to_bf16(-0.0f).bits, 0x8000);
  EXPECT_EQ(bits_of(bf16_to_f32(bf16{0xc0a0})), 0xc0a00000u);
}

// Every f16 value widens exactly and narrows back to itself.
TEST(DTypeTest, F16RoundTripsEveryValue) {
  for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const f16 value{static_cast<std::uint16_t>(bits)};
    const float wide = f16_to_f32(value);
    if (std::isnan(wide)) {
      EXPECT_EQ(f32_to_f16(wide).bits & 0x7e00, 0x7e00);
      continue;
    }
    ASSERT_EQ(f32_to_f16(wide).bits, bits) << "f16 bits " << bits;
  }
}

// Narrowing matches a float64 round-to-nearest-even model on many f32 values, subnormals and
// overflow included.
TEST(DTypeTest, F16NarrowingMatchesExactRounding) {
  std::uint32_t state = 12345;
  for (int i = 0; i < 2000000; ++i) {
    state = state * 1664525u + 1013904223u;
    // Exponents spanning f16's subnormals to beyond its range.
    const std::uint32_t bits = (state & 0x807fffffu) | ((100u + (state >> 24) % 50u) << 23);
    const float value = std::bit_cast<float>(bits);
    const f16 narrowed = f32_to_f16(value);
    const double wide = f16_to_f32(narrowed);
    // The result is a neighbour of value, and no f16 value lies strictly closer.
    const double error = std::fabs(wide - static_cast<double>(value));
    const f16 up{static_cast<std::uint16_t>(narrowed.bits + 1)};
    const f16 down{static_cast<std::uint16_t>(narrowed.bits - 1)};
    if (std::isinf(wide)) {
      ASSERT_GE(std::fabs(value), 65520.0f) << bits;
      continue;
    }
    for (f16 other : {up, down}) {
      const double candidate = f16_to_f32(other);
      if (std::isnan(candidate) || std::isinf(candidate)) continue;
      const double other_error = std::fabs(candidate - static_cast<double>(value));
      ASSERT_TRUE(error < other_error || (error == other_error && (narrowed.bits & 1) == 0))
          << "f32 bits " << std::hex << bits;
    }
  }
}

TEST(DTypeTest, F16SpecialValues) {
  EXPECT_EQ(f32_to_f16(65504.0f).bits, 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.996f).bits, 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f).bits, 0x7c00);  // the tie rounds up to Inf
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()).bits, 0x7c00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::quiet_NaN()).bits, 0xfe00);
  EXPECT_EQ(f32_to_f16(5.9604645e-08f).bits, 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(2.9802322e-08f).bits, 0x0000);  // half of it: tie to even (zero)
  EXPECT_EQ(f32_to_f16(-1.0e-9f).bits, 0x8000);
  EXPECT_EQ(bits_of(f16_to_f32(f16{0x3c00})), bits_of(1.0f));
  EXPECT_EQ(f16_to_f32(f16{0x0001}), 5.9604645e-08f);
}

}  // namespace
}  // namespace kbit
