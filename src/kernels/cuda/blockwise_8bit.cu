// 8-bit dynamic blockwise quantization on the GPU (contract: kbit/quant/blockwise_8bit.h and
// nested_absmax.h; arithmetic: shared/spec/bnb-compat.md sections 3 and 5, with bitsandbytes'
// fast-math instructions, see bnb_fast_math.cuh).
//
// Same layout as the 4-bit kernels: quantize gives each thread 8 consecutive values and the bs/8
// threads of a block reduce its absmax together; dequantize strides over units of 8 codes (one
// 8-byte load, consecutive threads on consecutive units) with the 256-entry map in shared
// memory, four units' loads in flight per thread.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kbit/quant/blockwise_8bit.h"
#include "kbit/quant/codebooks.h"
#include "kernels/code_rules.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dynamic_map_table.cuh"
#include "kernels/cuda/quant_launchers.h"

namespace kbit::kernels::cuda {
namespace {

constexpr int kQuantizeThreads = 256;
constexpr int kCodesPerUnit = 8;  // dequantize: one 8-byte load
constexpr int kDequantizeThreads = 256;
constexpr int kUnitsInFlight = 4;

// input [n] -> codes [n], absmax [ceil(n / block_size)]. Each block of block_size values belongs
// to a group of block_size / 8 = 2^log2_group_threads threads. Every value has `offset`
// subtracted first (0 except for nested absmax).
template <typename T>
__global__ void __launch_bounds__(512)
    quantize_8bit_kernel(const T* __restrict__ input, std::int64_t n, float offset,
                         int log2_group_threads, bool input_aligned, bool codes_aligned,
                         const __grid_constant__ DynamicMapTable map,
                         std::uint8_t* __restrict__ codes, float* __restrict__ absmax) {
  __shared__ float shared_map[256];
  __shared__ float warp_partials[512 / 32];
  load_map(map, shared_map);

  const std::int64_t thread = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t first = thread * 8;
  float values[8];
  load_8_values(input, first, n, input_aligned && first + 8 <= n, values);
  float block_absmax = 0.0f;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    // bitsandbytes leaves `absmax - offset` to PyTorch: IEEE float32, no flushing. Padding beyond
    // n stays 0.0, as in bitsandbytes' kernel, and so cannot raise the absmax.
    if (first + k < n) values[k] = __fsub_rn(values[k], offset);
    block_absmax = max_ftz(block_absmax, magnitude_for_absmax(values[k]));
  }
  block_absmax = group_max(block_absmax, 1 << log2_group_threads, warp_partials);
  if (first >= n) return;

  const bool finite = block_absmax <= FLT_MAX;
  if ((threadIdx.x & ((1u << log2_group_threads) - 1)) == 0) {
    absmax[thread >> log2_group_threads] = finite ? block_absmax : __int_as_float(0x7fc00000);
  }
  const float reciprocal = rcp_approx_ftz(block_absmax);
  std::uint8_t block_codes[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    block_codes[k] = search_dynamic_map(mul_ftz(values[k], reciprocal), shared_map);
  }
  if (first + 8 <= n && codes_aligned) {
    uint2 word;
    std::memcpy(&word, block_codes, sizeof(word));
    *reinterpret_cast<uint2*>(codes + first) = word;
  } else {
    for (int k = 0; k < 8 && first + k < n; ++k) codes[first + k] = block_codes[k];
  }
}

// codes [units * 8], absmax [..] -> output [units * 8]; codes 8-byte, output 16-byte aligned.
// y = map[code] * absmax, then + offset in IEEE float32 when kAddOffset (nested absmax).
template <typename T, bool kAddOffset>
__global__ void __launch_bounds__(kDequantizeThreads)
    dequantize_8bit_kernel(const uint2* __restrict__ codes, const float* __restrict__ absmax,
                           const __grid_constant__ DynamicMapTable map, int log2_block_size,
                           std::int64_t units, float offset, T* __restrict__ output) {
  __shared__ float shared_map[256];
  load_map(map, shared_map);

  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       first < units; first += kUnitsInFlight * stride) {
    uint2 loaded[kUnitsInFlight];
    float scale[kUnitsInFlight];
#pragma unroll
    for (int u = 0; u < kUnitsInFlight; ++u) {
      const std::int64_t unit = first + u * stride;
      if (unit < units) {
        loaded[u] = __ldcs(codes + unit);
        scale[u] = __ldg(absmax + ((unit * kCodesPerUnit) >> log2_block_size));
      }
    }
#pragma unroll
    for (int u = 0; u < kUnitsInFlight; ++u) {
      const std::int64_t unit = first + u * stride;
      if (unit >= units) break;
      std::uint8_t unit_codes[kCodesPerUnit];
      std::memcpy(unit_codes, &loaded[u], sizeof(unit_codes));
      float values[kCodesPerUnit];
#pragma unroll
      for (int k = 0; k < kCodesPerUnit; ++k) {
        values[k] = mul_ftz(shared_map[unit_codes[k]], scale[u]);
        if constexpr (kAddOffset) values[k] = __fadd_rn(values[k], offset);
      }
      store_8_values(output + unit * kCodesPerUnit, values);
    }
  }
}

// Values [first, n) one per thread: the tail after the full words, or everything when the
// pointers are not 16-byte aligned.
template <typename T, bool kAddOffset>
__global__ void dequantize_8bit_values_kernel(const std::uint8_t* __restrict__ codes,
                                              const float* __restrict__ absmax,
                                              const __grid_constant__ DynamicMapTable map,
                                              int log2_block_size, std::int64_t first,
                                              std::int64_t n, float offset,
                                              T* __restrict__ output) {
  const std::int64_t i = first + static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float value = mul_ftz(map.values[codes[i]], absmax[i >> log2_block_size]);
  if constexpr (kAddOffset) value = __fadd_rn(value, offset);
  output[i] = from_float<T>(value);
}

template <typename T, bool kAddOffset>
cudaError_t launch_dequantize(const std::uint8_t* codes, const float* absmax,
                              const DynamicMapTable& map, int log2_block_size, std::int64_t n,
                              float offset, T* output, cudaStream_t stream) {
  const bool aligned = reinterpret_cast<std::uintptr_t>(codes) % 8 == 0 && is_aligned_16(output);
  const std::int64_t units = aligned ? n / kCodesPerUnit : 0;
  if (units > 0) {
    int blocks = 0;
    const cudaError_t error = grid_stride_blocks(dequantize_8bit_kernel<T, kAddOffset>,
                                                 kDequantizeThreads, units, &blocks);
    if (error != cudaSuccess) return error;
    dequantize_8bit_kernel<T, kAddOffset><<<blocks, kDequantizeThreads, 0, stream>>>(
        reinterpret_cast<const uint2*>(codes), absmax, map, log2_block_size, units, offset, output);
  }
  const std::int64_t first = units * kCodesPerUnit;
  if (first < n) {
    constexpr int kThreads = 256;
    const std::int64_t blocks = (n - first + kThreads - 1) / kThreads;
    dequantize_8bit_values_kernel<T, kAddOffset>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
            codes, absmax, map, log2_block_size, first, n, offset, output);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t quantize_8bit_blockwise(const void* input, DType input_dtype, std::int64_t n,
                                    float offset, quant::DynamicMap map, std::int64_t block_size,
                                    std::uint8_t* codes, float* absmax, cudaStream_t stream) {
  if (n <= 0 || !quant::is_valid_8bit_block_size(block_size)) return cudaErrorInvalidValue;
  const DynamicMapTable table = make_map_table(map);
  const int group_threads = static_cast<int>(block_size / 8);
  const int threads = group_threads > kQuantizeThreads ? group_threads : kQuantizeThreads;
  const std::int64_t blocks = (n + 8LL * threads - 1) / (8LL * threads);
  const bool codes_aligned = reinterpret_cast<std::uintptr_t>(codes) % 8 == 0;
  return visit_float_dtype(input_dtype, [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    const T* typed_input = static_cast<const T*>(input);
    quantize_8bit_kernel<T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        typed_input, n, offset, log2_of(group_threads), is_aligned_16(input), codes_aligned, table,
        codes, absmax);
    return cudaGetLastError();
  });
}

cudaError_t dequantize_8bit_blockwise(const std::uint8_t* codes, const float* absmax,
                                      quant::DynamicMap map, std::int64_t block_size,
                                      std::int64_t n, std::optional<float> offset, void* output,
                                      DType output_dtype, cudaStream_t stream) {
  if (n <= 0 || !quant::is_valid_8bit_block_size(block_size)) return cudaErrorInvalidValue;
  if (offset.has_value() && output_dtype != DType::kF32) return cudaErrorInvalidValue;
  const DynamicMapTable table = make_map_table(map);
  const int log2_block_size = log2_of(block_size);
  return visit_float_dtype(output_dtype, [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    T* typed_output = static_cast<T*>(output);
    return offset.has_value() ? launch_dequantize<T, true>(codes, absmax, table, log2_block_size, n,
                                                           *offset, typed_output, stream)
                              : launch_dequantize<T, false>(codes, absmax, table, log2_block_size,
                                                            n, 0.0f, typed_output, stream);
  });
}

}  // namespace kbit::kernels::cuda
