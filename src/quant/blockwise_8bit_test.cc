// Properties of 8-bit dynamic blockwise quantization and of nested absmax, against float64.
#include "kbit/quant/blockwise_8bit.h"

#include <algorithm>
#include <cmath>

#include <gtest/gtest.h>

#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/codebooks.h"
#include "kbit/quant/nested_absmax.h"
#include "quant/property_test_support.h"

namespace kbit::quant {
namespace {

const std::array<float, 256>& map_of(DynamicMap map) {
  return map == DynamicMap::kSigned ? kDynamicSignedMap : kDynamicUnsignedMap;
}

// The code is the nearest map value, or a neighbour of it when x is within rounding distance of
// their midpoint (bitsandbytes compares with a float32-rounded midpoint).
bool code_is_acceptable(double x, std::uint8_t code, const std::array<float, 256>& map) {
  int nearest = 0;
  for (int i = 1; i < 256; ++i) {
    if (std::fabs(map[i] - x) < std::fabs(map[nearest] - x)) nearest = i;
  }
  if (std::fabs(map[code] - x) == std::fabs(map[nearest] - x)) return true;
  if (std::abs(int{code} - nearest) != 1) return false;
  const double midpoint = (double{map[code]} + map[nearest]) / 2;
  return std::fabs(x - midpoint) <= 2 * ulp32(x) + 2 * ulp32(midpoint);
}

void check_one(std::int64_t n, DType dtype, DynamicMap map, std::int64_t block_size,
               std::uint64_t seed) {
  SCOPED_TRACE(std::string(dtype_name(dtype)) + " n=" + std::to_string(n) +
               " block=" + std::to_string(block_size) + " seed=" + std::to_string(seed));
  Tensor input = random_input(n, dtype, seed, 2.0f);
  if (map == DynamicMap::kUnsigned) {  // the unsigned map holds magnitudes (Adam's 2nd moment)
    kernels::cpu::visit_float_dtype(dtype, [&](auto type_tag) {
      using T = decltype(type_tag);
      for (std::int64_t i = 0; i < n; ++i) {
        T& value = input.data_as<T>()[i];
        value = kernels::cpu::from_f32<T>(std::fabs(kernels::cpu::to_f32(value)));
      }
    });
  }
  const std::int64_t blocks = block_count(n, block_size);
  std::vector<std::uint8_t> codes[2] = {poisoned(n), poisoned(n)};
  std::vector<float> absmax[2] = {std::vector<float>(blocks, -1), std::vector<float>(blocks, -1)};
  for (int path = 0; path < 2; ++path) {
    ExecutionOptions options;
    options.cpu_kernel = path == 0 ? CpuKernel::kReference : CpuKernel::kFast;
    ASSERT_TRUE(quantize_8bit_blockwise(
                    input, map, block_size, TensorView(codes[path].data(), DType::kU8, Shape{n}),
                    TensorView(absmax[path].data(), DType::kF32, Shape{blocks}), options)
                    .ok());
  }
  ASSERT_EQ(codes[0], codes[1]) << "the fast kernel's codes differ from the reference";
  ASSERT_EQ(absmax[0], absmax[1]);
  const auto& values = map_of(map);
  for (std::int64_t i = 0; i < n; ++i) {
    const double x = value_as_double(input, i) / absmax[0][i / block_size];
    ASSERT_TRUE(code_is_acceptable(x, codes[0][i], values))
        << "value " << i << " (ratio " << x << ") got code " << int(codes[0][i]);
  }
  std::vector<float> output[2] = {std::vector<float>(n, -1), std::vector<float>(n, -2)};
  for (int path = 0; path < 2; ++path) {
    ExecutionOptions options;
    options.cpu_kernel = path == 0 ? CpuKernel::kReference : CpuKernel::kFast;
    ASSERT_TRUE(dequantize_8bit_blockwise(
                    TensorView(codes[0].data(), DType::kU8, Shape{n}),
                    TensorView(absmax[0].data(), DType::kF32, Shape{blocks}), map, block_size,
                    TensorView(output[path].data(), DType::kF32, Shape{n}), options)
                    .ok());
  }
  ASSERT_EQ(output[0], output[1]);
  for (std::int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(output[0][i],
              static_cast<float>(double{values[codes[0][i]]} * absmax[0][i / block_size]));
  }
}

TEST(Blockwise8bitPropertyTest, NearestCodesOnRandomData) {
  std::uint64_t seed = 100;
  for (DynamicMap map : {DynamicMap::kSigned, DynamicMap::kUnsigned}) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (std::int64_t block_size : {64, 256, 1024, 4096}) {
        for (std::int64_t n : test_lengths(block_size)) {
          if (n > 40000 && block_size > 256) continue;
          check_one(n, dtype, map, block_size, seed++);
          if (::testing::Test::HasFatalFailure()) return;
        }
      }
    }
  }
}

// bitsandbytes' search sends a value exactly on the (float32) midpoint between an even index p
// and either neighbour to p. With 1.0 in the block the ratio is the value itself.
TEST(Blockwise8bitPropertyTest, MidpointTiesGoToTheEvenIndex) {
  for (DynamicMap map : {DynamicMap::kSigned, DynamicMap::kUnsigned}) {
    const auto& values = map_of(map);
    std::vector<float> input = {1.0f};
    std::vector<int> expected = {255};
    for (int p = 2; p <= 252; p += 2) {
      input.push_back((values[p] + values[p + 1]) * 0.5f);
      expected.push_back(p);
      input.push_back((values[p - 1] + values[p]) * 0.5f);
      expected.push_back(p);
    }
    const auto n = static_cast<std::int64_t>(input.size());
    for (CpuKernel kernel : {CpuKernel::kReference, CpuKernel::kFast}) {
      ExecutionOptions options;
      options.cpu_kernel = kernel;
      std::vector<std::uint8_t> codes(input.size());
      std::vector<float> absmax(1);
      ASSERT_TRUE(quantize_8bit_blockwise(TensorView(input.data(), DType::kF32, Shape{n}), map,
                                          4096, TensorView(codes.data(), DType::kU8, Shape{n}),
                                          TensorView(absmax.data(), DType::kF32, Shape{1}), options)
                      .ok());
      for (std::size_t i = 0; i < input.size(); ++i) {
        ASSERT_EQ(codes[i], expected[i]) << "value " << input[i] << " (entry " << i << ")";
      }
    }
  }
}

TEST(NestedAbsmaxTest, ReconstructsWithinTheEightBitStep) {
  for (std::int64_t blocks : {1, 255, 256, 257, 1000, 70000}) {
    std::vector<float> absmax(static_cast<std::size_t>(blocks));
    for (std::int64_t i = 0; i < blocks; ++i) {
      absmax[i] = 0.05f + static_cast<float>(std::fabs(normal_sample(7, i))) * 0.1f;
    }
    const std::int64_t nested_blocks = block_count(blocks, kNestedBlockSize);
    for (CpuKernel kernel : {CpuKernel::kReference, CpuKernel::kFast}) {
      ExecutionOptions options;
      options.cpu_kernel = kernel;
      std::vector<std::uint8_t> codes = poisoned(blocks);
      std::vector<float> nested(nested_blocks, -1), reconstructed(blocks, -1);
      float offset = -1;
      ASSERT_TRUE(
          quantize_absmax_nested(TensorView(absmax.data(), DType::kF32, Shape{blocks}),
                                 TensorView(codes.data(), DType::kU8, Shape{blocks}),
                                 TensorView(nested.data(), DType::kF32, Shape{nested_blocks}),
                                 &offset, options)
              .ok());
      double mean = 0;
      for (float value : absmax) mean += value;
      mean /= static_cast<double>(blocks);
      EXPECT_NEAR(offset, mean, 1e-6 * mean);
      ASSERT_TRUE(dequantize_absmax_nested(
                      TensorView(codes.data(), DType::kU8, Shape{blocks}),
                      TensorView(nested.data(), DType::kF32, Shape{nested_blocks}), offset,
                      TensorView(reconstructed.data(), DType::kF32, Shape{blocks}), options)
                      .ok());
      for (std::int64_t i = 0; i < blocks; ++i) {
        // The signed map's widest gap (its top decade: 64 steps over 0.1 ... 1.0) is 0.0141 of
        // the nested absmax, so rounding to the nearest code errs by at most half of that.
        ASSERT_NEAR(reconstructed[i], absmax[i], 0.00704 * nested[i / kNestedBlockSize] + 1e-7)
            << "block " << i;
      }
    }
  }
}

TEST(NestedAbsmaxTest, MeanFollowsTorchCudaOrder) {
  // Small sums are order-independent; the golden test pins the order on real data.
  const float values[] = {1.0f, 2.0f, 3.0f, 4.0f};
  EXPECT_EQ(mean_in_torch_cuda_order(values, 4), 2.5f);
  EXPECT_EQ(mean_in_torch_cuda_order(values, 1), 1.0f);
}

}  // namespace
}  // namespace kbit::quant
