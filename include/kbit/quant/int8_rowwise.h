// Row-wise int8 quantization with outlier columns, as LLM.int8 (spec section 6).
//
// The input [rows, cols] is first rounded to f16 (bitsandbytes does this for every dtype).
// For each row r, with threshold t (t = 0: no outliers):
//   row_absmax[r] = max |x[r][j]| over the row, leaving out elements with |x| >= t when t > 0
//   codes[r][j]   = round_half_even(x[r][j] * (127 / row_absmax[r]))   in -127..127
//                   and 0 for elements with |x| >= t; 127 / row_absmax is the GPU's approximate
//                   division (div.approx.ftz.f32), on the CPU too, so codes equal bitsandbytes'
//                   CUDA ones bit for bit (docs/formats.md)
// With t > 0, the outlier columns are every column holding an element with |x| >= t; when
// rows > 1 every element of those columns gets code 0 (the matmul handles them in floating point).
// Dequantization: y = code * row_absmax * (1/127).
#pragma once

#include <cstdint>
#include <vector>

#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit::quant {

// Requires: input f32, f16 or bf16 of rank 2 [rows, cols], contiguous, rows, cols >= 1, every
//           value finite and within f16 range (|x| <= 65504); codes i8 [rows, cols];
//           row_absmax f32 [rows]; threshold >= 0 and finite.
// Writes codes and row_absmax; if outlier_columns is not null, it receives the outlier column
// indices in ascending order (always empty for threshold 0).
Status quantize_int8_rowwise(const TensorView& input, float threshold, TensorView codes,
                             TensorView row_absmax, std::vector<std::int64_t>* outlier_columns,
                             const ExecutionOptions& options = {});

// Requires: codes i8 [rows, cols], row_absmax f32 [rows], output f32, f16 or bf16 [rows, cols].
Status dequantize_int8_rowwise(const TensorView& codes, const TensorView& row_absmax,
                               TensorView output, const ExecutionOptions& options = {});

}  // namespace kbit::quant
