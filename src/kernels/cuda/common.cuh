// Pieces shared by kbit's CUDA quantization kernels: element conversions, 16-byte vector access,
// the group-wide absmax reduction, dtype dispatch and grid sizing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cfloat>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kbit/core/dtype.h"
#include "kernels/cuda/bnb_fast_math.cuh"
#include "kernels/cuda/device_queries.h"

namespace kbit::kernels::cuda {

// ---- Element conversions. Float to f16/bf16 rounds to nearest even, as PyTorch does.

__device__ __forceinline__ float to_float(float value) {
  return value;
}
__device__ __forceinline__ float to_float(__half value) {
  return __half2float(value);
}
__device__ __forceinline__ float to_float(__nv_bfloat16 value) {
  return __bfloat162float(value);
}

template <typename T>
__device__ __forceinline__ T from_float(float value) {
  if constexpr (std::is_same_v<T, float>) {
    return value;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(value);
  } else {
    return __float2bfloat16_rn(value);
  }
}

// silu_mul_reference of one value for activations T: gate / (1 + exp(−gate)), rounded to T, times
// up; the caller's store to T rounds the product. One definition for the elementwise kernel and
// the fused gate/up GEMV's epilogue, so that both give the same bits.
template <typename T>
__device__ __forceinline__ float silu_mul_value(float gate, float up) {
  const float silu = to_float(from_float<T>(__fdiv_rn(gate, __fadd_rn(1.0f, expf(-gate)))));
  return __fmul_rn(silu, up);
}

// ---- 16-byte vectors: the widest load and store a thread can issue.

template <typename T>
inline constexpr int kValuesPerVector = 16 / static_cast<int>(sizeof(T));

// Loads values [first, first + 8) of input [n] as floats. `vector_ok` promises that the eight
// are in range and 16-byte aligned; otherwise values at or beyond n read as 0.0, which is also the
// padding value of bitsandbytes' kernels.
template <typename T>
__device__ __forceinline__ void load_8_values(const T* __restrict__ input, std::int64_t first,
                                              std::int64_t n, bool vector_ok, float (&values)[8]) {
  if (vector_ok) {
    constexpr int kPerVector = kValuesPerVector<T>;
#pragma unroll
    for (int v = 0; v < 8 / kPerVector; ++v) {
      const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(input + first) + v);
      T elements[kPerVector];
      std::memcpy(elements, &raw, sizeof(raw));
#pragma unroll
      for (int k = 0; k < kPerVector; ++k) values[v * kPerVector + k] = to_float(elements[k]);
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) values[k] = first + k < n ? to_float(input[first + k]) : 0.0f;
}

// Stores 8 floats, converted to T, at output[0..8), which must be 16-byte aligned.
template <typename T>
__device__ __forceinline__ void store_8_values(T* __restrict__ output, const float (&values)[8]) {
  uint4 raw[8 / kValuesPerVector<T>];
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(raw, values, sizeof(raw));
  } else {
    // The paired conversions (cvt.rn.bf16x2.f32 / cvt.rn.f16x2.f32) round each half like the
    // single ones and take one instruction for two values.
    using Pair = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;
    Pair pairs[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if constexpr (std::is_same_v<T, __half>) {
        pairs[k] = __floats2half2_rn(values[2 * k], values[2 * k + 1]);
      } else {
        pairs[k] = __floats2bfloat162_rn(values[2 * k], values[2 * k + 1]);
      }
    }
    std::memcpy(raw, pairs, sizeof(raw));
  }
#pragma unroll
  for (int v = 0; v < 8 / kValuesPerVector<T>; ++v) reinterpret_cast<uint4*>(output)[v] = raw[v];
}

// ---- Block absmax.

// |x| for the absmax, with every non-finite x (NaN, Inf) turned into +inf: max_ftz ignores NaN,
// and +inf survives every max, so a block holding NaN or Inf ends with absmax +inf, which the
// kernel then stores as NaN for the caller's finiteness check.
__device__ __forceinline__ float magnitude_for_absmax(float x) {
  const float magnitude = fabsf(x);
  return magnitude <= FLT_MAX ? magnitude : __int_as_float(0x7f800000);
}

// The sum of `value` over the warp, in a butterfly of shuffles: every lane gets the same total,
// summed in the same order on every call.
template <typename Value>
__device__ __forceinline__ Value warp_sum(Value value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

// The max of `value` over each group of `group_threads` consecutive threads (a power of two that
// divides blockDim.x), with bitsandbytes' max.ftz. Groups wider than a warp meet in
// `warp_partials` [blockDim.x / 32]. Every thread of the block must call it.
__device__ __forceinline__ float group_max(float value, int group_threads, float* warp_partials) {
  const int width = group_threads < 32 ? group_threads : 32;
  for (int offset = 1; offset < width; offset <<= 1) {
    value = max_ftz(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  if (group_threads <= 32) return value;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  if (threadIdx.x % 32 == 0) warp_partials[warp] = value;
  __syncthreads();
  const int warps_per_group = group_threads / 32;
  const int first_warp = warp / warps_per_group * warps_per_group;
  value = warp_partials[first_warp];
  for (int w = 1; w < warps_per_group; ++w) value = max_ftz(value, warp_partials[first_warp + w]);
  return value;
}

// ---- Host side.

inline bool is_aligned_16(const void* ptr) {
  return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0;
}

inline int log2_of(std::int64_t power_of_two) {
  int log2 = 0;
  while ((std::int64_t{1} << log2) < power_of_two) ++log2;
  return log2;
}

// Calls body(T{}) with T the CUDA type of a floating dtype; cudaErrorInvalidValue for others.
template <typename Body>
cudaError_t visit_float_dtype(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::kF32:
      return body(std::type_identity<float>{});
    case DType::kF16:
      return body(std::type_identity<__half>{});
    case DType::kBF16:
      return body(std::type_identity<__nv_bfloat16>{});
    default:
      return cudaErrorInvalidValue;
  }
}

// Blocks for a grid-stride kernel: enough to fill every multiprocessor of the current device at
// the kernel's occupancy, never more than the work needs.
template <typename Kernel>
cudaError_t grid_stride_blocks(Kernel kernel, int threads, std::int64_t work_items, int* blocks) {
  const int multiprocessors = current_device_multiprocessors();
  if (multiprocessors == 0) return cudaErrorInvalidDevice;
  int blocks_per_multiprocessor = 0;
  const cudaError_t error =
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_multiprocessor, kernel, threads, 0);
  if (error != cudaSuccess) return error;
  const std::int64_t needed = (work_items + threads - 1) / threads;
  const std::int64_t resident = static_cast<std::int64_t>(multiprocessors) *
                                (blocks_per_multiprocessor > 0 ? blocks_per_multiprocessor : 1);
  *blocks = static_cast<int>(needed < resident ? (needed > 0 ? needed : 1) : resident);
  return cudaSuccess;
}

}  // namespace kbit::kernels::cuda
