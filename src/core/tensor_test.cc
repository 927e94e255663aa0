#include "kbit/core/tensor.h"

#include <cstring>

#include <gtest/gtest.h>

#include "kbit/core/memory_stats.h"
#include "kbit/core/random.h"

namespace kbit {
namespace {

TEST(TensorTest, ShapeAndStrides) {
  const Shape shape{2, 3, 4};
  EXPECT_EQ(shape.numel(), 24);
  EXPECT_EQ(shape.to_string(), "[2, 3, 4]");
  float data[24];
  const TensorView view(data, DType::kF32, shape);
  EXPECT_EQ(view.stride(0), 12);
  EXPECT_EQ(view.stride(2), 1);
  EXPECT_TRUE(view.is_contiguous());
  EXPECT_EQ(view.nbytes(), 96u);
  EXPECT_EQ(view.describe(), "f32[2, 3, 4] on cpu");
  EXPECT_EQ(view.reshaped(Shape{6, 4})->shape(), (Shape{6, 4}));
  EXPECT_FALSE(view.reshaped(Shape{5, 5}).ok());
}

TEST(TensorTest, ShapeRejectsNegativeAndTooManyDims) {
  const std::int64_t negative[] = {2, -1};
  EXPECT_FALSE(Shape::from(negative, 2).ok());
  const std::int64_t many[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  EXPECT_FALSE(Shape::from(many, 9).ok());
}

TEST(TensorTest, EmptyAllocatesAndCopies) {
  Result<Tensor> a = Tensor::empty(Shape{1000}, DType::kBF16);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(fill_normal(a->view(), 7).ok());
  Result<Tensor> b = Tensor::empty(Shape{1000}, DType::kBF16);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(copy_tensor(*a, b->view()).ok());
  EXPECT_EQ(std::memcmp(a->data_as<void>(), b->data_as<void>(), a->nbytes()), 0);
  Result<Tensor> wrong = Tensor::empty(Shape{999}, DType::kBF16);
  EXPECT_FALSE(copy_tensor(*a, wrong->view()).ok());
}

TEST(TensorTest, CudaWithoutCudaFailsClearly) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  Result<Tensor> tensor = Tensor::empty(Shape{4}, DType::kF32, Device::cuda(0));
  EXPECT_FALSE(tensor.ok());
}

TEST(TensorTest, DeviceParsing) {
  EXPECT_EQ(parse_device("cpu").value(), Device::cpu());
  EXPECT_EQ(parse_device("cuda:3").value(), Device::cuda(3));
  EXPECT_FALSE(parse_device("cuda:x").ok());
  EXPECT_FALSE(parse_device("gpu").ok());
}

TEST(RandomTest, NormalFillIsReproducibleAndNormal) {
  Result<Tensor> a = Tensor::empty(Shape{200000}, DType::kF32);
  Result<Tensor> b = Tensor::empty(Shape{200000}, DType::kF32);
  ASSERT_TRUE(fill_normal(a->view(), 42).ok());
  ASSERT_TRUE(fill_normal(b->view(), 42).ok());
  EXPECT_EQ(std::memcmp(a->data_as<void>(), b->data_as<void>(), a->nbytes()), 0);
  double sum = 0, sum_sq = 0;
  for (std::int64_t i = 0; i < a->numel(); ++i) {
    sum += a->data_as<float>()[i];
    sum_sq += a->data_as<float>()[i] * a->data_as<float>()[i];
  }
  const double mean = sum / 200000, variance = sum_sq / 200000 - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(variance, 1.0, 0.02);
}

TEST(MemoryStatsTest, PeakResidentGrowsWithTouchedMemory) {
  const std::optional<std::int64_t> before = peak_resident_bytes();
  ASSERT_TRUE(before.has_value());
  constexpr std::int64_t kBytes = 64 << 20;
  Result<Tensor> big = Tensor::empty(Shape{kBytes}, DType::kU8);
  std::memset(big->data_as<void>(), 1, kBytes);
  EXPECT_GE(*peak_resident_bytes(), *before + kBytes / 2);
}

}  // namespace
}  // namespace kbit
