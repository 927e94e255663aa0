// CPU kernels of LLM.int8 row-wise quantization (contract: kbit/quant/int8_rowwise.h).
// Each kernel processes rows [first_row, end_row) of one job.
#pragma once

#include <cstdint>

#include "kbit/core/dtype.h"

namespace kbit::kernels::cpu {

struct Int8RowwiseJob {
  const void* input;  // [rows, cols] of input_dtype (f32, f16 or bf16); rounded to f16 first
  DType input_dtype;
  std::int64_t rows;
  std::int64_t cols;
  float threshold;     // 0: no outliers; else elements with |x| >= threshold are left out
  std::int8_t* codes;  // [rows, cols]; 0 for left-out elements
  float* row_absmax;   // [rows]; NaN where the row holds a value that is not finite in f16
};

void quantize_int8_rowwise_reference(const Int8RowwiseJob& job, std::int64_t first_row,
                                     std::int64_t end_row);
void quantize_int8_rowwise_avx2(const Int8RowwiseJob& job, std::int64_t first_row,
                                std::int64_t end_row);
void quantize_int8_rowwise_avx512(const Int8RowwiseJob& job, std::int64_t first_row,
                                  std::int64_t end_row);

// Sets is_outlier[j] = 1 for every column j holding an element with |x| >= threshold (after
// rounding to f16); leaves other entries untouched. Requires threshold > 0.
void mark_outlier_columns(const Int8RowwiseJob& job, std::uint8_t* is_outlier /* [cols] */);

struct Int8DequantizeJob {
  const std::int8_t* codes;  // [rows, cols]
  const float* row_absmax;   // [rows]
  std::int64_t rows;
  std::int64_t cols;
  void* output;  // [rows, cols] of output_dtype
  DType output_dtype;
};

void dequantize_int8_rowwise_reference(const Int8DequantizeJob& job, std::int64_t first_row,
                                       std::int64_t end_row);

}  // namespace kbit::kernels::cpu
