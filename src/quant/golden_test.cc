// kbit's CPU quantizers against bitsandbytes' CUDA kernels (../shared/golden).
//
// Every byte must match: the CPU kernels normalise with the GPU's approximate reciprocal and
// division, reproduced bit for bit (kernels/cpu/gpu_approx_math.h), so even values lying exactly
// on a decision boundary get bitsandbytes' codes. Both CPU paths run: the scalar reference and
// the fast (SIMD, multi-threaded) kernels.
#include <bit>
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/blockwise_8bit.h"
#include "kbit/quant/codebooks.h"
#include "kbit/quant/int8_rowwise.h"
#include "kbit/quant/nested_absmax.h"
#include "kernels/cpu/element_access.h"
#include "testing/golden.h"

namespace kbit::quant {
namespace {

constexpr std::int64_t kGoldenValues = 64000;
const std::vector<std::int64_t> kGoldenBlockSizes = {64, 128, 256, 512, 1024, 2048, 4096};
const std::vector<DType> kGoldenDtypes = {DType::kF32, DType::kBF16, DType::kF16};

float value_at(const TensorView& tensor, std::int64_t i) {
  float value = 0;
  kernels::cpu::visit_float_dtype(tensor.dtype(), [&](auto type_tag) {
    value = kernels::cpu::to_f32(tensor.data_as<const decltype(type_tag)>()[i]);
  });
  return value;
}

template <typename T>
TensorView view_of(std::vector<T>& values, DType dtype) {
  return TensorView(values.data(), dtype, Shape{static_cast<std::int64_t>(values.size())});
}

std::uint8_t nibble(const std::vector<std::uint8_t>& packed, std::int64_t i) {
  const std::uint8_t byte = packed[static_cast<std::size_t>(i / 2)];
  return i % 2 == 0 ? byte >> 4 : byte & 0x0f;
}

// Codes of ours that differ from the golden ones: how many, and the first.
struct CodeDifferences {
  int count = 0;
  std::string first;

  void add(std::int64_t index, float value, int ours, int golden) {
    if (count++ == 0) {
      first = "index " + std::to_string(index) + " value " + std::to_string(value) + ": ours " +
              std::to_string(ours) + ", bitsandbytes " + std::to_string(golden);
    }
  }
};

// Bit-equal floats, where -0.0 equals +0.0 (FP4 code 8, spec 1.2).
template <typename T>
bool same_value_bits(const std::vector<T>& a, const std::vector<T>& b, std::string* where) {
  if (a.size() != b.size()) {
    *where = "sizes differ";
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    const float x = kernels::cpu::to_f32(a[i]);
    const float y = kernels::cpu::to_f32(b[i]);
    const bool equal = (x == 0.0f && y == 0.0f) ||
                       std::bit_cast<std::uint32_t>(x) == std::bit_cast<std::uint32_t>(y);
    if (!equal) {
      *where = "index " + std::to_string(i) + ": " + std::to_string(x) + " vs " + std::to_string(y);
      return false;
    }
  }
  return true;
}

class GoldenTest : public ::testing::TestWithParam<CpuKernel> {
 protected:
  void SetUp() override {
    if (!testing::shared_dir()) {
      GTEST_SKIP() << "KBIT_SHARED_DIR is not set or does not exist: this test needs the "
                      "reference data in ../shared (run with KBIT_SHARED_DIR=../shared)";
    }
  }
  ExecutionOptions options() const {
    ExecutionOptions execution;
    execution.cpu_kernel = GetParam();
    return execution;
  }
};

// Golden 4-bit keys: {nf4,fp4}_{f32,bf16,f16}_bs{B}.
std::string four_bit_key(FourBitType type, DType dtype, std::int64_t block_size) {
  return std::string(four_bit_type_name(type)) + "_" + std::string(dtype_name(dtype)) + "_bs" +
         std::to_string(block_size);
}

TEST_P(GoldenTest, FourBitCodesAndAbsmaxMatchBitsandbytes) {
  Result<io::SafetensorsFile> file = testing::open_golden("quant4bit.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    for (DType dtype : kGoldenDtypes) {
      const TensorView input = *file->tensor("input_" + std::string(dtype_name(dtype)));
      for (std::int64_t block_size : kGoldenBlockSizes) {
        const std::string key = four_bit_key(type, dtype, block_size);
        std::vector<std::uint8_t> packed(kGoldenValues / 2, 0xab);
        std::vector<float> absmax(static_cast<std::size_t>(block_count(kGoldenValues, block_size)),
                                  -1.0f);
        ASSERT_TRUE(quantize_4bit(input, type, block_size, view_of(packed, DType::kU8),
                                  view_of(absmax, DType::kF32), options())
                        .ok());
        const auto golden_packed = testing::golden_values<std::uint8_t>(*file, key + ".packed");
        const auto golden_absmax = testing::golden_values<float>(*file, key + ".absmax");
        ASSERT_EQ(golden_absmax.size(), absmax.size()) << key;
        EXPECT_EQ(std::memcmp(absmax.data(), golden_absmax.data(), absmax.size() * 4), 0) << key;
        CodeDifferences differences;
        for (std::int64_t i = 0; i < kGoldenValues; ++i) {
          const std::uint8_t ours = nibble(packed, i);
          const std::uint8_t golden = nibble(golden_packed, i);
          if (ours != golden) differences.add(i, value_at(input, i), ours, golden);
        }
        // Including the FP4 codes of bf16/f16 values whose ratio to absmax is exactly an FP4
        // threshold, which IEEE 1/absmax decided differently (4 to 15 per 64 000; spec 0.1).
        EXPECT_EQ(differences.count, 0) << key << ": first " << differences.first;
      }
    }
  }
}

TEST_P(GoldenTest, FourBitDequantizationMatchesBitsandbytes) {
  Result<io::SafetensorsFile> file = testing::open_golden("quant4bit.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  int checked = 0;
  for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    for (DType dtype : kGoldenDtypes) {
      for (std::int64_t block_size : kGoldenBlockSizes) {
        const std::string key = four_bit_key(type, dtype, block_size);
        if (!file->contains(key + ".dequantized")) continue;
        auto packed = testing::golden_values<std::uint8_t>(*file, key + ".packed");
        auto absmax = testing::golden_values<float>(*file, key + ".absmax");
        kernels::cpu::visit_float_dtype(dtype, [&](auto type_tag) {
          using T = decltype(type_tag);
          std::vector<T> output(kGoldenValues, T{});
          ASSERT_TRUE(dequantize_4bit(view_of(packed, DType::kU8), view_of(absmax, DType::kF32),
                                      type, block_size, view_of(output, dtype), options())
                          .ok());
          std::string where;
          EXPECT_TRUE(same_value_bits(
              output, testing::golden_values<T>(*file, key + ".dequantized"), &where))
              << key << " " << where;
        });
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 2 * (7 + 1 + 1));  // all block sizes for f32, block size 64 for bf16, f16
}

TEST_P(GoldenTest, DoubleQuantizationMatchesBitsandbytes) {
  Result<io::SafetensorsFile> file = testing::open_golden("quant4bit.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    for (DType dtype : kGoldenDtypes) {
      for (std::int64_t block_size : {64, 256}) {
        const std::string key = four_bit_key(type, dtype, block_size);
        const std::string dq_key = key + "_dq";
        // Double quantization starts from the true absmax, checked equal in the test above.
        auto absmax = testing::golden_values<float>(*file, key + ".absmax");
        const auto blocks = static_cast<std::int64_t>(absmax.size());
        std::vector<std::uint8_t> codes(absmax.size(), 0xab);
        std::vector<float> nested(static_cast<std::size_t>(block_count(blocks, kNestedBlockSize)),
                                  -1.0f);
        float offset = -1.0f;
        ASSERT_TRUE(quantize_absmax_nested(view_of(absmax, DType::kF32), view_of(codes, DType::kU8),
                                           view_of(nested, DType::kF32), &offset, options())
                        .ok());
        const auto golden_offset = testing::golden_values<float>(*file, dq_key + ".offset");
        const auto golden_nested = testing::golden_values<float>(*file, dq_key + ".nested_absmax");
        const auto golden_codes = testing::golden_values<std::uint8_t>(*file, dq_key + ".absmax");
        EXPECT_EQ(std::bit_cast<std::uint32_t>(offset),
                  std::bit_cast<std::uint32_t>(golden_offset.at(0)))
            << dq_key << ": offset " << offset << " vs " << golden_offset.at(0);
        EXPECT_EQ(nested, golden_nested) << dq_key;
        EXPECT_EQ(codes, golden_codes) << dq_key;
        // The golden 4-bit codes with the golden nested absmax dequantize as bitsandbytes does.
        if (!file->contains(dq_key + ".dequantized")) continue;
        auto packed = testing::golden_values<std::uint8_t>(*file, dq_key + ".packed");
        auto stored_codes = golden_codes;
        auto stored_nested = golden_nested;
        std::vector<float> reconstructed(absmax.size());
        ASSERT_TRUE(dequantize_absmax_nested(
                        view_of(stored_codes, DType::kU8), view_of(stored_nested, DType::kF32),
                        golden_offset.at(0), view_of(reconstructed, DType::kF32), options())
                        .ok());
        kernels::cpu::visit_float_dtype(dtype, [&](auto type_tag) {
          using T = decltype(type_tag);
          std::vector<T> output(kGoldenValues, T{});
          ASSERT_TRUE(dequantize_4bit(view_of(packed, DType::kU8),
                                      view_of(reconstructed, DType::kF32), type, block_size,
                                      view_of(output, dtype), options())
                          .ok());
          std::string where;
          EXPECT_TRUE(same_value_bits(
              output, testing::golden_values<T>(*file, dq_key + ".dequantized"), &where))
              << dq_key << " " << where;
        });
      }
    }
  }
}

TEST_P(GoldenTest, EightBitBlockwiseMatchesBitsandbytes) {
  Result<io::SafetensorsFile> file = testing::open_golden("quant8bit_blockwise.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  const TensorView input = *file->tensor("input");
  const std::int64_t n = input.numel();
  for (std::int64_t block_size : {256, 2048, 4096}) {
    const std::string key = "bs" + std::to_string(block_size) + "_cuda";
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(n), 0xab);
    std::vector<float> absmax(static_cast<std::size_t>(block_count(n, block_size)), -1.0f);
    ASSERT_TRUE(quantize_8bit_blockwise(input, DynamicMap::kSigned, block_size,
                                        view_of(codes, DType::kU8), view_of(absmax, DType::kF32),
                                        options())
                    .ok());
    auto golden_codes = testing::golden_values<std::uint8_t>(*file, key + ".codes");
    auto golden_absmax = testing::golden_values<float>(*file, key + ".absmax");
    EXPECT_EQ(absmax, golden_absmax) << key;
    CodeDifferences differences;
    for (std::int64_t i = 0; i < n; ++i) {
      const auto index = static_cast<std::size_t>(i);
      if (codes[index] != golden_codes[index]) {
        differences.add(i, input.data_as<float>()[i], codes[index], golden_codes[index]);
      }
    }
    EXPECT_EQ(differences.count, 0) << key << ": first " << differences.first;
    std::vector<float> output(static_cast<std::size_t>(n), -1.0f);
    ASSERT_TRUE(dequantize_8bit_blockwise(view_of(golden_codes, DType::kU8),
                                          view_of(golden_absmax, DType::kF32), DynamicMap::kSigned,
                                          block_size, view_of(output, DType::kF32), options())
                    .ok());
    EXPECT_EQ(output, testing::golden_values<float>(*file, key + ".dequantized")) << key;
  }
}

// Row-wise int8 codes against golden ones.
CodeDifferences compare_int8_codes(const TensorView& input, const std::vector<std::int8_t>& codes,
                                   const std::vector<std::int8_t>& golden) {
  CodeDifferences differences;
  if (codes.size() != golden.size()) {
    ADD_FAILURE() << codes.size() << " codes, " << golden.size() << " golden ones";
    return differences;
  }
  for (std::size_t i = 0; i < codes.size(); ++i) {
    if (codes[i] == golden[i]) continue;
    const auto index = static_cast<std::int64_t>(i);
    differences.add(index, value_at(input, index), codes[i], golden[i]);
  }
  return differences;
}

TEST_P(GoldenTest, Int8RowwiseMatchesBitsandbytes) {
  Result<io::SafetensorsFile> file = testing::open_golden("int8.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().to_string();

  const TensorView weight = *file->tensor("weight_f16");
  std::vector<std::int8_t> codes(static_cast<std::size_t>(weight.numel()), 99);
  std::vector<float> scb(static_cast<std::size_t>(weight.shape()[0]), -1.0f);
  std::vector<std::int64_t> outliers;
  ASSERT_TRUE(quantize_int8_rowwise(weight, 0.0f,
                                    TensorView(codes.data(), DType::kI8, weight.shape()),
                                    view_of(scb, DType::kF32), &outliers, options())
                  .ok());
  EXPECT_EQ(scb, testing::golden_values<float>(*file, "weight_SCB"));
  EXPECT_TRUE(outliers.empty());
  const auto golden_weight = testing::golden_values<std::int8_t>(*file, "weight_int8");
  // Including the 27 exact half-integers (with IEEE 127 / absmax) that the GPU's div.approx
  // rounds the other way (spec 0.1).
  const CodeDifferences weight_differences = compare_int8_codes(weight, codes, golden_weight);
  EXPECT_EQ(weight_differences.count, 0) << "first " << weight_differences.first;
  EXPECT_EQ(golden_weight, testing::golden_values<std::int8_t>(*file, "state_weight_thr0"));
  EXPECT_EQ(golden_weight, testing::golden_values<std::int8_t>(*file, "state_weight_thr6"));

  const TensorView x = *file->tensor("x_f16");
  std::vector<std::int8_t> x_codes(static_cast<std::size_t>(x.numel()), 99);
  std::vector<float> row_stats(static_cast<std::size_t>(x.shape()[0]), -1.0f);
  ASSERT_TRUE(quantize_int8_rowwise(x, 6.0f, TensorView(x_codes.data(), DType::kI8, x.shape()),
                                    view_of(row_stats, DType::kF32), &outliers, options())
                  .ok());
  EXPECT_EQ(row_stats, testing::golden_values<float>(*file, "x_rowstats_thr6"));
  EXPECT_EQ(outliers, testing::golden_values<std::int64_t>(*file, "x_outlier_cols_thr6"));
  const CodeDifferences x_differences =
      compare_int8_codes(x, x_codes, testing::golden_values<std::int8_t>(*file, "x_int8_thr6"));
  EXPECT_EQ(x_differences.count, 0) << "first " << x_differences.first;  // with IEEE: 1 (spec 0.1)
}

INSTANTIATE_TEST_SUITE_P(CpuKernels, GoldenTest,
                         ::testing::Values(CpuKernel::kReference, CpuKernel::kFast),
                         [](const ::testing::TestParamInfo<CpuKernel>& kernel) {
                           return kernel.param == CpuKernel::kReference ? "Reference" : "Fast";
                         });

}  // namespace
}  // namespace kbit::quant
