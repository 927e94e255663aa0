// LLM.int8 row-wise quantization on the GPU (contract: kbit/quant/int8_rowwise.h; arithmetic:
// shared/spec/bnb-compat.md 6.1 and 6.3).
//
// Quantize: one thread block per row, as bitsandbytes' kInt8VectorQuant: the threads stride
// over the row to find its absmax (outliers left out), then over it again to write the codes,
// normalising with bitsandbytes' approximate division 127 / absmax. The second pass re-reads the
// row from L1/L2. Dequantization is PyTorch arithmetic in bitsandbytes (two IEEE products), so
// it uses plain IEEE multiplies.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kbit/quant/codebooks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/int8_rowwise_parts.cuh"
#include "kernels/cuda/quant_launchers.h"

namespace kbit::kernels::cuda {
namespace {

constexpr int kRowThreads = 256;
constexpr int kElementwiseThreads = 256;

// input [rows, cols] -> codes [rows, cols], row_absmax [rows], is_outlier_column [cols].
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    quantize_int8_rowwise_kernel(const T* __restrict__ input, std::int64_t cols, float threshold,
                                 std::int8_t* __restrict__ codes, float* __restrict__ row_absmax,
                                 std::uint8_t* __restrict__ is_outlier_column) {
  __shared__ float warp_partials[kRowThreads / 32];
  const T* row_values = input + static_cast<std::int64_t>(blockIdx.x) * cols;
  std::int8_t* row_codes = codes + static_cast<std::int64_t>(blockIdx.x) * cols;

  Int8RowScan scan;
  for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    // Every writer stores the same 1, so the race is harmless.
    if (scan.add(int8_input_value(row_values[j]), threshold)) is_outlier_column[j] = 1;
  }
  const bool all_finite = __syncthreads_and(scan.all_finite);
  const float absmax = group_max(scan.absmax, kRowThreads, warp_partials);
  if (threadIdx.x == 0) row_absmax[blockIdx.x] = int8_row_absmax(absmax, all_finite);

  const float scale = int8_row_scale(absmax);
  for (std::int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const float value = int8_input_value(row_values[j]);
    row_codes[j] = is_int8_outlier(value, threshold) ? std::int8_t{0} : int8_code(value, scale);
  }
}

// codes [rows, cols]: zero every column j with is_outlier_column[j] != 0.
__global__ void zero_outlier_columns_kernel(std::int8_t* __restrict__ codes, std::int64_t count,
                                            std::int64_t cols,
                                            const std::uint8_t* __restrict__ is_outlier_column) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    if (is_outlier_column[i % cols] != 0) codes[i] = 0;
  }
}

// codes [rows, cols], row_absmax [rows] -> output [rows, cols]:
// y = fl32(fl32(code * absmax) * fl32(1/127)), as PyTorch evaluates bitsandbytes' expression.
template <typename T>
__global__ void dequantize_int8_rowwise_kernel(const std::int8_t* __restrict__ codes,
                                               const float* __restrict__ row_absmax,
                                               std::int64_t count, std::int64_t cols,
                                               T* __restrict__ output) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const float scaled = __fmul_rn(static_cast<float>(codes[i]), __ldg(row_absmax + i / cols));
    output[i] = from_float<T>(__fmul_rn(scaled, quant::kInt8DequantScale));
  }
}

}  // namespace

cudaError_t quantize_int8_rowwise(const void* input, DType input_dtype, std::int64_t rows,
                                  std::int64_t cols, float threshold, std::int8_t* codes,
                                  float* row_absmax, std::uint8_t* is_outlier_column,
                                  cudaStream_t stream) {
  if (rows <= 0 || cols <= 0 || rows > 0x7fffffff) return cudaErrorInvalidValue;
  return visit_float_dtype(input_dtype, [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    quantize_int8_rowwise_kernel<T><<<static_cast<unsigned>(rows), kRowThreads, 0, stream>>>(
        static_cast<const T*>(input), cols, threshold, codes, row_absmax, is_outlier_column);
    return cudaGetLastError();
  });
}

cudaError_t zero_outlier_columns(std::int8_t* codes, std::int64_t rows, std::int64_t cols,
                                 const std::uint8_t* is_outlier_column, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaErrorInvalidValue;
  int blocks = 0;
  const cudaError_t error =
      grid_stride_blocks(zero_outlier_columns_kernel, kElementwiseThreads, rows * cols, &blocks);
  if (error != cudaSuccess) return error;
  zero_outlier_columns_kernel<<<blocks, kElementwiseThreads, 0, stream>>>(codes, rows * cols, cols,
                                                                          is_outlier_column);
  return cudaGetLastError();
}

cudaError_t dequantize_int8_rowwise(const std::int8_t* codes, const float* row_absmax,
                                    std::int64_t rows, std::int64_t cols, void* output,
                                    DType output_dtype, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaErrorInvalidValue;
  return visit_float_dtype(output_dtype, [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    int blocks = 0;
    const cudaError_t error = grid_stride_blocks(dequantize_int8_rowwise_kernel<T>,
                                                 kElementwiseThreads, rows * cols, &blocks);
    if (error != cudaSuccess) return error;
    dequantize_int8_rowwise_kernel<T><<<blocks, kElementwiseThreads, 0, stream>>>(
        codes, row_absmax, rows * cols, cols, static_cast<T*>(output));
    return cudaGetLastError();
  });
}

}  // namespace kbit::kernels::cuda
