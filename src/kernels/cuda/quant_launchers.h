// Host-side launchers of the CUDA quantization kernels (contracts: kbit/quant/*.h).
//
// Every pointer is device memory, sized as the matching CPU job in kernels/cpu/ describes. Each
// launcher queues its kernels on `stream` and returns the launch error (cudaSuccess when queued);
// it does not synchronise. Results equal bitsandbytes' CUDA kernels bit for bit, because the
// kernels issue the same approximate reciprocal and division instructions (spec section 0).
// Where a block (or row) holds a non-finite value its absmax is written as NaN.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <optional>

#include "kbit/core/dtype.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/codebooks.h"

namespace kbit::kernels::cuda {

// input [n] (f32/f16/bf16) -> packed u8 [ceil(n/2)], absmax f32 [ceil(n/block_size)].
cudaError_t quantize_4bit(const void* input, DType input_dtype, std::int64_t n,
                          quant::FourBitType type, std::int64_t block_size, std::uint8_t* packed,
                          float* absmax, cudaStream_t stream);

// packed u8 [ceil(n/2)], absmax f32 [ceil(n/block_size)] -> output [n] (f32/f16/bf16).
cudaError_t dequantize_4bit(const std::uint8_t* packed, const float* absmax,
                            quant::FourBitType type, std::int64_t block_size, std::int64_t n,
                            void* output, DType output_dtype, cudaStream_t stream);

// The decode-tile layout (kbit/quant/decode_tiles.h) of a weight [out, in] from bitsandbytes'
// (tile) or back (!tile): packed u8 [out · in / 2] and absmax [out · in / 64] of
// absmax_element_bytes (4: f32, 1: a nested absmax's codes) into packed_out and absmax_out,
// which lie apart from them. Requires decode_tiles_apply(out, in, 64).
cudaError_t permute_4bit_decode_tiles(const std::uint8_t* packed, const void* absmax,
                                      std::size_t absmax_element_bytes, std::int64_t out,
                                      std::int64_t in, std::uint8_t* packed_out, void* absmax_out,
                                      bool tile, cudaStream_t stream);

// input [n] -> codes u8 [n], absmax f32 [ceil(n/block_size)]. Each input value has `offset`
// subtracted first, in float32 (0 for plain quantization; the mean for nested absmax).
cudaError_t quantize_8bit_blockwise(const void* input, DType input_dtype, std::int64_t n,
                                    float offset, quant::DynamicMap map, std::int64_t block_size,
                                    std::uint8_t* codes, float* absmax, cudaStream_t stream);

// codes u8 [n], absmax f32 [ceil(n/block_size)] -> output [n]; y = map[code] * absmax, then,
// when an offset is given (nested absmax; output_dtype must be f32), y + offset as a second
// IEEE float32 rounding.
cudaError_t dequantize_8bit_blockwise(const std::uint8_t* codes, const float* absmax,
                                      quant::DynamicMap map, std::int64_t block_size,
                                      std::int64_t n, std::optional<float> offset, void* output,
                                      DType output_dtype, cudaStream_t stream);

// input [rows, cols] -> codes i8 [rows, cols], row_absmax f32 [rows]. With threshold > 0,
// elements with |x| >= threshold get code 0 and are left out of row_absmax, and
// is_outlier_column u8 [cols] (zeroed by the caller) gets 1 for every column holding one.
cudaError_t quantize_int8_rowwise(const void* input, DType input_dtype, std::int64_t rows,
                                  std::int64_t cols, float threshold, std::int8_t* codes,
                                  float* row_absmax, std::uint8_t* is_outlier_column,
                                  cudaStream_t stream);

// Sets codes[r][j] = 0 for every row r and every column j with is_outlier_column[j] != 0.
cudaError_t zero_outlier_columns(std::int8_t* codes, std::int64_t rows, std::int64_t cols,
                                 const std::uint8_t* is_outlier_column, cudaStream_t stream);

// codes i8 [rows, cols], row_absmax f32 [rows] -> output [rows, cols].
cudaError_t dequantize_int8_rowwise(const std::int8_t* codes, const float* row_absmax,
                                    std::int64_t rows, std::int64_t cols, void* output,
                                    DType output_dtype, cudaStream_t stream);

}  // namespace kbit::kernels::cuda
