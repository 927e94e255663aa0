// What the CUDA kernels of the Llama forward (llama_ops.cu) and of its backward
// (llama_backward.cu, attention_backward.cu) share: activations of type T (float or
// __nv_bfloat16) read and written as f32 values in chunks of 16-byte vectors, the CPU's bf16
// rounding of intermediates, warp and block reductions, and the dispatch on the activation dtype.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstring>
#include <type_traits>

#include "kbit/core/dtype.h"
#include "kernels/cuda/common.cuh"

namespace kbit::kernels::cuda {

inline constexpr int kWarpSize = 32;
inline constexpr int kChunk = 8;  // values per 16-byte vector of bf16, two vectors of f32

// ---- Values and vectors.

// f32(T(value)): the CPU's round_to_bf16 for bf16, nothing for float.
template <typename T>
__device__ __forceinline__ float round_as(float value) {
  return to_float(from_float<T>(value));
}

// Loads kWidth consecutive values as floats; kWidth == kChunk needs a 16-byte aligned source.
template <int kWidth, typename T>
__device__ __forceinline__ void load_values(const T* source, float (&values)[kWidth]) {
  if constexpr (kWidth == kChunk) {
    constexpr int kPerVector = kValuesPerVector<T>;
#pragma unroll
    for (int v = 0; v < kChunk / kPerVector; ++v) {
      const uint4 raw = reinterpret_cast<const uint4*>(source)[v];
      T elements[kPerVector];
      std::memcpy(elements, &raw, sizeof(raw));
#pragma unroll
      for (int k = 0; k < kPerVector; ++k) values[v * kPerVector + k] = to_float(elements[k]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < kWidth; ++k) values[k] = to_float(source[k]);
  }
}

// Stores kWidth floats converted to T; kWidth == kChunk needs a 16-byte aligned target.
template <int kWidth, typename T>
__device__ __forceinline__ void store_values(T* target, const float (&values)[kWidth]) {
  if constexpr (kWidth == kChunk) {
    store_8_values(target, values);
  } else {
#pragma unroll
    for (int k = 0; k < kWidth; ++k) target[k] = from_float<T>(values[k]);
  }
}

// Eight consecutive values, as a vector where `aligned` says the source allows it.
template <typename T>
__device__ __forceinline__ void load_chunk(const T* source, bool aligned, float (&values)[kChunk]) {
  if (aligned) {
    load_values<kChunk>(source, values);
    return;
  }
#pragma unroll
  for (int k = 0; k < kChunk; ++k) values[k] = to_float(source[k]);
}

// ---- Reductions. Every lane (warp_reduce) or thread (block_reduce) gets the same value: the
// butterfly pairs the same operands on every lane, and + and max are commutative.

struct Sum {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
// bitsandbytes' max.ftz (common.cuh), as its quantizers reduce an absmax.
struct MaxFtz {
  __device__ float operator()(float a, float b) const { return max_ftz(a, b); }
};

template <typename Op>
__device__ __forceinline__ float warp_reduce(float value, Op op) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// Every thread of the block must call it. scratch [blockDim.x / 32] may be reused by the next
// call: the leading barrier keeps its writes behind the previous call's reads.
template <typename Op>
__device__ __forceinline__ float block_reduce(float value, Op op, float* scratch) {
  value = warp_reduce(value, op);
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  __syncthreads();
  if (threadIdx.x % kWarpSize == 0) scratch[threadIdx.x / kWarpSize] = value;
  __syncthreads();
  value = scratch[0];
  for (int w = 1; w < warps; ++w) value = op(value, scratch[w]);
  return value;
}

// ---- Host side.

// Calls body(T{}) with T the CUDA type of an activation dtype; cudaErrorInvalidValue for others.
template <typename Body>
cudaError_t visit_activation_dtype(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::kF32:
      return body(std::type_identity<float>{});
    case DType::kBF16:
      return body(std::type_identity<__nv_bfloat16>{});
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace kbit::kernels::cuda
