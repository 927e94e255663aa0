#include "kbit/core/convert.h"

#include <cmath>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

namespace kbit {
namespace {

template <typename From, typename To>
std::vector<To> convert(std::vector<From> values, DType from, DType to) {
  std::vector<To> out(values.size());
  const auto n = static_cast<std::int64_t>(values.size());
  const Status status = convert_tensor(TensorView(values.data(), from, Shape{n}),
                                       TensorView(out.data(), to, Shape{n}));
  EXPECT_TRUE(status.ok()) << status.to_string();
  return out;
}

TEST(ConvertTest, FloatToIntTruncatesTowardZero) {
  EXPECT_EQ(
      (convert<float, std::int32_t>({2.9f, -2.9f, 0.5f, -0.0f, 1e9f}, DType::kF32, DType::kI32)),
      (std::vector<std::int32_t>{2, -2, 0, 0, 1000000000}));
  EXPECT_EQ((convert<float, std::uint8_t>({255.9f, 0.7f}, DType::kF32, DType::kU8)),
            (std::vector<std::uint8_t>{255, 0}));
}

TEST(ConvertTest, IntToIntWraps) {
  EXPECT_EQ((convert<std::int64_t, std::int8_t>({300, -129, 127}, DType::kI64, DType::kI8)),
            (std::vector<std::int8_t>{44, 127, 127}));
  EXPECT_EQ((convert<std::int32_t, std::uint8_t>({-1, 256}, DType::kI32, DType::kU8)),
            (std::vector<std::uint8_t>{255, 0}));
}

TEST(ConvertTest, IntToFloatRoundsToNearestEven) {
  // 2^24 + 1 is not representable in f32: ties to even gives 2^24.
  EXPECT_EQ((convert<std::int64_t, float>({16777217, -3}, DType::kI64, DType::kF32)),
            (std::vector<float>{16777216.0f, -3.0f}));
  // 257 in bf16 (8 significant bits): 256 (tie to even); 259 -> 260.
  const auto bf = convert<std::int32_t, bf16>({257, 259}, DType::kI32, DType::kBF16);
  EXPECT_EQ(bf16_to_f32(bf[0]), 256.0f);
  EXPECT_EQ(bf16_to_f32(bf[1]), 260.0f);
}

TEST(ConvertTest, FloatToFloatKeepsSpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  const auto half =
      convert<float, f16>({inf, -inf, NAN, 1e6f, 1.0009765625f}, DType::kF32, DType::kF16);
  EXPECT_EQ(half[0].bits, 0x7c00);
  EXPECT_EQ(half[1].bits, 0xfc00);
  EXPECT_TRUE(std::isnan(f16_to_f32(half[2])));
  EXPECT_EQ(half[3].bits, 0x7c00);  // overflow
  EXPECT_EQ(f16_to_f32(half[4]), 1.0009765625f);
  const auto back = convert<f16, bf16>(half, DType::kF16, DType::kBF16);
  EXPECT_EQ(back[0].bits, 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(back[2])));
}

TEST(ConvertTest, RejectsValuesWithoutAnIntegerValue) {
  std::vector<float> values = {1.0f, NAN};
  std::vector<std::int32_t> out(2);
  const Status status = convert_tensor(TensorView(values.data(), DType::kF32, Shape{2}),
                                       TensorView(out.data(), DType::kI32, Shape{2}));
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("element 1"), std::string::npos);
  std::vector<float> big = {300.0f};
  std::vector<std::int8_t> small(1);
  EXPECT_FALSE(convert_tensor(TensorView(big.data(), DType::kF32, Shape{1}),
                              TensorView(small.data(), DType::kI8, Shape{1}))
                   .ok());
  EXPECT_FALSE(convert_tensor(TensorView(big.data(), DType::kF32, Shape{1}),
                              TensorView(small.data(), DType::kI8, Shape{2}))
                   .ok());
}

}  // namespace
}  // namespace kbit
