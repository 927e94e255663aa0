// CPU kernels of NF4/FP4 blockwise quantization (contract: kbit/quant/blockwise_4bit.h).
//
// Each kernel processes the blocks [first_block, end_block) of one job, so callers can split a
// tensor across threads by block. The reference kernels are the plain definition; the AVX2 and
// AVX-512 kernels must produce the same bytes.
#pragma once

#include <cstdint>

#include "kbit/core/dtype.h"
#include "kbit/quant/blockwise_4bit.h"

namespace kbit::kernels::cpu {

struct Quantize4bitJob {
  const void* input;  // [n] of input_dtype (f32, f16 or bf16)
  DType input_dtype;
  std::int64_t n;
  quant::FourBitType type;
  std::int64_t block_size;  // even
  std::uint8_t* packed;     // [ceil(n/2)]
  float* absmax;            // [ceil(n/block_size)]; NaN where the block holds a non-finite value
};

struct Dequantize4bitJob {
  const std::uint8_t* packed;  // [ceil(n/2)]
  const float* absmax;         // [ceil(n/block_size)]
  quant::FourBitType type;
  std::int64_t block_size;  // even
  std::int64_t n;
  void* output;  // [n] of output_dtype (f32, f16 or bf16)
  DType output_dtype;
};

void quantize_4bit_reference(const Quantize4bitJob& job, std::int64_t first_block,
                             std::int64_t end_block);
void quantize_4bit_avx2(const Quantize4bitJob& job, std::int64_t first_block,
                        std::int64_t end_block);
void quantize_4bit_avx512(const Quantize4bitJob& job, std::int64_t first_block,
                          std::int64_t end_block);

void dequantize_4bit_reference(const Dequantize4bitJob& job, std::int64_t first_block,
                               std::int64_t end_block);
void dequantize_4bit_avx2(const Dequantize4bitJob& job, std::int64_t first_block,
                          std::int64_t end_block);
void dequantize_4bit_avx512(const Dequantize4bitJob& job, std::int64_t first_block,
                            std::int64_t end_block);

}  // namespace kbit::kernels::cpu
