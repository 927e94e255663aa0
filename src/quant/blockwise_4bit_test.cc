// Properties of NF4/FP4 quantization on fresh random data, against float64:
// absmax is the exact block maximum; each value gets the nearest code (differing only within
// the rounding window around a decision boundary); exact ties go where bitsandbytes sends
// them; dequantization is the correctly rounded product; both CPU kernels agree byte for byte.
#include "kbit/quant/blockwise_4bit.h"

#include <algorithm>
#include <cmath>

#include <gtest/gtest.h>

#include "kbit/quant/codebooks.h"
#include "quant/property_test_support.h"

namespace kbit::quant {
namespace {

const std::array<float, 16>& table_of(FourBitType type) {
  return type == FourBitType::kNf4 ? kNf4Values : kFp4Values;
}

// Boundaries between consecutive values of the table in ascending order, as exact midpoints and
// as bitsandbytes' float32 thresholds; a code may differ from the nearest one only within a few
// ulp of the pair.
struct Boundary {
  double low_value;
  double high_value;
  double midpoint;
  double threshold;
};

std::vector<Boundary> boundaries_of(FourBitType type) {
  std::vector<Boundary> boundaries;
  if (type == FourBitType::kNf4) {
    for (int k = 0; k < 15; ++k) {
      boundaries.push_back({kNf4Values[k], kNf4Values[k + 1],
                            (double{kNf4Values[k]} + kNf4Values[k + 1]) / 2, kNf4Thresholds[k]});
    }
    return boundaries;
  }
  // FP4 magnitudes in ascending order: rank k -> value of the code kFp4RankToBits[k].
  for (int k = 0; k < 7; ++k) {
    const double low = kFp4Values[kFp4RankToBits[k]];
    const double high = kFp4Values[kFp4RankToBits[k + 1]];
    for (double sign : {1.0, -1.0}) {
      boundaries.push_back(
          {sign * low, sign * high, sign * (low + high) / 2, sign * kFp4MagnitudeThresholds[k]});
    }
  }
  return boundaries;
}

// True when value x (exact ratio to absmax) may get code `code`: its value is nearest, or x is
// within the rounding window of a boundary next to that value.
bool code_is_acceptable(double x, std::uint8_t code, FourBitType type,
                        const std::vector<Boundary>& boundaries) {
  const auto& table = table_of(type);
  double best = INFINITY;
  for (float value : table) best = std::min(best, std::fabs(value - x));
  const double chosen = table[code];
  if (std::fabs(chosen - x) == best) return true;
  for (const Boundary& b : boundaries) {
    if (chosen != b.low_value && chosen != b.high_value) continue;
    const double window = std::fabs(b.threshold - b.midpoint) + 2 * ulp32(x);
    if (std::fabs(x - b.midpoint) <= window) return true;
  }
  return false;
}

void check_one(std::int64_t n, DType dtype, FourBitType type, std::int64_t block_size,
               std::uint64_t seed, float scale) {
  SCOPED_TRACE(std::string(four_bit_type_name(type)) + " " + std::string(dtype_name(dtype)) +
               " n=" + std::to_string(n) + " block=" + std::to_string(block_size) +
               " seed=" + std::to_string(seed) + " scale=" + std::to_string(scale));
  const Tensor input = random_input(n, dtype, seed, scale);
  const std::int64_t blocks = block_count(n, block_size);
  std::vector<std::uint8_t> packed[2] = {poisoned(packed_4bit_bytes(n)),
                                         poisoned(packed_4bit_bytes(n))};
  std::vector<float> absmax[2] = {std::vector<float>(blocks, -1), std::vector<float>(blocks, -1)};
  for (int path = 0; path < 2; ++path) {
    ExecutionOptions options;
    options.cpu_kernel = path == 0 ? CpuKernel::kReference : CpuKernel::kFast;
    ASSERT_TRUE(
        quantize_4bit(input, type, block_size,
                      TensorView(packed[path].data(), DType::kU8, Shape{packed_4bit_bytes(n)}),
                      TensorView(absmax[path].data(), DType::kF32, Shape{blocks}), options)
            .ok());
  }
  ASSERT_EQ(packed[0], packed[1]) << "the fast kernel's codes differ from the reference";
  ASSERT_EQ(absmax[0], absmax[1]);

  const std::vector<Boundary> boundaries = boundaries_of(type);
  for (std::int64_t b = 0; b < blocks; ++b) {
    double expected = 0;
    for (std::int64_t i = b * block_size; i < std::min(n, (b + 1) * block_size); ++i) {
      expected = std::max(expected, std::fabs(value_as_double(input, i)));
    }
    ASSERT_EQ(absmax[0][b], expected) << "block " << b;
  }
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint8_t byte = packed[0][static_cast<std::size_t>(i / 2)];
    const std::uint8_t code = i % 2 == 0 ? byte >> 4 : byte & 0xf;
    const double x = value_as_double(input, i) / absmax[0][i / block_size];
    ASSERT_TRUE(code_is_acceptable(x, code, type, boundaries))
        << "value " << i << " (ratio " << x << ") got code " << int(code);
  }
  if (n % 2 == 1) {  // the padding nibble encodes 0.0
    EXPECT_EQ(packed[0].back() & 0xf, type == FourBitType::kNf4 ? 7 : 0);
  }

  // Dequantization: value(code) * absmax, correctly rounded to f32 and then to the output dtype.
  kernels::cpu::visit_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    std::vector<T> output[2];
    for (int path = 0; path < 2; ++path) {
      std::vector<std::uint8_t> bytes = poisoned(n * sizeof(T));
      output[path].resize(static_cast<std::size_t>(n));
      std::memcpy(output[path].data(), bytes.data(), bytes.size());
      ExecutionOptions options;
      options.cpu_kernel = path == 0 ? CpuKernel::kReference : CpuKernel::kFast;
      ASSERT_TRUE(
          dequantize_4bit(TensorView(packed[0].data(), DType::kU8, Shape{packed_4bit_bytes(n)}),
                          TensorView(absmax[0].data(), DType::kF32, Shape{blocks}), type,
                          block_size, TensorView(output[path].data(), dtype, Shape{n}), options)
              .ok());
    }
    ASSERT_EQ(std::memcmp(output[0].data(), output[1].data(), n * sizeof(T)), 0);
    for (std::int64_t i = 0; i < n; ++i) {
      const std::uint8_t byte = packed[0][static_cast<std::size_t>(i / 2)];
      const std::uint8_t code = i % 2 == 0 ? byte >> 4 : byte & 0xf;
      const double exact = double{table_of(type)[code]} * absmax[0][i / block_size];
      const T expected = kernels::cpu::from_f32<T>(static_cast<float>(exact));
      ASSERT_EQ(kernels::cpu::to_f32(output[0][static_cast<std::size_t>(i)]),
                kernels::cpu::to_f32(expected))
          << "element " << i;
    }
  });
}

TEST(Blockwise4bitPropertyTest, NearestCodesOnRandomData) {
  std::uint64_t seed = 1;
  for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (std::int64_t block_size : {32, 64, 128, 256, 512, 1024, 2048, 4096}) {
        for (std::int64_t n : test_lengths(block_size)) {
          if (n > 40000 && block_size > 256) continue;  // keeps the suite quick
          check_one(n, dtype, type, block_size, seed++, dtype == DType::kF16 ? 0.5f : 3.0f);
          if (::testing::Test::HasFatalFailure()) return;
        }
      }
    }
  }
}

// A block holding 1.0 normalises by exactly 1, so each threshold itself must go to the code
// below it (strict comparison), as bitsandbytes' decision trees do.
TEST(Blockwise4bitPropertyTest, ValuesOnThresholdsGoToTheLowerCode) {
  std::vector<float> nf4_input = {1.0f};
  for (float t : kNf4Thresholds) nf4_input.push_back(t);
  std::vector<std::uint8_t> packed(nf4_input.size() / 2);
  std::vector<float> absmax(1);
  const auto n = static_cast<std::int64_t>(nf4_input.size());
  for (CpuKernel kernel : {CpuKernel::kReference, CpuKernel::kFast}) {
    ExecutionOptions options;
    options.cpu_kernel = kernel;
    ASSERT_TRUE(quantize_4bit(TensorView(nf4_input.data(), DType::kF32, Shape{n}),
                              FourBitType::kNf4, 32,
                              TensorView(packed.data(), DType::kU8, Shape{n / 2}),
                              TensorView(absmax.data(), DType::kF32, Shape{1}), options)
                    .ok());
    EXPECT_EQ(packed[0] >> 4, 15);
    for (int k = 0; k < 15; ++k) {
      const int i = k + 1;
      const int code = i % 2 == 0 ? packed[i / 2] >> 4 : packed[i / 2] & 0xf;
      EXPECT_EQ(code, k) << "threshold " << k;
    }
  }
  // FP4: magnitudes on thresholds get the smaller magnitude; the sign comes from x < 0, so a
  // tiny negative value is code 8 (negative zero) and -0.0 is code 0.
  std::vector<float> fp4_input = {1.0f, -0.0f, -0.001f};
  for (float t : kFp4MagnitudeThresholds) {
    fp4_input.push_back(t);
    fp4_input.push_back(-t);
  }
  fp4_input.push_back(0.0f);
  const auto m = static_cast<std::int64_t>(fp4_input.size());
  std::vector<std::uint8_t> fp4_packed(static_cast<std::size_t>(m / 2));
  ASSERT_TRUE(quantize_4bit(TensorView(fp4_input.data(), DType::kF32, Shape{m}), FourBitType::kFp4,
                            32, TensorView(fp4_packed.data(), DType::kU8, Shape{m / 2}),
                            TensorView(absmax.data(), DType::kF32, Shape{1}))
                  .ok());
  const auto code_at = [&](int i) {
    return i % 2 == 0 ? fp4_packed[i / 2] >> 4 : fp4_packed[i / 2] & 0xf;
  };
  EXPECT_EQ(code_at(1), 0);
  EXPECT_EQ(code_at(2), 8);
  for (int k = 0; k < 7; ++k) {
    EXPECT_EQ(code_at(3 + 2 * k), kFp4RankToBits[k]) << "threshold " << k;
    EXPECT_EQ(code_at(4 + 2 * k), 8 | kFp4RankToBits[k]) << "threshold " << k;
  }
}

// An all-zero block has absmax 0: bitsandbytes' kernels compute 0 * inf = NaN and store code 0.
TEST(Blockwise4bitPropertyTest, AllZeroBlockEncodesAsCodeZero) {
  std::vector<float> input(64, 0.0f);
  for (int i = 32; i < 64; ++i) input[i] = static_cast<float>(i) / 64.0f;
  std::vector<std::uint8_t> packed(32, 0xab);
  std::vector<float> absmax(2, -1);
  ASSERT_TRUE(quantize_4bit(TensorView(input.data(), DType::kF32, Shape{64}), FourBitType::kNf4, 32,
                            TensorView(packed.data(), DType::kU8, Shape{32}),
                            TensorView(absmax.data(), DType::kF32, Shape{2}))
                  .ok());
  EXPECT_EQ(absmax[0], 0.0f);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(packed[i], 0x00);
  std::vector<float> output(64, -1);
  ASSERT_TRUE(dequantize_4bit(TensorView(packed.data(), DType::kU8, Shape{32}),
                              TensorView(absmax.data(), DType::kF32, Shape{2}), FourBitType::kNf4,
                              32, TensorView(output.data(), DType::kF32, Shape{64}))
                  .ok());
  for (int i = 0; i < 32; ++i) EXPECT_EQ(output[i], 0.0f);
}

TEST(Blockwise4bitTest, BlockSizes) {
  for (std::int64_t size : {32, 64, 128, 256, 512, 1024, 2048, 4096}) {
    EXPECT_TRUE(is_valid_4bit_block_size(size));
  }
  for (std::int64_t size : {0, 16, 48, 100, 8192}) EXPECT_FALSE(is_valid_4bit_block_size(size));
}

}  // namespace
}  // namespace kbit::quant
