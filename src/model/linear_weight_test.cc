// LinearWeight::backward_input against float64: dx = dy · W with W dequantized independently
// (the widened float weight; quant::dequantize_4bit after dequantize_absmax_nested; the int8
// codes times fl32(SCB · fl32(1/127))), on fresh random data, for every format. The f32 sums
// against the f64 ones stay near 1e-7 relative; a wrong decode (nibble order, block, scale,
// the weight-dtype rounding of 4-bit values) moves the error to 1e-3 or more.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kbit/core/random.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/codebooks.h"
#include "kbit/quant/nested_absmax.h"
#include "kernels/cpu/element_access.h"
#include "model/linear_weight.h"
#include "testing/relative_error.h"

namespace kbit::model {
namespace {

namespace k = kbit::kernels::cpu;

constexpr double kTolerance = 1e-6;  // ‖dx − reference‖₂ / ‖reference‖₂ for f32 products

// Two panels of output features (kSgemmPanelIn = 1024) and three of input features (128).
constexpr std::int64_t kRows = 5;
constexpr std::int64_t kOut = 1100;
constexpr std::int64_t kIn = 320;

Tensor random_weight(DType dtype, std::uint64_t seed) {
  Tensor weight = Tensor::empty({kOut, kIn}, dtype).value();
  EXPECT_TRUE(fill_normal(weight.view(), seed, 0.0f, 0.05f).ok());
  return weight;
}

std::vector<float> random_gradient(std::uint64_t seed) {
  std::vector<float> dy(static_cast<std::size_t>(kRows * kOut));
  for (std::size_t i = 0; i < dy.size(); ++i) dy[i] = static_cast<float>(normal_sample(seed, i));
  return dy;
}

std::vector<double> widened(const TensorView& values) {
  std::vector<double> out(static_cast<std::size_t>(values.numel()));
  k::visit_float_dtype(values.dtype(), [&](auto type_tag) {
    using T = decltype(type_tag);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = k::to_f32(values.data_as<const T>()[i]);
  });
  return out;
}

// The weight as bitsandbytes' backward sees it, decoded with the quantization library.
std::vector<double> dequantized(const LinearWeight& weight) {
  switch (weight.format()) {
    case LinearFormat::kFloat:
      return widened(weight.float_weight());
    case LinearFormat::kFourBit: {
      const io::QuantState& state = weight.quant_state();
      Tensor absmax = Tensor::empty(weight.absmax().shape(), DType::kF32).value();
      if (state.nested) {
        EXPECT_TRUE(quant::dequantize_absmax_nested(weight.absmax(), weight.nested_absmax(),
                                                    state.nested->offset, absmax.view())
                        .ok());
      } else {
        std::copy_n(weight.absmax().data_as<const float>(), absmax.numel(),
                    absmax.data_as<float>());
      }
      Tensor values = Tensor::empty({kOut, kIn}, state.dtype).value();
      EXPECT_TRUE(quant::dequantize_4bit(weight.packed(), absmax.view(), state.type,
                                         state.blocksize, values.view())
                      .ok());
      return widened(values.view());
    }
    case LinearFormat::kInt8: {
      std::vector<double> values(static_cast<std::size_t>(kOut * kIn));
      for (std::int64_t o = 0; o < kOut; ++o) {
        const float scale = weight.row_absmax().data_as<const float>()[o] * (1.0f / 127.0f);
        for (std::int64_t i = 0; i < kIn; ++i) {
          const auto code = weight.codes().data_as<const std::int8_t>()[o * kIn + i];
          values[static_cast<std::size_t>(o * kIn + i)] = static_cast<float>(code) * scale;
        }
      }
      return values;
    }
  }
  return {};
}

// dy · W in float64.
std::vector<double> reference_product(const std::vector<float>& dy, const std::vector<double>& w) {
  std::vector<double> dx(static_cast<std::size_t>(kRows * kIn), 0.0);
  for (std::int64_t r = 0; r < kRows; ++r) {
    for (std::int64_t o = 0; o < kOut; ++o) {
      const double g = dy[static_cast<std::size_t>(r * kOut + o)];
      for (std::int64_t i = 0; i < kIn; ++i) {
        dx[static_cast<std::size_t>(r * kIn + i)] += g * w[static_cast<std::size_t>(o * kIn + i)];
      }
    }
  }
  return dx;
}

std::vector<float> backward_input(const LinearWeight& weight, const std::vector<float>& dy,
                                  const LinearNumerics& numerics, int threads) {
  std::vector<float> dx(static_cast<std::size_t>(kRows * kIn), -1.0f);
  ExecutionOptions execution;
  execution.threads = threads;
  weight.backward_input(dy.data(), kRows, numerics, dx.data(), execution);
  return dx;
}

void expect_matches_float64(const LinearWeight& weight, const std::string& what) {
  const std::vector<float> dy = random_gradient(7);
  const std::vector<float> dx = backward_input(weight, dy, {}, 0);
  const double error =
      kbit::testing::relative_error<float>(dx, reference_product(dy, dequantized(weight)));
  EXPECT_LT(error, kTolerance) << what;
  // Each dx element is summed by one thread in a fixed order.
  EXPECT_EQ(dx, backward_input(weight, dy, {}, 1)) << what;
}

TEST(LinearBackwardInput, FloatWeights) {
  for (const DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const Tensor stored = random_weight(dtype, 11);
    expect_matches_float64(LinearWeight::float_view(stored.view()), std::string(dtype_name(dtype)));
  }
}

TEST(LinearBackwardInput, FourBitWeights) {
  struct Case {
    quant::FourBitType type;
    bool double_quant;
    DType weight_dtype;  // the QuantState's dtype, to which dequantize_4bit rounds
  };
  for (const Case& c : {Case{quant::FourBitType::kNf4, false, DType::kBF16},
                        Case{quant::FourBitType::kNf4, true, DType::kF16},
                        Case{quant::FourBitType::kFp4, false, DType::kF32},
                        Case{quant::FourBitType::kFp4, true, DType::kBF16}}) {
    const Tensor stored = random_weight(c.weight_dtype, 12);
    const std::string what = std::string(quant::four_bit_type_name(c.type)) +
                             (c.double_quant ? " dq " : " ") +
                             std::string(dtype_name(c.weight_dtype));
    Result<LinearWeight> weight = LinearWeight::quantize_4bit(
        stored.view(), FourBitFormat{c.type, c.double_quant, 64}, what, {});
    ASSERT_TRUE(weight.ok()) << weight.status().to_string();
    expect_matches_float64(*weight, what);
  }
}

TEST(LinearBackwardInput, Int8Weights) {
  const Tensor stored = random_weight(DType::kF32, 13);
  Result<LinearWeight> weight = LinearWeight::quantize_int8(stored.view(), "int8", {});
  ASSERT_TRUE(weight.ok()) << weight.status().to_string();
  expect_matches_float64(*weight, "int8");
}

// A bf16 compute dtype: dy, W and dx rounded to bf16, as MatMul4Bit's backward in bf16.
TEST(LinearBackwardInput, FourBitInBf16Compute) {
  const Tensor stored = random_weight(DType::kBF16, 14);
  Result<LinearWeight> weight =
      LinearWeight::quantize_4bit(stored.view(), FourBitFormat{}, "nf4", {});
  ASSERT_TRUE(weight.ok()) << weight.status().to_string();
  std::vector<float> dy = random_gradient(8);
  LinearNumerics numerics;
  numerics.compute_dtype = DType::kBF16;
  const std::vector<float> dx = backward_input(*weight, dy, numerics, 0);
  for (float& g : dy) g = bf16_to_f32(f32_to_bf16(g));
  // The weight's values are bf16 already.
  const std::vector<double> want = reference_product(dy, dequantized(*weight));
  for (std::size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(dx[i], bf16_to_f32(f32_to_bf16(dx[i]))) << "dx[" << i << "] is not a bf16 value";
    // Within one bf16 rounding of the exact product.
    ASSERT_LE(std::fabs(dx[i] - want[i]), std::ldexp(std::fabs(want[i]), -8) + 1e-30)
        << "dx[" << i << "]";
  }
}

}  // namespace
}  // namespace kbit::model
