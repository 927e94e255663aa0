// Reading and writing float32, float16 and bfloat16 elements as float32 in the CPU kernels.
#pragma once

#include <cstdint>

#include "kbit/core/dtype.h"

namespace kbit::kernels::cpu {

inline float to_f32(float value) {
  return value;
}
inline float to_f32(bf16 value) {
  return bf16_to_f32(value);
}
inline float to_f32(f16 value) {
  return f16_to_f32(value);
}

template <typename T>
T from_f32(float value);
template <>
inline float from_f32<float>(float value) {
  return value;
}
template <>
inline bf16 from_f32<bf16>(float value) {
  return f32_to_bf16(value);
}
template <>
inline f16 from_f32<f16>(float value) {
  return f32_to_f16(value);
}

// Calls body(T{}) with T the C++ type of the floating dtype (f32, f16 or bf16).
template <typename Body>
void visit_float_dtype(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::kF16:
      body(f16{});
      return;
    case DType::kBF16:
      body(bf16{});
      return;
    default:
      body(float{});
      return;
  }
}

}  // namespace kbit::kernels::cpu
