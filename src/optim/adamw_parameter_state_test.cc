// AdamWParameterState: the storage kind and size of the state as bitsandbytes keeps it, and steps
// identical to the state functions of kbit/optim/adamw.h on the same storage.
#include "kbit/optim/adamw_parameter_state.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace kbit::optim {
namespace {

TEST(AdamWParameterStateTest, KindTensorsAndBytesFollowTheSizeRule) {
  for (const std::int64_t n : {std::int64_t{1000}, kMin8bitStateSize, std::int64_t{70000}}) {
    for (const bool eight_bit_optimizer : {false, true}) {
      AdamWParameterState state = AdamWParameterState::create(n, eight_bit_optimizer).value();
      EXPECT_FALSE(state.paged());
      EXPECT_EQ(state.eight_bit(), adamw_state_is_8bit(n, eight_bit_optimizer));
      EXPECT_EQ(state.bytes(), adamw_state_bytes(n, eight_bit_optimizer));
      std::int64_t tensor_bytes = 0;
      for (const auto& [role, tensor] : state.tensors()) {
        tensor_bytes += static_cast<std::int64_t>(tensor.nbytes());
      }
      EXPECT_EQ(tensor_bytes, state.bytes()) << n;
      EXPECT_EQ(state.tensors().size(), state.eight_bit() ? 4u : 2u);
    }
  }
}

TEST(AdamWParameterStateTest, StartsFromTheZeroState) {
  AdamWParameterState state = AdamWParameterState::create(5000, true).value();
  for (const auto& [role, tensor] : state.tensors()) {
    const auto* bytes = static_cast<const unsigned char*>(tensor.data());
    for (std::size_t i = 0; i < tensor.nbytes(); ++i) ASSERT_EQ(bytes[i], 0) << role << " " << i;
  }
}

TEST(AdamWParameterStateTest, PagingChangesNothingOnTheCpu) {
  AdamWParameterState state =
      AdamWParameterState::create(kPagedStateMinSize, true, {Device::cpu(), true}).value();
  EXPECT_FALSE(state.paged());
  EXPECT_EQ(state.bytes(), adamw_state_bytes(kPagedStateMinSize, true));
}

TEST(AdamWParameterStateTest, ApplyStepsAsTheStateFunctions) {
  const std::int64_t n = 5000;
  for (const bool eight_bit_optimizer : {false, true}) {
    std::vector<float> param(static_cast<std::size_t>(n));
    std::vector<float> grad(param.size());
    for (std::size_t i = 0; i < param.size(); ++i) {
      param[i] = 0.01f * static_cast<float>(i % 97) - 0.4f;
      grad[i] = 0.001f * static_cast<float>(i % 31) - 0.015f;
    }
    std::vector<float> expected = param;
    const AdamWHyperparameters hyperparameters{1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f};
    const auto view = [](std::vector<float>& v) {
      return TensorView(v.data(), DType::kF32, Shape{static_cast<std::int64_t>(v.size())});
    };
    AdamWParameterState state = AdamWParameterState::create(n, eight_bit_optimizer).value();
    AdamWParameterState reference = AdamWParameterState::create(n, eight_bit_optimizer).value();
    for (int step = 0; step < 2; ++step) {
      ASSERT_TRUE(state.apply(hyperparameters, view(param), view(grad)).ok());
      std::vector<std::pair<std::string, TensorView>> tensors = reference.tensors();
      if (eight_bit_optimizer) {
        AdamW8bitState raw{tensors[0].second, tensors[1].second, tensors[2].second,
                           tensors[3].second, reference.step()};
        ASSERT_TRUE(adamw8bit_step(hyperparameters, view(expected), view(grad), &raw).ok());
        reference.set_step(raw.step);
      } else {
        AdamW32bitState raw{tensors[0].second, tensors[1].second, reference.step()};
        ASSERT_TRUE(adamw32bit_step(hyperparameters, view(expected), view(grad), &raw).ok());
        reference.set_step(raw.step);
      }
    }
    EXPECT_EQ(state.step(), 2);
    EXPECT_EQ(param, expected);
    EXPECT_NE(param[0], -0.4f);
  }
}

}  // namespace
}  // namespace kbit::optim
