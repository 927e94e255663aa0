// sm_90's rcp.approx.ftz.f32 and div.approx.ftz.f32 on the device against their CPU emulation
// (kernels/cpu/gpu_approx_math.h), bit for bit: every mantissa at the exponents where the shape
// of the result changes (zeros and subnormals, the ends of the normal range, results near
// FLT_MIN that .ftz keeps or flushes, infinities and NaNs), and 16M quotients of random operands.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kbit/core/device.h"
#include "kernels/cpu/gpu_approx_math.h"
#include "kernels/cuda/gpu_approx_math_probe.h"
#include "testing/shared_data.h"

namespace kbit::kernels {
namespace {

void check(cudaError_t error) {
  if (error != cudaSuccess) throw std::runtime_error(cudaGetErrorString(error));
}

// Floats in device memory, copied in and out whole.
class DeviceFloats {
 public:
  explicit DeviceFloats(std::size_t count) : count_(count) {
    void* data = nullptr;
    check(cudaMalloc(&data, count * sizeof(float)));
    data_ = static_cast<float*>(data);
  }
  explicit DeviceFloats(const std::vector<float>& values) : DeviceFloats(values.size()) {
    check(cudaMemcpy(data_, values.data(), count_ * sizeof(float), cudaMemcpyHostToDevice));
  }
  ~DeviceFloats() { cudaFree(data_); }
  DeviceFloats(const DeviceFloats&) = delete;
  DeviceFloats& operator=(const DeviceFloats&) = delete;

  float* data() const { return data_; }
  std::int64_t size() const { return static_cast<std::int64_t>(count_); }
  std::vector<float> to_host() const {
    std::vector<float> values(count_);
    check(cudaMemcpy(values.data(), data_, count_ * sizeof(float), cudaMemcpyDeviceToHost));
    return values;
  }

 private:
  float* data_ = nullptr;
  std::size_t count_;
};

std::uint32_t bits_of(float x) {
  return std::bit_cast<std::uint32_t>(x);
}

std::string hex_float(float x) {
  char text[64];
  std::snprintf(text, sizeof(text), "%a (0x%08x)", static_cast<double>(x), bits_of(x));
  return text;
}

// Counts results whose bits differ from the emulation's (NaNs included: the GPU returns the
// canonical 0x7fffffff, and so does the emulation); prints the first few.
class Mismatches {
 public:
  template <typename Describe>
  void compare(float device, float emulated, Describe describe) {
    ++compared_;
    if (bits_of(device) == bits_of(emulated)) return;
    if (++count_ <= 5) {
      ADD_FAILURE() << describe() << ": device " << hex_float(device) << ", emulation "
                    << hex_float(emulated);
    }
  }
  std::int64_t count() const { return count_; }
  void report(const char* what) const {
    std::cout << "[ info     ] " << what << ": " << compared_ << " compared, " << count_
              << " differ\n";
  }

 private:
  std::int64_t compared_ = 0;
  std::int64_t count_ = 0;
};

// rcp.approx of every float with the given sign and exponent bits: all 2^23 mantissas.
TEST(CudaGpuApproxMath, ReciprocalOfEveryMantissaMatchesTheEmulation) {
  KBIT_REQUIRE_CUDA();
  constexpr std::uint32_t kMantissas = 1u << 23;
  struct Sweep {
    std::uint32_t sign;
    std::uint32_t exponent;
  };
  // 0: zeros and subnormals (-> inf); 1, 2: results near 2^126; 126-128, 200: ordinary;
  // 252: results just above FLT_MIN; 253: x in [2^126, 2^127), results FLT_MIN (x = 2^126) and
  // flushed subnormals; 254: all flushed; 255: inf (-> 0) and NaNs.
  std::vector<Sweep> sweeps;
  for (std::uint32_t exponent : {0u, 1u, 2u, 126u, 127u, 128u, 200u, 252u, 253u, 254u, 255u}) {
    sweeps.push_back({0u, exponent});
  }
  for (std::uint32_t exponent : {0u, 1u, 127u, 252u, 253u, 254u, 255u}) {
    sweeps.push_back({1u, exponent});
  }
  std::vector<float> x(kMantissas);
  DeviceFloats device_result(kMantissas);
  Mismatches mismatches;
  for (const Sweep& sweep : sweeps) {
    SCOPED_TRACE("sign " + std::to_string(sweep.sign) + ", exponent bits " +
                 std::to_string(sweep.exponent));
    for (std::uint32_t m = 0; m < kMantissas; ++m) {
      x[m] = std::bit_cast<float>(sweep.sign << 31 | sweep.exponent << 23 | m);
    }
    const DeviceFloats device_x(x);
    check(cuda::rcp_approx_on_device(device_x.data(), device_x.size(), device_result.data()));
    const std::vector<float> result = device_result.to_host();
    for (std::uint32_t m = 0; m < kMantissas; ++m) {
      mismatches.compare(result[m], cpu::rcp_approx_ftz(x[m]),
                         [&] { return "rcp.approx of " + hex_float(x[m]); });
    }
  }
  mismatches.report("rcp.approx");
  EXPECT_EQ(mismatches.count(), 0);
}

// div.approx of random operands: 127 or 1 (what the quantizers divide) and random floats of
// every class over the whole range, products near FLT_MIN and near overflow, |b| > 2^126.
TEST(CudaGpuApproxMath, DivisionOfRandomOperandsMatchesTheEmulation) {
  KBIT_REQUIRE_CUDA();
  constexpr std::size_t kCount = std::size_t{1} << 24;
  std::mt19937_64 random(20261123);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  std::uniform_int_distribution<std::uint32_t> mantissa(0, (1u << 23) - 1);
  std::uniform_int_distribution<int> exponent(-126, 127);
  std::uniform_int_distribution<int> small_exponent(-40, 40);
  std::uniform_int_distribution<int> half_range(0, 126);
  std::uniform_int_distribution<int> one_step(-1, 1);
  std::uniform_int_distribution<int> kind(0, 7);
  // A random normal float with a random sign and mantissa and the given unbiased exponent.
  const auto normal = [&](int unbiased) {
    const std::uint32_t sign = any_bits(random) & 0x80000000u;
    return std::bit_cast<float>(sign | static_cast<std::uint32_t>(unbiased + 127) << 23 |
                                mantissa(random));
  };
  std::vector<float> a(kCount);
  std::vector<float> b(kCount);
  for (std::size_t i = 0; i < kCount; ++i) {
    switch (kind(random)) {
      case 0:  // the int8 quantizer's 127 / absmax
        a[i] = 127.0f;
        b[i] = std::fabs(normal(small_exponent(random)));
        break;
      case 1:  // the blockwise quantizers' 1 / absmax
        a[i] = 1.0f;
        b[i] = normal(exponent(random));
        break;
      case 2:  // any bits: subnormals, infinities and NaNs included
        a[i] = std::bit_cast<float>(any_bits(random));
        b[i] = std::bit_cast<float>(any_bits(random));
        break;
      case 3: {  // quotients around FLT_MIN, which .ftz keeps or flushes
        const int e = half_range(random);
        a[i] = normal(std::max(-126, e - 126 + one_step(random)));
        b[i] = normal(e);
        break;
      }
      case 4: {  // quotients around FLT_MAX
        const int e = -half_range(random);
        a[i] = normal(std::min(127, e + 127 + one_step(random)));
        b[i] = normal(e);
        break;
      }
      case 5:  // |b| beyond 2^126: reciprocal flushed, quotient 0 (NaN for infinite a)
        a[i] = any_bits(random) % 16 == 0 ? std::numeric_limits<float>::infinity()
                                          : normal(exponent(random));
        b[i] = normal(126 + static_cast<int>(any_bits(random) % 2));
        break;
      default:  // ordinary operands
        a[i] = normal(small_exponent(random));
        b[i] = normal(small_exponent(random));
        break;
    }
  }
  const DeviceFloats device_a(a);
  const DeviceFloats device_b(b);
  DeviceFloats device_result(kCount);
  check(cuda::div_approx_on_device(device_a.data(), device_b.data(), device_a.size(),
                                   device_result.data()));
  const std::vector<float> result = device_result.to_host();
  Mismatches mismatches;
  for (std::size_t i = 0; i < kCount; ++i) {
    mismatches.compare(result[i], cpu::div_approx_ftz(a[i], b[i]), [&] {
      return "div.approx(" + hex_float(a[i]) + ", " + hex_float(b[i]) + ")";
    });
  }
  mismatches.report("div.approx");
  EXPECT_EQ(mismatches.count(), 0);
}

}  // namespace
}  // namespace kbit::kernels
