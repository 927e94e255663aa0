// Shared pieces of the quantizer property tests: random inputs of many shapes and scales, and
// running a quantizer through both CPU kernels to check they agree byte for byte.
#pragma once

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kbit/core/random.h"
#include "kbit/core/tensor.h"
#include "kernels/cpu/element_access.h"

namespace kbit::quant {

// A host tensor of `n` normal values (mean 0, std `scale`) rounded to `dtype`, with a few
// outliers (x 40) so that blocks have a clear maximum, as weights do.
inline Tensor random_input(std::int64_t n, DType dtype, std::uint64_t seed, float scale) {
  Tensor tensor = Tensor::empty(Shape{n}, dtype).value();
  EXPECT_TRUE(fill_normal(tensor.view(), seed, 0.0f, scale).ok());
  kernels::cpu::visit_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    T* values = tensor.data_as<T>();
    for (std::int64_t i = static_cast<std::int64_t>(seed % 97); i < n; i += 997) {
      values[i] = kernels::cpu::from_f32<T>(kernels::cpu::to_f32(values[i]) * 40.0f);
    }
  });
  return tensor;
}

inline double value_as_double(const TensorView& tensor, std::int64_t i) {
  double value = 0;
  kernels::cpu::visit_float_dtype(tensor.dtype(), [&](auto type_tag) {
    value = kernels::cpu::to_f32(tensor.data_as<const decltype(type_tag)>()[i]);
  });
  return value;
}

// Lengths that exercise single values, odd counts, exact and partial blocks.
inline std::vector<std::int64_t> test_lengths(std::int64_t block_size) {
  return {1,
          2,
          3,
          block_size - 1,
          block_size,
          block_size + 1,
          5 * block_size + 7,
          64 * block_size + 33};
}

// Output buffers filled with a poison byte, so unwritten elements are caught.
inline std::vector<std::uint8_t> poisoned(std::size_t bytes) {
  return std::vector<std::uint8_t>(bytes, 0xab);
}

// float32 ulp of x.
inline double ulp32(double x) {
  const float magnitude = static_cast<float>(std::fabs(x));
  return std::nextafter(magnitude, INFINITY) - magnitude;
}

}  // namespace kbit::quant
