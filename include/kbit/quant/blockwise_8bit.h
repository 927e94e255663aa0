// 8-bit dynamic blockwise quantization, byte-compatible with bitsandbytes (spec section 5).
//
// Per block of `block_size` consecutive values (the last may be partial):
//   absmax[b] = max |x| over the block                       (float32)
//   code[i]   = search(map, x[i] * (1 / absmax[b]))           bitsandbytes' nearest-code search:
//               ties go to the even index, NaN to code 0
// Dequantization: y[i] = map[code[i]] * absmax[b], rounded to the output dtype.
// The maps are the dynamic maps of codebooks.h.
//
// CUDA and CPU results equal bitsandbytes' CUDA kernels bit for bit: `1 / absmax` is the GPU's
// approximate reciprocal, which the CPU reproduces exactly. Not yet on the CPU: the GPU's flushing
// of subnormal values (docs/formats.md).
#pragma once

#include <cstdint>

#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/quant/codebooks.h"

namespace kbit::quant {

// True for 64, 128, ..., 4096.
bool is_valid_8bit_block_size(std::int64_t block_size);

// Requires: input f32, f16 or bf16, contiguous, n >= 1, all values finite; codes u8 with n
//           elements; absmax f32 with ceil(n/block_size) elements; all on one device.
// Writes codes and absmax. Failure as quantize_4bit.
Status quantize_8bit_blockwise(const TensorView& input, DynamicMap map, std::int64_t block_size,
                               TensorView codes, TensorView absmax,
                               const ExecutionOptions& options = {});

// Requires: codes u8 with n elements, absmax f32 with ceil(n/block_size) elements, output f32,
//           f16 or bf16 with n elements.
Status dequantize_8bit_blockwise(const TensorView& codes, const TensorView& absmax, DynamicMap map,
                                 std::int64_t block_size, TensorView output,
                                 const ExecutionOptions& options = {});

}  // namespace kbit::quant
