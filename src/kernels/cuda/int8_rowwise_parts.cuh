// The arithmetic of LLM.int8's row-wise activation quantization (shared/spec/bnb-compat.md 6.1
// and 6.3), shared by the quantizer (int8_rowwise.cu) and the int8 decode GEMV, which quantizes
// its few rows itself (linear_int8.cu): each value is rounded to f16 first, a value whose
// magnitude reaches the threshold is an outlier (left out of the absmax, its code 0), and the
// codes are round(value · 127 / absmax) with bitsandbytes' approximate division.
#pragma once

#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>
#include <type_traits>

#include "kbit/quant/codebooks.h"
#include "kernels/cuda/bnb_fast_math.cuh"
#include "kernels/cuda/common.cuh"

namespace kbit::kernels::cuda {

// An input value as bitsandbytes quantizes it: cast to f16.
template <typename T>
__device__ __forceinline__ float int8_input_value(T value) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(value);
  } else {
    return __half2float(__float2half_rn(to_float(value)));
  }
}

__device__ __forceinline__ bool is_int8_outlier(float value, float threshold) {
  return threshold > 0.0f && fabsf(value) >= threshold;
}

// What the quantizer gathers over (a thread's share of) a row before the codes: the max of the
// non-outlier magnitudes (with bitsandbytes' max.ftz) and whether every value is finite.
struct Int8RowScan {
  float absmax = 0.0f;
  bool all_finite = true;

  // Takes one input value (int8_input_value); returns whether it is an outlier.
  __device__ __forceinline__ bool add(float value, float threshold) {
    all_finite = all_finite && fabsf(value) <= FLT_MAX;
    if (is_int8_outlier(value, threshold)) return true;
    absmax = max_ftz(absmax, fabsf(value));
    return false;
  }
};

// The row's absmax as stored: the max of its non-outlier magnitudes, or NaN where any value of
// the row (outliers included) is not finite.
__device__ __forceinline__ float int8_row_absmax(float absmax, bool all_finite) {
  return all_finite ? absmax : __int_as_float(0x7fc00000);
}

// bitsandbytes: `__fdividef(127.0f, absmax)`. An all-zero row gives scale inf, and the code of
// 0 · inf = NaN is 0 (cvt.rni).
__device__ __forceinline__ float int8_row_scale(float row_absmax) {
  return div_approx_ftz(quant::kInt8CodeMax, row_absmax);
}

// The code of a non-outlier value: `__float2int_rn(val * scale)`.
__device__ __forceinline__ std::int8_t int8_code(float value, float scale) {
  return static_cast<std::int8_t>(__float2int_rn(mul_ftz(value, scale)));
}

}  // namespace kbit::kernels::cuda
