// AdamW steps against bitsandbytes' CUDA results (../shared/golden/optim8bit.safetensors), against
// a float64 reference of the same algorithm on fresh random data, and their argument checks.
#include "kbit/optim/adamw.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kbit/quant/codebooks.h"
#include "optim/adamw_test_support.h"
#include "testing/golden.h"
#include "testing/shared_data.h"

namespace kbit::optim {
namespace {

TEST_F(AdamWGoldenTest, EightBitStatesMatchBitsandbytesBitForBitAndParamsWithinBound) {
  // PagedAdamW8bit pages the state between host and GPU but computes the same step (spec 7.5).
  for (const std::string optimizer : {"adamw8bit", "paged_adamw8bit"}) {
    SCOPED_TRACE(optimizer);
    std::vector<float> param = floats(optimizer + ".param0");
    const auto n = static_cast<std::int64_t>(param.size());
    ASSERT_EQ(n, 64 * 384);
    std::vector<std::uint8_t> state1(param.size(), 0);
    std::vector<std::uint8_t> state2(param.size(), 0);
    std::vector<float> absmax1(static_cast<std::size_t>(adamw8bit_block_count(n)), 0.0f);
    std::vector<float> absmax2(absmax1.size(), 0.0f);
    AdamW8bitState state{view_of(state1, DType::kU8), view_of(state2, DType::kU8),
                         view_of(absmax1, DType::kF32), view_of(absmax2, DType::kF32), 0};
    ParamComparison comparison;
    for (int step = 1; step <= 3; ++step) {
      std::vector<float> grad = floats(optimizer + ".grad" + std::to_string(step - 1));
      const std::vector<float> before = param;
      ASSERT_TRUE(adamw8bit_step(kGoldenHyperparameters, view_of(param, DType::kF32),
                                 view_of(grad, DType::kF32), &state)
                      .ok());
      EXPECT_EQ(state.step, step);
      compare_params(before, param, floats(optimizer + ".param" + std::to_string(step)),
                     update_relative_error(kGoldenHyperparameters, step), kGoldenHyperparameters,
                     &comparison);
      EXPECT_EQ(comparison.outside, 0) << "step " << step << ": first " << comparison.first_outside;
      std::cout << "[ info ] " << optimizer << " step " << step << ": params bit-equal "
                << comparison.bit_equal << " of " << n << ", max " << comparison.max_ulps
                << " ulp, max " << comparison.max_fraction << " of the bound\n";
    }
    // The state after three steps: every code and every absmax.
    const auto golden1 = testing::golden_values<std::uint8_t>(*file_, optimizer + ".state.state1");
    const auto golden2 = testing::golden_values<std::uint8_t>(*file_, optimizer + ".state.state2");
    int differing1 = 0;
    int differing2 = 0;
    for (std::size_t i = 0; i < state1.size(); ++i) {
      differing1 += state1[i] != golden1.at(i) ? 1 : 0;
      differing2 += state2[i] != golden2.at(i) ? 1 : 0;
    }
    EXPECT_EQ(differing1, 0);
    EXPECT_EQ(differing2, 0);
    const auto golden_absmax1 = floats(optimizer + ".state.absmax1");
    const auto golden_absmax2 = floats(optimizer + ".state.absmax2");
    ASSERT_EQ(golden_absmax1.size(), absmax1.size());
    ASSERT_EQ(golden_absmax2.size(), absmax2.size());
    EXPECT_EQ(std::memcmp(absmax1.data(), golden_absmax1.data(), absmax1.size() * 4), 0);
    EXPECT_EQ(std::memcmp(absmax2.data(), golden_absmax2.data(), absmax2.size() * 4), 0);
    // The stored maps are codebooks.h's.
    const auto qmap1 = floats(optimizer + ".state.qmap1");
    const auto qmap2 = floats(optimizer + ".state.qmap2");
    EXPECT_TRUE(std::equal(qmap1.begin(), qmap1.end(), quant::kDynamicSignedMap.begin()));
    EXPECT_TRUE(std::equal(qmap2.begin(), qmap2.end(), quant::kDynamicUnsignedMap.begin()));
  }
}

TEST_F(AdamWGoldenTest, ThirtyTwoBitStatesMatchBitsandbytesAndParamsWithinBound) {
  std::vector<float> param = floats("adamw32bit.param0");
  const auto n = static_cast<std::int64_t>(param.size());
  std::vector<float> state1(param.size(), 0.0f);
  std::vector<float> state2(param.size(), 0.0f);
  AdamW32bitState state{view_of(state1, DType::kF32), view_of(state2, DType::kF32), 0};
  ParamComparison comparison;
  for (int step = 1; step <= 3; ++step) {
    std::vector<float> grad = floats("adamw32bit.grad" + std::to_string(step - 1));
    const std::vector<float> before = param;
    ASSERT_TRUE(adamw32bit_step(kGoldenHyperparameters, view_of(param, DType::kF32),
                                view_of(grad, DType::kF32), &state)
                    .ok());
    compare_params(before, param, floats("adamw32bit.param" + std::to_string(step)),
                   update_relative_error(kGoldenHyperparameters, step), kGoldenHyperparameters,
                   &comparison);
    EXPECT_EQ(comparison.outside, 0) << "step " << step << ": first " << comparison.first_outside;
    std::cout << "[ info ] adamw32bit step " << step << ": params bit-equal "
              << comparison.bit_equal << " of " << n << ", max " << comparison.max_ulps
              << " ulp, max " << comparison.max_fraction << " of the bound\n";
  }
  // m and v do not depend on the approximations: with nvcc's fused multiply-adds they are
  // bitsandbytes' bits.
  const auto golden1 = floats("adamw32bit.state.state1");
  const auto golden2 = floats("adamw32bit.state.state2");
  int differing1 = 0;
  int differing2 = 0;
  for (std::size_t i = 0; i < state1.size(); ++i) {
    differing1 +=
        std::bit_cast<std::uint32_t>(state1[i]) != std::bit_cast<std::uint32_t>(golden1.at(i)) ? 1
                                                                                               : 0;
    differing2 +=
        std::bit_cast<std::uint32_t>(state2[i]) != std::bit_cast<std::uint32_t>(golden2.at(i)) ? 1
                                                                                               : 0;
  }
  EXPECT_EQ(differing1, 0);
  EXPECT_EQ(differing2, 0);
}

// ---- The 8-bit step against a float64 reference of the same algorithm, on fresh random data.

// Gradients of every scale from 1e-6 to 1 with both signs, never zero.
std::vector<float> random_gradient(std::mt19937* generator, std::size_t n) {
  std::uniform_real_distribution<float> exponent(-6.0f, 0.0f);
  std::bernoulli_distribution negative(0.5);
  std::vector<float> values(n);
  for (float& value : values) {
    value = std::pow(10.0f, exponent(*generator)) * (negative(*generator) ? -1.0f : 1.0f);
  }
  return values;
}

// The code bitsandbytes' rule gives x in `map`, computed in float64: the nearest code, moved one
// towards the sign of m where the nearest has the other sign.
int nearest_code(double x, double m, const std::array<float, 256>& map) {
  int best = 0;
  for (int k = 1; k < 256; ++k) {
    if (std::fabs(map[static_cast<std::size_t>(k)] - x) <
        std::fabs(map[static_cast<std::size_t>(best)] - x)) {
      best = k;
    }
  }
  if (std::signbit(map[static_cast<std::size_t>(best)]) != std::signbit(m)) {
    best += m > 0 ? 1 : -1;
  }
  return best;
}

TEST(AdamW8bitTest, StepMatchesFloat64ReferenceOnRandomData) {
  // 19 full blocks and a partial one.
  constexpr std::size_t kN = 19 * 256 + 136;
  std::mt19937 generator(20260914);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> param(kN);
  for (float& value : param) value = normal(generator);
  std::vector<std::uint8_t> state1(kN, 0);
  std::vector<std::uint8_t> state2(kN, 0);
  std::vector<float> absmax1(static_cast<std::size_t>(adamw8bit_block_count(kN)), 0.0f);
  std::vector<float> absmax2(absmax1.size(), 0.0f);
  AdamW8bitState state{view_of(state1, DType::kU8), view_of(state2, DType::kU8),
                       view_of(absmax1, DType::kF32), view_of(absmax2, DType::kF32), 0};
  AdamWHyperparameters hyperparameters;
  hyperparameters.lr = 3e-3f;
  hyperparameters.beta1 = 0.8f;
  hyperparameters.beta2 = 0.99f;
  hyperparameters.weight_decay = 0.1f;
  const auto& map1 = quant::kDynamicSignedMap;
  const auto& map2 = quant::kDynamicUnsignedMap;
  const double u = std::ldexp(1.0, -24);  // float32's unit roundoff
  for (std::int64_t t = 1; t <= 5; ++t) {
    SCOPED_TRACE("step " + std::to_string(t));
    std::vector<float> grad = random_gradient(&generator, kN);
    const std::vector<float> param_before = param;
    const std::vector<std::uint8_t> codes1_before = state1;
    const std::vector<std::uint8_t> codes2_before = state2;
    const std::vector<float> absmax1_before = absmax1;
    const std::vector<float> absmax2_before = absmax2;
    ASSERT_TRUE(adamw8bit_step(hyperparameters, view_of(param, DType::kF32),
                               view_of(grad, DType::kF32), &state)
                    .ok());

    // The reference, in float64 from the same stored state.
    const double beta1 = hyperparameters.beta1;
    const double beta2 = hyperparameters.beta2;
    const double c1 = 1.0 - std::pow(beta1, static_cast<double>(t));
    const double c2 = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(t)));
    const double step_size = -static_cast<double>(hyperparameters.lr) * c2 / c1;
    const double decay =
        1.0 - static_cast<double>(hyperparameters.lr) * hyperparameters.weight_decay;
    std::vector<double> m(kN);
    std::vector<double> v(kN);
    std::vector<double> m_error(kN);  // bound on |float32 m − m|, from its three roundings
    for (std::size_t i = 0; i < kN; ++i) {
      const std::size_t block = i / 256;
      const double m_old = static_cast<double>(map1[codes1_before[i]]) * absmax1_before[block];
      const double v_old = static_cast<double>(map2[codes2_before[i]]) * absmax2_before[block];
      m[i] = beta1 * m_old + (1.0 - beta1) * grad[i];
      v[i] = beta2 * v_old + (1.0 - beta2) * grad[i] * grad[i];
      m_error[i] = 3 * u * (std::fabs(beta1 * m_old) + std::fabs((1.0 - beta1) * grad[i]));
    }
    for (std::size_t block = 0; block < absmax1.size(); ++block) {
      double max1 = 0;
      double max2 = 0;
      double max1_error = 0;
      for (std::size_t i = block * 256; i < std::min(kN, block * 256 + 256); ++i) {
        max1 = std::max(max1, std::fabs(m[i]));
        max2 = std::max(max2, v[i]);
        max1_error = std::max(max1_error, m_error[i]);
      }
      EXPECT_NEAR(absmax1[block], max1, max1_error) << "block " << block;
      EXPECT_NEAR(absmax2[block], max2, 4 * u * max2) << "block " << block;
      for (std::size_t i = block * 256; i < std::min(kN, block * 256 + 256); ++i) {
        // The stored codes are the nearest (slack: the float32 moments and the approximate
        // division, 2 ulp) ...
        const double x1 = m[i] / max1;
        const double x2 = v[i] / max2;
        const double slack1 = (m_error[i] + max1_error) / max1 + 4 * u;
        const double slack2 = 8 * u;
        const int expected1 = nearest_code(x1, m[i], map1);
        const int expected2 = nearest_code(x2, 1.0, map2);
        EXPECT_LE(std::fabs(map1[state1[i]] - x1),
                  std::fabs(map1[static_cast<std::size_t>(expected1)] - x1) + slack1)
            << "index " << i << ": code " << int{state1[i]} << ", float64 " << expected1;
        EXPECT_LE(std::fabs(map2[state2[i]] - x2),
                  std::fabs(map2[static_cast<std::size_t>(expected2)] - x2) + slack2)
            << "index " << i << ": code " << int{state2[i]} << ", float64 " << expected2;
        // ... and the parameter took the step computed from the unquantized moments.
        const double denominator = std::sqrt(v[i]) + c2 * hyperparameters.eps;
        const double update = step_size * m[i] / denominator;
        const double expected = (param_before[i] + update) * decay;
        // Float32: relative 2^-22 (approximate division) + 4u (step size, sqrt, products) on the
        // update, m's own error through the division, and one rounding each of the sum and decay.
        const double tolerance = std::fabs(update) * (8 * u) +
                                 std::fabs(step_size) * m_error[i] / denominator +
                                 2 * ulp(static_cast<float>(expected));
        EXPECT_NEAR(param[i], expected, tolerance) << "index " << i;
      }
    }
  }
}

TEST(AdamW8bitTest, BlockWithZeroMomentStoresCode255) {
  // A gradient of zeros from the zero state: m = v = 0 in the whole block, 0/0 is NaN, which
  // gets code 0, and the sign fix wraps it to 255 (spec 7.3); the parameter only decays.
  std::vector<float> param(512, 0.5f);
  std::vector<float> grad(512, 0.0f);
  for (std::size_t i = 256; i < 512; ++i) grad[i] = (i % 2 == 0 ? 1.0f : -1.0f) * 1e-2f;
  std::vector<std::uint8_t> state1(512, 0);
  std::vector<std::uint8_t> state2(512, 0);
  std::vector<float> absmax1(2, 0.0f);
  std::vector<float> absmax2(2, 0.0f);
  AdamW8bitState state{view_of(state1, DType::kU8), view_of(state2, DType::kU8),
                       view_of(absmax1, DType::kF32), view_of(absmax2, DType::kF32), 0};
  const AdamWHyperparameters hyperparameters;
  ASSERT_TRUE(adamw8bit_step(hyperparameters, view_of(param, DType::kF32),
                             view_of(grad, DType::kF32), &state)
                  .ok());
  EXPECT_EQ(absmax1[0], 0.0f);
  EXPECT_EQ(absmax2[0], 0.0f);
  for (std::size_t i = 0; i < 256; ++i) {
    ASSERT_EQ(state1[i], 255) << i;
    ASSERT_EQ(state2[i], 0) << i;
    ASSERT_EQ(param[i], 0.5f * std::fma(-hyperparameters.lr, hyperparameters.weight_decay, 1.0f));
  }
  EXPECT_GT(absmax1[1], 0.0f);
}

TEST(AdamW8bitTest, NonFiniteGradientResetsMomentsAndLeavesParam) {
  std::vector<float> param(300, 0.25f);
  std::vector<float> grad(300, 1e-3f);
  grad[7] = std::numeric_limits<float>::quiet_NaN();
  grad[280] = -std::numeric_limits<float>::infinity();
  std::vector<std::uint8_t> state1(300, 0);
  std::vector<std::uint8_t> state2(300, 0);
  std::vector<float> absmax1(2, 0.0f);
  std::vector<float> absmax2(2, 0.0f);
  AdamW8bitState state{view_of(state1, DType::kU8), view_of(state2, DType::kU8),
                       view_of(absmax1, DType::kF32), view_of(absmax2, DType::kF32), 0};
  ASSERT_TRUE(adamw8bit_step(AdamWHyperparameters{}, view_of(param, DType::kF32),
                             view_of(grad, DType::kF32), &state)
                  .ok());
  EXPECT_EQ(param[7], 0.25f);
  EXPECT_EQ(param[280], 0.25f);
  EXPECT_LT(param[8], 0.25f);
  EXPECT_EQ(quant::kDynamicSignedMap[state1[7]] * absmax1[0], 0.0f);
  EXPECT_EQ(quant::kDynamicUnsignedMap[state2[7]] * absmax2[0], 0.0f);
  EXPECT_TRUE(std::isfinite(absmax1[1]) && std::isfinite(absmax2[1]));
}

// ---- Argument checks: each failure names what is wrong and changes nothing.

class AdamWErrorTest : public ::testing::Test {
 protected:
  static constexpr std::size_t kN = 1000;
  std::vector<float> param = std::vector<float>(kN, 1.0f);
  std::vector<float> grad = std::vector<float>(kN, 0.5f);
  std::vector<std::uint8_t> codes1 = std::vector<std::uint8_t>(kN, 0);
  std::vector<std::uint8_t> codes2 = std::vector<std::uint8_t>(kN, 0);
  std::vector<float> absmax1 = std::vector<float>(4, 0.0f);
  std::vector<float> absmax2 = std::vector<float>(4, 0.0f);
  std::vector<float> moment1 = std::vector<float>(kN, 0.0f);
  std::vector<float> moment2 = std::vector<float>(kN, 0.0f);

  AdamW8bitState state8() {
    return {view_of(codes1, DType::kU8), view_of(codes2, DType::kU8), view_of(absmax1, DType::kF32),
            view_of(absmax2, DType::kF32), 0};
  }
  AdamW32bitState state32() {
    return {view_of(moment1, DType::kF32), view_of(moment2, DType::kF32), 0};
  }
  // Both steps fail with kInvalidArgument naming `needle`, and leave everything as it was.
  void expect_both_fail(const AdamWHyperparameters& hyperparameters, TensorView param_view,
                        TensorView grad_view, AdamW8bitState s8, AdamW32bitState s32,
                        const std::string& needle) {
    for (int bits : {8, 32}) {
      SCOPED_TRACE(std::to_string(bits) + "-bit");
      const Status status = bits == 8
                                ? adamw8bit_step(hyperparameters, param_view, grad_view, &s8)
                                : adamw32bit_step(hyperparameters, param_view, grad_view, &s32);
      EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
      EXPECT_NE(status.message().find(needle), std::string::npos) << status.to_string();
      EXPECT_EQ(s8.step, 0);
      EXPECT_EQ(s32.step, 0);
    }
    EXPECT_EQ(param, std::vector<float>(kN, 1.0f));
    EXPECT_EQ(codes1, std::vector<std::uint8_t>(kN, 0));
    EXPECT_EQ(moment1, std::vector<float>(kN, 0.0f));
  }
};

TEST_F(AdamWErrorTest, BadHyperparametersAreNamed) {
  struct Case {
    const char* name;
    void (*set)(AdamWHyperparameters&);
  };
  const Case cases[] = {
      {"lr", [](AdamWHyperparameters& h) { h.lr = -1e-3f; }},
      {"lr", [](AdamWHyperparameters& h) { h.lr = std::numeric_limits<float>::infinity(); }},
      {"beta1", [](AdamWHyperparameters& h) { h.beta1 = 1.0f; }},
      {"beta1", [](AdamWHyperparameters& h) { h.beta1 = -0.1f; }},
      {"beta2", [](AdamWHyperparameters& h) { h.beta2 = std::numeric_limits<float>::quiet_NaN(); }},
      {"beta2", [](AdamWHyperparameters& h) { h.beta2 = 1.5f; }},
      {"eps", [](AdamWHyperparameters& h) { h.eps = -1e-8f; }},
      {"weight_decay", [](AdamWHyperparameters& h) { h.weight_decay = -0.01f; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    AdamWHyperparameters hyperparameters;
    c.set(hyperparameters);
    EXPECT_FALSE(check_adamw_hyperparameters(hyperparameters).ok());
    expect_both_fail(hyperparameters, view_of(param, DType::kF32), view_of(grad, DType::kF32),
                     state8(), state32(), std::string("hyperparameter ") + c.name + " =");
  }
  EXPECT_TRUE(check_adamw_hyperparameters(AdamWHyperparameters{}).ok());
}

TEST_F(AdamWErrorTest, MismatchedSizesAndDtypesAreNamed) {
  const TensorView p = view_of(param, DType::kF32);
  const TensorView g = view_of(grad, DType::kF32);
  // A gradient of another size.
  expect_both_fail({}, p, TensorView(grad.data(), DType::kF32, Shape{999}), state8(), state32(),
                   "grad");
  // A gradient of another dtype.
  expect_both_fail({}, p, TensorView(grad.data(), DType::kBF16, Shape{1000}), state8(), state32(),
                   "grad");
  // A parameter of another dtype.
  expect_both_fail({}, TensorView(param.data(), DType::kF16, Shape{1000}), g, state8(), state32(),
                   "param");
  // States of the wrong size or dtype.
  AdamW8bitState s8 = state8();
  AdamW32bitState s32 = state32();
  s8.state1 = TensorView(codes1.data(), DType::kU8, Shape{500});
  s32.state1 = TensorView(moment1.data(), DType::kF32, Shape{500});
  expect_both_fail({}, p, g, s8, s32, "state1");
  s8 = state8();
  s32 = state32();
  s8.state2 = TensorView(codes2.data(), DType::kI8, Shape{1000});
  s32.state2 = TensorView(moment2.data(), DType::kI32, Shape{1000});
  expect_both_fail({}, p, g, s8, s32, "state2");
  s8 = state8();
  s8.absmax1 = TensorView(absmax1.data(), DType::kF32, Shape{3});  // needs ceil(1000/256) = 4
  EXPECT_NE(adamw8bit_step({}, p, g, &s8).message().find("absmax1"), std::string::npos);
  // A corrupt absmax.
  s8 = state8();
  absmax2[2] = -1.0f;
  const Status corrupt = adamw8bit_step({}, p, g, &s8);
  EXPECT_EQ(corrupt.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(corrupt.message().find("absmax2[2]"), std::string::npos) << corrupt.to_string();
  absmax2[2] = 0.0f;
  // An empty parameter, a bad step count, no state.
  expect_both_fail({}, TensorView(param.data(), DType::kF32, Shape{0}),
                   TensorView(grad.data(), DType::kF32, Shape{0}), state8(), state32(), "empty");
  s8 = state8();
  s32 = state32();
  s8.step = -1;
  s32.step = std::numeric_limits<std::int32_t>::max();
  EXPECT_NE(adamw8bit_step({}, p, g, &s8).message().find("step = -1"), std::string::npos);
  EXPECT_NE(adamw32bit_step({}, p, g, &s32).message().find("step = 2147483647"), std::string::npos);
  EXPECT_EQ(adamw8bit_step({}, p, g, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(adamw32bit_step({}, p, g, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(param, std::vector<float>(kN, 1.0f));
}

TEST(AdamWStateSizeTest, BlockCount) {
  EXPECT_EQ(adamw8bit_block_count(1), 1);
  EXPECT_EQ(adamw8bit_block_count(256), 1);
  EXPECT_EQ(adamw8bit_block_count(257), 2);
  EXPECT_EQ(adamw8bit_block_count(64 * 384), 96);
}

// bitsandbytes' min_8bit_size: an 8-bit optimizer keeps parameters under 4 096 elements in 32 bits.
TEST(AdamWStateSizeTest, EightBitFromMin8bitStateSizeOnly) {
  EXPECT_FALSE(adamw_state_is_8bit(4095, /*eight_bit_optimizer=*/true));
  EXPECT_TRUE(adamw_state_is_8bit(4096, /*eight_bit_optimizer=*/true));
  EXPECT_FALSE(adamw_state_is_8bit(4096, /*eight_bit_optimizer=*/false));
}

// 32-bit: 8·n. 8-bit: 2·n + 8·ceil(n / 256), and 8·n below 4 096 elements.
TEST(AdamWStateSizeTest, Bytes) {
  EXPECT_EQ(adamw_state_bytes(0, false), 0);
  EXPECT_EQ(adamw_state_bytes(1, false), 8);
  EXPECT_EQ(adamw_state_bytes(4096, false), 32768);
  EXPECT_EQ(adamw_state_bytes(1, true), 8);
  EXPECT_EQ(adamw_state_bytes(4095, true), 32760);
  EXPECT_EQ(adamw_state_bytes(4096, true), 8192 + 8 * 16);
  EXPECT_EQ(adamw_state_bytes(4097, true), 8194 + 8 * 17);
  // Llama-3.1-8B's embedding [128256, 4096]: 32-bit state bytes past 2^32.
  const std::int64_t embedding = std::int64_t{128256} * 4096;
  EXPECT_EQ(adamw_state_bytes(embedding, false), 4202692608);
  EXPECT_EQ(adamw_state_bytes(embedding, true), 1050673152 + 16416768);
}

}  // namespace
}  // namespace kbit::optim
