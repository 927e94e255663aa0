// AdamW steps on a CUDA device, through the public API (kbit/optim/adamw.h):
//   - against bitsandbytes' CUDA results (../shared/golden/optim8bit.safetensors): every
//     parameter after each of the three steps, and every code, absmax and moment after the last,
//     bit for bit (AdamW8bit, PagedAdamW8bit, 32-bit AdamW);
//   - against the CPU steps on fresh random data, with partial blocks, non-finite gradients and a
//     block of zero moments: the state bit for bit, the parameters within the bound of
//     adamw_test_support.h (the CPU computes beta^t and sqrt exactly, the GPU approximately);
//   - nothing written past n; paged state in managed memory stepping as device state does;
//     tensors on mixed devices refused.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kbit/optim/adamw.h"
#include "kbit/optim/adamw_parameter_state.h"
#include "optim/adamw_test_support.h"
#include "testing/golden.h"
#include "testing/shared_data.h"

namespace kbit::optim {
namespace {

void check(const Status& status) {
  if (!status.ok()) throw std::runtime_error(status.to_string());
}

// A device tensor holding `values`, with `padding` extra elements of 0xAB bytes after them; its
// view() covers the values only.
struct DeviceBuffer {
  Tensor storage;
  TensorView view;
};

template <typename T>
DeviceBuffer to_device(const std::vector<T>& values, DType dtype, std::int64_t padding = 0) {
  const auto n = static_cast<std::int64_t>(values.size());
  Result<Tensor> storage = Tensor::empty(Shape{n + padding}, dtype, Device::cuda(0));
  check(storage.status());
  DeviceBuffer buffer{std::move(storage).value(), {}};
  auto* data = static_cast<unsigned char*>(buffer.storage.view().data());
  if (cudaMemset(data, 0xAB, buffer.storage.nbytes()) != cudaSuccess ||
      cudaMemcpy(data, values.data(), values.size() * sizeof(T), cudaMemcpyHostToDevice) !=
          cudaSuccess) {
    throw std::runtime_error("cudaMemset / cudaMemcpy failed");
  }
  buffer.view = TensorView(data, dtype, Shape{n}, Device::cuda(0));
  return buffer;
}

// The bytes of `view` (any dtype) on the host, as T values.
template <typename T>
std::vector<T> to_host(const TensorView& view) {
  std::vector<T> values(view.nbytes() / sizeof(T));
  if (cudaMemcpy(values.data(), view.data(), view.nbytes(), cudaMemcpyDeviceToHost) !=
      cudaSuccess) {
    throw std::runtime_error("cudaMemcpy failed");
  }
  return values;
}

// Elements of `ours` whose bits differ from `expected`'s.
template <typename T>
int differing_bits(const std::vector<T>& ours, const std::vector<T>& expected) {
  if (ours.size() != expected.size()) return -1;
  int count = 0;
  for (std::size_t i = 0; i < ours.size(); ++i) {
    count += std::memcmp(&ours[i], &expected[i], sizeof(T)) != 0 ? 1 : 0;
  }
  return count;
}

// The 0xAB bytes after the first `valid` bytes of `buffer` are still there.
bool padding_untouched(const DeviceBuffer& buffer) {
  const auto all = to_host<unsigned char>(buffer.storage.view());
  for (std::size_t i = buffer.view.nbytes(); i < all.size(); ++i) {
    if (all[i] != 0xAB) return false;
  }
  return true;
}

// ---- Against bitsandbytes' CUDA kernels.

// The golden tests on a CUDA device; skipped without one.
class AdamWCudaGoldenTest : public AdamWGoldenTest {
 protected:
  void SetUp() override {
    KBIT_REQUIRE_CUDA();
    AdamWGoldenTest::SetUp();
  }
};

TEST_F(AdamWCudaGoldenTest, EightBitStepsEqualBitsandbytesBitForBit) {
  for (const std::string optimizer : {"adamw8bit", "paged_adamw8bit"}) {
    SCOPED_TRACE(optimizer);
    const std::vector<float> param0 = floats(optimizer + ".param0");
    const auto n = static_cast<std::int64_t>(param0.size());
    DeviceBuffer param = to_device(param0, DType::kF32);
    DeviceBuffer state1 = to_device(std::vector<std::uint8_t>(param0.size(), 0), DType::kU8);
    DeviceBuffer state2 = to_device(std::vector<std::uint8_t>(param0.size(), 0), DType::kU8);
    const std::vector<float> zero_absmax(static_cast<std::size_t>(adamw8bit_block_count(n)), 0);
    DeviceBuffer absmax1 = to_device(zero_absmax, DType::kF32);
    DeviceBuffer absmax2 = to_device(zero_absmax, DType::kF32);
    AdamW8bitState state{state1.view, state2.view, absmax1.view, absmax2.view, 0};
    for (int step = 1; step <= 3; ++step) {
      DeviceBuffer grad =
          to_device(floats(optimizer + ".grad" + std::to_string(step - 1)), DType::kF32);
      ASSERT_TRUE(adamw8bit_step(kGoldenHyperparameters, param.view, grad.view, &state).ok());
      EXPECT_EQ(state.step, step);
      const int differing = differing_bits(to_host<float>(param.view),
                                           floats(optimizer + ".param" + std::to_string(step)));
      EXPECT_EQ(differing, 0) << "step " << step;
      std::cout << "[ info ] " << optimizer << " step " << step << ": " << differing << " of " << n
                << " params differ from bitsandbytes'\n";
    }
    EXPECT_EQ(
        differing_bits(to_host<std::uint8_t>(state1.view),
                       testing::golden_values<std::uint8_t>(*file_, optimizer + ".state.state1")),
        0);
    EXPECT_EQ(
        differing_bits(to_host<std::uint8_t>(state2.view),
                       testing::golden_values<std::uint8_t>(*file_, optimizer + ".state.state2")),
        0);
    EXPECT_EQ(differing_bits(to_host<float>(absmax1.view), floats(optimizer + ".state.absmax1")),
              0);
    EXPECT_EQ(differing_bits(to_host<float>(absmax2.view), floats(optimizer + ".state.absmax2")),
              0);
  }
}

TEST_F(AdamWCudaGoldenTest, ThirtyTwoBitStepsEqualBitsandbytesBitForBit) {
  const std::vector<float> param0 = floats("adamw32bit.param0");
  DeviceBuffer param = to_device(param0, DType::kF32);
  DeviceBuffer m = to_device(std::vector<float>(param0.size(), 0.0f), DType::kF32);
  DeviceBuffer v = to_device(std::vector<float>(param0.size(), 0.0f), DType::kF32);
  AdamW32bitState state{m.view, v.view, 0};
  for (int step = 1; step <= 3; ++step) {
    DeviceBuffer grad =
        to_device(floats("adamw32bit.grad" + std::to_string(step - 1)), DType::kF32);
    ASSERT_TRUE(adamw32bit_step(kGoldenHyperparameters, param.view, grad.view, &state).ok());
    const int differing = differing_bits(to_host<float>(param.view),
                                         floats("adamw32bit.param" + std::to_string(step)));
    EXPECT_EQ(differing, 0) << "step " << step;
    std::cout << "[ info ] adamw32bit step " << step << ": " << differing << " of " << param0.size()
              << " params differ from bitsandbytes'\n";
  }
  EXPECT_EQ(differing_bits(to_host<float>(m.view), floats("adamw32bit.state.state1")), 0);
  EXPECT_EQ(differing_bits(to_host<float>(v.view), floats("adamw32bit.state.state2")), 0);
}

// ---- Against the CPU steps on fresh random data.

// Gradients of every scale from 1e-6 to 1 with both signs; one NaN and one -inf where n allows,
// and, from n >= 512, the whole second block zero (its moments stay zero: state1 code 255).
std::vector<float> random_gradient(std::mt19937* generator, std::size_t n) {
  std::uniform_real_distribution<float> exponent(-6.0f, 0.0f);
  std::bernoulli_distribution negative(0.5);
  std::vector<float> values(n);
  for (float& value : values) {
    value = std::pow(10.0f, exponent(*generator)) * (negative(*generator) ? -1.0f : 1.0f);
  }
  if (n > 7) values[7] = std::numeric_limits<float>::quiet_NaN();
  if (n > 100) values[n - 3] = -std::numeric_limits<float>::infinity();
  if (n >= 512) std::fill(values.begin() + 256, values.begin() + 512, 0.0f);
  return values;
}

std::vector<float> random_param(std::mt19937* generator, std::size_t n) {
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> values(n);
  for (float& value : values) value = normal(*generator);
  return values;
}

AdamWHyperparameters varied_hyperparameters(bool weight_decay) {
  AdamWHyperparameters hyperparameters;
  hyperparameters.lr = 3e-3f;
  hyperparameters.beta1 = 0.8f;
  hyperparameters.beta2 = 0.99f;
  hyperparameters.weight_decay = weight_decay ? 0.1f : 0.0f;
  return hyperparameters;
}

// Sizes: one element, less than a block, whole blocks, partial last blocks, over a million.
const std::int64_t kSizes[] = {1, 200, 512, 4096 + 17, 65536 + 77, (1 << 20) + 3};

TEST(AdamWCudaTest, EightBitStepEqualsTheCpuStateAndParamsWithinBound) {
  KBIT_REQUIRE_CUDA();
  std::mt19937 generator(20261124);
  for (const std::int64_t n : kSizes) {
    for (const bool weight_decay : {true, false}) {
      SCOPED_TRACE("n " + std::to_string(n) + (weight_decay ? ", decay" : ", no decay"));
      const AdamWHyperparameters hyperparameters = varied_hyperparameters(weight_decay);
      const auto size = static_cast<std::size_t>(n);
      const auto blocks = static_cast<std::size_t>(adamw8bit_block_count(n));
      std::vector<float> cpu_param = random_param(&generator, size);
      std::vector<std::uint8_t> codes1(size, 0), codes2(size, 0);
      std::vector<float> absmax1(blocks, 0.0f), absmax2(blocks, 0.0f);
      AdamW8bitState cpu{view_of(codes1, DType::kU8), view_of(codes2, DType::kU8),
                         view_of(absmax1, DType::kF32), view_of(absmax2, DType::kF32), 0};
      // 13 bytes of padding after every device tensor: the step must leave them alone.
      DeviceBuffer param = to_device(cpu_param, DType::kF32, 13);
      DeviceBuffer state1 = to_device(codes1, DType::kU8, 13);
      DeviceBuffer state2 = to_device(codes2, DType::kU8, 13);
      DeviceBuffer max1 = to_device(absmax1, DType::kF32, 13);
      DeviceBuffer max2 = to_device(absmax2, DType::kF32, 13);
      AdamW8bitState gpu{state1.view, state2.view, max1.view, max2.view, 0};
      ParamComparison comparison;
      for (int step = 1; step <= 3; ++step) {
        std::vector<float> grad = random_gradient(&generator, size);
        const std::vector<float> before = cpu_param;
        DeviceBuffer device_grad = to_device(grad, DType::kF32);
        ASSERT_TRUE(adamw8bit_step(hyperparameters, param.view, device_grad.view, &gpu).ok());
        ASSERT_TRUE(adamw8bit_step(hyperparameters, view_of(cpu_param, DType::kF32),
                                   view_of(grad, DType::kF32), &cpu)
                        .ok());
        EXPECT_EQ(differing_bits(to_host<std::uint8_t>(state1.view), codes1), 0) << step;
        EXPECT_EQ(differing_bits(to_host<std::uint8_t>(state2.view), codes2), 0) << step;
        EXPECT_EQ(differing_bits(to_host<float>(max1.view), absmax1), 0) << step;
        EXPECT_EQ(differing_bits(to_host<float>(max2.view), absmax2), 0) << step;
        compare_params(before, to_host<float>(param.view), cpu_param,
                       update_relative_error(hyperparameters, step), hyperparameters, &comparison);
        EXPECT_EQ(comparison.outside, 0) << "step " << step << ": " << comparison.first_outside;
      }
      if (n >= 512) {
        EXPECT_EQ(codes1[300], 255);
      }
      for (const DeviceBuffer* buffer : {&param, &state1, &state2, &max1, &max2}) {
        EXPECT_TRUE(padding_untouched(*buffer));
      }
    }
  }
}

TEST(AdamWCudaTest, ThirtyTwoBitStepEqualsTheCpuStateAndParamsWithinBound) {
  KBIT_REQUIRE_CUDA();
  std::mt19937 generator(20261125);
  for (const std::int64_t n : kSizes) {
    SCOPED_TRACE("n " + std::to_string(n));
    const AdamWHyperparameters hyperparameters = varied_hyperparameters(true);
    const auto size = static_cast<std::size_t>(n);
    std::vector<float> cpu_param = random_param(&generator, size);
    std::vector<float> m(size, 0.0f), v(size, 0.0f);
    AdamW32bitState cpu{view_of(m, DType::kF32), view_of(v, DType::kF32), 0};
    DeviceBuffer param = to_device(cpu_param, DType::kF32, 3);
    DeviceBuffer device_m = to_device(m, DType::kF32, 3);
    DeviceBuffer device_v = to_device(v, DType::kF32, 3);
    AdamW32bitState gpu{device_m.view, device_v.view, 0};
    ParamComparison comparison;
    for (int step = 1; step <= 3; ++step) {
      // Finite gradients: a NaN makes m and v NaN on both sides, which compare as differing bits.
      std::vector<float> grad = random_gradient(&generator, size);
      for (float& g : grad) g = std::isfinite(g) ? g : 0.5f;
      const std::vector<float> before = cpu_param;
      DeviceBuffer device_grad = to_device(grad, DType::kF32);
      ASSERT_TRUE(adamw32bit_step(hyperparameters, param.view, device_grad.view, &gpu).ok());
      ASSERT_TRUE(adamw32bit_step(hyperparameters, view_of(cpu_param, DType::kF32),
                                  view_of(grad, DType::kF32), &cpu)
                      .ok());
      EXPECT_EQ(differing_bits(to_host<float>(device_m.view), m), 0) << step;
      EXPECT_EQ(differing_bits(to_host<float>(device_v.view), v), 0) << step;
      compare_params(before, to_host<float>(param.view), cpu_param,
                     update_relative_error(hyperparameters, step), hyperparameters, &comparison);
      EXPECT_EQ(comparison.outside, 0) << "step " << step << ": " << comparison.first_outside;
    }
    for (const DeviceBuffer* buffer : {&param, &device_m, &device_v}) {
      EXPECT_TRUE(padding_untouched(*buffer));
    }
  }
}

// ---- Paged state.

bool is_managed(const void* ptr) {
  cudaPointerAttributes attributes{};
  return cudaPointerGetAttributes(&attributes, ptr) == cudaSuccess &&
         attributes.type == cudaMemoryTypeManaged;
}

TEST(AdamWCudaTest, PagedStateLivesInManagedMemoryAndStepsAsDeviceState) {
  KBIT_REQUIRE_CUDA();
  const std::int64_t n = kPagedStateMinSize + 1000;
  std::mt19937 generator(7);
  const std::vector<float> param0 = random_param(&generator, static_cast<std::size_t>(n));
  for (const bool eight_bit : {true, false}) {
    SCOPED_TRACE(eight_bit ? "8-bit" : "32-bit");
    AdamWParameterState paged =
        AdamWParameterState::create(n, eight_bit, {Device::cuda(0), true}).value();
    AdamWParameterState unpaged =
        AdamWParameterState::create(n, eight_bit, {Device::cuda(0), false}).value();
    ASSERT_TRUE(paged.paged());
    ASSERT_FALSE(unpaged.paged());
    EXPECT_EQ(paged.bytes(), adamw_state_bytes(n, eight_bit));
    for (const auto& [role, tensor] : paged.tensors()) {
      const bool per_element = role == "state1" || role == "state2";
      EXPECT_EQ(is_managed(tensor.data()), per_element) << role;
      EXPECT_TRUE(tensor.device().is_cuda()) << role;
    }
    // A parameter below the size rule is not paged.
    EXPECT_FALSE(
        AdamWParameterState::create(kPagedStateMinSize - 1, eight_bit, {Device::cuda(0), true})
            .value()
            .paged());
    DeviceBuffer paged_param = to_device(param0, DType::kF32);
    DeviceBuffer unpaged_param = to_device(param0, DType::kF32);
    for (int step = 1; step <= 3; ++step) {
      DeviceBuffer grad =
          to_device(random_gradient(&generator, static_cast<std::size_t>(n)), DType::kF32);
      ASSERT_TRUE(paged.apply(kGoldenHyperparameters, paged_param.view, grad.view).ok());
      ASSERT_TRUE(unpaged.apply(kGoldenHyperparameters, unpaged_param.view, grad.view).ok());
    }
    EXPECT_EQ(paged.step(), 3);
    EXPECT_EQ(differing_bits(to_host<float>(paged_param.view), to_host<float>(unpaged_param.view)),
              0);
    const auto paged_tensors = paged.tensors();
    const auto unpaged_tensors = unpaged.tensors();
    for (std::size_t k = 0; k < paged_tensors.size(); ++k) {
      EXPECT_EQ(differing_bits(to_host<unsigned char>(paged_tensors[k].second),
                               to_host<unsigned char>(unpaged_tensors[k].second)),
                0)
          << paged_tensors[k].first;
    }
  }
}

// ---- Argument checks.

TEST(AdamWCudaTest, TensorsOnMixedDevicesAreRefusedAndNothingChanges) {
  KBIT_REQUIRE_CUDA();
  std::vector<float> host_grad(1000, 0.5f);
  DeviceBuffer param = to_device(std::vector<float>(1000, 1.0f), DType::kF32);
  DeviceBuffer m = to_device(std::vector<float>(1000, 0.0f), DType::kF32);
  std::vector<float> host_v(1000, 0.0f);
  AdamW32bitState mixed_state{m.view, view_of(host_v, DType::kF32), 0};
  DeviceBuffer device_v = to_device(host_v, DType::kF32);
  AdamW32bitState device_state{m.view, device_v.view, 0};
  const Status grad_on_host =
      adamw32bit_step({}, param.view, view_of(host_grad, DType::kF32), &device_state);
  EXPECT_EQ(grad_on_host.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(grad_on_host.message().find("different devices"), std::string::npos)
      << grad_on_host.to_string();
  DeviceBuffer grad = to_device(host_grad, DType::kF32);
  const Status state_on_host = adamw32bit_step({}, param.view, grad.view, &mixed_state);
  EXPECT_EQ(state_on_host.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(device_state.step, 0);
  EXPECT_EQ(mixed_state.step, 0);
  EXPECT_EQ(to_host<float>(param.view), std::vector<float>(1000, 1.0f));
}

}  // namespace
}  // namespace kbit::optim
