// What the GPU kernel tests share (llama_ops_test.cc, llama_backward_test.cc,
// attention_backward_test.cc, lora_test.cc, linear_test.cc, sampling_test.cc and optim's
// clip_grad_norm_cuda_test.cc): a stream of their own, device arrays poisoned with 0xAB bytes,
// values rounded to an activation dtype as both sides see them, and comparisons that report the
// first failures. Test code only; failures of the plumbing throw, which GoogleTest reports as test
// failures.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kbit/core/dtype.h"
#include "kbit/core/random.h"

namespace kbit::kernels::cuda_test {

// The largest relative spacing of f32 and of bf16 values: one ulp of x is at most this · |x|.
constexpr float kF32Ulp = std::numeric_limits<float>::epsilon();  // 2^-23
constexpr float kBf16Ulp = 1.0f / 128.0f;                         // 2^-7
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

inline void check(cudaError_t error) {
  if (error != cudaSuccess) throw std::runtime_error(cudaGetErrorString(error));
}

// A CUDA stream of its own that does not synchronise with the legacy one: work a launcher queued
// anywhere but on the stream it was given would race with the test's, and show.
class NonBlockingStream {
 public:
  NonBlockingStream() { check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~NonBlockingStream() { cudaStreamDestroy(stream_); }
  NonBlockingStream(const NonBlockingStream&) = delete;
  NonBlockingStream& operator=(const NonBlockingStream&) = delete;
  cudaStream_t get() const { return stream_; }
  void synchronize() const { check(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

// Waits for the queued work, throwing on a launch or execution error.
inline void finish(cudaError_t launched) {
  check(launched);
  check(cudaDeviceSynchronize());
}

inline std::string dtype_label(DType dtype) {
  return std::string(dtype_name(dtype));
}

// x as stored in dtype (f32, f16 or bf16), widened back to f32.
inline float representable(float x, DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return x;
    case DType::kF16:
      return f16_to_f32(f32_to_f16(x));
    case DType::kBF16:
      return bf16_to_f32(f32_to_bf16(x));
    default:
      throw std::runtime_error("representable needs a float dtype");
  }
}

inline std::vector<std::uint8_t> encode(const std::vector<float>& values, DType dtype) {
  const std::size_t size = dtype_size(dtype);
  std::vector<std::uint8_t> bytes(values.size() * size);
  for (std::size_t i = 0; i < values.size(); ++i) {
    std::uint8_t* target = bytes.data() + i * size;
    if (dtype == DType::kF32) {
      std::memcpy(target, &values[i], size);
    } else if (dtype == DType::kF16) {
      const f16 half = f32_to_f16(values[i]);
      std::memcpy(target, &half, size);
    } else if (dtype == DType::kBF16) {
      const bf16 brain = f32_to_bf16(values[i]);
      std::memcpy(target, &brain, size);
    } else {
      throw std::runtime_error("encode needs a float dtype");
    }
  }
  return bytes;
}

inline std::vector<float> decode(const std::vector<std::uint8_t>& bytes, DType dtype) {
  const std::size_t size = dtype_size(dtype);
  std::vector<float> values(bytes.size() / size);
  for (std::size_t i = 0; i < values.size(); ++i) {
    const std::uint8_t* source = bytes.data() + i * size;
    if (dtype == DType::kF32) {
      std::memcpy(&values[i], source, size);
    } else if (dtype == DType::kF16) {
      f16 half;
      std::memcpy(&half, source, size);
      values[i] = f16_to_f32(half);
    } else if (dtype == DType::kBF16) {
      bf16 brain;
      std::memcpy(&brain, source, size);
      values[i] = bf16_to_f32(brain);
    } else {
      throw std::runtime_error("decode needs a float dtype");
    }
  }
  return values;
}

// Device memory of `count` elements of `dtype`, freed on destruction.
class DeviceArray {
 public:
  // Every byte 0xAB.
  DeviceArray(std::int64_t count, DType dtype)
      : dtype_(dtype), bytes_(static_cast<std::size_t>(count) * dtype_size(dtype)) {
    check(cudaMalloc(&data_, std::max<std::size_t>(bytes_, 1)));
    poison();
  }
  // The values rounded to a float dtype.
  DeviceArray(const std::vector<float>& values, DType dtype)
      : DeviceArray(static_cast<std::int64_t>(values.size()), dtype) {
    upload(encode(values, dtype));
  }
  explicit DeviceArray(const std::vector<std::int32_t>& values)
      : DeviceArray(static_cast<std::int64_t>(values.size()), DType::kI32) {
    check(cudaMemcpy(data_, values.data(), bytes_, cudaMemcpyHostToDevice));
  }
  ~DeviceArray() { cudaFree(data_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  // Element i: with i = 1, a pointer that is not 16-byte aligned.
  void* element(std::int64_t i) const {
    return static_cast<std::byte*>(data_) + static_cast<std::size_t>(i) * dtype_size(dtype_);
  }

  // Every byte 0xAB.
  void poison() const { check(cudaMemset(data_, 0xAB, bytes_)); }
  void upload(const std::vector<std::uint8_t>& host) const {
    if (host.size() != bytes_) throw std::runtime_error("upload of the wrong size");
    check(cudaMemcpy(data_, host.data(), bytes_, cudaMemcpyHostToDevice));
  }
  std::vector<std::uint8_t> bytes() const {
    std::vector<std::uint8_t> host(bytes_);
    check(cudaMemcpy(host.data(), data_, bytes_, cudaMemcpyDeviceToHost));
    return host;
  }
  std::vector<float> to_floats() const { return decode(bytes(), dtype_); }

 private:
  void* data_ = nullptr;
  DType dtype_;
  std::size_t bytes_;
};

// normal(mean, stddev) samples of stream `seed`, rounded to dtype: the values both sides get.
inline std::vector<float> random_values(std::int64_t count, std::uint64_t seed, DType dtype,
                                        float mean = 0.0f, float stddev = 1.0f) {
  std::vector<float> values(static_cast<std::size_t>(count));
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double sample = mean + stddev * normal_sample(seed, i);
    values[i] = representable(static_cast<float>(sample), dtype);
  }
  return values;
}

// Expects |actual[i] − expected[i]| <= bound[i] for every i (NaN fails), and at most
// max_inexact_fraction of the elements to differ at all; reports the first failures.
inline void expect_close(const std::vector<float>& expected, const std::vector<float>& actual,
                         const std::vector<float>& bound, double max_inexact_fraction,
                         const std::string& what) {
  ASSERT_EQ(expected.size(), actual.size()) << what;
  ASSERT_EQ(expected.size(), bound.size()) << what;
  std::size_t failures = 0;
  std::size_t inexact = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const float difference = std::fabs(actual[i] - expected[i]);
    if (difference != 0.0f) ++inexact;
    if (difference <= bound[i]) continue;
    if (++failures <= 5) {
      ADD_FAILURE() << what << ": element " << i << ": expected " << expected[i] << ", got "
                    << actual[i] << " (difference " << difference << ", bound " << bound[i] << ")";
    }
  }
  EXPECT_EQ(failures, 0u) << what << ": of " << expected.size() << " elements";
  const double fraction =
      expected.empty() ? 0.0 : static_cast<double>(inexact) / static_cast<double>(expected.size());
  EXPECT_LE(fraction, max_inexact_fraction)
      << what << ": " << inexact << " of " << expected.size() << " elements differ";
}

inline void expect_equal(const std::vector<float>& expected, const std::vector<float>& actual,
                         const std::string& what) {
  expect_close(expected, actual, std::vector<float>(expected.size(), 0.0f), 0.0, what);
}

// Bit equality, which also tells -0 from +0 and infinities apart.
inline void expect_same_bits(const std::vector<float>& expected, const std::vector<float>& actual,
                             const std::string& what) {
  ASSERT_EQ(expected.size(), actual.size()) << what;
  std::size_t failures = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (std::bit_cast<std::uint32_t>(expected[i]) == std::bit_cast<std::uint32_t>(actual[i])) {
      continue;
    }
    if (++failures <= 5) {
      ADD_FAILURE() << what << ": element " << i << ": expected " << expected[i] << ", got "
                    << actual[i];
    }
  }
  EXPECT_EQ(failures, 0u) << what << ": of " << expected.size() << " elements";
}

// bound[i] = factor · |reference[i]|.
inline std::vector<float> relative_bound(const std::vector<float>& reference, float factor) {
  std::vector<float> bound(reference.size());
  for (std::size_t i = 0; i < bound.size(); ++i) bound[i] = factor * std::fabs(reference[i]);
  return bound;
}

// RoPE's inverse frequencies with Llama's base 10000: 10000^(−2i / head_dim), i < head_dim / 2.
inline std::vector<float> inverse_frequencies(std::int64_t head_dim) {
  std::vector<float> inv_freq(static_cast<std::size_t>(head_dim / 2));
  for (std::size_t i = 0; i < inv_freq.size(); ++i) {
    const double exponent = 2.0 * static_cast<double>(i) / static_cast<double>(head_dim);
    inv_freq[i] = static_cast<float>(1.0 / std::pow(10000.0, exponent));
  }
  return inv_freq;
}

}  // namespace kbit::kernels::cuda_test
