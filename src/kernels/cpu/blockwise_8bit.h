// CPU kernels of 8-bit dynamic blockwise quantization (contract: kbit/quant/blockwise_8bit.h).
// Block ranges and the reference/fast split as in blockwise_4bit.h.
#pragma once

#include <cstdint>

#include "kbit/core/dtype.h"

namespace kbit::kernels::cpu {

struct Quantize8bitJob {
  const void* input;  // [n] of input_dtype (f32, f16 or bf16)
  DType input_dtype;
  std::int64_t n;
  const float* map;  // [256], ascending
  std::int64_t block_size;
  std::uint8_t* codes;  // [n]
  float* absmax;        // [ceil(n/block_size)]; NaN where the block holds a non-finite value
};

struct Dequantize8bitJob {
  const std::uint8_t* codes;  // [n]
  const float* absmax;        // [ceil(n/block_size)]
  const float* map;           // [256]
  std::int64_t block_size;
  std::int64_t n;
  void* output;  // [n] of output_dtype (f32, f16 or bf16)
  DType output_dtype;
};

void quantize_8bit_reference(const Quantize8bitJob& job, std::int64_t first_block,
                             std::int64_t end_block);
void quantize_8bit_avx2(const Quantize8bitJob& job, std::int64_t first_block,
                        std::int64_t end_block);
void quantize_8bit_avx512(const Quantize8bitJob& job, std::int64_t first_block,
                          std::int64_t end_block);

void dequantize_8bit_reference(const Dequantize8bitJob& job, std::int64_t first_block,
                               std::int64_t end_block);
void dequantize_8bit_avx2(const Dequantize8bitJob& job, std::int64_t first_block,
                          std::int64_t end_block);
void dequantize_8bit_avx512(const Dequantize8bitJob& job, std::int64_t first_block,
                            std::int64_t end_block);

}  // namespace kbit::kernels::cpu
