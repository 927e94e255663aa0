// Properties of LLM.int8 row-wise quantization against float64.
#include "kbit/quant/int8_rowwise.h"

#include <algorithm>
#include <cmath>

#include <gtest/gtest.h>

#include "quant/property_test_support.h"

namespace kbit::quant {
namespace {

struct Int8Output {
  std::vector<std::int8_t> codes;
  std::vector<float> row_absmax;
  std::vector<std::int64_t> outliers;
};

Int8Output quantize(const TensorView& input, float threshold, CpuKernel kernel) {
  const std::int64_t rows = input.shape()[0];
  Int8Output out{std::vector<std::int8_t>(static_cast<std::size_t>(input.numel()), 99),
                 std::vector<float>(static_cast<std::size_t>(rows), -1),
                 {}};
  ExecutionOptions options;
  options.cpu_kernel = kernel;
  const Status status = quantize_int8_rowwise(
      input, threshold, TensorView(out.codes.data(), DType::kI8, input.shape()),
      TensorView(out.row_absmax.data(), DType::kF32, Shape{rows}), &out.outliers, options);
  EXPECT_TRUE(status.ok()) << status.to_string();
  return out;
}

void check_one(std::int64_t rows, std::int64_t cols, DType dtype, float threshold,
               std::uint64_t seed) {
  SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + std::to_string(rows) + "x" +
               std::to_string(cols) + " threshold " + std::to_string(threshold));
  const Tensor flat = random_input(rows * cols, dtype, seed, 1.5f);
  const TensorView input = *flat.view().reshaped(Shape{rows, cols});
  const Int8Output reference = quantize(input, threshold, CpuKernel::kReference);
  const Int8Output fast = quantize(input, threshold, CpuKernel::kFast);
  ASSERT_EQ(reference.codes, fast.codes);
  ASSERT_EQ(reference.row_absmax, fast.row_absmax);
  ASSERT_EQ(reference.outliers, fast.outliers);

  // Values are rounded to f16 first; outliers are |x| >= threshold.
  const auto value = [&](std::int64_t r, std::int64_t j) {
    return double{f16_to_f32(f32_to_f16(static_cast<float>(value_as_double(input, r * cols + j))))};
  };
  const auto is_outlier = [&](double x) { return threshold > 0 && std::fabs(x) >= threshold; };
  std::vector<bool> outlier_column(static_cast<std::size_t>(cols), false);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < cols; ++j) {
      if (is_outlier(value(r, j))) outlier_column[static_cast<std::size_t>(j)] = true;
    }
  }
  std::vector<std::int64_t> expected_outliers;
  for (std::int64_t j = 0; j < cols; ++j) {
    if (outlier_column[static_cast<std::size_t>(j)]) expected_outliers.push_back(j);
  }
  ASSERT_EQ(reference.outliers, expected_outliers);
  for (std::int64_t r = 0; r < rows; ++r) {
    double absmax = 0;
    for (std::int64_t j = 0; j < cols; ++j) {
      if (!is_outlier(value(r, j))) absmax = std::max(absmax, std::fabs(value(r, j)));
    }
    ASSERT_EQ(reference.row_absmax[r], absmax) << "row " << r;
    for (std::int64_t j = 0; j < cols; ++j) {
      const int code = reference.codes[static_cast<std::size_t>(r * cols + j)];
      const bool zeroed =
          is_outlier(value(r, j)) || (rows > 1 && outlier_column[static_cast<std::size_t>(j)]);
      if (zeroed) {
        ASSERT_EQ(code, 0) << "row " << r << " col " << j;
        continue;
      }
      // Round half to even of x * 127 / absmax, within the float32 rounding of the scale.
      const double scaled = value(r, j) * 127.0 / absmax;
      ASSERT_LE(std::fabs(code - scaled), 0.5 + 1e-4) << "row " << r << " col " << j;
      ASSERT_LE(std::abs(code), 127);
    }
  }
}

TEST(Int8RowwisePropertyTest, RoundsToNearestWithOutliers) {
  std::uint64_t seed = 300;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (float threshold : {0.0f, 6.0f, 3.0f}) {
      for (auto [rows, cols] : std::vector<std::pair<std::int64_t, std::int64_t>>{
               {1, 1}, {1, 37}, {3, 64}, {16, 512}, {7, 1000}, {64, 333}}) {
        check_one(rows, cols, dtype, threshold, seed++);
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
  }
}

TEST(Int8RowwisePropertyTest, HalfIntegersRoundToEvenAndZeroRowsStayZero) {
  // Row 0: absmax 127 so codes equal the values; 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -3.5 -> -4.
  // Row 1: all zeros gives absmax 0 and codes 0.
  std::vector<float> input = {127.0f, 0.5f, 1.5f, 2.5f, -3.5f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  const Int8Output out =
      quantize(TensorView(input.data(), DType::kF32, Shape{2, 5}), 0.0f, CpuKernel::kReference);
  EXPECT_EQ(out.codes, (std::vector<std::int8_t>{127, 0, 2, 2, -4, 0, 0, 0, 0, 0}));
  EXPECT_EQ(out.row_absmax, (std::vector<float>{127.0f, 0.0f}));
}

TEST(Int8RowwisePropertyTest, DequantizesAsCodeTimesAbsmaxOver127) {
  std::vector<std::int8_t> codes = {127, -127, 64, 0, 1, -1};
  std::vector<float> absmax = {2.0f, 0.5f};
  std::vector<float> output(6, -1);
  ASSERT_TRUE(dequantize_int8_rowwise(TensorView(codes.data(), DType::kI8, Shape{2, 3}),
                                      TensorView(absmax.data(), DType::kF32, Shape{2}),
                                      TensorView(output.data(), DType::kF32, Shape{2, 3}))
                  .ok());
  for (int i = 0; i < 6; ++i) {
    EXPECT_NEAR(output[i], codes[i] * absmax[i / 3] / 127.0, 1e-6) << i;
  }
}

}  // namespace
}  // namespace kbit::quant
