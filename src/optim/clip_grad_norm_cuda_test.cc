// Gradient clipping on a CUDA device (kbit/optim/clip_grad_norm.h) against the CPU path on the
// same fresh random gradients, on a non-blocking stream of its own:
//   - the total within 1e-6 relative of the CPU's: both sum the same exact squares in double, in
//     different orders, each within n·2^-53 relative of the exact sum (n <= 2^25 here: 4e-9),
//     and the float total then rounds once more, 2^-24 relative; 1e-6 covers both with room,
//     while a missed, repeated or misread tensor changes the total by far more;
//   - every scaled gradient bit for bit g · c, with the f32 coefficient c computed on the host
//     from the GPU's own total as the CPU path computes it, and, where the two totals are the
//     same float, bit for bit the CPU's scaled gradient;
//   - the same total, bit for bit, when run again (the sum's order is fixed);
//   - nothing written past any gradient; nothing changed below the maximum norm, or for a NaN or
//     infinite gradient (whose total is returned, not finite); mixed devices refused.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kbit/core/tensor.h"
#include "kbit/optim/clip_grad_norm.h"
#include "kernels/cuda/cuda_kernel_test_support.h"
#include "testing/shared_data.h"

namespace kbit::optim {
namespace {

using kernels::cuda_test::check;
using kernels::cuda_test::expect_same_bits;

constexpr std::int64_t kPadding = 13;  // 0xAB-poisoned floats after every device gradient
constexpr float kNoClipping = 3e38f;   // a max_norm the coefficient never goes below 1 for

using TestStream = kernels::cuda_test::NonBlockingStream;

// Execution on `stream`.
ExecutionOptions on(const TestStream& stream) {
  ExecutionOptions options;
  options.stream.handle = stream.get();
  return options;
}

// A gradient on device 0: its values, then kPadding poisoned floats; view() covers the values.
class DeviceGradient {
 public:
  explicit DeviceGradient(const std::vector<float>& values)
      : count_(static_cast<std::int64_t>(values.size())) {
    storage_ = Tensor::empty(Shape{count_ + kPadding}, DType::kF32, Device::cuda(0)).value();
    check(cudaMemset(storage_.view().data(), 0xAB, storage_.nbytes()));
    check(cudaMemcpy(storage_.view().data(), values.data(), values.size() * sizeof(float),
                     cudaMemcpyHostToDevice));
  }
  TensorView view() const {
    return TensorView(storage_.view().data(), DType::kF32, Shape{count_}, Device::cuda(0));
  }
  // The values, then the padding.
  std::vector<float> values() const { return download(count_); }
  bool padding_untouched() const {
    const std::vector<float> all = download(count_ + kPadding);
    for (std::int64_t i = count_; i < count_ + kPadding; ++i) {
      if (std::bit_cast<std::uint32_t>(all[static_cast<std::size_t>(i)]) != 0xABABABABu) {
        return false;
      }
    }
    return true;
  }

 private:
  std::vector<float> download(std::int64_t count) const {
    std::vector<float> host(static_cast<std::size_t>(count));
    check(cudaMemcpy(host.data(), storage_.view().data(), host.size() * sizeof(float),
                     cudaMemcpyDeviceToHost));
    return host;
  }
  std::int64_t count_;
  Tensor storage_;
};

// Normal values of a standard deviation drawn per tensor from [0.1, 10].
std::vector<std::vector<float>> random_gradients(const std::vector<std::int64_t>& sizes,
                                                 std::uint64_t seed) {
  std::mt19937_64 generator(seed);
  std::uniform_real_distribution<float> log_stddev(-1.0f, 1.0f);
  std::vector<std::vector<float>> gradients;
  for (const std::int64_t size : sizes) {
    std::normal_distribution<float> normal(0.0f, std::pow(10.0f, log_stddev(generator)));
    std::vector<float> values(static_cast<std::size_t>(size));
    for (float& value : values) value = normal(generator);
    gradients.push_back(std::move(values));
  }
  return gradients;
}

std::vector<DeviceGradient> upload_all(const std::vector<std::vector<float>>& gradients) {
  std::vector<DeviceGradient> device;
  device.reserve(gradients.size());
  for (const std::vector<float>& values : gradients) device.emplace_back(values);
  return device;
}

std::vector<TensorView> views_of(const std::vector<DeviceGradient>& device) {
  std::vector<TensorView> views;
  for (const DeviceGradient& gradient : device) views.push_back(gradient.view());
  return views;
}

std::vector<TensorView> views_of(std::vector<std::vector<float>>& host) {
  std::vector<TensorView> views;
  for (std::vector<float>& values : host) {
    views.push_back(
        TensorView(values.data(), DType::kF32, Shape{static_cast<std::int64_t>(values.size())}));
  }
  return views;
}

// Clips `sizes` gradients on the device and on the host and compares as the header says.
void check_against_cpu(const std::vector<std::int64_t>& sizes, std::uint64_t seed, float max_norm,
                       bool expect_clipped) {
  const std::vector<std::vector<float>> before = random_gradients(sizes, seed);
  std::vector<std::vector<float>> host = before;
  const std::vector<DeviceGradient> device = upload_all(before);
  const std::vector<TensorView> device_views = views_of(device);
  const TestStream stream;

  const Result<float> first = clip_grad_norm(device_views, kNoClipping, on(stream));
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  const Result<float> gpu_total = clip_grad_norm(device_views, max_norm, on(stream));
  ASSERT_TRUE(gpu_total.ok()) << gpu_total.status().to_string();
  stream.synchronize();
  EXPECT_EQ(std::bit_cast<std::uint32_t>(first.value()),
            std::bit_cast<std::uint32_t>(gpu_total.value()))
      << "the total differs between two runs on the same gradients";

  const Result<float> cpu_total = clip_grad_norm(views_of(host), max_norm);
  ASSERT_TRUE(cpu_total.ok()) << cpu_total.status().to_string();
  EXPECT_NEAR(gpu_total.value(), cpu_total.value(), 1e-6 * cpu_total.value());
  const bool same_total = gpu_total.value() == cpu_total.value();
  std::cout << "[ info ] " << sizes.size() << " gradients: totals " << gpu_total.value()
            << " (GPU) and " << cpu_total.value() << " (CPU)"
            << (same_total ? ", the same float" : ", different floats") << "\n";

  const float coefficient = std::min(1.0f, max_norm / (gpu_total.value() + 1e-6f));
  EXPECT_EQ(coefficient < 1.0f, expect_clipped) << "coefficient " << coefficient;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    const std::string what = "gradient " + std::to_string(t);
    const std::vector<float> actual = device[t].values();
    std::vector<float> expected = before[t];
    for (float& value : expected) value *= coefficient;
    expect_same_bits(expected, actual, what + " against g · c from the GPU's total");
    if (same_total) {
      expect_same_bits(host[t], actual, what + " against the CPU's");
    }
    EXPECT_TRUE(device[t].padding_untouched()) << what;
  }
}

TEST(ClipGradNormCuda, ScalesAsTheCpuPath) {
  KBIT_REQUIRE_CUDA();
  // One element, a few, a partial last CUDA block; an empty gradient among them.
  check_against_cpu({1, 1000, 0, 65536 + 3}, 1, 1.0f, /*expect_clipped=*/true);
  check_against_cpu({65536 + 3, 1, 1000}, 2, 1e6f, /*expect_clipped=*/false);
}

TEST(ClipGradNormCuda, ManyLoraSizedGradients) {
  KBIT_REQUIRE_CUDA();
  // 256 LoRA matrices of rank 16 on 4096 features (A [16, 4096], B [4096, 16]), and a bias-sized
  // odd one between them.
  std::vector<std::int64_t> sizes(256, 16 * 4096);
  sizes[100] = 4099;
  check_against_cpu(sizes, 3, 5.0f, /*expect_clipped=*/true);
}

TEST(ClipGradNormCuda, NonFiniteGradientsAreReportedAndLeftAlone) {
  KBIT_REQUIRE_CUDA();
  const TestStream stream;
  for (const float bad :
       {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
    SCOPED_TRACE(bad);
    std::vector<std::vector<float>> before = random_gradients({1000, 65536 + 3, 7}, 4);
    before[1][40000] = bad;
    const std::vector<DeviceGradient> device = upload_all(before);
    const Result<float> total = clip_grad_norm(views_of(device), 1e-3f, on(stream));
    ASSERT_TRUE(total.ok()) << total.status().to_string();
    stream.synchronize();
    EXPECT_FALSE(std::isfinite(total.value())) << total.value();
    EXPECT_EQ(std::isnan(total.value()), std::isnan(bad)) << total.value();
    for (std::size_t t = 0; t < before.size(); ++t) {
      expect_same_bits(before[t], device[t].values(), "gradient " + std::to_string(t));
    }
  }
}

TEST(ClipGradNormCuda, EmptyGradientsHaveNormZero) {
  KBIT_REQUIRE_CUDA();
  const DeviceGradient empty(std::vector<float>{});
  const std::vector<TensorView> views = {empty.view(), empty.view()};
  const Result<float> total = clip_grad_norm(views, 1.0f);
  ASSERT_TRUE(total.ok()) << total.status().to_string();
  EXPECT_EQ(total.value(), 0.0f);
  EXPECT_TRUE(empty.padding_untouched());
}

TEST(ClipGradNormCuda, GradientsOnHostAndDeviceAreRefusedAndLeftAlone) {
  KBIT_REQUIRE_CUDA();
  std::vector<std::vector<float>> host = random_gradients({1000}, 5);
  const std::vector<std::vector<float>> host_before = host;
  const std::vector<std::vector<float>> device_before = random_gradients({1000}, 6);
  const std::vector<DeviceGradient> device = upload_all(device_before);
  const std::vector<TensorView> mixed = {device[0].view(), views_of(host)[0]};
  const Status status = clip_grad_norm(mixed, 1e-3f).status();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
  EXPECT_NE(status.message().find("cuda:0"), std::string::npos) << status.to_string();
  EXPECT_NE(status.message().find("cpu"), std::string::npos) << status.to_string();
  EXPECT_EQ(host, host_before);
  expect_same_bits(device_before[0], device[0].values(), "device gradient");
}

}  // namespace
}  // namespace kbit::optim
