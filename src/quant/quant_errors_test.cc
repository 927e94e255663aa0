// Bad input to the quantizers returns a Status that names the problem and the fix.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/blockwise_8bit.h"
#include "kbit/quant/int8_rowwise.h"
#include "kbit/quant/nested_absmax.h"

namespace kbit::quant {
namespace {

// Expects kInvalidArgument (or `code`) with every fragment in the message.
void expect_error(const Status& status, std::vector<std::string> fragments,
                  StatusCode code = StatusCode::kInvalidArgument) {
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), code) << status.to_string();
  for (const std::string& fragment : fragments) {
    EXPECT_NE(status.message().find(fragment), std::string::npos)
        << "'" << fragment << "' not in: " << status.message();
  }
}

class QuantErrorsTest : public ::testing::Test {
 protected:
  std::vector<float> input_ = std::vector<float>(1000, 0.25f);
  std::vector<std::uint8_t> packed_ = std::vector<std::uint8_t>(500);
  std::vector<float> absmax_ = std::vector<float>(16);

  TensorView input() { return TensorView(input_.data(), DType::kF32, Shape{1000}); }
  TensorView packed(std::int64_t bytes = 500) {
    return TensorView(packed_.data(), DType::kU8, Shape{bytes});
  }
  TensorView absmax(std::int64_t count = 16) {
    return TensorView(absmax_.data(), DType::kF32, Shape{count});
  }
};

TEST_F(QuantErrorsTest, UnsupportedBlockSize) {
  expect_error(quantize_4bit(input(), FourBitType::kNf4, 48, packed(), absmax()),
               {"block size 48", "use one of 32, 64"});
  expect_error(dequantize_4bit(packed(), absmax(), FourBitType::kFp4, 8192, input()),
               {"block size 8192"});
  std::vector<std::uint8_t> codes(1000);
  expect_error(quantize_8bit_blockwise(input(), DynamicMap::kSigned, 32,
                                       TensorView(codes.data(), DType::kU8, Shape{1000}), absmax()),
               {"block size 32", "8-bit", "use one of 64"});
}

TEST_F(QuantErrorsTest, NonFiniteInputNamesTheElements) {
  for (float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    input_[700] = bad;
    for (CpuKernel kernel : {CpuKernel::kReference, CpuKernel::kFast}) {
      ExecutionOptions options;
      options.cpu_kernel = kernel;
      expect_error(quantize_4bit(input(), FourBitType::kNf4, 64, packed(), absmax(), options),
                   {"NaN or Inf", "elements [640, 704)", "finite"});
      std::vector<std::uint8_t> codes(1000);
      std::vector<float> absmax8(4);
      expect_error(
          quantize_8bit_blockwise(input(), DynamicMap::kSigned, 256,
                                  TensorView(codes.data(), DType::kU8, Shape{1000}),
                                  TensorView(absmax8.data(), DType::kF32, Shape{4}), options),
          {"NaN or Inf", "elements [512, 768)"});
      std::vector<std::int8_t> int8_codes(1000);
      std::vector<float> rows(10);
      expect_error(
          quantize_int8_rowwise(TensorView(input_.data(), DType::kF32, Shape{10, 100}), 6.0f,
                                TensorView(int8_codes.data(), DType::kI8, Shape{10, 100}),
                                TensorView(rows.data(), DType::kF32, Shape{10}), nullptr, options),
          {"row 7", "NaN, Inf"});
    }
  }
}

TEST_F(QuantErrorsTest, Int8RejectsValuesBeyondF16) {
  input_[5] = 70000.0f;  // finite in f32, Inf once rounded to f16 as bitsandbytes does
  std::vector<std::int8_t> codes(1000);
  std::vector<float> rows(10);
  expect_error(quantize_int8_rowwise(TensorView(input_.data(), DType::kF32, Shape{10, 100}), 0.0f,
                                     TensorView(codes.data(), DType::kI8, Shape{10, 100}),
                                     TensorView(rows.data(), DType::kF32, Shape{10}), nullptr),
               {"row 0", "65504"});
}

TEST_F(QuantErrorsTest, EmptyTensor) {
  expect_error(quantize_4bit(TensorView(input_.data(), DType::kF32, Shape{0}), FourBitType::kNf4,
                             64, packed(0), absmax(0)),
               {"input", "is empty"});
}

TEST_F(QuantErrorsTest, WrongSizesAndDtypes) {
  expect_error(quantize_4bit(input(), FourBitType::kNf4, 64, packed(499), absmax()),
               {"packed 4-bit codes", "499 elements", "must have 500"});
  expect_error(quantize_4bit(input(), FourBitType::kNf4, 64, packed(), absmax(15)),
               {"absmax", "must have 16"});
  std::vector<std::uint16_t> half_absmax(16);
  expect_error(quantize_4bit(input(), FourBitType::kNf4, 64, packed(),
                             TensorView(half_absmax.data(), DType::kF16, Shape{16})),
               {"absmax is f16[16]", "must be f32"});
  std::vector<std::int32_t> ints(1000);
  expect_error(quantize_4bit(TensorView(ints.data(), DType::kI32, Shape{1000}), FourBitType::kNf4,
                             64, packed(), absmax()),
               {"input is i32[1000]", "must be f32 or f16 or bf16"});
  expect_error(dequantize_4bit(packed(), absmax(), FourBitType::kNf4, 64,
                               TensorView(ints.data(), DType::kI32, Shape{1000})),
               {"output is i32[1000]"});
  std::vector<std::int8_t> codes(1000);
  std::vector<float> rows(10);
  expect_error(
      quantize_int8_rowwise(input(), 0.0f, TensorView(codes.data(), DType::kI8, Shape{1000}),
                            TensorView(rows.data(), DType::kF32, Shape{1}), nullptr),
      {"must be a matrix [rows, cols]"});
  expect_error(quantize_int8_rowwise(TensorView(input_.data(), DType::kF32, Shape{10, 100}), 0.0f,
                                     TensorView(codes.data(), DType::kI8, Shape{10, 99}),
                                     TensorView(rows.data(), DType::kF32, Shape{10}), nullptr),
               {"int8 codes", "must have 1000"});
  expect_error(quantize_int8_rowwise(TensorView(input_.data(), DType::kF32, Shape{10, 100}), -1.0f,
                                     TensorView(codes.data(), DType::kI8, Shape{10, 100}),
                                     TensorView(rows.data(), DType::kF32, Shape{10}), nullptr),
               {"threshold", ">= 0", "6.0"});
}

TEST_F(QuantErrorsTest, TensorsOnDifferentDevices) {
  const TensorView on_gpu(absmax_.data(), DType::kF32, Shape{16}, Device::cuda(0));
  expect_error(quantize_4bit(input(), FourBitType::kNf4, 64, packed(), on_gpu),
               {"different devices", "cuda:0"});
}

TEST_F(QuantErrorsTest, NestedAbsmaxArguments) {
  std::vector<std::uint8_t> codes(16);
  std::vector<float> nested(1);
  expect_error(quantize_absmax_nested(absmax(), TensorView(codes.data(), DType::kU8, Shape{16}),
                                      TensorView(nested.data(), DType::kF32, Shape{1}), nullptr),
               {"offset"});
  expect_error(dequantize_absmax_nested(TensorView(codes.data(), DType::kU8, Shape{16}),
                                        TensorView(nested.data(), DType::kF32, Shape{1}),
                                        std::numeric_limits<float>::quiet_NaN(), absmax()),
               {"offset", "not finite"});
  float offset = 0;
  expect_error(quantize_absmax_nested(absmax(), TensorView(codes.data(), DType::kU8, Shape{16}),
                                      TensorView(nested.data(), DType::kF32, Shape{2}), &offset),
               {"nested_absmax", "must have 1"});
}

}  // namespace
}  // namespace kbit::quant
