// Gradient clipping against a float64 reference on fresh random gradients, and its checks.
#include "kbit/optim/clip_grad_norm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace kbit::optim {
namespace {

std::vector<float> random_values(std::size_t n, std::uint64_t seed, float stddev) {
  std::mt19937_64 generator(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> values(n);
  for (float& v : values) v = normal(generator);
  return values;
}

TensorView view_of(std::vector<float>& values) {
  return TensorView(values.data(), DType::kF32, Shape{static_cast<std::int64_t>(values.size())});
}

double norm_of(const std::vector<std::vector<float>>& gradients) {
  double sum = 0.0;
  for (const auto& g : gradients) {
    for (float v : g) sum += static_cast<double>(v) * v;
  }
  return std::sqrt(sum);
}

// Three tensors of different sizes; the returned norm and every scaled element as torch would
// give them (the coefficient in float32).
void check_clipping(float stddev, float max_norm, bool expect_clipped) {
  std::vector<std::vector<float>> gradients = {
      random_values(1000, 1, stddev), random_values(4097, 2, stddev), random_values(3, 3, stddev)};
  const std::vector<std::vector<float>> before = gradients;
  const double want_norm = norm_of(before);
  std::vector<TensorView> views;
  for (auto& g : gradients) views.push_back(view_of(g));
  const Result<float> total = clip_grad_norm(views, max_norm);
  ASSERT_TRUE(total.ok()) << total.status().to_string();
  EXPECT_NEAR(total.value(), want_norm, want_norm * 0x1p-23);
  const float coefficient = std::min(1.0f, max_norm / (total.value() + 1e-6f));
  EXPECT_EQ(coefficient < 1.0f, expect_clipped);
  for (std::size_t t = 0; t < gradients.size(); ++t) {
    for (std::size_t i = 0; i < gradients[t].size(); ++i) {
      ASSERT_EQ(gradients[t][i], before[t][i] * coefficient) << "tensor " << t << " element " << i;
    }
  }
  if (expect_clipped) {
    EXPECT_NEAR(norm_of(gradients), max_norm, max_norm * 1e-5);
  }
}

TEST(ClipGradNorm, ScalesLargeGradientsToTheMaximumNorm) {
  check_clipping(1.0f, 1.0f, /*expect_clipped=*/true);
}

TEST(ClipGradNorm, LeavesSmallGradientsAlone) {
  check_clipping(0.001f, 1.0f, /*expect_clipped=*/false);
}

TEST(ClipGradNorm, NonFiniteGradientsAreReportedAndLeftAlone) {
  std::vector<float> finite = random_values(100, 4, 1.0f);
  std::vector<float> broken = random_values(50, 5, 1.0f);
  broken[17] = std::numeric_limits<float>::infinity();
  const std::vector<float> finite_before = finite;
  const std::vector<TensorView> views = {view_of(finite), view_of(broken)};
  const Result<float> total = clip_grad_norm(views, 1.0f);
  ASSERT_TRUE(total.ok());
  EXPECT_TRUE(std::isinf(total.value()));
  EXPECT_EQ(finite, finite_before);
}

TEST(ClipGradNorm, RejectsBadArguments) {
  std::vector<float> values = random_values(8, 6, 1.0f);
  const std::vector<TensorView> views = {view_of(values)};
  for (const float max_norm : {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(),
                               std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(clip_grad_norm(views, max_norm).status().code(), StatusCode::kInvalidArgument)
        << max_norm;
  }
  std::vector<std::uint16_t> half(8);
  const std::vector<TensorView> wrong_dtype = {TensorView(half.data(), DType::kBF16, Shape{8})};
  EXPECT_EQ(clip_grad_norm(wrong_dtype, 1.0f).status().code(), StatusCode::kInvalidArgument);
}

// Refused before any gradient is read: the views on CUDA devices here point at host memory,
// which is never touched, so this runs in every build, with or without a GPU.
TEST(ClipGradNorm, RejectsGradientsOnDifferentDevices) {
  std::vector<float> host = random_values(8, 7, 1.0f);
  std::vector<float> other = random_values(8, 8, 1.0f);
  const std::vector<float> host_before = host;
  const TensorView on_host = view_of(host);
  const TensorView on_cuda0(other.data(), DType::kF32, Shape{8}, Device::cuda(0));
  const TensorView on_cuda1(other.data(), DType::kF32, Shape{8}, Device::cuda(1));
  const std::vector<std::vector<TensorView>> mixes = {
      {on_host, on_cuda0}, {on_cuda0, on_host}, {on_cuda0, on_cuda1}};
  for (const std::vector<TensorView>& views : mixes) {
    const Status status = clip_grad_norm(views, 1e-3f).status();
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
    EXPECT_NE(status.message().find(views[0].device().to_string()), std::string::npos)
        << status.to_string();
    EXPECT_NE(status.message().find(views[1].device().to_string()), std::string::npos)
        << status.to_string();
  }
  EXPECT_EQ(host, host_before);
}

TEST(ClipGradNorm, CudaGradientsNeedACudaBuild) {
#if defined(KBIT_WITH_CUDA)
  GTEST_SKIP() << "a CUDA build: clip_grad_norm_cuda_test.cc clips CUDA gradients";
#else
  std::vector<float> values = random_values(8, 9, 1.0f);
  const std::vector<TensorView> views = {
      TensorView(values.data(), DType::kF32, Shape{8}, Device::cuda(0))};
  EXPECT_EQ(clip_grad_norm(views, 1e-3f).status().code(), StatusCode::kUnimplemented);
#endif
}

}  // namespace
}  // namespace kbit::optim
