// Pieces of the quantized Linear kernels (quantized_linear.h) that the reference and the fast
// kernels share, so that each step of the arithmetic is written once: the absmax decode and the
// output step of linear_4bit, the panel loop of its fast kernels, and the activation
// quantization and output step of linear_int8.
#pragma once

#include <cstdint>
#include <vector>

#include "kbit/core/dtype.h"
#include "kbit/core/execution.h"
#include "kernels/cpu/quantized_linear.h"

namespace kbit::kernels::cpu {

// value rounded to the precision of a float dtype (f32: unchanged), to nearest even.
float rounded_to(DType dtype, float value);

// ---- linear_4bit -------------------------------------------------------------------------------
// The 16 code values of a 4-bit type (kbit/quant/codebooks.h).
const float* four_bit_code_values(quant::FourBitType type);

// The code of value `index` of a 4-bit weight: two per byte, the high nibble first.
inline int four_bit_code(const std::uint8_t* packed, std::int64_t index) {
  const std::uint8_t byte = packed[index / 2];
  return index % 2 == 0 ? byte >> 4 : byte & 0x0f;
}

// Value `index` as dequantize_4bit gives it: its code's value times its block's absmax in f32,
// rounded to the weight's dtype. code_values: four_bit_code_values(weight.type).
inline float dequantized_4bit_value(const FourBitWeight& weight, const float* code_values,
                                    std::int64_t index, float absmax) {
  return rounded_to(weight.weight_dtype, code_values[four_bit_code(weight.packed, index)] * absmax);
}

// absmax[b - first_block] for the blocks [first_block, end_block): the stored f32 values, or
// the nested reconstruction (two roundings, as FourBitWeight says).
void decode_4bit_absmax(const FourBitWeight& weight, std::int64_t first_block,
                        std::int64_t end_block, float* absmax);

// The last step, on f32 sums left in y: y[r][o] = round_compute(y[r][o] + round_compute(bias[o]))
// for every row and o in [first_out, end_out).
void finish_4bit_outputs(const Linear4bitJob& job, std::int64_t first_out, std::int64_t end_out);

// Output features [first_out, end_out) of a fast kernel, at most kSgemmPanelOut of them, with
// the absmax of their blocks decoded. A row's values fall into segments of
// min(block_size, in_features) values, each inside one block.
struct FourBitPanel {
  const Linear4bitJob* job;
  const float* x;  // prepared activations [rows, in_features] (prepare_4bit_activations)
  std::int64_t first_out;
  std::int64_t end_out;
  const float* absmax;  // absmax of the blocks [first_block, ...)
  std::int64_t first_block;
};

// The inner loops of one instruction set.
struct FourBitIsaKernels {
  // y[r][o] = Σ_k x[r][k] · w[o][k], plain f32 sums, for rows <= kLinearGemvMaxRows.
  void (*gemv)(const FourBitPanel& panel);
  // w[o - first_out][k - k0] for k in [k0, k1), in the prepared order; k0 and k1 lie on
  // segment boundaries.
  void (*dequantize)(const FourBitPanel& panel, std::int64_t k0, std::int64_t k1, float* w);
};

// A fast kernel's loop over panels of output features: decode the panel's absmax, then the
// GEMV, or weight panels through sgemm, then finish_4bit_outputs.
void run_4bit_panels(const Linear4bitJob& job, const float* prepared, std::int64_t first_out,
                     std::int64_t end_out, const FourBitIsaKernels& kernels);

// ---- linear_int8 -------------------------------------------------------------------------------
struct Int8ActivationBuffers {
  std::vector<std::int8_t> codes;
  std::vector<float> row_absmax;
  std::vector<std::int64_t> outlier_columns;
};

// Steps 1-4 by the row-wise kernels of int8_rowwise.h (reference or fast, by options) into
// `buffers`.
Int8Activations quantize_int8_activations(const LinearInt8Job& job, const ExecutionOptions& options,
                                          Int8ActivationBuffers& buffers);

// Steps 6-7 for row `row` and the features [first_out, end_out), given the exact int32 products
// C[row][o] = products[o - first_out].
void finish_int8_outputs(const LinearInt8Job& job, const Int8Activations& activations,
                         std::int64_t row, std::int64_t first_out, std::int64_t end_out,
                         const std::int32_t* products);

}  // namespace kbit::kernels::cpu
